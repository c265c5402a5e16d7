//! Executes one job: a target's merge ([`merge`]) or sync ([`sync`]).
//!
//! [`execute`] is the whole contract: a [`Job`] in, a [`JobResult`] out. Workers keep nothing
//! between jobs except open store handles and the hash key; the in-process executor and the
//! JetStream worker ([`daemon`], `vss worker`) both call it. `io` holds the store I/O a job does (listings, concurrent
//! reads, conflict-safe writes, each in a `store` span), `manifest` the merge store's
//! per-target manifest format, `targeted` the jobs of a run limited to a few changed
//! secrets, and `announce` how those run beside a full job of their target.

mod announce;
pub mod daemon;
mod io;
mod manifest;
mod merge;
mod sync;
mod targeted;

use std::sync::{Arc, Mutex};

use tracing::Instrument;
use vss_protocol::HashKey;
use vss_protocol::config::Timeouts;
use vss_protocol::job::{Job, JobResult, JobSpec, Outcome, RunOptions};
use vss_stores::ledger::{LedgerError, StateLedger};
use vss_stores::{SecretStore, StoreCache, StoreError};

/// Why a job failed. Messages name target, store and secret, never a value.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state ledger could not be used.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A safety rule stopped the job before it changed anything.
    #[error("{0}")]
    Refused(String),
    /// Several writes or deletes failed; the others were applied and recorded.
    #[error("{failed} changes failed; the first: {first}")]
    Partial {
        /// How many failed.
        failed: usize,
        /// The first failure.
        first: StoreError,
    },
}

impl JobError {
    /// Whether running the job again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Store(e) | JobError::Partial { first: e, .. } => e.is_retryable(),
            JobError::Ledger(_) | JobError::Refused(_) => false,
        }
    }
}

/// What a worker keeps while it runs jobs: open stores, the hash key, and the NATS
/// connection a ledger in NATS is reached through.
pub struct WorkerContext {
    stores: StoreCache,
    hash_key: Mutex<Option<HashKey>>,
    /// Held while the hash key is first resolved, so one process creates at most one.
    resolving: tokio::sync::Mutex<()>,
    jetstream: Option<async_nats::jetstream::Context>,
    announcements: announce::Announcements,
}

impl WorkerContext {
    /// A context for jobs of one kind of run; `dry_run` keeps every write in memory; stores
    /// are opened with `timeouts`.
    pub fn new(dry_run: bool, timeouts: Timeouts) -> Self {
        Self {
            stores: StoreCache::new(dry_run, timeouts),
            hash_key: Mutex::new(None),
            resolving: tokio::sync::Mutex::new(()),
            jetstream: None,
            announcements: announce::Announcements::InProcess,
        }
    }

    /// The context, reaching a ledger in NATS (`state: {nats: …}`) through `jetstream`.
    pub fn with_jetstream(mut self, jetstream: async_nats::jetstream::Context) -> Self {
        self.jetstream = Some(jetstream);
        self
    }

    /// The context of a worker of a fleet: announcements go through NATS, to every worker.
    pub fn on_fleet(mut self, client: async_nats::Client) -> Self {
        self.announcements = announce::Announcements::Nats(client);
        self
    }

    /// The stores opened so far.
    pub fn stores(&self) -> &StoreCache {
        &self.stores
    }

    fn store(
        &self,
        spec: &vss_protocol::config::StoreSpec,
    ) -> Result<Arc<dyn SecretStore>, JobError> {
        let key = self.hash_key.lock().expect("hash key lock").clone();
        Ok(self.stores.get(spec, key.as_ref())?)
    }

    /// For a full job on a store without version checks of its own: what targeted jobs of
    /// the same target announce from now on (see [`announce`]).
    async fn watch_announcements(&self, job: &Job) -> Option<announce::Watch> {
        match job.announces() && !job.options.dry_run {
            true => Some(self.announcements.watch(&job.id).await),
            false => None,
        }
    }

    /// For a targeted job on such a store: announces the names it is about to change.
    async fn announce(&self, job: &Job, names: &std::collections::BTreeSet<String>) {
        if job.announces() && !job.options.dry_run {
            self.announcements.announce(&job.id, names).await;
        }
    }

    /// The content-hash key of the run's ledger, resolved once.
    pub async fn hash_key(&self, options: &RunOptions) -> Result<HashKey, JobError> {
        let known = || self.hash_key.lock().expect("hash key lock").clone();
        if let Some(key) = known() {
            return Ok(key);
        }
        let _resolving = self.resolving.lock().await;
        if let Some(key) = known() {
            return Ok(key);
        }
        let key = self.ledger(options).await?.hash_key(options.hash_key.as_ref()).await?;
        *self.hash_key.lock().expect("hash key lock") = Some(key.clone());
        Ok(key)
    }

    /// The run's state ledger (read-only in a dry run).
    async fn ledger(&self, options: &RunOptions) -> Result<StateLedger, JobError> {
        Ok(StateLedger::open(&options.state, options.dry_run, self.jetstream.as_ref()).await?)
    }
}

/// Runs one job to completion and reports what it did (or, in a dry run, would do).
pub async fn execute(job: &Job, ctx: &WorkerContext) -> JobResult {
    let span = tracing::info_span!("job", run = %job.run_id, job = %job.id);
    async {
        let mut result = JobResult::new(job, Outcome::Succeeded);
        let run = match (&job.spec, &job.names) {
            (JobSpec::Merge(spec), None) => merge::run(job, spec, ctx, &mut result).await,
            (JobSpec::Sync(spec), None) => sync::run(job, spec, ctx, &mut result).await,
            (JobSpec::Merge(spec), Some(names)) => {
                targeted::merge(job, spec, names, ctx, &mut result).await
            }
            (JobSpec::Sync(spec), Some(names)) => {
                targeted::sync(job, spec, names, ctx, &mut result).await
            }
        };
        result.changes.sort_by(|a, b| a.path.cmp(&b.path));
        let summary = result.summary();
        match run {
            Ok(()) => tracing::info!(
                added = summary.added,
                modified = summary.modified,
                removed = summary.removed,
                unchanged = summary.unchanged,
                dry_run = job.options.dry_run,
                "job finished"
            ),
            Err(e) => {
                tracing::error!(error = %e, "job failed");
                result.outcome = Outcome::Failed {
                    error: format!("target `{}`: {e}", job.target),
                    retryable: e.is_retryable(),
                };
            }
        }
        result
    }
    .instrument(span)
    .await
}

/// [`execute`], and a panic in the job becomes a failed result instead of unwinding into the
/// caller: a bug in one job fails that job, not the run or the worker.
pub async fn execute_isolated(job: &Job, ctx: &WorkerContext) -> JobResult {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(execute(job, ctx)).catch_unwind().await.unwrap_or_else(|_| {
        let error = format!("target `{}`: internal error (panic)", job.target);
        JobResult::new(job, Outcome::Failed { error, retryable: false })
    })
}

#[cfg(test)]
mod tests;
