//! The state ledger in a NATS JetStream key-value bucket (`state: {nats: {bucket: vss-state}}`):
//! every process of a fleet reads and writes the same records without a shared disk.
//!
//! One entry per record, so a record costs the same in a target of ten secrets or 100,000
//! (no document grows with the target, none nears NATS's message size limit), a targeted run
//! writes just its names, and shards of one target never touch each other's entries:
//!
//! - `hash-key`: the content-hash key (64 hex digits), created once with create-only
//!   semantics: whichever process asks first makes it, every other reads that one.
//! - `records.<target>.<store>.<secret>`: a record (JSON). `<target>` and `<secret>` are
//!   base64url (so any name is a valid key), `<store>` a digest of the target store's
//!   identity, which binds records to their store as the file ledger does.
//!
//! A load reads the latest entry of each key under a target's prefix (one ordered consumer,
//! no per-key requests) and remembers each entry's revision; a save writes only what changed
//! since, each entry against the revision it loaded (compare-and-set). An entry another run
//! wrote meanwhile (an event's targeted run) is newer than this run's view of it and is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_nats::jetstream::{self, consumer, kv};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use vss_protocol::HashKey;
use vss_protocol::config::StoreSpec;
use vss_protocol::job::Shard;
use zeroize::Zeroize;

use super::{LedgerError, Record, TargetLedger, shard_records};

/// The key of the content-hash key.
const HASH_KEY: &str = "hash-key";

/// The ledger in a JetStream key-value bucket.
pub struct NatsLedger {
    kv: kv::Store,
    client: async_nats::Client,
    bucket: String,
    read_only: bool,
    /// Per records name, the entries as its load saw them (what a save compares against).
    loaded: Mutex<BTreeMap<String, Loaded>>,
}

/// A target's (or shard's) entries as loaded.
#[derive(Clone)]
struct Loaded {
    /// `records.<target>.<store>.`
    prefix: String,
    /// Secret → record and the entry's revision.
    entries: BTreeMap<String, (Record, u64)>,
}

impl NatsLedger {
    /// The ledger in `bucket`, created if it does not exist yet (a dry run creates nothing).
    pub async fn open(
        jetstream: &jetstream::Context,
        bucket: &str,
        read_only: bool,
    ) -> Result<Self, LedgerError> {
        let err = |message: String| LedgerError { path: format!("nats:{bucket}"), message };
        let kv = match jetstream.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(e) if read_only => return Err(err(format!("cannot open the bucket: {e}"))),
            Err(_) => jetstream
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    description: "vss state ledger: ownership records and the hash key".into(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| err(format!("cannot create the bucket: {e}")))?,
        };
        let client = jetstream.client();
        Ok(Self { kv, client, bucket: bucket.to_string(), read_only, loaded: Mutex::default() })
    }

    fn err(&self, key: &str, message: impl std::fmt::Display) -> LedgerError {
        LedgerError { path: format!("nats:{}/{key}", self.bucket), message: message.to_string() }
    }

    /// The records of `target` for `store` (only `shard`'s names for a shard's job), and the
    /// name a save of them goes under.
    pub async fn load(
        &self,
        target: &str,
        shard: Option<&Shard>,
        store: &StoreSpec,
    ) -> Result<(String, TargetLedger), LedgerError> {
        let identity = store.identity().as_str().to_string();
        let prefix = records_prefix(target, &identity);
        let mut entries = self.entries(&prefix).await?;
        entries.retain(|name, _| shard.is_none_or(|s| s.owns(name)));
        let name = shard.map_or_else(|| target.to_string(), |s| shard_records(target, s));
        let ledger = TargetLedger {
            store: identity,
            secrets: entries.iter().map(|(n, (r, _))| (n.clone(), r.clone())).collect(),
        };
        self.loaded.lock().expect("loaded lock").insert(name.clone(), Loaded { prefix, entries });
        Ok((name, ledger))
    }

    /// The latest entry of every key under `prefix`, by secret name.
    async fn entries(&self, prefix: &str) -> Result<BTreeMap<String, (Record, u64)>, LedgerError> {
        let subject_prefix = format!("{}{prefix}", self.kv.prefix);
        let consumer = self
            .kv
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{subject_prefix}>"),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| self.err(prefix, format!("cannot read: {e}")))?;
        let mut entries = BTreeMap::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(entries);
        }
        let mut messages =
            consumer.messages().await.map_err(|e| self.err(prefix, format!("cannot read: {e}")))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| self.err(prefix, format!("cannot read: {e}")))?;
            let info = message.info().map_err(|e| self.err(prefix, e))?;
            let (revision, pending) = (info.stream_sequence, info.pending);
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            let key = message.subject.strip_prefix(subject_prefix.as_str()).unwrap_or_default();
            match (deleted, decode(key)) {
                (false, Some(secret)) => {
                    let record: Record = serde_json::from_slice(&message.payload).map_err(|e| {
                        self.err(&format!("{prefix}{key}"), format!("corrupt: {e}"))
                    })?;
                    entries.insert(secret, (record, revision));
                }
                (false, None) => {
                    tracing::warn!(key, "ledger entry with an undecodable key skipped")
                }
                (true, _) => {}
            }
            if pending == 0 {
                break;
            }
        }
        Ok(entries)
    }

    /// Writes what changed in `ledger` since it was loaded as `name`, each entry against the
    /// revision loaded; an entry someone else changed meanwhile is theirs (kept).
    pub async fn save(&self, name: &str, ledger: &TargetLedger) -> Result<(), LedgerError> {
        if self.read_only {
            return Ok(());
        }
        let Some(loaded) = self.loaded.lock().expect("loaded lock").remove(name) else {
            return Err(self.err(name, "saved without being loaded"));
        };
        let mut kept = 0;
        for (secret, record) in &ledger.secrets {
            let key = format!("{}{}", loaded.prefix, encode(secret));
            let written = match loaded.entries.get(secret) {
                Some((old, _)) if old == record => continue,
                Some((_, revision)) => {
                    self.kv.update(&key, json(record), *revision).await.err().map(|e| e.to_string())
                }
                None => self.kv.create(&key, json(record)).await.err().map(|e| e.to_string()),
            };
            if let Some(e) = written {
                tracing::debug!(key, error = %e, "ledger entry changed by another run; kept");
                kept += 1;
            }
        }
        for (secret, (_, revision)) in &loaded.entries {
            if ledger.secrets.contains_key(secret) {
                continue;
            }
            let key = format!("{}{}", loaded.prefix, encode(secret));
            if let Err(e) = self.kv.delete_expect_revision(&key, Some(*revision)).await {
                tracing::debug!(key, error = %e, "ledger entry changed by another run; kept");
                kept += 1;
            }
        }
        if kept > 0 {
            tracing::debug!(kept, "ledger entries written by another run meanwhile were kept");
        }
        Ok(())
    }

    /// Writes the records of a targeted run's names (`None`: deleted).
    pub async fn append(
        &self,
        target: &str,
        store: &StoreSpec,
        updates: &BTreeMap<String, Option<Record>>,
    ) -> Result<(), LedgerError> {
        if self.read_only {
            return Ok(());
        }
        let prefix = records_prefix(target, store.identity().as_str());
        for (secret, record) in updates {
            let key = format!("{prefix}{}", encode(secret));
            match record {
                Some(record) => {
                    self.kv.put(&key, json(record)).await.map(drop).map_err(|e| e.to_string())
                }
                None => self.kv.delete(&key).await.map_err(|e| e.to_string()),
            }
            .map_err(|e| self.err(&key, e))?;
        }
        Ok(())
    }

    /// Writes `ledger` (whole, as a migration does) as `target`'s records; returns how many.
    pub async fn import(&self, target: &str, ledger: &TargetLedger) -> Result<usize, LedgerError> {
        let prefix = records_prefix(target, &ledger.store);
        for (secret, record) in &ledger.secrets {
            let key = format!("{prefix}{}", encode(secret));
            self.kv.put(&key, json(record)).await.map_err(|e| self.err(&key, e))?;
        }
        Ok(ledger.secrets.len())
    }

    /// The shared hash key: read, or created once. Two processes creating it at once both
    /// end with the one that was created first.
    pub async fn hash_key(&self) -> Result<HashKey, LedgerError> {
        if let Some(key) = self.stored_key().await? {
            return Ok(key);
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| self.err(HASH_KEY, e))?;
        let key = HashKey::from_bytes(bytes);
        bytes.zeroize();
        if self.read_only {
            return Ok(key);
        }
        let mut hex = key.to_hex();
        let created = self.kv.create(HASH_KEY, hex.clone().into_bytes().into()).await;
        hex.zeroize();
        match created {
            Ok(_) => Ok(key),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .stored_key()
                .await?
                .ok_or_else(|| self.err(HASH_KEY, "created by another process, then gone")),
            Err(e) => Err(self.err(HASH_KEY, e)),
        }
    }

    /// Puts `key` as the shared hash key unless one exists; returns whether it is the one
    /// stored now (a migration keeps the key its hashes were made with).
    pub async fn adopt_hash_key(&self, key: &HashKey) -> Result<bool, LedgerError> {
        let mut hex = key.to_hex();
        let created = self.kv.create(HASH_KEY, hex.clone().into_bytes().into()).await;
        hex.zeroize();
        match created {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Ok(self.stored_key().await?.is_some_and(|stored| stored.to_hex() == key.to_hex()))
            }
            Err(e) => Err(self.err(HASH_KEY, e)),
        }
    }

    async fn stored_key(&self) -> Result<Option<HashKey>, LedgerError> {
        let Some(bytes) = self.kv.get(HASH_KEY).await.map_err(|e| self.err(HASH_KEY, e))? else {
            return Ok(None);
        };
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        let key =
            HashKey::from_hex(&text).ok_or_else(|| self.err(HASH_KEY, "not a 64-hex-digit key"));
        text.zeroize();
        key.map(Some)
    }

    /// Every target with records here (for `vss state`), by name.
    pub async fn targets(&self) -> Result<BTreeSet<String>, LedgerError> {
        let mut keys = self.kv.keys().await.map_err(|e| self.err("records", e))?;
        let mut targets = BTreeSet::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| self.err("records", e))?;
            if let Some(target) = key.strip_prefix("records.").and_then(|k| k.split('.').next()) {
                targets.extend(decode(target));
            }
        }
        Ok(targets)
    }
}

/// `records.<target>.<store>.`: the prefix of a target's records in one store.
fn records_prefix(target: &str, identity: &str) -> String {
    let store = blake3::hash(identity.as_bytes()).to_hex();
    format!("records.{}.{}.", encode(target), &store[..32])
}

/// A name as a key token: base64url, whatever characters it has.
fn encode(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name.as_bytes())
}

fn decode(token: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()
}

fn json(record: &Record) -> bytes::Bytes {
    serde_json::to_vec(record).expect("records always serialize").into()
}
