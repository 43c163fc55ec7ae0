//! Provider adapters: each module owns one upstream's wire types and speaks it
//! behind the [`Provider`](infermux::Provider) trait.
//!
//! - [`openai`]: OpenAI and every OpenAI-compatible server (`base_url`), Ollama's
//!   `/v1`, and Azure OpenAI (deployment URLs, `api-key`).
//! - [`anthropic`]: the Messages API, with its request, response and stream
//!   events translated.
//! - `http`: the upstream (its transports), upstream error classification,
//!   SSE streams.
//! - `plain`: HTTP/1.1 to `http://` upstreams, driven by the calling task.
//! - [`sse`]: the incremental Server-Sent Events decoder.
//! - [`tokens`]: token estimates (tiktoken) when an upstream reports no usage.
//!
//! [`registry_from_config`] builds a registry from a validated config file.

pub mod anthropic;
mod http;
pub mod openai;
mod plain;
pub mod sse;
pub mod tokens;

/// Entry points for the fuzz targets (`fuzz/`); not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::plain::fuzz_answer;
}

use std::sync::Arc;

use infermux::config::{Config, ProviderKind};
use infermux::{EchoProvider, Error, Provider, Registry};

pub use anthropic::AnthropicProvider;
pub use openai::OpenAiProvider;

/// The registry a config file describes: its providers, in order, with their
/// aliases. A config file defines the whole registry (`echo` only when listed).
pub fn registry_from_config(config: &Config) -> Result<Registry, Error> {
    let registry = Registry::new();
    for c in &config.providers {
        let provider: Arc<dyn Provider> = match c.kind {
            ProviderKind::Echo => Arc::new(
                EchoProvider::new()
                    .named(c.name.clone())
                    .with_models(c.models.clone())
                    .with_delay(c.delay),
            ),
            ProviderKind::OpenAi | ProviderKind::Ollama | ProviderKind::AzureOpenAi => {
                Arc::new(OpenAiProvider::from_config(c).map_err(Error::from)?)
            }
            ProviderKind::Anthropic => {
                Arc::new(AnthropicProvider::from_config(c).map_err(Error::from)?)
            }
        };
        registry.register_with(
            provider,
            infermux::registry::ProviderOptions {
                aliases: c.model_aliases.clone(),
                breaker: Some(c.circuit_breaker.clone()),
                rate_limits: c.rate_limits,
            },
        )?;
    }
    Ok(registry)
}
