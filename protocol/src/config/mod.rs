//! The YAML config: what users write, how it is loaded, and `validate`.
//!
//! Loading is one pure pass: text → [`yaml::Document`] (lines, `${VAR}`) → raw serde types
//! (unknown keys rejected) → [`Config`] (names resolved, rules checked). Every problem found on
//! the way becomes a [`Diagnostic`] naming file, line and key, and all of them are returned at
//! once.

mod build;
mod check;
mod raw;
mod secret_ref;
pub mod stores;
pub mod yaml;

/// The closest known name to a mistyped one, if one is close enough to be a likely typo.
pub use check::did_you_mean as suggest;
pub use secret_ref::SecretRef;
pub use stores::{
    AwsSmSpec, GcpSpec, GithubAuth, GithubScope, GithubSpec, HttpSpec, KubernetesSpec, S3Spec,
    StoreIdentity, StoreSpec, VaultAuth, VaultConnection, VaultSpec,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::merge::ListMerge;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file as the user named it.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key path, e.g. `targets.Prod.imports[0]`; empty for the whole file.
    pub key: String,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at a line and key.
    pub fn at(file: &str, line: Option<usize>, key: String, message: String) -> Self {
        Self { file: file.to_string(), line, key, message }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has one or more problems.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diags: &[Diagnostic]) -> String {
    let mut out =
        format!("config has {} error{}:", diags.len(), if diags.len() == 1 { "" } else { "s" });
    for d in diags {
        out.push_str("\n  ");
        out.push_str(&d.to_string());
    }
    out
}

/// A loaded, validated config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Phase switches and run defaults.
    pub pipeline: PipelineSettings,
    /// Where merged results are kept, one folder per target.
    pub merge_store: Option<StoreSpec>,
    /// The state ledger: ownership records, hashes, the hash key.
    pub state: StateSpec,
    /// Whether `state` is the default (not in the config): then a run made distributed by
    /// `--nats` keeps it in NATS too ([`Config::distribute`]).
    pub state_is_default: bool,
    /// The source of every target when the merge phase does not run.
    pub source: Option<StoreSpec>,
    /// Named sources that targets import.
    pub sources: BTreeMap<String, StoreSpec>,
    /// The targets, by name.
    pub targets: BTreeMap<String, Target>,
    /// Logging defaults (`RUST_LOG` and flags take precedence).
    pub log: LogSettings,
    /// Where the content-hash key comes from; `None`: generated once, kept in the ledger.
    pub hash_key: Option<SecretRef>,
    /// `execution.nats`: run jobs on `vss worker`s over NATS JetStream instead of in-process.
    pub nats: Option<NatsSpec>,
    /// `serve:`: the run API of `vss serve`.
    pub serve: ServeSettings,
}

/// Who may trigger runs through `vss serve`, and which GitHub pushes trigger what
/// (`serve:`). Credentials are references, read by the serving process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeSettings {
    /// Bearer tokens accepted (several: rotation).
    pub tokens: Vec<SecretRef>,
    /// Webhook secrets whose HMAC-SHA256 signatures are accepted (several: rotation).
    pub webhook_secrets: Vec<SecretRef>,
    /// GitHub `push` ref (or `*`) → the targets it runs (empty: all).
    pub github_push: BTreeMap<String, Vec<String>>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            webhook_secrets: Vec::new(),
            github_push: BTreeMap::new(),
            max_body_bytes: 1 << 20,
        }
    }
}

/// How to reach NATS for distributed runs (`execution.nats`). Credentials are references,
/// read by the process that connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsSpec {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// A `.creds` file (JWT + NKey seed).
    pub credentials: Option<PathBuf>,
    /// A token.
    pub token: Option<SecretRef>,
    /// An NKey seed.
    pub nkey: Option<SecretRef>,
    /// A CA certificate (PEM) to verify a TLS server with.
    pub tls_ca: Option<PathBuf>,
    /// A job that no worker finishes within this many seconds fails.
    pub job_timeout_secs: u64,
}

impl NatsSpec {
    /// The default of [`NatsSpec::job_timeout_secs`]: 15 minutes.
    pub const DEFAULT_JOB_TIMEOUT_SECS: u64 = 900;
}

/// Phase switches and run defaults (`pipeline:`).
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSettings {
    /// Whether the merge phase runs (default: when a merge store is configured).
    pub merge_enabled: bool,
    /// Merge jobs run at once.
    pub merge_parallel: usize,
    /// Whether the sync phase runs.
    pub sync_enabled: bool,
    /// Sync jobs run at once.
    pub sync_parallel: usize,
    /// Delete orphans in every target (reference spelling of per-target `delete: true`).
    pub delete_orphans: bool,
    /// The mass-delete guard.
    pub delete_threshold: DeleteThreshold,
    /// Plan only, as with `--dry-run`.
    pub dry_run: bool,
    /// Keep running other targets after one fails.
    pub continue_on_error: bool,
    /// How long store calls may take.
    pub timeouts: Timeouts,
}

/// How long store calls may take (`pipeline.timeouts`), so a store that is gone or hung
/// fails its job in seconds: each request connects within `connect_secs` and is answered
/// within `request_secs`; a store failing for `outage_secs` (or failing repeatedly for 10 s)
/// fails its remaining calls at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timeouts {
    /// Seconds to establish a connection.
    pub connect_secs: u64,
    /// Seconds a request may take in all.
    pub request_secs: u64,
    /// Seconds a store may stay unreachable before its remaining calls fail at once.
    pub outage_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { connect_secs: 5, request_secs: 20, outage_secs: 40 }
    }
}

impl Timeouts {
    /// [`Timeouts::connect_secs`] as a duration.
    pub fn connect(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.connect_secs)
    }

    /// [`Timeouts::request_secs`] as a duration.
    pub fn request(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.request_secs)
    }

    /// [`Timeouts::outage_secs`] as a duration.
    pub fn outage(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.outage_secs)
    }
}

/// A run refuses to delete more than `percent`% of a target's secrets when that is also more
/// than `count` secrets, unless mass deletion is allowed explicitly.
///
/// Deserializing (a job off the wire) refuses a `percent` outside `0..=100`, as the config's
/// `validate` does: a NaN would compare false everywhere and silently lift the guard.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ThresholdFields")]
pub struct DeleteThreshold {
    /// Largest share of a target's secrets one run may delete, in percent.
    pub percent: f64,
    /// Deletions up to this many are always allowed.
    pub count: u64,
}

/// [`DeleteThreshold`] as it travels, before its range is checked.
#[derive(Deserialize)]
struct ThresholdFields {
    percent: f64,
    count: u64,
}

impl TryFrom<ThresholdFields> for DeleteThreshold {
    type Error = String;

    fn try_from(fields: ThresholdFields) -> Result<Self, Self::Error> {
        let ThresholdFields { percent, count } = fields;
        if (0.0..=100.0).contains(&percent) {
            Ok(Self { percent, count })
        } else {
            Err(format!("delete threshold percent {percent} is not within 0..=100"))
        }
    }
}

impl Default for DeleteThreshold {
    fn default() -> Self {
        Self { percent: 10.0, count: 5 }
    }
}

impl DeleteThreshold {
    /// Whether deleting `deletes` of a target's `existing` secrets exceeds the threshold.
    pub fn exceeded(&self, deletes: u64, existing: u64) -> bool {
        deletes > self.count && (deletes as f64) > (existing as f64) * self.percent / 100.0
    }
}

/// One target.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// What it merges, in order: a parent's merged result or a named source.
    pub layers: Vec<Layer>,
    /// Where its secrets are written.
    pub store: StoreSpec,
    /// Whether orphans that vss owns are deleted.
    pub delete: bool,
    /// How lists from later layers combine.
    pub list_merge: ListMerge,
    /// Sync jobs the target is split into (by a hash of each secret's name), so several
    /// workers share a large target; 1 = one job.
    pub shards: u32,
}

impl Target {
    /// The targets whose merged result this one builds on.
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().filter_map(|l| match l {
            Layer::Target(t) => Some(t.as_str()),
            Layer::Source(_) => None,
        })
    }
}

/// One input of a target's merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// A parent target's merged result (`inherits`, or a target named in `imports`).
    Target(String),
    /// A named source.
    Source(String),
}

/// Where the state ledger lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateSpec {
    /// A folder on disk.
    File {
        /// The folder (absolute once loaded).
        path: PathBuf,
    },
    /// A NATS JetStream key-value bucket, reached through each process's own NATS
    /// connection (a worker's, or the coordinator's).
    Nats {
        /// The bucket.
        bucket: String,
    },
}

impl StateSpec {
    /// The bucket of a ledger in NATS unless the config names another.
    pub const DEFAULT_BUCKET: &str = "vss-state";
}

/// Logging defaults from the config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogSettings {
    /// A `RUST_LOG`-style filter, e.g. `info` or `vss=debug`.
    pub level: Option<String>,
    /// `text` or `json`.
    pub format: Option<LogFormat>,
}

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Runs on the fleet at `nats` from now on: a default ledger moves to NATS with it (a
    /// folder is not shared by workers on other machines).
    pub fn distribute(&mut self, nats: NatsSpec) {
        if self.state_is_default {
            self.state = StateSpec::Nats { bucket: StateSpec::DEFAULT_BUCKET.into() };
        }
        self.nats = Some(nats);
    }

    /// What is valid but likely a mistake, for `vss validate` to print.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let (Some(_), StateSpec::File { path }) = (&self.nats, &self.state)
            && self.hash_key.is_none()
        {
            warnings.push(format!(
                "state: the run is distributed (execution.nats) but the ledger is the folder {}: \
                 workers on other machines each keep their own records and hash key, so hashes \
                 never match across them and every run rewrites everything. Keep the ledger in \
                 NATS (`state: {{ nats: {{}} }}`, the default when `state` is left out), or share \
                 the folder and give `hash_key` as a reference",
                path.display()
            ));
        }
        warnings
    }

    /// Parses and validates config text. Pure: the environment is passed in as `env`.
    pub fn from_yaml(
        text: &str,
        file: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let doc = yaml::parse(text, file, env).map_err(ConfigError::Invalid)?;
        build::build(doc, file, base_dir, env).map_err(ConfigError::Invalid)
    }

    /// The JSON Schema of the config file (draft 2020-12), generated from the types the
    /// loader deserializes, with their docs as descriptions: editors complete and check
    /// `vss.yaml` with it. Rules across keys (names that must exist, cycles) are `validate`'s.
    pub fn schema() -> serde_json::Value {
        serde_json::Value::from(schemars::schema_for!(raw::RawConfig))
    }

    /// Target names in an order where every parent comes before its children.
    pub fn topological_order(&self) -> Vec<&str> {
        let mut order: Vec<&str> = Vec::with_capacity(self.targets.len());
        let mut placed = std::collections::BTreeSet::new();
        while order.len() < self.targets.len() {
            let before = order.len();
            for (name, target) in &self.targets {
                if !placed.contains(name.as_str()) && target.parents().all(|p| placed.contains(p)) {
                    placed.insert(name.as_str());
                    order.push(name);
                }
            }
            assert!(order.len() > before, "validated configs have no inheritance cycles");
        }
        order
    }
}

#[cfg(test)]
mod tests;
