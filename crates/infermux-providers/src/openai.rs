//! The OpenAI chat completions adapter, for OpenAI and every OpenAI-compatible
//! server (vLLM, Groq, Together, llama.cpp, Ollama's `/v1`), and — with its own
//! URL and key header — Azure OpenAI.

use std::sync::Arc;

use async_trait::async_trait;
use infermux::config::{ProviderConfig, ProviderKind};
use infermux::{
    CallContext, ChunkStream, EmbedRequest, EmbedResponse, InferChunk, InferRequest, InferResponse,
    Provider, ProviderError,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{http, tokens};

/// How the upstream wants to be addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// `{base_url}/chat/completions`, `Authorization: Bearer`.
    OpenAi,
    /// Azure: `{base_url}/openai/deployments/{model}/chat/completions?api-version=`,
    /// `api-key` header; the model name is the deployment.
    Azure { api_version: String },
}

/// An OpenAI-shaped provider.
pub struct OpenAiProvider {
    name: String,
    kind: &'static str,
    models: Vec<String>,
    /// OpenAI dialect: the endpoint URIs, parsed once.
    chat_url: Option<::http::Uri>,
    embeddings_url: Option<::http::Uri>,
    /// What a health check lists.
    models_url: ::http::Uri,
    /// The key header, built once and marked sensitive (never logged).
    auth: Option<(::http::HeaderName, ::http::HeaderValue)>,
    dialect: Dialect,
    upstream: http::Upstream,
}

/// Which OpenAI endpoint a call goes to.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Chat,
    Embeddings,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// Builds the adapter for an `openai`, `ollama` or `azure_openai` provider.
    pub fn from_config(c: &ProviderConfig) -> Result<Self, ProviderError> {
        let dialect = match c.kind {
            ProviderKind::AzureOpenAi => Dialect::Azure {
                api_version: c
                    .api_version
                    .clone()
                    .unwrap_or_else(|| infermux::config::DEFAULT_AZURE_API_VERSION.to_owned()),
            },
            _ => Dialect::OpenAi,
        };
        let base_url = c
            .base_url
            .clone()
            .or_else(|| c.kind.default_base_url().map(str::to_owned))
            .ok_or_else(|| {
                ProviderError::InvalidRequest(format!("provider \"{}\" has no base_url", c.name))
            })?;
        let upstream = http::Upstream::new(&c.name, &base_url, c.timeout)?;
        let (chat_url, embeddings_url, models_url) = match &dialect {
            Dialect::OpenAi => (
                Some(upstream.endpoint(Endpoint::Chat.path())?),
                Some(upstream.endpoint(Endpoint::Embeddings.path())?),
                upstream.endpoint("models")?,
            ),
            Dialect::Azure { api_version } => (
                None,
                None,
                upstream.endpoint(&format!("openai/models?api-version={api_version}"))?,
            ),
        };
        let auth = match &c.api_key {
            None => None,
            Some(key) => {
                // Upstream error text that quotes it is redacted.
                infermux::redact::register(key.expose());
                let (name, value) = match dialect {
                    Dialect::OpenAi => (
                        ::http::header::AUTHORIZATION,
                        format!("Bearer {}", key.expose()),
                    ),
                    Dialect::Azure { .. } => (
                        ::http::HeaderName::from_static("api-key"),
                        key.expose().to_owned(),
                    ),
                };
                let mut value = ::http::HeaderValue::from_str(&value).map_err(|_| {
                    ProviderError::InvalidRequest(format!(
                        "provider \"{}\": the API key is not a valid header value",
                        c.name
                    ))
                })?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        Ok(OpenAiProvider {
            name: c.name.clone(),
            kind: c.kind.as_str(),
            models: c.models.clone(),
            chat_url,
            embeddings_url,
            models_url,
            auth,
            dialect,
            upstream,
        })
    }

    fn url(&self, model: &str, endpoint: Endpoint) -> Result<::http::Uri, ProviderError> {
        let ready = match endpoint {
            Endpoint::Chat => &self.chat_url,
            Endpoint::Embeddings => &self.embeddings_url,
        };
        if let Some(url) = ready {
            return Ok(url.clone());
        }
        let Dialect::Azure { api_version } = &self.dialect else {
            return Err(ProviderError::Internal("no URL for this endpoint".into()));
        };
        self.upstream.endpoint(&format!(
            "openai/deployments/{model}/{}?api-version={api_version}",
            endpoint.path()
        ))
    }

    /// A request to `uri` with the key header.
    fn request(&self, method: ::http::Method, uri: ::http::Uri) -> ::http::Request<()> {
        http::head(method, uri, self.auth.clone())
    }

    /// The chat completion body for `req`: the caller's own bytes when it
    /// speaks OpenAI's dialect (SPEC §11), else `req` encoded.
    fn chat_body(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
        stream: bool,
    ) -> Result<(http::Request, bool), ProviderError> {
        let head = self.request(::http::Method::POST, self.url(ctx.model, Endpoint::Chat)?);
        let head = http::with_traceparent(head, ctx);
        match passthrough(req) {
            Some(raw) => Ok((
                http::json_bytes(head, raw.body_for(ctx.model, stream)),
                true,
            )),
            None => {
                let full = http::whole(req, infermux::raw::Dialect::OpenAiChat)?;
                let req = full.as_ref().unwrap_or(req);
                Ok((
                    http::json(head, &chat_request(ctx.model, req, stream))?,
                    false,
                ))
            }
        }
    }

    /// A JSON POST to `endpoint`, with the key and the call's trace context.
    fn post<T: Serialize>(
        &self,
        ctx: &CallContext<'_>,
        endpoint: Endpoint,
        body: &T,
    ) -> Result<http::Request, ProviderError> {
        let req = self.request(::http::Method::POST, self.url(ctx.model, endpoint)?);
        http::json(http::with_traceparent(req, ctx), body)
    }
}

/// The caller's body, when it is an OpenAI chat completion request.
fn passthrough(req: &InferRequest) -> Option<&infermux::raw::RawRequest> {
    req.passthrough
        .as_deref()
        .map(|p| &p.raw)
        .filter(|r| r.dialect == infermux::raw::Dialect::OpenAiChat)
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a Map<String, Value>>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'a str,
    /// `null` for an assistant message that only calls tools; left out when
    /// `extra` carries the caller's content parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    /// The caller's tool-calling fields and content parts, untouched.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a Map<String, Value>>,
}

fn chat_request<'a>(model: &'a str, req: &'a InferRequest, stream: bool) -> ChatRequest<'a> {
    ChatRequest {
        model,
        messages: req
            .messages
            .iter()
            .map(|m| {
                let extra = m.extra.as_deref();
                let only_calls =
                    m.content.is_empty() && extra.is_some_and(|e| e.contains_key("tool_calls"));
                WireMessage {
                    role: m.role.as_str(),
                    content: m
                        .parts()
                        .is_none()
                        .then_some((!only_calls).then_some(m.content.as_str())),
                    extra,
                }
            })
            .collect(),
        temperature: req.params.temperature,
        max_tokens: req.params.max_tokens,
        top_p: req.params.top_p,
        stop: req.params.stop.as_deref(),
        stream,
        // Always ask for usage, so streams are accounted; the edge decides
        // whether the caller sees it.
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        extra: req.extra.as_deref().map(|m| m as &Map<String, Value>),
    }
}

/// A chat completion or one stream chunk: what infermux reads of it. `model`
/// is kept as the upstream's bytes, to be replaced in place.
#[derive(Deserialize)]
struct ChatResponse<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    id: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u64,
    message: Option<ChoiceMessage>,
    delta: Option<ChoiceMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
    tool_calls: Option<Value>,
    /// DeepSeek, vLLM and other OpenAI-compatible servers' reasoning text.
    reasoning_content: Option<String>,
}

/// OpenAI's usage, with its details by token kind.
#[derive(Deserialize, Clone, Copy, Default)]
pub(crate) struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Clone, Copy, Default)]
struct PromptDetails {
    #[serde(default, deserialize_with = "http::null_as_zero")]
    cached_tokens: u64,
}

#[derive(Deserialize, Clone, Copy, Default)]
struct CompletionDetails {
    #[serde(default, deserialize_with = "http::null_as_zero")]
    reasoning_tokens: u64,
}

impl Usage {
    fn kinds(self) -> infermux::Usage {
        infermux::Usage {
            input: self.prompt_tokens,
            output: self.completion_tokens,
            cached_input: self.prompt_tokens_details.unwrap_or_default().cached_tokens,
            cache_write: 0,
            reasoning: self
                .completion_tokens_details
                .unwrap_or_default()
                .reasoning_tokens,
        }
    }
}

fn error_body(provider: &str, error: &Value) -> ProviderError {
    let message = http::upstream_message(error.to_string().as_bytes());
    let message = if message.starts_with('{') {
        error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error")
            .to_owned()
    } else {
        message
    };
    ProviderError::Unavailable(format!(
        "provider \"{provider}\" answered 200 with an error: {message}"
    ))
}

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [String],
    encoding_format: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a Map<String, Value>>,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    #[serde(default)]
    data: Vec<EmbeddingItem>,
    usage: Option<EmbeddingUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct EmbeddingUsage {
    #[serde(default)]
    prompt_tokens: u64,
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn kind(&self) -> &str {
        self.kind
    }

    async fn infer(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<InferResponse, ProviderError> {
        let (request, passed) = self.chat_body(ctx, req, false)?;
        let answer = self.upstream.call_success(request).await?;
        let parsed: ChatResponse<'_> = self.upstream.read_json(&answer)?;
        if let Some(error) = &parsed.error {
            return Err(error_body(&self.name, error));
        }
        let Some(choice) = parsed.choices.into_iter().find(|c| c.index == 0) else {
            return Err(ProviderError::Unavailable(format!(
                "provider \"{}\" answered with no choices",
                self.name
            )));
        };
        let (content, tool_calls, reasoning) = match choice.message {
            Some(m) => (
                m.content.unwrap_or_default(),
                m.tool_calls,
                m.reasoning_content,
            ),
            None => (String::new(), None, None),
        };
        let raw = passed.then(|| {
            let model = parsed
                .model
                .and_then(|m| infermux::raw::range_in(&answer.body, m));
            infermux::raw::RawAnswer::new(answer.body.clone(), model)
        });
        let mut resp = InferResponse {
            content,
            finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".to_owned()),
            tool_calls: tool_calls.map(Arc::new),
            reasoning,
            upstream_id: parsed.id,
            upstream_request_id: answer.request_id.as_deref().map(str::to_owned),
            raw,
            ..Default::default()
        };
        match parsed.usage {
            Some(u) => resp.set_usage(u.kinds()),
            None => {
                resp.tokens_in = tokens::prompt(&req.messages);
                resp.tokens_out = tokens::count(&resp.content);
                resp.usage_estimated = true;
            }
        }
        Ok(resp)
    }

    /// The tokenizer's count (OpenAI has no count endpoint for chat): the
    /// messages with OpenAI's framing, and the tool schemas as sent.
    async fn count_tokens(
        &self,
        _ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<Option<infermux::TokenCount>, ProviderError> {
        let tools = req
            .extra
            .as_ref()
            .and_then(|e| e.get("tools"))
            .map_or(0, |t| tokens::count(&t.to_string()));
        Ok(Some(infermux::TokenCount {
            input_tokens: tokens::prompt(&req.messages) + tools,
            estimated: true,
        }))
    }

    /// Lists the models (`GET {base_url}/models`; Azure: the resource's
    /// `openai/models`): cheap, authenticated, no tokens spent.
    async fn health_check(&self) -> Result<(), ProviderError> {
        let req = self.request(::http::Method::GET, self.models_url.clone());
        self.upstream.call_ok(http::empty(req)).await
    }

    async fn embed(
        &self,
        ctx: &CallContext<'_>,
        req: &EmbedRequest,
    ) -> Result<EmbedResponse, ProviderError> {
        let body = EmbeddingsRequest {
            model: ctx.model,
            input: &req.input,
            encoding_format: "float",
            extra: req.extra.as_deref().map(|m| m as &Map<String, Value>),
        };
        let parsed: EmbeddingsResponse = self
            .upstream
            .call_json(self.post(ctx, Endpoint::Embeddings, &body)?)
            .await?;
        if let Some(error) = &parsed.error {
            return Err(error_body(&self.name, error));
        }
        if parsed.data.len() != req.input.len() {
            return Err(ProviderError::Unavailable(format!(
                "provider \"{}\" returned {} embeddings for {} inputs",
                self.name,
                parsed.data.len(),
                req.input.len()
            )));
        }
        let mut data = parsed.data;
        data.sort_by_key(|d| d.index);
        let tokens_in = match parsed.usage {
            Some(u) => u.prompt_tokens,
            None => req.input.iter().map(|t| tokens::count(t)).sum(),
        };
        Ok(EmbedResponse {
            embeddings: data.into_iter().map(|d| d.embedding).collect(),
            tokens_in,
            ..Default::default()
        })
    }

    async fn infer_stream(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<ChunkStream, ProviderError> {
        let (request, passed) = self.chat_body(ctx, req, true)?;
        let resp = self.upstream.call_stream(request).await?;
        let provider = self.upstream.provider().clone();
        let prompt = http::Prompt::of(req, passed);
        Ok(http::chunk_stream(
            resp,
            provider.clone(),
            prompt,
            move |event| {
                if event.data == "[DONE]" {
                    return Ok(http::Step::Done);
                }
                let data = bytes::Bytes::from(event.data);
                let parsed: ChatResponse<'_> = infermux::json::from_slice_untracked(&data)
                    .map_err(|e| {
                        ProviderError::Unavailable(format!(
                            "provider \"{provider}\" sent an unreadable stream event: {e}"
                        ))
                    })?;
                if let Some(error) = &parsed.error {
                    return Err(error_body(&provider, error));
                }
                let mut chunk = InferChunk::default();
                let no_choices = parsed.choices.is_empty();
                if let Some(choice) = parsed.choices.into_iter().find(|c| c.index == 0) {
                    if let Some(d) = choice.delta {
                        chunk.delta = d.content.unwrap_or_default();
                        chunk.tool_calls = d.tool_calls;
                        chunk.reasoning = d.reasoning_content;
                    }
                    chunk.finish_reason = choice.finish_reason.unwrap_or_default();
                }
                if let Some(u) = parsed.usage {
                    chunk.set_usage(u.kinds());
                }
                if passed {
                    let model = parsed.model.and_then(|m| infermux::raw::range_in(&data, m));
                    let mut raw = infermux::raw::RawAnswer::new(data.clone(), model);
                    raw.only_usage = no_choices && parsed.usage.is_some();
                    chunk.raw = Some(raw);
                }
                Ok(http::Step::Chunk(chunk))
            },
        ))
    }
}
