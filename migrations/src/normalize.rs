//! What makes a desired value and Vault's answer "the same": the spellings Vault normalizes.
//!
//! - `kv-v2` is `kv` with `options.version = "2"`;
//! - durations (`*ttl`, `period`): `"1h"`, `"1.5h"`, `"60m"`, `"3600s"`, `"3600"` and `3600` are
//!   compared as lengths of time;
//! - lists of strings compare as sets, and a comma-separated string equals the list Vault
//!   returns (`token_policies: "b,a"` = `["a", "b"]`);
//! - numbers and booleans equal their string forms (Vault returns either);
//! - policies compare without the whitespace HCL ignores (outside quoted strings);
//! - paths with and without trailing slashes are one path (see the schema).

use serde_json::{Map, Value};

/// The engine type and options as Vault reports them.
pub fn mount_type(kind: &str, options: &Map<String, Value>) -> (String, Map<String, Value>) {
    let mut options = options.clone();
    let kind = match kind {
        "kv-v2" => {
            options.insert("version".into(), Value::String("2".into()));
            "kv"
        }
        "kv-v1" => {
            options.insert("version".into(), Value::String("1".into()));
            "kv"
        }
        other => other,
    };
    if let Some(v) = options.get_mut("version")
        && let Value::Number(n) = v
    {
        *v = Value::String(n.to_string());
    }
    (kind.to_string(), options)
}

/// Whether `key` holds a duration.
fn is_duration(key: &str) -> bool {
    key.ends_with("ttl") || key == "period" || key.ends_with("_period")
}

/// Nanoseconds of a duration written as a number of seconds or a Go-style string (`1h30m`,
/// `1.5h`, `90s`, `500ms`, `3600`); `None` for anything else or an absurd size.
pub fn nanos(value: &Value) -> Option<u128> {
    const SECOND: f64 = 1e9;
    match value {
        Value::Number(n) => n.as_u64().map(|s| u128::from(s) * 1_000_000_000),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<u64>() {
                return Some(u128::from(n) * 1_000_000_000);
            }
            let mut total = 0f64;
            let mut rest = s;
            while !rest.is_empty() {
                let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
                let number: f64 = rest[..digits].parse().ok()?;
                rest = &rest[digits..];
                let unit_len =
                    rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
                let unit = match &rest[..unit_len] {
                    "ns" => 1.0,
                    "us" | "µs" => 1e3,
                    "ms" => 1e6,
                    "s" => SECOND,
                    "m" => 60.0 * SECOND,
                    "h" => 3600.0 * SECOND,
                    "d" => 86_400.0 * SECOND,
                    _ => return None,
                };
                total += number * unit;
                rest = &rest[unit_len..];
            }
            (total.is_finite() && total < 1e30).then_some(total.round() as u128)
        }
        _ => None,
    }
}

/// Whole seconds of a duration (see [`nanos`]).
pub fn seconds(value: &Value) -> Option<u64> {
    nanos(value).and_then(|n| u64::try_from(n / 1_000_000_000).ok())
}

/// A list of strings as a sorted list (Vault sorts some lists, e.g. policies), from an array
/// or a comma-separated string.
fn string_set(value: &Value) -> Option<Vec<String>> {
    let mut items: Vec<String> = match value {
        Value::String(s) => {
            s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
        }
        Value::Array(items) => {
            items.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<_>>()?
        }
        _ => return None,
    };
    items.sort();
    Some(items)
}

/// Whether `desired` (as the schema writes it, expanded) and `current` (as Vault returns it)
/// mean the same value of `key`. Maps compare only the keys `desired` declares.
pub fn same(key: &str, desired: &Value, current: &Value) -> bool {
    if is_duration(key)
        && let (Some(d), Some(c)) = (nanos(desired), nanos(current))
    {
        return d == c;
    }
    if (desired.is_array() || current.is_array())
        && let (Some(d), Some(c)) = (string_set(desired), string_set(current))
    {
        return d == c;
    }
    match (desired, current) {
        (Value::String(d), Value::Number(c)) => d == &c.to_string(),
        (Value::String(d), Value::Bool(c)) => d == &c.to_string(),
        (Value::Number(d), Value::String(c)) => c == &d.to_string(),
        (Value::Bool(d), Value::String(c)) => c == &d.to_string(),
        (Value::Array(d), Value::Array(c)) => {
            d.len() == c.len() && d.iter().zip(c).all(|(d, c)| same(key, d, c))
        }
        (Value::Object(d), Value::Object(c)) => declared_same(d, c),
        (Value::Object(d), Value::Null) => d.is_empty(),
        (d, c) => d == c,
    }
}

/// Whether every key `desired` declares has the same value in `current`.
pub fn declared_same(desired: &Map<String, Value>, current: &Map<String, Value>) -> bool {
    desired.iter().all(|(k, d)| current.get(k).is_some_and(|c| same(k, d, c)))
}

/// A policy's text without the whitespace HCL ignores: everything outside quoted strings.
pub fn policy(text: &str) -> String {
    let (mut out, mut quoted, mut escaped) = (String::with_capacity(text.len()), false, false);
    for c in text.chars() {
        if quoted {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
        } else if c == '"' {
            quoted = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kv_v2_is_kv_version_2() {
        let (kind, options) = mount_type("kv-v2", &Map::new());
        assert_eq!((kind.as_str(), options["version"].clone()), ("kv", json!("2")));
        let numeric = json!({"version": 2}).as_object().unwrap().clone();
        assert_eq!(mount_type("kv", &numeric), mount_type("kv-v2", &Map::new()));
        assert_eq!(mount_type("pki", &Map::new()).0, "pki");
    }

    #[test]
    fn durations_compare_as_seconds() {
        for spelling in [json!("1h"), json!("60m"), json!("3600s"), json!("3600"), json!(3600)] {
            assert!(same("token_ttl", &spelling, &json!(3600)), "{spelling}");
        }
        assert!(same("default_lease_ttl", &json!("1h30m"), &json!(5400)));
        assert!(same("default_lease_ttl", &json!("1.5h"), &json!(5400)));
        assert!(same("token_ttl", &json!("90000ms"), &json!("1m30s")));
        assert!(!same("token_ttl", &json!("2h"), &json!(3600)));
        assert_eq!(seconds(&json!("1x")), None);
        assert_eq!(seconds(&json!("99999999999999999999999999999h")), None);
    }

    #[test]
    fn lists_strings_and_scalars_compare_as_vault_returns_them() {
        assert!(same("token_policies", &json!("a, b"), &json!(["a", "b"])));
        assert!(same("token_policies", &json!("b,a"), &json!(["a", "b"])), "order does not matter");
        assert!(same("token_policies", &json!(["a"]), &json!("a")));
        assert!(!same("token_policies", &json!("a"), &json!(["a", "b"])));
        assert!(same("secret_id_num_uses", &json!("0"), &json!(0)));
        assert!(same("bind_secret_id", &json!(true), &json!("true")));
    }

    #[test]
    fn only_declared_keys_are_compared() {
        let desired = json!({"token_ttl": "1h"}).as_object().unwrap().clone();
        let current = json!({"token_ttl": 3600, "token_max_ttl": 0}).as_object().unwrap().clone();
        assert!(declared_same(&desired, &current));
    }

    #[test]
    fn policies_ignore_whitespace() {
        let a = "path \"x\" {\n  capabilities = [\"read\"]\n}\n";
        let b = "\n  path \"x\" {\n\tcapabilities   =  [ \"read\" ]   \n}";
        assert_eq!(policy(a), policy(b));
        assert_ne!(policy(a), policy("path \"y\" {}"));
        // Whitespace inside a quoted string is part of it.
        assert_ne!(policy("path \"a b\" {}"), policy("path \"ab\" {}"));
    }
}
