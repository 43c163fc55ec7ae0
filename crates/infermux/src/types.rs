//! MIST protocol v1 wire types. Field names are part of the public contract.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Who wrote a chat message.
///
/// Unknown roles deserialize to [`Role::Other`] so that validation, not the JSON
/// decoder, rejects them: the error then names the field, and the call still
/// produces a span like every other invalid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result in an OpenAI tool-calling conversation. Only the
    /// OpenAI-compatible edge produces it; MIST and gRPC callers name the three
    /// roles above, and `"tool"` from them parses as [`Role::Other`].
    Tool,
    /// A role outside the three the protocol allows; always rejected by validation.
    Other(String),
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Other(s) => s,
        }
    }

    /// Parses a role name; anything but the three known names becomes [`Role::Other`].
    pub fn parse(s: &str) -> Role {
        match s {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => Role::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Role {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Role;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a role string (system, user or assistant)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Role, E> {
                Ok(Role::parse(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// OpenAI fields of the message beyond its text, as the caller sent them:
    /// `tool_calls` of an assistant message, `tool_call_id` of a tool result,
    /// `name`, and `content` when it has parts other than text (images, audio;
    /// [`ChatMessage::content`] then holds the text parts). Passed to
    /// OpenAI-compatible providers untouched, refused by providers that cannot
    /// take them. Not part of the MIST wire format.
    #[serde(skip)]
    pub extra: Option<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            extra: None,
        }
    }

    /// The content parts the caller sent when they are not all text.
    pub fn parts(&self) -> Option<&serde_json::Value> {
        self.extra.as_ref().and_then(|e| e.get("content"))
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
}

/// Sampling parameters. Out-of-range values are kept as sent and rejected by
/// validation, which names the field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
}

impl Params {
    pub fn is_empty(&self) -> bool {
        *self == Params::default()
    }
}

/// A request to run inference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Model name or alias; `""` or `"auto"` picks the first registered provider.
    #[serde(default)]
    pub model: String,
    /// Explicit provider name; wins over model resolution when non-empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub params: Params,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Request fields of the OpenAI API that infermux does not model (`tools`,
    /// `response_format`, `seed`, `n`, ...). OpenAI-compatible providers pass
    /// them upstream untouched; others drop them. Not part of the MIST wire form.
    #[serde(skip)]
    pub extra: Option<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The caller's own body, for a provider that speaks the caller's dialect
    /// (SPEC §11): it goes upstream as sent, with only `model` replaced.
    /// Not part of the MIST wire form.
    #[serde(skip)]
    pub passthrough: Option<std::sync::Arc<Passthrough>>,
}

/// Decodes a caller's body into the whole core request.
pub type WholeDecoder = fn(&bytes::Bytes) -> Result<InferRequest, crate::Error>;

/// A caller's body kept for a provider of its dialect, and how to decode it
/// whole: the request built from it may leave out what only a translating
/// provider reads (tool calls, extra fields).
#[derive(Debug, Clone)]
pub struct Passthrough {
    pub raw: crate::raw::RawRequest,
    pub whole: Option<WholeDecoder>,
}

impl Passthrough {
    /// The whole request, when the one built from this body left parts out
    /// (`None`: it did not).
    pub fn whole_request(&self) -> Option<Result<InferRequest, crate::Error>> {
        self.whole.map(|decode| decode(&self.raw.body_bytes()))
    }
}

/// Equal when the bodies are (the decoder is how, not what).
impl PartialEq for Passthrough {
    fn eq(&self, o: &Self) -> bool {
        self.raw == o.raw
    }
}

impl std::ops::Deref for Passthrough {
    type Target = crate::raw::RawRequest;

    fn deref(&self) -> &crate::raw::RawRequest {
        &self.raw
    }
}

impl InferRequest {
    /// A one-message user request for `model`.
    pub fn prompt(model: impl Into<String>, text: impl Into<String>) -> Self {
        InferRequest {
            model: model.into(),
            messages: vec![ChatMessage::user(text)],
            ..Default::default()
        }
    }
}

/// The result of a completed inference call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The model name the caller asked for.
    pub model: String,
    /// The provider that served the call.
    pub provider: String,
    pub content: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    pub latency_ms: u64,
    pub finish_reason: String,
    /// True when the provider reported no usage and the token counts are an
    /// estimate (see `infermux::tokens`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_estimated: bool,
    /// The tool calls the model asked for (OpenAI's `message.tool_calls`, as
    /// the provider sent them). Carried to the OpenAI-compatible edge; not part
    /// of the MIST wire format.
    #[serde(skip)]
    pub tool_calls: Option<std::sync::Arc<serde_json::Value>>,
    /// Input tokens read from the provider's prompt cache (part of `tokens_in`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_cached: u64,
    /// Input tokens written to the provider's prompt cache (part of `tokens_in`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_cache_write: u64,
    /// Output tokens the model spent reasoning (part of `tokens_out`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_reasoning: u64,
    /// The model's reasoning text (OpenAI-compatible `reasoning_content`,
    /// Anthropic `thinking` blocks joined). Not part of the MIST wire format.
    #[serde(skip)]
    pub reasoning: Option<String>,
    /// Anthropic thinking blocks as they came (with their signatures), for a
    /// caller that sends them back on the next turn.
    #[serde(skip)]
    pub thinking_blocks: Option<std::sync::Arc<serde_json::Value>>,
    /// The upstream's id of the answer (a translated answer keeps it).
    #[serde(skip)]
    pub upstream_id: Option<String>,
    /// The upstream's request id header (`x-request-id`, `request-id`).
    #[serde(skip)]
    pub upstream_request_id: Option<String>,
    /// The upstream's answer as it sent it, when the request went through
    /// as the caller sent it (same dialect): the edge answers with it, only
    /// `model` replaced. Not part of the MIST wire format.
    #[serde(skip)]
    pub raw: Option<crate::raw::RawAnswer>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl InferResponse {
    /// Token counts by kind.
    pub fn usage(&self) -> Usage {
        Usage {
            input: self.tokens_in,
            output: self.tokens_out,
            cached_input: self.tokens_cached,
            cache_write: self.tokens_cache_write,
            reasoning: self.tokens_reasoning,
        }
    }

    /// Sets every token count from `u`.
    pub fn set_usage(&mut self, u: Usage) {
        self.tokens_in = u.input;
        self.tokens_out = u.output;
        self.tokens_cached = u.cached_input;
        self.tokens_cache_write = u.cache_write;
        self.tokens_reasoning = u.reasoning;
    }
}

/// Tokens of one call by kind. `input` counts every input token (cached and
/// cache writes included); `output` every output token (reasoning included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Usage {
    /// Input and output only.
    pub fn new(input: u64, output: u64) -> Self {
        Usage {
            input,
            output,
            ..Default::default()
        }
    }

    /// No tokens of any kind.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.input += o.input;
        self.output += o.output;
        self.cached_input += o.cached_input;
        self.cache_write += o.cache_write;
        self.reasoning += o.reasoning;
    }
}

/// Input tokens of a request, counted without running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCount {
    pub input_tokens: u64,
    /// An estimate (a tokenizer that may not be the model's, or bytes / 4),
    /// not the provider's own count.
    pub estimated: bool,
}

/// JSON carried through as a provider wrote it.
#[derive(Debug, Clone)]
pub struct RawJson(pub std::sync::Arc<serde_json::value::RawValue>);

impl RawJson {
    /// Keeps `raw` as it is.
    pub fn new(raw: Box<serde_json::value::RawValue>) -> Self {
        RawJson(std::sync::Arc::from(raw))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// A request for embeddings of one or more texts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedRequest {
    pub model: String,
    pub provider: String,
    pub input: Vec<String>,
    /// Fields OpenAI-compatible providers pass upstream untouched (`dimensions`, `user`).
    pub extra: Option<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// Embeddings, in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedResponse {
    pub model: String,
    pub provider: String,
    pub embeddings: Vec<Vec<f32>>,
    pub tokens_in: u64,
    pub cost_usd: f64,
    pub latency_ms: u64,
}

/// One piece of a streamed reply: content deltas, and on the last chunk the
/// usage, cost and finish reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferChunk {
    pub delta: String,
    pub model: String,
    pub provider: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    /// Empty on every chunk but the last.
    pub finish_reason: String,
    /// A piece of the tool calls (OpenAI's `delta.tool_calls`, as the provider
    /// sent it). Not part of the MIST or gRPC wire formats.
    #[serde(skip)]
    pub tool_calls: Option<serde_json::Value>,
    /// This chunk's token counts are an estimate: the provider reported no
    /// usage for the stream.
    #[serde(skip)]
    pub usage_estimated: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_cached: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_cache_write: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_reasoning: u64,
    /// A piece of the model's reasoning text. Not part of the MIST wire format.
    #[serde(skip)]
    pub reasoning: Option<String>,
    /// The upstream's event as it sent it, when the request went through as
    /// the caller sent it (see [`InferResponse::raw`]).
    #[serde(skip)]
    pub raw: Option<crate::raw::RawAnswer>,
    /// On the first chunk: the upstream's request id header.
    #[serde(skip)]
    pub upstream_request_id: Option<String>,
}

impl InferChunk {
    /// Token counts of this chunk by kind.
    pub fn usage(&self) -> Usage {
        Usage {
            input: self.tokens_in,
            output: self.tokens_out,
            cached_input: self.tokens_cached,
            cache_write: self.tokens_cache_write,
            reasoning: self.tokens_reasoning,
        }
    }

    /// Sets every token count from `u`.
    pub fn set_usage(&mut self, u: Usage) {
        self.tokens_in = u.input;
        self.tokens_out = u.output;
        self.tokens_cached = u.cached_input;
        self.tokens_cache_write = u.cache_write;
        self.tokens_reasoning = u.reasoning;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_decodes_the_spec_example() {
        let json = r#"{"model": "echo-v1", "provider": "", "messages": [{"role": "user", "content": "Hello"}],
            "params": {"temperature": 0.2, "max_tokens": 64}, "meta": {"caller": "team-a"}}"#;
        let req: InferRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.model, "echo-v1");
        assert_eq!(req.messages, vec![ChatMessage::user("Hello")]);
        assert_eq!(req.params.temperature, Some(0.2));
        assert_eq!(req.params.max_tokens, Some(64));
        assert_eq!(req.meta.get("caller").map(String::as_str), Some("team-a"));
    }

    #[test]
    fn unknown_role_is_kept_for_validation() {
        let req: InferRequest =
            serde_json::from_str(r#"{"messages":[{"role":"robot","content":"x"}]}"#).unwrap();
        assert_eq!(req.messages[0].role, Role::Other("robot".into()));
        assert_eq!(
            serde_json::to_string(&req.messages[0]).unwrap(),
            r#"{"role":"robot","content":"x"}"#
        );
    }

    #[test]
    fn response_field_names_match_the_contract() {
        let resp = InferResponse {
            model: "echo-v1".into(),
            provider: "echo".into(),
            content: "echo: Hello".into(),
            tokens_in: 1,
            tokens_out: 2,
            cost_usd: 0.00003,
            latency_ms: 1,
            finish_reason: "stop".into(),
            usage_estimated: false,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"model":"echo-v1","provider":"echo","content":"echo: Hello","tokens_in":1,"tokens_out":2,"cost_usd":0.00003,"latency_ms":1,"finish_reason":"stop"}"#
        );
    }
}
