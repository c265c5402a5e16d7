//! Jobs and their results: the unit of work that executors hand to workers.
//!
//! A job carries references (where to read, where to write) and never a secret value or a
//! credential; a result carries names, key names, hashes and counts. Both travel as
//! MessagePack.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::config::{DeleteThreshold, SecretRef, StateSpec, StoreSpec, Timeouts};
use crate::diff::{SecretChange, Summary};
use crate::merge::ListMerge;

/// A job's id within its run: `merge:<target>` or `sync:<target>`.
pub type JobId = String;

/// The version of the job and result formats. A worker runs jobs of its own version (and
/// older ones it still reads); a job of a newer version gets a failed result at once, and a
/// coordinator will not start a run that the workers it sees cannot run.
pub const WIRE_VERSION: u32 = 2;

/// Which phase a job belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sources → merge store.
    Merge,
    /// Desired state → target store.
    Sync,
}

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The run it belongs to.
    pub run_id: String,
    /// Its id within the run.
    pub id: JobId,
    /// The target it works for.
    pub target: String,
    /// What to do.
    pub spec: JobSpec,
    /// Run-wide options.
    pub options: RunOptions,
    /// Jobs that must succeed before this one starts.
    pub depends_on: Vec<JobId>,
    /// Unix seconds after which the job must not run or keep running (set when a coordinator
    /// hands it to remote workers; its run has given up on it by then).
    #[serde(default)]
    pub deadline: Option<u64>,
    /// `Some`: a targeted job, touching only these secrets (names as the merge and the
    /// desired state spell them): no listing, and bookkeeping for these names only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<BTreeSet<String>>,
}

impl Job {
    /// Every store the job reads or writes.
    pub fn stores(&self) -> Vec<&StoreSpec> {
        match &self.spec {
            JobSpec::Merge(spec) => std::iter::once(&spec.merge_store)
                .chain(spec.layers.iter().filter_map(|l| match l {
                    LayerSpec::Source { store, .. } => Some(store),
                    LayerSpec::Target { .. } => None,
                }))
                .collect(),
            JobSpec::Sync(spec) => {
                let desired = match &spec.desired {
                    DesiredState::Merged { merge_store, .. } => merge_store,
                    DesiredState::Source { store } => store,
                };
                vec![&spec.store, desired]
            }
        }
    }

    /// Whether the job must not overlap the same job of another run (the executors hold a
    /// lock per job id): full jobs, and a targeted sync whose store respells names (it runs
    /// the full sync). Other targeted jobs run beside the full job of their target: every
    /// write and delete is made against the version read, so where the store refuses stale
    /// writes whichever job writes second sees the other's write and reads the desired value
    /// again; where it does not, the targeted job [announces](Self::announces) its names and
    /// the full job leaves them to it.
    pub fn runs_alone(&self) -> bool {
        match (&self.names, &self.spec) {
            (None, _) => true,
            (Some(_), JobSpec::Merge(_)) => false,
            (Some(_), JobSpec::Sync(spec)) => !spec.store.keeps_names(),
        }
    }

    /// Whether the job announces the names it changes (a targeted job) or leaves announced
    /// names alone (a full one): where the store it writes has no check of versions of its
    /// own (AWS Secrets Manager, files).
    pub fn announces(&self) -> bool {
        let writes_to = match &self.spec {
            JobSpec::Merge(spec) => &spec.merge_store,
            JobSpec::Sync(spec) => &spec.store,
        };
        !writes_to.refuses_stale_writes()
    }

    /// The job's phase.
    pub fn phase(&self) -> Phase {
        match self.spec {
            JobSpec::Merge(_) => Phase::Merge,
            JobSpec::Sync(_) => Phase::Sync,
        }
    }

    /// The job as MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("jobs always serialize")
    }

    /// A job from MessagePack.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// What a job does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSpec {
    /// Merge a target's layers into the merge store.
    Merge(MergeSpec),
    /// Bring a target's store to the desired state.
    Sync(SyncSpec),
}

/// A merge job: fold the layers, write the result and its manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeSpec {
    /// Inputs, in priority order (later wins).
    pub layers: Vec<LayerSpec>,
    /// Where merged results live.
    pub merge_store: StoreSpec,
    /// How lists combine.
    pub list_merge: ListMerge,
}

/// One input of a merge job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerSpec {
    /// Every secret of a named source.
    Source {
        /// The source's name in the config.
        name: String,
        /// Where it lives.
        store: StoreSpec,
    },
    /// A parent target's merged result, read from the merge store.
    Target {
        /// The parent's name.
        name: String,
    },
}

/// A sync job: diff desired state against the target store and apply the difference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncSpec {
    /// Where the desired state comes from.
    pub desired: DesiredState,
    /// The target's store.
    pub store: StoreSpec,
    /// `Some`: orphans owned by vss are deleted, within this threshold.
    pub delete: Option<DeleteThreshold>,
    /// `Some`: this job handles only the secrets of one shard of the target.
    #[serde(default)]
    pub shard: Option<Shard>,
}

/// One of `count` slices of a target's secrets; a secret belongs to the shard its name hashes
/// to, so the slices are stable from run to run and disjoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: u32,
    /// How many shards the target has.
    pub count: u32,
}

impl Shard {
    /// Whether secret `name` belongs to this shard.
    pub fn owns(&self, name: &str) -> bool {
        let hash = blake3::hash(name.as_bytes());
        let bytes: [u8; 8] = hash.as_bytes()[..8].try_into().expect("8 bytes");
        u64::from_le_bytes(bytes) % u64::from(self.count.max(1)) == u64::from(self.index)
    }
}

/// Where a sync job reads the desired state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    /// The target's merged result in the merge store.
    Merged {
        /// The merge store.
        merge_store: StoreSpec,
        /// A merge job of this run just checked the target's merged folder against its
        /// manifest, so the manifest stands in for a listing.
        merged_this_run: bool,
    },
    /// Every secret of a store (sync-only runs).
    Source {
        /// The source store.
        store: StoreSpec,
    },
}

/// Options shared by every job of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Compute everything, write nothing (merge store and ledger included).
    pub dry_run: bool,
    /// Lift the mass-delete guard.
    pub allow_mass_delete: bool,
    /// The state ledger.
    pub state: StateSpec,
    /// Where the hash key comes from (a reference, resolved by the worker).
    pub hash_key: Option<SecretRef>,
    /// How long store calls may take.
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Outcome {
    /// Done.
    Succeeded,
    /// Failed; the message names target, store and secret, never a value.
    Failed {
        /// What went wrong.
        error: String,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// Not run.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// What a job did, without values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The run.
    pub run_id: String,
    /// The job.
    pub job_id: JobId,
    /// The job's target.
    pub target: String,
    /// The job's phase.
    pub phase: Phase,
    /// How it ended.
    pub outcome: Outcome,
    /// Secrets created, changed or deleted (or that would be, in a dry run); a change whose
    /// write or delete failed is in `not_applied` instead.
    pub changes: Vec<SecretChange>,
    /// Secrets whose planned write or delete failed (the job's error says why).
    #[serde(default)]
    pub not_applied: Vec<String>,
    /// Secrets already as desired.
    pub unchanged: u64,
    /// Things the user should know that did not fail the job (e.g. deletes withheld).
    pub warnings: Vec<String>,
}

impl JobResult {
    /// A result with no changes yet.
    pub fn new(job: &Job, outcome: Outcome) -> Self {
        Self {
            run_id: job.run_id.clone(),
            job_id: job.id.clone(),
            target: job.target.clone(),
            phase: job.phase(),
            outcome,
            changes: Vec::new(),
            not_applied: Vec::new(),
            unchanged: 0,
            warnings: Vec::new(),
        }
    }

    /// Counts of the changes.
    pub fn summary(&self) -> Summary {
        Summary::of(&self.changes, self.unchanged)
    }

    /// The result as MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("results always serialize")
    }

    /// A result from MessagePack.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::plan::{PlanRequest, plan_run};

    /// The sync job of a one-target config that deletes orphans, with `delete` as given.
    fn sync_job(delete: DeleteThreshold) -> Job {
        let text = "source: { file: { dir: in } }\n\
                    targets:\n  app: { store: { file: { dir: out } }, delete: true }\n";
        let cfg = Config::from_yaml(text, "vss.yaml", Path::new("/base"), &|_| None).unwrap();
        let plan = plan_run(&cfg, "run-1", &PlanRequest::default()).unwrap();
        let mut job = plan.jobs.into_iter().find(|j| j.phase() == Phase::Sync).unwrap();
        let JobSpec::Sync(sync) = &mut job.spec else { unreachable!("a sync job") };
        assert!(sync.delete.is_some(), "the target deletes orphans");
        sync.delete = Some(delete);
        job
    }

    #[test]
    fn jobs_survive_encode_and_decode() {
        let job = sync_job(DeleteThreshold { percent: 12.5, count: 3 });
        assert_eq!(Job::decode(&job.encode()).unwrap(), job);
    }

    /// Caught by the round-trip check of the `wire` fuzz target (seed
    /// `fuzz/corpus/wire/job-nan-threshold`): a NaN percent decoded, never equalled itself
    /// again, and made `exceeded` false for any number of deletes.
    #[test]
    fn decode_refuses_a_delete_threshold_validate_would_refuse() {
        for percent in [f64::NAN, f64::INFINITY, -1.0, 100.5] {
            let bytes = sync_job(DeleteThreshold { percent, count: 5 }).encode();
            let err = Job::decode(&bytes).expect_err("out of range");
            assert!(err.to_string().contains("not within 0..=100"), "{percent}: {err}");
        }
        for percent in [0.0, 100.0] {
            let job = sync_job(DeleteThreshold { percent, count: 5 });
            assert_eq!(Job::decode(&job.encode()).unwrap(), job);
        }
    }
}
