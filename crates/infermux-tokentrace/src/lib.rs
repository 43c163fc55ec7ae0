//! TokenTrace span reporting that never slows a request.
//!
//! [`Reporter`] is a [`SpanSink`]: `report` puts the span on a bounded queue with
//! `try_send` and returns at once. A background task serializes each span as a
//! `trace.span` MIST message and `POST`s it to `{url}/mist`, over pooled
//! connections, with a bounded number of sends in flight. When TokenTrace is down,
//! slow or hanging, the queue fills and further spans are dropped and counted; the
//! counts are logged (rate-limited) and readable through [`Reporter::stats`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use infermux::envelope::{self, MessageType};
use infermux::{SpanSink, TraceSpan};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

/// How the reporter queues and sends spans.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// TokenTrace's base URL; spans go to `{url}/mist`.
    pub url: String,
    /// The `source` of every message.
    pub source: String,
    /// Spans waiting to be sent before new ones are dropped.
    pub queue_capacity: usize,
    /// Concurrent POSTs to TokenTrace.
    pub max_in_flight: usize,
    /// Deadline of one POST, connection included.
    pub send_timeout: Duration,
}

impl ReporterConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ReporterConfig {
            url: url.into(),
            source: "infermux".to_owned(),
            queue_capacity: 4096,
            max_in_flight: 8,
            send_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a reporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error("invalid TokenTrace URL {0}")]
    InvalidUrl(String),
    #[error("cannot build the TokenTrace HTTP client: {0}")]
    Client(String),
}

/// What happened to the spans reported so far.
#[derive(Debug, Default)]
pub struct Stats {
    /// Accepted by TokenTrace (2xx).
    pub sent: AtomicU64,
    /// Dropped because the queue was full or the reporter had stopped.
    pub dropped: AtomicU64,
    /// Sent but not accepted: connection error, timeout or non-2xx answer.
    pub failed: AtomicU64,
    /// Sends that failed in a row; non-zero means TokenTrace looks down.
    consecutive_failures: AtomicU32,
    last_warning_ms: AtomicU64,
}

impl Stats {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// True at most once per `WARN_EVERY`, so that a dead TokenTrace yields a
    /// warning every few seconds rather than one per request.
    fn should_warn(&self, epoch: Instant) -> bool {
        const WARN_EVERY_MS: u64 = 10_000;
        let now = u64::try_from(epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS)
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The sending half: hand it to the router as its `SpanSink`.
#[derive(Debug, Clone)]
pub struct Reporter {
    tx: mpsc::Sender<TraceSpan>,
    stats: Arc<Stats>,
    epoch: Instant,
}

/// The background sender; call [`ReporterTask::shutdown`] to flush it on exit.
#[derive(Debug)]
pub struct ReporterTask {
    stop: oneshot::Sender<()>,
    join: JoinHandle<()>,
}

impl Reporter {
    /// Starts the background sender on the current Tokio runtime.
    pub fn spawn(config: ReporterConfig) -> Result<(Reporter, ReporterTask), ReporterError> {
        let base = config.url.trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}/mist"))
            .map_err(|e| ReporterError::InvalidUrl(format!("\"{}\": {e}", config.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ReporterError::InvalidUrl(format!(
                "\"{}\": the scheme must be http or https",
                config.url
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.send_timeout)
            .timeout(config.send_timeout)
            .pool_max_idle_per_host(config.max_in_flight.max(1))
            .build()
            .map_err(|e| ReporterError::Client(e.to_string()))?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(Stats::default());
        let epoch = Instant::now();
        let (stop, stop_rx) = oneshot::channel();
        let sender = Sender {
            client,
            url,
            source: config.source,
            stats: stats.clone(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            max_in_flight: config.max_in_flight.max(1),
            epoch,
        };
        let join = tokio::spawn(sender.run(rx, stop_rx));
        Ok((Reporter { tx, stats, epoch }, ReporterTask { stop, join }))
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

impl SpanSink for Reporter {
    fn report(&self, span: TraceSpan) {
        if self.tx.try_send(span).is_err() {
            let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if self.stats.should_warn(self.epoch) {
                tracing::warn!(
                    spans_dropped_total = dropped,
                    "TokenTrace span queue is full; dropping spans"
                );
            }
        }
    }

    fn dropped(&self) -> u64 {
        self.stats.dropped() + self.stats.failed()
    }
}

/// How long to wait before the next send after `failures` failures in a row:
/// 100 ms doubling up to 5 s. While it waits, the queue fills and new spans are
/// dropped (and counted), so a dead TokenTrace costs no connection attempts per
/// request.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(5))
}

impl ReporterTask {
    /// Stops taking new spans, sends those already queued, and waits for the
    /// sends in flight, for at most `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(timeout, self.join).await.is_err() {
            tracing::warn!(
                "TokenTrace reporter did not flush within {timeout:?}; remaining spans are lost"
            );
        }
    }
}

struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    source: String,
    stats: Arc<Stats>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    epoch: Instant,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<TraceSpan>, mut stop: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                span = rx.recv() => match span {
                    Some(span) => self.send(span).await,
                    None => break,
                },
            }
            let failures = self.stats.consecutive_failures.load(Ordering::Relaxed);
            if failures > 0 {
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    () = tokio::time::sleep(backoff(failures)) => {}
                }
            }
        }
        // Flush what is already queued, then wait for every send in flight.
        rx.close();
        while let Ok(span) = rx.try_recv() {
            self.send(span).await;
        }
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _ = self.in_flight.acquire_many(all).await;
    }

    /// Waits for a free sending slot, then sends `span` in a task of its own.
    /// The slot is held until the send ends, so `run` can wait for all of them.
    async fn send(&self, span: TraceSpan) {
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        let body = match envelope::encode(&self.source, MessageType::TraceSpan, &span) {
            Ok(body) => body,
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot encode a span");
                return;
            }
        };
        let request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let stats = self.stats.clone();
        let epoch = self.epoch;
        tokio::spawn(async move {
            let outcome = match request.send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(format!("TokenTrace answered {}", resp.status())),
                Err(e) if e.is_timeout() => Err("TokenTrace did not answer in time".to_owned()),
                Err(e) if e.is_connect() => Err("cannot connect to TokenTrace".to_owned()),
                Err(e) => Err(format!("sending to TokenTrace failed: {e}")),
            };
            match outcome {
                Ok(()) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    stats.consecutive_failures.store(0, Ordering::Relaxed);
                }
                Err(reason) => {
                    stats.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                    let failed = stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
                    if stats.should_warn(epoch) {
                        tracing::warn!(
                            spans_failed_total = failed,
                            "{reason}; spans are being lost"
                        );
                    }
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(3200));
        assert_eq!(backoff(7), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }
}
