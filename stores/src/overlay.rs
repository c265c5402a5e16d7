//! An in-memory layer over a store: reads see what was written through the layer, writes and
//! deletes never reach the store underneath. A dry run wraps every store in one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vss_protocol::SecretValue;

use crate::{Capabilities, Entry, Precondition, SecretStore, StoreError, Version, Versioned};

/// A store seen through uncommitted changes.
pub struct OverlayStore {
    inner: Arc<dyn SecretStore>,
    /// Secret name → its pending value (`None`: deleted).
    pending: Mutex<BTreeMap<String, Option<(SecretValue, Version)>>>,
}

impl OverlayStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn SecretStore>) -> Self {
        Self { inner, pending: Mutex::new(BTreeMap::new()) }
    }

    fn pending(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, Option<(SecretValue, Version)>>> {
        self.pending.lock().expect("overlay lock")
    }
}

#[async_trait::async_trait]
impl SecretStore for OverlayStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn store_name(&self, name: &str) -> Result<String, StoreError> {
        self.inner.store_name(name)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let mut entries: BTreeMap<String, Entry> =
            self.inner.list(prefix).await?.into_iter().map(|e| (e.name.clone(), e)).collect();
        for (name, change) in self.pending().range(prefix.to_string()..) {
            if !name.starts_with(prefix) {
                break;
            }
            match change {
                Some((_, version)) => {
                    let entry = Entry { name: name.clone(), version: version.clone(), stamp: None };
                    entries.insert(name.clone(), entry);
                }
                None => {
                    entries.remove(name);
                }
            }
        }
        Ok(entries.into_values().collect())
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        if let Some(change) = self.pending().get(name) {
            return Ok(change.as_ref().map(|(value, version)| Versioned {
                value: value.clone(),
                version: version.clone(),
            }));
        }
        self.inner.read(name).await
    }

    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        _pre: Precondition,
    ) -> Result<Version, StoreError> {
        let mut pending = self.pending();
        let version = Version(format!("dry-run-{}", pending.len() + 1));
        pending.insert(name.to_string(), Some((value.clone(), version.clone())));
        Ok(version)
    }

    async fn delete(&self, name: &str, _pre: Precondition) -> Result<(), StoreError> {
        self.pending().insert(name.to_string(), None);
        Ok(())
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.inner.api_calls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::FileStore;
    use serde_json::json;

    #[tokio::test]
    async fn changes_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(FileStore::new(dir.path().to_path_buf()));
        let v = SecretValue::new(json!({"a": 1}).as_object().unwrap().clone());
        file.write("kept", &v, Precondition::None).await.unwrap();
        let overlay = OverlayStore::new(file.clone());
        overlay.write("t/new", &v, Precondition::Absent).await.unwrap();
        overlay.delete("kept", Precondition::None).await.unwrap();
        let names: Vec<_> = overlay.list("").await.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["t/new"]);
        assert!(overlay.read("t/new").await.unwrap().is_some());
        assert!(overlay.read("kept").await.unwrap().is_none());
        let real: Vec<_> = file.list("").await.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(real, vec!["kept"]);
        assert_eq!(file.api_calls().get("write"), Some(&1));
    }
}
