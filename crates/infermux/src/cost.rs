//! What a call costs: a built-in price table for current OpenAI and Anthropic
//! models, overridden per provider and model by the config's `pricing`. Cost is
//! computed, never fetched, and can never fail a request: an unknown price is 0.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// USD per million input and output tokens, by model name (a dated variant such
/// as `gpt-4o-2024-08-06` takes the price of its longest listed prefix).
const BUILT_IN: &[(&str, f64, f64)] = &[
    // OpenAI
    ("gpt-5", 1.25, 10.0),
    ("gpt-5-mini", 0.25, 2.0),
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-4.1", 2.0, 8.0),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4o", 2.50, 10.0),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4-turbo", 10.0, 30.0),
    ("gpt-4", 30.0, 60.0),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o1", 15.0, 60.0),
    ("o1-mini", 1.10, 4.40),
    ("o3", 2.0, 8.0),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("text-embedding-ada-002", 0.10, 0.0),
    // Anthropic
    ("claude-opus-4-5", 5.0, 25.0),
    ("claude-opus-4-1", 15.0, 75.0),
    ("claude-opus-4", 15.0, 75.0),
    ("claude-sonnet-4-5", 3.0, 15.0),
    ("claude-sonnet-4", 3.0, 15.0),
    ("claude-haiku-4-5", 1.0, 5.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-3-5-haiku", 0.80, 4.0),
    ("claude-3-opus", 15.0, 75.0),
    ("claude-3-haiku", 0.25, 1.25),
];

/// Prices: config overrides first, then the built-in table.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    overrides: HashMap<String, HashMap<String, Price>>,
}

impl Pricing {
    /// The built-in table with `overrides` (provider → model → price) on top.
    pub fn new(overrides: &BTreeMap<String, BTreeMap<String, Price>>) -> Self {
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
    pub fn cost(&self, provider: &str, model: &str, tokens_in: u64, tokens_out: u64) -> f64 {
        self.price(provider, model)
            .map_or(0.0, |p| price_of(p, tokens_in, tokens_out))
    }
}

/// USD for `tokens_in` and `tokens_out` at `price`.
pub fn price_of(price: Price, tokens_in: u64, tokens_out: u64) -> f64 {
    (tokens_in as f64 * price.input_per_million + tokens_out as f64 * price.output_per_million)
        / 1_000_000.0
}

/// The built-in price of `model`: an exact entry, or the longest entry that is a
/// prefix of it followed by `-` (a dated or suffixed variant). A few hash
/// lookups, one per `-` in the name.
pub fn built_in(model: &str) -> Option<Price> {
    // foldhash: looked up on every call, a few times for dated names.
    type Table = HashMap<&'static str, (f64, f64), foldhash::fast::RandomState>;
    static TABLE: std::sync::LazyLock<Table> = std::sync::LazyLock::new(|| {
        BUILT_IN
            .iter()
            .map(|&(name, i, o)| (name, (i, o)))
            .collect()
    });
    let mut candidate = model;
    loop {
        if let Some(&(input, output)) = TABLE.get(candidate) {
            return Some(Price {
                input_per_million: input,
                output_per_million: output,
            });
        }
        candidate = &candidate[..candidate.rfind('-')?];
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
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
            built_in("claude-sonnet-4-5-20250929")
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
            BTreeMap::from([(
                "gpt-4o".to_owned(),
                Price {
                    input_per_million: 1.0,
                    output_per_million: 2.0,
                },
            )]),
        );
        let p = Pricing::new(&o);
        assert_eq!(p.cost("openai", "gpt-4o", 1_000_000, 1_000_000), 3.0);
        assert_eq!(p.cost("other", "gpt-4o", 1_000_000, 0), 2.5);
        assert_eq!(p.cost("local", "llama3", 1_000, 1_000), 0.0);
        assert!((p.cost("x", "claude-sonnet-4-5", 1000, 100) - 0.0045).abs() < 1e-12);
    }
}
