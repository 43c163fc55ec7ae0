"""Interop check: the official OpenAI Python SDK against a running
`infermux serve`, changing nothing but the base URL.

Usage: python openai_sdk_client.py http://HOST:PORT
Prints one line per check; exits non-zero on the first failure.
"""

import sys

import openai
from harness import check
from openai import OpenAI



def main(base):
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=10)

    resp = client.chat.completions.create(
        model="echo-v1",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}],
        temperature=0.2,
        max_tokens=64,
    )
    check(resp.choices[0].message.content == "echo: Hello world", f"completion {resp.choices[0].message.content!r}")
    check(resp.choices[0].finish_reason == "stop", "finish_reason stop")
    check(resp.model == "echo-v1" and resp.object == "chat.completion", "model and object")
    check(resp.usage.prompt_tokens == 4 and resp.usage.completion_tokens == 4, f"usage {resp.usage}")

    raw = client.chat.completions.with_raw_response.create(
        model="echo-v1", messages=[{"role": "user", "content": "Hi"}]
    )
    check(raw.headers.get("x-infermux-provider") == "echo", "X-Infermux-Provider header")
    check(raw.headers.get("x-infermux-model") == "echo-v1", "X-Infermux-Model header")

    stream = client.chat.completions.create(
        model="echo-v1",
        messages=[{"role": "user", "content": "Hello big world"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == "echo: Hello big world", f"stream text {text!r} over {len(chunks)} chunks")
    usage = [c.usage for c in chunks if c.usage is not None]
    check(len(usage) == 1 and not chunks[-1].choices, "exactly one final usage chunk")
    check(usage[0].completion_tokens == 5, f"stream usage {usage[0]}")

    plain = list(client.chat.completions.create(
        model="echo-v1", messages=[{"role": "user", "content": "x"}], stream=True))
    check(all(c.usage is None for c in plain), "no usage chunk unless asked")

    tools = [{"type": "function", "function": {"name": "get_weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    resp = client.chat.completions.create(
        model="echo-v1",
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        ],
    )
    check(resp.choices[0].message.content == "echo: 18C, sunny", "a tool-calling conversation is accepted")

    models = [m.id for m in client.models.list()]
    check(models == ["echo-v1"], f"models {models}")
    one = client.models.retrieve("echo-v1")
    check(one.id == "echo-v1" and one.owned_by == "echo", f"models.retrieve {one}")
    try:
        client.models.retrieve("no-such-model")
        check(False, "retrieving an unknown model fails")
    except openai.NotFoundError as e:
        check(e.status_code == 404, "models.retrieve of an unknown model -> 404")

    emb = client.embeddings.create(model="echo-v1", input=["hello", "world"])
    check(len(emb.data) == 2 and len(emb.data[0].embedding) == 8, "embeddings (SDK default base64 decoding)")
    check(abs(sum(x * x for x in emb.data[0].embedding) - 1.0) < 1e-5, "echo embeddings are unit vectors")
    floats = client.embeddings.create(model="echo-v1", input="hello", encoding_format="float")
    check(floats.data[0].embedding == emb.data[0].embedding, "float and base64 encodings agree")

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        check(False, "unknown model fails")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and "no-such-model" in str(e), f"unknown model -> 404 {e.body}")
    try:
        client.chat.completions.create(model="echo-v1", messages=[])
        check(False, "empty messages fail")
    except openai.BadRequestError as e:
        check(e.body["code"] == "invalid_request", f"empty messages -> 400 {e.body}")

    print("interop: 0 failed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8600")
