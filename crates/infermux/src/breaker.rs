//! A circuit breaker per provider: a small state machine.
//!
//! ```text
//!   Closed ──(N failures in a row, or error rate ≥ threshold over the window
//!    ▲        once min_requests are seen)──▶ Open
//!    │                                         │ recovery time elapsed
//!    │ probe succeeds                          ▼
//!    └────────────────────────────────────── HalfOpen ──probe fails──▶ Open
//!                                             (one real request is the probe;   (recovery time × multiplier,
//!                                              the others are refused)            up to the maximum)
//! ```
//!
//! Upstream 429s count as failures only with `treat_rate_limit_as_error`; a
//! request the provider rejected (4xx) proves it healthy. Time comes from a
//! [`Clock`], so tests drive it without sleeping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where the breaker reads the time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(Mutex::new(Instant::now()))
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that open the circuit.
    pub consecutive_failures: u32,
    /// Failure share over the window that opens it (0 < x ≤ 1) ...
    pub error_rate_threshold: f64,
    /// ... measured over this sliding window ...
    pub window: Duration,
    /// ... once at least this many requests were seen in it.
    pub min_requests: u32,
    /// How long the circuit stays open the first time.
    pub recovery_window: Duration,
    /// Each reopening in a row multiplies it by this ...
    pub recovery_backoff_multiplier: f64,
    /// ... up to this.
    pub recovery_backoff_max: Duration,
    /// Count upstream 429s as failures.
    pub treat_rate_limit_as_error: bool,
    /// Open when the p95 latency of the window's recent calls exceeds this
    /// (once `min_requests` were seen); checked every 16th call.
    pub latency_p95_ms: Option<u64>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_rate_threshold: 0.5,
            window: Duration::from_secs(60),
            min_requests: 20,
            recovery_window: Duration::from_secs(30),
            recovery_backoff_multiplier: 2.0,
            recovery_backoff_max: Duration::from_secs(300),
            treat_rate_limit_as_error: false,
            latency_p95_ms: None,
        }
    }
}

/// The circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// How a call ended, as far as the provider's health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    RateLimited,
}

/// What [`Breaker::admit`] says about the next request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (closed circuit).
    Go,
    /// Go ahead: this request is the half-open probe.
    Probe,
    /// The circuit is open; try another provider.
    Refuse,
}

/// A snapshot for status reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerStatus {
    pub state: CircuitState,
    pub opened_at: Option<Instant>,
    pub recovery_at: Option<Instant>,
    /// Failure share over the window (0 with no requests).
    pub error_rate: f64,
    /// Requests recorded in the window.
    pub requests_in_window: u32,
    /// Requests that ended in the last 60 s.
    pub requests_last_minute: u32,
    /// 95th percentile latency of the last (up to 512) calls in the last minute.
    pub p95_latency_ms: Option<u64>,
}

/// How many recent latencies are kept for the p95.
const LATENCIES: usize = 512;

/// Per-second counts over the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    consecutive: u32,
    opened_at: Option<Instant>,
    recovery_at: Option<Instant>,
    /// Times opened without a successful probe in between (for the backoff).
    reopenings: u32,
    probing: bool,
    buckets: Vec<Bucket>,
    /// Requests per second over the last minute.
    minute: [Bucket; 60],
    /// Recent (end time, latency in ms), a ring.
    latencies: Vec<(Instant, u64)>,
    next_latency: usize,
    /// Exponentially weighted moving average of successful latencies, in ms,
    /// and how many successes fed it (for `least_latency` routing).
    ewma_ms: f64,
    ewma_samples: u32,
    /// Calls recorded while closed, to space out the p95 check.
    recorded: u32,
}

/// One provider's circuit breaker.
pub struct Breaker {
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    epoch: Instant,
    inner: Mutex<Inner>,
    /// Whether `inner.state` is closed, readable without the lock: a closed
    /// circuit admits a call without taking it.
    closed: AtomicBool,
    /// The provider's name, for listeners.
    name: Arc<str>,
    listeners: Listeners,
}

/// Called on every circuit state change with the provider's name and the old
/// and new state — while the breaker still holds its lock, so before any
/// request can see the new state. It must not call back into the breaker.
pub type CircuitListener = Arc<dyn Fn(&str, CircuitState, CircuitState) + Send + Sync>;

/// The listeners of every breaker of a registry; shared, so ones added later
/// reach existing breakers.
pub type Listeners = Arc<arc_swap::ArcSwap<Vec<CircuitListener>>>;

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .finish()
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new(BreakerConfig::default(), Arc::new(SystemClock))
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        let seconds = config.window.as_secs().max(1) as usize;
        let epoch = clock.now();
        Breaker {
            config,
            clock,
            epoch,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                consecutive: 0,
                opened_at: None,
                recovery_at: None,
                reopenings: 0,
                probing: false,
                buckets: vec![Bucket::default(); seconds],
                minute: [Bucket::default(); 60],
                latencies: Vec::with_capacity(LATENCIES),
                next_latency: 0,
                ewma_ms: 0.0,
                ewma_samples: 0,
                recorded: 0,
            }),
            closed: AtomicBool::new(true),
            name: Arc::from(""),
            listeners: Listeners::default(),
        }
    }

    /// The same breaker, named, telling `listeners` about state changes.
    pub fn with_listeners(mut self, name: &str, listeners: Listeners) -> Self {
        self.name = Arc::from(name);
        self.listeners = listeners;
        self
    }

    /// Tells the listeners, if the state changed. Called with the lock held.
    fn changed(&self, before: CircuitState, after: CircuitState) {
        if before != after {
            for listener in self.listeners.load().iter() {
                listener(&self.name, before, after);
            }
        }
    }

    /// Changes the state (with the lock held), and its lock-free mirror.
    fn set_state(&self, inner: &mut Inner, state: CircuitState) {
        inner.state = state;
        self.closed
            .store(state == CircuitState::Closed, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a few counters, consistent after every statement.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    /// May a request go to this provider now? An open circuit whose recovery
    /// time has come turns half-open and lets exactly this request through as
    /// the probe.
    pub fn admit(&self) -> Admission {
        if self.closed.load(Ordering::Acquire) {
            return Admission::Go;
        }
        let now = self.clock.now();
        let mut inner = self.lock();
        match inner.state {
            CircuitState::Closed => Admission::Go,
            CircuitState::Open if inner.recovery_at.is_some_and(|t| now >= t) => {
                self.set_state(&mut inner, CircuitState::HalfOpen);
                inner.probing = true;
                self.changed(CircuitState::Open, CircuitState::HalfOpen);
                Admission::Probe
            }
            CircuitState::Open => Admission::Refuse,
            CircuitState::HalfOpen if inner.probing => Admission::Refuse,
            CircuitState::HalfOpen => {
                inner.probing = true;
                Admission::Probe
            }
        }
    }

    /// Everything a finished call tells the breaker, under one lock: its
    /// latency (status reports, the p95 check), the moving average when it
    /// succeeded (`ewma_decay` given), and its outcome. Returns the new state
    /// when it changed.
    pub fn complete(
        &self,
        admission: &Admission,
        outcome: Outcome,
        latency: Duration,
        ewma_decay: Option<f64>,
    ) -> Option<CircuitState> {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.note_latency(&mut inner, now, latency);
        if let Some(decay) = ewma_decay {
            Self::note_success(&mut inner, latency, decay);
        }
        self.record_locked(&mut inner, now, admission, outcome)
    }

    /// Records how long a call took (for status reports: p95, requests per
    /// minute), whatever its outcome.
    pub fn observe(&self, latency: Duration) {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.note_latency(&mut inner, now, latency);
    }

    fn note_latency(&self, inner: &mut Inner, now: Instant, latency: Duration) {
        let second = self.second(now);
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        let bucket = &mut inner.minute[(second % 60) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ok: 0,
                failed: 0,
            };
        }
        bucket.ok += 1;
        if inner.latencies.len() < LATENCIES {
            inner.latencies.push((now, ms));
        } else {
            let i = inner.next_latency;
            inner.latencies[i] = (now, ms);
        }
        inner.next_latency = (inner.next_latency + 1) % LATENCIES;
    }

    /// Feeds a successful call's latency into the moving average: `decay` is
    /// the weight of the newest sample (0 < decay ≤ 1).
    pub fn observe_success(&self, latency: Duration, decay: f64) {
        Self::note_success(&mut self.lock(), latency, decay);
    }

    fn note_success(inner: &mut Inner, latency: Duration, decay: f64) {
        let ms = latency.as_secs_f64() * 1000.0;
        inner.ewma_ms = if inner.ewma_samples == 0 {
            ms
        } else {
            decay * ms + (1.0 - decay) * inner.ewma_ms
        };
        inner.ewma_samples = inner.ewma_samples.saturating_add(1);
    }

    /// The moving average of successful latencies (ms) and its sample count.
    pub fn latency_ewma(&self) -> (f64, u32) {
        let inner = self.lock();
        (inner.ewma_ms, inner.ewma_samples)
    }

    /// Records how an admitted request ended. Returns the new state when it
    /// changed.
    pub fn record(&self, admission: &Admission, outcome: Outcome) -> Option<CircuitState> {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.record_locked(&mut inner, now, admission, outcome)
    }

    fn record_locked(
        &self,
        inner: &mut Inner,
        now: Instant,
        admission: &Admission,
        outcome: Outcome,
    ) -> Option<CircuitState> {
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::RateLimited if self.config.treat_rate_limit_as_error => true,
            Outcome::RateLimited => {
                // Neither healthy nor broken: a probe gets another chance.
                if *admission == Admission::Probe {
                    inner.probing = false;
                }
                return None;
            }
        };
        let before = inner.state;
        if *admission == Admission::Probe {
            inner.probing = false;
            if failed {
                self.open(inner, now);
            } else {
                self.set_state(inner, CircuitState::Closed);
                inner.consecutive = 0;
                inner.reopenings = 0;
                inner.opened_at = None;
                inner.recovery_at = None;
                inner
                    .buckets
                    .iter_mut()
                    .for_each(|b| *b = Bucket::default());
            }
        } else if inner.state == CircuitState::Closed {
            self.count(inner, now, failed);
            if failed {
                inner.consecutive += 1;
                let (requests, rate) = self.rate(inner, now);
                if inner.consecutive >= self.config.consecutive_failures
                    || (requests >= self.config.min_requests
                        && rate >= self.config.error_rate_threshold)
                {
                    self.open(inner, now);
                }
            } else {
                inner.consecutive = 0;
            }
            inner.recorded = inner.recorded.wrapping_add(1);
            if inner.state == CircuitState::Closed
                && inner.recorded.is_multiple_of(16)
                && let Some(limit) = self.config.latency_p95_ms
                && self.slow(inner, now, limit)
            {
                self.open(inner, now);
            }
        }
        self.changed(before, inner.state);
        (inner.state != before).then_some(inner.state)
    }

    /// A probe that ended without an outcome (cancelled) frees the slot.
    pub fn release(&self, admission: &Admission) {
        if *admission == Admission::Probe {
            self.lock().probing = false;
        }
    }

    /// Opens the circuit now, by hand; it recovers as usual.
    pub fn force_open(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let before = inner.state;
        self.open(&mut inner, now);
        self.changed(before, inner.state);
    }

    /// Closes the circuit now, by hand (the recovery backoff starts over),
    /// keeping the window's counts.
    pub fn force_close(&self) {
        let mut inner = self.lock();
        self.changed(inner.state, CircuitState::Closed);
        self.set_state(&mut inner, CircuitState::Closed);
        inner.consecutive = 0;
        inner.reopenings = 0;
        inner.probing = false;
        inner.opened_at = None;
        inner.recovery_at = None;
    }

    /// Closes the circuit and forgets everything it counted.
    pub fn reset(&self) {
        self.force_close();
        let mut inner = self.lock();
        inner
            .buckets
            .iter_mut()
            .for_each(|b| *b = Bucket::default());
    }

    pub fn status(&self) -> BreakerStatus {
        let now = self.clock.now();
        let inner = self.lock();
        let (requests, rate) = self.rate(&inner, now);
        let second = self.second(now);
        let requests_last_minute = inner
            .minute
            .iter()
            .filter(|b| b.second + 60 > second && b.second <= second)
            .map(|b| b.ok)
            .sum();
        let minute_ago = now.checked_sub(Duration::from_secs(60));
        let mut recent: Vec<u64> = inner
            .latencies
            .iter()
            .filter(|(t, _)| minute_ago.is_none_or(|m| *t > m))
            .map(|(_, ms)| *ms)
            .collect();
        recent.sort_unstable();
        let p95_latency_ms =
            (!recent.is_empty()).then(|| recent[(recent.len() * 95).div_ceil(100) - 1]);
        BreakerStatus {
            state: inner.state,
            opened_at: inner.opened_at,
            recovery_at: inner.recovery_at,
            error_rate: rate,
            requests_in_window: requests,
            requests_last_minute,
            p95_latency_ms,
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        let factor = self
            .config
            .recovery_backoff_multiplier
            .max(1.0)
            .powi(i32::try_from(inner.reopenings).unwrap_or(i32::MAX));
        let wait = self
            .config
            .recovery_window
            .mul_f64(factor.min(1e6))
            .min(self.config.recovery_backoff_max);
        self.set_state(inner, CircuitState::Open);
        inner.probing = false;
        inner.opened_at = Some(now);
        inner.recovery_at = Some(now + wait);
        inner.reopenings = inner.reopenings.saturating_add(1);
        inner.consecutive = 0;
    }

    /// Whether the p95 of the window's recent latencies exceeds `limit_ms`,
    /// once enough calls were seen.
    fn slow(&self, inner: &Inner, now: Instant, limit_ms: u64) -> bool {
        let since = now.checked_sub(self.config.window);
        let mut recent: Vec<u64> = inner
            .latencies
            .iter()
            .filter(|(t, _)| since.is_none_or(|s| *t > s))
            .map(|(_, ms)| *ms)
            .collect();
        if recent.len() < self.config.min_requests as usize || recent.is_empty() {
            return false;
        }
        recent.sort_unstable();
        recent[(recent.len() * 95).div_ceil(100) - 1] > limit_ms
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn count(&self, inner: &mut Inner, now: Instant, failed: bool) {
        let second = self.second(now);
        let len = inner.buckets.len() as u64;
        let bucket = &mut inner.buckets[(second % len) as usize];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ok: 0,
                failed: 0,
            };
        }
        if failed {
            bucket.failed += 1;
        } else {
            bucket.ok += 1;
        }
    }

    /// Requests and failure share over the window ending now.
    fn rate(&self, inner: &Inner, now: Instant) -> (u32, f64) {
        let second = self.second(now);
        let len = inner.buckets.len() as u64;
        let (ok, failed) = inner
            .buckets
            .iter()
            .filter(|b| b.second + len > second && b.second <= second && (b.ok > 0 || b.failed > 0))
            .fold((0u32, 0u32), |(o, f), b| (o + b.ok, f + b.failed));
        let total = ok + failed;
        let rate = if total == 0 {
            0.0
        } else {
            f64::from(failed) / f64::from(total)
        };
        (total, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> (Breaker, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (Breaker::new(config, clock.clone()), clock)
    }

    fn fail(b: &Breaker) -> Option<CircuitState> {
        let a = b.admit();
        assert_ne!(a, Admission::Refuse);
        b.record(&a, Outcome::Failure)
    }

    fn succeed(b: &Breaker) -> Option<CircuitState> {
        let a = b.admit();
        assert_ne!(a, Admission::Refuse);
        b.record(&a, Outcome::Success)
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let (b, _) = breaker(BreakerConfig {
            consecutive_failures: 3,
            ..BreakerConfig::default()
        });
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(succeed(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), Some(CircuitState::Open));
        assert_eq!(b.admit(), Admission::Refuse);
    }

    #[test]
    fn opens_on_the_error_rate_once_enough_requests_were_seen() {
        let (b, clock) = breaker(BreakerConfig {
            consecutive_failures: 100,
            error_rate_threshold: 0.5,
            min_requests: 10,
            ..BreakerConfig::default()
        });
        for _ in 0..4 {
            succeed(&b);
            clock.advance(Duration::from_secs(1));
            fail(&b);
        }
        // 8 requests, half failed: not enough requests yet.
        assert_eq!(b.state(), CircuitState::Closed);
        succeed(&b);
        assert_eq!(fail(&b), Some(CircuitState::Open), "10 requests, 5 failed");
    }

    #[test]
    fn old_failures_leave_the_window() {
        let (b, clock) = breaker(BreakerConfig {
            consecutive_failures: 100,
            min_requests: 4,
            window: Duration::from_secs(10),
            ..BreakerConfig::default()
        });
        fail(&b);
        fail(&b);
        succeed(&b);
        clock.advance(Duration::from_secs(11));
        succeed(&b);
        succeed(&b);
        fail(&b);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "the first two failures are out of the window"
        );
        assert_eq!(b.status().requests_in_window, 3);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_closes_on_success() {
        let (b, clock) = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        fail(&b);
        clock.advance(Duration::from_secs(29));
        assert_eq!(b.admit(), Admission::Refuse);
        clock.advance(Duration::from_secs(1));
        let probe = b.admit();
        assert_eq!(probe, Admission::Probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit(), Admission::Refuse, "exactly one probe");
        assert_eq!(
            b.record(&probe, Outcome::Success),
            Some(CircuitState::Closed)
        );
        assert_eq!(b.admit(), Admission::Go);
    }

    #[test]
    fn a_failed_probe_reopens_with_exponential_backoff_up_to_the_maximum() {
        let (b, clock) = breaker(BreakerConfig {
            consecutive_failures: 1,
            recovery_window: Duration::from_secs(10),
            recovery_backoff_multiplier: 2.0,
            recovery_backoff_max: Duration::from_secs(35),
            ..BreakerConfig::default()
        });
        fail(&b);
        for wait in [10, 20, 35, 35] {
            clock.advance(Duration::from_secs(wait - 1));
            assert_eq!(b.admit(), Admission::Refuse, "open for {wait} s");
            clock.advance(Duration::from_secs(1));
            let probe = b.admit();
            assert_eq!(probe, Admission::Probe);
            assert_eq!(b.record(&probe, Outcome::Failure), Some(CircuitState::Open));
        }
        clock.advance(Duration::from_secs(35));
        let probe = b.admit();
        b.record(&probe, Outcome::Success);
        fail(&b);
        clock.advance(Duration::from_secs(10));
        assert_eq!(b.admit(), Admission::Probe, "a success resets the backoff");
    }

    #[test]
    fn opens_when_the_p95_latency_is_too_high() {
        let (b, _) = breaker(BreakerConfig {
            latency_p95_ms: Some(100),
            min_requests: 10,
            ..BreakerConfig::default()
        });
        for _ in 0..16 {
            b.observe(Duration::from_millis(50));
            succeed(&b);
        }
        assert_eq!(b.state(), CircuitState::Closed, "fast enough");
        let mut opened = false;
        for _ in 0..32 {
            b.observe(Duration::from_millis(500));
            opened |= succeed(&b) == Some(CircuitState::Open);
            if opened {
                break;
            }
        }
        assert!(opened, "slow successes open the circuit");
    }

    #[test]
    fn rate_limits_count_only_when_asked() {
        let (b, _) = breaker(BreakerConfig {
            consecutive_failures: 2,
            ..BreakerConfig::default()
        });
        for _ in 0..5 {
            let a = b.admit();
            b.record(&a, Outcome::RateLimited);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        let (b, _) = breaker(BreakerConfig {
            consecutive_failures: 2,
            treat_rate_limit_as_error: true,
            ..BreakerConfig::default()
        });
        let a = b.admit();
        b.record(&a, Outcome::RateLimited);
        let a = b.admit();
        assert_eq!(b.record(&a, Outcome::RateLimited), Some(CircuitState::Open));
    }

    #[test]
    fn latency_ewma_weighs_new_samples_by_decay() {
        let (b, _) = breaker(BreakerConfig::default());
        assert_eq!(b.latency_ewma(), (0.0, 0));
        b.observe_success(Duration::from_millis(100), 0.5);
        b.observe_success(Duration::from_millis(200), 0.5);
        let (ewma, n) = b.latency_ewma();
        assert_eq!(n, 2);
        assert!((ewma - 150.0).abs() < 1e-9, "{ewma}");
    }

    #[test]
    fn status_reports_the_last_minute() {
        let (b, clock) = breaker(BreakerConfig::default());
        assert_eq!(b.status().p95_latency_ms, None);
        for ms in 1..=100 {
            b.observe(Duration::from_millis(ms));
        }
        let s = b.status();
        assert_eq!((s.requests_last_minute, s.p95_latency_ms), (100, Some(95)));
        clock.advance(Duration::from_secs(61));
        b.observe(Duration::from_millis(7));
        let s = b.status();
        assert_eq!((s.requests_last_minute, s.p95_latency_ms), (1, Some(7)));
    }

    #[test]
    fn listeners_hear_every_change_before_anyone_sees_it() {
        let (b, clock) = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        let heard: Arc<Mutex<Vec<(String, CircuitState, CircuitState)>>> = Arc::default();
        let listeners = Listeners::default();
        let kept = heard.clone();
        listeners.store(Arc::new(vec![Arc::new(move |name: &str, from, to| {
            kept.lock().unwrap().push((name.to_owned(), from, to));
        }) as CircuitListener]));
        let b = b.with_listeners("p", listeners);
        fail(&b);
        clock.advance(Duration::from_secs(30));
        let probe = b.admit();
        b.record(&probe, Outcome::Success);
        b.force_open();
        b.force_close();
        use CircuitState::{Closed, HalfOpen, Open};
        let heard: Vec<(CircuitState, CircuitState)> = heard
            .lock()
            .unwrap()
            .iter()
            .map(|(n, f, t)| {
                assert_eq!(n, "p");
                (*f, *t)
            })
            .collect();
        assert_eq!(
            heard,
            [
                (Closed, Open),
                (Open, HalfOpen),
                (HalfOpen, Closed),
                (Closed, Open),
                (Open, Closed)
            ]
        );
    }

    #[test]
    fn manual_control_and_released_probes() {
        let (b, clock) = breaker(BreakerConfig::default());
        b.force_open();
        assert_eq!(b.admit(), Admission::Refuse);
        b.force_close();
        assert_eq!(b.admit(), Admission::Go);
        b.force_open();
        clock.advance(Duration::from_secs(30));
        let probe = b.admit();
        assert_eq!(probe, Admission::Probe);
        b.release(&probe);
        assert_eq!(
            b.admit(),
            Admission::Probe,
            "a cancelled probe frees the slot"
        );
        b.reset();
        assert_eq!(b.status().state, CircuitState::Closed);
        assert_eq!(b.status().requests_in_window, 0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Call(Outcome),
            CallCancelled,
            Advance(u64),
            ForceOpen,
            ForceClose,
            Reset,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => prop_oneof![Just(Outcome::Success), Just(Outcome::Failure), Just(Outcome::RateLimited)].prop_map(Op::Call),
                1 => Just(Op::CallCancelled),
                2 => (0u64..40).prop_map(Op::Advance),
                1 => Just(Op::ForceOpen),
                1 => Just(Op::ForceClose),
                1 => Just(Op::Reset),
            ]
        }

        proptest! {
            /// Whatever happens: an open circuit refuses until its recovery
            /// time; at most one probe is out at a time; a successful probe
            /// closes the circuit and a failed one opens it; a closed circuit
            /// admits everything.
            #[test]
            fn the_state_machine_keeps_its_promises(ops in proptest::collection::vec(op(), 1..200)) {
                let (b, clock) = breaker(BreakerConfig {
                    consecutive_failures: 3,
                    min_requests: 5,
                    window: Duration::from_secs(10),
                    recovery_window: Duration::from_secs(5),
                    recovery_backoff_max: Duration::from_secs(20),
                    ..BreakerConfig::default()
                });
                for op in ops {
                    match op {
                        Op::Advance(s) => clock.advance(Duration::from_secs(s)),
                        Op::ForceOpen => { b.force_open(); prop_assert_eq!(b.state(), CircuitState::Open); }
                        Op::ForceClose => { b.force_close(); prop_assert_eq!(b.state(), CircuitState::Closed); }
                        Op::Reset => { b.reset(); prop_assert_eq!(b.status().requests_in_window, 0); }
                        Op::CallCancelled => {
                            let a = b.admit();
                            b.release(&a);
                            if a == Admission::Probe {
                                let again = b.admit();
                                prop_assert_eq!(&again, &Admission::Probe, "a released probe frees its slot");
                                b.release(&again);
                            }
                        }
                        Op::Call(outcome) => {
                            let before = b.status();
                            let a = b.admit();
                            match before.state {
                                CircuitState::Closed => prop_assert_eq!(&a, &Admission::Go),
                                CircuitState::Open => {
                                    let due = before.recovery_at.is_some_and(|t| clock.now() >= t);
                                    prop_assert_eq!(&a, if due { &Admission::Probe } else { &Admission::Refuse });
                                }
                                CircuitState::HalfOpen => {}
                            }
                            if a == Admission::Probe {
                                prop_assert_eq!(b.admit(), Admission::Refuse, "one probe at a time");
                            }
                            if a != Admission::Refuse {
                                b.record(&a, outcome);
                                if a == Admission::Probe {
                                    let want = match outcome {
                                        Outcome::Success => CircuitState::Closed,
                                        Outcome::Failure => CircuitState::Open,
                                        Outcome::RateLimited => CircuitState::HalfOpen,
                                    };
                                    prop_assert_eq!(b.state(), want);
                                }
                            }
                            if b.state() == CircuitState::Open {
                                let s = b.status();
                                prop_assert!(s.recovery_at.is_some() && s.opened_at.is_some());
                                prop_assert!(s.recovery_at.unwrap() <= clock.now() + Duration::from_secs(20), "backoff is capped");
                            }
                        }
                    }
                }
            }
        }
    }
}
