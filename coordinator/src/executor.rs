//! Executors run a plan's jobs in DAG order and hand back one result per job.
//!
//! [`InProcess`] is the embedded default: jobs run as tasks of this process with bounded
//! concurrency per phase. A job starts once every job it depends on has succeeded; a job whose
//! dependency failed is skipped, and without `continue_on_error` no new job starts after the
//! first failure.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::task::JoinSet;
use vss_protocol::job::{Job, JobResult, Outcome, Phase};
use vss_protocol::plan::Plan;
use vss_worker::WorkerContext;

/// Runs the jobs of a plan.
#[async_trait::async_trait]
pub trait Executor {
    /// Runs every job of `plan` (or records why it did not run); `on_result` sees each result
    /// as it arrives. Results come back in plan order.
    async fn execute(
        &self,
        plan: &Plan,
        on_result: &(dyn for<'r> Fn(&'r JobResult) + Sync),
    ) -> Vec<JobResult>;
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

/// Runs jobs as tasks of this process.
pub struct InProcess {
    ctx: Arc<WorkerContext>,
    limits: Limits,
}

impl InProcess {
    /// An executor over a worker context.
    pub fn new(ctx: Arc<WorkerContext>, limits: Limits) -> Self {
        Self { ctx, limits }
    }
}

#[async_trait::async_trait]
impl Executor for InProcess {
    async fn execute(
        &self,
        plan: &Plan,
        on_result: &(dyn for<'r> Fn(&'r JobResult) + Sync),
    ) -> Vec<JobResult> {
        let jobs: BTreeMap<&str, &Job> = plan.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
        let mut results: BTreeMap<String, JobResult> = BTreeMap::new();
        let mut started: BTreeSet<String> = BTreeSet::new();
        let mut running: BTreeMap<Phase, usize> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        let mut stopped = false;

        loop {
            for job in &plan.jobs {
                if started.contains(&job.id) {
                    continue;
                }
                let blocked_by = job.depends_on.iter().find(|d| {
                    results.get(*d).is_some_and(|r| r.outcome != Outcome::Succeeded)
                        || !jobs.contains_key(d.as_str())
                });
                let reason = if let Some(dep) = blocked_by {
                    Some(format!("skipped: `{dep}` did not succeed"))
                } else if stopped {
                    Some(
                        "not started: the run stopped at the first error (see --continue-on-error)"
                            .to_string(),
                    )
                } else {
                    None
                };
                if let Some(reason) = reason {
                    started.insert(job.id.clone());
                    let result = JobResult::new(job, Outcome::Skipped { reason });
                    on_result(&result);
                    results.insert(job.id.clone(), result);
                    continue;
                }
                let ready = job.depends_on.iter().all(|d| results.contains_key(d));
                let limit = match job.phase() {
                    Phase::Merge => self.limits.merge_parallel,
                    Phase::Sync => self.limits.sync_parallel,
                };
                let busy = running.entry(job.phase()).or_default();
                if ready && *busy < limit.max(1) {
                    *busy += 1;
                    started.insert(job.id.clone());
                    let (job, ctx) = ((*job).clone(), self.ctx.clone());
                    tasks.spawn(async move {
                        // A bug in one job fails that job, not the whole run.
                        let run = AssertUnwindSafe(vss_worker::execute(&job, &ctx));
                        run.catch_unwind().await.unwrap_or_else(|_| {
                            let error = format!("target `{}`: internal error (panic)", job.target);
                            JobResult::new(&job, Outcome::Failed { error, retryable: false })
                        })
                    });
                }
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let result = joined.expect("job tasks catch their panics");
            *running.entry(result.phase).or_default() -= 1;
            if matches!(result.outcome, Outcome::Failed { .. }) && !self.limits.continue_on_error {
                stopped = true;
            }
            on_result(&result);
            results.insert(result.job_id.clone(), result);
        }
        plan.jobs.iter().filter_map(|j| results.remove(&j.id)).collect()
    }
}
