"""Interop check: the official OpenAI Python SDK with infermux keys
(SPEC §13), against `infermux serve` with `auth.required` and the keys the
test's config defines:
  sk-app   budget $10, models [echo-*]
  sk-mini  models [other-model]
  sk-slow  requests_per_minute: 1

Usage: python openai_sdk_keys.py http://HOST:PORT
Prints one line per check; exits non-zero on the first failure.
"""

import sys

import openai
from harness import check
from openai import OpenAI



def client(base, key):
    return OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=10)


def ask(c):
    return c.chat.completions.with_raw_response.create(
        model="echo-v1", messages=[{"role": "user", "content": "Hello"}], max_tokens=16
    )


def main(base):
    raw = ask(client(base, "sk-app"))
    resp = raw.parse()
    check(resp.choices[0].message.content == "echo: Hello", "a valid key is served")
    left = float(raw.headers.get("x-infermux-budget-remaining"))
    check(0 < left < 10, f"X-Infermux-Budget-Remaining {left}")

    try:
        ask(client(base, "sk-wrong"))
        check(False, "a wrong key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401 and e.body["code"] == "unauthorized", "a wrong key: AuthenticationError 401")

    try:
        ask(client(base, "sk-mini"))
        check(False, "a model outside the key's list is refused")
    except openai.PermissionDeniedError as e:
        check(e.status_code == 403 and e.body["code"] == "model_not_allowed", "model not allowed: PermissionDeniedError 403")

    ask(client(base, "sk-slow"))
    try:
        ask(client(base, "sk-slow"))
        check(False, "the second request of the minute is refused")
    except openai.RateLimitError as e:
        check(e.status_code == 429 and e.body["code"] == "rate_limit", "rate limit: RateLimitError 429")
        check(int(e.response.headers.get("retry-after")) >= 1, "Retry-After")

    print("interop: 0 failed")


if __name__ == "__main__":
    main(sys.argv[1])
