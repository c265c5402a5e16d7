//! The merge job: fold a target's layers with the deep-merge rules and bring its folder in the
//! merge store (`targets/<target>/…` plus `manifests/<target>`) to that result, writing only
//! secrets whose content changed.

use std::collections::BTreeMap;

use vss_protocol::diff::SecretChange;
use vss_protocol::job::{Job, JobResult, LayerSpec, MergeSpec};
use vss_protocol::merge::merge_layer;
use vss_stores::Precondition;

use crate::{
    JobError, Manifest, ManifestEntry, WorkerContext, list_versions, merged_prefix, read_all,
    read_listed,
};

pub(crate) async fn run(
    job: &Job,
    spec: &MergeSpec,
    ctx: &WorkerContext,
    result: &mut JobResult,
) -> Result<(), JobError> {
    let key = ctx.hash_key(&job.options)?;
    let merge_store = ctx.store(&spec.merge_store)?;

    let mut merged = BTreeMap::new();
    for layer in &spec.layers {
        tracing::trace!(?layer, "reading layer");
        let secrets = match layer {
            LayerSpec::Source { store, .. } => read_all(&ctx.store(store)?, "").await?,
            LayerSpec::Target { name } => read_all(&merge_store, &merged_prefix(name)).await?,
        };
        merge_layer(&mut merged, secrets, spec.list_merge);
    }

    let prefix = merged_prefix(&job.target);
    let listed = list_versions(&merge_store, &prefix).await?;
    let old = Manifest::read(&merge_store, &job.target).await?;
    let manifest_exists = old.is_some();
    let old = old.unwrap_or_default();
    let mut manifest = Manifest::default();

    for (name, value) in &merged {
        let hash = key.hash(value);
        let full = format!("{prefix}{name}");
        let (current, pre) = match listed.get(name) {
            None => (None, Precondition::Absent),
            Some(version) => {
                if let Some(known) = old.hash_if_current(name, version).filter(|h| *h == hash) {
                    manifest.secrets.insert(
                        name.clone(),
                        ManifestEntry {
                            hash: known,
                            version: version.clone(),
                        },
                    );
                    result.unchanged += 1;
                    continue;
                }
                let current = read_listed(&merge_store, &full).await?;
                let current_hash = key.hash(&current);
                if current_hash == hash {
                    manifest.secrets.insert(
                        name.clone(),
                        ManifestEntry {
                            hash,
                            version: version.clone(),
                        },
                    );
                    result.unchanged += 1;
                    continue;
                }
                (
                    Some((current, current_hash)),
                    Precondition::Matches(version.clone()),
                )
            }
        };
        let version = merge_store.write(&full, value, pre).await?;
        result.changes.push(SecretChange::between(
            name.clone(),
            current.as_ref().map(|(v, h)| (v, h.clone())),
            Some((value, hash.clone())),
        ));
        manifest
            .secrets
            .insert(name.clone(), ManifestEntry { hash, version });
    }

    let stale: Vec<_> = listed
        .iter()
        .filter(|(name, _)| !merged.contains_key(*name))
        .collect();
    if merged.is_empty() && !stale.is_empty() {
        // Every layer came back empty: more likely a broken source than a real wipe-out.
        result.warnings.push(format!(
            "merge of `{}` produced no secrets; keeping the {} secrets merged earlier",
            job.target,
            stale.len()
        ));
        manifest = old.clone();
    } else {
        for (name, version) in stale {
            let full = format!("{prefix}{name}");
            let current = read_listed(&merge_store, &full).await?;
            let current_hash = key.hash(&current);
            merge_store
                .delete(&full, Precondition::Matches(version.clone()))
                .await?;
            result.changes.push(SecretChange::between(
                name.clone(),
                Some((&current, current_hash)),
                None,
            ));
        }
    }

    // A missing manifest compares equal to an empty one, so write it then too.
    if manifest != old || !manifest_exists {
        manifest.write(&merge_store, &job.target).await?;
    }
    tracing::debug!(secrets = merged.len(), layers = spec.layers.len(), "merged");
    Ok(())
}
