//! The YAML config: what users write, how it is loaded, and `validate`.
//!
//! Loading is one pure pass: text → [`yaml::Document`] (lines, `${VAR}`) → raw serde types
//! (unknown keys rejected) → [`Config`] (names resolved, rules checked). Every problem found on
//! the way becomes a [`Diagnostic`] naming file, line and key, and all of them are returned at
//! once.

mod raw;
pub mod yaml;

/// The closest known name to a mistyped one, if one is close enough to be a likely typo.
pub use raw::did_you_mean as suggest;

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
}

/// A run refuses to delete more than `percent`% of a target's secrets when that is also more
/// than `count` secrets, unless mass deletion is allowed explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteThreshold {
    /// Largest share of a target's secrets one run may delete, in percent.
    pub percent: f64,
    /// Deletions up to this many are always allowed.
    pub count: u64,
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

/// Where secrets live. One variant per store backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreSpec {
    /// A folder of JSON files: secret `a/b` is `<dir>/a/b.json`.
    File {
        /// The folder (absolute once loaded).
        dir: PathBuf,
    },
    /// A folder of a Vault (or OpenBao) KV v2 mount (boxed: far larger than a path).
    Vault(Box<VaultSpec>),
    /// AWS Secrets Manager in one region, optionally under a name prefix.
    AwsSm(Box<AwsSmSpec>),
    /// An S3 bucket (a merge store): one JSON object per secret under a key prefix.
    S3(Box<S3Spec>),
    /// An HTTP endpoint returning `{name: {key: value}}` (a source).
    Http(Box<HttpSpec>),
    /// A GitHub repository's Actions secrets (a write-only target).
    Github(Box<GithubSpec>),
    /// Kubernetes Secrets in a namespace (a target).
    Kubernetes(Box<KubernetesSpec>),
    /// GCP Secret Manager secrets of a project (a source or a target).
    Gcp(Box<GcpSpec>),
}

/// Where a GCP Secret Manager store lives. Credentials are Application Default Credentials
/// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials, or the metadata server).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcpSpec {
    /// The project id.
    pub project: String,
    /// Secret ids start with this (`[A-Za-z0-9_-]`); names are relative to it.
    pub prefix: String,
    /// Labels set on every secret vss creates or adopts, beside `vss-managed-by`.
    pub labels: BTreeMap<String, String>,
    /// The API's base URL (default `https://secretmanager.googleapis.com`): a private or
    /// regional endpoint.
    pub endpoint: Option<String>,
}

/// How a GitHub target authenticates: references, read by the process that syncs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GithubAuth {
    /// A personal access token (fine-grained or classic).
    Token(SecretRef),
    /// A GitHub App installation: a JWT signed with the app's private key buys short-lived
    /// installation tokens (renewed before they expire).
    App {
        /// The app's id.
        app_id: u64,
        /// The installation's id.
        installation_id: u64,
        /// The app's private key (PEM).
        private_key: SecretRef,
    },
}

/// The secrets a GitHub target writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GithubScope {
    /// A repository's Actions secrets.
    Repository {
        /// The owner (a user or an organization).
        owner: String,
        /// The repository.
        repo: String,
    },
    /// A repository environment's secrets.
    Environment {
        /// The owner.
        owner: String,
        /// The repository.
        repo: String,
        /// The environment.
        environment: String,
    },
    /// An organization's Actions secrets.
    Organization {
        /// The organization.
        org: String,
        /// Which repositories see them: `all`, `private` or `selected`.
        visibility: String,
        /// With `selected`: the repositories (names in the organization).
        selected_repositories: Vec<String>,
    },
}

/// Where a Kubernetes target lives. Credentials come from the in-cluster service account or
/// the kubeconfig of the process that syncs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KubernetesSpec {
    /// The namespace.
    pub namespace: String,
    /// A kubeconfig context (default: the current one).
    pub context: Option<String>,
    /// `Some`: every secret is a key of this one Secret; `None`: one Secret per secret.
    pub name: Option<String>,
}

/// Where a GitHub Actions secrets target lives. The token is a reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GithubSpec {
    /// Whose secrets: a repository's, one of its environments', or an organization's.
    pub scope: GithubScope,
    /// How vss authenticates.
    pub auth: GithubAuth,
    /// The REST API's base URL (`https://api.github.com`, GitHub Enterprise's, or a test's).
    pub api_url: String,
}

/// Where an HTTP source is fetched from. Header values are references, never values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpSpec {
    /// The URL.
    pub url: String,
    /// Request headers, by name.
    pub headers: BTreeMap<String, SecretRef>,
    /// Seconds before a request is abandoned.
    pub timeout_secs: u64,
}

/// Where an S3 store lives. Credentials come from the default chain of the process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct S3Spec {
    /// The bucket.
    pub bucket: String,
    /// Prepended to every key (e.g. `merged/`).
    pub prefix: String,
    /// The bucket's region.
    pub region: String,
    /// An endpoint override (tests, VPC endpoints); path-style addressing is used with one.
    pub endpoint: Option<String>,
}

/// Where an AWS Secrets Manager store lives. Credentials come from the default chain of the
/// process that uses it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AwsSmSpec {
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// An endpoint override (tests, VPC endpoints).
    pub endpoint: Option<String>,
    /// Prepended to every secret name (e.g. `app/`); empty for none.
    pub prefix: String,
    /// A role to assume (another account's), if any.
    pub role_arn: Option<String>,
    /// The external id the role's trust policy asks for.
    pub external_id: Option<String>,
    /// Days a deleted secret stays recoverable (7–30).
    pub recovery_window_days: i64,
    /// Delete at once, without a recovery window (only if configured).
    pub force_delete: bool,
}

/// Where a Vault store lives and how to reach it. Holds references, never a token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VaultSpec {
    /// The server, e.g. `https://vault.example.com:8200`.
    pub address: String,
    /// The Vault Enterprise / OpenBao namespace, if any.
    pub namespace: Option<String>,
    /// How to log in.
    pub auth: VaultAuth,
    /// The KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// The folder inside the mount (no leading or trailing `/`; empty for the whole mount).
    pub prefix: String,
    /// Sources only: glob patterns (relative to the folder) of the secrets to read; `*`
    /// stays within one path segment, `**` spans any number. Empty: everything.
    #[serde(default)]
    pub paths: Vec<String>,
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::File { dir } => write!(f, "file:{}", dir.display()),
            StoreSpec::S3(b) => write!(f, "s3://{}/{}", b.bucket, b.prefix),
            StoreSpec::Http(h) => write!(f, "http:{}", h.url),
            StoreSpec::Github(g) => match &g.scope {
                GithubScope::Repository { owner, repo } => write!(f, "github:{owner}/{repo}"),
                GithubScope::Environment { owner, repo, environment } => {
                    write!(f, "github:{owner}/{repo}@{environment}")
                }
                GithubScope::Organization { org, .. } => write!(f, "github:{org}"),
            },
            StoreSpec::Gcp(g) => write!(f, "gcp:{}/{}", g.project, g.prefix),
            StoreSpec::Kubernetes(k) => {
                write!(f, "kubernetes:")?;
                if let Some(context) = &k.context {
                    write!(f, "{context}/")?;
                }
                write!(f, "{}", k.namespace)?;
                match &k.name {
                    Some(name) => write!(f, "/{name}"),
                    None => Ok(()),
                }
            }
            StoreSpec::AwsSm(a) => {
                write!(f, "aws-sm:{}/{}", a.region, a.prefix)?;
                match &a.role_arn {
                    Some(role) => write!(f, " via {role}"),
                    None => Ok(()),
                }
            }
            StoreSpec::Vault(v) => {
                write!(f, "vault:{}/{}", v.address.trim_end_matches('/'), v.mount)?;
                if !v.prefix.is_empty() {
                    write!(f, "/{}", v.prefix)?;
                }
                Ok(())
            }
        }
    }
}

/// How a Vault store logs in: references to credentials, never their values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VaultAuth {
    /// A token.
    Token(SecretRef),
    /// AppRole login; the token it returns is renewed before it expires.
    AppRole {
        /// The auth mount, e.g. `approle`.
        mount: String,
        /// The role id.
        role_id: SecretRef,
        /// The secret id.
        secret_id: SecretRef,
    },
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
}

/// A reference to a secret the process reads from its own environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// An environment variable's name.
    Env(String),
    /// A file's path.
    File(PathBuf),
}

impl SecretRef {
    /// The referenced text, trimmed, read from this process's environment or a file. The
    /// error names the variable or file, never any content.
    pub fn read(&self) -> Result<zeroize::Zeroizing<String>, String> {
        let text = zeroize::Zeroizing::new(match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        });
        Ok(zeroize::Zeroizing::new(text.trim().to_string()))
    }
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Reads and validates a config file; relative paths in it are taken from its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        Self::from_yaml(&text, &path.display().to_string(), &base, &|name| std::env::var(name).ok())
    }

    /// Parses and validates config text. Pure: the environment is passed in as `env`.
    pub fn from_yaml(
        text: &str,
        file: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let doc = yaml::parse(text, file, env).map_err(ConfigError::Invalid)?;
        raw::build(doc, file, base_dir, env).map_err(ConfigError::Invalid)
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
