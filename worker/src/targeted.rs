//! Targeted jobs: a run limited to a few changed secrets (an event) touches only those names.
//! Nothing is listed; the named secrets are read where they come from and where they go, and
//! written only where they differ. Bookkeeping is per name too: the ledger journal gets their
//! records, while the merge manifest, a per-target document, is left for the next full merge
//! (which sees the new versions and re-checks just those names). Its cost is the same for a
//! target of ten secrets or ten thousand.
//!
//! Targets that respell names (GitHub, Kubernetes, GCP) or cannot be read back take the full
//! sync, which sees every name the respelling could collide with; so does a delete of more
//! secrets than the mass-delete threshold's count.

use std::collections::{BTreeMap, BTreeSet};

use vss_protocol::diff::SecretChange;
use vss_protocol::job::{DesiredState, Job, JobResult, LayerSpec, MergeSpec, SyncSpec};
use vss_protocol::merge::merge_layer;
use vss_protocol::{HashKey, SecretValue};
use vss_stores::conflict::Settled;
use vss_stores::ledger::Record;
use vss_stores::{Precondition, Stamp, Versioned};

use crate::io::{Write, apply, read_existing, record_outcomes, reread_from};
use crate::manifest::merged_prefix;
use crate::{JobError, WorkerContext};

/// Merges just `names` of a target: read them from every layer that has them, fold, and
/// bring the merged copies to the result (a name no layer has any more is deleted).
pub(crate) async fn merge(
    job: &Job,
    spec: &MergeSpec,
    names: &BTreeSet<String>,
    ctx: &WorkerContext,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let key = ctx.hash_key(&job.options).await?;
    let merge_store = ctx.store(&spec.merge_store)?;
    ctx.announce(job, names).await;
    let mut merged = BTreeMap::new();
    for layer in &spec.layers {
        let (store, prefix, wanted): (_, _, Vec<String>) = match layer {
            LayerSpec::Source { store, .. } => {
                let wanted = names.iter().filter(|n| store.covers(n)).cloned().collect();
                (ctx.store(store)?, String::new(), wanted)
            }
            LayerSpec::Target { name } => {
                (merge_store.clone(), merged_prefix(name), names.iter().cloned().collect())
            }
        };
        let found = read_existing(&store, &prefix, wanted).await?;
        merge_layer(&mut merged, values(found), spec.list_merge);
    }
    let prefix = merged_prefix(&job.target);
    let current = read_existing(&merge_store, &prefix, names.iter().cloned().collect()).await?;
    let (writes, _) = bring_to(names, merged, current, None, &key, result);
    let refresh = crate::merge::remerge(spec, ctx, &merge_store)?;
    let outcomes = apply(&merge_store, &prefix, writes, None, &key, Some(&*refresh), None).await;
    record_outcomes(outcomes, &mut BTreeMap::new(), |_, _, _| (), result)
}

/// Syncs just `names` of a target: desired and current values read by name, compared by
/// hash, written where they differ; owned secrets whose desired copy is gone are deleted when
/// the target deletes orphans. Their records go to the ledger journal.
pub(crate) async fn sync(
    job: &Job,
    spec: &SyncSpec,
    names: &BTreeSet<String>,
    ctx: &WorkerContext,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let target = ctx.store(&spec.store)?;
    ctx.announce(job, names).await;
    if !spec.store.keeps_names() || !target.capabilities().read_values {
        tracing::debug!("target respells names: the full sync instead");
        return full_sync(job, spec, ctx, result).await;
    }
    let key = ctx.hash_key(&job.options).await?;
    let (source, prefix, wanted): (_, _, Vec<String>) = match &spec.desired {
        DesiredState::Source { store } => {
            let wanted = names.iter().filter(|n| store.covers(n)).cloned().collect();
            (ctx.store(store)?, String::new(), wanted)
        }
        DesiredState::Merged { merge_store, .. } => {
            (ctx.store(merge_store)?, merged_prefix(&job.target), names.iter().cloned().collect())
        }
    };
    let desired = values(read_existing(&source, &prefix, wanted).await?);
    let refresh = reread_from(source, prefix, BTreeMap::new());
    let current = read_existing(&target, "", names.iter().cloned().collect()).await?;
    let gone: Vec<String> = names
        .iter()
        .filter(|n| !desired.contains_key(*n) && current.contains_key(*n))
        .cloned()
        .collect();
    let deletable = match spec.delete {
        None => BTreeSet::new(),
        Some(threshold)
            if gone.len() as u64 > threshold.count && !job.options.allow_mass_delete =>
        {
            tracing::debug!(gone = gone.len(), "many deletes: the full sync weighs them");
            return full_sync(job, spec, ctx, result).await;
        }
        // Only what the ledger says vss wrote is ever deleted.
        Some(_) if gone.is_empty() => BTreeSet::new(),
        Some(_) => {
            let ledger = ctx.ledger(&job.options).await?;
            let (_, records) =
                ledger.load_for_job(&job.target, spec.shard.as_ref(), &spec.store).await?;
            gone.into_iter().filter(|n| records.secrets.contains_key(n)).collect()
        }
    };
    let (writes, unchanged) = bring_to(names, desired, current, Some(&deletable), &key, result);
    if job.options.dry_run {
        return Ok(());
    }
    let owner = Stamp::owner_of(&job.target);
    let outcomes = apply(&target, "", writes, Some(&owner), &key, Some(&*refresh), None).await;
    let mut records: BTreeMap<String, Record> = BTreeMap::new();
    // Deleted, or moved on by someone else since it was planned (that change wins, and the
    // secret is no longer vss's): either way no longer owned.
    let deleted: Vec<String> = outcomes
        .iter()
        .filter(|(_, done)| matches!(done, Ok(Settled::Deleted | Settled::Superseded)))
        .map(|(n, _)| n.clone())
        .collect();
    let applied = record_outcomes(
        outcomes,
        &mut records,
        |_, hash, version| Record { hash, version },
        result,
    );
    let mut updates: BTreeMap<String, Option<Record>> =
        unchanged.into_iter().chain(records).map(|(n, r)| (n, Some(r))).collect();
    updates.extend(deleted.into_iter().map(|n| (n, None)));
    // Whatever succeeded is recorded, even when something else failed.
    let ledger = ctx.ledger(&job.options).await?;
    ledger.append(&job.target, spec.shard.as_ref(), &spec.store, &updates).await?;
    applied
}

/// The full sync, for what a targeted one cannot decide alone. The merge manifest may lag
/// behind targeted merges, so the merged folder is listed rather than taken from it.
async fn full_sync(
    job: &Job,
    spec: &SyncSpec,
    ctx: &WorkerContext,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let mut spec = spec.clone();
    if let DesiredState::Merged { merged_this_run, .. } = &mut spec.desired {
        *merged_this_run = false;
    }
    crate::sync::run(job, &spec, ctx, result).await
}

/// The values of what was found.
fn values(found: BTreeMap<String, Versioned<SecretValue>>) -> BTreeMap<String, SecretValue> {
    found.into_iter().map(|(name, v)| (name, v.value)).collect()
}

/// The writes that bring `names` from `current` to `desired`, each reported as a change: a
/// differing value is written against the version read, a missing one created, and one no
/// longer desired deleted when `deletable` (`None`: always; the merge store's own copies)
/// holds it. Also returns the records of the names already as desired.
fn bring_to(
    names: &BTreeSet<String>,
    mut desired: BTreeMap<String, SecretValue>,
    mut current: BTreeMap<String, Versioned<SecretValue>>,
    deletable: Option<&BTreeSet<String>>,
    key: &HashKey,
    result: &mut JobResult,
) -> (Vec<Write>, BTreeMap<String, Record>) {
    let (mut writes, mut unchanged) = (Vec::new(), BTreeMap::new());
    for name in names {
        let now = current.remove(name).map(|found| {
            let hash = key.hash(&found.value);
            (found, hash)
        });
        let pre = match &now {
            Some((found, _)) => Precondition::Matches(found.version.clone()),
            None => Precondition::Absent,
        };
        let old = now.as_ref().map(|(found, hash)| (&found.value, hash.clone()));
        match desired.remove(name) {
            Some(value) => {
                let hash = key.hash(&value);
                if let Some((found, current_hash)) = &now
                    && *current_hash == hash
                {
                    result.unchanged += 1;
                    unchanged.insert(name.clone(), Record { hash, version: found.version.clone() });
                    continue;
                }
                result.changes.push(SecretChange::between(
                    name.clone(),
                    old,
                    Some((&value, hash.clone())),
                ));
                writes.push(Write { name: name.clone(), pre, value: Some((value, hash)) });
            }
            None if old.is_some() && deletable.is_none_or(|d| d.contains(name)) => {
                result.changes.push(SecretChange::between(name.clone(), old, None));
                writes.push(Write { name: name.clone(), pre, value: None });
            }
            None => {}
        }
    }
    (writes, unchanged)
}
