//! Protobuf ↔ core conversions and the error → `Status` mapping.

use std::time::Duration;

use infermux::{ChatMessage, Error, InferChunk, InferRequest, InferResponse, Params, Role};
use infermux_proto::v1 as pb;
use tonic::{Code, Status};

/// The gRPC status for a core error: code from the error table, public message.
pub fn status_of(e: &Error) -> Status {
    Status::new(
        Code::from_i32(e.disposition().grpc_code as i32),
        e.message(),
    )
}

pub(crate) fn request(req: pb::InferRequest) -> InferRequest {
    InferRequest {
        model: req.model,
        provider: req.provider,
        messages: req
            .messages
            .into_iter()
            .map(|m| ChatMessage::new(Role::parse(&m.role), m.content))
            .collect(),
        params: Params {
            temperature: req.temperature,
            max_tokens: req.max_tokens.map(i64::from),
            ..Params::default()
        },
        meta: req.meta.into_iter().collect(),
        ..Default::default()
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn response(r: InferResponse) -> pb::InferResponse {
    pb::InferResponse {
        model: r.model,
        provider: r.provider,
        content: r.content,
        tokens_in: count(r.tokens_in),
        tokens_out: count(r.tokens_out),
        cost_usd: r.cost_usd,
        latency_ms: count(r.latency_ms),
        finish_reason: r.finish_reason,
    }
}

pub(crate) fn chunk(c: InferChunk) -> pb::InferChunk {
    pb::InferChunk {
        delta: c.delta,
        model: c.model,
        provider: c.provider,
        tokens_in: count(c.tokens_in),
        tokens_out: count(c.tokens_out),
        cost_usd: c.cost_usd,
        finish_reason: c.finish_reason,
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). `None` when malformed.
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use infermux::ErrorKind;

    #[test]
    fn timeouts() {
        assert_eq!(grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        for bad in ["", "m", "10", "1x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn statuses_follow_the_error_table() {
        let cases = [
            (ErrorKind::InvalidRequest, Code::InvalidArgument),
            (ErrorKind::ModelNotFound, Code::NotFound),
            (ErrorKind::Upstream, Code::Unavailable),
            (ErrorKind::NoHealthyProviders, Code::Unavailable),
            (ErrorKind::Timeout, Code::DeadlineExceeded),
            (ErrorKind::Cancelled, Code::Cancelled),
            (ErrorKind::RateLimited, Code::ResourceExhausted),
            (ErrorKind::Unauthorized, Code::Unauthenticated),
            (ErrorKind::ModelNotAllowed, Code::PermissionDenied),
            (ErrorKind::BudgetExceeded, Code::ResourceExhausted),
            (ErrorKind::Internal, Code::Internal),
            (
                ErrorKind::UpstreamRejected { status: 403 },
                Code::PermissionDenied,
            ),
        ];
        for (kind, code) in cases {
            let s = status_of(&Error::new(kind, "m"));
            assert_eq!(s.code(), code, "{kind:?}");
            assert_eq!(s.message(), "m");
        }
    }

    #[test]
    fn requests_convert_with_roles_checked_later() {
        let req = request(pb::InferRequest {
            model: "m".into(),
            messages: vec![pb::ChatMessage {
                role: "robot".into(),
                content: "x".into(),
            }],
            temperature: Some(0.5),
            max_tokens: Some(-1),
            provider: "p".into(),
            meta: [("k".to_owned(), "v".to_owned())].into(),
        });
        assert_eq!(req.messages[0].role, Role::Other("robot".into()));
        assert_eq!(req.params.max_tokens, Some(-1));
        assert_eq!(req.params.temperature, Some(0.5));
        assert_eq!(req.meta["k"], "v");
        assert!(infermux::validate::validate_request(&req).is_err());
    }
}
