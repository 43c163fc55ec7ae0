//! Callers (SPEC §13): the keys they present, the teams keys belong to, the
//! budgets and rate limits of both, and the ledger every routed call is
//! written to. The router asks [`Callers`] before a call (may this key call
//! this model, now, at this worst-case cost?) and settles after it.
//!
//! Keys are checked against an in-memory index kept current by the
//! management API: no database round trip on the hot path.

pub mod budget;
pub mod ledger;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use sha2::Digest as _;

pub use budget::{Budget, BudgetSpec, Period};
pub use ledger::{CallRow, GroupBy, Ledger, LedgerError, Owner, SpendQuery, SpendRow, StoredKey};

use crate::breaker::{Clock, SystemClock};
use crate::error::{Error, ErrorKind};
use crate::ratelimit::{RateLimiter, RateLimits};

/// The prefix of every secret infermux makes.
pub const SECRET_PREFIX: &str = "imx-";

/// Output tokens reserved for a call that sets no `max_tokens`, when the
/// config gives no `auth.default_reserve_tokens`.
pub const DEFAULT_RESERVE_TOKENS: u64 = 4096;

/// The SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// 64 lowercase hex digits.
pub fn hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// 64 hex digits (either case) as 32 bytes.
pub fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(d(pair[0])? * 16 + d(pair[1])?).ok()?;
    }
    Some(out)
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (`gpt-4o*`, `*-mini`, `*`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut tail) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match tail.find(part) {
            Some(at) => tail = &tail[at + part.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last)
}

/// Whether `name` may name a key or team: 1–64 letters, digits, `-`, `_`
/// or `.` (it appears in URLs, reports and headers).
pub fn valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An RFC 3339 time (`2027-01-31T00:00:00Z`) in Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
            .ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Unix milliseconds as RFC 3339, UTC (`2027-01-31T00:00:00.000Z`).
pub fn format_rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A team, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamSpec {
    pub name: String,
    pub budget: Option<BudgetSpec>,
    pub rate_limits: RateLimits,
}

/// A key, as configured or created.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub name: String,
    pub sha256: [u8; 32],
    pub team: Option<String>,
    /// Model names or `*` globs; empty: every model.
    pub models: Vec<String>,
    pub budget: Option<BudgetSpec>,
    pub rate_limits: RateLimits,
    /// Unix seconds.
    pub expires_at: Option<i64>,
}

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Config,
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
}

/// A team in force: its budget and limits, shared by its keys.
#[derive(Debug)]
pub struct Team {
    pub name: Arc<str>,
    pub budget: Option<Budget>,
    pub limiter: Option<RateLimiter>,
}

/// A key in force.
#[derive(Debug)]
pub struct Key {
    pub name: Arc<str>,
    pub spec: KeySpec,
    pub origin: Origin,
    pub team: Option<Arc<Team>>,
    pub budget: Option<Budget>,
    pub limiter: Option<RateLimiter>,
    pub created_ms: i64,
    /// 0 until revoked; then when, in Unix milliseconds.
    revoked_ms: AtomicI64,
}

impl Key {
    pub fn revoked_ms(&self) -> Option<i64> {
        match self.revoked_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(at),
        }
    }

    /// Whether this key may call `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.spec.models.is_empty() || self.spec.models.iter().any(|p| glob_match(p, model))
    }

    /// 403 `model_not_allowed` unless this key may call `model`; the
    /// message lists what it may call.
    pub fn check_model(&self, model: &str) -> Result<(), Error> {
        if self.allows(model) {
            return Ok(());
        }
        let mut allowed = self
            .spec
            .models
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.spec.models.len() > 8 {
            allowed.push_str(", …");
        }
        Err(Error::new(
            ErrorKind::ModelNotAllowed,
            format!(
                "key \"{}\" may not use model \"{}\" (it may use: {allowed})",
                self.name,
                crate::validate::truncate(model, 128)
            ),
        ))
    }

    /// What is left of the tighter of the key's and its team's budgets.
    pub fn budget_remaining(&self, now_ms: i64) -> Option<f64> {
        let team = self.team.as_ref().and_then(|t| t.budget.as_ref());
        [self.budget.as_ref(), team]
            .into_iter()
            .flatten()
            .map(|b| b.remaining(now_ms))
            .reduce(f64::min)
    }
}

fn limiter(limits: RateLimits, clock: &Arc<dyn Clock>) -> Option<RateLimiter> {
    (!limits.is_unlimited()).then(|| RateLimiter::new(limits, clock.clone()))
}

#[derive(Debug, Default)]
struct Index {
    by_hash: HashMap<[u8; 32], Arc<Key>, foldhash::fast::RandomState>,
    /// In the order they were defined: config first, then the API's.
    keys: Vec<Arc<Key>>,
}

/// How callers are checked and accounted: `auth` and `teams` of the config,
/// the keys of the config and of the API, and the ledger.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthSettings {
    /// Every inference route needs a valid key.
    pub required: bool,
    /// Output tokens reserved when a call sets no `max_tokens`.
    pub default_reserve_tokens: u64,
    pub keys: Vec<KeySpec>,
    pub teams: Vec<TeamSpec>,
}

/// The keys, teams and ledger of one router.
pub struct Callers {
    required: bool,
    default_reserve_tokens: u64,
    teams: HashMap<String, Arc<Team>>,
    index: ArcSwap<Index>,
    /// Serializes changes to the index (create, revoke); reads never wait.
    changes: Mutex<()>,
    ledger: Option<Arc<dyn Ledger>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Callers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callers")
            .field("required", &self.required)
            .field("keys", &self.index.load().keys.len())
            .finish()
    }
}

/// A caller admitted to one call: its key, and what it reserved.
#[derive(Debug)]
pub struct Grant {
    pub key: Arc<Key>,
    /// Reserved from (key budget, team budget): amount and period.
    reserved: f64,
    periods: (Option<i64>, Option<i64>),
}

impl Grant {
    /// What the key's and team's budgets have left, counting this call's
    /// reservation as spent (`None`: no budget applies).
    pub fn remaining(&self) -> Option<f64> {
        self.key.budget_remaining(now_ms())
    }

    /// Reserves `usd` more for a call running past its reservation (a stream
    /// longer than its estimate); false when a budget cannot take it.
    pub fn extend(&mut self, usd: f64) -> bool {
        let now = now_ms();
        let key = self.key.budget.as_ref().map(|b| b.reserve(usd, now));
        if let Some(Err(_)) = key {
            return false;
        }
        let team_budget = self.key.team.as_ref().and_then(|t| t.budget.as_ref());
        if let Some(Err(_)) = team_budget.map(|b| b.reserve(usd, now)) {
            if let (Some(b), Some(Ok(_))) = (&self.key.budget, key) {
                b.settle(usd, 0.0, now);
            }
            return false;
        }
        self.reserved += usd;
        true
    }

    /// How much this call has reserved.
    pub fn reserved(&self) -> f64 {
        self.reserved
    }

    /// Settles the reservation to what the call cost and counts its tokens.
    pub fn settle(&self, cost_usd: f64, tokens: u64) {
        let now = now_ms();
        if let (Some(b), Some(_)) = (&self.key.budget, self.periods.0) {
            b.settle(self.reserved, cost_usd, now);
        }
        if let Some(team) = &self.key.team {
            if let (Some(b), Some(_)) = (&team.budget, self.periods.1) {
                b.settle(self.reserved, cost_usd, now);
            }
            if let Some(l) = &team.limiter {
                l.add_tokens(tokens);
            }
        }
        if let Some(l) = &self.key.limiter {
            l.add_tokens(tokens);
        }
    }
}

/// Seconds a caller at a rate limit waits for room, at least 1.
fn retry_after(limiter: &RateLimiter) -> u32 {
    limiter.retry_after_secs().max(1)
}

impl Callers {
    /// Callers from the config's settings; `ledger` keeps rows, API keys and
    /// spend (budgets are reloaded from it here).
    pub fn new(settings: &AuthSettings, ledger: Option<Arc<dyn Ledger>>) -> Result<Self, Error> {
        Self::with_clock(settings, ledger, Arc::new(SystemClock))
    }

    /// [`Callers::new`] with rate-limit windows on `clock`.
    pub fn with_clock(
        settings: &AuthSettings,
        ledger: Option<Arc<dyn Ledger>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let now = now_ms();
        let spent = |owner: Owner<'_>, spec: &BudgetSpec| -> Result<f64, Error> {
            match &ledger {
                None => Ok(0.0),
                Some(l) => l
                    .spend_since(owner, spec.period.start_of(now))
                    .map_err(|e| Error::internal(e.to_string())),
            }
        };
        let mut teams = HashMap::new();
        for t in &settings.teams {
            let budget = match &t.budget {
                Some(spec) => Some(Budget::new(*spec, spent(Owner::Team(&t.name), spec)?, now)),
                None => None,
            };
            teams.insert(
                t.name.clone(),
                Arc::new(Team {
                    name: Arc::from(t.name.as_str()),
                    budget,
                    limiter: limiter(t.rate_limits, &clock),
                }),
            );
        }
        let callers = Callers {
            required: settings.required,
            default_reserve_tokens: settings.default_reserve_tokens,
            teams,
            index: ArcSwap::default(),
            changes: Mutex::new(()),
            ledger,
            clock,
        };
        let stored = match &callers.ledger {
            Some(l) => l.load_keys().map_err(|e| Error::internal(e.to_string()))?,
            None => Vec::new(),
        };
        let mut index = Index::default();
        for spec in &settings.keys {
            let revoked = stored
                .iter()
                .find(|s| s.spec.sha256 == spec.sha256)
                .and_then(|s| s.revoked_ms);
            let key = callers.key(spec.clone(), Origin::Config, now, revoked.unwrap_or(0))?;
            index.by_hash.insert(spec.sha256, key.clone());
            index.keys.push(key);
        }
        for s in stored {
            if index.by_hash.contains_key(&s.spec.sha256) {
                continue;
            }
            let key = callers.key(s.spec, Origin::Api, s.created_ms, s.revoked_ms.unwrap_or(0))?;
            index.by_hash.insert(key.spec.sha256, key.clone());
            index.keys.push(key);
        }
        callers.index.store(Arc::new(index));
        Ok(callers)
    }

    fn key(
        &self,
        spec: KeySpec,
        origin: Origin,
        created_ms: i64,
        revoked_ms: i64,
    ) -> Result<Arc<Key>, Error> {
        let now = now_ms();
        let team = match &spec.team {
            None => None,
            Some(t) => Some(
                self.teams
                    .get(t)
                    .cloned()
                    .ok_or_else(|| Error::invalid(format!("team: no team is named \"{t}\"")))?,
            ),
        };
        let budget = match &spec.budget {
            None => None,
            Some(b) => {
                let spent = match &self.ledger {
                    None => 0.0,
                    Some(l) => l
                        .spend_since(Owner::Key(&spec.name), b.period.start_of(now))
                        .map_err(|e| Error::internal(e.to_string()))?,
                };
                Some(Budget::new(*b, spent, now))
            }
        };
        Ok(Arc::new(Key {
            name: Arc::from(spec.name.as_str()),
            limiter: limiter(spec.rate_limits, &self.clock),
            spec,
            origin,
            team,
            budget,
            created_ms,
            revoked_ms: AtomicI64::new(revoked_ms),
        }))
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn ledger(&self) -> Option<&Arc<dyn Ledger>> {
        self.ledger.as_ref()
    }

    pub fn default_reserve_tokens(&self) -> u64 {
        self.default_reserve_tokens
    }

    /// The key a caller presented, checked: `None` for no key (allowed
    /// unless `auth.required`) and, unless `auth.required`, for a secret
    /// infermux does not know (an upstream key a client sends anyway).
    pub fn authenticate(&self, secret: Option<&str>) -> Result<Option<Arc<Key>>, Error> {
        let unauthorized = |why: &str| Error::new(ErrorKind::Unauthorized, why.to_owned());
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return if self.required {
                Err(unauthorized(
                    "missing key: send an infermux key as Authorization: Bearer <key> or x-api-key",
                ))
            } else {
                Ok(None)
            };
        };
        let index = self.index.load();
        let Some(key) = index.by_hash.get(&hash_secret(secret)) else {
            return if self.required {
                Err(unauthorized(
                    "unknown key: send a key from auth.keys or one made with `infermux keys create`",
                ))
            } else {
                Ok(None)
            };
        };
        if key.revoked_ms().is_some() {
            return Err(unauthorized(&format!("key \"{}\" was revoked", key.name)));
        }
        if let Some(at) = key.spec.expires_at
            && now_ms() >= at.saturating_mul(1000)
        {
            return Err(unauthorized(&format!("key \"{}\" has expired", key.name)));
        }
        Ok(Some(key.clone()))
    }

    /// Admits `key` to one call of `model`: its model list, the key's and
    /// team's rate limits, and a reservation of `worst_case_usd` from their
    /// budgets. Nothing is taken when anything refuses.
    pub fn admit(&self, key: &Arc<Key>, model: &str, worst_case_usd: f64) -> Result<Grant, Error> {
        key.check_model(model)?;
        self.check_limits(key)?;
        let now = now_ms();
        let budget_error = |whose: &str, left: f64| {
            Error::new(
                ErrorKind::BudgetExceeded,
                format!(
                    "{whose} budget cannot cover this call (${left:.6} left, up to ${worst_case_usd:.6} needed); a lower max_tokens reserves less, or raise the budget"
                ),
            )
        };
        let key_period = match &key.budget {
            None => None,
            Some(b) => Some(
                b.reserve(worst_case_usd, now)
                    .map_err(|left| budget_error(&format!("key \"{}\"", key.name), left))?,
            ),
        };
        let team_budget = key.team.as_ref().and_then(|t| t.budget.as_ref());
        let team_period = match team_budget.map(|b| b.reserve(worst_case_usd, now)) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(left)) => {
                if let (Some(b), Some(_)) = (&key.budget, key_period) {
                    b.settle(worst_case_usd, 0.0, now);
                }
                let team = key.team.as_ref().map_or("", |t| &*t.name);
                return Err(budget_error(&format!("team \"{team}\""), left));
            }
        };
        Ok(Grant {
            key: key.clone(),
            reserved: worst_case_usd,
            periods: (key_period, team_period),
        })
    }

    /// The key's and its team's request and token limits.
    fn check_limits(&self, key: &Key) -> Result<(), Error> {
        let limited = |whose: String, l: &RateLimiter| {
            Error::new(
                ErrorKind::RateLimited,
                format!("{whose} is at its rate limit; retry later"),
            )
            .with_retry_after(retry_after(l))
        };
        if let Some(l) = &key.limiter
            && !l.try_acquire()
        {
            return Err(limited(format!("key \"{}\"", key.name), l));
        }
        if let Some(team) = &key.team
            && let Some(l) = &team.limiter
            && !l.try_acquire()
        {
            return Err(limited(format!("team \"{}\"", team.name), l));
        }
        Ok(())
    }

    /// Every key, revoked ones included, in definition order.
    pub fn keys(&self) -> Vec<Arc<Key>> {
        self.index.load().keys.clone()
    }

    /// The key named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Key>> {
        self.index
            .load()
            .keys
            .iter()
            .find(|k| *k.name == *name)
            .cloned()
    }

    /// Makes a key (through the management API): answers it with its
    /// secret, which is kept nowhere but in the answer.
    pub fn create(&self, mut spec: KeySpec) -> Result<(Arc<Key>, String), Error> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        if !valid_key_name(&spec.name) {
            return Err(Error::invalid(
                "name: must be 1-64 letters, digits, '-', '_' or '.'",
            ));
        }
        if self.get(&spec.name).is_some() {
            return Err(Error::invalid(format!(
                "name: a key named \"{}\" exists",
                spec.name
            )));
        }
        let mut random = [0u8; 24];
        getrandom::fill(&mut random)
            .map_err(|e| Error::internal(format!("cannot draw a random key: {e}")))?;
        let mut secret = String::from(SECRET_PREFIX);
        for b in random {
            secret.push_str(&format!("{b:02x}"));
        }
        spec.sha256 = hash_secret(&secret);
        let now = now_ms();
        let key = self.key(spec, Origin::Api, now, 0)?;
        if let Some(l) = &self.ledger {
            l.save_key(&StoredKey {
                spec: key.spec.clone(),
                created_ms: now,
                revoked_ms: None,
            })
            .map_err(|e| Error::internal(e.to_string()))?;
        }
        let old = self.index.load();
        let mut index = Index {
            by_hash: old.by_hash.clone(),
            keys: old.keys.clone(),
        };
        index.by_hash.insert(key.spec.sha256, key.clone());
        index.keys.push(key.clone());
        self.index.store(Arc::new(index));
        Ok((key, secret))
    }

    /// Revokes the key named `name` for every later request; `None` when
    /// there is no such key.
    pub fn revoke(&self, name: &str) -> Result<Option<Arc<Key>>, Error> {
        let _change = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(key) = self.get(name) else {
            return Ok(None);
        };
        if key.revoked_ms().is_none() {
            let now = now_ms().max(1);
            if let Some(l) = &self.ledger {
                l.revoke_key(name, &key.spec.sha256, now)
                    .map_err(|e| Error::internal(e.to_string()))?;
            }
            key.revoked_ms.store(now, Ordering::Release);
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("*", "anything", true),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4", false),
            ("*-mini", "gpt-4o-mini", true),
            ("*-mini", "mini", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("echo-v1", "echo-v1", true),
            ("echo-v1", "echo-v2", false),
            ("**", "", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} ~ {n}");
        }
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_rfc3339("2026-12-02T13:00:00+01:00"),
            Some(1_796_212_800_000)
        );
        assert_eq!(parse_rfc3339("2026-12-02"), None);
        assert_eq!(format_rfc3339(1_796_212_800_000), "2026-12-02T12:00:00Z");
    }

    #[test]
    fn hex_round_trips() {
        let h = hash_secret("imx-abc");
        assert_eq!(parse_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hex(&hex(&h).to_uppercase()), Some(h));
        assert_eq!(parse_hex("zz"), None);
    }

    fn settings(required: bool) -> AuthSettings {
        AuthSettings {
            required,
            default_reserve_tokens: 100,
            keys: vec![KeySpec {
                name: "app".into(),
                sha256: hash_secret("secret-1"),
                team: Some("web".into()),
                models: vec!["echo-*".into()],
                budget: Some(BudgetSpec {
                    usd: 1.0,
                    period: Period::Total,
                }),
                rate_limits: RateLimits {
                    requests_per_minute: Some(2),
                    tokens_per_minute: None,
                },
                expires_at: None,
            }],
            teams: vec![TeamSpec {
                name: "web".into(),
                budget: Some(BudgetSpec {
                    usd: 0.5,
                    period: Period::Total,
                }),
                rate_limits: RateLimits::default(),
            }],
        }
    }

    #[test]
    fn keys_are_checked() {
        let c = Callers::new(&settings(true), None).unwrap();
        let kind = |r: Result<Option<Arc<Key>>, Error>| r.err().map(|e| e.kind());
        assert_eq!(kind(c.authenticate(None)), Some(ErrorKind::Unauthorized));
        assert_eq!(
            kind(c.authenticate(Some("nope"))),
            Some(ErrorKind::Unauthorized)
        );
        let key = c.authenticate(Some("secret-1")).unwrap().unwrap();
        assert_eq!(&*key.name, "app");
        let open = Callers::new(&settings(false), None).unwrap();
        assert!(open.authenticate(None).unwrap().is_none());
        assert!(open.authenticate(Some("sk-upstream")).unwrap().is_none());
        // Revoked: refused whether or not keys are required.
        open.revoke("app").unwrap().unwrap();
        assert_eq!(
            kind(open.authenticate(Some("secret-1"))),
            Some(ErrorKind::Unauthorized)
        );
        assert!(open.revoke("nobody").unwrap().is_none());
    }

    #[test]
    fn admission_checks_models_limits_and_both_budgets() {
        let c = Callers::new(&settings(true), None).unwrap();
        let key = c.authenticate(Some("secret-1")).unwrap().unwrap();
        let e = c.admit(&key, "gpt-4o", 0.0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ModelNotAllowed);
        // The team's 0.5 binds before the key's 1.0, and nothing stays
        // reserved from the key's budget.
        let e = c.admit(&key, "echo-v1", 0.6).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BudgetExceeded);
        assert!(e.message().contains("team \"web\""), "{e}");
        assert_eq!(key.budget.as_ref().unwrap().remaining(now_ms()), 1.0);
        let g = c.admit(&key, "echo-v1", 0.4).unwrap();
        assert!((g.remaining().unwrap() - 0.1).abs() < 1e-9);
        g.settle(0.2, 10);
        assert!((key.budget_remaining(now_ms()).unwrap() - 0.3).abs() < 1e-9);
        // Two requests a minute, the refused ones included.
        let e = c.admit(&key, "echo-v1", 0.0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.retry_after().is_some_and(|s| s >= 1));
    }

    #[test]
    fn created_keys_work_at_once_and_their_secret_is_new() {
        let c = Callers::new(&settings(true), None).unwrap();
        let spec = KeySpec {
            name: "ci".into(),
            sha256: [0; 32],
            team: None,
            models: vec![],
            budget: None,
            rate_limits: RateLimits::default(),
            expires_at: None,
        };
        let (key, secret) = c.create(spec.clone()).unwrap();
        assert!(
            secret.starts_with(SECRET_PREFIX) && secret.len() == 52,
            "{secret}"
        );
        assert_eq!(key.spec.sha256, hash_secret(&secret));
        assert_eq!(&*c.authenticate(Some(&secret)).unwrap().unwrap().name, "ci");
        assert!(c.create(spec).is_err(), "the name is taken");
        let expired = KeySpec {
            name: "old".into(),
            expires_at: Some(1),
            ..KeySpec {
                name: String::new(),
                sha256: [0; 32],
                team: None,
                models: vec![],
                budget: None,
                rate_limits: RateLimits::default(),
                expires_at: None,
            }
        };
        let (_, secret) = c.create(expired).unwrap();
        assert_eq!(
            c.authenticate(Some(&secret)).unwrap_err().kind(),
            ErrorKind::Unauthorized
        );
    }
}
