//! Executors run a plan's jobs in DAG order and hand back one result per job.
//!
//! [`InProcess`] is the embedded default: jobs run as tasks of this process. The JetStream
//! executor ([`crate::nats::JetStream`]) publishes them to workers instead. Both share
//! [`Schedule`]: a job starts once every job it depends on has succeeded; a job whose
//! dependency failed is skipped, and without `continue_on_error` no new job starts after the
//! first failure.

mod in_process;

use std::collections::{BTreeMap, BTreeSet};

pub use in_process::{InProcess, JobLocks};
use vss_protocol::job::{Job, JobResult, Outcome, Phase};
use vss_protocol::plan::Plan;

/// Runs the jobs of a plan.
#[async_trait::async_trait]
pub trait Executor {
    /// Runs every job of `plan` (or records why it did not run); `on_result` sees each result
    /// as it arrives. Results come back in plan order.
    async fn execute(
        &self,
        plan: &Plan,
        on_result: &(dyn for<'r> Fn(&'r JobResult) + Sync),
    ) -> anyhow::Result<Vec<JobResult>>;
}

/// How many jobs of each phase run at once, and whether a failure stops the run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Merge jobs at once.
    pub merge_parallel: usize,
    /// Sync jobs at once.
    pub sync_parallel: usize,
    /// Keep starting independent jobs after a failure.
    pub continue_on_error: bool,
}

impl Limits {
    /// The most jobs of `phase` in flight at once (at least one).
    pub fn of(&self, phase: Phase) -> usize {
        match phase {
            Phase::Merge => self.merge_parallel,
            Phase::Sync => self.sync_parallel,
        }
        .max(1)
    }
}

/// The DAG bookkeeping of one run: which jobs may start, which never will, what came back.
pub struct Schedule<'p> {
    plan: &'p Plan,
    results: BTreeMap<String, JobResult>,
    started: BTreeSet<String>,
    stopped: bool,
    continue_on_error: bool,
}

impl<'p> Schedule<'p> {
    /// A schedule with nothing started.
    pub fn new(plan: &'p Plan, continue_on_error: bool) -> Self {
        Self {
            plan,
            results: BTreeMap::new(),
            started: BTreeSet::new(),
            stopped: false,
            continue_on_error,
        }
    }

    /// Records results that arrived before this schedule existed (a resumed run's), as
    /// started and finished.
    pub fn restore(&mut self, results: impl IntoIterator<Item = JobResult>) {
        for result in results {
            self.started.insert(result.job_id.clone());
            self.finish(result);
        }
    }

    /// Marks the jobs of `ids` that have no result as started (handed out before a resume);
    /// returns them.
    pub fn mark_started(&mut self, ids: impl IntoIterator<Item = String>) -> Vec<&'p Job> {
        let mut marked = Vec::new();
        for id in ids {
            if let Some(job) = self.plan.jobs.iter().find(|j| j.id == id)
                && !self.results.contains_key(&id)
                && self.started.insert(id)
            {
                marked.push(job);
            }
        }
        marked
    }

    /// Jobs that may start now, in plan order, each admitted by `admit` (e.g. a concurrency
    /// limit) and then marked started; and the results of jobs that never will start
    /// (skipped), already recorded.
    pub fn next(&mut self, mut admit: impl FnMut(&Job) -> bool) -> (Vec<&'p Job>, Vec<JobResult>) {
        let (mut ready, mut skipped) = (Vec::new(), Vec::new());
        for job in &self.plan.jobs {
            if self.started.contains(&job.id) {
                continue;
            }
            let blocked_by = job.depends_on.iter().find(|d| {
                self.results.get(*d).is_some_and(|r| r.outcome != Outcome::Succeeded)
                    || !self.plan.jobs.iter().any(|j| &j.id == *d)
            });
            let reason = if let Some(dep) = blocked_by {
                Some(format!("skipped: `{dep}` did not succeed"))
            } else if self.stopped {
                Some(
                    "not started: the run stopped at the first error (see --continue-on-error)"
                        .to_string(),
                )
            } else {
                None
            };
            if let Some(reason) = reason {
                self.started.insert(job.id.clone());
                let result = JobResult::new(job, Outcome::Skipped { reason });
                self.results.insert(job.id.clone(), result.clone());
                skipped.push(result);
                continue;
            }
            let deps_done = job.depends_on.iter().all(|d| self.results.contains_key(d));
            if deps_done && admit(job) {
                self.started.insert(job.id.clone());
                ready.push(job);
            }
        }
        (ready, skipped)
    }

    /// Records a started job's result; `false` (and nothing recorded) for a job that is not
    /// running: unknown, never started, or already finished (a duplicate delivery).
    pub fn finish(&mut self, result: JobResult) -> bool {
        if !self.started.contains(&result.job_id) || self.results.contains_key(&result.job_id) {
            return false;
        }
        if matches!(result.outcome, Outcome::Failed { .. }) && !self.continue_on_error {
            self.stopped = true;
        }
        self.results.insert(result.job_id.clone(), result);
        true
    }

    /// Jobs started and not finished.
    pub fn running(&self) -> usize {
        self.started.len() - self.results.len()
    }

    /// Whether every job has a result.
    pub fn is_done(&self) -> bool {
        self.results.len() == self.plan.jobs.len()
    }

    /// The results, in plan order.
    pub fn into_results(mut self) -> Vec<JobResult> {
        self.plan.jobs.iter().filter_map(|j| self.results.remove(&j.id)).collect()
    }
}
