//! `infermux keys` and `infermux spend`: callers' keys and spend reports,
//! through a running server's management API.

use std::io::Write;
use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Value, json};

use super::remote::{call, finish};
use crate::cli::{Format, KeysAction, KeysArgs, SpendArgs, SpendFormat};

fn write_out(text: &str) -> Result<(), (u8, String)> {
    writeln!(std::io::stdout().lock(), "{text}")
        .map_err(|e| (1, format!("cannot write the output: {e}")))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "*".into(),
        Value::Array(a) => a
            .iter()
            .map(|m| m.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn budget(k: &Value) -> String {
    match (&k["budget"]["usd"], k["budget"]["period"].as_str()) {
        (Value::Number(usd), Some(p)) => format!("${usd}/{p}"),
        _ => "-".into(),
    }
}

fn key_table(keys: &[Value]) -> String {
    let mut out = format!(
        "{:<24} {:<7} {:<12} {:<16} {:<8} {}",
        "NAME", "ORIGIN", "TEAM", "BUDGET", "REVOKED", "MODELS"
    );
    for k in keys {
        out.push_str(&format!(
            "\n{:<24} {:<7} {:<12} {:<16} {:<8} {}",
            text(&k["name"]),
            text(&k["origin"]),
            text(&k["team"]),
            budget(k),
            if k["revoked"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            text(&k["models"]),
        ));
    }
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `infermux keys create|list|show|revoke`.
pub fn keys(args: KeysArgs) -> Result<ExitCode, String> {
    let server = args.server.as_str();
    finish((|| {
        match args.action {
            KeysAction::Create(new) => {
                let budget = new
                    .budget_usd
                    .map(|usd| json!({"usd": usd, "period": new.budget_period}));
                let body = json!({
                    "name": new.name.or(new.name_flag),
                    "team": new.team,
                    "models": new.models,
                    "budget": budget,
                    "rate_limits": {
                        "requests_per_minute": new.requests_per_minute,
                        "tokens_per_minute": new.tokens_per_minute,
                    },
                    "expires_at": new.expires_at,
                });
                let made = call(server, Method::POST, "/_infermux/keys", Some(&body))?;
                match args.format {
                    Format::Json => write_out(&pretty(&made))?,
                    Format::Table => write_out(&format!(
                        "key \"{}\" created; its secret, shown only now:\n{}",
                        text(&made["name"]),
                        text(&made["key"])
                    ))?,
                }
            }
            KeysAction::List => {
                let list = call(server, Method::GET, "/_infermux/keys", None)?;
                match args.format {
                    Format::Json => write_out(&pretty(&list))?,
                    Format::Table => write_out(&key_table(
                        list["keys"].as_array().map_or(&[][..], Vec::as_slice),
                    ))?,
                }
            }
            KeysAction::Show { name } => {
                let k = call(
                    server,
                    Method::GET,
                    &format!("/_infermux/keys/{name}"),
                    None,
                )?;
                match args.format {
                    Format::Json => write_out(&pretty(&k))?,
                    Format::Table => write_out(&format!(
                        "{}\nspend: ${}  budget left: {}  expires: {}",
                        key_table(std::slice::from_ref(&k)),
                        k["spend_usd"],
                        match &k["budget_remaining_usd"] {
                            Value::Null => "-".to_owned(),
                            v => format!("${v}"),
                        },
                        text(&k["expires_at"]),
                    ))?,
                }
            }
            KeysAction::Revoke { name } => {
                let k = call(
                    server,
                    Method::DELETE,
                    &format!("/_infermux/keys/{name}"),
                    None,
                )?;
                match args.format {
                    Format::Json => write_out(&pretty(&k))?,
                    Format::Table => write_out(&format!("key \"{}\" revoked", text(&k["name"])))?,
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })())
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `infermux spend [--group-by] [--from] [--to] [--format table|json|csv]`.
pub fn spend(args: SpendArgs) -> Result<ExitCode, String> {
    finish((|| {
        let mut path = format!("/_infermux/spend?group_by={}", args.group_by.as_str());
        for (name, v) in [("from", &args.from), ("to", &args.to)] {
            if let Some(v) = v {
                // RFC 3339 text: only `+` needs escaping in a query.
                path.push_str(&format!("&{name}={}", v.replace('+', "%2B")));
            }
        }
        let report = call(&args.server, Method::GET, &path, None)?;
        let rows = report["rows"].as_array().map_or(&[][..], Vec::as_slice);
        let field = |r: &Value, k: &str| text(&r[k]);
        let out = match args.format {
            SpendFormat::Json => pretty(&report),
            SpendFormat::Csv => {
                let mut out = String::from("group,requests,tokens_in,tokens_out,cost_usd");
                for r in rows {
                    out.push_str(&format!(
                        "\n{},{},{},{},{}",
                        csv_field(&field(r, "group")),
                        field(r, "requests"),
                        field(r, "tokens_in"),
                        field(r, "tokens_out"),
                        field(r, "cost_usd"),
                    ));
                }
                out
            }
            SpendFormat::Table => {
                let mut out = format!(
                    "{:<24} {:>9} {:>12} {:>12} {:>14}",
                    args.group_by.as_str().to_uppercase(),
                    "REQUESTS",
                    "TOKENS_IN",
                    "TOKENS_OUT",
                    "COST_USD"
                );
                for r in rows {
                    let group = r["group"].as_str().unwrap_or("");
                    out.push_str(&format!(
                        "\n{:<24} {:>9} {:>12} {:>12} {:>14}",
                        if group.is_empty() { "(none)" } else { group },
                        field(r, "requests"),
                        field(r, "tokens_in"),
                        field(r, "tokens_out"),
                        format!("{:.6}", r["cost_usd"].as_f64().unwrap_or(0.0)),
                    ));
                }
                out
            }
        };
        write_out(&out)?;
        Ok(ExitCode::SUCCESS)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
