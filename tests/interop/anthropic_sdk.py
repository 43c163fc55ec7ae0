"""Interop check: the official Anthropic Python SDK against `infermux serve`
(`/v1/messages`, SPEC §12), routed to an Anthropic-shaped upstream (passed
through) and to an OpenAI-shaped one (translated both ways).

The upstreams are fake but real: HTTP servers in this process, on loopback,
answering in each API's own wire format and recording what they get. The
SDK first parses the fake Anthropic upstream directly (so the fake is
faithful), then talks to infermux changing nothing but the base URL, with
an infermux key as Claude Code sends it (`ANTHROPIC_AUTH_TOKEN`: a Bearer).

Usage: python anthropic_sdk.py PATH_TO_INFERMUX_BINARY
Prints one line per check; exits non-zero on the first failure.
"""

import json
import sys
import threading
from http.server import ThreadingHTTPServer

import anthropic
from harness import Recording, check
from harness import start_infermux as start

SEEN = []  # (path, lower-cased headers, JSON body), in arrival order
KEY = "imx-" + "ab" * 24



def claude_message(body):
    if body.get("tools"):
        content = [{"type": "thinking", "thinking": "I should list.", "signature": "c2ln"},
                   {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": "anthropic says hello"}]
        stop = "end_turn"
    return {"id": "msg_up", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 4, "cache_read_input_tokens": 30,
                      "cache_creation_input_tokens": 2}}


def claude_events(body):
    def event(kind, data):
        return f"event: {kind}\ndata: {json.dumps(dict(type=kind, **data))}\n\n"

    out = [event("message_start", {"message": {
        "id": "msg_up", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 30,
                  "cache_creation_input_tokens": 0}}}),
        event("ping", {})]
    if body.get("tools"):
        out += [event("content_block_start", {"index": 0, "content_block": {
                    "type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {}}}),
                event("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta",
                                                                     "partial_json": "{\"comm"}}),
                event("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta",
                                                                     "partial_json": "and\": \"pwd\"}"}}),
                event("content_block_stop", {"index": 0}),
                event("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                        "usage": {"output_tokens": 9}})]
    else:
        out.append(event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
        out += [event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w}})
                for w in ["anthropic ", "streams ", "hello"]]
        out += [event("content_block_stop", {"index": 0}),
                event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": 5}})]
    out.append(event("message_stop", {}))
    return out


def openai_completion(body):
    message = {"role": "assistant", "content": "openai says hello"}
    finish = "stop"
    if body.get("tools"):
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\": \"ls\"}"}}]}
        finish = "tool_calls"
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46,
                      "prompt_tokens_details": {"cached_tokens": 8}}}


def openai_events(body):
    def chunk(delta, finish=None):
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""})]
    if body.get("tools"):
        events += [chunk({"tool_calls": [{"index": 0, "id": "call_2", "type": "function",
                                          "function": {"name": "Bash", "arguments": ""}}]}),
                   chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"command\": "}}]}),
                   chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"pwd\"}"}}]}),
                   chunk({}, "tool_calls")]
    else:
        events += [chunk({"content": w}) for w in ["openai ", "streams ", "hello"]]
        events.append(chunk({}, "stop"))
    events.append({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [],
                   "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}})
    return [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]


class Upstream(Recording):
    seen = SEEN
    answer_headers = {"request-id": "req_up_1"}

    def answer(self, path, body):
        if path == "/v1/messages/count_tokens":
            return self.json({"input_tokens": 321})
        if path == "/v1/messages":
            if body.get("stream"):
                return self.sse(claude_events(body))
            return self.json(claude_message(body))
        if body.get("stream"):
            return self.sse(openai_events(body))
        return self.json(openai_completion(body))


def start_infermux(binary, upstream):
    config = f"""
auth:
  required: true
  keys:
    - name: claude-code
      key: "{KEY}"
      models: ["claude-*", "gpt-4o", "echo-v1"]
providers:
  - name: echo
    type: echo
  - name: claude
    type: anthropic
    api_key: ak-test
    base_url: "{upstream}"
    models: [claude-sonnet-4-5]
    health_check: {{disabled: true}}
  - name: oai
    type: openai
    api_key: sk-test
    base_url: "{upstream}/openai/v1"
    models: [gpt-4o, gpt-4o-mini]
    health_check: {{disabled: true}}
"""
    return start(binary, config)


TOOLS = [{"name": "Bash", "description": "Runs a shell command",
          "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                           "required": ["command"]}}]
SYSTEM = [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
          {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}]


def fake_is_faithful(upstream):
    """The SDK itself parses the fake upstream's answers and events."""
    direct = anthropic.Anthropic(base_url=upstream, api_key="ak-test", max_retries=0, timeout=10)
    msg = direct.messages.create(model="claude-sonnet-4-5", max_tokens=16,
                                 messages=[{"role": "user", "content": "Hi"}])
    check(msg.content[0].text == "anthropic says hello" and msg.usage.cache_read_input_tokens == 30,
          "the SDK parses the fake's message")
    with direct.messages.stream(model="claude-sonnet-4-5", max_tokens=16, tools=TOOLS,
                                messages=[{"role": "user", "content": "Hi"}]) as s:
        final = s.get_final_message()
    check(final.content[0].type == "tool_use" and final.content[0].input == {"command": "pwd"},
          "the SDK parses the fake's stream")


def readme_example(client):
    """The README's example, on the echo provider."""
    msg = client.messages.create(model="echo-v1", max_tokens=64,
                                 messages=[{"role": "user", "content": "Hello"}])
    check(msg.content[0].text == "echo: Hello", f"README: echo message {msg.content}")
    with client.messages.stream(model="echo-v1", max_tokens=64,
                                messages=[{"role": "user", "content": "Hello"}]) as s:
        text = "".join(s.text_stream)
    check(text == "echo: Hello", f"README: echo stream {text!r}")


def run_checks(client, bad_key):
    hello = [{"role": "user", "content": "Hello"}]
    readme_example(client)

    # Passed through to the anthropic provider.
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=32, messages=hello)
    msg = raw.parse()
    check(msg.content[0].text == "anthropic says hello" and msg.model == "claude-sonnet-4-5",
          f"anthropic: message {msg.content} {msg.model}")
    check(msg.id == "msg_up" and msg.stop_reason == "end_turn", "anthropic: id and stop_reason as sent")
    check(msg.usage.input_tokens == 12 and msg.usage.cache_read_input_tokens == 30
          and msg.usage.cache_creation_input_tokens == 2, f"anthropic: usage by kind {msg.usage}")
    check(raw.headers.get("x-infermux-provider") == "claude", "anthropic: X-Infermux-Provider")
    check(raw.headers.get("x-infermux-upstream-request-id") == "req_up_1", "anthropic: upstream request id")
    path, headers, body = SEEN[-1]
    # The caller's anthropic-version goes on as the SDK sent it (SEEN[0]:
    # the SDK talking to the fake directly).
    check(path == "/v1/messages" and headers.get("x-api-key") == "ak-test"
          and headers.get("anthropic-version") == SEEN[0][1]["anthropic-version"],
          f"anthropic: the provider's key and version {path} {headers}")
    check(body == {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": hello},
          f"anthropic: the body as sent {body}")

    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=32, messages=hello) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    check(text == "anthropic streams hello", f"anthropic: streamed text {text!r}")
    check(final.usage.output_tokens == 5 and final.usage.input_tokens == 12, f"anthropic: stream usage {final.usage}")

    # A Claude-Code-shaped request: system blocks with cache_control, tools,
    # anthropic-beta, stream, metadata.user_id; streamed tool use reassembled.
    for model, shape in [("claude-sonnet-4-5", "anthropic"), ("gpt-4o", "openai")]:
        with client.messages.stream(
                model=model, max_tokens=1024, system=SYSTEM, tools=TOOLS,
                metadata={"user_id": "user_abc_account_1_session_2"},
                messages=[{"role": "user", "content": "Where am I?"}],
                extra_headers={"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}) as s:
            final = s.get_final_message()
        call = final.content[-1]
        check(call.type == "tool_use" and call.name == "Bash" and call.input == {"command": "pwd"},
              f"{shape}: streamed tool use reassembled {final.content}")
        check(final.stop_reason == "tool_use", f"{shape}: stop_reason tool_use")
        path, headers, body = SEEN[-1]
        if shape == "anthropic":
            check(headers.get("anthropic-beta") == "claude-code-20250219,interleaved-thinking-2025-05-14",
                  "anthropic: anthropic-beta forwarded")
            check(body["system"] == SYSTEM and body["metadata"]["user_id"] == "user_abc_account_1_session_2"
                  and body["tools"] == TOOLS, "anthropic: system blocks, metadata and tools as sent")
        else:
            check(path == "/openai/v1/chat/completions", f"openai: upstream path {path}")
            check(body["messages"][0] == {"role": "system", "content": "You are Claude Code, Anthropic's official "
                                          "CLI for Claude.\nBe terse."}, f"openai: system {body['messages'][0]}")
            check(body["tools"][0]["function"]["parameters"] == TOOLS[0]["input_schema"], "openai: tools as functions")
            check(body["user"] == "user_abc_account_1_session_2", "openai: metadata.user_id as user")
            check(body["stream_options"] == {"include_usage": True}, "openai: usage asked for")

    # Translated unary, a tool round trip to the OpenAI provider.
    msg = client.messages.create(
        model="gpt-4o", max_tokens=64, tools=TOOLS,
        messages=[{"role": "user", "content": "List files"},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_9", "name": "Bash",
                                                     "input": {"command": "ls"}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9",
                                                "content": "a.txt"}]}])
    check(msg.content[0].type == "tool_use" and msg.content[0].input == {"command": "ls"}
          and msg.stop_reason == "tool_use", f"openai: tool_use answer {msg.content}")
    check(msg.usage.input_tokens == 32 and msg.usage.cache_read_input_tokens == 8,
          f"openai: cached tokens as cache reads {msg.usage}")
    body = SEEN[-1][2]
    check(body["messages"][2] == {"role": "tool", "content": "a.txt", "tool_call_id": "toolu_9"},
          f"openai: tool_result as a tool message {body['messages'][2]}")
    with client.messages.stream(model="gpt-4o", max_tokens=32, messages=hello) as s:
        text = "".join(s.text_stream)
    check(text == "openai streams hello", f"openai: streamed text {text!r}")

    count = client.messages.count_tokens(model="claude-sonnet-4-5", system=SYSTEM, messages=hello)
    check(count.input_tokens == 321 and SEEN[-1][0] == "/v1/messages/count_tokens",
          "count_tokens: the anthropic provider's count")
    count = client.messages.count_tokens(model="gpt-4o", messages=hello)
    check(0 < count.input_tokens < 50, f"count_tokens: the tokenizer for openai ({count.input_tokens})")

    # Errors arrive as the SDK's own exception classes.
    def raises(exc, what, **kwargs):
        try:
            (kwargs.pop("via", client)).messages.create(**kwargs)
        except exc as e:
            check(e.body["type"] == "error" and isinstance(e.body["error"]["message"], str),
                  f"{what}: {exc.__name__} {e.status_code}")
            return
        except Exception as e:  # noqa: BLE001
            check(False, f"{what}: {type(e).__name__} {e}")
        check(False, f"{what}: no error")

    raises(anthropic.BadRequestError, "tool_result without tool_use", model="claude-sonnet-4-5", max_tokens=8,
           messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "y"}]}])
    raises(anthropic.NotFoundError, "unknown model", model="claude-nope", max_tokens=8, messages=hello)
    raises(anthropic.PermissionDeniedError, "model outside the key's allowlist", model="gpt-4o-mini",
           max_tokens=8, messages=hello)
    raises(anthropic.AuthenticationError, "wrong key", via=bad_key, model="claude-sonnet-4-5", max_tokens=8,
           messages=hello)


def main(binary):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = f"http://127.0.0.1:{server.server_address[1]}"
    fake_is_faithful(upstream)
    proc, base = start_infermux(binary, upstream)
    try:
        # As Claude Code sends it with ANTHROPIC_AUTH_TOKEN: a Bearer.
        client = anthropic.Anthropic(base_url=base, auth_token=KEY, max_retries=0, timeout=10)
        bad = anthropic.Anthropic(base_url=base, api_key="imx-" + "00" * 24, max_retries=0, timeout=10)
        run_checks(client, bad)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print("interop: 0 failed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
