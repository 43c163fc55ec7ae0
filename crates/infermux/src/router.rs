//! The router: resolve → call → account → report. HTTP, gRPC and the CLI all call
//! [`Router::call`] or [`Router::call_stream`]; nothing else routes a request.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_core::Stream;
use futures_util::FutureExt;

use crate::breaker::{Admission, CircuitState, Outcome};
use crate::callers::{CallRow, Callers, Grant, Key, Ledger};
use crate::cost::Price;
use crate::cost::{Pricing, price_of};
use crate::error::{Error, ErrorKind, ProviderError};
use crate::metrics::{Metrics, MetricsSink};
use crate::provider::{CallContext, ChunkStream};
use crate::registry::{Registry, Route};
use crate::trace::{
    Id128, NoopSink, OPERATION, SpanAttrs, SpanSink, SpanStatus, TraceContext, TraceSpan, now_ns,
};
use crate::types::{
    EmbedRequest, EmbedResponse, InferChunk, InferRequest, InferResponse, TokenCount, Usage,
};
use crate::validate::validate_request;

/// Providers a request may try when the router is not told otherwise.
pub const DEFAULT_MAX_ATTEMPTS: usize = 3;

/// What an edge knows about a request beyond its body.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The caller's trace, from an incoming `traceparent`; `None` starts a new one.
    pub trace: Option<TraceContext>,
    /// How long the caller waits; the provider call is cancelled when it elapses.
    pub timeout: Option<Duration>,
    /// The caller's key, checked by the edge ([`Callers::authenticate`]).
    pub key: Option<Arc<Key>>,
    /// Who the caller says it is (`X-Infermux-Caller`, the OpenAI `user`
    /// field); `meta.caller` of the request when unset.
    pub caller: Option<Arc<str>>,
    /// The ingress dialect, for the ledger (`openai`, `mist`, `grpc`, ...).
    pub dialect: &'static str,
}

impl RequestContext {
    /// What the caller's key and team budgets have left now (`None`: no
    /// key, or no budget applies).
    pub fn budget_remaining(&self) -> Option<f64> {
        self.key
            .as_ref()
            .and_then(|k| k.budget_remaining(crate::callers::now_ms()))
    }
}

/// A completed call: the response and what the edges report beside it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub response: InferResponse,
    /// The model name the provider received (after aliases).
    pub upstream_model: Arc<str>,
    pub trace: TraceContext,
    pub span_id: Id128,
    /// How the provider was chosen.
    pub strategy: Strategy,
    /// The route group the model belongs to, if any.
    pub route_group: Option<Arc<str>>,
    /// What the caller's key and team budgets have left after this call
    /// (`None`: no budget applies).
    pub budget_remaining: Option<f64>,
}

/// Models routed their own way: a strategy and, optionally, a subset of the
/// providers.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteGroup {
    pub name: Arc<str>,
    /// The model names (or aliases) callers use.
    pub models: Vec<String>,
    /// Overrides the router's strategy for these models.
    pub strategy: Option<Strategy>,
    /// Only these providers serve the group (empty: every provider).
    pub providers: Vec<String>,
}

/// What `prepare` decided for one request.
struct Plan {
    routes: Vec<Route>,
    strategy: Strategy,
    group: Option<Arc<str>>,
}

/// Routes requests to the providers of a [`Registry`] and reports a span per call.
#[derive(Clone)]
pub struct Router {
    registry: Arc<Registry>,
    spans: Arc<dyn SpanSink>,
    metrics: Arc<Metrics>,
    pricing: Arc<Pricing>,
    /// Providers one request may try, the first included (1 = no fallback).
    max_attempts: usize,
    strategy: Strategy,
    /// `least_latency`: weight of the newest latency, and successes a
    /// provider needs before its average counts.
    ewma_decay: f64,
    min_samples: u32,
    /// `round_robin`: where the next request starts.
    next: Arc<std::sync::atomic::AtomicUsize>,
    /// Model → the route group it belongs to.
    groups: Arc<std::collections::HashMap<String, Arc<RouteGroup>>>,
    /// The whole call's deadline when the caller sets none.
    request_timeout: Option<Duration>,
    /// Keys, budgets and the ledger; `None`: calls are neither checked nor
    /// written down.
    callers: Option<Arc<Callers>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("registry", &self.registry)
            .finish()
    }
}

impl Router {
    /// A router over `registry` that reports spans to `spans`, and counts every
    /// call in its [`Metrics`].
    pub fn new(registry: Arc<Registry>, spans: Arc<dyn SpanSink>) -> Self {
        let metrics = Arc::new(Metrics::new());
        Router {
            registry,
            spans: Arc::new(MetricsSink::new(metrics.clone(), spans)),
            metrics,
            pricing: Arc::new(Pricing::default()),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            strategy: Strategy::Priority,
            ewma_decay: 0.3,
            min_samples: 5,
            next: Arc::default(),
            groups: Arc::default(),
            request_timeout: None,
            callers: None,
        }
    }

    /// The same router bounding every call, fallback included, by `timeout`
    /// when its caller gives no deadline of its own (504 when it elapses).
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// `ctx` with the default deadline when it has none.
    fn deadline_of(&self, ctx: &RequestContext) -> RequestContext {
        RequestContext {
            timeout: ctx.timeout.or(self.request_timeout),
            ..ctx.clone()
        }
    }

    /// The same router checking keys and budgets of `callers`, and writing
    /// every call to their ledger.
    pub fn with_callers(mut self, callers: Arc<Callers>) -> Self {
        self.callers = Some(callers);
        self
    }

    /// The keys, teams and ledger this router checks and writes to.
    pub fn callers(&self) -> Option<&Arc<Callers>> {
        self.callers.as_ref()
    }

    /// The ledger, borrowed (for a call that lives within this borrow).
    fn ledger(&self) -> Option<&dyn Ledger> {
        self.callers.as_ref()?.ledger().map(|l| &**l)
    }

    /// Starts a call's accounting: the caller's model list (403 before
    /// anything else), and the row the ledger will get.
    fn open_account(
        &self,
        ctx: &RequestContext,
        req_meta: Option<&std::collections::BTreeMap<String, String>>,
        span: &mut PendingSpan<'_>,
    ) -> Result<(), Error> {
        let Some(callers) = &self.callers else {
            return Ok(());
        };
        if let Some(key) = &ctx.key {
            key.check_model(&span.attrs.model)?;
        }
        let caller = ctx.caller.clone().or_else(|| {
            req_meta
                .and_then(|m| m.get("caller"))
                .filter(|c| !c.is_empty())
                .map(|c| Arc::from(crate::validate::truncate(c, 256)))
        });
        span.account = Some(Box::new(Account {
            // Borrowed for a call within the router's borrow: a shared
            // `Arc`'s count bounced between cores on every call.
            ledger: callers.ledger().map(|l| match span.sink {
                Sink::Borrowed(_) => LedgerRef::Borrowed,
                Sink::Shared(_) => LedgerRef::Shared(l.clone()),
            }),
            key: ctx.key.clone(),
            grant: None,
            caller,
            dialect: ctx.dialect,
            asked: span.attrs.model.clone(),
            ts_ms: crate::callers::now_ms(),
            status: 500,
        }));
        Ok(())
    }

    /// Admits the caller's key to the planned call: rate limits, and a
    /// reservation of its worst-case cost on the dearest planned route.
    fn admit(
        &self,
        plan: &Plan,
        prompt_tokens: u64,
        max_tokens: Option<i64>,
        span: &mut PendingSpan<'_>,
    ) -> Result<(), Error> {
        let (Some(callers), Some(account)) = (&self.callers, span.account.as_mut()) else {
            return Ok(());
        };
        let Some(key) = &account.key else {
            return Ok(());
        };
        let output = max_tokens
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(callers.default_reserve_tokens());
        let worst = plan
            .routes
            .iter()
            .map(|r| {
                self.pricing.cost(
                    &r.provider_name,
                    &r.upstream_model,
                    Usage::new(prompt_tokens, output),
                )
            })
            .fold(0.0, f64::max);
        account.grant = Some(callers.admit(key, &account.asked, worst)?);
        Ok(())
    }

    /// The same router with route groups: each group's models are routed by
    /// its strategy, among its providers.
    pub fn with_groups(mut self, groups: Vec<RouteGroup>) -> Self {
        let mut by_model = std::collections::HashMap::new();
        for g in groups {
            let g = Arc::new(g);
            for m in &g.models {
                by_model.entry(m.clone()).or_insert_with(|| g.clone());
            }
        }
        self.groups = Arc::new(by_model);
        self
    }

    /// The same router ordering each request's candidate providers by
    /// `strategy` (priority: declaration order).
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// `least_latency` tuning: the newest sample's weight in the moving average
    /// (0 < decay ≤ 1) and the successes a provider needs before its average
    /// counts (until then it is tried first, so new providers get measured).
    pub fn with_latency_tuning(mut self, ewma_decay: f64, min_samples: u32) -> Self {
        self.ewma_decay = ewma_decay.clamp(f64::MIN_POSITIVE, 1.0);
        self.min_samples = min_samples;
        self
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Calls `listener(provider, from, to)` on every circuit state change,
    /// before the next request sees the new state.
    pub fn on_circuit_change(
        &self,
        listener: impl Fn(&str, crate::breaker::CircuitState, crate::breaker::CircuitState)
        + Send
        + Sync
        + 'static,
    ) {
        self.registry.on_circuit_change(Arc::new(listener));
    }

    /// The providers `req` would try, in order, as the strategy orders them now
    /// (circuits and rate limits are consulted only when calling).
    pub fn choose(&self, req: &InferRequest) -> Result<Vec<Route>, Error> {
        let mut span = PendingSpan::detached(req);
        self.prepare(req, &RequestContext::default(), &mut span)
            .map(|plan| plan.routes)
    }

    /// The same router trying at most `max_attempts` providers per request: on a
    /// retryable failure (5xx, connection error, upstream timeout or 429) the
    /// next provider that serves the model gets the request, within the caller's
    /// deadline. `1` turns fallback off.
    pub fn with_fallback(mut self, max_attempts: usize) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// The same router pricing calls with `pricing` (config overrides on top of
    /// the built-in table).
    pub fn with_pricing(mut self, pricing: Pricing) -> Self {
        self.pricing = Arc::new(pricing);
        self
    }

    /// A router that reports no spans.
    pub fn without_spans(registry: Arc<Registry>) -> Self {
        Self::new(registry, Arc::new(NoopSink))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn spans(&self) -> &Arc<dyn SpanSink> {
        &self.spans
    }

    /// The Prometheus text exposition of this router's metrics.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.registry, self.spans.dropped())
    }

    /// Routes `req` with no trace context and no deadline.
    pub async fn infer(&self, req: &InferRequest) -> Result<InferResponse, Error> {
        self.call(req, &RequestContext::default())
            .await
            .map(|r| r.response)
    }

    /// Routes one request: validates it, resolves its provider, calls it within
    /// the caller's deadline, and reports exactly one span, whatever happens
    /// (a call dropped by its caller reports a `cancelled` error span).
    pub async fn call(&self, req: &InferRequest, ctx: &RequestContext) -> Result<Routed, Error> {
        let ctx = &self.deadline_of(ctx);
        let mut span =
            PendingSpan::start(Sink::Borrowed(&*self.spans), self.ledger(), ctx, &req.model);
        let mut result = self.call_inner(req, ctx, &mut span).await;
        match &mut result {
            Ok(routed) => {
                span.finish_ok(&routed.response);
                routed.budget_remaining = ctx.budget_remaining();
            }
            Err(e) => span.finish_err(e),
        }
        result
    }

    async fn call_inner(
        &self,
        req: &InferRequest,
        ctx: &RequestContext,
        span: &mut PendingSpan<'_>,
    ) -> Result<Routed, Error> {
        let plan = self.prepare(req, ctx, span)?;
        let (route, mut response, strategy, group) = self
            .attempt(plan, &req.model, ctx, span, |route, cctx| async move {
                let cctx = cctx.with_model(&route.upstream_model);
                route.provider.infer(&cctx, req).await
            })
            .await?;
        if let Some(limiter) = &route.limiter {
            limiter.add_tokens(response.tokens_in + response.tokens_out);
        }
        response.cost_usd = self.cost(&route, response.usage(), response.cost_usd);
        response.model = caller_model(req, &route);
        response.provider = route.provider_name.to_string();
        response.latency_ms = elapsed_ms(span);
        Ok(Routed {
            response,
            upstream_model: route.upstream_model,
            trace: span.trace,
            span_id: span.span_id,
            strategy,
            route_group: group,
            budget_remaining: None,
        })
    }

    /// Tries the planned providers in order: each gets a permit from its
    /// breaker and rate limits, one call (`call`, within what is left of the
    /// caller's deadline, panics caught), and its outcome recorded; a retryable
    /// failure moves to the next. Returns the route that answered.
    async fn attempt<T, F, Fut>(
        &self,
        plan: Plan,
        model: &str,
        ctx: &RequestContext,
        span: &mut PendingSpan<'_>,
        mut call: F,
    ) -> Result<(Route, T, Strategy, Option<Arc<str>>), Error>
    where
        F: FnMut(Route, CallContext<'static>) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let Plan {
            routes,
            strategy,
            group,
        } = plan;
        let count = routes.len();
        let mut attempts = 0;
        let mut last_error = None;
        let mut limited = false;
        for (i, route) in routes.into_iter().enumerate() {
            let Some(permit) = Permit::acquire(&route, &mut limited) else {
                continue;
            };
            attempts += 1;
            span.note_attempt(&route, attempts);
            let cctx = span.call_context_detached(ctx);
            let fut = AssertUnwindSafe(call(route.clone(), cctx)).catch_unwind();
            // The first attempt starts with the span (planning took well
            // under a millisecond): one clock read fewer per call.
            let started = if attempts == 1 {
                span.started
            } else {
                Instant::now()
            };
            let outcome = match with_deadline(span.remaining(ctx), &route, fut).await {
                Err(e) => Err(permit.caller_gave_up(e)),
                Ok(done) => {
                    let answered = Instant::now();
                    span.answered = Some(answered);
                    permit.record(
                        done.map_err(|_| panicked(&route))
                            .and_then(|r| r.map_err(Error::from)),
                        answered.saturating_duration_since(started),
                        self.ewma_decay,
                    )
                }
            };
            match outcome {
                Ok(value) => return Ok((route, value, strategy, group)),
                Err(e) if i + 1 < count && span.may_retry(&e, ctx) => {
                    tracing::debug!(provider = %route.provider_name, error = %e, "attempt failed; trying the next provider");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| no_eligible_provider(model, limited)))
    }

    /// Routes one embeddings request, reporting one span like any other call.
    pub async fn embed(
        &self,
        req: &EmbedRequest,
        ctx: &RequestContext,
    ) -> Result<(EmbedResponse, Arc<str>), Error> {
        let ctx = &self.deadline_of(ctx);
        let mut span =
            PendingSpan::start(Sink::Borrowed(&*self.spans), self.ledger(), ctx, &req.model);
        let result = async {
            if req.input.is_empty() {
                return Err(Error::invalid("input: must contain at least one text"));
            }
            self.open_account(ctx, None, &mut span)?;
            let tokens = req.input.iter().map(|t| (t.len() / 4) as u64).sum();
            let plan = self.plan(&req.model, &req.provider, tokens, &mut span)?;
            self.admit(&plan, tokens, Some(0), &mut span)?;
            let (route, mut resp, _, _) = self
                .attempt(plan, &req.model, ctx, &mut span, |route, cctx| async move {
                    let cctx = cctx.with_model(&route.upstream_model);
                    route.provider.embed(&cctx, req).await
                })
                .await?;
            resp.cost_usd = self.cost(&route, Usage::new(resp.tokens_in, 0), resp.cost_usd);
            resp.model = if req.model.is_empty() || req.model == "auto" {
                route.upstream_model.to_string()
            } else {
                req.model.clone()
            };
            resp.provider = route.provider_name.to_string();
            resp.latency_ms = elapsed_ms(&span);
            Ok((resp, route.upstream_model))
        }
        .await;
        match &result {
            Ok((resp, _)) => {
                span.attrs.tokens_in = resp.tokens_in;
                span.attrs.cost_usd = resp.cost_usd;
                span.report(SpanStatus::Ok);
            }
            Err(e) => span.finish_err(e),
        }
        result
    }

    /// Counts the input tokens of `req` for the provider it would go to
    /// first: that provider's own count where it has one, otherwise an
    /// estimate (`estimated`). Nothing is spent, so no span or ledger row;
    /// the key's model allowlist still applies.
    pub async fn count_tokens(
        &self,
        req: &InferRequest,
        ctx: &RequestContext,
    ) -> Result<TokenCount, Error> {
        if let Some(key) = &ctx.key {
            key.check_model(&req.model)?;
        }
        let routes = self.choose(req)?;
        let estimate = TokenCount {
            input_tokens: prompt_estimate(req),
            estimated: true,
        };
        let Some(route) = routes.first() else {
            return Ok(estimate);
        };
        let trace = ctx.trace.unwrap_or_else(TraceContext::new_root);
        let cctx = CallContext {
            model: &route.upstream_model,
            trace,
            span_id: Id128::random(),
            deadline: ctx.timeout.map(|t| Instant::now() + t),
        };
        let counted = route.provider.count_tokens(&cctx, req);
        let counted = match ctx.timeout {
            Some(t) => tokio::time::timeout(t, counted)
                .await
                .unwrap_or_else(|_| Err(ProviderError::Timeout("count_tokens".into()))),
            None => counted.await,
        };
        match counted {
            Ok(Some(count)) => Ok(count),
            Ok(None) => Ok(estimate),
            // The provider judged the request: its answer stands.
            Err(e @ ProviderError::InvalidRequest(_)) => Err(e.into()),
            Err(e) => {
                tracing::debug!(provider = %route.provider_name, error = %e,
                    "the provider could not count tokens; estimating");
                Ok(estimate)
            }
        }
    }

    /// Routes one streaming request. Failures before the first chunk (validation,
    /// resolution, the provider refusing the call) are returned here; later ones
    /// arrive as an `Err` item, which ends the stream. The span is reported when
    /// the stream ends, fails or is dropped.
    pub async fn call_stream(
        &self,
        req: &InferRequest,
        ctx: &RequestContext,
    ) -> Result<RoutedStream, Error> {
        let ctx = &self.deadline_of(ctx);
        let mut span = PendingSpan::start(Sink::Shared(self.spans.clone()), None, ctx, &req.model);
        let deadline = ctx.timeout.map(|t| Instant::now() + t);
        // Fallback is possible until the first chunk: each attempt opens the
        // stream and waits for its first item before committing to it.
        let plan = self.prepare(req, ctx, &mut span);
        let opened = match plan {
            Err(e) => Err(e),
            Ok(plan) => self
                .attempt(plan, &req.model, ctx, &mut span, |route, cctx| async move {
                    let cctx = cctx.with_model(&route.upstream_model);
                    let mut inner = route.provider.infer_stream(&cctx, req).await?;
                    match futures_util::StreamExt::next(&mut inner).await {
                        Some(Err(e)) => Err(e),
                        first => Ok((inner, first)),
                    }
                })
                .await
                .map(|(route, (inner, first), strategy, group)| {
                    (route, inner, first, strategy, group)
                }),
        };
        match opened {
            Ok((route, inner, first, strategy, route_group)) => Ok(RoutedStream {
                strategy,
                route_group,
                first: Some(first),
                pricing: (
                    self.pricing
                        .configured(&route.provider_name, &route.upstream_model),
                    self.pricing
                        .price(&route.provider_name, &route.upstream_model),
                ),
                model: caller_model(req, &route),
                provider: route.provider_name.to_string(),
                upstream_model: route.upstream_model,
                inner,
                deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
                span,
                done: false,
                prompt_tokens: prompt_estimate(req),
                streamed: 0,
                budget_remaining: ctx.budget_remaining(),
            }),
            Err(e) => {
                span.finish_err(&e);
                Err(e)
            }
        }
    }

    /// The cost of a call: a configured price always wins; otherwise the
    /// provider's own figure, or failing that the built-in table.
    fn cost(&self, route: &Route, usage: Usage, reported: f64) -> f64 {
        match self
            .pricing
            .configured(&route.provider_name, &route.upstream_model)
        {
            Some(price) => price_of(price, usage),
            None if reported > 0.0 => reported,
            None => self
                .pricing
                .cost(&route.provider_name, &route.upstream_model, usage),
        }
    }

    /// Validates `req` and lists the providers it may go to, best first.
    fn prepare(
        &self,
        req: &InferRequest,
        ctx: &RequestContext,
        span: &mut PendingSpan<'_>,
    ) -> Result<Plan, Error> {
        validate_request(req)?;
        self.open_account(ctx, Some(&req.meta), span)?;
        let tokens = prompt_estimate(req);
        let plan = self.plan(&req.model, &req.provider, tokens, span)?;
        self.admit(&plan, tokens, req.params.max_tokens, span)?;
        Ok(plan)
    }

    /// The providers a request for `model` may go to, best first, by the
    /// strategy (or its route group's); `prompt_tokens` is an estimate for
    /// `cost_weighted`.
    fn plan(
        &self,
        model: &str,
        provider: &str,
        prompt_tokens: u64,
        span: &mut PendingSpan<'_>,
    ) -> Result<Plan, Error> {
        // An explicit provider wins over groups.
        let group = if provider.is_empty() {
            self.groups.get(model).cloned()
        } else {
            None
        };
        let strategy = group
            .as_ref()
            .and_then(|g| g.strategy)
            .unwrap_or(self.strategy);
        let mut routes = if strategy == Strategy::Priority && group.is_none() {
            self.registry
                .candidates(model, provider, self.max_attempts)?
        } else {
            let mut all = self.registry.candidates(model, provider, usize::MAX)?;
            if let Some(g) = group.as_ref().filter(|g| !g.providers.is_empty()) {
                all.retain(|r| g.providers.iter().any(|p| **p == *r.provider_name));
                if all.is_empty() {
                    return Err(Error::new(
                        ErrorKind::ModelNotFound,
                        format!(
                            "no provider of route group \"{}\" serves model \"{}\"",
                            g.name, model
                        ),
                    ));
                }
            }
            self.order(&mut all, prompt_tokens, strategy);
            all
        };
        routes.truncate(self.max_attempts);
        if let Some(first) = routes.first() {
            span.note_attempt(first, 1);
        }
        Ok(Plan {
            routes,
            strategy,
            group: group.map(|g| g.name.clone()),
        })
    }

    /// Puts the candidates in the order the strategy prefers.
    fn order(&self, routes: &mut [Route], prompt_tokens: u64, strategy: Strategy) {
        if routes.len() < 2 {
            return;
        }
        match strategy {
            Strategy::Priority => {}
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                routes.rotate_left(start % routes.len());
            }
            Strategy::Random => fastrand::shuffle(routes),
            Strategy::LeastLatency => {
                // Providers still warming up first (in declaration order), then
                // the fastest average. Each key is read once (a lock each).
                routes.sort_by_cached_key(|r| {
                    let (ewma, n) = r.breaker.latency_ewma();
                    if n < self.min_samples {
                        (0, 0)
                    } else {
                        (1, (ewma * 1000.0) as u64)
                    }
                });
            }
            Strategy::CostWeighted => {
                // The prompt's estimated input cost, in micro-dollars; an
                // unknown price is 0. Each route is priced once.
                let tokens = prompt_tokens.max(1);
                routes.sort_by_cached_key(|r| {
                    (self
                        .pricing
                        .cost(&r.provider_name, &r.upstream_model, Usage::new(tokens, 0))
                        * 1e12) as u64
                });
            }
        }
    }
}

/// Runs `fut` within `timeout`; dropping it (and so cancelling the provider call)
/// when the time is up.
async fn with_deadline<F: Future>(
    timeout: Option<Duration>,
    route: &Route,
    fut: F,
) -> Result<F::Output, Error> {
    match timeout {
        None => Ok(fut.await),
        Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "deadline of {} ms elapsed before provider \"{}\" answered",
                    t.as_millis(),
                    route.provider_name
                ),
            )
        }),
    }
}

/// Every candidate was skipped: 429 when rate limits did it (some may also be
/// circuit-open), else 503.
fn no_eligible_provider(model: &str, limited: bool) -> Error {
    let model = crate::validate::truncate(model, 128);
    if limited {
        Error::new(
            ErrorKind::RateLimited,
            format!(
                "every provider for model \"{model}\" is at its rate limit or unavailable; retry later"
            ),
        )
    } else {
        Error::new(
            ErrorKind::NoHealthyProviders,
            format!(
                "every provider for model \"{model}\" is unhealthy or has an open circuit; try again later"
            ),
        )
    }
}

/// Leave to call one provider, from its circuit breaker. The outcome goes back
/// to the breaker; a permit dropped without one (the caller went away) gives a
/// half-open probe slot back.
struct Permit<'a> {
    route: &'a Route,
    admission: Option<Admission>,
}

impl<'a> Permit<'a> {
    /// A permit when the circuit admits the call and the rate limits have
    /// room; `limited` notes a refusal by the rate limits.
    fn acquire(route: &'a Route, limited: &mut bool) -> Option<Self> {
        if !route.healthy.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let permit = match route.breaker.admit() {
            Admission::Refuse => return None,
            admission => Permit {
                route,
                admission: Some(admission),
            },
        };
        if let Some(limiter) = &route.limiter
            && !limiter.try_acquire()
        {
            *limited = true;
            return None; // dropping the permit gives a probe slot back
        }
        Some(permit)
    }

    /// Records how the call went and passes its result on.
    fn record<T>(
        mut self,
        result: Result<T, Error>,
        latency: Duration,
        ewma_decay: f64,
    ) -> Result<T, Error> {
        let outcome = match &result {
            Ok(_) => {
                // A real call that succeeds outweighs a failed health check.
                let healthy = &self.route.healthy;
                if !healthy.load(std::sync::atomic::Ordering::Relaxed) {
                    healthy.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Outcome::Success
            }
            Err(e) if e.kind() == ErrorKind::RateLimited => Outcome::RateLimited,
            Err(e) if e.disposition().provider_failure => Outcome::Failure,
            // The provider answered (a 4xx, a refused request): it is up.
            Err(_) => Outcome::Success,
        };
        if let Some(admission) = self.admission.take()
            && let Some(state) = self.route.breaker.complete(
                &admission,
                outcome,
                latency,
                result.is_ok().then_some(ewma_decay),
            )
        {
            match state {
                CircuitState::Open => {
                    tracing::warn!(provider = %self.route.provider_name, "circuit opened")
                }
                other => {
                    tracing::info!(provider = %self.route.provider_name, state = other.as_str(), "circuit state changed")
                }
            }
        }
        result
    }

    /// The caller's deadline passed first: says nothing of the provider.
    fn caller_gave_up(self, e: Error) -> Error {
        drop(self);
        e
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.route.breaker.release(&admission);
        }
    }
}

fn panicked(route: &Route) -> Error {
    tracing::error!(provider = %route.provider_name, "provider panicked; answering internal_error");
    Error::internal(format!(
        "provider \"{}\" failed unexpectedly",
        route.provider_name
    ))
}

/// The model name to show the caller: the one asked for, or for `auto` the one
/// the provider received.
fn caller_model(req: &InferRequest, route: &Route) -> String {
    if req.model.is_empty() || req.model == "auto" {
        route.upstream_model.to_string()
    } else {
        req.model.clone()
    }
}

/// Milliseconds from the span's start to when the answering provider's call
/// returned (the clock read that ended the attempt, not another).
fn elapsed_ms(span: &PendingSpan<'_>) -> u64 {
    let took = match span.answered {
        Some(at) => at.saturating_duration_since(span.started),
        None => span.started.elapsed(),
    };
    u64::try_from(took.as_millis()).unwrap_or(u64::MAX)
}

/// The prompt's size in tokens, estimated high (a quarter of its bytes; the
/// caller's whole body when it is passed through): what `cost_weighted`
/// compares and a budget reserves.
fn prompt_estimate(req: &InferRequest) -> u64 {
    let bytes = match &req.passthrough {
        Some(p) => p.body().len(),
        None => req.messages.iter().map(|m| m.content.len()).sum(),
    };
    (bytes / 4) as u64
}

/// A call's accounting, when the router has [`Callers`]: who called, what
/// the key reserved, and the ledger the call's row goes to.
struct Account {
    ledger: Option<LedgerRef>,
    key: Option<Arc<Key>>,
    grant: Option<Grant>,
    caller: Option<Arc<str>>,
    dialect: &'static str,
    /// The model the caller asked for.
    asked: Arc<str>,
    ts_ms: i64,
    /// The HTTP status of the call's error, once it failed.
    status: u16,
}

/// The ledger a call's row goes to: the router's own, reached through the
/// borrowed callers at close (a call), or held by a stream that outlives it.
enum LedgerRef {
    Borrowed,
    Shared(Arc<dyn Ledger>),
}

impl Account {
    /// Settles the reservation and writes the ledger row of a finished call;
    /// `borrowed` is the router's ledger, for a call that borrows it.
    fn close(self, span: &TraceSpan, borrowed: Option<&dyn Ledger>) {
        let a = &span.attrs;
        let tokens = a.tokens_in + a.tokens_out;
        if let Some(grant) = &self.grant {
            grant.settle(a.cost_usd, tokens);
        }
        let shared;
        let ledger: &dyn Ledger = match self.ledger {
            None => return,
            Some(LedgerRef::Shared(l)) => {
                shared = l;
                &*shared
            }
            Some(LedgerRef::Borrowed) => match borrowed {
                Some(l) => l,
                None => return,
            },
        };
        let status = match span.status {
            SpanStatus::Ok => 200,
            SpanStatus::Error => self.status,
        };
        let mut request_id = String::with_capacity(32);
        span.span_id.push_hex(&mut request_id);
        ledger.record(CallRow {
            ts_ms: self.ts_ms,
            request_id,
            team: self
                .key
                .as_ref()
                .and_then(|k| k.team.as_ref())
                .map(|t| t.name.clone()),
            key: self.key.map(|k| k.name.clone()),
            caller: self.caller,
            dialect: self.dialect,
            provider: a.provider.clone(),
            model: self.asked,
            model_served: a.model.clone(),
            tokens_in: a.tokens_in,
            tokens_out: a.tokens_out,
            tokens_cached: a.tokens_cached,
            tokens_cache_write: a.tokens_cache_write,
            tokens_reasoning: a.tokens_reasoning,
            cost_usd: a.cost_usd,
            status,
            latency_ms: a.latency_ms,
            usage_estimated: a.usage_estimated,
        });
    }
}

/// How early before its deadline a caller that hangs up counts as timed out.
const DEADLINE_SKEW: Duration = Duration::from_millis(20);

/// A span being recorded; reported exactly once, when finished or dropped.
struct PendingSpan<'a> {
    sink: Sink<'a>,
    attrs: SpanAttrs,
    trace: TraceContext,
    span_id: Id128,
    start_ns: u64,
    started: Instant,
    /// When the last attempt's call returned.
    answered: Option<Instant>,
    reported: bool,
    /// When the caller said it stops waiting.
    deadline: Option<Instant>,
    /// Keys, budget and ledger row, when the router has callers.
    account: Option<Box<Account>>,
    /// The router's ledger, borrowed like `sink` (`None` for a stream).
    ledger: Option<&'a dyn Ledger>,
}

/// Where a span goes: the router's sink, borrowed for a call that lives
/// within the router's borrow (copying the shared `Arc` on every call passed
/// its count between cores), or shared by a stream that outlives it.
enum Sink<'a> {
    Borrowed(&'a dyn SpanSink),
    Shared(Arc<dyn SpanSink>),
}

impl Sink<'_> {
    fn get(&self) -> &dyn SpanSink {
        match self {
            Sink::Borrowed(s) => *s,
            Sink::Shared(s) => &**s,
        }
    }
}

impl<'a> PendingSpan<'a> {
    /// A span that is never reported (for `Router::choose`).
    fn detached(req: &InferRequest) -> Self {
        let mut span = PendingSpan::start(
            Sink::Borrowed(&NoopSink),
            None,
            &RequestContext::default(),
            &req.model,
        );
        span.reported = true;
        span
    }

    fn start(
        sink: Sink<'a>,
        ledger: Option<&'a dyn Ledger>,
        ctx: &RequestContext,
        model: &str,
    ) -> Self {
        let started = Instant::now();
        PendingSpan {
            sink,
            ledger,
            attrs: SpanAttrs {
                model: Arc::from(crate::validate::truncate(model, 256)),
                ..SpanAttrs::default()
            },
            trace: ctx.trace.unwrap_or_else(TraceContext::new_root),
            span_id: Id128::random(),
            start_ns: now_ns(),
            started,
            answered: None,
            reported: false,
            deadline: ctx.timeout.map(|t| started + t),
            account: None,
        }
    }

    /// The call context without a model yet (each attempt sets its own).
    fn call_context_detached(&self, ctx: &RequestContext) -> CallContext<'static> {
        CallContext {
            model: "",
            trace: self.trace,
            span_id: self.span_id,
            deadline: ctx.timeout.map(|t| self.started + t),
        }
    }

    /// Records that attempt `n` goes to `route` (the span names the provider
    /// that finally served, or failed last).
    fn note_attempt(&mut self, route: &Route, n: u32) {
        self.attrs.provider = route.provider_name.clone();
        self.attrs.model = route.upstream_model.clone();
        self.attrs.attempts = n;
    }

    /// What is left of the caller's deadline.
    fn remaining(&self, ctx: &RequestContext) -> Option<Duration> {
        ctx.timeout
            .map(|t| t.saturating_sub(self.started.elapsed()))
    }

    /// Whether a failed attempt may move to the next provider: the failure is
    /// retryable and the caller's own deadline has not passed.
    fn may_retry(&self, e: &Error, ctx: &RequestContext) -> bool {
        e.disposition().retryable && self.remaining(ctx).is_none_or(|left| !left.is_zero())
    }

    fn finish_ok(&mut self, resp: &InferResponse) {
        self.attrs.set_usage(resp.usage());
        self.attrs.cost_usd = resp.cost_usd;
        self.attrs.finish_reason.clone_from(&resp.finish_reason);
        self.attrs.usage_estimated = resp.usage_estimated;
        self.report(SpanStatus::Ok);
    }

    fn finish_err(&mut self, e: &Error) {
        if let Some(account) = self.account.as_mut() {
            account.status = e.disposition().http_status;
        }
        self.attrs.error = Some(e.message().to_owned());
        self.attrs.error_code = Some(e.disposition().code);
        self.report(SpanStatus::Error);
    }

    fn report(&mut self, status: SpanStatus) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let mut attrs = std::mem::take(&mut self.attrs);
        // One clock read: the end is the start plus what the monotonic clock
        // measured.
        let elapsed = self.started.elapsed();
        attrs.latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let span = TraceSpan {
            trace_id: self.trace.trace_id,
            span_id: self.span_id,
            parent_id: self.trace.parent_id,
            operation: OPERATION,
            start_ns: self.start_ns,
            end_ns: self.start_ns.saturating_add(elapsed_ns),
            status,
            attrs,
        };
        if let Some(account) = self.account.take() {
            account.close(&span, self.ledger);
        }
        self.sink.get().report(span);
    }
}

impl Drop for PendingSpan<'_> {
    fn drop(&mut self) {
        if !self.reported {
            // A caller enforces its own deadline too (gRPC clients do) and may
            // hang up a moment before ours fires: that is a deadline, not a
            // change of mind.
            let e = match self.deadline {
                Some(d) if Instant::now() + DEADLINE_SKEW >= d => {
                    Error::new(ErrorKind::Timeout, "the caller's deadline elapsed")
                }
                _ => Error::new(ErrorKind::Cancelled, "the caller cancelled the request"),
            };
            self.finish_err(&e);
        }
    }
}

/// A provider's chunk stream, labelled with the route and reporting its span
/// when it ends. Items after an `Err` are never produced.
pub struct RoutedStream {
    /// The model name to show the caller.
    pub model: String,
    pub provider: String,
    pub upstream_model: Arc<str>,
    pub strategy: Strategy,
    pub route_group: Option<Arc<str>>,
    inner: ChunkStream,
    /// The first item, read while the attempt could still fall back.
    first: Option<Option<Result<InferChunk, ProviderError>>>,
    /// The configured price, and the price in force (configured or built in).
    pricing: (Option<Price>, Option<Price>),
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    span: PendingSpan<'static>,
    done: bool,
    /// The prompt estimate, and the bytes of output streamed so far: what a
    /// running cost is estimated from, against the caller's budget.
    prompt_tokens: u64,
    streamed: usize,
    /// What the caller's budgets had left when the stream opened.
    pub budget_remaining: Option<f64>,
}

impl std::fmt::Debug for RoutedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedStream")
            .field("model", &self.model)
            .field("provider", &self.provider)
            .finish()
    }
}

impl RoutedStream {
    pub fn trace(&self) -> TraceContext {
        self.span.trace
    }

    /// The upstream's request id header, carried by the first chunk.
    pub fn upstream_request_id(&self) -> Option<&str> {
        match &self.first {
            Some(Some(Ok(c))) => c.upstream_request_id.as_deref(),
            _ => None,
        }
    }

    /// Whether the stream may go on after `chunk`: its running cost (the
    /// output so far, estimated) must fit in what the caller reserved, which
    /// grows while the budgets allow.
    fn within_budget(&mut self, chunk: &InferChunk) -> bool {
        // The text of the output; a tool call's arguments by the event's size.
        self.streamed += chunk.delta.len()
            + chunk.reasoning.as_ref().map_or(0, String::len)
            + if chunk.tool_calls.is_some() {
                chunk.raw.as_ref().map_or(64, |r| r.body().len())
            } else {
                0
            };
        let Some(grant) = self.span.account.as_mut().and_then(|a| a.grant.as_mut()) else {
            return true;
        };
        let Some(price) = self.pricing.0.or(self.pricing.1) else {
            return true;
        };
        let running = price_of(
            price,
            Usage::new(self.prompt_tokens, (self.streamed / 4) as u64),
        );
        let reserved = grant.reserved();
        // Grow by a quarter at a time: one lock per few chunks, not each.
        running <= reserved || grant.extend((running - reserved).max(reserved / 4.0))
    }

    /// A stream that ends before the upstream reported usage (cut at its
    /// budget, failed upstream, dropped by its caller) still cost what was
    /// generated: the span and the ledger get the estimate, marked as such.
    fn charge_estimate(&mut self) {
        let attrs = &mut self.span.attrs;
        if self.streamed == 0 || attrs.tokens_out > 0 || attrs.cost_usd > 0.0 {
            return;
        }
        let usage = Usage::new(
            attrs.tokens_in.max(self.prompt_tokens),
            (self.streamed / 4).max(1) as u64,
        );
        attrs.set_usage(usage);
        attrs.usage_estimated = true;
        if let Some(price) = self.pricing.0.or(self.pricing.1) {
            attrs.cost_usd = price_of(price, usage);
        }
    }

    fn end(&mut self, result: Result<(), &Error>) {
        if result.is_err() {
            self.charge_estimate();
        }
        self.done = true;
        match result {
            Ok(()) => self.span.report(SpanStatus::Ok),
            Err(e) => self.span.finish_err(e),
        }
    }
}

impl Drop for RoutedStream {
    /// Dropped mid-stream (the caller went away): the span reports it as
    /// cancelled, with what was generated so far charged.
    fn drop(&mut self) {
        if !self.done {
            self.charge_estimate();
        }
    }
}

impl Stream for RoutedStream {
    type Item = Result<InferChunk, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let e = Error::new(
                ErrorKind::Timeout,
                format!(
                    "deadline elapsed while provider \"{}\" was streaming",
                    this.provider
                ),
            );
            this.end(Err(&e));
            return Poll::Ready(Some(Err(e)));
        }
        let polled = match this.first.take() {
            Some(first) => Ok(Poll::Ready(first)),
            None => {
                std::panic::catch_unwind(AssertUnwindSafe(|| this.inner.as_mut().poll_next(cx)))
            }
        };
        let next = match polled {
            Ok(poll) => ready!(poll),
            Err(_) => {
                tracing::error!(provider = %this.provider, "provider stream panicked; ending it with internal_error");
                Some(Err(ProviderError::Internal(format!(
                    "provider \"{}\" failed unexpectedly",
                    this.provider
                ))))
            }
        };
        match next {
            Some(Ok(ref chunk)) if this.span.account.is_some() && !this.within_budget(chunk) => {
                let e = Error::new(
                    ErrorKind::BudgetExceeded,
                    "the caller's budget ran out while the answer was streaming",
                );
                // Dropping the provider's stream closes its upstream.
                this.inner = Box::pin(futures_util::stream::empty());
                this.end(Err(&e));
                Poll::Ready(Some(Err(e)))
            }
            Some(Ok(mut chunk)) => {
                let usage = chunk.usage();
                if !usage.is_empty() {
                    chunk.cost_usd = match this.pricing {
                        (Some(price), _) => price_of(price, usage),
                        (None, _) if chunk.cost_usd > 0.0 => chunk.cost_usd,
                        (None, Some(price)) => price_of(price, usage),
                        (None, None) => 0.0,
                    };
                }
                chunk.model.clone_from(&this.model);
                chunk.provider.clone_from(&this.provider);
                let attrs = &mut this.span.attrs;
                let mut total = attrs.usage();
                total += usage;
                attrs.set_usage(total);
                attrs.cost_usd += chunk.cost_usd;
                attrs.usage_estimated |= chunk.usage_estimated;
                if !chunk.finish_reason.is_empty() {
                    attrs.finish_reason.clone_from(&chunk.finish_reason);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(pe)) => {
                let e = Error::from(pe);
                this.end(Err(&e));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.end(Ok(()));
                Poll::Ready(None)
            }
        }
    }
}

/// How requests are spread over providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Priority,
    RoundRobin,
    LeastLatency,
    CostWeighted,
    Random,
}

impl Strategy {
    pub const NAMES: &'static [&'static str] = &[
        "priority",
        "round_robin",
        "least_latency",
        "cost_weighted",
        "random",
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "priority" => Strategy::Priority,
            "round_robin" => Strategy::RoundRobin,
            "least_latency" => Strategy::LeastLatency,
            "cost_weighted" => Strategy::CostWeighted,
            "random" => Strategy::Random,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLatency => "least_latency",
            Strategy::CostWeighted => "cost_weighted",
            Strategy::Random => "random",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoProvider;
    use crate::testing::{FakeProvider, RecordingSink, Step};
    use futures_util::StreamExt;

    fn router_with(provider: Arc<dyn crate::Provider>) -> (Router, Arc<RecordingSink>) {
        let registry = Registry::new();
        registry.register(Arc::new(EchoProvider::new())).unwrap();
        registry.register(provider).unwrap();
        let sink = Arc::new(RecordingSink::default());
        (Router::new(Arc::new(registry), sink.clone()), sink)
    }

    #[tokio::test]
    async fn one_ok_span_per_successful_call() {
        let (router, sink) = router_with(Arc::new(FakeProvider::new("fake", &["f"])));
        let trace = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let ctx = RequestContext {
            trace,
            timeout: None,
            ..RequestContext::default()
        };
        let routed = router
            .call(&InferRequest::prompt("echo-v1", "Hello"), &ctx)
            .await
            .unwrap();
        assert_eq!(routed.response.content, "echo: Hello");
        assert_eq!(routed.response.provider, "echo");
        let spans = sink.spans();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.status, SpanStatus::Ok);
        assert_eq!(Some(s.trace_id), trace.map(|t| t.trace_id));
        assert_eq!(s.parent_id, trace.and_then(|t| t.parent_id));
        assert_eq!(s.span_id, routed.span_id);
        assert_eq!((s.attrs.tokens_in, s.attrs.tokens_out), (1, 2));
        assert_eq!(&*s.attrs.provider, "echo");
        assert!(s.start_ns <= s.end_ns);
    }

    #[tokio::test]
    async fn failures_before_the_provider_still_report_a_span() {
        let (router, sink) = router_with(Arc::new(FakeProvider::new("fake", &["f"])));
        let mut bad = InferRequest::prompt("echo-v1", "x");
        bad.messages.clear();
        assert_eq!(
            router.infer(&bad).await.unwrap_err().kind(),
            ErrorKind::InvalidRequest
        );
        assert_eq!(
            router
                .infer(&InferRequest::prompt("nope", "x"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::ModelNotFound
        );
        let spans = sink.spans();
        assert_eq!(spans.len(), 2);
        assert!(
            spans
                .iter()
                .all(|s| s.status == SpanStatus::Error && s.attrs.error.is_some())
        );
        assert_eq!(&*spans[1].attrs.model, "nope");
        assert_eq!(spans[1].attrs.error_code, Some("model_not_found"));
    }

    #[tokio::test]
    async fn the_provider_receives_the_trace_and_its_model() {
        let fake = FakeProvider::new("fake", &["f"]);
        let calls = fake.calls();
        let (router, _sink) = router_with(Arc::new(fake));
        let routed = router
            .call(&InferRequest::prompt("f", "x"), &RequestContext::default())
            .await
            .unwrap();
        let seen = calls.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, routed.trace.traceparent_for(routed.span_id));
        assert_eq!(seen[0].1, "f");
    }

    #[tokio::test]
    async fn latency_covers_the_provider_call_for_the_answer_and_the_breaker() {
        let fake = FakeProvider::new("slow", &["s"]).then(Step::Sleep(
            Duration::from_millis(40),
            Box::new(Step::Reply("late".into())),
        ));
        let (router, sink) = router_with(Arc::new(fake));
        let routed = router
            .call(&InferRequest::prompt("s", "x"), &RequestContext::default())
            .await
            .unwrap();
        let ms = routed.response.latency_ms;
        assert!((40..10_000).contains(&ms), "latency_ms {ms}");
        let p95 = router.registry().entries()[1]
            .breaker
            .status()
            .p95_latency_ms;
        assert!(p95.is_some_and(|p| (40..10_000).contains(&p)), "{p95:?}");
        let span = &sink.spans()[0];
        let span_ms = (span.end_ns - span.start_ns) / 1_000_000;
        assert!(span_ms >= 40 && span.attrs.latency_ms >= 40, "{span_ms}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cancels_the_provider_call() {
        let fake = FakeProvider::new("slow", &["s"]).then(Step::Sleep(
            Duration::from_secs(2),
            Box::new(Step::Reply("late".into())),
        ));
        let calls = fake.calls();
        let (router, sink) = router_with(Arc::new(fake));
        let ctx = RequestContext {
            trace: None,
            timeout: Some(Duration::from_millis(200)),
            ..RequestContext::default()
        };
        let e = router
            .call(&InferRequest::prompt("s", "x"), &ctx)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(calls.started(), 1);
        assert_eq!(calls.cancelled(), 1, "the provider future was dropped");
        assert_eq!(sink.spans()[0].attrs.error_code, Some("upstream_timeout"));
    }

    // Real time: the span measures deadlines with the system clock.
    #[tokio::test]
    async fn the_default_request_timeout_bounds_the_whole_call_fallback_included() {
        // Two providers of `s`, each failing (retryably) after 150 ms: with
        // a 250 ms request timeout the second attempt is cut off.
        let failing = |name: &str| {
            Arc::new(FakeProvider::new(name, &["s"]).then(Step::Sleep(
                Duration::from_millis(150),
                Box::new(Step::Fail(ProviderError::Unavailable("down".into()))),
            )))
        };
        let (a, b) = (failing("a"), failing("b"));
        let (calls_a, calls_b) = (a.calls(), b.calls());
        let registry = Registry::new();
        registry.register(a).unwrap();
        registry.register(b).unwrap();
        let router = Router::without_spans(Arc::new(registry))
            .with_request_timeout(Some(Duration::from_millis(250)));
        let started = tokio::time::Instant::now();
        let e = router
            .call(&InferRequest::prompt("s", "x"), &RequestContext::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(240) && took < Duration::from_millis(290),
            "{took:?}"
        );
        assert_eq!((calls_a.started(), calls_b.started()), (1, 1));
        assert_eq!(calls_b.cancelled(), 1);
        // A caller's own deadline wins over the default, longer or shorter.
        let ctx = RequestContext {
            trace: None,
            timeout: Some(Duration::from_secs(1)),
            ..RequestContext::default()
        };
        let e = router
            .call(&InferRequest::prompt("s", "x"), &ctx)
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::Upstream,
            "both failed within the deadline: {e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_reports_a_cancelled_span() {
        let fake = FakeProvider::new("slow", &["s"]).then(Step::Sleep(
            Duration::from_secs(2),
            Box::new(Step::Reply("late".into())),
        ));
        let calls = fake.calls();
        let (router, sink) = router_with(Arc::new(fake));
        let req = InferRequest::prompt("s", "x");
        let ctx = RequestContext::default();
        let call = router.call(&req, &ctx);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), call)
                .await
                .is_err()
        );
        assert_eq!(calls.cancelled(), 1);
        let spans = sink.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].attrs.error_code, Some("cancelled"));
    }

    #[tokio::test]
    async fn a_panicking_provider_is_an_internal_error() {
        let (router, sink) =
            router_with(Arc::new(FakeProvider::new("bad", &["b"]).then(Step::Panic)));
        let e = router
            .infer(&InferRequest::prompt("b", "x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(sink.spans().len(), 1);
        assert_eq!(
            router
                .infer(&InferRequest::prompt("echo-v1", "x"))
                .await
                .unwrap()
                .content,
            "echo: x"
        );
    }

    fn two_fakes(
        first: FakeProvider,
        second: FakeProvider,
    ) -> (
        Router,
        Arc<RecordingSink>,
        Arc<crate::testing::Calls>,
        Arc<crate::testing::Calls>,
    ) {
        let (a, b) = (first.calls(), second.calls());
        let registry = Registry::new();
        registry.register(Arc::new(first)).unwrap();
        registry.register(Arc::new(second)).unwrap();
        let sink = Arc::new(RecordingSink::default());
        (Router::new(Arc::new(registry), sink.clone()), sink, a, b)
    }

    #[tokio::test]
    async fn a_retryable_failure_moves_to_the_next_provider() {
        for failure in [
            ProviderError::Unavailable("503".into()),
            ProviderError::RateLimited("slow down".into()),
            ProviderError::Timeout("60 s".into()),
        ] {
            let (router, sink, a, b) = two_fakes(
                FakeProvider::new("a", &["m"]).then(Step::Fail(failure.clone())),
                FakeProvider::new("b", &["m"]),
            );
            let routed = router
                .call(&InferRequest::prompt("m", "x"), &RequestContext::default())
                .await
                .unwrap();
            assert_eq!(routed.response.provider, "b", "{failure:?}");
            assert_eq!((a.started(), b.started()), (1, 1));
            let spans = sink.spans();
            assert_eq!(spans.len(), 1, "one span per call, whatever the attempts");
            assert_eq!(
                (&*spans[0].attrs.provider, spans[0].attrs.attempts),
                ("b", 2)
            );
        }
    }

    #[tokio::test]
    async fn rejections_are_not_retried_and_fallback_can_be_off() {
        let rejected = ProviderError::Rejected {
            status: 400,
            message: "bad".into(),
        };
        let (router, sink, a, b) = two_fakes(
            FakeProvider::new("a", &["m"]).then(Step::Fail(rejected)),
            FakeProvider::new("b", &["m"]),
        );
        let e = router
            .infer(&InferRequest::prompt("m", "x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UpstreamRejected { status: 400 });
        assert_eq!((a.started(), b.started()), (1, 0));
        assert_eq!(sink.spans()[0].attrs.attempts, 1);

        let (router, _, a, b) = two_fakes(
            FakeProvider::new("a", &["m"])
                .then(Step::Fail(ProviderError::Unavailable("down".into()))),
            FakeProvider::new("b", &["m"]),
        );
        let router = router.with_fallback(1);
        assert_eq!(
            router
                .infer(&InferRequest::prompt("m", "x"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Upstream
        );
        assert_eq!((a.started(), b.started()), (1, 0));
    }

    #[tokio::test]
    async fn the_last_failure_is_returned_when_every_provider_fails() {
        let (router, sink, a, b) = two_fakes(
            FakeProvider::new("a", &["m"])
                .then(Step::Fail(ProviderError::Unavailable("a down".into()))),
            FakeProvider::new("b", &["m"])
                .then(Step::Fail(ProviderError::Unavailable("b down".into()))),
        );
        let e = router
            .infer(&InferRequest::prompt("m", "x"))
            .await
            .unwrap_err();
        assert!(e.message().contains("b down"), "{e}");
        assert_eq!((a.started(), b.started()), (1, 1));
        assert_eq!(
            (
                &*sink.spans()[0].attrs.provider,
                sink.spans()[0].attrs.attempts
            ),
            ("b", 2)
        );
    }

    #[tokio::test]
    async fn a_stream_falls_back_before_its_first_chunk() {
        let (router, sink, a, b) = two_fakes(
            FakeProvider::new("a", &["m"])
                .then(Step::Fail(ProviderError::Unavailable("down".into()))),
            FakeProvider::new("b", &["m"]),
        );
        let stream = router
            .call_stream(
                &InferRequest::prompt("m", "Hello there"),
                &RequestContext::default(),
            )
            .await
            .unwrap();
        assert_eq!(stream.provider, "b");
        let text: String = stream
            .map(|c| c.unwrap().delta)
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(text, "fake: Hello there");
        assert_eq!((a.started(), b.started()), (1, 1));
        assert_eq!(sink.spans()[0].attrs.attempts, 2);
    }

    #[tokio::test]
    async fn open_circuits_are_skipped_and_all_open_is_no_healthy_providers() {
        use crate::breaker::{BreakerConfig, ManualClock};
        let clock = Arc::new(ManualClock::default());
        let config = BreakerConfig {
            consecutive_failures: 2,
            ..BreakerConfig::default()
        };
        let registry = Registry::with_breakers(config, clock.clone());
        let a = FakeProvider::new("a", &["m"])
            .then(Step::Fail(ProviderError::Unavailable("down".into())));
        let b = FakeProvider::new("b", &["m"]);
        let (calls_a, calls_b) = (a.calls(), b.calls());
        registry.register(Arc::new(a)).unwrap();
        registry.register(Arc::new(b)).unwrap();
        let router = Router::without_spans(Arc::new(registry));
        let req = InferRequest::prompt("m", "x");
        for _ in 0..2 {
            assert_eq!(router.infer(&req).await.unwrap().provider, "b");
        }
        assert_eq!(calls_a.started(), 2);
        // a's circuit is open: requests go straight to b.
        for _ in 0..3 {
            assert_eq!(router.infer(&req).await.unwrap().provider, "b");
        }
        assert_eq!(calls_a.started(), 2, "an open circuit gets no traffic");
        assert_eq!(calls_b.started(), 5);

        // Both open: 503, and no provider is called.
        router.registry().entries()[1].breaker.force_open();
        let e = router.infer(&req).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoHealthyProviders);
        assert_eq!(e.disposition().http_status, 503);
        assert_eq!((calls_a.started(), calls_b.started()), (2, 5));

        // After the recovery window one probe goes to each; a (still down)
        // reopens, b (healthy) closes and serves.
        clock.advance(std::time::Duration::from_secs(30));
        assert_eq!(router.infer(&req).await.unwrap().provider, "b");
        assert_eq!(calls_a.started(), 3, "a got exactly its probe");
        use crate::breaker::CircuitState;
        let states: Vec<CircuitState> = router
            .registry()
            .entries()
            .iter()
            .map(|e| e.breaker.state())
            .collect();
        assert_eq!(states, [CircuitState::Open, CircuitState::Closed]);
    }

    fn three(strategy: Strategy) -> (Router, Vec<Arc<crate::testing::Calls>>) {
        let registry = Registry::new();
        let mut calls = Vec::new();
        for name in ["a", "b", "c"] {
            let f = FakeProvider::new(name, &["m"]);
            calls.push(f.calls());
            registry.register(Arc::new(f)).unwrap();
        }
        (
            Router::without_spans(Arc::new(registry)).with_strategy(strategy),
            calls,
        )
    }

    #[tokio::test]
    async fn round_robin_spreads_requests_evenly() {
        let (router, calls) = three(Strategy::RoundRobin);
        for _ in 0..6 {
            router.infer(&InferRequest::prompt("m", "x")).await.unwrap();
        }
        let counts: Vec<usize> = calls.iter().map(|c| c.started()).collect();
        assert_eq!(counts, [2, 2, 2]);
    }

    #[tokio::test]
    async fn random_reaches_every_provider() {
        let (router, calls) = three(Strategy::Random);
        for _ in 0..300 {
            router.infer(&InferRequest::prompt("m", "x")).await.unwrap();
        }
        assert!(
            calls.iter().all(|c| c.started() > 50),
            "{:?}",
            calls.iter().map(|c| c.started()).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn least_latency_measures_new_providers_then_prefers_the_fastest() {
        let registry = Registry::new();
        let slow = FakeProvider::new("slow", &["m"]).then(Step::Sleep(
            Duration::from_millis(20),
            Box::new(Step::Reply(String::new())),
        ));
        let fast = FakeProvider::new("fast", &["m"]);
        let (s, f) = (slow.calls(), fast.calls());
        registry.register(Arc::new(slow)).unwrap();
        registry.register(Arc::new(fast)).unwrap();
        let router = Router::without_spans(Arc::new(registry))
            .with_strategy(Strategy::LeastLatency)
            .with_latency_tuning(0.5, 1);
        for _ in 0..6 {
            router.infer(&InferRequest::prompt("m", "x")).await.unwrap();
        }
        assert_eq!(
            (s.started(), f.started()),
            (1, 5),
            "one warm-up call each, then the fastest"
        );
    }

    #[tokio::test]
    async fn cost_weighted_prefers_the_cheapest_price() {
        let registry = Registry::new();
        let pricey = FakeProvider::new("pricey", &["gpt-4o"]);
        let cheap = FakeProvider::new("cheap", &["gpt-4o-mini"]);
        registry
            .register_with_aliases(Arc::new(pricey), vec![("smart".into(), "gpt-4o".into())])
            .unwrap();
        registry
            .register_with_aliases(
                Arc::new(cheap),
                vec![("smart".into(), "gpt-4o-mini".into())],
            )
            .unwrap();
        let router =
            Router::without_spans(Arc::new(registry)).with_strategy(Strategy::CostWeighted);
        let resp = router
            .infer(&InferRequest::prompt("smart", "a prompt of some length"))
            .await
            .unwrap();
        assert_eq!(resp.provider, "cheap");
        let router = router.with_strategy(Strategy::Priority);
        assert_eq!(
            router
                .infer(&InferRequest::prompt("smart", "x"))
                .await
                .unwrap()
                .provider,
            "pricey"
        );
    }

    #[tokio::test]
    async fn route_groups_pick_their_providers_and_strategy() {
        let (router, calls) = three(Strategy::Priority);
        let router = router.with_groups(vec![RouteGroup {
            name: "spread".into(),
            models: vec!["m".into()],
            strategy: Some(Strategy::RoundRobin),
            providers: vec!["b".into(), "c".into()],
        }]);
        let mut groups = Vec::new();
        for _ in 0..4 {
            let routed = router
                .call(&InferRequest::prompt("m", "x"), &RequestContext::default())
                .await
                .unwrap();
            assert_eq!(routed.strategy, Strategy::RoundRobin);
            groups.push(routed.route_group.unwrap().to_string());
        }
        assert_eq!(groups, ["spread"; 4]);
        let counts: Vec<usize> = calls.iter().map(|c| c.started()).collect();
        assert_eq!(counts, [0, 2, 2], "a is not in the group");
        // An explicit provider still wins.
        let mut req = InferRequest::prompt("m", "x");
        req.provider = "a".into();
        let routed = router.call(&req, &RequestContext::default()).await.unwrap();
        assert_eq!(
            (routed.response.provider.as_str(), routed.route_group),
            ("a", None)
        );
    }

    #[tokio::test]
    async fn providers_at_their_rate_limit_are_skipped_and_all_limited_is_429() {
        use crate::ratelimit::RateLimits;
        use crate::registry::ProviderOptions;
        let registry = Registry::new();
        let (a, b) = (
            FakeProvider::new("a", &["m"]),
            FakeProvider::new("b", &["m"]),
        );
        let (calls_a, calls_b) = (a.calls(), b.calls());
        let limited = |rpm| ProviderOptions {
            rate_limits: RateLimits {
                requests_per_minute: Some(rpm),
                tokens_per_minute: None,
            },
            ..ProviderOptions::default()
        };
        registry.register_with(Arc::new(a), limited(2)).unwrap();
        registry.register_with(Arc::new(b), limited(1)).unwrap();
        let router = Router::without_spans(Arc::new(registry));
        let req = InferRequest::prompt("m", "x");
        let served: Vec<String> =
            futures_util::future::join_all((0..3).map(|_| router.infer(&req)))
                .await
                .into_iter()
                .map(|r| r.unwrap().provider)
                .collect();
        assert_eq!(served, ["a", "a", "b"]);
        let e = router.infer(&req).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.disposition().http_status, 429);
        assert_eq!((calls_a.started(), calls_b.started()), (2, 1));
        let headroom = router.registry().entries()[0]
            .limiter
            .as_ref()
            .unwrap()
            .headroom();
        assert_eq!(headroom.requests, Some(0));
    }

    #[tokio::test]
    async fn circuit_listeners_hear_changes_made_by_requests() {
        use crate::breaker::CircuitState;
        let registry = Registry::new();
        let heard: Arc<std::sync::Mutex<Vec<(String, CircuitState)>>> = Arc::default();
        let router = Router::without_spans(Arc::new(registry));
        let kept = heard.clone();
        router.on_circuit_change(move |provider, _, to| {
            kept.lock().unwrap().push((provider.to_owned(), to))
        });
        // Registered after the listener: it hears this provider too.
        router
            .registry()
            .register(Arc::new(
                FakeProvider::new("flaky", &["m"])
                    .then(Step::Fail(ProviderError::Unavailable("x".into()))),
            ))
            .unwrap();
        for _ in 0..5 {
            let _ = router.infer(&InferRequest::prompt("m", "x")).await;
        }
        assert_eq!(
            heard.lock().unwrap().clone(),
            [("flaky".to_owned(), CircuitState::Open)]
        );
    }

    #[tokio::test]
    async fn embeddings_take_the_same_path_through_circuits_and_fallback() {
        let registry = Registry::new();
        for name in ["e1", "e2"] {
            registry
                .register(Arc::new(
                    EchoProvider::new()
                        .named(name)
                        .with_models(vec!["emb".into()]),
                ))
                .unwrap();
        }
        let sink = Arc::new(RecordingSink::default());
        let router = Router::new(Arc::new(registry), sink.clone());
        let req = crate::types::EmbedRequest {
            model: "emb".into(),
            input: vec!["hello".into()],
            ..Default::default()
        };
        router.registry().entries()[0].breaker.force_open();
        let (resp, _) = router
            .embed(&req, &RequestContext::default())
            .await
            .unwrap();
        assert_eq!(resp.provider, "e2", "the open circuit is skipped");
        assert_eq!(resp.embeddings.len(), 1);
        router.registry().entries()[1].breaker.force_open();
        let e = router
            .embed(&req, &RequestContext::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoHealthyProviders);
        assert_eq!(sink.spans().len(), 2, "one span per embeddings call too");
        assert!(
            router
                .render_metrics()
                .contains(r#"infermux_requests_total{provider="e2",model="emb",status="ok"} 1"#)
        );
    }

    #[tokio::test]
    async fn streams_are_labelled_and_report_their_span_at_the_end() {
        let (router, sink) = router_with(Arc::new(FakeProvider::new("fake", &["f"])));
        let stream = router
            .call_stream(
                &InferRequest::prompt("echo-v1", "Hello world"),
                &RequestContext::default(),
            )
            .await
            .unwrap();
        assert!(sink.spans().is_empty(), "no span before the stream ends");
        let chunks: Vec<InferChunk> = stream.map(|c| c.unwrap()).collect().await;
        assert_eq!(
            chunks.iter().map(|c| c.delta.as_str()).collect::<String>(),
            "echo: Hello world"
        );
        assert!(
            chunks
                .iter()
                .all(|c| c.model == "echo-v1" && c.provider == "echo")
        );
        let spans = sink.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].status, SpanStatus::Ok);
        assert_eq!(
            (spans[0].attrs.tokens_in, spans[0].attrs.tokens_out),
            (2, 4)
        );
        assert_eq!(spans[0].attrs.finish_reason, "stop");
    }

    #[tokio::test]
    async fn a_stream_dropped_midway_reports_a_cancelled_span() {
        let (router, sink) = router_with(Arc::new(FakeProvider::new("fake", &["f"])));
        let mut stream = router
            .call_stream(
                &InferRequest::prompt("echo-v1", "a b c"),
                &RequestContext::default(),
            )
            .await
            .unwrap();
        stream.next().await.unwrap().unwrap();
        drop(stream);
        let spans = sink.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].attrs.error_code, Some("cancelled"));
    }
}
