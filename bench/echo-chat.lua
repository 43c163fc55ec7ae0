-- wrk script: POST a small chat completion for the echo provider (the
-- OpenAI-compatible edge alone, no upstream).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"echo-v1","messages":[{"role":"user","content":"Hello world"}]}'
