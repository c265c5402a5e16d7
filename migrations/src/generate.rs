//! Desired vs current (vs last known): the tasks of the next migration and their inverses.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::normalize::{declared_same, mount_type, policy, same};
use crate::schema::{Resource, Schema, expand, is_interpolated, literal};
use crate::task::Task;

/// What Vault holds of the resources a schema names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Current {
    /// `sys/mounts`: mount path with trailing slash → its settings.
    pub mounts: Map<String, Value>,
    /// `sys/auth`: auth path with trailing slash → its settings.
    pub auths: Map<String, Value>,
    /// Policy name → its text, `None` when absent.
    pub policies: BTreeMap<String, Option<String>>,
    /// Data path → its data, `None` when absent.
    pub data: BTreeMap<String, Option<Map<String, Value>>>,
}

/// The next migration's tasks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generated {
    /// Tasks in the order `apply` runs them.
    pub up: Vec<Task>,
    /// Their inverses, in the order `rollback` runs them.
    pub down: Vec<Task>,
}

/// Phases of a migration; `up` tasks run phase by phase.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Enable,
    Tune,
    Policy,
    Data,
    DeleteData,
    DeletePolicy,
    Disable,
}

/// Compares `desired` with `current`, and with `last` (the last known desired state) for what
/// was removed from the schema. `env` expands `${VAR}`s for comparing; tasks keep them as
/// written.
pub fn generate(
    desired: &Schema,
    last: &Schema,
    current: &Current,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Generated, String> {
    let mut steps: Vec<(Phase, Task, Task)> = Vec::new();
    refuse_kv_paths(desired, current)?;
    for resource in desired.resources.values() {
        changes(resource, current, env, &mut steps)?;
    }
    for (id, resource) in &last.resources {
        if !desired.resources.contains_key(id) {
            removal(resource, current, &mut steps);
        }
    }
    steps.sort_by_key(|(phase, _, _)| *phase);
    let up = steps.iter().map(|(_, up, _)| up.clone()).collect();
    let down = steps.into_iter().rev().map(|(_, _, down)| down).collect();
    Ok(Generated { up, down })
}

/// Secrets in KV engines are data, not configuration: their values would end up in
/// migration files. Those belong to `vss pipeline`.
fn refuse_kv_paths(desired: &Schema, current: &Current) -> Result<(), String> {
    let mut kv: Vec<String> = current
        .mounts
        .iter()
        .filter(|(_, m)| m["type"].as_str() == Some("kv"))
        .map(|(path, _)| path.clone())
        .collect();
    kv.extend(desired.resources.values().filter_map(|r| match r {
        Resource::Mount { path, spec }
            if spec["type"].as_str().is_some_and(|t| t.starts_with("kv")) =>
        {
            Some(format!("{path}/"))
        }
        _ => None,
    }));
    for resource in desired.resources.values() {
        if let Resource::Data { path, .. } = resource
            && let Some(mount) = kv.iter().find(|m| path.starts_with(m.as_str()))
        {
            return Err(format!(
                "{path} is a secret in the KV engine {mount}; vss migrate manages configuration, not secret values (sync those with `vss pipeline`)"
            ));
        }
    }
    Ok(())
}

fn expanded(
    value: &Map<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Map<String, Value>, String> {
    match expand(&Value::Object(value.clone()), env).map_err(|e| e.to_string())? {
        Value::Object(map) => Ok(map),
        _ => unreachable!("a map expands to a map"),
    }
}

/// What a rollback writes back to a data path: Vault's earlier values of the declared keys,
/// escaped so they are never expanded, except keys whose desired value comes from the
/// environment (those are credentials: never copied into a migration file).
fn pre_image(raw: &Map<String, Value>, now: &Map<String, Value>) -> Map<String, Value> {
    raw.iter()
        .filter(|(_, desired)| !is_interpolated(desired))
        .filter_map(|(k, _)| now.get(k).map(|v| (k.clone(), literal(v))))
        .collect()
}

/// The keys of `data` that `now` (Vault's answer) has.
fn readable(data: &Map<String, Value>, now: &Map<String, Value>) -> Map<String, Value> {
    data.iter().filter(|(k, _)| now.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn obj(value: Option<&Value>) -> Map<String, Value> {
    value.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// The settings of `spec` (as written) that differ from `current`, and `current`'s values of
/// them: a tune body and its inverse.
fn tune(
    raw: &Map<String, Value>,
    spec: &Map<String, Value>,
    current: &Map<String, Value>,
) -> (Map<String, Value>, Map<String, Value>) {
    let (mut to, mut back) = (Map::new(), Map::new());
    if let Some(desc) = spec.get("description")
        && !same("description", desc, current.get("description").unwrap_or(&Value::Null))
    {
        to.insert("description".into(), raw["description"].clone());
        let before = current.get("description").cloned().unwrap_or_default();
        back.insert("description".into(), literal(&before));
    }
    let current_config = obj(current.get("config"));
    for (key, value) in obj(spec.get("config")) {
        if !current_config.get(&key).is_some_and(|c| same(&key, &value, c)) {
            to.insert(key.clone(), obj(raw.get("config"))[&key].clone());
            back.insert(key.clone(), literal(current_config.get(&key).unwrap_or(&Value::Null)));
        }
    }
    (to, back)
}

fn changes(
    resource: &Resource,
    current: &Current,
    env: &dyn Fn(&str) -> Option<String>,
    steps: &mut Vec<(Phase, Task, Task)>,
) -> Result<(), String> {
    match resource {
        Resource::Mount { path, spec: raw } => {
            let spec = expanded(raw, env)?;
            let Some(now) = current.mounts.get(&format!("{path}/")).and_then(Value::as_object)
            else {
                let up = Task::EnableMount { path: path.clone(), settings: raw.clone() };
                steps.push((Phase::Enable, up, Task::DisableMount { path: path.clone() }));
                return Ok(());
            };
            let kind = spec["type"].as_str().unwrap_or_default();
            let (kind, options) = mount_type(kind, &obj(spec.get("options")));
            let (now_kind, now_options) =
                mount_type(now["type"].as_str().unwrap_or_default(), &obj(now.get("options")));
            if kind != now_kind {
                return Err(format!(
                    "{path}/ is a `{now_kind}` engine in Vault, the schema says `{kind}`; changing an engine's type means removing it (its data too): remove it from the schema first, then add it back"
                ));
            }
            let (mut to, back) = tune(raw, &spec, now);
            if !declared_same(&options, &now_options) {
                // Options as written, with `kv-v2` spelled out as `version: 2`. There is no
                // way back from a kv upgrade, so the inverse leaves options alone.
                let written = spec["type"].as_str().unwrap_or_default();
                let (_, raw_options) = mount_type(written, &obj(raw.get("options")));
                to.insert("options".into(), Value::Object(raw_options));
            }
            if !to.is_empty() {
                let up = Task::TuneMount { path: path.clone(), settings: to };
                steps.push((
                    Phase::Tune,
                    up,
                    Task::TuneMount { path: path.clone(), settings: back },
                ));
            }
        }
        Resource::Auth { path, spec: raw } => {
            let spec = expanded(raw, env)?;
            let Some(now) = current.auths.get(&format!("{path}/")).and_then(Value::as_object)
            else {
                let up = Task::EnableAuth { path: path.clone(), settings: raw.clone() };
                steps.push((Phase::Enable, up, Task::DisableAuth { path: path.clone() }));
                return Ok(());
            };
            let (kind, now_kind) = (spec["type"].as_str(), now["type"].as_str());
            if kind != now_kind {
                return Err(format!(
                    "auth/{path} is `{}` in Vault, the schema says `{}`; remove it from the schema first, then add it back",
                    now_kind.unwrap_or("?"),
                    kind.unwrap_or("?")
                ));
            }
            let (to, back) = tune(raw, &spec, now);
            if !to.is_empty() {
                let up = Task::TuneAuth { path: path.clone(), settings: to };
                steps.push((
                    Phase::Tune,
                    up,
                    Task::TuneAuth { path: path.clone(), settings: back },
                ));
            }
        }
        Resource::Policy { name, text } => {
            let now = current.policies.get(name).cloned().flatten();
            let up = Task::WritePolicy { name: name.clone(), policy: text.clone() };
            match now {
                None => steps.push((Phase::Policy, up, Task::DeletePolicy { name: name.clone() })),
                Some(now) if policy(&now) != policy(text) => {
                    let back = Task::WritePolicy { name: name.clone(), policy: now };
                    steps.push((Phase::Policy, up, back));
                }
                Some(_) => {}
            }
        }
        Resource::Data { path, data: raw } => {
            let data = expanded(raw, env)?;
            let up = Task::Write { path: path.clone(), data: raw.clone() };
            match current.data.get(path).cloned().flatten() {
                None => steps.push((Phase::Data, up, Task::Delete { path: path.clone() })),
                // Keys Vault never returns (passwords) cannot be compared; they are written
                // with the resource, and whenever another declared key changes.
                Some(now) if !declared_same(&readable(&data, &now), &now) => {
                    let back = Task::Write { path: path.clone(), data: pre_image(raw, &now) };
                    steps.push((Phase::Data, up, back));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Removes what the last known state had and the schema no longer has, if Vault still has it.
fn removal(resource: &Resource, current: &Current, steps: &mut Vec<(Phase, Task, Task)>) {
    match resource {
        Resource::Mount { path, spec } => {
            if current.mounts.contains_key(&format!("{path}/")) {
                let back = Task::EnableMount { path: path.clone(), settings: spec.clone() };
                steps.push((Phase::Disable, Task::DisableMount { path: path.clone() }, back));
            }
        }
        Resource::Auth { path, spec } => {
            if current.auths.contains_key(&format!("{path}/")) {
                let back = Task::EnableAuth { path: path.clone(), settings: spec.clone() };
                steps.push((Phase::Disable, Task::DisableAuth { path: path.clone() }, back));
            }
        }
        Resource::Policy { name, .. } => {
            if let Some(Some(text)) = current.policies.get(name) {
                let back = Task::WritePolicy { name: name.clone(), policy: text.clone() };
                steps.push((Phase::DeletePolicy, Task::DeletePolicy { name: name.clone() }, back));
            }
        }
        Resource::Data { path, data } => {
            if let Some(Some(now)) = current.data.get(path) {
                let back = Task::Write { path: path.clone(), data: pre_image(data, now) };
                steps.push((Phase::DeleteData, Task::Delete { path: path.clone() }, back));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema(v: Value) -> Schema {
        Schema::from_map(v.as_object().unwrap().clone()).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn an_empty_vault_gets_everything_in_order_and_inverses_in_reverse() {
        let desired = schema(json!({
            "auth/approle/role/app": {"token_ttl": "1h"},
            "sys/policies/acl/app": {"policy": "path \"x\" {}"},
            "app/": {"type": "kv-v2"},
            "auth/approle": {"type": "approle"},
        }));
        let out = generate(&desired, &Schema::default(), &Current::default(), &no_env).unwrap();
        let kinds: Vec<String> = out.up.iter().map(|t| t.describe()).collect();
        assert!(kinds[0].starts_with("enable") && kinds[1].starts_with("enable"), "{kinds:?}");
        assert_eq!(kinds[2], "write policy app");
        assert_eq!(kinds[3], "write auth/approle/role/app (keys: token_ttl)");
        assert_eq!(out.down[0], Task::Delete { path: "auth/approle/role/app".into() });
        assert!(matches!(out.down[3], Task::DisableAuth { .. } | Task::DisableMount { .. }));
    }

    #[test]
    fn a_vault_that_matches_after_normalization_needs_nothing() {
        let desired = schema(json!({
            "app/": {"type": "kv-v2", "config": {"default_lease_ttl": "1h"}},
            "sys/policies/acl/app": {"policy": "  path \"x\" {}\n\n"},
            "auth/approle/role/app": {"token_ttl": "1h", "token_policies": "app,base"},
        }));
        let current = Current {
            mounts: json!({"app/": {"type": "kv", "options": {"version": "2"}, "config": {"default_lease_ttl": 3600, "max_lease_ttl": 0}}})
                .as_object().unwrap().clone(),
            auths: Map::new(),
            policies: [("app".to_string(), Some("path \"x\" {}".to_string()))].into(),
            data: [(
                "auth/approle/role/app".to_string(),
                Some(json!({"token_ttl": 3600, "token_policies": ["app", "base"], "period": 0}).as_object().unwrap().clone()),
            )]
            .into(),
        };
        let out = generate(&desired, &desired, &current, &no_env).unwrap();
        assert_eq!(out, Generated::default());
    }

    #[test]
    fn removals_come_from_the_last_known_state_and_are_destructive() {
        let last =
            schema(json!({"old/": {"type": "kv"}, "sys/policies/acl/gone": {"policy": "p"}}));
        let current = Current {
            mounts: json!({"old/": {"type": "kv"}}).as_object().unwrap().clone(),
            policies: [("gone".to_string(), Some("p".to_string()))].into(),
            ..Default::default()
        };
        let out = generate(&Schema::default(), &last, &current, &no_env).unwrap();
        assert!(out.up.iter().all(Task::is_destructive), "{:?}", out.up);
        assert_eq!(out.up[0], Task::DeletePolicy { name: "gone".into() });
        assert_eq!(out.up[1], Task::DisableMount { path: "old".into() });
        assert_eq!(
            out.down[0],
            Task::EnableMount {
                path: "old".into(),
                settings: json!({"type": "kv"}).as_object().unwrap().clone()
            }
        );
    }

    #[test]
    fn tasks_keep_environment_references_as_written() {
        let desired = schema(json!({"database/config/db": {"password": "${DB_PASSWORD}"}}));
        let env = |k: &str| (k == "DB_PASSWORD").then(|| "hunter2".to_string());
        let out = generate(&desired, &Schema::default(), &Current::default(), &env).unwrap();
        assert_eq!(
            out.up[0],
            Task::Write {
                path: "database/config/db".into(),
                data: json!({"password": "${DB_PASSWORD}"}).as_object().unwrap().clone()
            }
        );
        let err = generate(&desired, &Schema::default(), &Current::default(), &no_env).unwrap_err();
        assert!(err.contains("environment variable `DB_PASSWORD` is not set"), "{err}");
    }
}
