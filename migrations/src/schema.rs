//! The desired state: `desired_state:` keyed by Vault path, classified into resources.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use vss_protocol::env::ExpandError;

use crate::MigrateError;

/// One thing in Vault that a schema manages, with its settings as written (`${VAR}` unexpanded).
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// An auth method at `auth/<path>`.
    Auth {
        /// Its path under `auth/`, without slashes around it.
        path: String,
        /// Its settings: `type`, `description`, `config` (tune).
        spec: Map<String, Value>,
    },
    /// A secrets engine mounted at `<path>/`.
    Mount {
        /// Its path, without slashes around it.
        path: String,
        /// Its settings: `type`, `description`, `options`, `config` (tune).
        spec: Map<String, Value>,
    },
    /// An ACL policy.
    Policy {
        /// Its name.
        name: String,
        /// Its HCL text.
        text: String,
    },
    /// Data written to any other path (a role, an engine's config).
    Data {
        /// The API path.
        path: String,
        /// The keys the schema declares; only these are compared.
        data: Map<String, Value>,
    },
}

impl Resource {
    /// A stable id: `auth:<path>`, `mount:<path>`, `policy:<name>`, `data:<path>`.
    pub fn id(&self) -> String {
        match self {
            Resource::Auth { path, .. } => format!("auth:{path}"),
            Resource::Mount { path, .. } => format!("mount:{path}"),
            Resource::Policy { name, .. } => format!("policy:{name}"),
            Resource::Data { path, .. } => format!("data:{path}"),
        }
    }
}

/// Mounts and auth methods that exist in every Vault and are never touched.
const BUILT_INS: [&str; 4] = ["token", "sys", "identity", "cubbyhole"];

/// A schema: resources by id, and the entries that cannot be managed over the API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schema {
    /// Resources by [`Resource::id`].
    pub resources: BTreeMap<String, Resource>,
    /// Audit devices (`sys/audit/<name>`): OpenBao manages them in its config file only.
    pub audit_devices: Vec<String>,
    /// The raw `desired_state` map, kept as the last known state after a generate.
    pub raw: Map<String, Value>,
}

impl Schema {
    /// Loads a schema file.
    pub fn load(path: &Path) -> Result<Self, MigrateError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MigrateError::file(path, format!("cannot read: {e}")))?;
        let doc: Value =
            serde_saphyr::from_str(&text).map_err(|e| MigrateError::file(path, e.to_string()))?;
        let raw =
            doc.get("desired_state").and_then(Value::as_object).cloned().ok_or_else(|| {
                MigrateError::file(path, "desired_state: a map of Vault paths is required")
            })?;
        Self::from_map(raw).map_err(|message| MigrateError::file(path, message))
    }

    /// Classifies the entries of a `desired_state` map.
    pub fn from_map(raw: Map<String, Value>) -> Result<Self, String> {
        let mut schema = Schema { raw: raw.clone(), ..Default::default() };
        for (key, value) in raw {
            let spec = value
                .as_object()
                .cloned()
                .ok_or_else(|| format!("desired_state.{key}: a map of settings is required"))?;
            let path = key.trim_matches('/').to_string();
            let resource = if let Some(name) = path.strip_prefix("sys/policies/acl/") {
                let text = match (spec.get("policy"), spec.get("policies")) {
                    (Some(Value::String(text)), None) => text.clone(),
                    (None, Some(Value::Array(rules))) => policy_from_rules(&key, rules)?,
                    _ => {
                        return Err(format!(
                            "desired_state.{key}: a policy needs `policy` (HCL text) or `policies` ([{{path, capabilities}}])"
                        ));
                    }
                };
                Resource::Policy { name: name.to_string(), text }
            } else if let Some(name) = path.strip_prefix("sys/audit/") {
                schema.audit_devices.push(name.to_string());
                continue;
            } else if path == "sys" || path.starts_with("sys/") {
                return Err(format!(
                    "desired_state.{key}: `sys/` paths other than policies are not managed"
                ));
            } else if let Some(name) =
                path.strip_prefix("auth/").filter(|n| !n.contains('/') || spec.contains_key("type"))
            {
                if name == "token" {
                    return Err(format!(
                        "desired_state.{key}: the built-in token auth method is never touched"
                    ));
                }
                require_type(&key, &spec)?;
                Resource::Auth { path: name.to_string(), spec }
            } else if spec.contains_key("type") && (key.ends_with('/') || !path.contains('/')) {
                if BUILT_INS.contains(&path.as_str()) {
                    return Err(format!(
                        "desired_state.{key}: the built-in `{path}/` mount is never touched"
                    ));
                }
                require_type(&key, &spec)?;
                Resource::Mount { path, spec }
            } else {
                Resource::Data { path, data: spec }
            };
            schema.resources.insert(resource.id(), resource);
        }
        Ok(schema)
    }
}

fn require_type(key: &str, spec: &Map<String, Value>) -> Result<(), String> {
    match spec.get("type") {
        Some(Value::String(_)) => Ok(()),
        _ => Err(format!("desired_state.{key}.type: required (e.g. `approle`, `kv-v2`, `pki`)")),
    }
}

/// HCL text for structured rules: `[{path, capabilities}]`.
fn policy_from_rules(key: &str, rules: &[Value]) -> Result<String, String> {
    let mut text = String::new();
    for (i, rule) in rules.iter().enumerate() {
        let path = rule.get("path").and_then(Value::as_str);
        let caps = rule.get("capabilities").and_then(Value::as_array);
        let (Some(path), Some(caps)) = (path, caps) else {
            return Err(format!(
                "desired_state.{key}.policies[{i}]: needs `path` and `capabilities`"
            ));
        };
        let caps: Vec<String> = caps
            .iter()
            .map(|c| c.as_str().map(|c| format!("\"{c}\"")))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("desired_state.{key}.policies[{i}].capabilities: strings"))?;
        text.push_str(&format!("path \"{path}\" {{\n  capabilities = [{}]\n}}\n", caps.join(", ")));
    }
    Ok(text)
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of `value` from `env`, with the
/// config's rules ([`vss_protocol::env`]); a missing variable is an error naming it (never a
/// value).
pub fn expand(value: &Value, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, ExpandError> {
    Ok(match value {
        Value::String(s) => Value::String(vss_protocol::env::expand(s, env)?.0),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| expand(v, env)).collect::<Result<_, _>>()?)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), expand(v, env)?)))
                .collect::<Result<_, ExpandError>>()?,
        ),
        other => other.clone(),
    })
}

/// `value` with every `${` escaped as `$${`, so that a value read from Vault is written back
/// as it was, never expanded.
pub fn literal(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("${", "$${")),
        Value::Array(items) => Value::Array(items.iter().map(literal).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), literal(v))).collect())
        }
        other => other.clone(),
    }
}

/// Whether a value (as written) takes anything from the environment: such values are
/// treated as sensitive and never printed.
pub fn is_interpolated(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("${"),
        Value::Array(items) => items.iter().any(is_interpolated),
        Value::Object(map) => map.values().any(is_interpolated),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema(v: Value) -> Result<Schema, String> {
        Schema::from_map(v.as_object().unwrap().clone())
    }

    #[test]
    fn paths_are_classified_with_or_without_trailing_slashes() {
        let s = schema(json!({
            "auth/approle": {"type": "approle"},
            "auth/kubernetes/": {"type": "kubernetes"},
            "auth/team/oidc": {"type": "oidc"},
            "pki/": {"type": "pki"},
            "kv2": {"type": "kv-v2"},
            "team/kv/": {"type": "kv"},
            "sys/policies/acl/app": {"policy": "path \"a\" {}"},
            "sys/audit/file": {"type": "file"},
            "auth/approle/role/app": {"token_ttl": "1h"},
        }))
        .unwrap();
        let ids: Vec<&str> = s.resources.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            [
                "auth:approle",
                "auth:kubernetes",
                "auth:team/oidc",
                "data:auth/approle/role/app",
                "mount:kv2",
                "mount:pki",
                "mount:team/kv",
                "policy:app"
            ]
        );
        assert_eq!(s.audit_devices, ["file"]);
    }

    #[test]
    fn built_ins_are_refused() {
        for key in ["token/", "sys/", "identity/", "cubbyhole/", "auth/token"] {
            let err = schema(json!({key: {"type": "kv"}})).unwrap_err();
            assert!(err.contains("never touched") || err.contains("not managed"), "{key}: {err}");
        }
    }

    #[test]
    fn structured_policies_become_hcl() {
        let s = schema(json!({"sys/policies/acl/app": {"policies": [
            {"path": "secret/data/app/*", "capabilities": ["read", "list"]}
        ]}}))
        .unwrap();
        let Resource::Policy { text, .. } = &s.resources["policy:app"] else { panic!() };
        assert_eq!(
            text,
            "path \"secret/data/app/*\" {\n  capabilities = [\"read\", \"list\"]\n}\n"
        );
    }

    #[test]
    fn interpolation_names_the_missing_variable() {
        let env = |k: &str| (k == "HOST").then(|| "db".to_string());
        let v = json!({"url": "postgres://${HOST}:${PORT:-5432}/x"});
        assert_eq!(expand(&v, &env).unwrap(), json!({"url": "postgres://db:5432/x"}));
        let err = expand(&json!(["${PASSWORD}"]), &env).unwrap_err().to_string();
        assert!(err.contains("`PASSWORD` is not set"), "{err}");
        let from_vault = json!({"template": "hello ${name}"});
        assert_eq!(expand(&literal(&from_vault), &env).unwrap(), from_vault);
        assert_eq!(expand(&json!("a ${oops"), &env).unwrap_err(), ExpandError::Unterminated);
        assert!(is_interpolated(&v) && !is_interpolated(&json!({"a": 1})));
    }
}
