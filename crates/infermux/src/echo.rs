//! The built-in `echo` provider: answers `"echo: " + last message`, with no keys
//! and no network. It is the whole registry when no config file is given.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::ProviderError;
use crate::provider::{CallContext, ChunkStream, Provider};
use crate::types::{EmbedRequest, EmbedResponse, InferChunk, InferRequest, InferResponse};

/// The echo provider's default model.
pub const ECHO_MODEL: &str = "echo-v1";

/// Cost per token of the echo provider, in USD.
const USD_PER_TOKEN_DIVISOR: f64 = 100_000.0;

/// Replies with `"echo: " + the last message's content`.
#[derive(Debug, Clone)]
pub struct EchoProvider {
    name: String,
    models: Vec<String>,
    delay: Duration,
}

impl Default for EchoProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoProvider {
    /// The provider `echo` serving model `echo-v1`, with no delay.
    pub fn new() -> Self {
        EchoProvider {
            name: "echo".to_owned(),
            models: vec![ECHO_MODEL.to_owned()],
            delay: Duration::ZERO,
        }
    }

    /// The same provider under another name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The same provider serving `models` instead of `echo-v1`.
    pub fn with_models(mut self, models: Vec<String>) -> Self {
        self.models = models;
        self
    }

    /// Waits `delay` before answering (to simulate a slow provider).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn answer(req: &InferRequest) -> (String, u64, u64, f64) {
        let last = req.messages.last().map_or("", |m| m.content.as_str());
        let mut content = String::with_capacity(6 + last.len());
        content.push_str("echo: ");
        content.push_str(last);
        let tokens_in: u64 = req
            .messages
            .iter()
            .map(|m| (m.content.len() / 4) as u64)
            .sum();
        let tokens_out = ((content.len() / 4) as u64).max(1);
        // (tokens_in + tokens_out) * 0.00001, computed as a division so the
        // result is the correctly rounded decimal (3 tokens → 0.00003 exactly).
        let cost = (tokens_in + tokens_out) as f64 / USD_PER_TOKEN_DIVISOR;
        (content, tokens_in, tokens_out, cost)
    }
}

#[async_trait]
impl Provider for EchoProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn kind(&self) -> &str {
        "echo"
    }

    async fn infer(
        &self,
        _ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<InferResponse, ProviderError> {
        one_choice(req)?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (content, tokens_in, tokens_out, cost_usd) = Self::answer(req);
        Ok(InferResponse {
            content,
            tokens_in,
            tokens_out,
            cost_usd,
            finish_reason: "stop".to_owned(),
            ..Default::default()
        })
    }

    /// A deterministic 8-dimension unit vector per text (a hash of its bytes), so
    /// embedding clients can be tested with no network.
    async fn embed(
        &self,
        _ctx: &CallContext<'_>,
        req: &EmbedRequest,
    ) -> Result<EmbedResponse, ProviderError> {
        let embeddings = req.input.iter().map(|t| echo_vector(t)).collect();
        let tokens_in: u64 = req.input.iter().map(|t| (t.len() / 4) as u64).sum();
        Ok(EmbedResponse {
            embeddings,
            tokens_in,
            cost_usd: tokens_in as f64 / USD_PER_TOKEN_DIVISOR,
            ..Default::default()
        })
    }

    /// Streams the reply word by word; the last chunk carries usage and cost.
    async fn infer_stream(
        &self,
        _ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<ChunkStream, ProviderError> {
        one_choice(req)?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (content, tokens_in, tokens_out, cost_usd) = Self::answer(req);
        let pieces: Vec<&str> = content.split_inclusive(' ').collect();
        let last = pieces.len().saturating_sub(1);
        let chunks: Vec<Result<InferChunk, ProviderError>> = pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let mut chunk = InferChunk {
                    delta: (*piece).to_owned(),
                    ..Default::default()
                };
                if i == last {
                    chunk.tokens_in = tokens_in;
                    chunk.tokens_out = tokens_out;
                    chunk.cost_usd = cost_usd;
                    chunk.finish_reason = "stop".to_owned();
                }
                Ok(chunk)
            })
            .collect();
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }
}

fn echo_vector(text: &str) -> Vec<f32> {
    // FNV-1a, then 8 components from its rotations, normalized.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let raw: Vec<f32> = (0..8)
        .map(|i| ((h.rotate_left(i * 8) & 0xffff) as f32 / 32768.0) - 1.0)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.into_iter().map(|x| x / norm).collect()
}

/// The echo provider answers one choice; asking for more is refused.
fn one_choice(req: &InferRequest) -> Result<(), ProviderError> {
    match req.extra.as_ref().and_then(|e| e.get("n")) {
        Some(n) if n != 1 => Err(ProviderError::InvalidRequest(format!(
            "n: {n}: the echo provider gives one choice"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Id128, TraceContext};
    use crate::types::ChatMessage;
    use futures_util::StreamExt;

    fn ctx() -> CallContext<'static> {
        CallContext {
            model: ECHO_MODEL,
            trace: TraceContext::new_root(),
            span_id: Id128::random(),
            deadline: None,
        }
    }

    #[tokio::test]
    async fn answers_as_the_contract_says() {
        let resp = EchoProvider::new()
            .infer(&ctx(), &InferRequest::prompt("echo-v1", "Hello"))
            .await
            .unwrap();
        assert_eq!(resp.content, "echo: Hello");
        assert_eq!((resp.tokens_in, resp.tokens_out), (1, 2));
        assert_eq!(resp.cost_usd, 0.00003);
        assert_eq!(resp.finish_reason, "stop");
    }

    #[tokio::test]
    async fn counts_every_message_and_at_least_one_output_token() {
        let mut req = InferRequest::prompt("echo-v1", "");
        req.messages.insert(0, ChatMessage::system("12345678")); // 2 tokens
        let resp = EchoProvider::new().infer(&ctx(), &req).await.unwrap();
        assert_eq!(resp.content, "echo: ");
        assert_eq!((resp.tokens_in, resp.tokens_out), (2, 1));
    }

    #[tokio::test]
    async fn streams_words_with_usage_on_the_last_chunk() {
        let stream = EchoProvider::new()
            .infer_stream(&ctx(), &InferRequest::prompt("echo-v1", "Hello big world"))
            .await
            .unwrap();
        let chunks: Vec<InferChunk> = stream.map(|c| c.unwrap()).collect().await;
        let text: String = chunks.iter().map(|c| c.delta.as_str()).collect();
        assert_eq!(text, "echo: Hello big world");
        assert_eq!(chunks.len(), 4);
        assert!(
            chunks[..3]
                .iter()
                .all(|c| c.finish_reason.is_empty() && c.tokens_out == 0)
        );
        let last = chunks.last().unwrap();
        assert_eq!(last.finish_reason, "stop");
        assert_eq!((last.tokens_in, last.tokens_out), (3, 5));
    }
}
