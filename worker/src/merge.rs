//! The merge job: fold a target's layers with the deep-merge rules and bring its folder in the
//! merge store (`targets/<target>/…` plus `manifests/<target>`) to that result, writing only
//! secrets whose content changed.
//!
//! Merging is per secret name, so it is incremental: the manifest keeps, for each merged
//! secret, a fingerprint of its inputs (the spec, and that name's version in every layer). A
//! secret whose inputs and merged copy are as recorded is not read at all; an unchanged
//! resync costs listings only, and a change to one source secret rereads just that name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use vss_protocol::diff::SecretChange;
use vss_protocol::job::{Job, JobResult, LayerSpec, MergeSpec};
use vss_protocol::merge::merge_layer;
use vss_protocol::{ContentHash, HashKey, SecretValue};
use vss_stores::conflict::Refresh;
use vss_stores::{Precondition, SecretStore, Version};

use crate::io::{Write, apply, list_versions, read_many, record_outcomes};
use crate::manifest::{Manifest, ManifestEntry, merged_prefix};
use crate::{JobError, WorkerContext};

/// One layer's store, folder and listing.
struct LayerListing {
    store: Arc<dyn SecretStore>,
    prefix: String,
    listed: BTreeMap<String, Version>,
}

/// Merges one target: list the layers → find the names whose inputs moved → read and fold
/// those → compare with the merged copies → write what changed and the manifest.
pub(crate) async fn run(
    job: &Job,
    spec: &MergeSpec,
    ctx: &WorkerContext,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let key = ctx.hash_key(&job.options).await?;
    let merge_store = ctx.store(&spec.merge_store)?;
    let prefix = merged_prefix(&job.target);
    let watch = ctx.watch_announcements(job).await;
    // The merged folder is listed before the layers, and every write and delete is made
    // against the version listed: what another run (an event) merges after this listing
    // conflicts and is merged again, and what it merged before is older than the layers read
    // here. So a merge that overlaps another never deletes or rolls back what it did.
    let listed = list_versions(&merge_store, &prefix).await?;
    let old = Manifest::read(&merge_store, &job.target).await?;
    let layers = list_layers(spec, ctx, &merge_store).await?;
    let manifest_exists = old.is_some();
    let old = old.unwrap_or_default();

    let names: BTreeSet<&String> = layers.iter().flat_map(|l| l.listed.keys()).collect();
    if names.is_empty() && !listed.is_empty() {
        // Every layer came back empty: more likely a broken source than a real wipe-out.
        result.warnings.push(format!(
            "merge of `{}` produced no secrets; keeping the {} secrets merged earlier",
            job.target,
            listed.len()
        ));
        return Ok(());
    }
    let spec_bytes =
        serde_json::to_vec(&(&spec.layers, spec.list_merge)).expect("merge specs serialize");
    let fingerprint = |name: &str| input_fingerprint(&key, &spec_bytes, &layers, name);
    let (mut manifest, dirty) = sort_names(names, &listed, &old, fingerprint, result);
    let merged = merge_dirty(&layers, &dirty, spec, &key).await?;

    // Merged copies are read only where they may differ: the manifest vouches for the others.
    let stale: Vec<String> = listed
        .keys()
        .filter(|n| !manifest.secrets.contains_key(*n) && !dirty.contains_key(*n))
        .cloned()
        .collect();
    let mut to_read = stale.clone();
    for (name, _, hash) in &merged {
        if let Some(version) = listed.get(name)
            && old.hash_if_current(name, version).as_ref() != Some(hash)
        {
            to_read.push(name.clone());
        }
    }
    let current = read_many(&merge_store, &prefix, to_read).await?;
    let folder = Folder { listed, current, dirty };
    let (writes, inputs_of) = folder.plan(merged, stale, &key, &mut manifest, result);

    let refresh = remerge(spec, ctx, &merge_store)?;
    let outcomes =
        apply(&merge_store, &prefix, writes, None, &key, Some(&*refresh), watch.as_ref()).await;
    let entry = |name: &str, hash, version| ManifestEntry {
        hash,
        version,
        inputs: inputs_of.get(name).cloned(),
    };
    record_outcomes(outcomes, &mut manifest.secrets, entry, result)?;
    // A missing manifest compares equal to an empty one, so write it then too.
    if manifest != old || !manifest_exists {
        manifest.write(&merge_store, &job.target).await?;
    }
    tracing::debug!(secrets = manifest.secrets.len(), layers = spec.layers.len(), "merged");
    Ok(())
}

/// Each layer's store, folder and listing, in merge order.
async fn list_layers(
    spec: &MergeSpec,
    ctx: &WorkerContext,
    merge_store: &Arc<dyn SecretStore>,
) -> Result<Vec<LayerListing>, JobError> {
    let mut layers = Vec::with_capacity(spec.layers.len());
    for layer in &spec.layers {
        let layer = match layer {
            LayerSpec::Source { store, .. } => {
                let store = ctx.store(store)?;
                let listed = list_versions(&store, "").await?;
                LayerListing { store, prefix: String::new(), listed }
            }
            // The parent's merge ran earlier in this run and checked its folder against its
            // manifest, so the manifest stands in for a listing.
            LayerSpec::Target { name } => {
                let listed = match Manifest::read(merge_store, name).await? {
                    Some(manifest) => manifest.versions(),
                    None => list_versions(merge_store, &merged_prefix(name)).await?,
                };
                LayerListing { store: merge_store.clone(), prefix: merged_prefix(name), listed }
            }
        };
        layers.push(layer);
    }
    Ok(layers)
}

/// Splits the names into those the manifest vouches for (inputs and merged copy as recorded:
/// kept in the new manifest, unchanged) and the dirty ones, with their input fingerprints.
fn sort_names(
    names: BTreeSet<&String>,
    listed: &BTreeMap<String, Version>,
    old: &Manifest,
    fingerprint: impl Fn(&str) -> ContentHash,
    result: &mut JobResult,
) -> (Manifest, BTreeMap<String, ContentHash>) {
    let mut manifest = Manifest { secrets: BTreeMap::new() };
    let mut dirty = BTreeMap::new();
    for name in names {
        let inputs = fingerprint(name);
        match (listed.get(name), old.secrets.get(name)) {
            (Some(version), Some(entry))
                if entry.version == *version && entry.inputs.as_ref() == Some(&inputs) =>
            {
                manifest.secrets.insert(name.clone(), entry.clone());
                result.unchanged += 1;
            }
            _ => {
                dirty.insert(name.clone(), inputs);
            }
        }
    }
    (manifest, dirty)
}

/// Reads the dirty names from every layer that has them and folds them in order; each merged
/// value with its keyed hash.
async fn merge_dirty(
    layers: &[LayerListing],
    dirty: &BTreeMap<String, ContentHash>,
    spec: &MergeSpec,
    key: &HashKey,
) -> Result<Vec<(String, SecretValue, ContentHash)>, JobError> {
    let mut merged = BTreeMap::new();
    for layer in layers {
        let wanted = dirty.keys().filter(|n| layer.listed.contains_key(*n)).cloned().collect();
        let values = read_many(&layer.store, &layer.prefix, wanted).await?;
        merge_layer(&mut merged, values, spec.list_merge);
    }
    Ok(merged
        .into_iter()
        .map(|(name, value)| {
            let hash = key.hash(&value);
            (name, value, hash)
        })
        .collect())
}

/// The target's folder in the merge store: its listing, the merged copies read, and the
/// dirty names' input fingerprints.
struct Folder {
    listed: BTreeMap<String, Version>,
    current: BTreeMap<String, SecretValue>,
    dirty: BTreeMap<String, ContentHash>,
}

impl Folder {
    /// The writes that bring the folder to `merged` (and delete `stale` copies nothing
    /// merges any more), each reported as a change; unchanged copies go straight into the
    /// manifest. Returns the writes and the input fingerprints of what they write.
    fn plan(
        mut self,
        merged: Vec<(String, SecretValue, ContentHash)>,
        stale: Vec<String>,
        key: &HashKey,
        manifest: &mut Manifest,
        result: &mut JobResult,
    ) -> (Vec<Write>, BTreeMap<String, ContentHash>) {
        let mut writes = Vec::new();
        let mut inputs_of = BTreeMap::new();
        for (name, value, hash) in merged {
            let inputs = self.dirty.remove(&name).expect("only dirty names are merged");
            let existing = self.current.remove(&name).map(|v| {
                let h = key.hash(&v);
                (v, h)
            });
            // Listed but not read means the manifest vouched that it already holds this value.
            let unchanged = match (&existing, self.listed.get(&name)) {
                (None, Some(version)) => Some(version),
                (Some((_, current_hash)), Some(version)) if *current_hash == hash => Some(version),
                _ => None,
            };
            if let Some(version) = unchanged {
                let entry = ManifestEntry { hash, version: version.clone(), inputs: Some(inputs) };
                manifest.secrets.insert(name, entry);
                result.unchanged += 1;
                continue;
            }
            let pre = match self.listed.get(&name) {
                Some(version) => Precondition::Matches(version.clone()),
                None => Precondition::Absent,
            };
            let change = SecretChange::between(
                name.clone(),
                existing.as_ref().map(|(v, h)| (v, h.clone())),
                Some((&value, hash.clone())),
            );
            result.changes.push(change);
            inputs_of.insert(name.clone(), inputs);
            writes.push(Write { name, pre, value: Some((value, hash)) });
        }
        for name in stale {
            // Gone since it was listed: nothing to delete.
            let Some(value) = self.current.remove(&name) else {
                continue;
            };
            let hash = key.hash(&value);
            let pre = Precondition::Matches(self.listed[&name].clone());
            result.changes.push(SecretChange::between(name.clone(), Some((&value, hash)), None));
            writes.push(Write { name, pre, value: None });
        }
        (writes, inputs_of)
    }
}

/// A [`Refresh`] that merges one name again from its layers as they are now (after a
/// conflict on its merged copy: another run may have merged newer inputs meanwhile).
pub(crate) fn remerge(
    spec: &MergeSpec,
    ctx: &WorkerContext,
    merge_store: &Arc<dyn SecretStore>,
) -> Result<Box<Refresh>, JobError> {
    let mut layers = Vec::with_capacity(spec.layers.len());
    for layer in &spec.layers {
        layers.push(match layer {
            LayerSpec::Source { store, .. } => {
                (ctx.store(store)?, String::new(), Some(store.clone()))
            }
            LayerSpec::Target { name } => (merge_store.clone(), merged_prefix(name), None),
        });
    }
    let (layers, list_merge) = (Arc::new(layers), spec.list_merge);
    Ok(Box::new(move |name: String| {
        let layers = layers.clone();
        Box::pin(async move {
            let mut merged = BTreeMap::new();
            for (store, prefix, spec) in layers.iter() {
                if spec.as_ref().is_some_and(|s| !s.covers(&name)) {
                    continue;
                }
                if let Some(found) = store.read(&format!("{prefix}{name}")).await? {
                    let layer = BTreeMap::from([(name.clone(), found.value)]);
                    merge_layer(&mut merged, layer, list_merge);
                }
            }
            Ok(merged.remove(&name))
        })
    }))
}

/// A keyed fingerprint of what one merged secret is made of: the spec (layer order, list rule)
/// and the secret's version in every layer.
fn input_fingerprint(
    key: &HashKey,
    spec_bytes: &[u8],
    layers: &[LayerListing],
    name: &str,
) -> ContentHash {
    let versions: Vec<Option<&Version>> = layers.iter().map(|l| l.listed.get(name)).collect();
    let mut bytes = spec_bytes.to_vec();
    bytes.extend(serde_json::to_vec(&versions).expect("versions serialize"));
    key.fingerprint(&bytes)
}
