//! The set of providers, changed at runtime and read without a lock per request.
//!
//! Readers load an immutable snapshot through `arc-swap`; writers (rare) build a
//! new snapshot under a mutex and swap it in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::breaker::{Breaker, BreakerConfig, CircuitListener, Clock, Listeners, SystemClock};
use crate::error::{Error, ErrorKind};
use crate::provider::Provider;
use crate::ratelimit::{RateLimiter, RateLimits};

/// One registered provider.
#[derive(Clone)]
pub struct Entry {
    pub provider: Arc<dyn Provider>,
    pub name: Arc<str>,
    /// Caller-facing alias → the model name this provider receives.
    pub aliases: Vec<(String, String)>,
    /// This provider's circuit breaker.
    pub breaker: Arc<Breaker>,
    /// This provider's rate limits, when it has any.
    pub limiter: Option<Arc<RateLimiter>>,
    /// What the last active health check said (true until one fails).
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
}

/// How one provider is registered beside the provider itself.
#[derive(Debug, Clone, Default)]
pub struct ProviderOptions {
    /// Caller-facing alias → the model name this provider receives.
    pub aliases: Vec<(String, String)>,
    /// Its breaker settings (the registry's defaults when `None`).
    pub breaker: Option<BreakerConfig>,
    pub rate_limits: RateLimits,
}

impl Entry {
    /// Every model name callers may use with this provider: its models, then
    /// its aliases.
    pub fn routable_models(&self) -> Vec<String> {
        let mut models = self.provider.models().to_vec();
        models.extend(self.aliases.iter().map(|(alias, _)| alias.clone()));
        models
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("models", &self.provider.models())
            .field("aliases", &self.aliases)
            .finish()
    }
}

/// Where a request goes: the provider (and what guards it) and the model name
/// it receives. The provider's parts sit behind one reference count, so a
/// route costs two atomic increments to copy, not six — on the request path,
/// where every serving thread copies the same routes, each is a cache line
/// passed between cores.
#[derive(Clone)]
pub struct Route {
    pub target: Arc<Target>,
    pub upstream_model: Arc<str>,
}

/// A registered provider as routes reach it.
pub struct Target {
    pub provider: Arc<dyn Provider>,
    pub provider_name: Arc<str>,
    pub breaker: Arc<Breaker>,
    pub limiter: Option<Arc<RateLimiter>>,
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl std::ops::Deref for Route {
    type Target = Target;

    fn deref(&self) -> &Target {
        &self.target
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("provider", &self.provider_name)
            .field("upstream_model", &self.upstream_model)
            .finish()
    }
}

/// Maps looked up on every call: foldhash (seeded per process) instead of
/// SipHash, several times cheaper for short keys. Keys are names from the
/// config; a caller's model name is only looked up, never inserted.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Snapshot {
    entries: Vec<Entry>,
    /// Each entry as routes reach it, by index.
    targets: Vec<Arc<Target>>,
    /// Provider name → index in `entries`.
    by_name: FastMap<Arc<str>, usize>,
    /// Model or alias → every provider declaring it (index, upstream model), in
    /// registration order.
    by_model: FastMap<Box<str>, Vec<(usize, Arc<str>)>>,
    /// Each provider's default model (its first), by index.
    default_model: Vec<Arc<str>>,
}

impl Snapshot {
    fn build(entries: Vec<Entry>) -> Snapshot {
        let mut by_name = FastMap::with_capacity_and_hasher(entries.len(), Default::default());
        let mut by_model = FastMap::default();
        let mut default_model = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            by_name.insert(e.name.clone(), i);
            let models = e.provider.models();
            default_model.push(Arc::from(models.first().map_or("", String::as_str)));
            for m in models {
                by_model
                    .entry(m.as_str().into())
                    .or_insert_with(Vec::new)
                    .push((i, Arc::from(m.as_str())));
            }
            for (alias, target) in &e.aliases {
                let routes: &mut Vec<(usize, Arc<str>)> =
                    by_model.entry(alias.as_str().into()).or_default();
                // A provider that both declares a name and aliases it serves it once.
                if !routes.iter().any(|(j, _)| *j == i) {
                    routes.push((i, Arc::from(target.as_str())));
                }
            }
        }
        let targets = entries
            .iter()
            .map(|e| {
                Arc::new(Target {
                    provider: e.provider.clone(),
                    provider_name: e.name.clone(),
                    breaker: e.breaker.clone(),
                    limiter: e.limiter.clone(),
                    healthy: e.healthy.clone(),
                })
            })
            .collect();
        Snapshot {
            entries,
            targets,
            by_name,
            by_model,
            default_model,
        }
    }

    fn route(&self, i: usize, upstream_model: Arc<str>) -> Route {
        Route {
            target: self.targets[i].clone(),
            upstream_model,
        }
    }
}

/// The providers a router can call, in registration order.
pub struct Registry {
    snapshot: ArcSwap<Snapshot>,
    writer: Mutex<()>,
    /// How breakers of newly registered providers behave, and their clock.
    breakers: (BreakerConfig, Arc<dyn Clock>),
    /// Told about every circuit state change of every provider.
    listeners: Listeners,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.snapshot.load().entries.iter())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            breakers: (BreakerConfig::default(), Arc::new(SystemClock)),
            listeners: Listeners::default(),
        }
    }

    /// Calls `listener` on every circuit state change of every provider, now
    /// registered or later, before any request sees the new state.
    pub fn on_circuit_change(&self, listener: CircuitListener) {
        self.listeners.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(listener.clone());
            next
        });
    }

    /// An empty registry whose providers get breakers with `config` and `clock`.
    pub fn with_breakers(config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Registry {
            breakers: (config, clock),
            ..Registry::new()
        }
    }

    /// Adds a provider with its aliases, breaker settings and rate limits.
    pub fn register_with(
        &self,
        provider: Arc<dyn Provider>,
        options: ProviderOptions,
    ) -> Result<(), Error> {
        let clock = self.breakers.1.clone();
        let breaker = Arc::new(
            Breaker::new(
                options.breaker.unwrap_or_else(|| self.breakers.0.clone()),
                clock.clone(),
            )
            .with_listeners(provider.name(), self.listeners.clone()),
        );
        let limiter = (!options.rate_limits.is_unlimited())
            .then(|| Arc::new(RateLimiter::new(options.rate_limits, clock)));
        self.add(provider, options.aliases, breaker, limiter)
    }

    /// Adds a provider after those already registered. Names must be unique.
    pub fn register(&self, provider: Arc<dyn Provider>) -> Result<(), Error> {
        self.register_with_aliases(provider, Vec::new())
    }

    /// Adds a provider whose callers may also use `aliases` (alias → the model
    /// name the provider receives).
    pub fn register_with_aliases(
        &self,
        provider: Arc<dyn Provider>,
        aliases: Vec<(String, String)>,
    ) -> Result<(), Error> {
        self.register_with(
            provider,
            ProviderOptions {
                aliases,
                ..ProviderOptions::default()
            },
        )
    }

    fn add(
        &self,
        provider: Arc<dyn Provider>,
        aliases: Vec<(String, String)>,
        breaker: Arc<Breaker>,
        limiter: Option<Arc<RateLimiter>>,
    ) -> Result<(), Error> {
        let name: Arc<str> = Arc::from(provider.name());
        if name.is_empty() {
            return Err(Error::invalid("provider name must not be empty"));
        }
        self.update(|entries| {
            if entries.iter().any(|e| e.name == name) {
                return Err(Error::invalid(format!(
                    "a provider named \"{name}\" is already registered"
                )));
            }
            entries.push(Entry {
                provider,
                name,
                aliases,
                breaker,
                limiter,
                healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            });
            Ok(())
        })
    }

    /// Removes the provider called `name`; returns whether there was one.
    pub fn remove(&self, name: &str) -> bool {
        self.update(|entries| {
            let before = entries.len();
            entries.retain(|e| &*e.name != name);
            Ok(entries.len() != before)
        })
        .unwrap_or(false)
    }

    fn update<T>(&self, f: impl FnOnce(&mut Vec<Entry>) -> Result<T, Error>) -> Result<T, Error> {
        // A poisoned lock only means another writer panicked; the snapshot it
        // guards is immutable, so carrying on is safe.
        let _guard = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut entries = self.snapshot.load().entries.clone();
        let out = f(&mut entries)?;
        self.snapshot.store(Arc::new(Snapshot::build(entries)));
        Ok(out)
    }

    /// The registered providers, in registration order.
    pub fn entries(&self) -> Vec<Entry> {
        self.snapshot.load().entries.clone()
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Provider>> {
        let snap = self.snapshot.load();
        snap.by_name
            .get(name)
            .map(|&i| snap.entries[i].provider.clone())
    }

    pub fn len(&self) -> usize {
        self.snapshot.load().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Picks the provider for a request, by the contract's rules, in order:
    /// an explicit `provider` wins; then a model (or alias) a provider declares;
    /// then a model equal to a provider's name; `""` or `"auto"` takes the first
    /// registered provider.
    pub fn resolve(&self, model: &str, provider: &str) -> Result<Route, Error> {
        let snap = self.snapshot.load();
        let auto = model.is_empty() || model == "auto";
        if !provider.is_empty() {
            let Some(&i) = snap.by_name.get(provider) else {
                return Err(Error::new(
                    ErrorKind::ModelNotFound,
                    format!(
                        "unknown provider \"{}\" (GET /providers lists them)",
                        crate::validate::truncate(provider, 128)
                    ),
                ));
            };
            let upstream = if auto {
                snap.default_model[i].clone()
            } else {
                let e = &snap.entries[i];
                e.aliases
                    .iter()
                    .find(|(alias, _)| alias == model)
                    .map_or_else(
                        || Arc::from(model),
                        |(_, target)| Arc::from(target.as_str()),
                    )
            };
            return Ok(snap.route(i, upstream));
        }
        if auto {
            if snap.entries.is_empty() {
                return Err(Error::new(
                    ErrorKind::ModelNotFound,
                    "no providers are registered",
                ));
            }
            return Ok(snap.route(0, snap.default_model[0].clone()));
        }
        if let Some((i, upstream)) = snap.by_model.get(model).and_then(|r| r.first()) {
            return Ok(snap.route(*i, upstream.clone()));
        }
        if let Some(&i) = snap.by_name.get(model) {
            return Ok(snap.route(i, snap.default_model[i].clone()));
        }
        Err(Error::model_not_found(crate::validate::truncate(
            model, 128,
        )))
    }
}

impl Registry {
    /// Every provider that could serve the request, best first: the one
    /// [`Registry::resolve`] picks, then — for a model several providers declare,
    /// or `auto` — the others in registration order. At most `max` routes. An
    /// explicit `provider`, or a model naming a provider, gives exactly one.
    pub fn candidates(&self, model: &str, provider: &str, max: usize) -> Result<Vec<Route>, Error> {
        let first = self.resolve(model, provider)?;
        let max = max.max(1);
        if !provider.is_empty() || max == 1 {
            return Ok(vec![first]);
        }
        let snap = self.snapshot.load();
        let mut routes = Vec::with_capacity(max.min(4));
        routes.push(first);
        if model.is_empty() || model == "auto" {
            for i in 1..snap.entries.len() {
                if routes.len() == max {
                    break;
                }
                routes.push(snap.route(i, snap.default_model[i].clone()));
            }
        } else if let Some(all) = snap.by_model.get(model) {
            for (i, upstream) in all.iter().skip(1).take(max - 1) {
                routes.push(snap.route(*i, upstream.clone()));
            }
        }
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::EchoProvider;

    fn registry() -> Registry {
        let r = Registry::new();
        r.register(Arc::new(EchoProvider::new())).unwrap();
        r.register_with_aliases(
            Arc::new(
                EchoProvider::new()
                    .named("second")
                    .with_models(vec!["m2".into(), "echo-v1".into()]),
            ),
            vec![("fast".into(), "m2".into())],
        )
        .unwrap();
        r
    }

    fn resolve(r: &Registry, model: &str, provider: &str) -> (String, String) {
        let route = r.resolve(model, provider).unwrap();
        (
            route.provider_name.to_string(),
            route.upstream_model.to_string(),
        )
    }

    #[test]
    fn resolution_follows_the_contract_order() {
        let r = registry();
        assert_eq!(
            resolve(&r, "echo-v1", ""),
            ("echo".into(), "echo-v1".into())
        );
        assert_eq!(
            resolve(&r, "echo-v1", "second"),
            ("second".into(), "echo-v1".into())
        );
        assert_eq!(resolve(&r, "m2", ""), ("second".into(), "m2".into()));
        assert_eq!(resolve(&r, "fast", ""), ("second".into(), "m2".into()));
        assert_eq!(
            resolve(&r, "fast", "second"),
            ("second".into(), "m2".into())
        );
        assert_eq!(resolve(&r, "second", ""), ("second".into(), "m2".into()));
        assert_eq!(resolve(&r, "", ""), ("echo".into(), "echo-v1".into()));
        assert_eq!(resolve(&r, "auto", ""), ("echo".into(), "echo-v1".into()));
        assert_eq!(
            resolve(&r, "auto", "second"),
            ("second".into(), "m2".into())
        );
    }

    #[test]
    fn unknown_model_and_provider_are_not_found() {
        let r = registry();
        let e = r.resolve("gpt-9", "").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ModelNotFound);
        assert!(e.message().contains("\"gpt-9\""));
        let e = r.resolve("echo-v1", "nope").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ModelNotFound);
        assert!(e.message().contains("\"nope\""));
        assert_eq!(
            Registry::new().resolve("auto", "").unwrap_err().kind(),
            ErrorKind::ModelNotFound
        );
    }

    #[test]
    fn candidates_list_every_provider_of_a_model_in_order() {
        let r = registry();
        let names = |v: Vec<Route>| -> Vec<(String, String)> {
            v.into_iter()
                .map(|r| (r.provider_name.to_string(), r.upstream_model.to_string()))
                .collect()
        };
        assert_eq!(
            names(r.candidates("echo-v1", "", 5).unwrap()),
            [
                ("echo".into(), "echo-v1".into()),
                ("second".into(), "echo-v1".into())
            ]
        );
        assert_eq!(names(r.candidates("echo-v1", "", 1).unwrap()).len(), 1);
        assert_eq!(
            names(r.candidates("echo-v1", "second", 5).unwrap()),
            [("second".into(), "echo-v1".into())]
        );
        assert_eq!(
            names(r.candidates("m2", "", 5).unwrap()),
            [("second".into(), "m2".into())]
        );
        assert_eq!(
            names(r.candidates("auto", "", 5).unwrap()),
            [
                ("echo".into(), "echo-v1".into()),
                ("second".into(), "m2".into())
            ]
        );
        assert_eq!(
            r.candidates("nope", "", 5).unwrap_err().kind(),
            ErrorKind::ModelNotFound
        );
    }

    #[test]
    fn runtime_add_and_remove_keep_registration_order() {
        let r = registry();
        assert!(
            r.register(Arc::new(EchoProvider::new())).is_err(),
            "duplicate name"
        );
        r.register(Arc::new(EchoProvider::new().named("third")))
            .unwrap();
        let names: Vec<String> = r.entries().iter().map(|e| e.name.to_string()).collect();
        assert_eq!(names, ["echo", "second", "third"]);
        assert!(r.remove("echo"));
        assert!(!r.remove("echo"));
        assert_eq!(
            resolve(&r, "echo-v1", ""),
            ("second".into(), "echo-v1".into())
        );
        assert_eq!(resolve(&r, "auto", ""), ("second".into(), "m2".into()));
        assert!(r.get("third").is_some());
        assert_eq!(r.len(), 2);
    }
}
