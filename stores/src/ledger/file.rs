//! The state ledger in a folder: `<path>/targets/<target>.json` (with its journal,
//! `<target>.journal`) and `<path>/hash-key`.
//!
//! A targeted run (a few changed names) does not rewrite a target's records, whose size grows
//! with the target: it appends its names' records to the target's journal (one JSON object
//! per line). Loads replay the journal over the records; a full save folds it in and removes
//! it. The journal is guarded within a process only: several processes sharing the folder
//! (a fleet on a shared volume) should keep the ledger in NATS instead (`state: {nats: …}`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{ErrorKind as IoKind, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use vss_protocol::HashKey;
use vss_protocol::config::StoreSpec;
use vss_protocol::job::Shard;
use zeroize::Zeroize;

use super::{LedgerError, Record, TargetLedger, shard_records};

/// The ledger in a folder.
pub struct FileLedger {
    dir: PathBuf,
    read_only: bool,
    /// Per records name, how many journal bytes its last load replayed (a save folds in
    /// only what was appended since).
    replayed: Mutex<BTreeMap<String, u64>>,
}

/// Serializes journal appends against the fold-and-remove of a save, within a process.
static JOURNAL: Mutex<()> = Mutex::new(());

/// One journal line: a secret's new record (`None`: vss deleted it) in a store.
#[derive(Serialize, Deserialize)]
struct JournalLine {
    store: String,
    secret: String,
    record: Option<Record>,
}

impl FileLedger {
    /// The ledger in `dir`; `read_only` (dry runs) never writes.
    pub fn new(dir: PathBuf, read_only: bool) -> Self {
        Self { dir, read_only, replayed: Mutex::default() }
    }

    fn err(&self, path: &std::path::Path, message: impl Into<String>) -> LedgerError {
        LedgerError { path: path.display().to_string(), message: message.into() }
    }

    /// The file of a target's (or shard's) records; a name that could leave the folder (a
    /// job off the wire is not trusted to be validated) is refused.
    fn target_path(&self, target: &str) -> Result<PathBuf, LedgerError> {
        let safe = target.starts_with(|c: char| c.is_ascii_alphanumeric())
            && target.chars().all(|c| c.is_ascii_alphanumeric() || "_-.#".contains(c));
        if !safe {
            let message = format!("`{target}` is not a target name");
            return Err(LedgerError { path: self.dir.display().to_string(), message });
        }
        Ok(self.dir.join("targets").join(format!("{target}.json")))
    }

    fn journal_path(&self, target: &str) -> Result<PathBuf, LedgerError> {
        Ok(self.target_path(target)?.with_extension("journal"))
    }

    /// Records the outcome of a targeted run for a few names (`None`: deleted) without
    /// rewriting the target's records: appended to its journal (a shard's, for a shard).
    pub fn append(
        &self,
        target: &str,
        shard: Option<&Shard>,
        store: &StoreSpec,
        updates: &BTreeMap<String, Option<Record>>,
    ) -> Result<(), LedgerError> {
        if self.read_only || updates.is_empty() {
            return Ok(());
        }
        let name = match shard {
            Some(shard) => shard_records(target, shard),
            None => target.to_string(),
        };
        let path = self.journal_path(&name)?;
        let identity = store.identity().as_str().to_string();
        let mut lines = Vec::new();
        for (secret, record) in updates {
            let line = JournalLine {
                store: identity.clone(),
                secret: secret.clone(),
                record: record.clone(),
            };
            serde_json::to_writer(&mut lines, &line).expect("journal lines serialize");
            lines.push(b'\n');
        }
        let parent = path.parent().expect("ledger files live in a folder");
        fs::create_dir_all(parent).map_err(|e| self.err(parent, e.to_string()))?;
        let _guard = JOURNAL.lock().expect("journal lock");
        // A line torn by a crash mid-append is ended first, so it spoils no other line.
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| self.err(&path, e.to_string()))?;
        if ends_torn(&mut file) {
            lines.insert(0, b'\n');
        }
        file.write_all(&lines).map_err(|e| self.err(&path, e.to_string()))?;
        file.sync_data().map_err(|e| self.err(&path, e.to_string()))
    }

    /// Replays the journal of `name` from byte `from` over `ledger` (entries of its store
    /// only; a torn line, from a crash mid-append, is ignored); returns the offset after the
    /// last whole line. Callers hold [`JOURNAL`].
    fn replay(&self, name: &str, from: u64, ledger: &mut TargetLedger) -> Result<u64, LedgerError> {
        let path = self.journal_path(name)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(0),
            Err(e) => return Err(self.err(&path, e.to_string())),
        };
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(whole);
        for line in bytes[start..whole].split(|b| *b == b'\n') {
            let Ok(entry) = serde_json::from_slice::<JournalLine>(line) else { continue };
            if entry.store != ledger.store {
                continue;
            }
            match entry.record {
                Some(record) => ledger.secrets.insert(entry.secret, record),
                None => ledger.secrets.remove(&entry.secret),
            };
        }
        Ok(whole as u64)
    }

    /// The records of `target` for `store`; empty when none exist or they describe another store.
    pub fn load(&self, target: &str, store: &StoreSpec) -> Result<TargetLedger, LedgerError> {
        let saved = self.load_existing(target, store)?.unwrap_or_else(|| TargetLedger {
            store: store.identity().as_str().to_string(),
            ..Default::default()
        });
        self.with_journal(target, saved)
    }

    /// `ledger` with the journal of `name` replayed over it. The first load of a name is
    /// what a save of it builds on: how much it replayed is remembered for that save.
    fn with_journal(
        &self,
        name: &str,
        mut ledger: TargetLedger,
    ) -> Result<TargetLedger, LedgerError> {
        let _guard = JOURNAL.lock().expect("journal lock");
        let replayed = self.replay(name, 0, &mut ledger)?;
        self.replayed.lock().expect("replayed lock").entry(name.to_string()).or_insert(replayed);
        Ok(ledger)
    }

    /// The saved records of `target` (no journal), `None` when none were ever saved.
    fn load_existing(
        &self,
        target: &str,
        store: &StoreSpec,
    ) -> Result<Option<TargetLedger>, LedgerError> {
        let path = self.target_path(target)?;
        let identity = store.identity().as_str().to_string();
        let bytes = match fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == IoKind::NotFound => None,
            Err(e) => return Err(self.err(&path, e.to_string())),
        };
        let Some(bytes) = bytes else { return Ok(None) };
        let mut ledger: TargetLedger =
            serde_json::from_slice(&bytes).map_err(|e| self.err(&path, format!("corrupt: {e}")))?;
        // Records bound by the store's label are the same store's, when the label names the
        // store completely: rebind them. Anything else starts afresh (ownership is lost, never
        // granted to another store).
        let legacy = store.label_is_complete() && ledger.store == store.to_string();
        if ledger.store != identity && !legacy {
            ledger.secrets.clear();
        }
        ledger.store = identity;
        Ok(Some(ledger))
    }

    /// The records a sync job keeps, and the name it saves them under: the target's own, or
    /// a shard's (shards run concurrently, so each keeps its own records).
    pub fn load_for_job(
        &self,
        target: &str,
        shard: Option<&Shard>,
        store: &StoreSpec,
    ) -> Result<(String, TargetLedger), LedgerError> {
        match shard {
            Some(shard) => {
                Ok((shard_records(target, shard), self.load_shard(target, shard, store)?))
            }
            None => Ok((target.to_string(), self.load(target, store)?)),
        }
    }

    /// A shard's records. Before its first save they come from whatever the target had: its
    /// unsharded records and those of any earlier shard count, narrowed to this shard's names.
    fn load_shard(
        &self,
        target: &str,
        shard: &Shard,
        store: &StoreSpec,
    ) -> Result<TargetLedger, LedgerError> {
        let own = shard_records(target, shard);
        if let Some(saved) = self.load_existing(&own, store)? {
            return self.with_journal(&own, saved);
        }
        let mut seeded = self.load(target, store)?;
        for name in self.names_with_prefix(&format!("{target}#"))? {
            seeded.secrets.extend(self.load(&name, store)?.secrets);
        }
        seeded.secrets.retain(|name, _| shard.owns(name));
        self.with_journal(&own, seeded)
    }

    /// The secrets any of a target's `count` shards has records of.
    pub fn recorded_in_any_shard(
        &self,
        target: &str,
        count: u32,
        store: &StoreSpec,
    ) -> Result<BTreeSet<String>, LedgerError> {
        let mut recorded = BTreeSet::new();
        for index in 0..count {
            let shard = Shard { index, count };
            recorded.extend(self.load_shard(target, &shard, store)?.secrets.into_keys());
        }
        Ok(recorded)
    }

    /// Every records name here (`<target>`, or a shard's `<target>#<i>-of-<n>`) with its
    /// records as kept: bound to the store they were saved for, the journal replayed.
    pub fn all(&self) -> Result<Vec<(String, TargetLedger)>, LedgerError> {
        let dir = self.dir.join("targets");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(&dir, e.to_string())),
        };
        let mut names = BTreeSet::new();
        for entry in entries {
            let file = entry.map_err(|e| self.err(&dir, e.to_string()))?.file_name();
            let file = file.to_string_lossy();
            if let Some(name) = file.strip_suffix(".json").or_else(|| file.strip_suffix(".journal"))
            {
                names.insert(name.to_string());
            }
        }
        let mut all = Vec::new();
        for name in names {
            let path = self.target_path(&name)?;
            let mut ledger = match fs::read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| self.err(&path, format!("corrupt: {e}")))?,
                Err(e) if e.kind() == IoKind::NotFound => {
                    // Only journaled so far: its lines name the store.
                    let Some(store) = self.journal_store(&name)? else { continue };
                    TargetLedger { store, ..Default::default() }
                }
                Err(e) => return Err(self.err(&path, e.to_string())),
            };
            let _guard = JOURNAL.lock().expect("journal lock");
            self.replay(&name, 0, &mut ledger)?;
            all.push((name, ledger));
        }
        Ok(all)
    }

    /// The store the first whole line of `name`'s journal names.
    fn journal_store(&self, name: &str) -> Result<Option<String>, LedgerError> {
        let path = self.journal_path(name)?;
        let bytes = fs::read(&path).map_err(|e| self.err(&path, e.to_string()))?;
        Ok(bytes
            .split(|b| *b == b'\n')
            .find_map(|line| serde_json::from_slice::<JournalLine>(line).ok())
            .map(|line| line.store))
    }

    /// The ledger's own hash key, if one was generated yet.
    pub fn stored_hash_key(&self) -> Result<Option<HashKey>, LedgerError> {
        let path = self.dir.join("hash-key");
        match fs::read_to_string(&path) {
            Ok(mut text) => {
                let key = HashKey::from_hex(&text);
                text.zeroize();
                key.map(Some).ok_or_else(|| self.err(&path, "not a 64-hex-digit key"))
            }
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&path, e.to_string())),
        }
    }

    /// The names under which records were saved that start with `prefix`.
    fn names_with_prefix(&self, prefix: &str) -> Result<Vec<String>, LedgerError> {
        let dir = self.dir.join("targets");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(&dir, e.to_string())),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.err(&dir, e.to_string()))?;
            let file = entry.file_name();
            if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json"))
                && name.starts_with(prefix)
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Saves the records of `target` (atomically; unchanged records are not rewritten),
    /// folding in what targeted runs journaled since it was loaded, and removes the journal.
    pub fn save(&self, target: &str, ledger: &TargetLedger) -> Result<(), LedgerError> {
        if self.read_only {
            return Ok(());
        }
        let path = self.target_path(target)?;
        let journal = self.journal_path(target)?;
        let _guard = JOURNAL.lock().expect("journal lock");
        let replayed = self.replayed.lock().expect("replayed lock").remove(target).unwrap_or(0);
        let mut ledger = ledger.clone();
        let journaled = self.replay(target, replayed, &mut ledger)?;
        let bytes = serde_json::to_vec(&ledger).expect("ledgers always serialize");
        if !fs::read(&path).is_ok_and(|old| old == bytes) {
            self.write_atomic(&path, &bytes)?;
        }
        if journaled > 0 {
            match fs::remove_file(&journal) {
                Err(e) if e.kind() != IoKind::NotFound => {
                    return Err(self.err(&journal, e.to_string()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn write_atomic(&self, path: &std::path::Path, bytes: &[u8]) -> Result<(), LedgerError> {
        let parent = path.parent().expect("ledger files live in a folder");
        fs::create_dir_all(parent).map_err(|e| self.err(parent, e.to_string()))?;
        crate::file::remove_stale_temps(parent);
        let mut tmp = tempfile::Builder::new()
            .prefix(".vss-")
            .tempfile_in(parent)
            .map_err(|e| self.err(parent, e.to_string()))?;
        tmp.write_all(bytes).map_err(|e| self.err(path, e.to_string()))?;
        tmp.as_file().sync_data().map_err(|e| self.err(path, e.to_string()))?;
        tmp.persist(path).map_err(|e| self.err(path, e.error.to_string()))?;
        Ok(())
    }

    /// The ledger's own hash key, generated once (in a dry run a missing key is generated
    /// for this run only).
    pub fn hash_key(&self) -> Result<HashKey, LedgerError> {
        let path = self.dir.join("hash-key");
        match fs::read_to_string(&path) {
            Ok(text) => {
                HashKey::from_hex(&text).ok_or_else(|| self.err(&path, "not a 64-hex-digit key"))
            }
            Err(e) if e.kind() == IoKind::NotFound => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| self.err(&path, e.to_string()))?;
                let key = HashKey::from_bytes(bytes);
                bytes.zeroize();
                if !self.read_only {
                    let mut hex = key.to_hex();
                    let written = self.write_atomic(&path, hex.as_bytes());
                    hex.zeroize();
                    written?;
                }
                Ok(key)
            }
            Err(e) => Err(self.err(&path, e.to_string())),
        }
    }
}

/// Whether a journal's last line lacks its newline (a crash mid-append).
fn ends_torn(file: &mut fs::File) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    file.seek(SeekFrom::End(-1)).is_ok() && file.read_exact(&mut last).is_ok() && last[0] != b'\n'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    fn file(dir: &str) -> StoreSpec {
        StoreSpec::File { dir: dir.into() }
    }

    #[test]
    fn records_round_trip_and_are_bound_to_their_store() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = FileLedger::new(dir.path().into(), false);
        let mut records = ledger.load("Prod", &file("/a")).unwrap();
        let key = ledger.hash_key().unwrap();
        let hash = key.hash(&vss_protocol::SecretValue::default());
        records.secrets.insert("s".into(), Record { hash, version: Version("1".into()) });
        ledger.save("Prod", &records).unwrap();
        assert_eq!(ledger.load("Prod", &file("/a")).unwrap(), records);
        assert_eq!(ledger.load("Prod", &file("/a/")).unwrap(), records, "same store, respelled");
        assert!(ledger.load("Prod", &file("/b")).unwrap().secrets.is_empty());
        assert_eq!(ledger.hash_key().unwrap().to_hex(), key.to_hex(), "the key is kept");
    }

    #[test]
    fn records_bound_by_label_are_rebound_to_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = FileLedger::new(dir.path().into(), false);
        let store = file("/a");
        let key = ledger.hash_key().unwrap();
        let hash = key.hash(&vss_protocol::SecretValue::default());
        let legacy = TargetLedger {
            store: "file:/a".into(),
            secrets: BTreeMap::from([("s".into(), Record { hash, version: Version("1".into()) })]),
        };
        ledger.save("Prod", &legacy).unwrap();
        let loaded = ledger.load("Prod", &store).unwrap();
        assert_eq!(loaded.secrets, legacy.secrets, "nothing owned is forgotten");
        assert_eq!(loaded.store, store.identity().as_str());
        ledger.save("Prod", &loaded).unwrap();
        assert_eq!(ledger.load("Prod", &store).unwrap(), loaded);
        assert!(ledger.load("Prod", &file("/b")).unwrap().secrets.is_empty());
    }

    #[test]
    fn a_label_that_leaves_fields_out_takes_nothing_over() {
        use vss_protocol::config::{SecretRef, VaultAuth, VaultConnection, VaultSpec};
        let dir = tempfile::tempdir().unwrap();
        let ledger = FileLedger::new(dir.path().into(), false);
        let vault = StoreSpec::Vault(Box::new(VaultSpec {
            connection: VaultConnection {
                address: "https://v:8200".into(),
                namespace: Some("team-b".into()),
                auth: VaultAuth::Token(SecretRef::Env("T".into())),
            },
            mount: "secret".into(),
            prefix: "app".into(),
            paths: Vec::new(),
        }));
        let hash = ledger.hash_key().unwrap().hash(&vss_protocol::SecretValue::default());
        let legacy = TargetLedger {
            store: vault.to_string(),
            secrets: BTreeMap::from([("s".into(), Record { hash, version: Version("1".into()) })]),
        };
        ledger.save("Prod", &legacy).unwrap();
        assert!(
            ledger.load("Prod", &vault).unwrap().secrets.is_empty(),
            "the namespace is not in the label"
        );
        assert!(
            ledger.load("../../x", &vault).is_err(),
            "a name that leaves the folder is refused"
        );
    }

    #[test]
    fn journaled_records_are_replayed_then_folded_into_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = FileLedger::new(dir.path().into(), false);
        let store = file("/a");
        let hash = ledger.hash_key().unwrap().hash(&vss_protocol::SecretValue::default());
        let record = |v: &str| Record { hash: hash.clone(), version: Version(v.into()) };
        let mut base = ledger.load("T", &store).unwrap();
        base.secrets.insert("kept".into(), record("1"));
        base.secrets.insert("gone".into(), record("1"));
        ledger.save("T", &base).unwrap();
        let updates =
            BTreeMap::from([("new".to_string(), Some(record("2"))), ("gone".to_string(), None)]);
        ledger.append("T", None, &store, &updates).unwrap();
        // A torn line (a crash mid-append) and another store's line are skipped.
        let journal = dir.path().join("targets/T.journal");
        let mut torn = fs::OpenOptions::new().append(true).open(&journal).unwrap();
        torn.write_all(b"{\"store\":\"x\",\"secret\":\"other\",\"record\":null}\n{\"sto").unwrap();
        let after_torn = BTreeMap::from([("after".to_string(), Some(record("5")))]);
        ledger.append("T", None, &store, &after_torn).unwrap();
        let loaded = ledger.load("T", &store).unwrap();
        let names: Vec<&str> = loaded.secrets.keys().map(String::as_str).collect();
        assert_eq!(names, ["after", "kept", "new"], "the torn line spoils nothing after it");
        assert!(ledger.load("T", &file("/b")).unwrap().secrets.is_empty(), "bound to the store");

        // Appended between a full run's load and its save: folded in, not lost.
        let full = FileLedger::new(dir.path().into(), false);
        let mut records = full.load("T", &store).unwrap();
        records.secrets.insert("from-full".into(), record("3"));
        let late = BTreeMap::from([("late".to_string(), Some(record("4")))]);
        ledger.append("T", None, &store, &late).unwrap();
        full.save("T", &records).unwrap();
        assert!(!journal.exists(), "the save folded the journal in");
        let saved = ledger.load("T", &store).unwrap();
        let names: Vec<&str> = saved.secrets.keys().map(String::as_str).collect();
        assert_eq!(names, ["after", "from-full", "kept", "late", "new"]);

        // A read-only ledger journals nothing.
        let dry = FileLedger::new(dir.path().into(), true);
        dry.append("T", None, &store, &late).unwrap();
        assert!(!journal.exists());
    }

    #[test]
    fn read_only_ledgers_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = FileLedger::new(dir.path().join("s"), true);
        ledger.hash_key().unwrap();
        ledger.save("T", &TargetLedger::default()).unwrap();
        assert!(!dir.path().join("s").exists());
    }
}
