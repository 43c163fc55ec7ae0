//! Callers over real TCP (SPEC §13): keys on every inference route, model
//! allowlists, per-key limits, budgets by reservation under concurrency,
//! streams cut at the budget, the SQLite ledger and its reports, restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod upstream;

use std::path::PathBuf;

use serde_json::{Value, json};
use upstream::{Gateway, Reply, Upstream, data, error_message};

fn temp_ledger(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "infermux-callers-{}-{}-{name}",
        std::process::id(),
        infermux::callers::now_ms()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("infermux.db")
}

/// An OpenAI chat answer with this usage.
fn completion(prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}
    })
}

/// One OpenAI provider at `url`, priced at $1,000 per million tokens each
/// way ($0.001 a token), with `auth` and `teams` appended.
fn config(url: &str, rest: &str) -> String {
    format!(
        "providers:\n  - name: openai\n    type: openai\n    api_key: sk-upstream\n    base_url: {url}\n    models: [gpt-4o, gpt-4o-mini]\n\
         pricing:\n  openai:\n    gpt-4o: {{input_per_million: 1000, output_per_million: 1000}}\n    gpt-4o-mini: {{input_per_million: 1000, output_per_million: 1000}}\n{rest}"
    )
}

impl Gateway {
    async fn chat_as(
        &self,
        key: Option<&str>,
        body: Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap())
    }

    async fn manage(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }
}

fn ask(model: &str, max_tokens: u64) -> Value {
    json!({"model": model, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "hello"}]})
}

const KEYS: &str = "teams:\n  - name: web\nauth:\n  required: true\n  keys:\n    - name: app\n      key: sk-app-secret\n      team: web\n      models: [\"gpt-4o*\"]\n    - name: mini\n      key: sk-mini-secret\n      models: [gpt-4o-mini]\n      rate_limits: {requests_per_minute: 2}\n";

#[tokio::test]
async fn every_inference_route_needs_a_valid_key_and_keys_stay_here() {
    let up = Upstream::start().await;
    up.always(Reply::Json(200, completion(10, 5)));
    let gw = Gateway::with_ledger(&config(&up.url, KEYS), &temp_ledger("keys")).await;

    for key in [None, Some("sk-wrong")] {
        let (status, _, body) = gw.chat_as(key, ask("gpt-4o", 5)).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let resp = gw
        .client
        .post(format!("{}/infer", gw.base))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "MIST routes too");
    let resp = gw
        .client
        .post(format!("{}/v1/embeddings", gw.base))
        .json(&json!({"model": "gpt-4o", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "embeddings too");
    assert!(up.seen().is_empty(), "nothing refused reached the upstream");
    assert_eq!(
        gw.client
            .get(format!("{}/_infermux/health", gw.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let (status, _, body) = gw.chat_as(Some("sk-app-secret"), ask("gpt-4o", 5)).await;
    assert_eq!(status, 200, "{body}");
    // The Anthropic SDK's header works as well.
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("x-api-key", "sk-app-secret")
        .json(&ask("gpt-4o-mini", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The caller's key never goes upstream: the provider's own does.
    for seen in up.seen() {
        assert_eq!(seen.header("authorization"), Some("Bearer sk-upstream"));
        assert_eq!(seen.header("x-api-key"), None);
    }

    let (status, _, body) = gw.chat_as(Some("sk-mini-secret"), ask("gpt-4o", 5)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert!(error_message(&body).contains("\"mini\""), "{body}");

    // Two requests a minute for "mini" (the refused one did not count):
    // the third is 429 with Retry-After.
    let calls = up.seen().len();
    assert_eq!(
        gw.chat_as(Some("sk-mini-secret"), ask("gpt-4o-mini", 5))
            .await
            .0,
        200
    );
    assert_eq!(
        gw.chat_as(Some("sk-mini-secret"), ask("gpt-4o-mini", 5))
            .await
            .0,
        200
    );
    let (status, headers, body) = gw
        .chat_as(Some("sk-mini-secret"), ask("gpt-4o-mini", 5))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(up.seen().len(), calls + 2);
}

#[tokio::test]
async fn keys_made_through_the_api_work_at_once_and_revocation_is_immediate() {
    let up = Upstream::start().await;
    up.always(Reply::Json(200, completion(10, 5)));
    let path = temp_ledger("api-keys");
    let gw = Gateway::with_ledger(&config(&up.url, KEYS), &path).await;
    let (status, made) = gw
        .manage(
            reqwest::Method::POST,
            "/_infermux/keys",
            Some(
                json!({"name": "ci", "team": "web", "models": ["gpt-4o-mini"],
                        "budget": {"usd": 5, "period": "monthly"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let secret = made["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("imx-"), "{secret}");

    let (status, headers, _) = gw.chat_as(Some(&secret), ask("gpt-4o-mini", 10)).await;
    assert_eq!(status, 200);
    // $0.001 a token: 10 prompt + 5 completion tokens spent of $5.
    let left: f64 = headers["x-infermux-budget-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((left - (5.0 - 0.015)).abs() < 1e-9, "{left}");

    let (status, list) = gw
        .manage(reqwest::Method::GET, "/_infermux/keys", None)
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "mini", "ci"]);
    assert!(
        !list.to_string().contains(&secret),
        "no secret in a listing"
    );
    assert!(!list.to_string().contains("sk-app-secret"));

    let (status, shown) = gw
        .manage(reqwest::Method::GET, "/_infermux/keys/ci", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        (shown["spend_usd"].as_f64().unwrap() - 0.015).abs() < 1e-9,
        "{shown}"
    );
    assert!((shown["budget_remaining_usd"].as_f64().unwrap() - 4.985).abs() < 1e-9);

    let (status, _) = gw
        .manage(reqwest::Method::DELETE, "/_infermux/keys/ci", None)
        .await;
    assert_eq!(status, 200);
    let (status, _, body) = gw.chat_as(Some(&secret), ask("gpt-4o-mini", 10)).await;
    assert_eq!(status, 401);
    assert!(error_message(&body).contains("revoked"), "{body}");
    // A key of the config file can be revoked too.
    gw.manage(reqwest::Method::DELETE, "/_infermux/keys/app", None)
        .await;
    assert_eq!(
        gw.chat_as(Some("sk-app-secret"), ask("gpt-4o", 1)).await.0,
        401
    );

    for (body, field) in [
        (json!({"name": "ci"}), "name"),
        (json!({"name": "x", "team": "nope"}), "team"),
        (
            json!({"name": "y", "budget": {"usd": 1, "period": "hourly"}}),
            "budget.period",
        ),
        (json!({"name": "z", "expires_at": "tomorrow"}), "expires_at"),
    ] {
        let (status, err) = gw
            .manage(reqwest::Method::POST, "/_infermux/keys", Some(body))
            .await;
        assert_eq!(status, 400, "{err}");
        assert!(error_message(&err).contains(field), "{err}");
    }
    let (status, _) = gw
        .manage(reqwest::Method::GET, "/_infermux/keys/nobody", None)
        .await;
    assert_eq!(status, 404);
    let (status, body) = gw
        .manage(reqwest::Method::GET, "/_infermux/status", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["ledger_rows_lost"], 0, "{body}");
    assert_eq!(body["auth_required"], true);
    assert_eq!(body["keys"], 3);

    // After a restart: the API's key is still revoked, the config's too.
    gw.ledger.as_ref().unwrap().close().unwrap();
    drop(gw);
    let again = Gateway::with_ledger(&config(&up.url, KEYS), &path).await;
    assert_eq!(
        again.chat_as(Some(&secret), ask("gpt-4o-mini", 1)).await.0,
        401
    );
    assert_eq!(
        again
            .chat_as(Some("sk-app-secret"), ask("gpt-4o", 1))
            .await
            .0,
        401
    );
    assert_eq!(
        again
            .chat_as(Some("sk-mini-secret"), ask("gpt-4o-mini", 1))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn a_budget_holds_under_64_concurrent_calls_and_survives_a_restart() {
    let up = Upstream::start().await;
    // Each call: 10 + 90 tokens = $0.10; it reserves up to 100 output
    // tokens plus the prompt estimate.
    up.always(Reply::Json(200, completion(10, 90)));
    let budget = 2.1;
    let yaml = config(
        &up.url,
        &format!(
            "auth:\n  keys:\n    - name: app\n      key: sk-app\n      budget: {{usd: {budget}, period: daily}}\n"
        ),
    );
    let path = temp_ledger("budget");
    let gw = Gateway::with_ledger(&yaml, &path).await;
    let calls = (0..64).map(|_| gw.chat_as(Some("sk-app"), ask("gpt-4o", 100)));
    let answers = futures_util::future::join_all(calls).await;
    let mut shown = 0.0;
    let mut ok = 0;
    for (status, headers, body) in &answers {
        match status {
            200 => {
                ok += 1;
                shown += headers["x-infermux-cost"]
                    .to_str()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap();
            }
            429 => assert_eq!(body["error"]["code"], "budget_exceeded", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    // 64 × $0.10 is three times the budget: most were refused, before the
    // upstream saw them.
    assert_eq!(up.seen().len(), ok, "no refused call reached the upstream");
    assert!((15..=21).contains(&ok), "{ok} calls were let through");
    let estimate_error = 0.1;
    assert!(
        shown <= budget + estimate_error,
        "settled ${shown} of ${budget}"
    );

    // The ledger's report adds up to what callers were shown.
    let (status, report) = gw
        .manage(reqwest::Method::GET, "/_infermux/spend?group_by=key", None)
        .await;
    assert_eq!(status, 200, "{report}");
    let rows = report["rows"].as_array().unwrap();
    let app = rows.iter().find(|r| r["group"] == "app").unwrap();
    assert_eq!(app["requests"], 64, "refused calls are rows too, at $0");
    assert!(
        (app["cost_usd"].as_f64().unwrap() - shown).abs() < 1e-9,
        "{report}"
    );
    assert_eq!(app["tokens_in"], 10 * ok as u64);

    // One at a time, calls go on until the budget cannot take the next one.
    loop {
        let (status, headers, body) = gw.chat_as(Some("sk-app"), ask("gpt-4o", 100)).await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        ok += 1;
        shown += headers["x-infermux-cost"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
    }
    assert!(
        shown <= budget + estimate_error,
        "settled ${shown} of ${budget}"
    );
    assert!(shown > budget - 0.2, "the budget was used: ${shown}");
    assert_eq!(up.seen().len(), ok);

    // A restart reloads the spend: the budget is not reset. (The first
    // ledger is closed as SIGTERM closes it.)
    gw.ledger.as_ref().unwrap().close().unwrap();
    drop(gw);
    let again = Gateway::with_ledger(&yaml, &path).await;
    let (status, key) = again
        .manage(reqwest::Method::GET, "/_infermux/keys/app", None)
        .await;
    assert_eq!(status, 200, "{key}");
    assert!(
        (key["spend_usd"].as_f64().unwrap() - shown).abs() < 1e-9,
        "{key}"
    );
    assert!((key["budget_remaining_usd"].as_f64().unwrap() - (budget - shown)).abs() < 1e-9);
    let (status, _, body) = again.chat_as(Some("sk-app"), ask("gpt-4o", 100)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert_eq!(up.seen().len(), ok);
}

#[tokio::test]
async fn a_stream_that_outruns_its_budget_is_cut_and_its_upstream_closed() {
    let up = Upstream::start().await;
    // A long answer without a max_tokens: 200 events of 100 characters.
    let chunk = |i: usize| {
        data(
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                     "choices": [{"index": 0, "delta": {"content": format!("{i:0100}")},
                                  "finish_reason": null}]}),
        )
    };
    up.reply(Reply::SseHang((0..200).map(chunk).collect()));
    // $0.001 a token; the default reservation of 50 tokens grows while the
    // $0.5 budget allows (some 500 tokens: 2,000 characters).
    let yaml = config(
        &up.url,
        "auth:\n  default_reserve_tokens: 50\n  keys:\n    - name: app\n      key: sk-app\n      budget: {usd: 0.5, period: total}\n",
    );
    let gw = Gateway::with_ledger(&yaml, &temp_ledger("stream")).await;
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth("sk-app")
        .json(&json!({"model": "gpt-4o", "stream": true,
                      "messages": [{"role": "user", "content": "write a lot"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-infermux-budget-remaining"));
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let last = events.last().unwrap();
    assert!(last.contains("budget_exceeded"), "{last}");
    assert!(
        !text.contains("[DONE]"),
        "a cut stream does not end cleanly"
    );
    let content_events = events.len() - 1;
    assert!(
        (10..60).contains(&content_events),
        "{content_events} events before the cut"
    );
    for _ in 0..100 {
        if up.abandoned() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(up.abandoned(), 1, "the upstream stream was closed");
    // The upstream never sent usage: the ledger still charges what was
    // streamed (estimated), close to the budget and never over it by more
    // than one growth step.
    let (_, report) = gw
        .manage(reqwest::Method::GET, "/_infermux/spend?group_by=key", None)
        .await;
    let cost = report["rows"][0]["cost_usd"].as_f64().unwrap();
    assert!(
        cost > 0.3 && cost <= 0.5 + 0.125,
        "charged ${cost}: {report}"
    );
    assert!(
        report["rows"][0]["tokens_out"].as_u64().unwrap() > 300,
        "{report}"
    );
}

#[tokio::test]
async fn calls_are_attributed_and_reported_by_every_grouping() {
    let up = Upstream::start().await;
    up.always(Reply::Json(200, completion(3, 2)));
    let yaml = config(
        &up.url,
        "teams:\n  - name: web\nauth:\n  keys:\n    - name: app\n      key: sk-app\n      team: web\n",
    );
    let gw = Gateway::with_ledger(&yaml, &temp_ledger("report")).await;
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth("sk-app")
        .header("x-infermux-caller", "billing-job")
        .json(&ask("gpt-4o", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Without auth.required, no key (or an upstream's key) is anonymous.
    let mut with_user = ask("gpt-4o-mini", 5);
    with_user["user"] = json!("end-user-7");
    assert_eq!(gw.chat_as(None, with_user).await.0, 200);
    assert_eq!(
        gw.chat_as(Some("sk-openai-real"), ask("gpt-4o-mini", 5))
            .await
            .0,
        200
    );
    let resp = gw
        .client
        .post(format!("{}/infer", gw.base))
        .bearer_auth("sk-app")
        .json(
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
                      "meta": {"caller": "mist-agent"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let report = |group: &'static str| {
        let gw = &gw;
        async move {
            let (status, body) = gw
                .manage(
                    reqwest::Method::GET,
                    &format!("/_infermux/spend?group_by={group}"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["group"].as_str().unwrap().to_owned(),
                        r["requests"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let pairs = |v: &[(&str, u64)]| {
        v.iter()
            .map(|(g, n)| ((*g).to_owned(), *n))
            .collect::<Vec<_>>()
    };
    assert_eq!(report("key").await, pairs(&[("", 2), ("app", 2)]));
    assert_eq!(report("team").await, pairs(&[("", 2), ("web", 2)]));
    assert_eq!(
        report("model").await,
        pairs(&[("gpt-4o", 2), ("gpt-4o-mini", 2)])
    );
    assert_eq!(report("provider").await, pairs(&[("openai", 4)]));
    assert_eq!(
        report("caller").await,
        pairs(&[
            ("", 1),
            ("billing-job", 1),
            ("end-user-7", 1),
            ("mist-agent", 1)
        ])
    );
    let day = report("day").await;
    assert_eq!(day.len(), 1);
    assert_eq!(day[0].1, 4);

    // A window that ends before the calls holds none.
    let (_, body) = gw
        .manage(
            reqwest::Method::GET,
            "/_infermux/spend?group_by=key&to=2000-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(body["rows"], json!([]));
    for bad in ["group_by=color", "from=yesterday"] {
        let (status, body) = gw
            .manage(
                reqwest::Method::GET,
                &format!("/_infermux/spend?{bad}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            error_message(&body).contains(bad.split('=').next().unwrap()),
            "{body}"
        );
    }
}

#[tokio::test]
async fn embeddings_count_against_a_keys_tokens_and_budget() {
    let up = Upstream::start().await;
    up.always(Reply::Json(
        200,
        json!({"object": "list", "model": "gpt-4o",
               "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
               "usage": {"prompt_tokens": 8, "total_tokens": 8}}),
    ));
    let yaml = config(
        &up.url,
        "auth:\n  keys:\n    - name: app\n      key: sk-app\n      budget: {usd: 1, period: total}\n      rate_limits: {tokens_per_minute: 10}\n",
    );
    let gw = Gateway::with_ledger(&yaml, &temp_ledger("embed")).await;
    let embed = || {
        gw.client
            .post(format!("{}/v1/embeddings", gw.base))
            .bearer_auth("sk-app")
            .json(&json!({"model": "gpt-4o", "input": "some text"}))
            .send()
    };
    let first = embed().await.unwrap();
    assert_eq!(first.status(), 200);
    // 8 tokens at $0.001.
    let left: f64 = first.headers()["x-infermux-budget-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((left - 0.992).abs() < 1e-9, "{left}");
    // 8 of 10 tokens this minute: one more call is let in, then none.
    assert_eq!(embed().await.unwrap().status(), 200);
    let third = embed().await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_team_budget_is_shared_by_its_keys_and_expired_keys_are_refused() {
    let up = Upstream::start().await;
    up.always(Reply::Json(200, completion(10, 90)));
    // Each call costs $0.10 and reserves about $0.12; the team has $0.25.
    let yaml = config(
        &up.url,
        "teams:\n  - name: web\n    budget: {usd: 0.25, period: monthly}\nauth:\n  keys:\n    - name: a\n      key: sk-a\n      team: web\n    - name: b\n      key: sk-b\n      team: web\n    - name: old\n      key: sk-old\n      expires_at: 2020-01-01T00:00:00Z\n",
    );
    let gw = Gateway::with_ledger(&yaml, &temp_ledger("team")).await;
    assert_eq!(gw.chat_as(Some("sk-a"), ask("gpt-4o", 100)).await.0, 200);
    assert_eq!(gw.chat_as(Some("sk-b"), ask("gpt-4o", 100)).await.0, 200);
    // $0.20 spent by the two keys together: neither may reserve another call.
    for key in ["sk-a", "sk-b"] {
        let (status, _, body) = gw.chat_as(Some(key), ask("gpt-4o", 100)).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "budget_exceeded");
        assert!(error_message(&body).contains("team \"web\""), "{body}");
    }
    assert_eq!(up.seen().len(), 2);
    let (status, _, body) = gw.chat_as(Some("sk-old"), ask("gpt-4o", 1)).await;
    assert_eq!(status, 401, "{body}");
    assert!(error_message(&body).contains("expired"), "{body}");
    assert!(
        !body.to_string().contains("sk-old"),
        "no secret in an error body"
    );
}

#[tokio::test]
async fn a_huge_or_odd_authorization_header_is_refused_and_the_next_call_served() {
    let up = Upstream::start().await;
    up.always(Reply::Json(200, completion(1, 1)));
    let gw = Gateway::with_ledger(&config(&up.url, KEYS), &temp_ledger("odd")).await;
    let huge = "x".repeat(1 << 20);
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(&huge)
        .json(&ask("gpt-4o", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    for odd in ["Basic sk-app-secret", "Bearer", "Bearer  ", "sk-app-secret"] {
        let resp = gw
            .client
            .post(format!("{}/v1/chat/completions", gw.base))
            .header("authorization", odd)
            .json(&ask("gpt-4o", 5))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{odd:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(!body.to_string().contains("sk-app-secret"), "{body}");
    }
    assert_eq!(
        gw.chat_as(Some("sk-app-secret"), ask("gpt-4o", 5)).await.0,
        200
    );
}
