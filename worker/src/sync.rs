//! The sync job: diff a target's desired state against its store, then create, update and
//! (with every safety rule met) delete.
//!
//! The speed core: desired hashes come from the merge manifest, current hashes from the ledger
//! when the store's listed version is still the one vss wrote. Values are read only for
//! secrets that changed, drifted, or lack a record; an unchanged resync is listings only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use vss_protocol::diff::SecretChange;
use vss_protocol::job::{DesiredState, Job, JobResult, Shard, SyncSpec};
use vss_protocol::{ContentHash, HashKey, SecretValue};
use vss_stores::ledger::{Record, StateLedger, TargetLedger};
use vss_stores::{Entry, Precondition, SecretStore, Stamp, Version};

use crate::{
    JobError, Manifest, WorkerContext, Write, apply, ledger, list_versions, merged_prefix,
    read_many, record_outcomes,
};

/// The desired state of a target: hashes for every secret, values fetched on demand.
struct Desired {
    store: Arc<dyn SecretStore>,
    prefix: String,
    hashes: BTreeMap<String, ContentHash>,
    values: BTreeMap<String, SecretValue>,
    /// A shard's job: every desired name of the whole target (for the mass-delete guard).
    whole_target: Option<BTreeSet<String>>,
    /// Target name → desired-state name, where the target spells names its own way.
    origin: BTreeMap<String, String>,
    /// Target names withheld (several secrets map to one, or a name the target refuses):
    /// never written, never deleted.
    held: BTreeSet<String>,
}

impl Desired {
    async fn load(
        job: &Job,
        spec: &SyncSpec,
        ctx: &WorkerContext,
        key: &HashKey,
    ) -> Result<Self, JobError> {
        let (store, prefix, manifest, trusted) = match &spec.desired {
            DesiredState::Source { store } => (ctx.store(store)?, String::new(), None, false),
            DesiredState::Merged { merge_store, merged_this_run } => {
                let store = ctx.store(merge_store)?;
                let Some(manifest) = Manifest::read(&store, &job.target).await? else {
                    return Err(JobError::Refused(format!(
                        "no merged result for target `{}` in {}; run the merge phase first",
                        job.target,
                        store.describe()
                    )));
                };
                (store, merged_prefix(&job.target), Some(manifest), *merged_this_run)
            }
        };
        let mut listed = match &manifest {
            Some(m) if trusted => m.versions(),
            _ => list_versions(&store, &prefix).await?,
        };
        let mut whole_target = None;
        if let Some(shard) = &spec.shard {
            whole_target = Some(listed.keys().cloned().collect());
            listed.retain(|name, _| shard.owns(name));
        }
        // Hashes the manifest vouches for need no read; anything else (a plain source, or a
        // merged secret changed behind vss's back) is read and hashed.
        let mut hashes = BTreeMap::new();
        let mut unknown = Vec::new();
        for (name, version) in listed {
            match manifest.as_ref().and_then(|m| m.hash_if_current(&name, &version)) {
                Some(hash) => {
                    hashes.insert(name, hash);
                }
                None => unknown.push(name),
            }
        }
        let values = read_many(&store, &prefix, unknown).await?;
        hashes.extend(values.iter().map(|(n, v)| (n.clone(), key.hash(v))));
        Ok(Self {
            store,
            prefix,
            hashes,
            values,
            whole_target,
            origin: BTreeMap::new(),
            held: BTreeSet::new(),
        })
    }

    /// Renames the desired secrets as `target` spells them. Secrets that map to one name, or
    /// that the target refuses, are withheld with a warning: neither written nor deleted.
    fn rename_for(&mut self, target: &dyn SecretStore, job: &Job, result: &mut JobResult) {
        let mut by_target: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut refused = false;
        for name in self.hashes.keys() {
            match target.store_name(name) {
                Ok(mapped) => by_target.entry(mapped).or_default().push(name.clone()),
                Err(e) => {
                    refused = true;
                    result.warnings.push(format!("target `{}`: {e}; not synced", job.target));
                }
            }
        }
        let identity =
            by_target.iter().all(|(mapped, names)| names.len() == 1 && &names[0] == mapped);
        if identity && !refused {
            return;
        }
        let mut hashes = BTreeMap::new();
        for (mapped, names) in by_target {
            if let [name] = names.as_slice() {
                hashes.insert(mapped.clone(), self.hashes[name].clone());
                self.origin.insert(mapped, name.clone());
            } else {
                result.warnings.push(format!(
                    "target `{}`: {} are all `{mapped}` in {}; none of them is synced",
                    job.target,
                    names.join(", "),
                    target.describe()
                ));
                self.held.insert(mapped);
            }
        }
        self.hashes = hashes;
    }

    /// The values of `names` (target names), from memory or the store.
    async fn take(&mut self, names: &[String]) -> Result<BTreeMap<String, SecretValue>, JobError> {
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for name in names {
            let source = self.origin.get(name).unwrap_or(name);
            match self.values.remove(source) {
                Some(v) => {
                    out.insert(name.clone(), v);
                }
                None => missing.push(source.clone()),
            }
        }
        let read = read_many(&self.store, &self.prefix, missing).await?;
        let target_name: BTreeMap<&String, &String> =
            self.origin.iter().map(|(t, s)| (s, t)).collect();
        for (source, value) in read {
            let name = target_name.get(&source).map_or(source.clone(), |t| (*t).clone());
            out.insert(name, value);
        }
        Ok(out)
    }
}

pub(crate) async fn run(
    job: &Job,
    spec: &SyncSpec,
    ctx: &WorkerContext,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let key = ctx.hash_key(&job.options)?;
    let mut desired = Desired::load(job, spec, ctx, &key).await?;
    let target = ctx.store(&spec.store)?;
    desired.rename_for(target.as_ref(), job, result);
    // A shard's secrets are the names that hash to it, as the desired state spells them; a
    // listed secret nothing desires belongs to the shard its own name hashes to.
    let whole_target: Option<BTreeMap<String, String>> = desired.whole_target.as_ref().map(|all| {
        all.iter().filter_map(|n| target.store_name(n).ok().map(|t| (t, n.clone()))).collect()
    });
    let ledger_store = ledger(&job.options);
    // A shard keeps its own records (shards run concurrently).
    let (records_name, mut records) = match &spec.shard {
        Some(s) => (
            shard_records(&job.target, s),
            shard_ledger(&ledger_store, &job.target, s, &target.describe())?,
        ),
        None => (job.target.clone(), ledger_store.load(&job.target, &target.describe())?),
    };
    let owner = Stamp::owner_of(&job.target);
    let listing = crate::list_traced(&target, "").await?;
    // The guard counts over the whole target, so every shard decides as one job would.
    let guard = match (&spec.shard, &whole_target) {
        (Some(shard), Some(all)) => Some(whole_target_orphans(
            &ledger_store,
            job,
            shard,
            &target.describe(),
            &listing,
            &all.keys().cloned().collect(),
            &owner,
        )?),
        _ => None,
    };
    let mut listed = BTreeMap::new();
    let mut stamps = BTreeMap::new();
    let in_shard = |name: &str| {
        let spelled =
            whole_target.as_ref().and_then(|all| all.get(name)).map_or(name, String::as_str);
        spec.shard.is_none_or(|s| s.owns(spelled))
    };
    for entry in listing.into_iter().filter(|e| in_shard(&e.name)) {
        if let Some(stamp) = entry.stamp {
            stamps.insert(entry.name.clone(), stamp);
        }
        listed.insert(entry.name, entry.version);
    }
    // Records of secrets that no longer exist are dropped.
    records.secrets.retain(|name, _| listed.contains_key(name));
    // What vss knows of a secret's current content without reading it: its ledger record
    // while the version is the one recorded, else the stamp the store keeps beside it.
    let known_hash = |name: &str, version: &Version| {
        records
            .secrets
            .get(name)
            .filter(|r| &r.version == version)
            .map(|r| &r.hash)
            .or_else(|| stamps.get(name).map(|s| &s.hash))
    };
    let owned = |name: &str| {
        records.secrets.contains_key(name) || stamps.get(name).is_some_and(|s| s.owner == owner)
    };

    // Classify without reading: created, known unchanged, or needing the current value.
    let mut added = Vec::new();
    let mut to_read = Vec::new();
    for (name, hash) in &desired.hashes {
        match listed.get(name) {
            None => added.push(name.clone()),
            Some(version) => {
                if known_hash(name, version) == Some(hash) {
                    tracing::trace!(secret = %name, "unchanged");
                    result.unchanged += 1;
                } else {
                    to_read.push(name.clone());
                }
            }
        }
    }
    let orphans: Vec<String> = listed
        .keys()
        .filter(|n| !desired.hashes.contains_key(*n) && !desired.held.contains(*n) && owned(n))
        .cloned()
        .collect();
    let (deletable, total, desired_empty) = match (&guard, &desired.whole_target) {
        (Some((orphans, total)), Some(all)) => (*orphans, *total, all.is_empty()),
        _ => (orphans.len(), listed.len(), desired.hashes.is_empty()),
    };
    // Sharded, every shard decides on the whole target's counts, so all refuse or none does.
    let deleting = match spec.delete {
        Some(_) if deletable == 0 => false,
        Some(_) if desired_empty => {
            result.warnings.push(format!(
                "target `{}`: the desired state is empty, so its {} owned secrets are kept (deletes skipped)",
                job.target,
                orphans.len()
            ));
            false
        }
        Some(threshold)
            if threshold.exceeded(deletable as u64, total as u64)
                && !job.options.allow_mass_delete =>
        {
            return Err(JobError::Refused(format!(
                "refusing to delete {} of {} secrets in {} (more than {}% and more than {}); \
                 nothing was changed. Check the sources, or rerun with --allow-mass-delete",
                deletable,
                total,
                target.describe(),
                threshold.percent,
                threshold.count
            )));
        }
        Some(_) => !orphans.is_empty(),
        None => false,
    };
    if deleting {
        to_read.extend(orphans.iter().cloned());
    }

    // Current values of everything that may differ (drift checks, key diffs, deletes). A
    // write-only target (GitHub) shows none: what differs from its records is rewritten.
    let readable = target.capabilities().read_values;
    let mut modified = Vec::new();
    if !readable {
        modified.extend(to_read.iter().filter(|n| desired.hashes.contains_key(*n)).cloned());
    }
    let mut current =
        if readable { read_many(&target, "", to_read).await? } else { BTreeMap::new() };
    let current_hashes: BTreeMap<String, ContentHash> =
        current.iter().map(|(n, v)| (n.clone(), key.hash(v))).collect();
    for (name, current_hash) in &current_hashes {
        let Some(hash) = desired.hashes.get(name) else {
            continue;
        };
        if current_hash == hash {
            tracing::trace!(secret = %name, "unchanged after reading");
            result.unchanged += 1;
            let version = listed[name].clone();
            records.secrets.insert(name.clone(), Record { hash: hash.clone(), version });
        } else {
            modified.push(name.clone());
        }
    }

    let mut wanted = added.clone();
    wanted.extend(modified.iter().cloned());
    let mut values = desired.take(&wanted).await?;
    let mut writes = Vec::new();
    for name in added {
        tracing::debug!(secret = %name, "create");
        let (value, hash) =
            (values.remove(&name).expect("read above"), desired.hashes[&name].clone());
        result.changes.push(SecretChange::between(
            name.clone(),
            None,
            Some((&value, hash.clone())),
        ));
        writes.push(Write { name, pre: Precondition::Absent, value: Some((value, hash)) });
    }
    for name in modified {
        tracing::debug!(secret = %name, "update");
        let (value, hash) =
            (values.remove(&name).expect("read above"), desired.hashes[&name].clone());
        result.changes.push(match current.remove(&name) {
            Some(old) => SecretChange::between(
                name.clone(),
                Some((&old, current_hashes[&name].clone())),
                Some((&value, hash.clone())),
            ),
            None => SecretChange::unseen(
                name.clone(),
                records.secrets.get(&name).map(|r| r.hash.clone()),
                Some((&value, hash.clone())),
            ),
        });
        let pre = Precondition::Matches(listed[&name].clone());
        writes.push(Write { name, pre, value: Some((value, hash)) });
    }
    if deleting {
        for name in orphans {
            tracing::debug!(secret = %name, "delete");
            result.changes.push(match current.remove(&name) {
                Some(old) => {
                    let old_hash = current_hashes[&name].clone();
                    SecretChange::between(name.clone(), Some((&old, old_hash)), None)
                }
                None => SecretChange::unseen(
                    name.clone(),
                    records.secrets.get(&name).map(|r| r.hash.clone()),
                    None,
                ),
            });
            let pre = Precondition::Matches(listed[&name].clone());
            writes.push(Write { name, pre, value: None });
        }
    }

    if job.options.dry_run {
        return Ok(());
    }
    let outcomes = apply(&target, "", writes, Some(&owner), &key).await;
    let applied = record_outcomes(outcomes, &mut records.secrets, |_, hash, version| Record {
        hash,
        version,
    });
    // Whatever succeeded is recorded, even when something else failed.
    ledger_store.save(&records_name, &records)?;
    applied
}

/// The ledger records of one shard of `target`.
fn shard_records(target: &str, shard: &Shard) -> String {
    format!("{target}#{}-of-{}", shard.index, shard.count)
}

/// A shard's records. Before its first save they come from whatever the target had: its
/// unsharded records and those of any earlier shard count, narrowed to this shard's names.
fn shard_ledger(
    ledger: &StateLedger,
    target: &str,
    shard: &Shard,
    store: &str,
) -> Result<TargetLedger, JobError> {
    if let Some(own) = ledger.load_existing(&shard_records(target, shard), store)? {
        return Ok(own);
    }
    let mut seeded = ledger.load(target, store)?;
    for name in ledger.names_with_prefix(&format!("{target}#"))? {
        seeded.secrets.extend(ledger.load(&name, store)?.secrets);
    }
    seeded.secrets.retain(|name, _| shard.owns(name));
    Ok(seeded)
}

/// For a shard's job: how many of the whole target's listed secrets are owned orphans, and
/// how many are listed. Ownership is any shard's records or a stamp.
fn whole_target_orphans(
    ledger: &StateLedger,
    job: &Job,
    shard: &Shard,
    store: &str,
    listing: &[Entry],
    desired: &BTreeSet<String>,
    owner: &str,
) -> Result<(usize, usize), JobError> {
    let mut recorded = BTreeSet::new();
    for index in 0..shard.count {
        let sibling = Shard { index, count: shard.count };
        recorded.extend(shard_ledger(ledger, &job.target, &sibling, store)?.secrets.into_keys());
    }
    let orphans = listing
        .iter()
        .filter(|e| !desired.contains(&e.name))
        .filter(|e| {
            recorded.contains(&e.name) || e.stamp.as_ref().is_some_and(|s| s.owner == owner)
        })
        .count();
    Ok((orphans, listing.len()))
}
