//! Active health checks: a background task per provider asks it, every
//! `interval`, whether it answers ([`Provider::health_check`]); a provider that
//! fails (or takes longer than `timeout`) is skipped by routing until a check
//! succeeds again.
//!
//! [`Provider::health_check`]: crate::Provider::health_check

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::registry::Registry;

/// How one provider is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub disabled: bool,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            disabled: false,
        }
    }
}

/// Starts a checking task for each named provider of `registry` (on the current
/// Tokio runtime). Abort the handles to stop them.
pub fn spawn_checks(
    registry: &Registry,
    checks: &[(String, HealthCheckConfig)],
) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for entry in registry.entries() {
        let Some((_, config)) = checks.iter().find(|(name, _)| **name == *entry.name) else {
            continue;
        };
        if config.disabled {
            continue;
        }
        let config = *config;
        handles.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let healthy = match tokio::time::timeout(config.timeout, entry.provider.health_check()).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::debug!(provider = %entry.name, error = %e, "health check failed");
                        false
                    }
                    Err(_) => false,
                };
                let was = entry.healthy.swap(healthy, Ordering::Relaxed);
                if was != healthy {
                    if healthy {
                        tracing::info!(provider = %entry.name, "provider is healthy again");
                    } else {
                        tracing::warn!(provider = %entry.name, "provider failed its health check; routing around it");
                    }
                }
            }
        }));
    }
    handles
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use async_trait::async_trait;

    use crate::error::ProviderError;
    use crate::provider::{CallContext, Provider};
    use crate::router::Router;
    use crate::types::{InferRequest, InferResponse};

    struct Flaky {
        models: Vec<String>,
        up: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait]
    impl Provider for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn models(&self) -> &[String] {
            &self.models
        }
        async fn health_check(&self) -> Result<(), ProviderError> {
            if self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(ProviderError::Unavailable("down".into()))
            }
        }
        async fn infer(
            &self,
            _: &CallContext<'_>,
            _: &InferRequest,
        ) -> Result<InferResponse, ProviderError> {
            Ok(InferResponse {
                content: "flaky".into(),
                finish_reason: "stop".into(),
                ..Default::default()
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unhealthy_provider_is_routed_around_until_it_recovers() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let registry = Registry::new();
        registry
            .register(Arc::new(Flaky {
                models: vec!["m".into()],
                up: up.clone(),
            }))
            .unwrap();
        registry
            .register(Arc::new(
                crate::echo::EchoProvider::new()
                    .named("steady")
                    .with_models(vec!["m".into()]),
            ))
            .unwrap();
        let config = HealthCheckConfig {
            interval: Duration::from_secs(10),
            ..HealthCheckConfig::default()
        };
        let handles = spawn_checks(
            &registry,
            &[("flaky".into(), config), ("steady".into(), config)],
        );
        let router = Router::without_spans(Arc::new(registry));
        tokio::time::sleep(Duration::from_millis(1)).await; // the first check runs at once
        let req = InferRequest::prompt("m", "x");
        assert_eq!(router.infer(&req).await.unwrap().provider, "steady");
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(router.infer(&req).await.unwrap().provider, "flaky");
        handles.iter().for_each(JoinHandle::abort);
    }
}
