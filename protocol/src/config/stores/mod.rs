//! One room per store backend: what users write (`Raw*`, with the docs editors show), what it
//! becomes once checked (`*Spec`), the check itself, and the store's label.
//!
//! A backend's check receives a [`StoreCheck`]: where the store sits in the config (its key
//! path and its [`Role`]), the connection blocks it may need (`vault:`, `aws:`), and the
//! collector of diagnostics.

pub mod aws;
pub mod file;
pub mod gcp;
pub mod github;
pub mod http;
pub mod kubernetes;
pub mod s3;
pub mod vault;

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::check::{Checker, key};
use super::yaml::{KeyPath, Segment};

pub use aws::AwsSmSpec;
pub use gcp::GcpSpec;
pub use github::{GithubAuth, GithubScope, GithubSpec};
pub use http::HttpSpec;
pub use kubernetes::KubernetesSpec;
pub use s3::S3Spec;
pub use vault::{VaultAuth, VaultConnection, VaultSpec};

/// A store as written: exactly one backend key, e.g. `{ vault: { path: secret/app } }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum RawStore {
    /// A folder of JSON files (source, merge store, target).
    File(file::RawFileStore),
    /// A folder of a Vault / OpenBao KV v2 mount (source, merge store, target).
    Vault(vault::RawVaultStore),
    /// AWS Secrets Manager (source, target).
    Aws(aws::RawAwsStore),
    /// An S3 bucket (merge store).
    S3(s3::RawS3Store),
    /// A JSON document fetched over HTTP (source).
    Http(http::RawHttpStore),
    /// GCP Secret Manager (source, target).
    Gcp(gcp::RawGcpStore),
    /// GitHub Actions secrets (target).
    Github(github::RawGithubStore),
    /// Kubernetes Secrets (target).
    Kubernetes(kubernetes::RawKubernetesStore),
}

/// What a store is used for, from where it sits in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// `source:` or `sources.<name>`: only read.
    Source,
    /// `merge_store:`: read and written by vss alone.
    MergeStore,
    /// `targets.<name>.store` (or an `account_id` target): written.
    Target,
}

impl Role {
    /// The role of a store at `at`, from its first key.
    pub(crate) fn of(at: &[Segment]) -> Self {
        match at.first() {
            Some(Segment::Key(k)) if k == "sources" || k == "source" => Role::Source,
            Some(Segment::Key(k)) if k == "merge_store" => Role::MergeStore,
            _ => Role::Target,
        }
    }
}

/// Everything a backend's check may need.
pub(crate) struct StoreCheck<'c, 'd> {
    /// Collects diagnostics.
    pub ck: &'c mut Checker<'d>,
    /// The key path of the backend's block, e.g. `sources.app.vault`.
    pub at: KeyPath,
    /// What the store is used for.
    pub role: Role,
    /// The config file's folder: relative paths start there.
    pub base: &'c Path,
    /// The environment (injected: loading stays pure).
    pub env: &'c dyn Fn(&str) -> Option<String>,
    /// The `vault:` connection, resolved once.
    pub vault: &'c vault::Connection,
    /// The `aws:` block, if any.
    pub aws: Option<&'c aws::RawAws>,
}

impl<'c, 'd> StoreCheck<'c, 'd> {
    /// A check of the store block at `at`, used as `role`.
    pub(crate) fn new(
        ck: &'c mut Checker<'d>,
        at: KeyPath,
        role: Role,
        ctx: &'c super::build::Context,
    ) -> Self {
        Self { ck, at, role, base: ctx.base, env: ctx.env, vault: &ctx.vault, aws: ctx.aws }
    }

    /// Reports `message` at the backend's block.
    pub fn error(&mut self, message: impl Into<String>) {
        let at = self.at.clone();
        self.ck.error(&at, message.into());
    }

    /// Reports `message` at a key inside the backend's block.
    pub fn error_at(&mut self, inside: &[&str], message: impl Into<String>) {
        let at = self.within(inside);
        self.ck.error(&at, message.into());
    }

    /// The key path of `inside` within the backend's block.
    pub fn within(&self, inside: &[&str]) -> KeyPath {
        let mut at = self.at.clone();
        at.extend(inside.iter().map(|k| key(k)));
        at
    }

    /// A path from the config, made absolute.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.base.join(path)
    }

    /// Refuses the store in this role (e.g. a read-only store as a target).
    pub fn refuse_unless(&mut self, allowed: &[Role], message: &str) -> bool {
        if allowed.contains(&self.role) {
            return true;
        }
        self.error(message);
        false
    }
}

impl RawStore {
    /// Checks the store found at `at` (the key path of the `{kind: ...}` mapping).
    pub(crate) fn check(
        &self,
        ck: &mut Checker,
        at: KeyPath,
        ctx: &super::build::Context,
    ) -> Option<StoreSpec> {
        let role = Role::of(&at);
        let mut at = at;
        at.push(key(self.kind()));
        let mut cx = StoreCheck::new(ck, at, role, ctx);
        match self {
            RawStore::File(s) => s.check(&mut cx),
            RawStore::Vault(s) => s.check(&mut cx),
            RawStore::Aws(s) => s.check(&mut cx),
            RawStore::S3(s) => s.check(&mut cx),
            RawStore::Http(s) => s.check(&mut cx),
            RawStore::Gcp(s) => s.check(&mut cx),
            RawStore::Github(s) => s.check(&mut cx),
            RawStore::Kubernetes(s) => s.check(&mut cx),
        }
    }

    /// The backend's key as written.
    fn kind(&self) -> &'static str {
        match self {
            RawStore::File(_) => "file",
            RawStore::Vault(_) => "vault",
            RawStore::Aws(_) => "aws",
            RawStore::S3(_) => "s3",
            RawStore::Http(_) => "http",
            RawStore::Gcp(_) => "gcp",
            RawStore::Github(_) => "github",
            RawStore::Kubernetes(_) => "kubernetes",
        }
    }
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

/// A store's canonical identity: what ledger records (ownership) are bound to. Versioned
/// (`v1:`), and made of what names the store's contents (server, namespace, mount and folder;
/// account, region and prefix; project; scope), never of credentials or spelling: a trailing
/// slash, a default port, letter case where the service ignores it, or which role reaches an
/// account do not change it. Labels ([`StoreSpec`]'s `Display`) are for people only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoreIdentity(String);

impl StoreIdentity {
    /// The current identity scheme's prefix.
    const VERSION: &'static str = "v1";

    fn new(kind: &str, parts: &[&str]) -> Self {
        Self(format!("{}:{kind}:{}", Self::VERSION, parts.join("|")))
    }

    /// The identity as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl StoreSpec {
    /// Whether the store reads secret `name` (only Vault sources narrow this, with `paths`).
    pub fn covers(&self, name: &str) -> bool {
        match self {
            StoreSpec::Vault(v) => v.covers(name),
            _ => true,
        }
    }

    /// Whether the store keeps every secret name as given (GitHub, Kubernetes and GCP
    /// respell names, so two names can collide there).
    pub fn keeps_names(&self) -> bool {
        !matches!(self, StoreSpec::Github(_) | StoreSpec::Kubernetes(_) | StoreSpec::Gcp(_))
    }

    /// Whether the server itself refuses a write or delete made against a version it no
    /// longer holds (Vault's check-and-set, S3's `If-Match`), whoever else writes, from any
    /// process: the stores with atomic conditional writes.
    pub fn refuses_stale_writes(&self) -> bool {
        matches!(self, StoreSpec::Vault(_) | StoreSpec::S3(_))
    }

    /// The store's canonical identity (see [`StoreIdentity`]).
    pub fn identity(&self) -> StoreIdentity {
        match self {
            StoreSpec::File { dir } => {
                let dir: PathBuf = dir.components().collect();
                StoreIdentity::new("file", &[&dir.to_string_lossy()])
            }
            StoreSpec::Vault(s) => s.identity(),
            StoreSpec::AwsSm(s) => s.identity(),
            StoreSpec::S3(s) => s.identity(),
            StoreSpec::Http(s) => s.identity(),
            StoreSpec::Github(s) => s.identity(),
            StoreSpec::Kubernetes(s) => s.identity(),
            StoreSpec::Gcp(s) => s.identity(),
        }
    }
}

/// A URL as it identifies a server: scheme and host in lower case, no default port, no
/// userinfo, query or fragment, no trailing slash.
pub(crate) fn canonical_url(text: &str) -> String {
    match url::Url::parse(text.trim()) {
        Ok(url) => {
            let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
            if let Some(port) = url.port() {
                out.push_str(&format!(":{port}"));
            }
            out.push_str(url.path().trim_end_matches('/'));
            out
        }
        Err(_) => text.trim().trim_end_matches('/').to_string(),
    }
}

/// A URL for labels: as written, without userinfo, query, fragment or trailing slash (they
/// may hold credentials).
pub fn display_url(text: &str) -> String {
    // Anything a parser could read another host out of is shown as the parser reads it.
    if text.contains(['@', '\\', '?', '#']) {
        return canonical_url(text);
    }
    let text = text.split(['?', '#']).next().unwrap_or_default();
    let text = match text.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => text.to_string(),
    };
    text.trim_end_matches('/').to_string()
}

impl StoreSpec {
    /// Where the store's requests go, with every field that routes them (server as a URL
    /// parser reads it, endpoint, namespace, account role, API URL, folder): what a worker's
    /// `--allow-store` patterns are matched against. `None` when a path in it climbs out of
    /// its folder (`..`), which no pattern may allow.
    pub fn location(&self) -> Option<String> {
        let aws = "https://amazonaws.com".to_string();
        let endpoint = |e: &Option<String>| e.as_deref().map_or(aws.clone(), canonical_url);
        let location = match self {
            StoreSpec::File { dir } => format!("file:{}", plain_path(dir)?),
            StoreSpec::Vault(s) => {
                let c = &s.connection;
                let ns =
                    c.namespace.as_deref().map(|n| format!("?namespace={n}")).unwrap_or_default();
                format!("vault:{}/{}/{}{ns}", canonical_url(&c.address), s.mount, s.prefix)
            }
            StoreSpec::AwsSm(s) => format!(
                "aws-sm:{}/{}/{} via {}",
                endpoint(&s.endpoint),
                s.region,
                s.prefix,
                s.role_arn.as_deref().unwrap_or("-")
            ),
            StoreSpec::S3(s) => format!("s3:{}/{}/{}", endpoint(&s.endpoint), s.bucket, s.prefix),
            StoreSpec::Http(s) => format!("http:{}", canonical_url(&s.url)),
            StoreSpec::Github(s) => format!("{s} at {}", canonical_url(&s.api_url)),
            StoreSpec::Kubernetes(s) => s.to_string(),
            StoreSpec::Gcp(s) => {
                let api = s
                    .endpoint
                    .as_deref()
                    .map_or("https://secretmanager.googleapis.com".into(), canonical_url);
                format!("gcp:{}/{} at {api}", s.project, s.prefix)
            }
        };
        (!location.split(['/', '\\']).any(|part| part == "..")).then_some(location)
    }

    /// Whether the label names the store completely (no namespace, endpoint or API URL it
    /// leaves out): only then may records bound by label be taken over by identity.
    pub fn label_is_complete(&self) -> bool {
        match self {
            StoreSpec::File { .. } | StoreSpec::Kubernetes(_) => true,
            StoreSpec::Vault(s) => {
                s.connection.namespace.is_none() && !s.connection.address.contains(['@', '\\', '?'])
            }
            StoreSpec::AwsSm(s) => s.endpoint.is_none(),
            StoreSpec::S3(s) => s.endpoint.is_none(),
            StoreSpec::Http(_) => false,
            StoreSpec::Github(s) => s.api_url == "https://api.github.com",
            StoreSpec::Gcp(s) => s.endpoint.is_none(),
        }
    }
}

/// A path with `.` segments dropped; `None` if it holds `..`.
fn plain_path(path: &std::path::Path) -> Option<String> {
    use std::path::Component;
    if path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    let plain: PathBuf = path.components().filter(|c| *c != Component::CurDir).collect();
    Some(plain.display().to_string())
}

/// The store's label, for people: reports, logs, errors.
impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::File { dir } => file::label(f, dir),
            StoreSpec::Vault(s) => s.fmt(f),
            StoreSpec::AwsSm(s) => s.fmt(f),
            StoreSpec::S3(s) => s.fmt(f),
            StoreSpec::Http(s) => s.fmt(f),
            StoreSpec::Github(s) => s.fmt(f),
            StoreSpec::Kubernetes(s) => s.fmt(f),
            StoreSpec::Gcp(s) => s.fmt(f),
        }
    }
}
