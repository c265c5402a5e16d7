//! `vss state migrate`: a ledger folder copied into a NATS bucket, so a fleet takes over
//! what one machine owned (records, and the hash key they were hashed with).

use std::path::PathBuf;

use anyhow::Context as _;
use vss_protocol::config::NatsSpec;
use vss_stores::ledger::file::FileLedger;
use vss_stores::ledger::nats::NatsLedger;

/// Copies the ledger at `from` (`file:PATH`) into `bucket` at `nats`; exit code 0.
pub async fn migrate(from: &str, bucket: &str, nats: &NatsSpec) -> anyhow::Result<u8> {
    let path = from
        .strip_prefix("file:")
        .with_context(|| format!("--from `{from}`: give the ledger folder as file:PATH"))?;
    let file = FileLedger::new(PathBuf::from(path), true);
    let ledgers = file.all().context("cannot read the ledger folder")?;
    let key = file.stored_hash_key().context("cannot read the ledger's hash key")?;
    if ledgers.is_empty() && key.is_none() {
        anyhow::bail!("{path} holds no ledger (no targets/*.json, no hash-key)");
    }
    let client = vss_transport::connect(nats, "vss-state").await?;
    let jetstream = async_nats::jetstream::new(client);
    let ledger = NatsLedger::open(&jetstream, bucket, false).await?;
    // The hash key first: records describe hashes made with it.
    if let Some(key) = &key
        && !ledger.adopt_hash_key(key).await?
    {
        anyhow::bail!(
            "bucket `{bucket}` already holds another hash key: the records of {path} were hashed \
             with theirs and would all look changed. Nothing was copied; share one key with \
             `hash_key:` in the config instead"
        );
    }
    let mut copied = 0;
    let mut targets = std::collections::BTreeSet::new();
    for (name, records) in &ledgers {
        // A shard's records go under its target: in NATS, shards share one record per name.
        let target = name.split('#').next().unwrap_or(name);
        copied += ledger.import(target, records).await?;
        targets.insert(target.to_string());
    }
    println!(
        "copied {copied} records of {} targets{} from {path} into NATS bucket `{bucket}`",
        targets.len(),
        if key.is_some() { " and the hash key" } else { "" }
    );
    Ok(0)
}
