//! Reading Vault's current configuration and applying tasks, through a [`VaultClient`]
//! (address, namespace, token or AppRole login, retries).

use serde_json::{Map, Value, json};
use vss_stores::StoreError;
use vss_stores::vault::{Method, VaultClient};

use crate::MigrateError;
use crate::generate::Current;
use crate::normalize::mount_type;
use crate::schema::{Resource, Schema, expand};
use crate::task::Task;

fn data_of(response: Option<Value>) -> Option<Map<String, Value>> {
    response.and_then(|mut r| r.get_mut("data").map(Value::take)).and_then(|d| match d {
        Value::Object(map) => Some(map),
        _ => None,
    })
}

/// Reads what Vault holds of every resource in `schemas`.
pub async fn current(vault: &VaultClient, schemas: &[&Schema]) -> Result<Current, StoreError> {
    let mut current = Current {
        mounts: data_of(vault.api(Method::GET, "sys/mounts", None).await?).unwrap_or_default(),
        auths: data_of(vault.api(Method::GET, "sys/auth", None).await?).unwrap_or_default(),
        ..Default::default()
    };
    for resource in schemas.iter().flat_map(|s| s.resources.values()) {
        match resource {
            Resource::Policy { name, .. } if !current.policies.contains_key(name) => {
                let found = data_of(
                    vault.api(Method::GET, &format!("sys/policies/acl/{name}"), None).await?,
                );
                let text =
                    found.and_then(|d| d.get("policy").and_then(Value::as_str).map(str::to_string));
                current.policies.insert(name.clone(), text);
            }
            Resource::Data { path, .. } if !current.data.contains_key(path) => {
                let found = data_of(vault.api(Method::GET, path, None).await?);
                current.data.insert(path.clone(), found);
            }
            _ => {}
        }
    }
    Ok(current)
}

/// Applies one task; `${VAR}`s are expanded from `env` now (a missing one fails the task
/// before anything is sent).
pub async fn run(
    vault: &VaultClient,
    task: &Task,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), MigrateError> {
    let body = |settings: &Map<String, Value>| -> Result<Value, MigrateError> {
        Ok(expand(&Value::Object(settings.clone()), env)?)
    };
    // Enabling what is already enabled, as the same type, is done (a migration resumed
    // after a repair); as another type it is an error.
    let listing = match task {
        Task::EnableAuth { path, settings } => Some(("sys/auth", path, settings)),
        Task::EnableMount { path, settings } => Some(("sys/mounts", path, settings)),
        _ => None,
    };
    if let Some((list, path, settings)) = listing {
        let enabled = data_of(vault.api(Method::GET, list, None).await?).unwrap_or_default();
        if let Some(existing) = enabled.get(&format!("{path}/")) {
            let kind = |v: &Value| {
                let options =
                    v.get("options").and_then(Value::as_object).cloned().unwrap_or_default();
                mount_type(v["type"].as_str().unwrap_or_default(), &options)
            };
            let (want, want_options) = kind(&Value::Object(settings.clone()));
            let (have, have_options) = kind(existing);
            let same_version =
                want_options.get("version").is_none_or(|v| have_options.get("version") == Some(v));
            if want != have || !same_version {
                return Err(MigrateError::Refused(format!(
                    "{path}/ is already enabled as `{have}` {}, the migration enables `{want}` {}",
                    Value::Object(have_options),
                    Value::Object(want_options)
                )));
            }
            tracing::info!(%path, "already enabled");
            return Ok(());
        }
    }
    let (method, path, payload) = match task {
        Task::EnableAuth { path, settings } => {
            (Method::POST, format!("sys/auth/{path}"), Some(body(settings)?))
        }
        Task::TuneAuth { path, settings } => {
            (Method::POST, format!("sys/auth/{path}/tune"), Some(body(settings)?))
        }
        Task::DisableAuth { path } => (Method::DELETE, format!("sys/auth/{path}"), None),
        Task::EnableMount { path, settings } => {
            let mut settings = body(settings)?;
            // `kv-v2` is `kv` with version 2, the form every Vault accepts.
            let kind = settings["type"].as_str().unwrap_or_default().to_string();
            let options =
                settings.get("options").and_then(Value::as_object).cloned().unwrap_or_default();
            let (kind, options) = mount_type(&kind, &options);
            settings["type"] = json!(kind);
            if !options.is_empty() {
                settings["options"] = Value::Object(options);
            }
            (Method::POST, format!("sys/mounts/{path}"), Some(settings))
        }
        Task::TuneMount { path, settings } => {
            (Method::POST, format!("sys/mounts/{path}/tune"), Some(body(settings)?))
        }
        Task::DisableMount { path } => (Method::DELETE, format!("sys/mounts/{path}"), None),
        Task::WritePolicy { name, policy } => {
            (Method::PUT, format!("sys/policies/acl/{name}"), Some(json!({ "policy": policy })))
        }
        Task::DeletePolicy { name } => (Method::DELETE, format!("sys/policies/acl/{name}"), None),
        Task::Write { path, data } => (Method::POST, path.clone(), Some(body(data)?)),
        Task::Delete { path } => (Method::DELETE, path.clone(), None),
    };
    let removing = method == Method::DELETE;
    match vault.api(method, &path, payload.as_ref()).await? {
        // 404 on a delete: already gone. On a write: no such path in this Vault.
        None if !removing => Err(MigrateError::Refused(format!(
            "{path}: not found (is the auth method or engine it belongs to enabled?)"
        ))),
        _ => Ok(()),
    }
}
