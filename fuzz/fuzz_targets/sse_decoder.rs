//! The incremental SSE decoder: any bytes, in pieces whose size the first
//! byte picks, give the same events as the same bytes in one piece, and
//! never a panic.
#![no_main]
use infermux_providers::sse::Decoder;

fn events(data: &[u8], piece: usize) -> (Vec<String>, bool) {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for part in data.chunks(piece.max(1)) {
        d.push(part);
        loop {
            match d.next_event() {
                Ok(Some(e)) => out.push(format!("{e:?}")),
                Ok(None) => break,
                Err(_) => return (out, false),
            }
        }
    }
    (out, true)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = events(rest, rest.len());
    let pieces = events(rest, usize::from(first));
    assert_eq!(whole, pieces);
});
