//! Prometheus metrics, derived from the spans: every routed call reports
//! exactly one span, so counting spans counts calls — exactly, failures and
//! cancellations included. [`MetricsSink`] sits in front of the real span sink.
//!
//! Labels come from bounded sets: provider names from the config, model names
//! the providers received, and the error table's codes; a request for an
//! unknown model is labelled `model="unknown"`. A caller who names a provider
//! explicitly may send any model name to it, so each provider gets at most
//! [`MAX_MODELS`] model labels; calls for models beyond them are counted under
//! `model="other"`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::AtomicU64;

use crate::breaker::CircuitState;
use crate::registry::Registry;
use crate::trace::{SpanSink, SpanStatus, TraceSpan};

/// Labels that cost no allocation per call: the span's `Arc<str>` names.
type Labels = Vec<(&'static str, String)>;
type CallLabels = [(&'static str, Arc<str>); 2];
type StatusLabels = (
    [(&'static str, Arc<str>); 2],
    [(&'static str, &'static str); 1],
);

/// The metrics of one router.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<StatusLabels, Counter>,
    duration: Family<CallLabels, Histogram>,
    tokens: Family<StatusLabels, Counter>,
    cost: Family<CallLabels, Counter<f64, AtomicU64>>,
    fallbacks: Counter,
    circuit: Family<Labels, Gauge>,
    spans_dropped: Counter,
    /// The sink's drop count at the last scrape (the counter grows by the
    /// difference).
    spans_dropped_seen: AtomicU64,
    /// Tells this instance's entries in the per-thread handle caches apart.
    id: u64,
    /// The model labels each provider has, up to [`MAX_MODELS`].
    models:
        std::sync::RwLock<std::collections::HashMap<Arc<str>, std::collections::HashSet<Arc<str>>>>,
}

/// One provider and model's series for successful calls, looked up once and
/// kept per thread: counting a call is then a few atomic adds, not five
/// label-hashing look-ups behind the families' shared locks.
struct Handles {
    metrics: u64,
    provider: Arc<str>,
    /// The span's model (what the cache is looked up by).
    model: Arc<str>,
    /// Its label: the model, or `other` past a provider's [`MAX_MODELS`].
    label: Arc<str>,
    requests: Counter,
    duration: Histogram,
    /// Made when first needed (a series appears with its first count).
    /// By [`DIRECTIONS`].
    tokens: [Option<Counter>; 5],
    cost: Option<Counter<f64, AtomicU64>>,
}

/// The `direction` label values of `infermux_tokens_total`, in the order of
/// [`token_counts`]. `cached_input` and `cache_write` are part of `input`,
/// `reasoning` of `output`.
pub const DIRECTIONS: [&str; 5] = [
    "input",
    "output",
    "cached_input",
    "cache_write",
    "reasoning",
];

fn token_counts(a: &crate::trace::SpanAttrs) -> [u64; 5] {
    [
        a.tokens_in,
        a.tokens_out,
        a.tokens_cached,
        a.tokens_cache_write,
        a.tokens_reasoning,
    ]
}

/// Handles kept per thread, at most this many (then the cache starts over).
const MAX_HANDLES: usize = 64;

/// Model labels per provider, at most this many; later models are `other`.
pub const MAX_MODELS: usize = 256;

thread_local! {
    static HANDLES: std::cell::RefCell<Vec<Handles>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = Family::<StatusLabels, Counter>::default();
        let duration = Family::<CallLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let tokens = Family::<StatusLabels, Counter>::default();
        let cost = Family::<CallLabels, Counter<f64, AtomicU64>>::default();
        let fallbacks = Counter::default();
        let circuit = Family::<Labels, Gauge>::default();
        let spans_dropped = Counter::default();
        registry.register(
            "infermux_requests",
            "Routed calls, by provider, model and status (ok or the error code)",
            requests.clone(),
        );
        registry.register(
            "infermux_request_duration_seconds",
            "Duration of routed calls",
            duration.clone(),
        );
        registry.register(
            "infermux_tokens",
            "Tokens, by provider, model and direction (input, output; cached_input and cache_write are part of input, reasoning of output)",
            tokens.clone(),
        );
        registry.register(
            "infermux_cost_usd",
            "Cost of routed calls in USD",
            cost.clone(),
        );
        registry.register(
            "infermux_fallbacks",
            "Calls moved to another provider after a failed attempt",
            fallbacks.clone(),
        );
        registry.register(
            "infermux_circuit_state",
            "Circuit state per provider: 0 closed, 1 half-open, 2 open",
            circuit.clone(),
        );
        registry.register(
            "infermux_spans_dropped",
            "TokenTrace spans dropped or not delivered",
            spans_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            tokens,
            cost,
            fallbacks,
            circuit,
            spans_dropped,
            spans_dropped_seen: AtomicU64::new(0),
            models: Default::default(),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    fn observe(&self, span: &TraceSpan) {
        static NONE: std::sync::LazyLock<(Arc<str>, Arc<str>)> =
            std::sync::LazyLock::new(|| (Arc::from("none"), Arc::from("unknown")));
        let a = &span.attrs;
        let (provider, model) = if a.provider.is_empty() {
            (NONE.0.clone(), NONE.1.clone())
        } else {
            (a.provider.clone(), a.model.clone())
        };
        let seconds = span.end_ns.saturating_sub(span.start_ns) as f64 / 1e9;
        if a.attempts > 1 {
            self.fallbacks.inc_by(u64::from(a.attempts - 1));
        }
        let status = match span.status {
            SpanStatus::Ok => {
                let counted = HANDLES.try_with(|cache| {
                    let mut cache = cache.borrow_mut();
                    let h = self.handles(&mut cache, &provider, &model);
                    self.count_ok(h, seconds, token_counts(a), a.cost_usd);
                });
                if counted.is_ok() {
                    return;
                }
                "ok"
            }
            SpanStatus::Error => a.error_code.unwrap_or("error"),
        };
        let model = self.model_label(&provider, model);
        let pm: CallLabels = [("provider", provider), ("model", model)];
        self.requests
            .get_or_create(&(pm.clone(), [("status", status)]))
            .inc();
        self.duration.get_or_create(&pm).observe(seconds);
        for (n, direction) in token_counts(a).into_iter().zip(DIRECTIONS) {
            if n > 0 {
                self.tokens
                    .get_or_create(&(pm.clone(), [("direction", direction)]))
                    .inc_by(n);
            }
        }
        if a.cost_usd > 0.0 {
            self.cost.get_or_create(&pm).inc_by(a.cost_usd);
        }
    }

    /// This thread's handles for `provider` and `model`, made if missing.
    fn handles<'c>(
        &self,
        cache: &'c mut Vec<Handles>,
        provider: &Arc<str>,
        model: &Arc<str>,
    ) -> &'c mut Handles {
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        let found = cache.iter().position(|h| {
            h.metrics == self.id && same(&h.provider, provider) && same(&h.model, model)
        });
        let i = match found {
            Some(i) => i,
            None => {
                if cache.len() >= MAX_HANDLES {
                    cache.clear();
                }
                let label = self.model_label(provider, model.clone());
                let pm: CallLabels = [("provider", provider.clone()), ("model", label.clone())];
                cache.push(Handles {
                    metrics: self.id,
                    provider: provider.clone(),
                    model: model.clone(),
                    label,
                    requests: self
                        .requests
                        .get_or_create(&(pm.clone(), [("status", "ok")]))
                        .clone(),
                    duration: self.duration.get_or_create(&pm).clone(),
                    tokens: Default::default(),
                    cost: None,
                });
                cache.len() - 1
            }
        };
        &mut cache[i]
    }

    /// `model` as `provider`'s model label: itself while the provider has
    /// fewer than [`MAX_MODELS`] labels (or already has it), else `other`.
    fn model_label(&self, provider: &Arc<str>, model: Arc<str>) -> Arc<str> {
        static OTHER: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from("other"));
        // Known models (and a provider at its cap) need only the read lock,
        // which calls on several threads share; admitting a model writes.
        {
            let models = self
                .models
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match models.get(provider) {
                Some(seen) if seen.contains(&model) => return model,
                Some(seen) if seen.len() >= MAX_MODELS => return OTHER.clone(),
                _ => {}
            }
        }
        let mut models = self
            .models
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = models.entry(provider.clone()).or_default();
        if seen.contains(&model) {
            return model;
        }
        if seen.len() < MAX_MODELS {
            seen.insert(model.clone());
            return model;
        }
        OTHER.clone()
    }

    /// Counts a successful call on its cached handles.
    fn count_ok(&self, h: &mut Handles, seconds: f64, tokens: [u64; 5], cost: f64) {
        h.requests.inc();
        h.duration.observe(seconds);
        let pm =
            || -> CallLabels { [("provider", h.provider.clone()), ("model", h.label.clone())] };
        for ((n, direction), handle) in tokens.into_iter().zip(DIRECTIONS).zip(&mut h.tokens) {
            if n > 0 {
                handle
                    .get_or_insert_with(|| {
                        self.tokens
                            .get_or_create(&(pm(), [("direction", direction)]))
                            .clone()
                    })
                    .inc_by(n);
            }
        }
        if cost > 0.0 {
            h.cost
                .get_or_insert_with(|| self.cost.get_or_create(&pm()).clone())
                .inc_by(cost);
        }
    }

    /// The Prometheus text exposition, with the circuit states of `registry`'s
    /// providers and the spans dropped so far read now.
    pub fn render(&self, registry: &Registry, spans_dropped: u64) -> String {
        for e in registry.entries() {
            let v = match e.breaker.state() {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            };
            self.circuit
                .get_or_create(&vec![("provider", e.name.to_string())])
                .set(v);
        }
        let seen = self
            .spans_dropped_seen
            .fetch_max(spans_dropped, std::sync::atomic::Ordering::Relaxed);
        if spans_dropped > seen {
            self.spans_dropped.inc_by(spans_dropped - seen);
        }
        let mut out = String::with_capacity(4096);
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A span sink that counts each span into [`Metrics`], then passes it on.
pub struct MetricsSink {
    metrics: Arc<Metrics>,
    next: Arc<dyn SpanSink>,
}

impl MetricsSink {
    pub fn new(metrics: Arc<Metrics>, next: Arc<dyn SpanSink>) -> Self {
        MetricsSink { metrics, next }
    }
}

impl SpanSink for MetricsSink {
    fn report(&self, span: TraceSpan) {
        self.metrics.observe(&span);
        self.next.report(span);
    }

    fn dropped(&self) -> u64 {
        self.next.dropped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Id128, SpanAttrs};

    fn span(
        provider: &str,
        model: &str,
        status: SpanStatus,
        code: Option<&'static str>,
        attempts: u32,
    ) -> TraceSpan {
        TraceSpan {
            trace_id: Id128(1),
            span_id: Id128(2),
            parent_id: None,
            operation: crate::trace::OPERATION,
            start_ns: 0,
            end_ns: 2_000_000,
            status,
            attrs: SpanAttrs {
                provider: provider.into(),
                model: model.into(),
                tokens_in: 3,
                tokens_out: 4,
                cost_usd: 0.5,
                attempts,
                error_code: code,
                ..SpanAttrs::default()
            },
        }
    }

    #[test]
    fn spans_become_counters_with_bounded_labels() {
        let m = Metrics::new();
        m.observe(&span("openai", "gpt-4o", SpanStatus::Ok, None, 2));
        m.observe(&span(
            "openai",
            "gpt-4o",
            SpanStatus::Error,
            Some("upstream_error"),
            1,
        ));
        m.observe(&span(
            "",
            "whatever-the-caller-typed",
            SpanStatus::Error,
            Some("model_not_found"),
            0,
        ));
        let text = m.render(&Registry::new(), 7);
        for line in [
            r#"infermux_requests_total{provider="openai",model="gpt-4o",status="ok"} 1"#,
            r#"infermux_requests_total{provider="openai",model="gpt-4o",status="upstream_error"} 1"#,
            r#"infermux_requests_total{provider="none",model="unknown",status="model_not_found"} 1"#,
            r#"infermux_tokens_total{provider="openai",model="gpt-4o",direction="input"} 6"#,
            r#"infermux_tokens_total{provider="openai",model="gpt-4o",direction="output"} 8"#,
            r#"infermux_cost_usd_total{provider="openai",model="gpt-4o"} 1.0"#,
            "infermux_fallbacks_total 1",
            "infermux_spans_dropped_total 7",
            r#"infermux_request_duration_seconds_count{provider="openai",model="gpt-4o"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(!text.contains("whatever-the-caller-typed"));
    }

    #[test]
    fn model_labels_per_provider_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_MODELS + 40 {
            let model = format!("m{i}");
            m.observe(&span("pinned", &model, SpanStatus::Ok, None, 1));
            m.observe(&span(
                "pinned",
                &model,
                SpanStatus::Error,
                Some("upstream_error"),
                1,
            ));
        }
        // A model admitted before the cap keeps its label.
        m.observe(&span("pinned", "m0", SpanStatus::Ok, None, 1));
        // Another provider has labels of its own.
        m.observe(&span("other-provider", "x", SpanStatus::Ok, None, 1));
        let text = m.render(&Registry::new(), 0);
        let ok_series = text
            .lines()
            .filter(|l| {
                l.starts_with("infermux_requests_total{provider=\"pinned\"")
                    && l.contains("status=\"ok\"")
            })
            .count();
        assert_eq!(ok_series, MAX_MODELS + 1, "{MAX_MODELS} models and other");
        for want in [
            r#"infermux_requests_total{provider="pinned",model="other",status="ok"} 40"#,
            r#"infermux_requests_total{provider="pinned",model="other",status="upstream_error"} 40"#,
            r#"infermux_requests_total{provider="pinned",model="m0",status="ok"} 2"#,
            r#"infermux_requests_total{provider="other-provider",model="x",status="ok"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want}");
        }
    }

    #[test]
    fn cached_handles_count_per_instance_and_survive_many_models() {
        let (a, b) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            a.observe(&span("openai", "gpt-4o", SpanStatus::Ok, None, 1));
        }
        b.observe(&span("openai", "gpt-4o", SpanStatus::Ok, None, 1));
        let mut quiet = span("openai", "free", SpanStatus::Ok, None, 1);
        (
            quiet.attrs.tokens_in,
            quiet.attrs.tokens_out,
            quiet.attrs.cost_usd,
        ) = (0, 0, 0.0);
        a.observe(&quiet);
        // More models than a thread keeps handles for: the cache starts over.
        for i in 0..(MAX_HANDLES + 5) {
            a.observe(&span("openai", &format!("m{i}"), SpanStatus::Ok, None, 1));
        }
        a.observe(&span("openai", "gpt-4o", SpanStatus::Ok, None, 1));
        let text = a.render(&Registry::new(), 0);
        for line in [
            r#"infermux_requests_total{provider="openai",model="gpt-4o",status="ok"} 4"#,
            r#"infermux_tokens_total{provider="openai",model="gpt-4o",direction="input"} 12"#,
            r#"infermux_cost_usd_total{provider="openai",model="gpt-4o"} 2.0"#,
            r#"infermux_requests_total{provider="openai",model="free",status="ok"} 1"#,
            r#"infermux_requests_total{provider="openai",model="m0",status="ok"} 1"#,
            r#"infermux_request_duration_seconds_count{provider="openai",model="m68"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(!text.contains(r#"model="free",direction"#), "{text}");
        assert!(!text.contains(r#"infermux_cost_usd_total{provider="openai",model="free"}"#));
        let text = b.render(&Registry::new(), 0);
        assert!(
            text.contains(
                r#"infermux_requests_total{provider="openai",model="gpt-4o",status="ok"} 1"#
            ),
            "{text}"
        );
    }
}
