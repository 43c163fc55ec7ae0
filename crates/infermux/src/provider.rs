//! The `Provider` trait: what an adapter for one LLM backend implements.

use std::pin::Pin;
use std::time::Instant;

use async_trait::async_trait;
use futures_core::Stream;

use crate::error::ProviderError;
use crate::trace::{Id128, TraceContext};
use crate::types::{
    EmbedRequest, EmbedResponse, InferChunk, InferRequest, InferResponse, TokenCount, Usage,
};

/// A stream of reply chunks; the last one carries usage, cost and finish reason.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<InferChunk, ProviderError>> + Send>>;

/// What the router tells a provider about one call, beside the request itself.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// The model name this provider receives (aliases already applied).
    pub model: &'a str,
    /// The trace the call belongs to.
    pub trace: TraceContext,
    /// The span of this call; providers send it downstream in a `traceparent`.
    pub span_id: Id128,
    /// When the caller stops waiting, if it said. The router also enforces it by
    /// dropping the provider's future; this lets a provider pass it upstream.
    pub deadline: Option<Instant>,
}

impl CallContext<'_> {
    /// The same context for a provider receiving `model`.
    pub fn with_model(self, model: &str) -> CallContext<'_> {
        CallContext {
            model,
            trace: self.trace,
            span_id: self.span_id,
            deadline: self.deadline,
        }
    }

    /// The W3C `traceparent` header value for calls this provider makes.
    pub fn traceparent(&self) -> String {
        self.trace.traceparent_for(self.span_id)
    }
}

/// An LLM backend. Object-safe: the registry holds `Arc<dyn Provider>`.
///
/// Implementations report failures as [`ProviderError`] values and must not block
/// the async runtime. Dropping the future returned by `infer` cancels the call.
///
/// ```
/// use async_trait::async_trait;
/// use infermux::{CallContext, InferRequest, InferResponse, Provider, ProviderError};
///
/// struct Shout { models: Vec<String> }
///
/// #[async_trait]
/// impl Provider for Shout {
///     fn name(&self) -> &str { "shout" }
///     fn models(&self) -> &[String] { &self.models }
///     async fn infer(&self, _ctx: &CallContext<'_>, req: &InferRequest)
///         -> Result<InferResponse, ProviderError>
///     {
///         let last = req.messages.last().map(|m| m.content.as_str()).unwrap_or("");
///         Ok(InferResponse {
///             content: last.to_uppercase(),
///             finish_reason: "stop".into(),
///             ..Default::default()
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Unique name in a registry, e.g. `openai`.
    fn name(&self) -> &str;

    /// The models this provider serves, by the names callers use.
    fn models(&self) -> &[String];

    /// The adapter type, e.g. `echo` or `openai`, for status reports.
    fn kind(&self) -> &str {
        "custom"
    }

    /// Runs one inference call. The router fills in `model`, `provider` and
    /// `latency_ms` of the response; the provider fills in the rest.
    async fn infer(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<InferResponse, ProviderError>;

    /// Checks that the provider answers, for active health checks: cheap and
    /// side-effect free (e.g. listing models). The default assumes health.
    async fn health_check(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Embeds texts. The default says this provider cannot.
    async fn embed(
        &self,
        _ctx: &CallContext<'_>,
        _req: &EmbedRequest,
    ) -> Result<EmbedResponse, ProviderError> {
        Err(ProviderError::InvalidRequest(format!(
            "provider \"{}\" does not serve embeddings",
            self.name()
        )))
    }

    /// Counts the input tokens of `req` as the provider would bill them,
    /// where it has a way to (Anthropic's `count_tokens` endpoint, a
    /// tokenizer of its models); `None`: it has none, and the caller
    /// estimates.
    async fn count_tokens(
        &self,
        _ctx: &CallContext<'_>,
        _req: &InferRequest,
    ) -> Result<Option<TokenCount>, ProviderError> {
        Ok(None)
    }

    /// Streams one inference call. The default runs [`Provider::infer`] and yields
    /// its whole reply as a single final chunk.
    async fn infer_stream(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<ChunkStream, ProviderError> {
        let resp = self.infer(ctx, req).await?;
        let mut chunk = InferChunk {
            delta: resp.content,
            model: resp.model,
            provider: resp.provider,
            cost_usd: resp.cost_usd,
            finish_reason: resp.finish_reason,
            tool_calls: resp.tool_calls.map(|t| (*t).clone()),
            usage_estimated: resp.usage_estimated,
            reasoning: resp.reasoning,
            ..Default::default()
        };
        chunk.set_usage(Usage {
            input: resp.tokens_in,
            output: resp.tokens_out,
            cached_input: resp.tokens_cached,
            cache_write: resp.tokens_cache_write,
            reasoning: resp.tokens_reasoning,
        });
        Ok(Box::pin(futures_util::stream::iter([Ok(chunk)])))
    }
}
