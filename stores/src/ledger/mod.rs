//! The state ledger: what vss wrote where, and the key of its content hashes.
//!
//! Per target it records, for each secret vss manages there, the content hash it wrote and the
//! store's version right after the write. A listing whose version still matches needs no read
//! (the speed core), and only recorded secrets may ever be deleted (ownership). The records are
//! bound to the target's store by its [`StoreIdentity`](vss_protocol::config::StoreIdentity):
//! pointing a target at another store starts a fresh ledger, so nothing there counts as owned,
//! while respelling the same store (a trailing slash, another role into the same account)
//! keeps them. Records are a cache of what vss wrote and a proof of ownership: a stale one
//! costs a read, never a wrong write.
//!
//! Two homes, one interface ([`StateLedger`]): a folder ([`file`], the embedded default) and a
//! NATS JetStream key-value bucket ([`nats`], the default of a distributed run, so workers
//! share it without a shared disk).

pub mod file;
pub mod nats;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use vss_protocol::config::{SecretRef, StateSpec, StoreSpec};
use vss_protocol::job::Shard;
use vss_protocol::{ContentHash, HashKey};

use crate::Version;
use crate::credentials::ReadSecretRef;

/// The ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("state ledger {path}: {message}")]
pub struct LedgerError {
    /// The file (or bucket and key) concerned.
    pub path: String,
    /// What happened.
    pub message: String,
}

/// What vss knows about one secret it wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The content hash written.
    pub hash: ContentHash,
    /// The store's version right after the write.
    pub version: Version,
}

/// The records of one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLedger {
    /// The identity of the store these records describe (its label, in ledgers written
    /// before identities).
    pub store: String,
    /// Secret name → record.
    pub secrets: BTreeMap<String, Record>,
}

/// The state ledger of a run, wherever it lives.
pub enum StateLedger {
    /// In a folder.
    File(file::FileLedger),
    /// In a JetStream key-value bucket.
    Nats(Box<nats::NatsLedger>),
}

impl StateLedger {
    /// The ledger `spec` names; `read_only` (dry runs) never writes. A ledger in NATS needs
    /// `jetstream`, the connection of the process (a worker's own, or the coordinator's).
    pub async fn open(
        spec: &StateSpec,
        read_only: bool,
        jetstream: Option<&async_nats::jetstream::Context>,
    ) -> Result<Self, LedgerError> {
        match spec {
            StateSpec::File { path } => {
                Ok(Self::File(file::FileLedger::new(path.clone(), read_only)))
            }
            StateSpec::Nats { bucket } => {
                let Some(jetstream) = jetstream else {
                    return Err(LedgerError {
                        path: format!("nats:{bucket}"),
                        message: "the ledger is in NATS, and this process has no NATS connection \
                                  (--nats URL or execution.nats)"
                            .into(),
                    });
                };
                Ok(Self::Nats(Box::new(
                    nats::NatsLedger::open(jetstream, bucket, read_only).await?,
                )))
            }
        }
    }

    /// The records of `target` for `store`; empty when none exist or they describe another
    /// store.
    pub async fn load(&self, target: &str, store: &StoreSpec) -> Result<TargetLedger, LedgerError> {
        match self {
            Self::File(ledger) => ledger.load(target, store),
            Self::Nats(ledger) => ledger.load(target, None, store).await.map(|(_, l)| l),
        }
    }

    /// The records a sync job keeps, and the name it saves them under: the target's own, or
    /// a shard's (shards run concurrently, so each saves only its own names).
    pub async fn load_for_job(
        &self,
        target: &str,
        shard: Option<&Shard>,
        store: &StoreSpec,
    ) -> Result<(String, TargetLedger), LedgerError> {
        match self {
            Self::File(ledger) => ledger.load_for_job(target, shard, store),
            Self::Nats(ledger) => ledger.load(target, shard, store).await,
        }
    }

    /// The secrets any of a target's `count` shards has records of.
    pub async fn recorded_in_any_shard(
        &self,
        target: &str,
        count: u32,
        store: &StoreSpec,
    ) -> Result<BTreeSet<String>, LedgerError> {
        match self {
            Self::File(ledger) => ledger.recorded_in_any_shard(target, count, store),
            Self::Nats(ledger) => {
                Ok(ledger.load(target, None, store).await?.1.secrets.into_keys().collect())
            }
        }
    }

    /// Saves the records loaded as `name` by [`load_for_job`](Self::load_for_job): only
    /// what changed since that load is written, and what another run wrote meanwhile (a
    /// targeted run's records) is kept.
    pub async fn save(&self, name: &str, ledger: &TargetLedger) -> Result<(), LedgerError> {
        match self {
            Self::File(file) => file.save(name, ledger),
            Self::Nats(nats) => nats.save(name, ledger).await,
        }
    }

    /// Records the outcome of a targeted run for a few names (`None`: deleted) without
    /// rewriting the target's records.
    pub async fn append(
        &self,
        target: &str,
        shard: Option<&Shard>,
        store: &StoreSpec,
        updates: &BTreeMap<String, Option<Record>>,
    ) -> Result<(), LedgerError> {
        match self {
            Self::File(ledger) => ledger.append(target, shard, store, updates),
            Self::Nats(ledger) => ledger.append(target, store, updates).await,
        }
    }

    /// The content-hash key: from `reference` when given, else the ledger's own, created
    /// once (by whichever process asks first) and read by every other.
    pub async fn hash_key(&self, reference: Option<&SecretRef>) -> Result<HashKey, LedgerError> {
        if let Some(reference) = reference {
            let text = reference
                .read()
                .map_err(|message| LedgerError { path: "hash_key".into(), message })?;
            return Ok(key_from_text(&text));
        }
        match self {
            Self::File(ledger) => ledger.hash_key(),
            Self::Nats(ledger) => ledger.hash_key().await,
        }
    }
}

/// The name a shard's records are saved under: `<target>#<index>-of-<count>`.
fn shard_records(target: &str, shard: &Shard) -> String {
    format!("{target}#{}-of-{}", shard.index, shard.count)
}

/// A key given as 64 hex digits is used as is; any other text is stretched into one.
fn key_from_text(text: &str) -> HashKey {
    HashKey::from_hex(text).unwrap_or_else(|| {
        HashKey::from_bytes(blake3::derive_key("vss content hash key v1", text.trim().as_bytes()))
    })
}
