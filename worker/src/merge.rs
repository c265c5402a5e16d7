//! The merge job: fold a target's layers with the deep-merge rules and bring its folder in the
//! merge store (`targets/<target>/…` plus `manifests/<target>`) to that result, writing only
//! secrets whose content changed.
//!
//! When nothing the merge reads has moved since the last merge (every layer's listing, the
//! spec and the hash key, fingerprinted in the manifest) and the merged folder is as recorded,
//! the merge is skipped: an unchanged resync costs listings only.

use std::collections::BTreeMap;
use std::sync::Arc;

use vss_protocol::HashKey;
use vss_protocol::diff::SecretChange;
use vss_protocol::job::{Job, JobResult, LayerSpec, MergeSpec};
use vss_protocol::merge::merge_layer;
use vss_stores::{Precondition, SecretStore, Version};

use crate::{
    JobError, Manifest, ManifestEntry, WorkerContext, Write, apply, list_versions, merged_prefix,
    read_listing, read_many, record_outcomes,
};

/// One layer's store, folder and listing.
struct LayerListing {
    store: Arc<dyn SecretStore>,
    prefix: String,
    listed: BTreeMap<String, Version>,
}

pub(crate) async fn run(
    job: &Job,
    spec: &MergeSpec,
    ctx: &WorkerContext,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let key = ctx.hash_key(&job.options)?;
    let merge_store = ctx.store(&spec.merge_store)?;
    let prefix = merged_prefix(&job.target);

    let mut layers = Vec::with_capacity(spec.layers.len());
    for layer in &spec.layers {
        let (store, prefix) = match layer {
            LayerSpec::Source { store, .. } => (ctx.store(store)?, String::new()),
            LayerSpec::Target { name } => (merge_store.clone(), merged_prefix(name)),
        };
        let listed = list_versions(&store, &prefix).await?;
        layers.push(LayerListing {
            store,
            prefix,
            listed,
        });
    }
    let inputs = fingerprint(&key, spec, &layers);
    let listed = list_versions(&merge_store, &prefix).await?;
    let old = Manifest::read(&merge_store, &job.target).await?;
    if let Some(old) = &old
        && old.inputs.as_ref() == Some(&inputs)
        && old.matches(&listed)
    {
        tracing::debug!("inputs unchanged since the last merge; skipped");
        result.unchanged = listed.len() as u64;
        return Ok(());
    }
    let manifest_exists = old.is_some();
    let old = old.unwrap_or_default();

    let mut merged = BTreeMap::new();
    for layer in &layers {
        let secrets = read_listing(&layer.store, &layer.prefix, &layer.listed).await?;
        merge_layer(&mut merged, secrets, spec.list_merge);
    }

    let mut manifest = Manifest {
        inputs: Some(inputs),
        secrets: BTreeMap::new(),
    };
    let mut hashes = BTreeMap::new();
    let mut to_check = Vec::new();
    for (name, value) in &merged {
        let hash = key.hash(value);
        if let Some(version) = listed.get(name) {
            if old.hash_if_current(name, version).as_ref() == Some(&hash) {
                let entry = ManifestEntry {
                    hash,
                    version: version.clone(),
                };
                manifest.secrets.insert(name.clone(), entry);
                result.unchanged += 1;
                continue;
            }
            to_check.push(name.clone());
        }
        hashes.insert(name.clone(), hash);
    }

    let stale: Vec<String> = listed
        .keys()
        .filter(|n| !merged.contains_key(*n))
        .cloned()
        .collect();
    let keep_stale = merged.is_empty() && !stale.is_empty();
    if keep_stale {
        // Every layer came back empty: more likely a broken source than a real wipe-out.
        result.warnings.push(format!(
            "merge of `{}` produced no secrets; keeping the {} secrets merged earlier",
            job.target,
            stale.len()
        ));
        return Ok(());
    }
    to_check.extend(stale.iter().cloned());
    let mut current = read_many(&merge_store, &prefix, to_check).await?;

    let mut writes = Vec::new();
    for (name, value) in merged {
        let Some(hash) = hashes.remove(&name) else {
            continue;
        };
        let existing = current.remove(&name).map(|v| {
            let h = key.hash(&v);
            (v, h)
        });
        let pre = match (&existing, listed.get(&name)) {
            (Some((_, current_hash)), Some(version)) if *current_hash == hash => {
                let entry = ManifestEntry {
                    hash,
                    version: version.clone(),
                };
                manifest.secrets.insert(name, entry);
                result.unchanged += 1;
                continue;
            }
            (_, Some(version)) => Precondition::Matches(version.clone()),
            (_, None) => Precondition::Absent,
        };
        let change = SecretChange::between(
            name.clone(),
            existing.as_ref().map(|(v, h)| (v, h.clone())),
            Some((&value, hash.clone())),
        );
        result.changes.push(change);
        writes.push(Write {
            name,
            pre,
            value: Some((value, hash)),
        });
    }
    for name in stale {
        let value = current.remove(&name).expect("stale secrets were read");
        let hash = key.hash(&value);
        let version = listed[&name].clone();
        result.changes.push(SecretChange::between(
            name.clone(),
            Some((&value, hash)),
            None,
        ));
        writes.push(Write {
            name,
            pre: Precondition::Matches(version),
            value: None,
        });
    }

    let outcomes = apply(&merge_store, &prefix, writes).await;
    record_outcomes(outcomes, &mut manifest.secrets, |hash, version| {
        ManifestEntry { hash, version }
    })?;
    // A missing manifest compares equal to an empty one, so write it then too.
    if manifest != old || !manifest_exists {
        manifest.write(&merge_store, &job.target).await?;
    }
    tracing::debug!(
        secrets = manifest.secrets.len(),
        layers = spec.layers.len(),
        "merged"
    );
    Ok(())
}

/// A keyed fingerprint of everything a merge reads: the spec (layer order, list rule) and each
/// layer's names and versions.
fn fingerprint(
    key: &HashKey,
    spec: &MergeSpec,
    layers: &[LayerListing],
) -> vss_protocol::ContentHash {
    let listings: Vec<_> = layers.iter().map(|l| (&l.prefix, &l.listed)).collect();
    let bytes = serde_json::to_vec(&(&spec.layers, spec.list_merge, listings))
        .expect("fingerprint input serializes");
    key.fingerprint(&bytes)
}
