//! Callers' keys and spend under `/_infermux/` (SPEC §13): create, list,
//! show and revoke keys; spend reports from the ledger. Behind the
//! management token like every management route.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use infermux::callers::{
    BudgetSpec, Callers, GroupBy, Key, KeySpec, Owner, Period, SpendQuery, format_rfc3339, now_ms,
    parse_rfc3339,
};
use infermux::ratelimit::RateLimits;
use infermux::{Error, ErrorKind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::JsonBytes;

fn callers(state: &AppState) -> Result<&Arc<Callers>, ApiError> {
    state.router.callers().ok_or_else(|| {
        ApiError(Error::new(
            ErrorKind::RouteNotFound,
            "this server keeps no keys or ledger",
        ))
    })
}

/// Runs a blocking ledger call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("ledger task failed: {e}")))?
        .map_err(ApiError)
}

fn budget_json(b: Option<BudgetSpec>) -> Value {
    b.map_or(
        Value::Null,
        |b| json!({"usd": b.usd, "period": b.period.as_str()}),
    )
}

fn limits_json(l: RateLimits) -> Value {
    json!({
        "requests_per_minute": l.requests_per_minute,
        "tokens_per_minute": l.tokens_per_minute,
    })
}

/// A key as listed: never its secret.
fn key_json(k: &Key) -> Value {
    json!({
        "name": &*k.name,
        "origin": k.origin.as_str(),
        "team": k.spec.team,
        "models": k.spec.models,
        "budget": budget_json(k.spec.budget),
        "rate_limits": limits_json(k.spec.rate_limits),
        "expires_at": k.spec.expires_at.map(|s| format_rfc3339(s.saturating_mul(1000))),
        "created_at": (k.created_ms > 0).then(|| format_rfc3339(k.created_ms)),
        "revoked": k.revoked_ms().is_some(),
        "revoked_at": k.revoked_ms().map(format_rfc3339),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBudget {
    usd: f64,
    #[serde(default)]
    period: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewLimits {
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    budget: Option<NewBudget>,
    #[serde(default)]
    rate_limits: Option<NewLimits>,
    #[serde(default)]
    expires_at: Option<String>,
}

impl NewKey {
    fn into_spec(self) -> Result<KeySpec, Error> {
        let budget = match self.budget {
            None => None,
            Some(b) => {
                if !(b.usd.is_finite() && b.usd > 0.0) {
                    return Err(Error::invalid("budget.usd: must be a number > 0"));
                }
                let period = match b.period.as_deref() {
                    None => Period::Total,
                    Some(p) => Period::parse(p).ok_or_else(|| {
                        Error::invalid(format!(
                            "budget.period: unknown period \"{}\" (expected one of daily, weekly, monthly, total)",
                            infermux::validate::truncate(p, 32)
                        ))
                    })?,
                };
                Some(BudgetSpec { usd: b.usd, period })
            }
        };
        let limits = self.rate_limits.unwrap_or_default();
        if limits.requests_per_minute == Some(0) || limits.tokens_per_minute == Some(0) {
            return Err(Error::invalid(
                "rate_limits: requests_per_minute and tokens_per_minute must be ≥ 1",
            ));
        }
        let expires_at = match self.expires_at.as_deref() {
            None => None,
            Some(t) => Some(
                parse_rfc3339(t)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "expires_at: \"{}\" is not an RFC 3339 time (2027-01-31T00:00:00Z)",
                            infermux::validate::truncate(t, 40)
                        ))
                    })?
                    .div_euclid(1000),
            ),
        };
        if let Some(i) = self.models.iter().position(|m| m.trim().is_empty()) {
            return Err(Error::invalid(format!("models[{i}]: empty model name")));
        }
        Ok(KeySpec {
            name: self.name,
            sha256: [0; 32],
            team: self.team,
            models: self.models,
            budget,
            rate_limits: RateLimits {
                requests_per_minute: limits.requests_per_minute,
                tokens_per_minute: limits.tokens_per_minute,
            },
            expires_at,
        })
    }
}

/// `POST /_infermux/keys`: a new key; its secret is in this answer only.
pub async fn create(
    State(state): State<Arc<AppState>>,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    let callers = callers(&state)?.clone();
    let new: NewKey = infermux::json::from_slice(&body)?;
    let spec = new.into_spec()?;
    let (key, secret) = blocking(move || callers.create(spec)).await?;
    let mut body = key_json(&key);
    body["key"] = Value::String(secret);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `GET /_infermux/keys`: every key, revoked ones included, no secrets.
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let keys: Vec<Value> = callers(&state)?
        .keys()
        .iter()
        .map(|k| key_json(k))
        .collect();
    Ok(axum::Json(json!({ "keys": keys })).into_response())
}

fn no_key(name: &str) -> ApiError {
    ApiError(Error::new(
        ErrorKind::RouteNotFound,
        format!(
            "no key is named \"{}\"",
            infermux::validate::truncate(name, 64)
        ),
    ))
}

/// `GET /_infermux/keys/{name}`: the key with its spend so far (in its
/// budget's period; all time without one) and what its budgets have left.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let callers = callers(&state)?.clone();
    let key = callers.get(&name).ok_or_else(|| no_key(&name))?;
    let now = now_ms();
    let since = key.spec.budget.map_or(0, |b| b.period.start_of(now));
    let spend = {
        let (callers, name) = (callers.clone(), name.clone());
        blocking(move || match callers.ledger() {
            None => Ok(0.0),
            Some(l) => {
                l.flush().map_err(|e| Error::internal(e.to_string()))?;
                l.spend_since(Owner::Key(&name), since)
                    .map_err(|e| Error::internal(e.to_string()))
            }
        })
        .await?
    };
    let mut body = key_json(&key);
    body["spend_usd"] = json!(spend);
    body["budget_remaining_usd"] = json!(key.budget.as_ref().map(|b| b.remaining(now)));
    if let Some(team) = &key.team {
        body["team_budget_remaining_usd"] = json!(team.budget.as_ref().map(|b| b.remaining(now)));
    }
    Ok(axum::Json(body).into_response())
}

/// `DELETE /_infermux/keys/{name}`: refused on every later request.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let callers = callers(&state)?.clone();
    let wanted = name.clone();
    let key = blocking(move || callers.revoke(&wanted))
        .await?
        .ok_or_else(|| no_key(&name))?;
    Ok(axum::Json(key_json(&key)).into_response())
}

#[derive(Deserialize)]
pub struct SpendParams {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `GET /_infermux/spend?group_by=key|team|model|provider|caller|day&from=&to=`.
pub async fn spend(
    State(state): State<Arc<AppState>>,
    params: Result<Query<SpendParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let callers = callers(&state)?.clone();
    let Query(params) =
        params.map_err(|e| Error::invalid(format!("the query string: {}", e.body_text())))?;
    let group_by = match params.group_by.as_deref() {
        None => GroupBy::Key,
        Some(g) => GroupBy::parse(g).ok_or_else(|| {
            Error::invalid(format!(
                "group_by: \"{}\" is not one of key, team, model, provider, caller, day",
                infermux::validate::truncate(g, 32)
            ))
        })?,
    };
    let time = |field: &str, v: Option<&str>| -> Result<Option<i64>, Error> {
        v.map(|t| {
            parse_rfc3339(t).ok_or_else(|| {
                Error::invalid(format!(
                    "{field}: \"{}\" is not an RFC 3339 time (2026-12-01T00:00:00Z)",
                    infermux::validate::truncate(t, 40)
                ))
            })
        })
        .transpose()
    };
    let query = SpendQuery {
        group_by,
        from_ms: time("from", params.from.as_deref())?,
        to_ms: time("to", params.to.as_deref())?,
    };
    let rows = blocking(move || {
        let Some(l) = callers.ledger() else {
            return Ok(Vec::new());
        };
        l.flush().map_err(|e| Error::internal(e.to_string()))?;
        l.report(&query).map_err(|e| Error::internal(e.to_string()))
    })
    .await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "group": r.group,
                "requests": r.requests,
                "tokens_in": r.tokens_in,
                "tokens_out": r.tokens_out,
                "cost_usd": r.cost_usd,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "group_by": group_by.as_str(), "rows": rows })).into_response())
}
