//! Executes one job: a target's merge ([`merge`]) or sync ([`sync`]).
//!
//! [`execute`] is the whole contract: a [`Job`] in, a [`JobResult`] out. Workers keep nothing
//! between jobs except open store handles and the hash key; the in-process executor and (later)
//! the JetStream consumer both call it.

mod merge;
mod sync;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use tracing::{Instrument, Span};
use vss_protocol::job::{Job, JobResult, JobSpec, Outcome, RunOptions};
use vss_protocol::{ContentHash, HashKey, SecretValue};
use vss_stores::conflict::{DesiredWrite, delete_resolving_conflicts, write_resolving_conflicts};
use vss_stores::ledger::{LedgerError, StateLedger};
use vss_stores::{
    Entry, ErrorKind, Precondition, SecretStore, Stamp, StoreCache, StoreError, Version,
};

/// Store calls a job keeps in flight at once.
const CONCURRENT_CALLS: usize = 16;

/// Why a job failed. Messages name target, store and secret, never a value.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state ledger could not be used.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A safety rule stopped the job before it changed anything.
    #[error("{0}")]
    Refused(String),
    /// Several writes or deletes failed; the others were applied and recorded.
    #[error("{failed} changes failed; the first: {first}")]
    Partial {
        /// How many failed.
        failed: usize,
        /// The first failure.
        first: StoreError,
    },
}

impl JobError {
    /// Whether running the job again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Store(e) | JobError::Partial { first: e, .. } => e.is_retryable(),
            JobError::Ledger(_) | JobError::Refused(_) => false,
        }
    }
}

/// What a worker keeps while it runs jobs: open stores and the hash key.
pub struct WorkerContext {
    stores: StoreCache,
    hash_key: Mutex<Option<HashKey>>,
}

impl WorkerContext {
    /// A context for jobs of one kind of run; `dry_run` keeps every write in memory.
    pub fn new(dry_run: bool) -> Self {
        Self { stores: StoreCache::new(dry_run), hash_key: Mutex::new(None) }
    }

    /// The stores opened so far.
    pub fn stores(&self) -> &StoreCache {
        &self.stores
    }

    fn store(
        &self,
        spec: &vss_protocol::config::StoreSpec,
    ) -> Result<Arc<dyn SecretStore>, JobError> {
        let key = self.hash_key.lock().expect("hash key lock").clone();
        Ok(self.stores.get(spec, key.as_ref())?)
    }

    /// The content-hash key of the run's ledger, resolved once.
    pub fn hash_key(&self, options: &RunOptions) -> Result<HashKey, JobError> {
        let mut slot = self.hash_key.lock().expect("hash key lock");
        if let Some(key) = slot.as_ref() {
            return Ok(key.clone());
        }
        let key = ledger(options).hash_key(options.hash_key.as_ref())?;
        *slot = Some(key.clone());
        Ok(key)
    }
}

fn ledger(options: &RunOptions) -> StateLedger {
    StateLedger::open(&options.state, options.dry_run)
}

/// Runs one job to completion and reports what it did (or, in a dry run, would do).
pub async fn execute(job: &Job, ctx: &WorkerContext) -> JobResult {
    let span = tracing::info_span!("job", run = %job.run_id, job = %job.id);
    async {
        let mut result = JobResult::new(job, Outcome::Succeeded);
        let run = match &job.spec {
            JobSpec::Merge(spec) => merge::run(job, spec, ctx, &mut result).await,
            JobSpec::Sync(spec) => sync::run(job, spec, ctx, &mut result).await,
        };
        result.changes.sort_by(|a, b| a.path.cmp(&b.path));
        let summary = result.summary();
        match run {
            Ok(()) => tracing::info!(
                added = summary.added,
                modified = summary.modified,
                removed = summary.removed,
                unchanged = summary.unchanged,
                dry_run = job.options.dry_run,
                "job finished"
            ),
            Err(e) => {
                tracing::error!(error = %e, "job failed");
                result.outcome = Outcome::Failed {
                    error: format!("target `{}`: {e}", job.target),
                    retryable: e.is_retryable(),
                };
            }
        }
        result
    }
    .instrument(span)
    .await
}

/// [`execute`], and a panic in the job becomes a failed result instead of unwinding into the
/// caller: a bug in one job fails that job, not the run or the worker.
pub async fn execute_isolated(job: &Job, ctx: &WorkerContext) -> JobResult {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(execute(job, ctx)).catch_unwind().await.unwrap_or_else(|_| {
        let error = format!("target `{}`: internal error (panic)", job.target);
        JobResult::new(job, Outcome::Failed { error, retryable: false })
    })
}

/// Reads `names` (relative to `prefix`) concurrently. A failed read fails the whole read (a
/// partial source must never look like a smaller one), and a secret that disappeared since it
/// was listed is a conflict, not an absence.
async fn read_many(
    store: &Arc<dyn SecretStore>,
    prefix: &str,
    names: Vec<String>,
) -> Result<BTreeMap<String, SecretValue>, StoreError> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let full: Vec<String> = names.iter().map(|n| format!("{prefix}{n}")).collect();
    let span = store_span("read", store, Some(full.len()));
    let mut found: BTreeMap<String, SecretValue> = store
        .read_batch(full)
        .instrument(span)
        .await?
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v.value)))
        .collect();
    names
        .into_iter()
        .map(|name| {
            let full = format!("{prefix}{name}");
            match found.remove(&full) {
                Some(value) => Ok((name, value)),
                None => Err(StoreError::new(
                    ErrorKind::Conflict,
                    &store.describe(),
                    Some(&full),
                    "disappeared while the run was reading it",
                )),
            }
        })
        .collect()
}

/// A span around one batch of store calls (`list`, `read`, `apply`: writes and deletes): the
/// store and how many secrets, never a value. Traces export these, so dashboards see time per
/// store. A listing records its count when it returns.
fn store_span(
    operation: &'static str,
    store: &Arc<dyn SecretStore>,
    secrets: Option<usize>,
) -> Span {
    let span = tracing::info_span!(
        "store",
        operation,
        store = %store.describe(),
        secrets = tracing::field::Empty
    );
    if let Some(n) = secrets {
        span.record("secrets", n);
    }
    span
}

/// Lists every secret under `prefix` of `store`, in a `store` span.
async fn list_traced(store: &Arc<dyn SecretStore>, prefix: &str) -> Result<Vec<Entry>, StoreError> {
    let span = store_span("list", store, None);
    let listed = store.list(prefix).instrument(span.clone()).await?;
    span.record("secrets", listed.len());
    Ok(listed)
}

/// Lists `prefix`, keyed by name relative to it.
async fn list_versions(
    store: &Arc<dyn SecretStore>,
    prefix: &str,
) -> Result<BTreeMap<String, Version>, StoreError> {
    Ok(list_traced(store, prefix)
        .await?
        .into_iter()
        .map(|e| (e.name[prefix.len()..].to_string(), e.version))
        .collect())
}

/// One planned write (`value: Some`) or delete (`value: None`) of `prefix + name`.
struct Write {
    name: String,
    pre: Precondition,
    value: Option<(SecretValue, ContentHash)>,
}

/// What [`apply`] did to each secret: its new hash and version, `None` when deleted, or the
/// error.
type Outcomes = Vec<(String, Result<Option<(ContentHash, Version)>, StoreError>)>;

/// Applies writes and deletes concurrently. Returns, per secret, its new record (`None` for a
/// delete) or the error; one failure does not stop the others. A conflict (a concurrent writer)
/// is re-read and retried, never overwritten blindly ([`vss_stores::conflict`]).
/// With `owner`, writes are stamped (hash and ownership marker) in stores with metadata.
async fn apply(
    store: &Arc<dyn SecretStore>,
    prefix: &str,
    writes: Vec<Write>,
    owner: Option<&str>,
    key: &HashKey,
) -> Outcomes {
    let span = store_span("apply", store, Some(writes.len()));
    stream::iter(writes)
        .map(|w| async move {
            let full = format!("{prefix}{}", w.name);
            let done = match w.value {
                Some((value, hash)) => {
                    let stamp =
                        owner.map(|owner| Stamp { hash: hash.clone(), owner: owner.into() });
                    let write = DesiredWrite {
                        name: &full,
                        value: &value,
                        hash: &hash,
                        stamp: stamp.as_ref(),
                    };
                    write_resolving_conflicts(store.as_ref(), write, w.pre, key)
                        .await
                        .map(|v| Some((hash, v)))
                }
                None => {
                    delete_resolving_conflicts(store.as_ref(), &full, w.pre).await.map(|()| None)
                }
            };
            (w.name, done)
        })
        .buffer_unordered(CONCURRENT_CALLS)
        .collect()
        .instrument(span)
        .await
}

/// Folds the outcomes of [`apply`] into `records` (name → hash and version); returns the
/// first error, counting the rest.
fn record_outcomes<R>(
    outcomes: Outcomes,
    records: &mut BTreeMap<String, R>,
    record: impl Fn(&str, ContentHash, Version) -> R,
) -> Result<(), JobError> {
    let mut first_error = None;
    let mut failed = 0;
    for (name, done) in outcomes {
        match done {
            Ok(Some((hash, version))) => {
                let value = record(&name, hash, version);
                records.insert(name, value);
            }
            Ok(None) => {
                records.remove(&name);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) if failed == 1 => Err(e.into()),
        Some(first) => Err(JobError::Partial { failed, first }),
    }
}

/// The hashes and versions of a target's merged secrets, kept beside them in the merge store
/// (`manifests/<target>`), so a sync learns the desired hashes without reading values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    /// Secret name → what was merged and written.
    secrets: BTreeMap<String, ManifestEntry>,
}

/// One merged secret in the manifest. Stored as a 3-element array rather than an object: a
/// manifest has an entry per merged secret, and arrays keep it small on disk and in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EntryRepr", into = "EntryRepr")]
struct ManifestEntry {
    /// Keyed hash of the merged value.
    hash: ContentHash,
    /// Its version in the merge store right after the write.
    version: Version,
    /// Keyed fingerprint of its inputs (spec and per-layer versions); equal inputs mean an
    /// equal merge result.
    inputs: Option<ContentHash>,
}

/// The stored form of a [`ManifestEntry`]: `[hash, version, inputs]`.
type EntryRepr = (ContentHash, Version, Option<ContentHash>);

impl From<EntryRepr> for ManifestEntry {
    fn from((hash, version, inputs): EntryRepr) -> Self {
        Self { hash, version, inputs }
    }
}

impl From<ManifestEntry> for EntryRepr {
    fn from(e: ManifestEntry) -> Self {
        (e.hash, e.version, e.inputs)
    }
}

impl Manifest {
    fn name(target: &str) -> String {
        format!("manifests/{target}")
    }

    /// The manifest of `target`, if the merge phase ever ran for it (and left a readable one).
    async fn read(
        store: &Arc<dyn SecretStore>,
        target: &str,
    ) -> Result<Option<Manifest>, StoreError> {
        let name = Self::name(target);
        let Some(found) = store.read(&name).await? else {
            return Ok(None);
        };
        // A manifest is derived data: one that does not parse is rebuilt by the next merge.
        let text = found.value.expose().get(MANIFEST_FIELD).and_then(serde_json::Value::as_str);
        match text.map(serde_json::from_str::<Manifest>) {
            Some(Ok(manifest)) => Ok(Some(manifest)),
            Some(Err(e)) => {
                tracing::warn!(store = %store.describe(), manifest = %name, error = %e, "unreadable manifest ignored");
                Ok(None)
            }
            None => {
                tracing::warn!(store = %store.describe(), manifest = %name, "unreadable manifest ignored");
                Ok(None)
            }
        }
    }

    /// Stored as one JSON string field: a store sees a single string, not thousands (OpenBao
    /// refuses JSON with more than a few thousand strings as "too complex").
    async fn write(&self, store: &Arc<dyn SecretStore>, target: &str) -> Result<(), StoreError> {
        let text = serde_json::to_string(self).expect("manifests serialize");
        let map = serde_json::Map::from_iter([(
            MANIFEST_FIELD.to_string(),
            serde_json::Value::String(text),
        )]);
        store
            .write(&Self::name(target), &SecretValue::new(map), vss_stores::Precondition::None)
            .await?;
        Ok(())
    }

    /// The recorded versions, standing in for a listing of the merged folder.
    fn versions(&self) -> BTreeMap<String, Version> {
        self.secrets.iter().map(|(n, e)| (n.clone(), e.version.clone())).collect()
    }

    /// The recorded hash of `name`, if its listed version is still the one recorded.
    fn hash_if_current(&self, name: &str, listed: &Version) -> Option<ContentHash> {
        self.secrets.get(name).filter(|e| &e.version == listed).map(|e| e.hash.clone())
    }
}

/// The one field of a stored manifest: the manifest as JSON text.
const MANIFEST_FIELD: &str = "vss-manifest";

/// The merge store's folder of a target's merged secrets.
fn merged_prefix(target: &str) -> String {
    format!("targets/{target}/")
}

#[cfg(test)]
mod tests;
