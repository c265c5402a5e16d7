//! The manifest format: per target, the hashes, versions and input fingerprints of its merged
//! secrets, kept beside them in the merge store.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vss_protocol::{ContentHash, SecretValue};
use vss_stores::{SecretStore, StoreError, Version};

/// The hashes and versions of a target's merged secrets, kept beside them in the merge store
/// (`manifests/<target>`), so a sync learns the desired hashes without reading values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Secret name → what was merged and written.
    pub secrets: BTreeMap<String, ManifestEntry>,
}

/// One merged secret in the manifest. Stored as a 3-element array rather than an object: a
/// manifest has an entry per merged secret, and arrays keep it small on disk and in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EntryRepr", into = "EntryRepr")]
pub(crate) struct ManifestEntry {
    /// Keyed hash of the merged value.
    pub hash: ContentHash,
    /// Its version in the merge store right after the write.
    pub version: Version,
    /// Keyed fingerprint of its inputs (spec and per-layer versions); equal inputs mean an
    /// equal merge result.
    pub inputs: Option<ContentHash>,
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
    pub(crate) async fn read(
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
    pub(crate) async fn write(
        &self,
        store: &Arc<dyn SecretStore>,
        target: &str,
    ) -> Result<(), StoreError> {
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
    pub(crate) fn versions(&self) -> BTreeMap<String, Version> {
        self.secrets.iter().map(|(n, e)| (n.clone(), e.version.clone())).collect()
    }

    /// The recorded hash of `name`, if its listed version is still the one recorded.
    pub(crate) fn hash_if_current(&self, name: &str, listed: &Version) -> Option<ContentHash> {
        self.secrets.get(name).filter(|e| &e.version == listed).map(|e| e.hash.clone())
    }
}

/// The one field of a stored manifest: the manifest as JSON text.
const MANIFEST_FIELD: &str = "vss-manifest";

/// The merge store's folder of a target's merged secrets.
pub(crate) fn merged_prefix(target: &str) -> String {
    format!("targets/{target}/")
}
