//! Scripted providers for tests (feature `testing`): first-class fakes that record
//! what they were asked and fail, hang or panic on cue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::ProviderError;
use crate::provider::{CallContext, ChunkStream, Provider};
use crate::types::{InferChunk, InferRequest, InferResponse};

/// One scripted answer of a [`FakeProvider`].
#[derive(Debug, Clone)]
pub enum Step {
    /// Answer with this content (tokens 1 in, 1 out, no cost).
    Reply(String),
    /// Fail with this error.
    Fail(ProviderError),
    /// Panic inside the provider.
    Panic,
    /// Wait, then take the inner step.
    Sleep(Duration, Box<Step>),
}

/// Counters shared between a [`FakeProvider`] and the test that watches it.
#[derive(Debug, Default)]
pub struct Calls {
    /// Calls started.
    pub started: AtomicUsize,
    /// Calls whose future was dropped before it finished (cancelled).
    pub cancelled: AtomicUsize,
    /// The `traceparent` and model of each call, in order.
    pub seen: Mutex<Vec<(String, String)>>,
}

impl Calls {
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// A provider that plays a script: each call takes the next step; once the script
/// is spent, every call takes `then`.
#[derive(Debug)]
pub struct FakeProvider {
    name: String,
    models: Vec<String>,
    script: Mutex<VecDeque<Step>>,
    then: Step,
    calls: Arc<Calls>,
}

impl FakeProvider {
    /// A fake named `name` serving `models`, replying `"fake: " + last message`
    /// once its script is spent.
    pub fn new(name: &str, models: &[&str]) -> Self {
        FakeProvider {
            name: name.to_owned(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            script: Mutex::new(VecDeque::new()),
            then: Step::Reply(String::new()),
            calls: Arc::default(),
        }
    }

    /// Plays `steps` first, in order.
    pub fn script(self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(steps);
        self
    }

    /// What every call does once the script is spent.
    pub fn then(mut self, step: Step) -> Self {
        self.then = step;
        self
    }

    pub fn calls(&self) -> Arc<Calls> {
        self.calls.clone()
    }

    fn next_step(&self) -> Step {
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
            .unwrap_or_else(|| self.then.clone())
    }
}

struct CancelGuard(Arc<Calls>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn play(step: Step, req: &InferRequest) -> Result<InferResponse, ProviderError> {
    let mut step = step;
    loop {
        match step {
            Step::Sleep(d, next) => {
                tokio::time::sleep(d).await;
                step = *next;
            }
            Step::Reply(content) => {
                let content = if content.is_empty() {
                    let last = req.messages.last().map_or("", |m| m.content.as_str());
                    format!("fake: {last}")
                } else {
                    content
                };
                return Ok(InferResponse {
                    content,
                    tokens_in: 1,
                    tokens_out: 1,
                    finish_reason: "stop".into(),
                    ..Default::default()
                });
            }
            Step::Fail(e) => return Err(e),
            Step::Panic => panic!("scripted panic in FakeProvider"),
        }
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn kind(&self) -> &str {
        "fake"
    }

    async fn infer(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<InferResponse, ProviderError> {
        self.calls.started.fetch_add(1, Ordering::SeqCst);
        self.calls
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((ctx.traceparent(), ctx.model.to_owned()));
        let mut guard = CancelGuard(self.calls.clone(), false);
        let out = play(self.next_step(), req).await;
        guard.1 = true;
        out
    }

    async fn infer_stream(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<ChunkStream, ProviderError> {
        let resp = self.infer(ctx, req).await?;
        let words: Vec<String> = resp
            .content
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
        let n = words.len();
        let chunks = words.into_iter().enumerate().map(move |(i, delta)| {
            let last = i + 1 == n;
            Ok(InferChunk {
                delta,
                tokens_in: if last { resp.tokens_in } else { 0 },
                tokens_out: if last { resp.tokens_out } else { 0 },
                finish_reason: if last {
                    resp.finish_reason.clone()
                } else {
                    String::new()
                },
                ..Default::default()
            })
        });
        Ok(Box::pin(futures_util::stream::iter(
            chunks.collect::<Vec<_>>(),
        )))
    }
}

/// A span sink that keeps every span, for assertions.
#[derive(Debug, Default)]
pub struct RecordingSink {
    spans: Mutex<Vec<crate::trace::TraceSpan>>,
}

impl RecordingSink {
    pub fn spans(&self) -> Vec<crate::trace::TraceSpan> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl crate::trace::SpanSink for RecordingSink {
    fn report(&self, span: crate::trace::TraceSpan) {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(span);
    }
}
