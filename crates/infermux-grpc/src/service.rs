//! The InferMuxService handlers: extract → Router → render.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use infermux::router::RequestContext;
use infermux::{Router, TraceContext};
use infermux_proto::v1 as pb;
use pb::infer_mux_service_server::InferMuxService;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::convert::{self, status_of};

/// The gRPC service over a [`Router`].
#[derive(Debug, Clone)]
pub struct InferMuxGrpc {
    router: Router,
}

impl InferMuxGrpc {
    pub fn new(router: Router) -> Self {
        InferMuxGrpc { router }
    }

    /// The generated tonic server for this service, with the message size limits
    /// set to the protocol's 10 MiB.
    pub fn into_server(self) -> pb::infer_mux_service_server::InferMuxServiceServer<Self> {
        pb::infer_mux_service_server::InferMuxServiceServer::new(self)
            .max_decoding_message_size(infermux::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(infermux::MAX_MESSAGE_SIZE)
    }
}

/// The caller's trace (`traceparent`), deadline (`grpc-timeout`), key
/// (`authorization: Bearer <key>` or `x-api-key`, checked when the router
/// has callers: UNAUTHENTICATED otherwise) and name (`x-infermux-caller`).
fn context(router: &Router, metadata: &MetadataMap) -> Result<RequestContext, Status> {
    let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
    let mut ctx = RequestContext {
        trace: text("traceparent").and_then(TraceContext::from_traceparent),
        timeout: text("grpc-timeout").and_then(convert::grpc_timeout),
        dialect: "grpc",
        ..RequestContext::default()
    };
    if let Some(callers) = router.callers() {
        let bearer = text("authorization").and_then(|v| {
            let v = v.trim();
            (v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ")).then(|| v[7..].trim())
        });
        let secret = bearer.or_else(|| text("x-api-key").map(str::trim));
        ctx.key = callers.authenticate(secret).map_err(|e| status_of(&e))?;
        ctx.caller = text("x-infermux-caller")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| std::sync::Arc::from(infermux::validate::truncate(c, 256)));
    }
    Ok(ctx)
}

/// Names the serving provider in the response metadata (and so in the RPC log).
fn label<T>(resp: &mut Response<T>, provider: &str) {
    if let Ok(v) = MetadataValue::try_from(provider) {
        resp.metadata_mut().insert("x-infermux-provider", v);
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::InferChunk, Status>> + Send>>;

#[tonic::async_trait]
impl InferMuxService for InferMuxGrpc {
    async fn infer(
        &self,
        request: Request<pb::InferRequest>,
    ) -> Result<Response<pb::InferResponse>, Status> {
        let ctx = context(&self.router, request.metadata())?;
        let req = convert::request(request.into_inner());
        let routed = self
            .router
            .call(&req, &ctx)
            .await
            .map_err(|e| status_of(&e))?;
        let provider = routed.response.provider.clone();
        let budget_remaining = routed.budget_remaining;
        let mut resp = Response::new(convert::response(routed.response));
        label(&mut resp, &provider);
        if let Some(left) = budget_remaining
            && let Ok(v) = MetadataValue::try_from(format!("{}", left.max(0.0)))
        {
            resp.metadata_mut().insert("x-infermux-budget-remaining", v);
        }
        Ok(resp)
    }

    type InferStreamStream = ChunkStream;

    /// Chunks are forwarded as the provider yields them; a client that goes away
    /// drops the stream, which cancels the provider call.
    async fn infer_stream(
        &self,
        request: Request<pb::InferRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let ctx = context(&self.router, request.metadata())?;
        let req = convert::request(request.into_inner());
        let stream = self
            .router
            .call_stream(&req, &ctx)
            .await
            .map_err(|e| status_of(&e))?;
        let provider = stream.provider.clone();
        let chunks: ChunkStream = Box::pin(stream.map(|item| match item {
            Ok(c) => Ok(convert::chunk(c)),
            Err(e) => Err(status_of(&e)),
        }));
        let mut resp = Response::new(chunks);
        label(&mut resp, &provider);
        Ok(resp)
    }

    async fn list_providers(
        &self,
        _request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let providers = self
            .router
            .registry()
            .entries()
            .iter()
            .map(|e| pb::ProviderInfo {
                name: e.name.to_string(),
                models: e.routable_models(),
            })
            .collect();
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }
}
