//! The embedded default: jobs run as tasks of this process, with bounded concurrency per phase.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;
use tracing::Instrument as _;
use vss_protocol::job::{JobResult, Phase};
use vss_protocol::plan::Plan;
use vss_worker::WorkerContext;

use super::{Executor, Limits, Schedule};

/// Runs jobs as tasks of this process.
pub struct InProcess {
    ctx: Arc<WorkerContext>,
    limits: Limits,
    locks: JobLocks,
}

impl InProcess {
    /// An executor over a worker context.
    pub fn new(ctx: Arc<WorkerContext>, limits: Limits) -> Self {
        Self { ctx, limits, locks: JobLocks::default() }
    }

    /// An executor whose jobs wait for the same job of other runs sharing `locks`.
    pub fn sharing(ctx: Arc<WorkerContext>, limits: Limits, locks: JobLocks) -> Self {
        Self { ctx, limits, locks }
    }
}

/// What lets runs in one process overlap safely: a job (`merge:<target>`, `sync:<target>`,
/// a shard's sync) that [runs alone](vss_protocol::job::Job::runs_alone) runs in one run at a
/// time; the others' same job waits for it.
#[derive(Clone, Default)]
pub struct JobLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl JobLocks {
    fn of(&self, job: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0.lock().expect("job locks").entry(job.to_string()).or_default().clone()
    }

    /// Holds `job`'s lock if no other run holds it now.
    pub fn try_hold(&self, job: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.of(job).try_lock_owned().ok()
    }
}

#[async_trait::async_trait]
impl Executor for InProcess {
    async fn execute(
        &self,
        plan: &Plan,
        on_result: &(dyn for<'r> Fn(&'r JobResult) + Sync),
    ) -> anyhow::Result<Vec<JobResult>> {
        let mut schedule = Schedule::new(plan, self.limits.continue_on_error);
        let mut running: BTreeMap<Phase, usize> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        loop {
            let (ready, skipped) = schedule.next(|job| {
                let busy = running.entry(job.phase()).or_default();
                let admitted = *busy < self.limits.of(job.phase());
                *busy += usize::from(admitted);
                admitted
            });
            skipped.iter().for_each(on_result);
            for job in ready {
                let (job, ctx) = (job.clone(), self.ctx.clone());
                let lock = job.runs_alone().then(|| self.locks.of(&job.id));
                let work = async move {
                    let _running = match lock {
                        Some(lock) => Some(lock.lock_owned().await),
                        None => None,
                    };
                    vss_worker::execute_isolated(&job, &ctx).await
                };
                tasks.spawn(work.in_current_span());
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let result = joined.expect("job tasks catch their panics");
            *running.entry(result.phase).or_default() -= 1;
            on_result(&result);
            schedule.finish(result);
        }
        Ok(schedule.into_results())
    }
}
