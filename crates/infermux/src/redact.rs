//! Keeps provider secrets out of every text an upstream sends back.
//!
//! An upstream that rejects a key often quotes it ("Incorrect API key
//! provided: sk-proj-abc…"), and a proxy in front of it may echo the whole
//! `Authorization` header in a 5xx page. That text becomes error messages
//! that reach callers (HTTP bodies, gRPC status details), spans and log
//! lines. Adapters [`register`] the secrets they send; [`redact`] replaces
//! in any text every registered secret, any long piece of one, the token
//! after `Bearer`, and every `sk-`/`sk_`-shaped token, with `[redacted]`.
//!
//! It runs only on error paths (see `From<ProviderError> for Error`), so a
//! lock and a scan are fine here.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret, or a token shaped like one, becomes.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are not registered: replacing every `abc` in
/// a message would garble it and protect nothing.
const MIN_SECRET: usize = 8;
/// A token (or a `*`-masked fragment of one) this long that appears inside
/// a registered secret is taken for a quoted piece of it.
const MIN_PIECE: usize = 6;

static SECRETS: RwLock<Vec<Box<str>>> = RwLock::new(Vec::new());

/// Adds `secret` to the set that [`redact`] removes. Idempotent.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET {
        return;
    }
    if let Ok(mut all) = SECRETS.write()
        && !all.iter().any(|s| &**s == secret)
    {
        all.push(secret.into());
    }
}

/// `text` without any secret in it (borrowed when there was none).
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = match SECRETS.read() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    redact_with(text, &secrets)
}

/// [`redact`] with the secrets given.
fn redact_with<'t>(text: &'t str, secrets: &[Box<str>]) -> Cow<'t, str> {
    let mut out: Cow<'t, str> = Cow::Borrowed(text);
    for secret in secrets {
        if out.contains(&**secret) {
            out = Cow::Owned(out.replace(&**secret, REDACTED));
        }
    }
    let tokens = tokens(&out);
    if tokens.is_empty() {
        return out;
    }
    let mut redacted = String::with_capacity(out.len());
    let mut at = 0;
    let mut after_bearer = false;
    let mut changed = false;
    for (start, end) in tokens {
        let token = &out[start..end];
        let secret_like =
            after_bearer || looks_like_key(token) || piece_of_a_secret(token, secrets);
        after_bearer = token.eq_ignore_ascii_case("bearer") || token.eq_ignore_ascii_case("basic");
        if secret_like && token != REDACTED.trim_matches(['[', ']']) {
            redacted.push_str(&out[at..start]);
            redacted.push_str(REDACTED);
            at = end;
            changed = true;
        }
    }
    if !changed {
        return out;
    }
    redacted.push_str(&out[at..]);
    Cow::Owned(redacted)
}

/// The tokens of `text`: runs of the characters keys are made of (and `*`,
/// which masks them), as byte ranges.
fn tokens(text: &str) -> Vec<(usize, usize)> {
    let is_key_char = |c: u8| {
        c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'_' | b'.' | b'*' | b'~' | b'+' | b'/' | b'=')
    };
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_key_char(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_key_char(bytes[i]) {
            i += 1;
        }
        // A sentence's full stop is not part of a token.
        let mut end = i;
        while end > start && bytes[end - 1] == b'.' {
            end -= 1;
        }
        if end > start {
            out.push((start, end));
        }
    }
    out
}

/// `sk-…`, `sk_…` (OpenAI, Anthropic and most hosted providers' keys) and
/// `imx-…` (infermux's own), masked or not.
fn looks_like_key(token: &str) -> bool {
    ["sk-", "sk_", "imx-"]
        .iter()
        .any(|p| token.len() > p.len() + 3 && token[..p.len()].eq_ignore_ascii_case(p))
}

/// Whether the token, or a `*`-separated fragment of it, is a long enough
/// piece of a registered secret (a key quoted by its first or last chars).
fn piece_of_a_secret(token: &str, secrets: &[Box<str>]) -> bool {
    token
        .split('*')
        .filter(|f| f.len() >= MIN_PIECE)
        .any(|f| secrets.iter().any(|s| s.contains(f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(secrets: &[&str], text: &str) -> String {
        let secrets: Vec<Box<str>> = secrets.iter().map(|s| (*s).into()).collect();
        redact_with(text, &secrets).into_owned()
    }

    #[test]
    fn registered_secrets_and_their_pieces_are_removed() {
        let key = "sk-proj-4f9aQ2xLmN8vBcD1eF";
        assert_eq!(
            with(&[key], &format!("Incorrect API key provided: {key}.")),
            "Incorrect API key provided: [redacted]."
        );
        // OpenAI's masked echo: a prefix and the last chars.
        assert_eq!(
            with(
                &[key],
                "Incorrect API key provided: sk-proj-****************BcD1eF."
            ),
            "Incorrect API key provided: [redacted]."
        );
        // A key without a telltale prefix, quoted in part.
        let azure = "0f3c9e1b7a2d4c6e8f00aa11bb22cc33";
        assert_eq!(
            with(&[azure], "key 0f3c9e1b7a2d... is not valid"),
            "key [redacted]... is not valid"
        );
        assert_eq!(
            with(&[azure], &format!("api-key:{azure}")),
            "api-key:[redacted]"
        );
    }

    #[test]
    fn bearer_tokens_and_key_shaped_tokens_are_removed_unregistered() {
        assert_eq!(
            with(&[], "got header Authorization: Bearer abc.def.ghi from you"),
            "got header Authorization: Bearer [redacted] from you"
        );
        assert_eq!(
            with(&[], "invalid x-api-key sk-ant-api03-XYZ123456"),
            "invalid x-api-key [redacted]"
        );
        assert_eq!(with(&[], "revoked: imx-5b1c2d3e4f"), "revoked: [redacted]");
    }

    #[test]
    fn ordinary_text_is_left_alone_and_borrowed() {
        let text = "model \"gpt-4o\" is overloaded; skip the sky-blue task (try again in 20s)";
        let secrets: Vec<Box<str>> = vec!["sk-proj-4f9aQ2xLmN8vBcD1eF".into()];
        assert!(matches!(redact_with(text, &secrets), Cow::Borrowed(t) if t == text));
        assert_eq!(with(&[], "sk- alone"), "sk- alone");
    }

    #[test]
    fn short_secrets_are_not_registered() {
        register("abc");
        assert_eq!(redact("abc is fine"), "abc is fine");
    }

    #[test]
    fn registered_secrets_are_redacted_process_wide() {
        register("  zq7-registered-secret-value  ");
        assert_eq!(
            redact("upstream said zq7-registered-secret-value!"),
            "upstream said [redacted]!"
        );
    }
}
