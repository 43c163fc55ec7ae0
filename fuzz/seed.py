#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target under fuzz/corpus/ (committed):
every request and answer shape the hardening issue names, and ordinary ones.
Run it again after adding a shape; cargo fuzz adds what it finds beside them."""
import json
import pathlib

root = pathlib.Path(__file__).parent / "corpus"
INFER = json.dumps({"model": "echo-v1", "messages": [{"role": "user", "content": "hi"}]})


def write(target, name, data):
    d = root / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def req(line, headers, body=""):
    return f"{line}\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n" + body


n = len(INFER)
requests = {
    "infer": req("POST /infer HTTP/1.1", ["host: x", "content-type: application/json", f"content-length: {n}"], INFER),
    "chat_close": req("POST /v1/chat/completions?x=1 HTTP/1.1", ["Host: a", "Content-Type: application/json", f"Content-Length: {n}", "Connection: keep-alive, close", "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"], INFER),
    "mist": req("POST /mist HTTP/1.1", ["content-length: 2"], "{}"),
    "timeout": req("POST /infer HTTP/1.1", ["content-type: application/json", "x-infermux-timeout: 500ms", f"content-length: {n}"], INFER),
    "two_lengths": req("POST /infer HTTP/1.1", ["content-length: 2", "content-length: 3"], "{}"),
    "plus_length": req("POST /infer HTTP/1.1", ["content-length: +2"], "{}"),
    "huge_length": req("POST /infer HTTP/1.1", ["content-length: 99999999999999999999"]),
    "chunked": req("POST /infer HTTP/1.1", ["transfer-encoding: chunked"], "2\r\n{}\r\n0\r\n\r\n"),
    "cl_and_te": req("POST /infer HTTP/1.1", ["content-length: 5", "transfer-encoding: chunked"], "0\r\n\r\n"),
    "expect": req("POST /infer HTTP/1.1", ["content-length: 2", "expect: 100-continue"], "{}"),
    "upgrade": req("POST /infer HTTP/1.1", ["content-length: 2", "connection: upgrade", "upgrade: h2c"], "{}"),
    "http10": req("POST /infer HTTP/1.0", ["content-length: 2"], "{}"),
    "h2_preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bad_header": "POST /infer HTTP/1.1\r\nbad header\r\n\r\n",
    "long_target": req("POST /infer?pad=" + "a" * 70000 + " HTTP/1.1", ["content-length: 2"], "{}"),
    "pipelined": req("POST /infer HTTP/1.1", ["content-length: 2"], "{}") * 3,
    "partial": "POST /infer HTTP/1.1\r\ncontent-len",
}
for name, raw in requests.items():
    write("front_request", name, raw)

answers = {
    "sized": "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    "chunked_ext_trailer": "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
    "interim": "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
    "no_content": "HTTP/1.1 204 No Content\r\n\r\n",
    "to_close": "HTTP/1.1 200 OK\r\n\r\nto the end",
    "cl_and_te": "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "http10_chunked": "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "plus_length": "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n{}",
    "plus_hex_chunk": "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+2\r\n{}\r\n0\r\n\r\n",
    "switching": "HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n",
    "framing_error_after_json": "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n\r\n",
    "endless": "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + "10\r\n" + "x" * 16 + "\r\n" * 1,
    "sse": "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n",
    "garbage": "SSH-2.0-OpenSSH_9.6\r\n\r\n",
}
for name, raw in answers.items():
    write("upstream_answer", name, raw)

sse = {
    "openai": "\x05data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
    "anthropic": "\x03event: message_start\ndata: {\"type\":\"message_start\"}\n\n: ping\n\nevent: message_stop\ndata: {}\n\n",
    "crlf": "\x01data: a\r\n\r\ndata: b\r\r",
    "multiline": "\x07data: one\ndata: two\nid: 7\nretry: 10\n\n",
    "unfinished": "\x02data: no end",
}
for name, raw in sse.items():
    write("sse_decoder", name, raw)

payload = json.dumps({"model": "echo-v1", "messages": [{"role": "user", "content": "Hello"}]})
envelopes = {
    "request": json.dumps({"version": "1", "id": "0" * 32, "source": "app", "type": "infer.request", "timestamp_ns": 1767225600000000000, "payload": json.loads(payload), "checksum": 0}),
    "wrong_type": json.dumps({"version": "1", "id": "0" * 32, "source": "app", "type": "trace.span", "payload": {}}),
    "bad_checksum": json.dumps({"version": "1", "id": "0" * 32, "source": "app", "type": "infer.request", "payload": {}, "checksum": 12345}),
    "missing": json.dumps({"version": "1"}),
    "version2": json.dumps({"version": "2", "id": "x", "source": "s", "type": "infer.request", "payload": {}}),
}
for name, raw in envelopes.items():
    write("mist_envelope", name, raw)

configs = {
    "spec": """listen: ":8600"
grpc_listen: ":8601"
tokentrace: "http://localhost:8700"
providers:
  - name: openai
    type: openai
    api_key: "${KEY}"
    base_url: "https://api.openai.com/v1"
    timeout: 60s
    models: [gpt-4o, gpt-4o-mini]
    model_aliases: {fast: gpt-4o-mini}
  - name: anthropic
    type: anthropic
    api_key: "${KEY}"
    model_aliases: {gpt-4o: claude-sonnet-4-5}
routing:
  strategy: priority
  fallback: true
  request_timeout: 90s
tls: {cert: cert.pem, key: key.pem}
pricing:
  openai: {gpt-4o: {input_per_million: 2.5, output_per_million: 10.0}}
""",
    "errors": "providers:\n  - name: a\n    type: opnai\n  - name: a\n    timeout: soon\nrouting: {strategy: fastest, max_attempts: 0}\n",
    "unset": "providers:\n  - name: o\n    type: openai\n    api_key: ${NOPE}\n    models: [m]\n",
    "default": "tokentrace: ${NOPE:-http://localhost:8700}\n",
    "anchors": "a: &x {b: 1}\nc: *x\n",
}
for name, raw in configs.items():
    write("config_loader", name, raw)
