//! The sync job: diff a target's desired state against its store, then create, update and
//! (with every safety rule met) delete.
//!
//! The speed core: desired hashes come from the merge manifest, current hashes from the ledger
//! when the store's listed version is still the one vss wrote. Values are read only for
//! secrets that changed, drifted, or lack a record; an unchanged resync is listings only.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::{StreamExt, stream};
use vss_protocol::diff::{ChangeType, SecretChange};
use vss_protocol::job::{DesiredState, Job, JobResult, SyncSpec};
use vss_protocol::{ContentHash, HashKey, SecretValue};
use vss_stores::ledger::Record;
use vss_stores::{Precondition, SecretStore, StoreError, Version};

use crate::{
    CONCURRENT_CALLS, JobError, Manifest, WorkerContext, ledger, list_versions, merged_prefix,
    read_all, read_listed,
};

/// The desired state of a target: hashes for every secret, values fetched on demand.
struct Desired {
    store: Arc<dyn SecretStore>,
    prefix: String,
    hashes: BTreeMap<String, ContentHash>,
    values: BTreeMap<String, SecretValue>,
}

impl Desired {
    async fn load(
        job: &Job,
        spec: &SyncSpec,
        ctx: &WorkerContext,
        key: &HashKey,
    ) -> Result<Self, JobError> {
        match &spec.desired {
            DesiredState::Source { store } => {
                let store = ctx.store(store)?;
                let values = read_all(&store, "").await?;
                let hashes = values
                    .iter()
                    .map(|(n, v)| (n.clone(), key.hash(v)))
                    .collect();
                Ok(Self {
                    store,
                    prefix: String::new(),
                    hashes,
                    values,
                })
            }
            DesiredState::Merged { merge_store } => {
                let store = ctx.store(merge_store)?;
                let Some(manifest) = Manifest::read(&store, &job.target).await? else {
                    return Err(JobError::Refused(format!(
                        "no merged result for target `{}` in {}; run the merge phase first",
                        job.target,
                        store.describe()
                    )));
                };
                let prefix = merged_prefix(&job.target);
                let mut desired = Self {
                    store,
                    prefix,
                    hashes: BTreeMap::new(),
                    values: BTreeMap::new(),
                };
                for (name, version) in list_versions(&desired.store, &desired.prefix).await? {
                    let hash = match manifest.hash_if_current(&name, &version) {
                        Some(hash) => hash,
                        None => {
                            // Changed behind vss's back since the merge: trust the content.
                            let value = read_listed(&desired.store, &desired.full(&name)).await?;
                            let hash = key.hash(&value);
                            desired.values.insert(name.clone(), value);
                            hash
                        }
                    };
                    desired.hashes.insert(name, hash);
                }
                Ok(desired)
            }
        }
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn value(&mut self, name: &str) -> Result<SecretValue, StoreError> {
        match self.values.remove(name) {
            Some(v) => Ok(v),
            None => read_listed(&self.store, &self.full(name)).await,
        }
    }
}

/// One planned write or delete.
struct Planned {
    name: String,
    change: ChangeType,
    pre: Precondition,
    hash: Option<ContentHash>,
    value: Option<SecretValue>,
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
    let ledger_store = ledger(&job.options);
    let mut records = ledger_store.load(&job.target, &target.describe())?;
    let listed = list_versions(&target, "").await?;
    // Records of secrets that no longer exist are dropped.
    records.secrets.retain(|name, _| listed.contains_key(name));

    let mut planned = Vec::new();
    let names: Vec<_> = desired.hashes.keys().cloned().collect();
    for name in names {
        let hash = desired.hashes[&name].clone();
        let Some(version) = listed.get(&name) else {
            tracing::debug!(secret = %name, "create");
            let value = desired.value(&name).await?;
            result.changes.push(SecretChange::between(
                name.clone(),
                None,
                Some((&value, hash.clone())),
            ));
            planned.push(Planned {
                name,
                change: ChangeType::Added,
                pre: Precondition::Absent,
                hash: Some(hash),
                value: Some(value),
            });
            continue;
        };
        let recorded = records
            .secrets
            .get(&name)
            .filter(|r| &r.version == version)
            .map(|r| r.hash.clone());
        let (current_hash, mut current_value) = match recorded {
            Some(h) => (h, None),
            None => {
                let value = read_listed(&target, &name).await?;
                (key.hash(&value), Some(value))
            }
        };
        if current_hash == hash {
            tracing::trace!(secret = %name, read = current_value.is_some(), "unchanged");
            result.unchanged += 1;
            records.secrets.insert(
                name,
                Record {
                    hash,
                    version: version.clone(),
                },
            );
            continue;
        }
        tracing::debug!(secret = %name, "update");
        if current_value.is_none() {
            current_value = Some(read_listed(&target, &name).await?);
        }
        let value = desired.value(&name).await?;
        result.changes.push(SecretChange::between(
            name.clone(),
            current_value.as_ref().map(|v| (v, current_hash)),
            Some((&value, hash.clone())),
        ));
        planned.push(Planned {
            name,
            change: ChangeType::Modified,
            pre: Precondition::Matches(version.clone()),
            hash: Some(hash),
            value: Some(value),
        });
    }

    let orphans: Vec<(&String, &Version)> = listed
        .iter()
        .filter(|(name, _)| {
            !desired.hashes.contains_key(*name) && records.secrets.contains_key(*name)
        })
        .collect();
    if let (Some(threshold), false) = (spec.delete, orphans.is_empty()) {
        if desired.hashes.is_empty() {
            result.warnings.push(format!(
                "target `{}`: the desired state is empty, so its {} owned secrets are kept (deletes skipped)",
                job.target,
                orphans.len()
            ));
        } else if threshold.exceeded(orphans.len() as u64, listed.len() as u64)
            && !job.options.allow_mass_delete
        {
            return Err(JobError::Refused(format!(
                "refusing to delete {} of {} secrets in {} (more than {}% and more than {}); nothing was changed. \
                 Check the sources, or rerun with --allow-mass-delete",
                orphans.len(),
                listed.len(),
                target.describe(),
                threshold.percent,
                threshold.count
            )));
        } else {
            for (name, version) in orphans {
                tracing::debug!(secret = %name, "delete");
                let current = read_listed(&target, name).await?;
                let current_hash = key.hash(&current);
                result.changes.push(SecretChange::between(
                    name.clone(),
                    Some((&current, current_hash)),
                    None,
                ));
                planned.push(Planned {
                    name: name.clone(),
                    change: ChangeType::Removed,
                    pre: Precondition::Matches(version.clone()),
                    hash: None,
                    value: None,
                });
            }
        }
    }

    if job.options.dry_run {
        return Ok(());
    }
    let outcomes: Vec<(Planned, Result<Option<Version>, StoreError>)> = stream::iter(planned)
        .map(|p| {
            let target = &target;
            async move {
                let done = match p.change {
                    ChangeType::Removed => {
                        target.delete(&p.name, p.pre.clone()).await.map(|()| None)
                    }
                    _ => {
                        let value = p.value.as_ref().expect("writes carry their value");
                        target.write(&p.name, value, p.pre.clone()).await.map(Some)
                    }
                };
                (p, done)
            }
        })
        .buffer_unordered(CONCURRENT_CALLS)
        .collect()
        .await;
    let mut first_error = None;
    let mut failed = 0;
    for (p, done) in outcomes {
        match done {
            Ok(Some(version)) => {
                let hash = p.hash.expect("writes carry their hash");
                records.secrets.insert(p.name, Record { hash, version });
            }
            Ok(None) => {
                records.secrets.remove(&p.name);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    ledger_store.save(&job.target, &records)?;
    match first_error {
        None => Ok(()),
        Some(e) if failed == 1 => Err(e.into()),
        Some(e) => Err(JobError::Refused(format!(
            "{failed} changes failed; the first: {e}"
        ))),
    }
}
