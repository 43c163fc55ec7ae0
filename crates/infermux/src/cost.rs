//! What a call costs: a built-in price table (litellm's community-maintained
//! model price map, pinned in `data/model_prices.json` and refreshed by
//! `scripts/refresh-prices.py`), overridden per provider and model by the
//! config's `pricing`. Every token kind has its rate: cached input, cache
//! writes and reasoning are priced with their own where the table has them.
//! Cost is computed, never fetched, and can never fail a request: an unknown
//! price is 0.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::types::Usage;

/// The pinned table: `models` maps a model name to its rates per million
/// tokens, in the order of `columns`.
const TABLE_JSON: &str = include_str!("../data/model_prices.json");

#[derive(Deserialize)]
struct Table {
    source: String,
    taken: String,
    models: HashMap<String, [Option<f64>; 5]>,
}

/// Where the built-in prices come from and when they were taken.
pub fn built_in_source() -> (&'static str, &'static str) {
    let t = table();
    (t.source.as_str(), t.taken.as_str())
}

type Prices = HashMap<String, Price, foldhash::fast::RandomState>;

struct Loaded {
    source: String,
    taken: String,
    prices: Prices,
}

fn table() -> &'static Loaded {
    static TABLE: std::sync::LazyLock<Loaded> = std::sync::LazyLock::new(|| {
        // The file is compiled in and checked by a test; a broken one
        // prices nothing rather than failing calls.
        let t: Table = serde_json::from_str(TABLE_JSON).unwrap_or_else(|_| Table {
            source: "none".into(),
            taken: "never".into(),
            models: HashMap::new(),
        });
        let prices = t
            .models
            .into_iter()
            .map(|(name, [input, output, cached, write, reasoning])| {
                let price = Price {
                    input_per_million: input.unwrap_or(0.0),
                    output_per_million: output.unwrap_or(0.0),
                    cached_input_per_million: cached,
                    cache_write_per_million: write,
                    reasoning_per_million: reasoning,
                };
                (name, price)
            })
            .collect();
        Loaded {
            source: t.source,
            taken: t.taken,
            prices,
        }
    });
    &TABLE
}

/// Prices: config overrides first, then the built-in table.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    overrides: HashMap<String, HashMap<String, Price>>,
}

impl Pricing {
    /// The built-in table with `overrides` (provider → model → price) on top.
    pub fn new(overrides: &BTreeMap<String, BTreeMap<String, Price>>) -> Self {
        // Parsed now, not on the first call.
        let _ = table();
        Pricing {
            overrides: overrides
                .iter()
                .map(|(p, models)| {
                    (
                        p.clone(),
                        models
                            .iter()
                            .map(|(m, price)| (m.clone(), *price))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    /// The configured price for this provider and model, if the config names one.
    pub fn configured(&self, provider: &str, model: &str) -> Option<Price> {
        self.overrides.get(provider)?.get(model).copied()
    }

    /// The price of `model` on `provider`: configured, else built in, else none.
    pub fn price(&self, provider: &str, model: &str) -> Option<Price> {
        self.configured(provider, model).or_else(|| built_in(model))
    }

    /// USD for the tokens; 0 when the price is unknown.
    pub fn cost(&self, provider: &str, model: &str, usage: Usage) -> f64 {
        self.price(provider, model)
            .map_or(0.0, |p| price_of(p, usage))
    }
}

/// USD for `usage` at `price`: uncached input at the input rate, cached
/// input and cache writes at theirs (the input rate when the price has none),
/// reasoning at the reasoning rate (else the output rate), the rest of the
/// output at the output rate.
pub fn price_of(price: Price, u: Usage) -> f64 {
    let cached = u.cached_input.min(u.input);
    let written = u.cache_write.min(u.input - cached);
    let plain_in = u.input - cached - written;
    let reasoning = u.reasoning.min(u.output);
    let plain_out = u.output - reasoning;
    let rate = |r: Option<f64>, base: f64| r.unwrap_or(base);
    (plain_in as f64 * price.input_per_million
        + cached as f64 * rate(price.cached_input_per_million, price.input_per_million)
        + written as f64 * rate(price.cache_write_per_million, price.input_per_million)
        + plain_out as f64 * price.output_per_million
        + reasoning as f64 * rate(price.reasoning_per_million, price.output_per_million))
        / 1_000_000.0
}

/// The built-in price of `model`: an exact entry, or the longest entry that is a
/// prefix of it followed by `-` (a dated or suffixed variant). A few hash
/// lookups, one per `-` in the name.
pub fn built_in(model: &str) -> Option<Price> {
    let prices = &table().prices;
    let mut candidate = model;
    loop {
        if let Some(price) = prices.get(candidate) {
            return Some(*price);
        }
        candidate = &candidate[..candidate.rfind('-')?];
    }
}

/// USD per million tokens, by token kind. Cached input, cache writes and
/// reasoning take the input (or output) rate unless given.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
    #[serde(default)]
    pub cache_write_per_million: Option<f64>,
    #[serde(default)]
    pub reasoning_per_million: Option<f64>,
}

impl Price {
    /// Input and output rates only.
    pub fn new(input_per_million: f64, output_per_million: f64) -> Self {
        Price {
            input_per_million,
            output_per_million,
            cached_input_per_million: None,
            cache_write_per_million: None,
            reasoning_per_million: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_prices_by_longest_prefix() {
        assert_eq!(built_in("gpt-4o").unwrap().input_per_million, 2.5);
        assert_eq!(built_in("gpt-4o-mini").unwrap().input_per_million, 0.15);
        assert_eq!(
            built_in("gpt-4o-2024-08-06").unwrap().output_per_million,
            10.0
        );
        assert_eq!(
            built_in("gpt-4o-mini-2024-07-18")
                .unwrap()
                .output_per_million,
            0.60
        );
        assert_eq!(
            built_in("claude-sonnet-4-5-20990101")
                .unwrap()
                .input_per_million,
            3.0
        );
        assert!(built_in("gpt-4oo").is_none(), "a prefix must end at a dash");
        assert!(built_in("llama3").is_none());
    }

    #[test]
    fn overrides_win_and_unknown_costs_nothing() {
        let mut o = BTreeMap::new();
        o.insert(
            "openai".to_owned(),
            BTreeMap::from([("gpt-4o".to_owned(), Price::new(1.0, 2.0))]),
        );
        let p = Pricing::new(&o);
        let u = Usage::new;
        assert_eq!(p.cost("openai", "gpt-4o", u(1_000_000, 1_000_000)), 3.0);
        assert_eq!(p.cost("other", "gpt-4o", u(1_000_000, 0)), 2.5);
        assert_eq!(p.cost("local", "llama3", u(1_000, 1_000)), 0.0);
        assert!((p.cost("x", "claude-sonnet-4-5", u(1000, 100)) - 0.0045).abs() < 1e-12);
    }

    #[test]
    fn every_token_kind_has_its_rate() {
        // claude-sonnet-4-5: input 3, output 15, cache read 0.30, cache write 3.75.
        let p = Pricing::default();
        let usage = Usage {
            input: 1_000_000 + 2_000_000 + 4_000_000,
            cached_input: 2_000_000,
            cache_write: 4_000_000,
            output: 1_000_000,
            reasoning: 500_000,
        };
        let cost = p.cost("a", "claude-sonnet-4-5", usage);
        assert!((cost - (3.0 + 0.6 + 15.0 + 15.0)).abs() < 1e-9, "{cost}");
        // gpt-5: cached input 0.125 of 1.25; reasoning at the output rate.
        let cost = p.cost(
            "o",
            "gpt-5",
            Usage {
                input: 1_000_000,
                cached_input: 1_000_000,
                output: 0,
                ..Default::default()
            },
        );
        assert!((cost - 0.125).abs() < 1e-12, "{cost}");
        // A configured reasoning rate applies to reasoning tokens only.
        let price = Price {
            reasoning_per_million: Some(100.0),
            ..Price::new(1.0, 10.0)
        };
        let cost = price_of(
            price,
            Usage {
                input: 0,
                output: 2_000_000,
                reasoning: 1_000_000,
                ..Default::default()
            },
        );
        assert!((cost - 110.0).abs() < 1e-9, "{cost}");
        // Counts that disagree (more cached than input) never go negative.
        let cost = price_of(
            Price::new(1.0, 1.0),
            Usage {
                input: 10,
                cached_input: 50,
                ..Default::default()
            },
        );
        assert!(cost >= 0.0);
    }

    #[test]
    fn the_pinned_table_loads_and_says_where_it_came_from() {
        let (source, taken) = built_in_source();
        assert!(source.starts_with("litellm "), "{source}");
        assert_eq!(taken.len(), 10, "{taken}");
        assert!(table().prices.len() > 50);
        let p = built_in("gpt-4o").unwrap();
        assert_eq!((p.input_per_million, p.output_per_million), (2.5, 10.0));
        assert_eq!(p.cached_input_per_million, Some(1.25));
    }
}
