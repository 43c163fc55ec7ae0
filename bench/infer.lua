-- wrk script: POST /infer with a small echo request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"echo-v1","messages":[{"role":"user","content":"Hello world"}]}'
