//! An incremental Server-Sent Events decoder: feed it bytes as they arrive, take
//! complete events out. An incomplete event is not an error, just not ready yet.

use bytes::{Buf, BytesMut};

/// One event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Accumulates bytes and splits them into events.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    /// How far `buf` has been searched for a blank line without finding one:
    /// the next search resumes there (less the two bytes a separator that
    /// was cut off may have begun with), so an event that arrives in many
    /// pieces is scanned once, not once per piece.
    searched: usize,
}

/// The largest event accepted; a stream that sends more without a blank line
/// is broken (or hostile).
const MAX_EVENT: usize = 16 * 1024 * 1024;

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, String> {
        loop {
            let from = self.searched.saturating_sub(2);
            let Some((end, sep)) = find_blank_line(&self.buf, from) else {
                if self.buf.len() > MAX_EVENT {
                    return Err(format!("an SSE event exceeds {MAX_EVENT} bytes"));
                }
                self.searched = self.buf.len();
                return Ok(None);
            };
            self.searched = 0;
            let raw = self.buf.split_to(end);
            self.buf.advance(sep);
            let text =
                std::str::from_utf8(&raw).map_err(|_| "an SSE event is not UTF-8".to_owned())?;
            let mut event = Event::default();
            let mut has_data = false;
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    "event" => event.event = Some(value.to_owned()),
                    _ => {}
                }
            }
            // Comment-only blocks (keep-alives) carry no event.
            if has_data || event.event.is_some() {
                return Ok(Some(event));
            }
        }
    }

    /// Bytes left that do not make a complete event.
    pub fn remainder(&self) -> usize {
        self.buf.iter().filter(|b| !b.is_ascii_whitespace()).count()
    }
}

/// Finds the first blank line at or after `from`: returns where the event
/// ends and how long the separator is (`\n\n`, `\r\n\r\n`, or `\r\r`).
/// Line ends are found with `memchr` (a word or vector at a time).
fn find_blank_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(at) = memchr::memchr2(b'\n', b'\r', buf.get(i..)?) {
        i += at;
        let next = buf.get(i + 1).copied();
        if buf[i] == b'\n' {
            if next == Some(b'\n') {
                return Some((i, 2));
            }
            if next == Some(b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        } else if next == Some(b'\r') {
            return Some((i, 2));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(d: &mut Decoder) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = d.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn events_split_across_pushes() {
        let mut d = Decoder::new();
        d.push(b"data: {\"a\"");
        assert!(all(&mut d).is_empty());
        d.push(b":1}\n\nevent: ping\ndata: {}\n\n: keep-alive\n\ndata: [DONE]\n");
        let got = all(&mut d);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].data, "{\"a\":1}");
        assert_eq!(
            got[1],
            Event {
                event: Some("ping".into()),
                data: "{}".into()
            }
        );
        d.push(b"\n");
        assert_eq!(all(&mut d)[0].data, "[DONE]");
        assert_eq!(d.remainder(), 0);
    }

    #[test]
    fn an_event_in_single_bytes_and_separators_cut_anywhere() {
        let stream = b"data: one\r\n\r\nevent: two\ndata: 2\n\ndata: three\r\rdata: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                d.push(piece);
                got.extend(all(&mut d));
            }
            let data: Vec<_> = got.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(data, ["one", "2", "three", "[DONE]"], "cut at {cut}");
            assert_eq!(got[1].event.as_deref(), Some("two"));
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in stream {
            d.push(&[*b]);
            got.extend(all(&mut d));
        }
        assert_eq!(got.len(), 4);
        assert_eq!(d.remainder(), 0);
    }

    #[test]
    fn crlf_and_multiline_data() {
        let mut d = Decoder::new();
        d.push(b"event: message_start\r\ndata: line1\r\ndata: line2\r\n\r\n");
        let got = all(&mut d);
        assert_eq!(got[0].event.as_deref(), Some("message_start"));
        assert_eq!(got[0].data, "line1\nline2");
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut d = Decoder::new();
        d.push(b"data: \xff\xfe\n\n");
        assert!(d.next_event().is_err());
    }
}
