//! The config as written: the top-level serde types (unknown keys rejected; each backend's
//! own types live in [`super::stores`]), and the passes that turn a parsed document into
//! them with every problem collected.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::check::{key, path};
use super::secret_ref::RawSecretRef;
use super::stores::RawStore;
use super::stores::aws::{AccountId, RawAws};
use super::stores::vault::RawVault;
use super::yaml::{Document, KeyPath, Segment, display_path};
use super::{Diagnostic, LogFormat};
use crate::merge::ListMerge;

/// A vss config file (`vss.yaml`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "vss config")]
pub(crate) struct RawConfig {
    /// Phase switches and run defaults.
    #[serde(default)]
    pub pipeline: RawPipeline,
    /// Where merged results are kept, one folder per target. Setting it turns the merge
    /// phase on. Example: `{ vault: { path: secret/merged } }`.
    pub merge_store: Option<RawStore>,
    /// The state ledger (ownership records, the hash key). Default: `{ file: { path: .vss/state } }`.
    pub state: Option<RawState>,
    /// The source of every target when the merge phase does not run.
    pub source: Option<RawStore>,
    /// Named sources that targets import. Example: `{ common: { vault: { path: secret/common } } }`.
    #[serde(default)]
    pub sources: BTreeMap<String, RawStore>,
    /// The targets, by name (letters, digits, `_`, `-`, `.`). A bare list is the target's
    /// `imports`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, TargetOrImports>")]
    pub targets: BTreeMap<String, RawTarget>,
    /// Logging defaults (`RUST_LOG` and flags take precedence).
    pub log: Option<RawLog>,
    /// The key of content hashes, by reference; every process of a run must use the same.
    /// Default: generated once and kept in the state ledger.
    pub hash_key: Option<RawSecretRef>,
    /// The Vault connection of every vault store.
    pub vault: Option<RawVault>,
    /// Region, endpoint and cross-account roles of every AWS store.
    pub aws: Option<RawAws>,
    /// Not supported yet (the reference's discovered targets).
    #[schemars(with = "Option<serde_json::Value>")]
    pub dynamic_targets: Option<IgnoredAny>,
    /// Where jobs run: in-process by default, or on `vss worker`s over NATS.
    pub execution: Option<RawExecution>,
    /// `vss serve`: who may trigger runs over HTTP, and which GitHub pushes trigger what.
    pub serve: Option<RawServe>,
}

/// `serve:` — the run API of `vss serve`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServe {
    /// Bearer tokens that may call the API, by reference; several allow rotation.
    /// Example: `[ "${VSS_API_TOKEN}" ]`.
    #[serde(default)]
    pub tokens: Vec<RawSecretRef>,
    /// Webhook secrets: a request signed with one (`X-Hub-Signature-256`, HMAC-SHA256 of the
    /// body) may trigger runs; several allow rotation. Example: `[ { env: GITHUB_WEBHOOK_SECRET } ]`.
    #[serde(default)]
    pub webhook_secrets: Vec<RawSecretRef>,
    /// GitHub `push` deliveries that trigger a run: ref (or `*`) → the targets to run (empty:
    /// all). Example: `{ refs/heads/main: [Production] }`.
    #[serde(default)]
    pub github_push: BTreeMap<String, Vec<String>>,
    /// Largest request body accepted, in bytes. Default: 1048576.
    pub max_body_bytes: Option<usize>,
}

/// `pipeline:` — phase switches and run defaults.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPipeline {
    /// The merge phase.
    #[serde(default)]
    pub merge: RawPhase,
    /// The sync phase.
    #[serde(default)]
    pub sync: RawSync,
    /// Plan only, as with `--dry-run`. Default: false.
    #[serde(default)]
    pub dry_run: bool,
    /// Keep running other targets after one fails. Default: false.
    #[serde(default)]
    pub continue_on_error: bool,
    /// How long store calls may take.
    pub timeouts: Option<RawTimeouts>,
}

/// `pipeline.timeouts:` — how long store calls may take, so a store that is gone or hung
/// fails its job in seconds.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    /// Seconds to establish a connection. Default: 5.
    pub connect_secs: Option<u64>,
    /// Seconds a request may take in all. Default: 20.
    pub request_secs: Option<u64>,
    /// Seconds a store may stay unreachable before its remaining calls fail at once.
    /// Default: 40.
    pub outage_secs: Option<u64>,
}

/// `pipeline.merge:`.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPhase {
    /// Whether the phase runs. Default: when a `merge_store` is configured.
    pub enabled: Option<bool>,
    /// Jobs run at once. Default: 4.
    pub parallel: Option<usize>,
}

/// `pipeline.sync:`.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSync {
    /// Whether the phase runs. Default: true.
    pub enabled: Option<bool>,
    /// Jobs run at once. Default: 8.
    pub parallel: Option<usize>,
    /// Delete owned orphans in every target (per target: `delete`). Default: false.
    #[serde(default)]
    pub delete_orphans: bool,
    /// A run refuses to delete more than this share of a target's secrets (when that is also
    /// more than `max_delete_count`), unless `--allow-mass-delete`. Default: 10.
    pub max_delete_percent: Option<f64>,
    /// Deletions up to this many are always allowed. Default: 5.
    pub max_delete_count: Option<u64>,
}

/// `state:` — where the ledger lives.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum RawState {
    /// A folder on disk (the default of a run on this machine).
    File {
        /// The folder, relative to the config's folder. Example: `.vss/state`.
        path: String,
    },
    /// A NATS JetStream key-value bucket, shared by every worker without a shared disk (the
    /// default of a distributed run: `execution.nats` or `--nats`).
    Nats {
        /// The bucket. Default: `vss-state`.
        #[serde(default)]
        bucket: Option<String>,
    },
}

/// `execution:`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExecution {
    /// Run jobs on `vss worker`s over NATS JetStream.
    pub nats: Option<RawNats>,
}

/// `execution.nats:` — how to reach NATS; credentials by reference.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNats {
    /// Server URL(s), comma-separated. Example: `nats://nats-1:4222,nats://nats-2:4222`.
    pub url: String,
    /// A `.creds` file (JWT + NKey seed), relative to the config's folder.
    pub credentials: Option<String>,
    /// A token, by reference.
    pub token: Option<RawSecretRef>,
    /// An NKey seed, by reference.
    pub nkey: Option<RawSecretRef>,
    /// A CA certificate (PEM) to verify a TLS server with.
    pub tls_ca: Option<String>,
    /// A job that no worker finishes within this many seconds fails. Default: 900.
    pub job_timeout_secs: Option<u64>,
}

/// One target: what it merges and where it syncs.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    /// Sync jobs the target is split into (by a hash of each name), 1 to 256. Default: 1.
    pub shards: Option<u32>,
    /// Sources and targets merged in, in order. Example: `[common, Staging]`.
    #[serde(default)]
    pub imports: Vec<String>,
    /// A parent target whose merged result this one starts from. Example: `Base`.
    pub inherits: Option<String>,
    /// Where the target's secrets are written.
    pub store: Option<RawStore>,
    /// An AWS account: the target is that account's Secrets Manager (instead of `store`).
    #[schemars(with = "Option<AccountId>")]
    pub account_id: Option<String>,
    /// Delete orphans vss owns here. Default: `pipeline.sync.delete_orphans`.
    pub delete: Option<bool>,
    /// How lists from later layers combine. Default: `append`.
    pub list_merge: Option<ListMerge>,
    /// With `account_id`: the region.
    pub region: Option<String>,
    /// With `account_id`: the role to assume.
    pub role_arn: Option<String>,
    /// With `account_id`: prepended to every secret name.
    pub secret_prefix: Option<String>,
}

/// A target, or the shorthand list of its imports (schema only).
#[derive(JsonSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum TargetOrImports {
    /// The full form.
    Target(Box<RawTarget>),
    /// `Name: [source, OtherTarget]`.
    Imports(Vec<String>),
}

/// `log:`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    /// A `RUST_LOG`-style filter. Example: `info` or `vss=debug`.
    pub level: Option<String>,
    /// `text` (default) or `json`.
    pub format: Option<LogFormat>,
}

/// Accepts the reference format's shorthands before typed deserialization: a target written
/// as a bare list is its `imports`, and a numeric `account_id` is text.
pub(crate) fn normalize_shorthands(root: &mut Value) {
    let Some(Value::Object(targets)) = root.get_mut("targets") else {
        return;
    };
    for target in targets.values_mut() {
        if let Value::Array(imports) = target {
            *target = serde_json::json!({ "imports": std::mem::take(imports) });
        }
        if let Some(id @ Value::Number(_)) = target.get_mut("account_id") {
            *id = Value::String(id.to_string());
        }
    }
}

/// Every place of `doc` that holds a credential reference.
fn credential_paths(doc: &Document) -> Vec<KeyPath> {
    let mut paths: Vec<KeyPath> = [
        &["vault", "auth", "token"][..],
        &["vault", "auth", "token", "token"],
        &["vault", "auth", "approle", "role_id"],
        &["vault", "auth", "approle", "secret_id"],
        &["execution", "nats", "token"],
        &["execution", "nats", "nkey"],
        &["hash_key"],
    ]
    .iter()
    .map(|p| path(p))
    .collect();
    let names = |at: &[&str]| -> Vec<String> {
        doc.get(&path(at))
            .and_then(Value::as_object)
            .map_or_else(Vec::new, |m| m.keys().cloned().collect())
    };
    for list in ["tokens", "webhook_secrets"] {
        let count = doc.get(&path(&["serve", list])).and_then(Value::as_array).map_or(0, Vec::len);
        paths.extend((0..count).map(|i| {
            let mut at = path(&["serve", list]);
            at.push(Segment::Index(i));
            at
        }));
    }
    let mut stores: Vec<KeyPath> = vec![path(&["source"]), path(&["merge_store"])];
    stores.extend(names(&["sources"]).iter().map(|n| path(&["sources", n])));
    stores.extend(names(&["targets"]).iter().map(|n| path(&["targets", n, "store"])));
    for store in stores {
        let within = |more: &[&str]| {
            let mut at = store.clone();
            at.extend(more.iter().map(|k| key(k)));
            at
        };
        paths.push(within(&["github", "token"]));
        paths.push(within(&["github", "app", "private_key"]));
        let headers = within(&["http", "headers"]);
        if let Some(Value::Object(map)) = doc.get(&headers) {
            paths.extend(map.keys().map(|name| {
                let mut at = headers.clone();
                at.push(key(name));
                at
            }));
        }
    }
    paths
}

/// Credentials in the config must stay references: `${NAME}` becomes `{env: NAME}` (the
/// reference configs' spelling), and a literal value is refused without being quoted (and
/// removed: its path is returned, so its absence is not reported again).
pub(crate) fn credential_references(
    doc: &mut Document,
    file: &str,
) -> (Vec<Diagnostic>, Vec<KeyPath>) {
    let mut diags = Vec::new();
    let mut removed = Vec::new();
    for at in credential_paths(doc) {
        if !matches!(doc.get(&at), Some(Value::String(_))) {
            continue;
        }
        match doc.env_reference(&at).map(str::to_string) {
            Some(name) => {
                doc.replace(&at, serde_json::json!({ "env": name }));
            }
            None => {
                let message = "a credential cannot be written in the config: use `${NAME}`, \
                               `{ env: NAME }` or `{ file: PATH }`";
                let line = doc.line_of(&at);
                diags.push(Diagnostic::at(file, line, display_path(&at), message.into()));
                doc.remove(&at);
                removed.push(at);
            }
        }
    }
    // The reference format nests the token once more: `token: { token: ${VAULT_TOKEN} }`.
    let nested = path(&["vault", "auth", "token"]);
    if let Some(inner) = doc.get(&nested).and_then(|t| t.get("token")).cloned() {
        doc.replace(&nested, inner);
    }
    (diags, removed)
}

/// Deserializes the raw config, collecting every unknown key and type error: each failure is
/// recorded, its node removed, and deserialization tried again. When what remains
/// deserializes, it comes back with the diagnostics, so the later checks can add theirs.
/// Nodes already `removed` (and reported) are not reported again as missing.
pub(crate) fn deserialize(
    doc: &mut Document,
    file: &str,
    mut removed: Vec<KeyPath>,
) -> (Option<RawConfig>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    for _ in 0..64 {
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(&doc.root) {
            Ok(raw) => return (Some(raw), diags),
            Err(err) => err,
        };
        let at = error_path(err.path());
        let message = err.into_inner().to_string();
        if let Some(field) =
            message.strip_prefix("missing field `").and_then(|m| m.split('`').next())
        {
            let mut missing = at.clone();
            missing.push(key(field));
            if !removed.contains(&missing) {
                let message = format!("missing required key `{field}`");
                diags.push(Diagnostic::at(file, doc.line_of(&at), display_path(&at), message));
            }
            return (None, diags);
        }
        let message = explain(&message, doc.is_from_env(&at));
        diags.push(Diagnostic::at(file, doc.line_of(&at), display_path(&at), message));
        if !doc.remove(&at) {
            return (None, diags);
        }
        removed.push(at);
    }
    diags.push(Diagnostic::at(
        file,
        None,
        String::new(),
        "… and more errors of this kind: fix these and run `vss validate` again".into(),
    ));
    (None, diags)
}

/// The key path of a deserialization error.
fn error_path(path: &serde_path_to_error::Path) -> KeyPath {
    path.iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// Turns a serde message into one for people: "did you mean", and no quoted values from the
/// environment.
fn explain(message: &str, from_env: bool) -> String {
    for (prefix, what) in
        [("unknown field `", "unknown key"), ("unknown variant `", "unknown kind")]
    {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let mut out = if from_env {
                format!("{what} (value from the environment, not shown)")
            } else {
                let mut out = format!("{what} `{name}`");
                out.push_str(&super::check::hint(name, known.iter().copied()));
                out
            };
            if !known.is_empty() {
                out.push_str(&format!("; expected one of: {}", known.join(", ")));
            }
            return out;
        }
    }
    if from_env {
        if let Some(rest) = message.strip_prefix("invalid type: ") {
            let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
            return format!(
                "wrong type (value from the environment, not shown); expected {expected}"
            );
        }
        return "invalid value (value from the environment, not shown)".into();
    }
    message.replacen("invalid type: ", "wrong type: ", 1)
}
