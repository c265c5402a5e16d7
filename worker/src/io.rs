//! The store I/O a job does, each batch in a `store` span: listings, concurrent reads, and
//! writes and deletes that survive concurrent writers.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::{StreamExt, stream};
use tracing::{Instrument, Span};
use vss_protocol::{ContentHash, HashKey, SecretValue};
use vss_stores::conflict::{
    DesiredWrite, Refresh, Settled, delete_resolving_conflicts, write_resolving_conflicts,
};
use vss_stores::{Entry, Precondition, SecretStore, Stamp, StoreError, Version, Versioned};

use vss_protocol::job::JobResult;

use crate::JobError;
use crate::announce::Watch;

/// Store calls a job keeps in flight at once.
const CONCURRENT_CALLS: usize = 16;

/// Reads `names` (relative to `prefix`) concurrently. A failed read fails the whole read (a
/// partial source must never look like a smaller one). A secret deleted since it was listed
/// is left out: the store answered, and it is gone (another run, or a person, deleted it);
/// callers treat it as absent from that store now, never as a reason to delete elsewhere
/// in this run.
pub(crate) async fn read_many(
    store: &Arc<dyn SecretStore>,
    prefix: &str,
    names: Vec<String>,
) -> Result<BTreeMap<String, SecretValue>, StoreError> {
    let found = read_existing(store, prefix, names).await?;
    Ok(found.into_iter().map(|(name, found)| (name, found.value)).collect())
}

/// A [`Refresh`] reading the desired value of a name from `store` under `prefix`, the name
/// spelled as `origin` maps it (target name → desired-state name) when it does.
pub(crate) fn reread_from(
    store: Arc<dyn SecretStore>,
    prefix: String,
    origin: BTreeMap<String, String>,
) -> Box<Refresh> {
    let origin = Arc::new(origin);
    Box::new(move |name: String| {
        let (store, prefix, origin) = (store.clone(), prefix.clone(), origin.clone());
        Box::pin(async move {
            let source = origin.get(&name).cloned().unwrap_or(name);
            Ok(store.read(&format!("{prefix}{source}")).await?.map(|found| found.value))
        })
    })
}

/// Reads `names` (relative to `prefix`) concurrently, with their versions; a name that does
/// not exist is left out. A failed read fails the whole read.
pub(crate) async fn read_existing(
    store: &Arc<dyn SecretStore>,
    prefix: &str,
    names: Vec<String>,
) -> Result<BTreeMap<String, Versioned<SecretValue>>, StoreError> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let full: Vec<String> = names.iter().map(|n| format!("{prefix}{n}")).collect();
    let span = store_span("read", store, Some(full.len()));
    let found = store.read_batch(full).instrument(span).await?;
    Ok(found
        .into_iter()
        .filter_map(|(name, value)| Some((name[prefix.len()..].to_string(), value?)))
        .collect())
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
pub(crate) async fn list_traced(
    store: &Arc<dyn SecretStore>,
    prefix: &str,
) -> Result<Vec<Entry>, StoreError> {
    let span = store_span("list", store, None);
    let listed = store.list(prefix).instrument(span.clone()).await?;
    span.record("secrets", listed.len());
    Ok(listed)
}

/// Lists `prefix`, keyed by name relative to it.
pub(crate) async fn list_versions(
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
pub(crate) struct Write {
    /// The secret, relative to the prefix.
    pub name: String,
    /// What the store must hold for the write to go ahead.
    pub pre: Precondition,
    /// The value and its hash; `None` deletes.
    pub value: Option<(SecretValue, ContentHash)>,
}

/// What [`apply`] did to each secret, or the error.
pub(crate) type Outcomes = Vec<(String, Result<Settled, StoreError>)>;

/// Applies writes and deletes concurrently. Returns, per secret, how it settled or the error;
/// one failure does not stop the others. A conflict (a concurrent writer)
/// is re-read and retried, never overwritten blindly ([`vss_stores::conflict`]).
/// With `owner`, writes are stamped (hash and ownership marker) in stores with metadata. With
/// `refresh`, a conflict re-reads the desired value too (never writing back an older one).
/// With `watch`, a secret an event's run announced is left to that run.
pub(crate) async fn apply(
    store: &Arc<dyn SecretStore>,
    prefix: &str,
    writes: Vec<Write>,
    owner: Option<&str>,
    key: &HashKey,
    refresh: Option<&Refresh>,
    watch: Option<&Watch>,
) -> Outcomes {
    let span = store_span("apply", store, Some(writes.len()));
    stream::iter(writes)
        .map(|w| async move {
            // An event's job announced it: left to that job (checked right before each call).
            if watch.is_some_and(|watch| watch.contains(&w.name)) {
                tracing::debug!(secret = %w.name, "changed by an event's run now; left to it");
                return (w.name, Ok(Settled::Deferred));
            }
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
                    let refresh = refresh.map(|r| (r, w.name.as_str()));
                    write_resolving_conflicts(store.as_ref(), write, w.pre, key, refresh).await
                }
                None => delete_resolving_conflicts(store.as_ref(), &full, w.pre).await,
            };
            (w.name, done)
        })
        .buffer_unordered(CONCURRENT_CALLS)
        .collect()
        .instrument(span)
        .await
}

/// Folds the outcomes of [`apply`] into `records` (name → hash and version; a deleted or
/// superseded secret loses its record: it is not vss's any more), and moves the changes that
/// failed or were superseded out of the result's changes (a report counts only what was done);
/// returns the first error, counting the rest.
pub(crate) fn record_outcomes<R>(
    outcomes: Outcomes,
    records: &mut BTreeMap<String, R>,
    record: impl Fn(&str, ContentHash, Version) -> R,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let mut first_error = None;
    let mut failed = 0;
    for (name, done) in outcomes {
        match done {
            Ok(Settled::Written(hash, version)) => {
                let value = record(&name, hash, version);
                records.insert(name, value);
            }
            Ok(Settled::Deleted) => {
                records.remove(&name);
            }
            Ok(Settled::Deferred) => {
                result.changes.retain(|c| c.path != name);
            }
            Ok(Settled::Superseded) => {
                records.remove(&name);
                result.changes.retain(|c| c.path != name);
                result.warnings.push(format!(
                    "target `{}`: `{name}` was changed by someone else after this run planned \
                     its change; left in place as they left it",
                    result.target
                ));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
                result.changes.retain(|c| c.path != name);
                result.not_applied.push(name);
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) if failed == 1 => Err(e.into()),
        Some(first) => Err(JobError::Partial { failed, first }),
    }
}
