"""Interop check: the official OpenAI Python SDK against `infermux serve`
routing to OpenAI-, Anthropic-, Azure- and Ollama-shaped upstreams.

The upstreams are fake but real: HTTP servers in this process, on loopback,
answering in each provider's own wire format and recording what they get.
This script writes the config, starts the infermux binary on it, and talks to
it only through the SDK, changing nothing but the base URL.

Usage: python openai_sdk_providers.py PATH_TO_INFERMUX_BINARY
Prints one line per check; exits non-zero on the first failure.
"""

import json
import sys
import threading
from http.server import ThreadingHTTPServer

from harness import Recording, check
from harness import start_infermux as start
from openai import OpenAI

SEEN = []  # (path with query, lower-cased headers, JSON body), in arrival order



def openai_completion(text):
    return {
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "upstream-name",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def openai_events(text):
    def chunk(delta, finish):
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "upstream-name",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    words = text.split(" ")
    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": w + (" " if i < len(words) - 1 else "")}, None) for i, w in enumerate(words)]
    events.append(chunk({}, "stop"))
    events.append({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "upstream-name",
                   "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
    return [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]


def anthropic_message(text):
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 12, "output_tokens": 4}}


def anthropic_events(text):
    def event(kind, data):
        return f"event: {kind}\ndata: {json.dumps(dict(type=kind, **data))}\n\n"

    words = text.split(" ")
    out = [event("message_start", {"message": {"id": "m", "usage": {"input_tokens": 12, "output_tokens": 1}}}),
           event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
           event("ping", {})]
    out += [event("content_block_delta", {"index": 0, "delta": {"type": "text_delta",
                                                                 "text": w + (" " if i < len(words) - 1 else "")}})
            for i, w in enumerate(words)]
    out += [event("content_block_stop", {"index": 0}),
            event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
            event("message_stop", {})]
    return out


class Upstream(Recording):
    seen = SEEN

    def answer(self, path, body):
        if path.endswith("/embeddings"):
            data = [{"object": "embedding", "index": i, "embedding": [0.5, 0.25, 0.125]}
                    for i in range(len(body["input"]))]
            return self.json({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": 3, "total_tokens": 3}})
        if path == "/v1/messages":
            text = "anthropic says hello"
            if body.get("stream"):
                return self.sse(anthropic_events(text))
            return self.json(anthropic_message(text))
        shape = path.split("/")[1]  # openai, azure or ollama
        text = f"{shape} says hello"
        if body.get("stream"):
            return self.sse(openai_events(text))
        return self.json(openai_completion(text))


def start_infermux(binary, upstream):
    config = f"""
providers:
  - name: oai
    type: openai
    api_key: sk-test
    base_url: "{upstream}/openai/v1"
    models: [gpt-4o, text-embedding-3-small]
    health_check: {{disabled: true}}
  - name: claude
    type: anthropic
    api_key: ak-test
    base_url: "{upstream}"
    models: [claude-sonnet-4-5]
    health_check: {{disabled: true}}
  - name: azure
    type: azure_openai
    api_key: az-test
    base_url: "{upstream}/azure"
    models: [my-deployment]
    health_check: {{disabled: true}}
  - name: local
    type: ollama
    base_url: "{upstream}/ollama/v1"
    models: [llama3.2]
    health_check: {{disabled: true}}
"""
    return start(binary, config)


def main(binary):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = f"http://127.0.0.1:{server.server_address[1]}"
    proc, base = start_infermux(binary, upstream)
    try:
        run_checks(OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=10))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print("interop: 0 failed")


def run_checks(client):
    hello = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    for model, shape, provider, path in [
            ("gpt-4o", "openai", "oai", "/openai/v1/chat/completions"),
            ("claude-sonnet-4-5", "anthropic", "claude", "/v1/messages"),
            ("my-deployment", "azure", "azure", "/azure/openai/deployments/my-deployment/chat/completions"),
            ("llama3.2", "ollama", "local", "/ollama/v1/chat/completions")]:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=hello, max_tokens=32)
        resp = raw.parse()
        want = f"{shape} says hello"
        check(resp.choices[0].message.content == want, f"{shape}: completion {resp.choices[0].message.content!r}")
        check(resp.model == model and resp.choices[0].finish_reason == "stop", f"{shape}: model and finish_reason")
        check(resp.usage.total_tokens > 0, f"{shape}: usage {resp.usage}")
        check(raw.headers.get("x-infermux-provider") == provider,
              f"{shape}: X-Infermux-Provider {raw.headers.get('x-infermux-provider')}")
        seen_path, headers, body = SEEN[-1]
        check(seen_path.split("?")[0] == path, f"{shape}: upstream path {seen_path}")
        if shape == "anthropic":
            check(body["system"] == "Be brief." and headers.get("x-api-key") == "ak-test",
                  "anthropic: system lifted, x-api-key sent")
        elif shape == "azure":
            check("api-version=" in seen_path and headers.get("api-key") == "az-test",
                  "azure: api-version and api-key")
        elif shape == "openai":
            check(headers.get("authorization") == "Bearer sk-test", "openai: bearer key")

        stream = client.chat.completions.create(model=model, messages=hello, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        check(text == want, f"{shape}: stream text {text!r} over {len(chunks)} chunks")
        usage = [c.usage for c in chunks if c.usage is not None]
        check(len(usage) == 1 and usage[0].total_tokens > 0, f"{shape}: one usage chunk {usage}")
        check(SEEN[-1][2].get("stream") is True, f"{shape}: the upstream was asked to stream")

    models = sorted(m.id for m in client.models.list())
    check(models == sorted(["gpt-4o", "text-embedding-3-small", "claude-sonnet-4-5", "my-deployment", "llama3.2"]),
          f"models {models}")

    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    check([d.embedding for d in emb.data] == [[0.5, 0.25, 0.125]] * 2, "embeddings through the openai provider")
    check(SEEN[-1][0] == "/openai/v1/embeddings", f"embeddings upstream path {SEEN[-1][0]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
