//! Where secrets live: the [`SecretStore`] trait, one module per backend, and the state ledger.
//!
//! - [`aws_sm`]: AWS Secrets Manager (source and target).
//! - [`file`]: a folder of JSON files (source, merge store and target).
//! - [`gcp_sm`]: GCP Secret Manager (source and target).
//! - [`github`]: GitHub Actions secrets (write-only target).
//! - [`kubernetes`]: Kubernetes Secrets in a namespace (target).
//! - [`http`]: an HTTP endpoint returning `{name: {key: value}}` (source).
//! - [`s3`]: an S3 bucket under a key prefix (merge store).
//! - [`vault`]: a folder of a Vault / OpenBao KV v2 mount (source, merge store and target).
//! - [`overlay`]: an in-memory layer over a store, so a dry run computes everything and writes
//!   nothing.
//! - [`ledger`]: the state ledger (ownership records, content hashes, the hash key).
//! - [`credentials`]: reading the credentials a config references (env, files).
//!
//! Every backend counts its API calls by operation ([`ApiCalls`]); tests and benchmarks read
//! these counts.

mod aws;
pub mod aws_sm;
pub mod conflict;
pub mod credentials;
pub mod file;
pub mod gcp_sm;
pub mod github;
pub mod http;
pub mod kubernetes;
pub mod ledger;
pub mod overlay;
mod retry;
pub mod s3;
pub mod vault;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vss_protocol::config::{StoreSpec, Timeouts};
use vss_protocol::{ContentHash, HashKey, SecretValue};

/// A store's cheap version of one secret, compared to tell whether it moved since vss wrote
/// it (file: mtime and size; later backends: KV version, etag, resourceVersion …).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub String);

/// One listed secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The secret's name relative to the store's root.
    pub name: String,
    /// Its current version.
    pub version: Version,
    /// What vss stamped into the store's metadata with the current version, if anything.
    pub stamp: Option<Stamp>,
}

/// What vss writes beside a value in stores with metadata (Vault `custom_metadata`, …): the
/// value's content hash and which target owns it. A store reports a stamp back only while it
/// still describes the current version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Keyed hash of the value written.
    pub hash: ContentHash,
    /// The ownership marker, `vss:<target>`.
    pub owner: String,
}

impl Stamp {
    /// The ownership marker of `target`.
    pub fn owner_of(target: &str) -> String {
        format!("vss:{target}")
    }
}

/// A value with the version it was read at.
#[derive(Debug)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its version.
    pub version: Version,
}

/// A condition a write or delete must meet, so a concurrent writer is never overwritten
/// blindly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Unconditional.
    None,
    /// The secret must not exist yet.
    Absent,
    /// The secret must still be at this version.
    Matches(Version),
}

impl Precondition {
    /// Whether a secret currently at `current` (`None`: absent) meets the condition.
    pub fn holds(&self, current: Option<&Version>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::Absent => current.is_none(),
            Precondition::Matches(v) => current == Some(v),
        }
    }
}

/// What a store can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Values can be read back (false for write-only stores such as GitHub).
    pub read_values: bool,
    /// Writes can carry metadata (hash and ownership marker) beside the value.
    pub metadata: bool,
    /// Writes and deletes honour [`Precondition`]s atomically.
    pub conditional_writes: bool,
}

/// The class of a store failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The secret does not exist.
    NotFound,
    /// A precondition failed: someone else wrote first.
    Conflict,
    /// The store asked us to slow down.
    Throttled,
    /// Credentials missing or refused.
    Unauthorized,
    /// The store is down or unreachable.
    Unavailable,
    /// The request or the stored data is invalid.
    Invalid,
    /// A local I/O failure.
    Io,
}

/// A store operation failed. Names the store and the secret, never a value.
#[derive(Clone, Debug, thiserror::Error)]
pub struct StoreError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// The store, e.g. `file:/srv/out`.
    pub store: String,
    /// The secret, if the failure concerns one.
    pub secret: Option<String>,
    /// What happened.
    pub message: String,
    /// How long the store asked us to wait before trying again (`Retry-After`).
    pub retry_after: Option<std::time::Duration>,
}

impl StoreError {
    /// A new error.
    pub fn new(
        kind: ErrorKind,
        store: &str,
        secret: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            store: store.to_string(),
            secret: secret.map(str::to_string),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, with the wait the store asked for.
    pub fn with_retry_after(mut self, wait: Option<std::time::Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    /// A precondition failed: someone else changed `secret` since it was read.
    pub fn conflict(store: &str, secret: &str) -> Self {
        Self::new(
            ErrorKind::Conflict,
            store,
            Some(secret),
            "changed by someone else since it was read",
        )
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Conflict)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {}", self.store)?;
        if let Some(secret) = &self.secret {
            write!(f, ", secret `{secret}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A place secrets live. Names are relative to the store's root and may contain `/`.
#[async_trait::async_trait]
pub trait SecretStore: Send + Sync {
    /// A short description for messages, e.g. `file:/srv/out`.
    fn describe(&self) -> String;

    /// What the store can do.
    fn capabilities(&self) -> Capabilities;

    /// The name secret `name` has in this store. Stores with stricter naming rules map it
    /// (GitHub: `app/db` is `APP_DB`) or refuse it; two names that map to one are a conflict
    /// the caller reports. The default keeps names as they are.
    fn store_name(&self, name: &str) -> Result<String, StoreError> {
        Ok(name.to_string())
    }

    /// Every secret whose name starts with `prefix` (empty, or ending in `/`), with versions.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;

    /// One secret's value, or `None` if it does not exist.
    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError>;

    /// Several secrets' values (`None`: absent), in any order. The default reads them one by
    /// one, 16 at a time; stores with a batch read (AWS `BatchGetSecretValue`) override it.
    async fn read_batch(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<(String, Option<Versioned<SecretValue>>)>, StoreError> {
        use futures_util::{StreamExt, TryStreamExt, stream};
        stream::iter(names)
            .map(|name| async move {
                let found = self.read(&name).await?;
                Ok::<_, StoreError>((name, found))
            })
            .buffer_unordered(16)
            .try_collect()
            .await
    }

    /// Creates or replaces a secret; returns its new version. Callers write only what changed;
    /// a store may also skip rewriting identical content (the file store does).
    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError>;

    /// [`write`](Self::write), and stamps the hash and owner into the store's metadata where it
    /// has any (the default has none to stamp).
    async fn write_stamped(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
        stamp: &Stamp,
    ) -> Result<Version, StoreError> {
        let _ = stamp;
        self.write(name, value, pre).await
    }

    /// Deletes a secret; deleting a missing secret is not an error.
    async fn delete(&self, name: &str, pre: Precondition) -> Result<(), StoreError>;

    /// API calls made so far, by operation.
    fn api_calls(&self) -> BTreeMap<String, u64>;
}

/// Looks up every listed item concurrently (`limit` at a time), keeping the entries found
/// (`None`: gone since the listing), sorted by name: the second half of a listing in stores
/// whose list call returns names only (Vault, GCP).
pub(crate) async fn entries_concurrently<T, F, Fut>(
    items: Vec<T>,
    limit: usize,
    lookup: F,
) -> Result<Vec<Entry>, StoreError>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Entry>, StoreError>>,
{
    use futures_util::{StreamExt, TryStreamExt, stream};
    let mut entries: Vec<Entry> = stream::iter(items)
        .map(lookup)
        .buffer_unordered(limit)
        .try_filter_map(|entry| async move { Ok(entry) })
        .try_collect()
        .await?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Counts a store's API calls by operation.
#[derive(Debug, Default)]
pub struct ApiCalls(Mutex<BTreeMap<&'static str, u64>>);

impl ApiCalls {
    /// Counts one call of `operation`.
    pub fn record(&self, operation: &'static str) {
        *self.0.lock().expect("counter lock").entry(operation).or_default() += 1;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("counter lock").iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
}

/// Opens a store from its spec.
/// `key` is the run's content-hash key; stores that version content themselves (http) need it.
pub fn open(
    spec: &StoreSpec,
    key: Option<&HashKey>,
    timeouts: &Timeouts,
) -> Result<Arc<dyn SecretStore>, StoreError> {
    let run_key = || {
        let missing = || {
            StoreError::new(ErrorKind::Invalid, &spec.to_string(), None, "no content-hash key yet")
        };
        key.cloned().ok_or_else(missing)
    };
    match spec {
        StoreSpec::File { dir } => Ok(Arc::new(file::FileStore::new(dir.clone()))),
        StoreSpec::Vault(spec) => Ok(Arc::new(vault::VaultStore::open(spec, timeouts)?)),
        StoreSpec::AwsSm(spec) => Ok(Arc::new(aws_sm::AwsSmStore::new(spec, timeouts))),
        StoreSpec::S3(spec) => Ok(Arc::new(s3::S3Store::new(spec, timeouts))),
        StoreSpec::Http(spec) => Ok(Arc::new(http::HttpStore::open(spec, run_key()?, timeouts)?)),
        StoreSpec::Github(spec) => Ok(Arc::new(github::GithubStore::open(spec, timeouts)?)),
        StoreSpec::Kubernetes(spec) => {
            Ok(Arc::new(kubernetes::KubernetesStore::new(spec, run_key()?, timeouts)))
        }
        StoreSpec::Gcp(spec) => Ok(Arc::new(gcp_sm::GcpSmStore::new(spec, run_key()?, timeouts))),
    }
}

/// Opens each store once and hands out shared handles. In a dry run every store is wrapped
/// in an [`overlay::OverlayStore`], so later jobs of the run see what earlier ones would have
/// written, and nothing reaches the real store.
pub struct StoreCache {
    dry_run: bool,
    timeouts: Timeouts,
    stores: Mutex<HashMap<StoreSpec, Arc<dyn SecretStore>>>,
}

impl StoreCache {
    /// An empty cache; `dry_run` wraps every store in an overlay; stores opened through it
    /// use `timeouts`.
    pub fn new(dry_run: bool, timeouts: Timeouts) -> Self {
        Self { dry_run, timeouts, stores: Mutex::new(HashMap::new()) }
    }

    /// The shared handle of the store at `spec` (`key`: the run's content-hash key).
    pub fn get(
        &self,
        spec: &StoreSpec,
        key: Option<&HashKey>,
    ) -> Result<Arc<dyn SecretStore>, StoreError> {
        let mut stores = self.stores.lock().expect("store cache lock");
        if let Some(store) = stores.get(spec) {
            return Ok(store.clone());
        }
        let mut store = open(spec, key, &self.timeouts)?;
        if self.dry_run {
            store = Arc::new(overlay::OverlayStore::new(store));
        }
        stores.insert(spec.clone(), store.clone());
        Ok(store)
    }

    /// API calls of every store opened so far, by store then operation.
    pub fn api_calls(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let stores = self.stores.lock().expect("store cache lock");
        stores.values().map(|s| (s.describe(), s.api_calls())).collect()
    }
}
