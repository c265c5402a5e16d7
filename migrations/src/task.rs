//! One step of a migration, as written in its file (`${VAR}` unexpanded until applied).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::schema::is_interpolated;

/// A change to Vault's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    /// `POST sys/auth/<path>`.
    EnableAuth {
        /// Path under `auth/`.
        path: String,
        /// `type`, `description`, `config`.
        settings: Map<String, Value>,
    },
    /// `POST sys/auth/<path>/tune`.
    TuneAuth {
        /// Path under `auth/`.
        path: String,
        /// The tune body.
        settings: Map<String, Value>,
    },
    /// `DELETE sys/auth/<path>`: destructive.
    DisableAuth {
        /// Path under `auth/`.
        path: String,
    },
    /// `POST sys/mounts/<path>`.
    EnableMount {
        /// The mount path.
        path: String,
        /// `type`, `description`, `options`, `config`.
        settings: Map<String, Value>,
    },
    /// `POST sys/mounts/<path>/tune`.
    TuneMount {
        /// The mount path.
        path: String,
        /// The tune body.
        settings: Map<String, Value>,
    },
    /// `DELETE sys/mounts/<path>`: destructive.
    DisableMount {
        /// The mount path.
        path: String,
    },
    /// `PUT sys/policies/acl/<name>`.
    WritePolicy {
        /// The policy.
        name: String,
        /// Its HCL text.
        policy: String,
    },
    /// `DELETE sys/policies/acl/<name>`: destructive.
    DeletePolicy {
        /// The policy.
        name: String,
    },
    /// `POST <path>` with data.
    Write {
        /// The API path.
        path: String,
        /// The data.
        data: Map<String, Value>,
    },
    /// `DELETE <path>`.
    Delete {
        /// The API path.
        path: String,
    },
}

impl Task {
    /// Whether it removes something: disabling a mount or auth method (and everything in it),
    /// deleting a policy or a path's data.
    pub fn is_destructive(&self) -> bool {
        matches!(
            self,
            Task::DisableAuth { .. }
                | Task::DisableMount { .. }
                | Task::DeletePolicy { .. }
                | Task::Delete { .. }
        )
    }

    /// A line for humans. Settings and policies may be shown; data values never are (only
    /// key names), nor any value taken from the environment.
    pub fn describe(&self) -> String {
        let shown = |settings: &Map<String, Value>| {
            let parts: Vec<String> = settings
                .iter()
                .map(|(k, v)| match v {
                    _ if is_interpolated(v) => format!("{k}=<from environment>"),
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            parts.join(" ")
        };
        match self {
            Task::EnableAuth { path, settings } => {
                format!("enable auth method auth/{path} ({})", shown(settings))
            }
            Task::TuneAuth { path, settings } => format!("tune auth/{path} ({})", shown(settings)),
            Task::DisableAuth { path } => format!("disable auth method auth/{path} [destructive]"),
            Task::EnableMount { path, settings } => {
                format!("enable secrets engine {path}/ ({})", shown(settings))
            }
            Task::TuneMount { path, settings } => format!("tune {path}/ ({})", shown(settings)),
            Task::DisableMount { path } => format!("disable secrets engine {path}/ [destructive]"),
            Task::WritePolicy { name, .. } => format!("write policy {name}"),
            Task::DeletePolicy { name } => format!("delete policy {name} [destructive]"),
            Task::Write { path, data } => {
                let keys: Vec<&str> = data.keys().map(String::as_str).collect();
                format!("write {path} (keys: {})", keys.join(", "))
            }
            Task::Delete { path } => format!("delete {path} [destructive]"),
        }
    }
}
