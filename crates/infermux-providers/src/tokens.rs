//! Token estimates for upstreams that report no usage, with a real tokenizer
//! (tiktoken's `o200k_base`, the encoding of current OpenAI models; for other
//! model families it is an estimate, and responses say so).

use std::sync::OnceLock;

use infermux::ChatMessage;
use tiktoken_rs::CoreBPE;

fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| match tiktoken_rs::o200k_base() {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            tracing::warn!(error = %e, "tokenizer unavailable; estimating 4 bytes per token");
            None
        }
    })
    .as_ref()
}

/// Tokens in `text`.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match bpe() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Tokens of a chat prompt, with OpenAI's per-message framing (3 tokens a
/// message, 3 to prime the reply).
pub fn prompt(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| 3 + count(&m.content) + count(m.role.as_str()))
        .sum::<u64>()
        + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_the_real_encoding() {
        assert_eq!(count(""), 0);
        assert_eq!(count("Hello"), 1);
        assert_eq!(count("Hello world"), 2);
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(10);
        let n = count(&long);
        assert!((90..=110).contains(&n), "{n}");
        assert_eq!(prompt(&[ChatMessage::user("Hello world")]), 3 + 2 + 1 + 3);
    }
}
