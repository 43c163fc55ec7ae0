//! The gRPC server over real TCP with the real client crate: retries, deadlines,
//! the error table, health and drain, reflection, panics, streams and spans.
//! The Rust counterpart of the seed's `go test ./integration/ -race -v`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infermux::testing::{Calls, FakeProvider, RecordingSink, Step};
use infermux::{EchoProvider, Provider, ProviderError, Registry, Router};
use infermux_client::{Client, Code, RetryPolicy, pb};
use infermux_grpc::ServerOptions;
use pb::infer_mux_service_client::InferMuxServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

struct Server {
    addr: SocketAddr,
    spans: Arc<RecordingSink>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(providers: Vec<Arc<dyn Provider>>, options: ServerOptions) -> Server {
        let registry = Registry::new();
        for p in providers {
            registry.register(p).unwrap();
        }
        let spans = Arc::new(RecordingSink::default());
        let router = Router::new(Arc::new(registry), spans.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(infermux_grpc::serve(
            listener,
            router,
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            spans,
            stop: Some(stop),
            task,
        }
    }

    async fn echo() -> Server {
        Server::start(
            vec![Arc::new(EchoProvider::new())],
            ServerOptions::default(),
        )
        .await
    }

    async fn with(fake: FakeProvider) -> (Server, Arc<Calls>) {
        let calls = fake.calls();
        let s = Server::start(
            vec![Arc::new(EchoProvider::new()), Arc::new(fake)],
            ServerOptions::default(),
        )
        .await;
        (s, calls)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self) -> Client {
        Client::connect(self.url()).await.unwrap()
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The generated client, with no retries: one call is one attempt.
    async fn raw(&self) -> InferMuxServiceClient<Channel> {
        InferMuxServiceClient::new(self.channel().await).max_encoding_message_size(64 * 1024 * 1024)
    }

    /// Calls that reached the router (one span each).
    fn attempts(&self) -> usize {
        self.spans.spans().len()
    }
}

fn request(model: &str, text: &str) -> pb::InferRequest {
    pb::InferRequest {
        model: model.into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: text.into(),
        }],
        ..Default::default()
    }
}

fn unavailable() -> Step {
    Step::Fail(ProviderError::Unavailable("upstream answered 503".into()))
}

fn sleeping(d: Duration) -> Step {
    Step::Sleep(d, Box::new(Step::Reply("late".into())))
}

#[tokio::test]
async fn prompt_and_list_providers() {
    let s = Server::echo().await;
    let client = s.client().await;
    let res = client.prompt("echo-v1", "Hello world").await.unwrap();
    assert_eq!(res.content, "echo: Hello world");
    assert_eq!(res.provider, "echo");
    assert_eq!((res.tokens_in, res.tokens_out), (2, 4));
    assert_eq!(res.cost_usd, 0.00006);
    let providers = client.list_providers().await.unwrap();
    assert_eq!(
        providers,
        vec![pb::ProviderInfo {
            name: "echo".into(),
            models: vec!["echo-v1".into()]
        }]
    );
    let full = client.infer(request("echo-v1", "Hi")).await.unwrap();
    assert_eq!(full.model, "echo-v1");
    assert_eq!(full.finish_reason, "stop");
}

#[tokio::test]
async fn retries_unavailable_until_success_in_exactly_three_attempts() {
    let (s, calls) = Server::with(
        FakeProvider::new("flaky", &["flaky-1"]).script([unavailable(), unavailable()]),
    )
    .await;
    let res = s.client().await.prompt("flaky-1", "x").await.unwrap();
    assert_eq!(res.content, "fake: x");
    assert_eq!(calls.started(), 3);
    assert_eq!(s.attempts(), 3);
}

#[tokio::test]
async fn persistent_unavailable_fails_after_three_attempts_and_backoff() {
    let (s, calls) = Server::with(FakeProvider::new("down", &["down-1"]).then(unavailable())).await;
    let started = Instant::now();
    let e = s.client().await.prompt("down-1", "x").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.to_string().contains("503"), "{e}");
    assert_eq!(calls.started(), 3);
    // Two waits: 100 ms and 200 ms, lengthened (never shortened) by jitter.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn never_retries_not_found_or_invalid_argument() {
    let s = Server::echo().await;
    let client = s.client().await;
    let e = client.prompt("no-such-model", "x").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.to_string().contains("no-such-model"));
    assert_eq!(s.attempts(), 1);
    let mut bad = request("echo-v1", "x");
    bad.messages.clear();
    let e = client.infer(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(s.attempts(), 2);
}

#[tokio::test]
async fn deadline_cancels_the_provider_and_answers_deadline_exceeded() {
    let (s, calls) =
        Server::with(FakeProvider::new("slow", &["slow-1"]).then(sleeping(Duration::from_secs(2))))
            .await;
    let client = s.client().await.timeout(Duration::from_millis(200));
    let started = Instant::now();
    let e = client.prompt("slow-1", "x").await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.started(), 1, "DEADLINE_EXCEEDED is not retried");
    wait_for(|| calls.cancelled() == 1).await;
    assert_eq!(
        s.spans.spans()[0].attrs.error_code,
        Some("upstream_timeout")
    );
}

#[tokio::test]
async fn a_client_that_cancels_cancels_the_provider_call() {
    let (s, calls) =
        Server::with(FakeProvider::new("slow", &["slow-1"]).then(sleeping(Duration::from_secs(5))))
            .await;
    let mut raw = s.raw().await;
    let call = tokio::spawn(async move { raw.infer(request("slow-1", "x")).await });
    wait_for(|| calls.started() == 1).await;
    call.abort();
    wait_for(|| calls.cancelled() == 1).await;
    wait_for(|| s.attempts() == 1).await;
    assert_eq!(s.spans.spans()[0].attrs.error_code, Some("cancelled"));
}

async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_error_row_maps_to_its_grpc_code() {
    let rejected = |status: u16| {
        Step::Fail(ProviderError::Rejected {
            status,
            message: format!("upstream said {status}"),
        })
    };
    let fake = FakeProvider::new("fake", &["fake-1"]).script([
        unavailable(),
        rejected(400),
        rejected(422),
        rejected(401),
        rejected(403),
        rejected(404),
        rejected(409),
        Step::Fail(ProviderError::RateLimited("slow down".into())),
        Step::Fail(ProviderError::Timeout("60 s elapsed".into())),
        Step::Panic,
    ]);
    let (s, _) = Server::with(fake).await;
    let mut raw = s.raw().await;
    let want = [
        (Code::Unavailable, "503"),
        (Code::InvalidArgument, "400"),
        (Code::InvalidArgument, "422"),
        (Code::Unauthenticated, "401"),
        (Code::PermissionDenied, "403"),
        (Code::NotFound, "404"),
        (Code::FailedPrecondition, "409"),
        (Code::ResourceExhausted, "slow down"),
        (Code::DeadlineExceeded, "60 s"),
        (Code::Internal, "fake"),
    ];
    for (code, text) in want {
        let status = raw.infer(request("fake-1", "x")).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(text), "{status:?}");
    }
    // The panic took down neither the process nor the connection.
    let ok = raw
        .infer(request("fake-1", "x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.content, "fake: x");
}

#[tokio::test]
async fn upstream_text_quoting_a_key_is_redacted_in_grpc_status() {
    // The provider registered its key (as the adapters do); the upstream
    // quotes it, whole and masked, and a Bearer header.
    let key = "sk-live-Qw3rTy8uIo9pAsDfGh";
    infermux::redact::register(key);
    let fake = FakeProvider::new("fake", &["fake-1"]).script([
        Step::Fail(ProviderError::Rejected {
            status: 401,
            message: format!("Incorrect API key provided: {key}"),
        }),
        Step::Fail(ProviderError::Unavailable(
            "proxy said: Authorization: Bearer abc.def.ghi; sk-live-****fGh".into(),
        )),
    ]);
    let (s, _) = Server::with(fake).await;
    let mut raw = s.raw().await;
    for code in [Code::Unauthenticated, Code::Unavailable] {
        let status = raw.infer(request("fake-1", "x")).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        let text = format!("{} {:?}", status.message(), status.details());
        assert!(
            !text.contains("Qw3rTy8u") && !text.contains("abc.def"),
            "{text}"
        );
        assert!(text.contains("[redacted]"), "{text}");
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let s = Server::echo().await;
    let mut raw = s.raw().await;
    let msg = |role: &str| pb::ChatMessage {
        role: role.into(),
        content: "x".into(),
    };
    let cases = [
        (
            pb::InferRequest {
                model: "echo-v1".into(),
                ..Default::default()
            },
            "messages:",
        ),
        (
            pb::InferRequest {
                model: "echo-v1".into(),
                messages: vec![msg("user"), msg("wizard")],
                ..Default::default()
            },
            "messages[1].role:",
        ),
        (
            pb::InferRequest {
                temperature: Some(2.5),
                ..request("echo-v1", "x")
            },
            "params.temperature:",
        ),
        (
            pb::InferRequest {
                temperature: Some(-0.1),
                ..request("echo-v1", "x")
            },
            "params.temperature:",
        ),
        (
            pb::InferRequest {
                max_tokens: Some(0),
                ..request("echo-v1", "x")
            },
            "params.max_tokens:",
        ),
    ];
    for (req, field) in cases {
        let status = raw.infer(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
        let status = raw.infer_stream(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let status = raw
        .infer(pb::InferRequest {
            provider: "nowhere".into(),
            ..request("echo-v1", "x")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nowhere"));

    // Over the 10 MiB message limit: RESOURCE_EXHAUSTED, and the server lives on.
    let status = raw
        .infer(request("echo-v1", &"x".repeat(11 * 1024 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let ok = raw
        .infer(request("echo-v1", "still here"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.content, "echo: still here");
}

#[tokio::test]
async fn infer_stream_yields_ordered_deltas_and_a_final_usage_chunk() {
    let s = Server::echo().await;
    let mut stream = s
        .client()
        .await
        .infer_stream(request("echo-v1", "Hello big wide world"))
        .await
        .unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.unwrap());
    }
    assert_eq!(chunks.len(), 5);
    let text: String = chunks.iter().map(|c| c.delta.as_str()).collect();
    assert_eq!(text, "echo: Hello big wide world");
    let (last, rest) = chunks.split_last().unwrap();
    assert!(
        rest.iter()
            .all(|c| c.finish_reason.is_empty() && c.tokens_out == 0 && c.cost_usd == 0.0)
    );
    assert!(
        chunks
            .iter()
            .all(|c| c.model == "echo-v1" && c.provider == "echo")
    );
    assert_eq!(last.finish_reason, "stop");
    assert_eq!((last.tokens_in, last.tokens_out), (5, 6));
    assert!(last.cost_usd > 0.0);
    wait_for(|| s.attempts() == 1).await;
    assert_eq!(s.spans.spans()[0].attrs.tokens_out, 6);
}

#[tokio::test]
async fn grpc_calls_report_spans_continuing_the_callers_trace() {
    let s = Server::echo().await;
    let mut raw = s.raw().await;
    let mut req = tonic::Request::new(request("echo-v1", "Hello"));
    req.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let resp = raw.infer(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-infermux-provider").unwrap(), "echo");
    let _ = raw.infer(request("nope", "x")).await.unwrap_err();
    let spans = s.spans.spans();
    assert_eq!(spans.len(), 2);
    assert_eq!(
        spans[0].trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(spans[0].parent_id.unwrap().to_string(), "00f067aa0ba902b7");
    assert_eq!(&*spans[0].attrs.provider, "echo");
    assert_eq!(spans[1].attrs.error_code, Some("model_not_found"));
}

async fn health_status(channel: Channel, service: &str) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test]
async fn health_flips_to_not_serving_on_drain_and_in_flight_rpcs_finish() {
    let fake = FakeProvider::new("slow", &["slow-1"]).then(sleeping(Duration::from_millis(600)));
    let calls = fake.calls();
    let options = ServerOptions {
        drain_delay: Duration::from_millis(300),
        grace: Duration::from_secs(5),
        ..ServerOptions::default()
    };
    let mut s = Server::start(vec![Arc::new(EchoProvider::new()), Arc::new(fake)], options).await;
    let channel = s.channel().await;
    assert_eq!(health_status(channel.clone(), "").await, SERVING);
    assert_eq!(
        health_status(channel.clone(), "infermux.v1.InferMuxService").await,
        SERVING
    );

    let mut raw = InferMuxServiceClient::new(channel.clone());
    let in_flight = tokio::spawn(async move { raw.infer(request("slow-1", "x")).await });
    wait_for(|| calls.started() == 1).await;
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(health_status(channel.clone(), "").await, NOT_SERVING);
    assert_eq!(
        health_status(channel.clone(), "infermux.v1.InferMuxService").await,
        NOT_SERVING
    );

    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight RPC finishes during drain");
    assert_eq!(resp.into_inner().content, "late");
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpListener::bind(s.addr).await.is_ok()
            || Endpoint::from_shared(format!("http://{}", s.addr))
                .unwrap()
                .connect()
                .await
                .is_err()
    );
}

#[tokio::test]
async fn reflection_lists_the_service_and_serves_its_descriptor() {
    use prost::Message;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let s = Server::echo().await;
    let mut client = ServerReflectionClient::new(s.channel().await);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "infermux.v1.InferMuxService".into(),
        )),
    ]);
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"infermux.v1.InferMuxService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a file descriptor");
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.name(), "infermux/v1/infermux.proto");
    assert_eq!(file.package(), "infermux.v1");
    let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["Infer", "InferStream", "ListProviders"]);

    // v1alpha too, for older reflection clients.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha = AlphaClient::new(s.channel().await);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(AlphaResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "infermux.v1.InferMuxService")
    );
}

#[tokio::test]
async fn keepalive_pings_keep_an_idle_connection_usable() {
    let options = ServerOptions {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let s = Server::start(vec![Arc::new(EchoProvider::new())], options).await;
    // A client that pings far more often than the contract's 10 s.
    let channel = Endpoint::from_shared(s.url())
        .unwrap()
        .http2_keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .unwrap();
    let client = Client::from_channel(channel);
    client.prompt("echo-v1", "before").await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        client.prompt("echo-v1", "after").await.unwrap().content,
        "echo: after"
    );
}

#[tokio::test]
async fn the_client_retries_a_server_that_is_not_there_yet() {
    // Nothing listens: every attempt is UNAVAILABLE, and each is retried.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let policy = RetryPolicy {
        jitter: 0.0,
        ..RetryPolicy::default()
    };
    let client = Client::from_channel(channel).retry_policy(policy);
    let started = Instant::now();
    let e = client.prompt("echo-v1", "x").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Records the deadline each stream reached the provider with.
struct DeadlineProbe {
    models: Vec<String>,
    seen: Arc<std::sync::Mutex<Vec<Option<Duration>>>>,
}

#[async_trait::async_trait]
impl Provider for DeadlineProbe {
    fn name(&self) -> &str {
        "probe"
    }
    fn models(&self) -> &[String] {
        &self.models
    }
    async fn infer(
        &self,
        ctx: &infermux::CallContext<'_>,
        _: &infermux::InferRequest,
    ) -> Result<infermux::InferResponse, ProviderError> {
        let left = ctx
            .deadline
            .map(|d| d.saturating_duration_since(std::time::Instant::now()));
        self.seen.lock().unwrap().push(left);
        Ok(infermux::InferResponse {
            content: "ok".into(),
            finish_reason: "stop".into(),
            ..Default::default()
        })
    }
}

#[tokio::test]
async fn the_clients_streams_carry_a_default_deadline_as_calls_do() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = DeadlineProbe {
        models: vec!["probe-1".into()],
        seen: seen.clone(),
    };
    let s = Server::start(vec![Arc::new(probe)], ServerOptions::default()).await;
    let client = s.client().await;
    client.infer(request("probe-1", "x")).await.unwrap();
    let mut stream = client.infer_stream(request("probe-1", "x")).await.unwrap();
    while stream.message().await.unwrap().is_some() {}
    let seen = seen.lock().unwrap().clone();
    let near = |left: Option<Duration>, want: Duration| {
        left.is_some_and(|l| l <= want && l > want - Duration::from_secs(5))
    };
    assert!(near(seen[0], infermux_client::DEFAULT_TIMEOUT), "{seen:?}");
    assert!(
        near(seen[1], infermux_client::DEFAULT_STREAM_TIMEOUT),
        "{seen:?}"
    );
}

#[tokio::test]
async fn keys_are_read_from_metadata_and_checked() {
    use infermux::callers::{AuthSettings, Callers, KeySpec, hash_secret};
    let registry = Registry::new();
    registry.register(Arc::new(EchoProvider::new())).unwrap();
    let settings = AuthSettings {
        required: true,
        default_reserve_tokens: 100,
        keys: vec![KeySpec {
            name: "app".into(),
            sha256: hash_secret("sk-app"),
            team: None,
            models: vec!["echo-v1".into()],
            budget: Some(infermux::callers::BudgetSpec {
                usd: 1.0,
                period: infermux::callers::Period::Total,
            }),
            rate_limits: Default::default(),
            expires_at: None,
        }],
        teams: vec![],
    };
    let router = Router::without_spans(Arc::new(registry))
        .with_callers(Arc::new(Callers::new(&settings, None).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(infermux_grpc::serve(
        listener,
        router,
        ServerOptions::default(),
        std::future::pending(),
    ));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = InferMuxServiceClient::new(channel);
    let with = |key: Option<&str>, model: &str| {
        let mut req = tonic::Request::new(request(model, "hi"));
        if let Some(k) = key {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        req
    };
    for key in [None, Some("sk-wrong")] {
        let e = raw.infer(with(key, "echo-v1")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }
    let ok = raw.infer(with(Some("sk-app"), "echo-v1")).await.unwrap();
    let left: f64 = ok
        .metadata()
        .get("x-infermux-budget-remaining")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < 1.0 && left > 0.99, "echo's price was spent: {left}");
    assert_eq!(ok.into_inner().content, "echo: hi");
    let mut req = tonic::Request::new(request("echo-v1", "hi"));
    req.metadata_mut()
        .insert("x-api-key", "sk-app".parse().unwrap());
    assert!(raw.infer(req).await.is_ok());
    let e = raw.infer(with(Some("sk-app"), "auto")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = raw.infer_stream(with(None, "echo-v1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}
