//! The `file` store: secret `a/b` is the file `<dir>/a/b.json` holding one JSON object.
//!
//! Writes are atomic (a temp file in the same folder, then rename) and readable by the owner
//! only; writing the bytes a file already holds leaves it untouched (its mtime stays). A
//! secret's version is its mtime (nanoseconds), size and inode. Files and folders whose names start
//! with `.` are not secrets (temp files live there; ones left by a killed writer are removed
//! by the next write in their folder once they are [`STALE_TEMP`] old). Symbolic links inside the folder are never followed:
//! listing, reading or writing through one is an error naming it (a link could lead reads or
//! writes out of the folder, and a secret vss cannot see would look deleted). So is a name
//! that is not UTF-8.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind as IoKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use vss_protocol::SecretValue;
use zeroize::Zeroize;

use crate::{
    ApiCalls, Capabilities, Entry, ErrorKind, Precondition, SecretStore, StoreError, Version,
    Versioned,
};

/// How old a `.vss-*` temp file must be before a listing removes it as left behind by a
/// killed writer (a live write takes milliseconds).
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes `.vss-*` temp files in `dir` older than [`STALE_TEMP`] (they may hold plaintext).
pub(crate) fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    entries.flatten().for_each(|entry| remove_if_stale_temp(&entry));
}

/// Removes `entry` if it is a `.vss-*` temp file older than [`STALE_TEMP`].
pub(crate) fn remove_if_stale_temp(entry: &fs::DirEntry) {
    let stale = entry.file_name().to_str().is_some_and(|n| n.starts_with(".vss-"))
        && entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP);
    if stale && fs::remove_file(entry.path()).is_ok() {
        tracing::debug!(path = %entry.path().display(), "removed a temp file left by a killed writer");
    }
}

/// A folder of JSON files.
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    label: String,
    calls: ApiCalls,
    /// Folders whose stale temp files were removed.
    tidied: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl FileStore {
    /// A store rooted at `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        let label = format!("file:{}", dir.display());
        let tidied = std::sync::Mutex::new(std::collections::HashSet::new());
        Self { inner: Arc::new(Inner { dir, label, calls: ApiCalls::default(), tidied }) }
    }
}

impl Inner {
    fn err(&self, kind: ErrorKind, secret: Option<&str>, message: impl Into<String>) -> StoreError {
        StoreError::new(kind, &self.label, secret, message)
    }

    fn io(&self, secret: Option<&str>, what: &str, e: &std::io::Error) -> StoreError {
        self.err(ErrorKind::Io, secret, format!("{what}: {e}"))
    }

    /// The file of a secret, after checking the name cannot escape the folder.
    fn path_of(&self, name: &str) -> Result<PathBuf, StoreError> {
        let valid = !name.is_empty()
            && !name.contains(['\\', '\0'])
            && name.split('/').all(|seg| !seg.is_empty() && !seg.starts_with('.'));
        if !valid {
            return Err(self.err(
                ErrorKind::Invalid,
                Some(name),
                "invalid secret name (empty segments, `.`-prefixed segments, `\\` and NUL are not allowed)",
            ));
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// Refuses a path inside the store that goes through a symbolic link (the store's own
    /// folder may be one).
    fn no_links(&self, name: &str, path: &Path) -> Result<(), StoreError> {
        let Ok(inside) = path.strip_prefix(&self.dir) else { return Ok(()) };
        let mut at = self.dir.clone();
        for part in inside.components() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(self.link_error(Some(name), &at));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }

    fn link_error(&self, name: Option<&str>, at: &Path) -> StoreError {
        let message = format!(
            "{} is a symbolic link; vss does not follow links inside a store (replace it with the real file or folder, or point the store at it)",
            at.display()
        );
        self.err(ErrorKind::Invalid, name, message)
    }

    fn version_of(meta: &fs::Metadata) -> Version {
        let nanos = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        // The inode catches a same-size replacement within one timestamp tick.
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Version(format!("{nanos}-{}-{inode}", meta.len()))
    }

    fn current_version(&self, path: &Path, name: &str) -> Result<Option<Version>, StoreError> {
        match fs::metadata(path) {
            Ok(meta) => Ok(Some(Self::version_of(&meta))),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(self.io(Some(name), "stat", &e)),
        }
    }

    fn check(
        &self,
        name: &str,
        current: &Option<Version>,
        pre: &Precondition,
    ) -> Result<(), StoreError> {
        if pre.holds(current.as_ref()) {
            Ok(())
        } else {
            Err(StoreError::conflict(&self.label, name))
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.calls.record("list");
        let root = self.dir.join(prefix);
        let mut out = Vec::new();
        let mut pending = vec![(root, prefix.to_string())];
        while let Some((dir, name_prefix)) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == IoKind::NotFound => continue,
                Err(e) => return Err(self.io(None, &format!("list {}", dir.display()), &e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io(None, "list", &e))?;
                let file_name = entry.file_name();
                let Some(file_name) = file_name.to_str() else {
                    let message =
                        format!("{} has a name that is not UTF-8", entry.path().display());
                    return Err(self.err(ErrorKind::Invalid, None, message));
                };
                if file_name.starts_with('.') {
                    continue;
                }
                let file_type = entry.file_type().map_err(|e| self.io(None, "list", &e))?;
                if file_type.is_symlink() {
                    return Err(self.link_error(None, &entry.path()));
                }
                if file_type.is_dir() {
                    pending.push((entry.path(), format!("{name_prefix}{file_name}/")));
                } else if let Some(stem) = file_name.strip_suffix(".json") {
                    let name = format!("{name_prefix}{stem}");
                    let meta = match entry.metadata() {
                        Ok(meta) => meta,
                        // Deleted by another writer since the folder was read: not listed.
                        Err(e) if e.kind() == IoKind::NotFound => continue,
                        Err(e) => return Err(self.io(Some(&name), "stat", &e)),
                    };
                    out.push(Entry { name, version: Self::version_of(&meta), stamp: None });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        self.calls.record("read");
        let path = self.path_of(name)?;
        self.no_links(name, &path)?;
        let mut bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(Some(name), "read", &e)),
        };
        let parsed = SecretValue::from_json_slice(&bytes);
        bytes.zeroize();
        let value = parsed.map_err(|e| self.err(ErrorKind::Invalid, Some(name), e.to_string()))?;
        let version = self.current_version(&path, name)?.unwrap_or(Version(String::new()));
        Ok(Some(Versioned { value, version }))
    }

    /// Writes the encoded secret: `bytes` is zeroized afterwards, whatever happens.
    fn write(
        &self,
        name: &str,
        mut bytes: Vec<u8>,
        pre: &Precondition,
    ) -> Result<Version, StoreError> {
        let result = self.path_of(name).and_then(|path| {
            self.no_links(name, &path)?;
            let current = self.current_version(&path, name)?;
            self.check(name, &current, pre)?;
            self.write_bytes(name, &path, &bytes, current.is_some())
        });
        bytes.zeroize();
        result
    }

    fn write_bytes(
        &self,
        name: &str,
        path: &Path,
        bytes: &[u8],
        exists: bool,
    ) -> Result<Version, StoreError> {
        if exists {
            self.calls.record("compare");
            if let Ok(mut old) = fs::read(path) {
                let same = old == bytes;
                old.zeroize();
                if same {
                    return self
                        .current_version(path, name)
                        .map(|v| v.unwrap_or(Version(String::new())));
                }
            }
        }
        self.calls.record("write");
        let parent = path.parent().expect("a secret file has a folder");
        fs::create_dir_all(parent).map_err(|e| self.io(Some(name), "create folder", &e))?;
        // Temp files a killed writer left are tidied where this store writes, once per folder
        // (never by a listing: sources and dry runs change nothing).
        if self.tidied.lock().expect("tidied lock").insert(parent.to_path_buf()) {
            remove_stale_temps(parent);
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".vss-")
            .tempfile_in(parent)
            .map_err(|e| self.io(Some(name), "create temp file", &e))?;
        tmp.write_all(bytes).map_err(|e| self.io(Some(name), "write", &e))?;
        tmp.as_file().sync_data().map_err(|e| self.io(Some(name), "sync", &e))?;
        tmp.persist(path).map_err(|e| self.io(Some(name), "rename", &e.error))?;
        Ok(self.current_version(path, name)?.unwrap_or(Version(String::new())))
    }

    fn delete(&self, name: &str, pre: &Precondition) -> Result<(), StoreError> {
        self.calls.record("delete");
        let path = self.path_of(name)?;
        self.no_links(name, &path)?;
        let current = self.current_version(&path, name)?;
        self.check(name, &current, pre)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io(Some(name), "delete", &e)),
        }
        // Tidy folders left empty, up to the store's root.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.dir && d.starts_with(&self.dir)) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

impl FileStore {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.unwrap_or_else(|e| {
            Err(self.inner.err(ErrorKind::Io, None, format!("file task failed: {e}")))
        })
    }
}

#[async_trait::async_trait]
impl SecretStore for FileStore {
    fn describe(&self) -> String {
        self.inner.label.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_values: true, metadata: false, conditional_writes: false }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.list(&prefix)).await
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        let name = name.to_string();
        self.blocking(move |s| s.read(&name)).await
    }

    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError> {
        // Encoded here, so only bytes (not a copy of the value) move to the blocking thread.
        let mut bytes =
            serde_json::to_vec_pretty(value.expose()).expect("a JSON map always serializes");
        bytes.push(b'\n');
        let name = name.to_string();
        self.blocking(move |s| s.write(&name, bytes, &pre)).await
    }

    async fn delete(&self, name: &str, pre: Precondition) -> Result<(), StoreError> {
        let name = name.to_string();
        self.blocking(move |s| s.delete(&name, &pre)).await
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.inner.calls.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value(v: serde_json::Value) -> SecretValue {
        SecretValue::new(v.as_object().unwrap().clone())
    }

    #[tokio::test]
    async fn writes_lists_reads_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().to_path_buf());
        let v1 = store
            .write("app/db", &value(json!({"user": "u"})), Precondition::Absent)
            .await
            .unwrap();
        store.write("top", &value(json!({"k": 1})), Precondition::None).await.unwrap();
        std::fs::write(dir.path().join("app/.vss-partial"), b"x").unwrap();
        let names: Vec<_> = store.list("").await.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["app/db", "top"]);
        let listed = store.list("app/").await.unwrap();
        assert_eq!(listed, vec![Entry { name: "app/db".into(), version: v1.clone(), stamp: None }]);
        let read = store.read("app/db").await.unwrap().unwrap();
        assert_eq!(read.value.expose()["user"], "u");
        assert_eq!(read.version, v1);
        assert!(store.read("missing").await.unwrap().is_none());
        store.delete("top", Precondition::None).await.unwrap();
        assert!(store.read("top").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unchanged_writes_leave_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().to_path_buf());
        let v1 = store.write("s", &value(json!({"a": 1})), Precondition::None).await.unwrap();
        let mtime = std::fs::metadata(dir.path().join("s.json")).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let v2 = store
            .write("s", &value(json!({"a": 1})), Precondition::Matches(v1.clone()))
            .await
            .unwrap();
        assert_eq!(v1, v2);
        assert_eq!(
            std::fs::metadata(dir.path().join("s.json")).unwrap().modified().unwrap(),
            mtime
        );
        assert_eq!(store.api_calls().get("write"), Some(&1));
    }

    #[tokio::test]
    async fn preconditions_refuse_concurrent_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().to_path_buf());
        let v1 = store.write("s", &value(json!({"a": 1})), Precondition::Absent).await.unwrap();
        let err =
            store.write("s", &value(json!({"a": 2})), Precondition::Absent).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.write("s", &value(json!({"a": 3})), Precondition::Matches(v1.clone())).await.unwrap();
        let err =
            store.write("s", &value(json!({"a": 4})), Precondition::Matches(v1)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
    }

    #[tokio::test]
    async fn names_cannot_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("root"));
        for bad in ["../x", "a/../../x", "/abs", "a//b", ".hidden", ""] {
            let err = store.write(bad, &value(json!({})), Precondition::None).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{bad}");
        }
    }

    #[tokio::test]
    async fn malformed_files_name_the_secret_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json"), br#""canary-secret""#).unwrap();
        let store = FileStore::new(dir.path().to_path_buf());
        let err = store.read("bad").await.unwrap_err().to_string();
        assert!(err.contains("secret `bad`") && !err.contains("canary"), "{err}");
    }
}
