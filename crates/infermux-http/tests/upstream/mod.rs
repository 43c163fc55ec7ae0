//! A fake upstream provider: a real HTTP server on 127.0.0.1:0 that records every
//! request it gets and answers from a script.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use std::collections::HashMap;

use infermux::Router;
use infermux::config::Config;
use infermux::testing::RecordingSink;
use serde_json::Value;
use tokio::net::TcpListener;

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Json(u16, Value),
    Raw(u16, &'static str, String),
    /// An event stream: each string is written as is, in order.
    Sse(Vec<String>),
    /// An event stream that sends these events, then stays open (sending
    /// keep-alive comments) until the client goes away.
    SseHang(Vec<String>),
    /// A 200 JSON answer whose body never ends: a space every 20 ms (JSON
    /// allows them) until the client goes away.
    JsonHang,
    /// OpenAI's reasoning models (o-series, gpt-5): a request with
    /// `max_tokens` gets their 400; otherwise this answer (or, for a stream,
    /// these events), with an `x-request-id` header.
    Reasoning(Value, Vec<String>),
}

/// OpenAI's answer to `max_tokens` on a reasoning model, word for word.
pub fn max_tokens_unsupported() -> Value {
    serde_json::json!({"error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}})
}

#[derive(Default)]
struct Inner {
    seen: Mutex<Vec<Seen>>,
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Option<Reply>>,
    /// Streams whose body was dropped before it ended (client went away).
    abandoned: AtomicUsize,
}

#[derive(Clone)]
pub struct Upstream {
    pub url: String,
    inner: Arc<Inner>,
}

struct DropCounter(Arc<Inner>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.abandoned.fetch_add(1, Ordering::SeqCst);
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let inner: Arc<Inner> = Arc::default();
        let state = inner.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move { answer(&state, &uri, headers, &body) }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { url, inner }
    }

    pub fn reply(&self, r: Reply) -> &Self {
        self.inner.script.lock().unwrap().push_back(r);
        self
    }

    pub fn always(&self, r: Reply) -> &Self {
        *self.inner.fallback.lock().unwrap() = Some(r);
        self
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream got no request")
    }

    pub fn abandoned(&self) -> usize {
        self.inner.abandoned.load(Ordering::SeqCst)
    }
}

fn answer(state: &Arc<Inner>, uri: &Uri, headers: HeaderMap, body: &[u8]) -> Response {
    let sent: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    state.seen.lock().unwrap().push(Seen {
        path_and_query: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.fallback.lock().unwrap().clone())
        .unwrap_or(Reply::Json(
            500,
            serde_json::json!({"error": {"message": "no scripted reply"}}),
        ));
    let builder = |status: u16, ct: &str| {
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", ct)
    };
    match reply {
        Reply::Json(status, v) => builder(status, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        Reply::Raw(status, ct, text) => builder(status, ct).body(Body::from(text)).unwrap(),
        Reply::Reasoning(_, _) if sent.get("max_tokens").is_some() => {
            builder(400, "application/json")
                .body(Body::from(max_tokens_unsupported().to_string()))
                .unwrap()
        }
        Reply::Reasoning(answer, events) => {
            let stream = sent["stream"] == true;
            let ct = if stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            let b = builder(200, ct).header("x-request-id", "req_up_123");
            if stream {
                b.body(Body::from(events.concat())).unwrap()
            } else {
                b.body(Body::from(answer.to_string())).unwrap()
            }
        }
        Reply::Sse(events) => {
            let stream = futures_util::stream::iter(
                events
                    .into_iter()
                    .map(|e| Ok::<_, Infallible>(Bytes::from(e))),
            );
            builder(200, "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Reply::JsonHang => {
            let guard = DropCounter(state.clone());
            let spaces = futures_util::stream::unfold(guard, |guard| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Ok::<_, Infallible>(Bytes::from_static(b" ")), guard))
            });
            builder(200, "application/json")
                .body(Body::from_stream(spaces))
                .unwrap()
        }
        Reply::SseHang(events) => {
            let guard = DropCounter(state.clone());
            let head = futures_util::stream::iter(
                events
                    .into_iter()
                    .map(|e| Ok::<_, Infallible>(Bytes::from(e))),
            );
            let tail = futures_util::stream::unfold(guard, |guard| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((
                    Ok::<_, Infallible>(Bytes::from_static(b": keep-alive\n\n")),
                    guard,
                ))
            });
            use futures_util::StreamExt;
            builder(200, "text/event-stream")
                .body(Body::from_stream(head.chain(tail)))
                .unwrap()
        }
    }
}

/// An OpenAI `data:` event.
pub fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

/// An Anthropic event with its name.
pub fn event(name: &str, v: Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// The real server, with adapters built from a config, on 127.0.0.1:0.
pub struct Gateway {
    pub base: String,
    pub client: reqwest::Client,
    pub spans: Arc<RecordingSink>,
    pub registry: Arc<infermux::Registry>,
    /// With [`Gateway::with_ledger`]: the callers and their SQLite ledger.
    pub callers: Option<Arc<infermux::callers::Callers>>,
    pub ledger: Option<Arc<infermux_ledger::SqliteLedger>>,
}

impl Gateway {
    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_with(yaml, false).await
    }

    /// The gateway with the config's health checks running, as `serve` runs
    /// them (for the rest of the test: its runtime ends them).
    pub async fn start_checked(yaml: &str) -> Gateway {
        Gateway::start_with(yaml, true).await
    }

    /// The gateway as `serve` runs it with a config's `auth`, `teams` and
    /// `pricing`: keys checked, budgets kept, every call in the SQLite
    /// ledger at `ledger` (reopened as it is: a restart).
    pub async fn with_ledger(yaml: &str, ledger: &std::path::Path) -> Gateway {
        let config = Config::parse(yaml, &HashMap::<String, String>::new(), true).unwrap();
        let registry = Arc::new(infermux_providers::registry_from_config(&config).unwrap());
        let sqlite = Arc::new(infermux_ledger::SqliteLedger::open(ledger).unwrap());
        let callers = Arc::new(
            infermux::callers::Callers::new(
                &config.auth,
                Some(sqlite.clone() as Arc<dyn infermux::callers::Ledger>),
            )
            .unwrap(),
        );
        let spans = Arc::new(RecordingSink::default());
        let router = Router::new(registry.clone(), spans.clone())
            .with_pricing(infermux::cost::Pricing::new(&config.pricing))
            .with_callers(callers.clone());
        let mut gateway = Gateway::serve(router, registry, spans).await;
        gateway.callers = Some(callers);
        gateway.ledger = Some(sqlite);
        gateway
    }

    /// Serves `router` on a new port.
    async fn serve(
        router: Router,
        registry: Arc<infermux::Registry>,
        spans: Arc<RecordingSink>,
    ) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(infermux_http::serve(
            listener,
            infermux_http::app(router),
            std::future::pending(),
            Duration::from_secs(1),
        ));
        Gateway {
            base,
            client: reqwest::Client::new(),
            spans,
            registry,
            callers: None,
            ledger: None,
        }
    }

    async fn start_with(yaml: &str, checked: bool) -> Gateway {
        let config = Config::parse(yaml, &HashMap::<String, String>::new(), true).unwrap();
        let registry = Arc::new(infermux_providers::registry_from_config(&config).unwrap());
        if checked {
            let checks: Vec<_> = config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.health_check))
                .collect();
            infermux::health::spawn_checks(&registry, &checks);
        }
        let spans = Arc::new(RecordingSink::default());
        let router = Router::new(registry.clone(), spans.clone());
        Gateway::serve(router, registry, spans).await
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn chat(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = self.post("/v1/chat/completions", body).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap())
    }

    /// A streamed chat completion: the `data:` payloads, `[DONE]` included.
    pub async fn chat_stream(&self, body: Value) -> Vec<String> {
        let resp = self.post("/v1/chat/completions", body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = resp.text().await.unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                    .to_owned()
            })
            .collect()
    }
}

/// The contract's error message in an error body.
pub fn error_message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
}
