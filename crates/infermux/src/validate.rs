//! Validation rules shared by every entry point (HTTP, gRPC, CLI, library).

use crate::error::Error;
use crate::types::{InferRequest, Role};

/// Checks `req` against the protocol's rules; the error names the offending field.
pub fn validate_request(req: &InferRequest) -> Result<(), Error> {
    if req.messages.is_empty() {
        return Err(Error::invalid(
            "messages: must contain at least one message",
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if let Role::Other(role) = &m.role {
            return Err(Error::invalid(format!(
                "messages[{i}].role: unknown role \"{}\" (expected system, user or assistant)",
                truncate(role, 64)
            )));
        }
    }
    if let Some(t) = req.params.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(Error::invalid(format!(
            "params.temperature: {t} is outside [0, 2]"
        )));
    }
    if let Some(n) = req.params.max_tokens
        && n < 1
    {
        return Err(Error::invalid(format!(
            "params.max_tokens: {n} is less than 1"
        )));
    }
    if let Some(p) = req.params.top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(Error::invalid(format!(
            "params.top_p: {p} is outside [0, 1]"
        )));
    }
    Ok(())
}

/// At most `max` bytes of `s`, cut on a character boundary, so that error messages
/// stay one short line whatever the caller sent.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::types::{ChatMessage, Params};

    fn req() -> InferRequest {
        InferRequest::prompt("echo-v1", "hi")
    }

    fn err(r: &InferRequest) -> String {
        let e = validate_request(r).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidRequest);
        e.message().to_owned()
    }

    #[test]
    fn accepts_a_plain_request() {
        validate_request(&req()).unwrap();
        let mut r = req();
        r.params = Params {
            temperature: Some(2.0),
            max_tokens: Some(1),
            top_p: Some(0.0),
            stop: None,
        };
        validate_request(&r).unwrap();
    }

    #[test]
    fn rejects_empty_messages() {
        let mut r = req();
        r.messages.clear();
        assert!(err(&r).starts_with("messages:"));
    }

    #[test]
    fn rejects_bad_role_naming_the_index() {
        let mut r = req();
        r.messages
            .push(ChatMessage::new(Role::Other("bot".into()), "x"));
        assert!(err(&r).starts_with("messages[1].role: unknown role \"bot\""));
    }

    #[test]
    fn rejects_temperature_out_of_range() {
        for t in [-0.1, 2.01, f64::NAN] {
            let mut r = req();
            r.params.temperature = Some(t);
            assert!(err(&r).starts_with("params.temperature:"), "{t}");
        }
    }

    #[test]
    fn rejects_max_tokens_below_one() {
        for n in [0, -5] {
            let mut r = req();
            r.params.max_tokens = Some(n);
            assert!(err(&r).starts_with("params.max_tokens:"));
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
