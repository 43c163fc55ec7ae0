//! Active health checks: a background task per provider asks it, every
//! `interval`, whether it answers ([`Provider::health_check`]); a provider
//! whose check fails is skipped by routing until a check (or a real call)
//! succeeds again.
//!
//! A check proves a provider down only the way a real call would fail: no
//! connection, no answer in time, a 5xx or a garbled answer
//! ([`ProviderError::Unavailable`], [`ProviderError::Timeout`]). Any other
//! answer shows a live server. A check endpoint the upstream does not serve
//! or lets no one read (401, 403, 404, 405: many OpenAI-compatible servers
//! have no `/models`, or keep it behind another key) means there is nothing
//! to probe: that is logged once and the provider stays in. After a failed
//! check the next comes sooner, from 1 s doubling up to `interval`, so a
//! provider that comes back is back within about a second or two.
//!
//! [`Provider::health_check`]: crate::Provider::health_check

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::error::ProviderError;
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

/// The first wait after a failed check; it doubles up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What one check says.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Up,
    /// Failed as a real call would: the provider is down.
    Down,
    /// The check endpoint is absent or forbidden (this status): no probe.
    Absent(u16),
}

fn probe(result: Result<Result<(), ProviderError>, tokio::time::error::Elapsed>) -> Probe {
    match result {
        Ok(Ok(())) => Probe::Up,
        Err(_) => Probe::Down,
        Ok(Err(e)) => match e {
            ProviderError::Unavailable(_) | ProviderError::Timeout(_) => Probe::Down,
            ProviderError::Rejected {
                status: status @ (401 | 403 | 404 | 405),
                ..
            } => Probe::Absent(status),
            // An adapter with nothing to check at.
            ProviderError::InvalidRequest(_) => Probe::Absent(0),
            // It answered (a 400, a 429): it is up.
            ProviderError::Rejected { .. }
            | ProviderError::RateLimited(_)
            | ProviderError::Internal(_) => Probe::Up,
        },
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
            let mut retry = FIRST_RETRY.min(config.interval);
            loop {
                let result =
                    tokio::time::timeout(config.timeout, entry.provider.health_check()).await;
                let failure = match &result {
                    Ok(Err(e)) => crate::redact::redact(&e.to_string()).into_owned(),
                    Err(_) => format!("no answer within {:?}", config.timeout),
                    Ok(Ok(())) => String::new(),
                };
                let (healthy, wait) = match probe(result) {
                    Probe::Up => (true, config.interval),
                    Probe::Down => {
                        let wait = retry;
                        retry = (retry * 2).min(config.interval);
                        tracing::debug!(provider = %entry.name, error = %failure, retry_in_ms = wait.as_millis() as u64, "health check failed");
                        (false, wait)
                    }
                    Probe::Absent(status) => {
                        tracing::info!(provider = %entry.name, status, reason = %failure, "the provider has no health check endpoint it lets us read; not probing it (real calls still feed its circuit breaker)");
                        entry.healthy.store(true, Ordering::Relaxed);
                        return;
                    }
                };
                if healthy {
                    retry = FIRST_RETRY.min(config.interval);
                }
                let was = entry.healthy.swap(healthy, Ordering::Relaxed);
                if was != healthy {
                    if healthy {
                        tracing::info!(provider = %entry.name, "provider is healthy again");
                    } else {
                        tracing::warn!(provider = %entry.name, error = %failure, "provider failed its health check; routing around it");
                    }
                }
                tokio::time::sleep(wait).await;
            }
        }));
    }
    handles
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use async_trait::async_trait;

    use crate::error::ProviderError;
    use crate::provider::{CallContext, Provider};
    use crate::router::Router;
    use crate::types::{InferRequest, InferResponse};

    /// A provider whose health check answers `Ok` when `up`, else `down`;
    /// `checks` counts the checks.
    struct Flaky {
        models: Vec<String>,
        up: Arc<AtomicBool>,
        down: ProviderError,
        checks: Arc<AtomicUsize>,
    }

    impl Flaky {
        fn new(down: ProviderError) -> Flaky {
            Flaky {
                models: vec!["m".into()],
                up: Arc::new(AtomicBool::new(false)),
                down,
                checks: Arc::default(),
            }
        }
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
            self.checks.fetch_add(1, Ordering::SeqCst);
            if self.up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(self.down.clone())
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

    fn registry(flaky: Flaky) -> Registry {
        let registry = Registry::new();
        registry.register(Arc::new(flaky)).unwrap();
        registry
            .register(Arc::new(
                crate::echo::EchoProvider::new()
                    .named("steady")
                    .with_models(vec!["m".into()]),
            ))
            .unwrap();
        registry
    }

    fn every(interval: Duration) -> HealthCheckConfig {
        HealthCheckConfig {
            interval,
            ..HealthCheckConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unhealthy_provider_is_routed_around_until_it_recovers() {
        let flaky = Flaky::new(ProviderError::Unavailable("connection refused".into()));
        let up = flaky.up.clone();
        let registry = registry(flaky);
        let config = every(Duration::from_secs(10));
        let handles = spawn_checks(
            &registry,
            &[("flaky".into(), config), ("steady".into(), config)],
        );
        let router = Router::without_spans(Arc::new(registry));
        tokio::time::sleep(Duration::from_millis(1)).await; // the first check runs at once
        let req = InferRequest::prompt("m", "x");
        assert_eq!(router.infer(&req).await.unwrap().provider, "steady");
        up.store(true, Ordering::SeqCst);
        // Checked again 1 s after the failure, not a whole interval later.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(router.infer(&req).await.unwrap().provider, "flaky");
        handles.iter().for_each(JoinHandle::abort);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_checks_back_off_from_a_second_up_to_the_interval() {
        let flaky = Flaky::new(ProviderError::Timeout("no answer".into()));
        let checks = flaky.checks.clone();
        let registry = registry(flaky);
        let handles = spawn_checks(
            &registry,
            &[("flaky".into(), every(Duration::from_secs(10)))],
        );
        // Checks at 0, 1, 3, 7, 15, 25, 35 s: waits of 1, 2, 4, 8, then the
        // interval. `seen[k]`: the checks made by k + 0.5 s.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut seen = Vec::new();
        for _ in 0..=36 {
            seen.push(checks.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let at = |s: usize| seen[s];
        assert_eq!((at(0), at(1), at(2), at(3)), (1, 2, 2, 3), "{seen:?}");
        assert_eq!((at(6), at(7), at(14), at(15)), (3, 4, 4, 5), "{seen:?}");
        assert_eq!((at(24), at(25), at(34), at(35)), (5, 6, 6, 7), "{seen:?}");
        handles.iter().for_each(JoinHandle::abort);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_endpoint_absent_or_forbidden_is_no_probe() {
        for status in [401, 403, 404, 405] {
            let flaky = Flaky::new(ProviderError::Rejected {
                status,
                message: "no such route".into(),
            });
            let checks = flaky.checks.clone();
            let registry = registry(flaky);
            let handles = spawn_checks(
                &registry,
                &[("flaky".into(), every(Duration::from_secs(10)))],
            );
            let router = Router::without_spans(Arc::new(registry));
            tokio::time::sleep(Duration::from_secs(60)).await;
            let req = InferRequest::prompt("m", "x");
            assert_eq!(
                router.infer(&req).await.unwrap().provider,
                "flaky",
                "{status}"
            );
            assert_eq!(checks.load(Ordering::SeqCst), 1, "{status}: asked once");
            handles.iter().for_each(JoinHandle::abort);
        }
    }

    /// A provider whose calls wait for `gate`.
    struct Gated {
        models: Vec<String>,
        gate: Arc<tokio::sync::Notify>,
    }

    #[async_trait]
    impl Provider for Gated {
        fn name(&self) -> &str {
            "gated"
        }
        fn models(&self) -> &[String] {
            &self.models
        }
        async fn infer(
            &self,
            _: &CallContext<'_>,
            _: &InferRequest,
        ) -> Result<InferResponse, ProviderError> {
            self.gate.notified().await;
            Ok(InferResponse {
                finish_reason: "stop".into(),
                ..Default::default()
            })
        }
    }

    #[tokio::test]
    async fn a_real_call_that_succeeds_marks_its_provider_healthy() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let registry = Registry::new();
        registry
            .register(Arc::new(Gated {
                models: vec!["m".into()],
                gate: gate.clone(),
            }))
            .unwrap();
        let flag = registry.entries()[0].healthy.clone();
        let router = Router::without_spans(Arc::new(registry));
        let req = InferRequest::prompt("m", "x");
        let call = router.infer(&req);
        tokio::pin!(call);
        // In flight (past its permit) when a check marks the provider down.
        assert!(futures_util::FutureExt::now_or_never(call.as_mut()).is_none());
        flag.store(false, Ordering::SeqCst);
        gate.notify_one();
        assert_eq!(call.await.unwrap().provider, "gated");
        assert!(flag.load(Ordering::SeqCst), "the success marked it healthy");
    }

    #[test]
    fn only_what_fails_a_real_call_proves_a_provider_down() {
        let of = |e: ProviderError| probe(Ok(Err(e)));
        assert_eq!(of(ProviderError::Unavailable("503".into())), Probe::Down);
        assert_eq!(of(ProviderError::Timeout("slow".into())), Probe::Down);
        assert_eq!(of(ProviderError::RateLimited("429".into())), Probe::Up);
        assert_eq!(
            of(ProviderError::Rejected {
                status: 400,
                message: String::new()
            }),
            Probe::Up
        );
        assert_eq!(
            of(ProviderError::Rejected {
                status: 404,
                message: String::new()
            }),
            Probe::Absent(404)
        );
        assert_eq!(probe(Ok(Ok(()))), Probe::Up);
    }
}
