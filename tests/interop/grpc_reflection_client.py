"""Interop check: the official gRPC Python client explores a running
`infermux serve-grpc` through server reflection alone (no .proto file), the way
grpcurl does, then calls it.

Usage: python grpc_reflection_client.py HOST:PORT [CA.pem]
With CA.pem, the channel is TLS, trusting that certificate authority.
Prints one line per check; exits non-zero on the first failure.
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "infermux.v1.InferMuxService"


def check(cond, what):
    if not cond:
        print(f"FAIL {what}")
        sys.exit(1)
    print(f"ok   {what}")


def main(target, ca=None):
    if ca is None:
        channel = grpc.insecure_channel(target)
    else:
        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(target, credentials)
    grpc.channel_ready_future(channel).result(timeout=10)

    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    check(SERVICE in services, f"reflection lists {SERVICE} (got {services})")
    check("grpc.health.v1.Health" in services, "reflection lists grpc.health.v1.Health")

    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName(SERVICE)
    methods = [m.name for m in svc.methods]
    check(methods == ["Infer", "InferStream", "ListProviders"], f"methods {methods}")

    def cls(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    InferRequest = cls("infermux.v1.InferRequest")
    InferResponse = cls("infermux.v1.InferResponse")
    InferChunk = cls("infermux.v1.InferChunk")
    ListReq = cls("infermux.v1.ListProvidersRequest")
    ListResp = cls("infermux.v1.ListProvidersResponse")

    def unary(method, resp_cls):
        return channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )

    infer = unary("Infer", InferResponse)
    req = InferRequest(model="echo-v1")
    req.messages.add(role="user", content="Hello world")
    resp = infer(req, timeout=5)
    check(resp.content == "echo: Hello world", f"Infer content {resp.content!r}")
    check(resp.provider == "echo" and resp.finish_reason == "stop", "Infer provider and finish_reason")
    check((resp.tokens_in, resp.tokens_out) == (2, 4), f"Infer tokens {resp.tokens_in}/{resp.tokens_out}")
    check(abs(resp.cost_usd - 0.00006) < 1e-12, f"Infer cost {resp.cost_usd}")

    stream = channel.unary_stream(
        f"/{SERVICE}/InferStream",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=InferChunk.FromString,
    )
    chunks = list(stream(req, timeout=5))
    check("".join(c.delta for c in chunks) == "echo: Hello world", f"InferStream text over {len(chunks)} chunks")
    check(len(chunks) > 1 and chunks[-1].finish_reason == "stop", "InferStream final chunk carries finish_reason")

    providers = unary("ListProviders", ListResp)(ListReq(), timeout=5)
    check([(p.name, list(p.models)) for p in providers.providers] == [("echo", ["echo-v1"])], "ListProviders")

    for model, code in [("no-such-model", grpc.StatusCode.NOT_FOUND)]:
        bad = InferRequest(model=model)
        bad.messages.add(role="user", content="x")
        try:
            infer(bad, timeout=5)
            check(False, f"{model} fails")
        except grpc.RpcError as e:
            check(e.code() == code and model in e.details(), f"{model} -> {e.code().name}: {e.details()}")

    empty = InferRequest(model="echo-v1")
    try:
        infer(empty, timeout=5)
        check(False, "empty messages fails")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "messages" in e.details(),
              f"empty messages -> {e.code().name}: {e.details()}")

    hot = InferRequest(model="echo-v1", temperature=3.0)
    hot.messages.add(role="user", content="x")
    try:
        infer(hot, timeout=5)
        check(False, "temperature 3.0 fails")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in e.details(),
              f"temperature 3.0 -> {e.code().name}: {e.details()}")

    health = health_pb2_grpc.HealthStub(channel)
    for name in ["", SERVICE]:
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        check(status == health_pb2.HealthCheckResponse.SERVING, f"health {name!r} SERVING")

    print("interop: 0 failed")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8601",
        sys.argv[2] if len(sys.argv) > 2 else None,
    )
