//! The sync job: diff a target's desired state against its store, then create, update and
//! (with every safety rule met) delete.
//!
//! The speed core: desired hashes come from the merge manifest, current hashes from the ledger
//! when the store's listed version is still the one vss wrote. Values are read only for
//! secrets that changed, drifted, or lack a record; an unchanged resync is listings only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt, stream};
use vss_protocol::diff::SecretChange;
use vss_protocol::job::{DesiredState, Job, JobResult, SyncSpec};
use vss_protocol::reconcile::{self, Classified, Deletions, Known, TargetCounts};
use vss_protocol::{ContentHash, HashKey, SecretValue};
use vss_stores::conflict::Refresh;
use vss_stores::ledger::{Record, StateLedger, TargetLedger};
use vss_stores::{Entry, Precondition, SecretStore, Stamp, Version};

use crate::io::{
    Write, apply, list_traced, list_versions, read_many, record_outcomes, reread_from,
};
use crate::manifest::{Manifest, merged_prefix};
use crate::{JobError, WorkerContext};

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
    /// The run's hash key.
    key: HashKey,
    /// Taken from the merge manifest, without listing the merged folder.
    from_manifest: bool,
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
            key: key.clone(),
            from_manifest: manifest.is_some() && trusted,
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

/// Syncs one target (or one shard of it): list → classify → read → diff → apply → record.
pub(crate) async fn run(
    job: &Job,
    spec: &SyncSpec,
    ctx: &WorkerContext,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let key = ctx.hash_key(&job.options).await?;
    let ledger = ctx.ledger(&job.options).await?;
    let target = ctx.store(&spec.store)?;
    let watch = ctx.watch_announcements(job).await;
    // The target is listed before the desired state is read, and every write is made against
    // the version listed: whatever another run (an event) writes after this listing conflicts
    // and is looked at again, and whatever it wrote before is older than the desired state read
    // here. So a run that overlaps another never puts an older value back.
    let listing = list_traced(&target, "").await?;
    let mut desired = Desired::load(job, spec, ctx, &key).await?;
    desired.rename_for(target.as_ref(), job, result);
    let (records_name, mut records) =
        ledger.load_for_job(&job.target, spec.shard.as_ref(), &spec.store).await?;
    let mut state =
        TargetState::of(listing, job, spec, &target, &desired, &mut records, &ledger).await?;

    let mut classified = reconcile::classify(&desired.hashes, &desired.held, &state.known);
    let refresh =
        reread_from(desired.store.clone(), desired.prefix.clone(), desired.origin.clone());
    if spec.delete.is_some() && desired.from_manifest && !classified.orphans.is_empty() {
        let again = desired_again(&classified.orphans, &*refresh).await?;
        for name in &again {
            tracing::debug!(secret = %name, "merged since the merge this sync follows; kept");
        }
        classified.orphans.retain(|name| !again.contains(name));
        state.counts.owned_orphans = state.counts.owned_orphans.saturating_sub(again.len());
    }
    for name in &classified.unchanged {
        tracing::trace!(secret = %name, "unchanged");
    }
    result.unchanged += classified.unchanged.len() as u64;
    let deleting = match reconcile::deletions(
        spec.delete,
        state.counts,
        job.options.allow_mass_delete,
    ) {
        Deletions::NotOptedIn | Deletions::NothingToDelete => false,
        Deletions::KeptForEmptyDesired => {
            result.warnings.push(format!(
                "target `{}`: the desired state is empty, so its {} owned secrets are kept (deletes skipped)",
                job.target,
                classified.orphans.len()
            ));
            false
        }
        Deletions::Refused { deletable, listed, threshold } => {
            return Err(JobError::Refused(format!(
                "refusing to delete {deletable} of {listed} secrets in {} (more than {}% and more \
                 than {}); nothing was changed. Check the sources, or rerun with --allow-mass-delete",
                target.describe(),
                threshold.percent,
                threshold.count
            )));
        }
        Deletions::Allowed => !classified.orphans.is_empty(),
    };

    let diff =
        Diff::read(&target, &key, &desired, &classified, deleting, &state, &mut records, result)
            .await?;
    let writes = diff.plan(&mut desired, &classified, deleting, &state, &records, result).await?;
    if job.options.dry_run {
        return Ok(());
    }
    let owner = Stamp::owner_of(&job.target);
    let outcomes =
        apply(&target, "", writes, Some(&owner), &key, Some(&*refresh), watch.as_ref()).await;
    let record = |_: &str, hash, version| Record { hash, version };
    let applied = record_outcomes(outcomes, &mut records.secrets, record, result);
    // Whatever succeeded is recorded, even when something else failed.
    ledger.save(&records_name, &records).await?;
    applied
}

/// The target's side, before any value is read: the listed versions of the job's secrets,
/// what is known of each, and the counts the delete decision takes (over the whole target
/// when the job is a shard).
struct TargetState {
    listed: BTreeMap<String, Version>,
    known: BTreeMap<String, Known>,
    counts: TargetCounts,
}

impl TargetState {
    /// The state of the job's part of `listing`, the target's listing.
    async fn of(
        listing: Vec<Entry>,
        job: &Job,
        spec: &SyncSpec,
        target: &Arc<dyn SecretStore>,
        desired: &Desired,
        records: &mut TargetLedger,
        ledger: &StateLedger,
    ) -> Result<Self, JobError> {
        let owner = Stamp::owner_of(&job.target);
        // A shard's secrets are the names that hash to it, as the desired state spells them; a
        // listed secret nothing desires belongs to the shard its own name hashes to.
        let whole_target: Option<BTreeMap<String, String>> =
            desired.whole_target.as_ref().map(|all| {
                all.iter()
                    .filter_map(|n| target.store_name(n).ok().map(|t| (t, n.clone())))
                    .collect()
            });
        let whole_counts = match (&spec.shard, &whole_target, &desired.whole_target) {
            (Some(shard), Some(spelled), Some(all)) => {
                let recorded =
                    ledger.recorded_in_any_shard(&job.target, shard.count, &spec.store).await?;
                let owned_orphans = listing
                    .iter()
                    .filter(|e| !spelled.contains_key(&e.name))
                    .filter(|e| recorded.contains(&e.name) || stamped_by(e, &owner))
                    .count();
                Some(TargetCounts {
                    owned_orphans,
                    listed: listing.len(),
                    desired_empty: all.is_empty(),
                })
            }
            _ => None,
        };
        let in_shard = |name: &str| {
            let spelled =
                whole_target.as_ref().and_then(|all| all.get(name)).map_or(name, String::as_str);
            spec.shard.is_none_or(|s| s.owns(spelled))
        };
        let listing: Vec<Entry> = listing.into_iter().filter(|e| in_shard(&e.name)).collect();
        // Records of secrets that no longer exist are dropped.
        records.secrets.retain(|name, _| listing.iter().any(|e| &e.name == name));
        let mut listed = BTreeMap::new();
        let mut known = BTreeMap::new();
        for entry in listing {
            let record = records.secrets.get(&entry.name);
            // What vss knows of a secret's content without reading it: its ledger record while
            // the version is the one recorded, else the stamp the store keeps beside it.
            let hash = record
                .filter(|r| r.version == entry.version)
                .map(|r| r.hash.clone())
                .or_else(|| entry.stamp.as_ref().map(|s| s.hash.clone()));
            let owned = record.is_some() || stamped_by(&entry, &owner);
            known.insert(entry.name.clone(), Known { hash, owned });
            listed.insert(entry.name, entry.version);
        }
        let counts = whole_counts.unwrap_or_else(|| TargetCounts {
            owned_orphans: known
                .iter()
                .filter(|(n, k)| {
                    k.owned && !desired.hashes.contains_key(*n) && !desired.held.contains(*n)
                })
                .count(),
            listed: listed.len(),
            desired_empty: desired.hashes.is_empty(),
        });
        Ok(Self { listed, known, counts })
    }
}

/// Which of `orphans` (target names) the desired store holds now. A desired state taken
/// from the merge manifest is as old as its merge's listing of the layers; another run (an
/// event) may have created a secret since, and written it to the target before this one
/// listed it. One read per orphan, and only then: there are none in a steady state.
async fn desired_again(
    orphans: &[String],
    refresh: &Refresh,
) -> Result<BTreeSet<String>, JobError> {
    Ok(stream::iter(orphans.iter().cloned())
        .map(|name| async move { refresh(name.clone()).await.map(|now| (name, now.is_some())) })
        .buffer_unordered(16)
        .try_filter_map(|(name, desired)| async move { Ok(desired.then_some(name)) })
        .try_collect()
        .await?)
}

/// Whether the store's stamp on `entry` names `owner`.
fn stamped_by(entry: &Entry, owner: &str) -> bool {
    entry.stamp.as_ref().is_some_and(|s| s.owner == owner)
}

/// The current values that may differ (drift checks, key diffs, deletes), and the desired
/// secrets whose content differs from them.
struct Diff {
    current: BTreeMap<String, SecretValue>,
    current_hashes: BTreeMap<String, ContentHash>,
    modified: Vec<String>,
    recreate: Vec<String>,
}

impl Diff {
    /// Reads what [`classify`](reconcile::classify) could not vouch for (and the orphans to
    /// delete); an equal value is recorded as unchanged. A write-only target (GitHub) shows
    /// nothing: what differs from its records is rewritten.
    #[allow(clippy::too_many_arguments)]
    async fn read(
        target: &Arc<dyn SecretStore>,
        key: &HashKey,
        desired: &Desired,
        classified: &Classified,
        deleting: bool,
        state: &TargetState,
        records: &mut TargetLedger,
        result: &mut JobResult,
    ) -> Result<Self, JobError> {
        let mut to_read = classified.to_read.clone();
        if deleting {
            to_read.extend(classified.orphans.iter().cloned());
        }
        let mut modified = Vec::new();
        let current = if target.capabilities().read_values {
            read_many(target, "", to_read).await?
        } else {
            modified.extend(to_read.into_iter().filter(|n| desired.hashes.contains_key(n)));
            BTreeMap::new()
        };
        let current_hashes: BTreeMap<String, ContentHash> =
            current.iter().map(|(n, v)| (n.clone(), key.hash(v))).collect();
        // Listed, then deleted before it was read (by another run, or a person): created
        // again if it is still desired when its value is read.
        let recreate = if target.capabilities().read_values {
            classified
                .to_read
                .iter()
                .filter(|n| !current.contains_key(*n) && desired.hashes.contains_key(*n))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        for (name, current_hash) in &current_hashes {
            let Some(hash) = desired.hashes.get(name) else {
                continue;
            };
            if current_hash == hash {
                tracing::trace!(secret = %name, "unchanged after reading");
                result.unchanged += 1;
                let version = state.listed[name].clone();
                records.secrets.insert(name.clone(), Record { hash: hash.clone(), version });
            } else {
                modified.push(name.clone());
            }
        }
        Ok(Self { current, current_hashes, modified, recreate })
    }

    /// The writes and deletes to make, each reported as a change (key names and hashes).
    async fn plan(
        mut self,
        desired: &mut Desired,
        classified: &Classified,
        deleting: bool,
        state: &TargetState,
        records: &TargetLedger,
        result: &mut JobResult,
    ) -> Result<Vec<Write>, JobError> {
        let mut wanted = classified.added.clone();
        wanted.extend(self.modified.iter().cloned());
        wanted.extend(self.recreate.iter().cloned());
        let mut values = desired.take(&wanted).await?;
        let mut writes = Vec::new();
        // A desired secret deleted since it was listed is no longer desired: not written.
        let gone = |name: &str| tracing::debug!(secret = %name, "no longer desired; not written");
        for name in classified.added.iter().chain(&self.recreate) {
            // Hashed as read: another run may have moved the desired value on since it was
            // listed, and the stamp and record must describe what is written.
            let Some(value) = values.remove(name) else {
                gone(name);
                continue;
            };
            tracing::debug!(secret = %name, "create");
            let hash = desired.key.hash(&value);
            result.changes.push(SecretChange::between(
                name.clone(),
                None,
                Some((&value, hash.clone())),
            ));
            writes.push(Write {
                name: name.clone(),
                pre: Precondition::Absent,
                value: Some((value, hash)),
            });
        }
        for name in std::mem::take(&mut self.modified) {
            let Some(value) = values.remove(&name) else {
                gone(&name);
                continue;
            };
            let hash = desired.key.hash(&value);
            // Another run may have moved both sides on since the desired hash was taken.
            if self.current_hashes.get(&name) == Some(&hash) {
                tracing::trace!(secret = %name, "unchanged after reading the desired value");
                result.unchanged += 1;
                continue;
            }
            tracing::debug!(secret = %name, "update");
            result.changes.push(self.change(&name, records, Some((&value, hash.clone()))));
            let pre = Precondition::Matches(state.listed[&name].clone());
            writes.push(Write { name, pre, value: Some((value, hash)) });
        }
        if deleting {
            for name in &classified.orphans {
                tracing::debug!(secret = %name, "delete");
                result.changes.push(self.change(name, records, None));
                let pre = Precondition::Matches(state.listed[name].clone());
                writes.push(Write { name: name.clone(), pre, value: None });
            }
        }
        Ok(writes)
    }

    /// The change from what `name` holds now (read, or known only by its record) to `new`.
    fn change(
        &mut self,
        name: &str,
        records: &TargetLedger,
        new: Option<(&SecretValue, ContentHash)>,
    ) -> SecretChange {
        match self.current.remove(name) {
            Some(old) => {
                let old_hash = self.current_hashes[name].clone();
                SecretChange::between(name.to_string(), Some((&old, old_hash)), new)
            }
            None => SecretChange::unseen(
                name.to_string(),
                records.secrets.get(name).map(|r| r.hash.clone()),
                new,
            ),
        }
    }
}
