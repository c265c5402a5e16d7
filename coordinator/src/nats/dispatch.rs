//! The coordinator's side: publish a run's jobs in DAG order, collect their results.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, message::PublishMessage};
use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use vss_protocol::config::NatsSpec;
use vss_protocol::job::{Job, JobResult, Outcome};
use vss_protocol::plan::Plan;

use crate::executor::{Executor, JobLocks, Schedule};
use vss_protocol::job::WIRE_VERSION;
use vss_transport::{
    RESULTS_STREAM, RUNS_BUCKET, WORKERS_BUCKET, WorkerEntry, ensure_streams, job_subject,
    message_id, results_subject,
};

/// How often the coordinator looks for jobs past their deadline while it waits.
const TICK: Duration = Duration::from_secs(1);
/// How long without any result before the coordinator says it is still waiting.
const QUIET_WARNING: Duration = Duration::from_secs(30);

/// Runs jobs on `vss worker`s through NATS JetStream.
pub struct JetStream {
    js: jetstream::Context,
    job_timeout: Duration,
    continue_on_error: bool,
    locks: Option<JobLocks>,
}

/// What `vss-runs` keeps per run.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run.
    pub run_id: String,
    /// `running`, `finished`, or `interrupted` (the coordinator stopped; `--resume` it).
    pub status: String,
    /// Jobs in the run.
    pub jobs: usize,
    /// Jobs with a result.
    pub finished_jobs: usize,
    /// Jobs that failed.
    pub failed_jobs: usize,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
    /// Jobs handed to workers so far (a resumed run waits for these instead of publishing
    /// them again).
    #[serde(default)]
    pub published: Vec<String>,
    /// The W3C `traceparent` of the run's span, so a resumed run continues its trace.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// The key suffix of a stored plan (`<run_id>.plan`; the run record is `<run_id>`).
const PLAN_SUFFIX: &str = ".plan";

fn plan_key(run_id: &str) -> String {
    format!("{run_id}{PLAN_SUFFIX}")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl JetStream {
    /// Connects and creates the streams and bucket if needed.
    pub async fn connect(spec: &NatsSpec, continue_on_error: bool) -> anyhow::Result<Self> {
        let client = vss_transport::connect(spec, "vss-coordinator").await?;
        let js = jetstream::new(client);
        ensure_streams(&js).await?;
        let job_timeout = Duration::from_secs(spec.job_timeout_secs);
        Ok(Self { js, job_timeout, continue_on_error, locks: None })
    }

    /// The executor, whose jobs wait while another run sharing `locks` has the same job out.
    pub fn with_locks(self, locks: JobLocks) -> Self {
        Self { locks: Some(locks), ..self }
    }

    /// Whether a result is one of this run's jobs.
    fn belongs(&self, plan: &Plan, result: &JobResult) -> bool {
        result.run_id == plan.run_id && plan.jobs.iter().any(|j| j.id == result.job_id)
    }

    /// Publishes a job and waits until JetStream stored it, retrying for about a minute while
    /// the server is unreachable (the message id makes a retried publish harmless). The job
    /// carries its deadline: past it, no worker starts or continues it.
    async fn publish(&self, job: &Job) -> anyhow::Result<()> {
        let job = &Job { deadline: Some(now() + self.job_timeout.as_secs()), ..job.clone() };
        let attempt = || async {
            let mut headers = vss_transport::job_headers(job);
            vss_transport::trace::inject(&mut headers);
            let message = PublishMessage::build()
                .headers(headers)
                .payload(job.encode().into())
                .message_id(message_id(&job.run_id, &job.id));
            self.js.send_publish(job_subject(job), message).await?.await
        };
        let ack = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(15),
            )
            .notify(|e, wait| tracing::warn!(job = %job.id, error = %e, ?wait, "publish failed; retrying"))
            .await
            .with_context(|| format!("JetStream did not store job {}", job.id))?;
        tracing::debug!(job = %job.id, sequence = ack.sequence, duplicate = ack.duplicate, "job published");
        Ok(())
    }

    /// Refuses a run that live workers cannot read: one that registered an older wire version
    /// would fail its jobs. Names the versions seen. (Workers of releases before the registry
    /// are not seen.)
    async fn check_fleet(&self) -> anyhow::Result<()> {
        let Ok(registry) = self.js.get_key_value(WORKERS_BUCKET).await else { return Ok(()) };
        let mut keys = registry.keys().await?;
        let mut older = std::collections::BTreeSet::new();
        while let Some(key) = keys.next().await {
            let Some(bytes) = registry.get(key?).await? else { continue };
            if let Ok(entry) = serde_json::from_slice::<WorkerEntry>(&bytes)
                && entry.wire < WIRE_VERSION
            {
                older.insert(format!("vss {} (wire version {})", entry.version, entry.wire));
            }
        }
        if !older.is_empty() {
            anyhow::bail!(
                "connected workers cannot run this run: it needs wire version {WIRE_VERSION} (vss {}), and workers at {} are live; upgrade them first",
                env!("CARGO_PKG_VERSION"),
                older.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    }

    /// The plan of an earlier run, as its coordinator stored it.
    pub async fn load_plan(&self, run_id: &str) -> anyhow::Result<Plan> {
        let runs = self.js.get_key_value(RUNS_BUCKET).await?;
        let bytes = runs
            .get(plan_key(run_id))
            .await?
            .with_context(|| format!("no run {run_id} in the {RUNS_BUCKET} bucket"))?;
        Plan::decode(&bytes)
            .with_context(|| format!("the stored plan of run {run_id} is unreadable"))
    }

    /// The records of every run the bucket still holds, oldest first.
    pub async fn runs(&self) -> anyhow::Result<Vec<RunRecord>> {
        let runs = self.js.get_key_value(RUNS_BUCKET).await?;
        let mut keys = runs.keys().await?;
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key?;
            if key.ends_with(PLAN_SUFFIX) {
                continue;
            }
            if let Some(bytes) = runs.get(&key).await? {
                records.push(serde_json::from_slice::<RunRecord>(&bytes)?);
            }
        }
        records.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        Ok(records)
    }

    async fn store_plan(&self, plan: &Plan) -> anyhow::Result<()> {
        let runs = self.js.get_key_value(RUNS_BUCKET).await?;
        runs.put(plan_key(&plan.run_id), plan.encode().into())
            .await
            .context("cannot store the run's plan")?;
        Ok(())
    }

    async fn record(&self, record: &RunRecord) {
        let stored = async {
            let runs = self.js.get_key_value(RUNS_BUCKET).await?;
            runs.put(&record.run_id, serde_json::to_vec(record)?.into()).await?;
            Ok::<_, anyhow::Error>(())
        };
        if let Err(e) = stored.await {
            tracing::warn!(run = %record.run_id, error = %e, "cannot update the run record");
        }
    }
}

#[async_trait::async_trait]
impl Executor for JetStream {
    async fn execute(
        &self,
        plan: &Plan,
        on_result: &(dyn for<'r> Fn(&'r JobResult) + Sync),
    ) -> anyhow::Result<Vec<JobResult>> {
        self.check_fleet().await?;
        // A resumed run keeps its record: when it started and which jobs were handed out.
        let mut record = match self.run_record(&plan.run_id).await {
            Some(mut earlier) => {
                earlier.status = "running".into();
                earlier
            }
            None => RunRecord {
                run_id: plan.run_id.clone(),
                status: "running".into(),
                jobs: plan.jobs.len(),
                finished_jobs: 0,
                failed_jobs: 0,
                started_at: now(),
                updated_at: now(),
                published: Vec::new(),
                traceparent: crate::telemetry::traceparent(),
            },
        };
        self.store_plan(plan).await?;
        self.record(&record).await;
        let driven = self.drive(plan, on_result, &mut record).await;
        record.updated_at = now();
        match driven {
            Ok(results) => {
                record.status = "finished".into();
                self.record(&record).await;
                Ok(results)
            }
            Err(e) => {
                record.status = "interrupted".into();
                self.record(&record).await;
                Err(e.context(format!(
                    "run {} interrupted; its workers go on: finish it with `vss pipeline --config … --nats … --resume {}`",
                    plan.run_id, plan.run_id
                )))
            }
        }
    }
}

impl JetStream {
    /// The stored record of run `run_id`, if any.
    pub async fn run_record(&self, run_id: &str) -> Option<RunRecord> {
        let runs = self.js.get_key_value(RUNS_BUCKET).await.ok()?;
        let bytes = runs.get(run_id).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Subscribes to the run's results, from the start of its subject (before anything is
    /// published), and reads those already there: a resumed run's, one per job.
    async fn results_of(
        &self,
        plan: &Plan,
    ) -> anyhow::Result<(consumer::pull::Ordered, Vec<JobResult>)> {
        let results = self
            .js
            .get_stream(RESULTS_STREAM)
            .await?
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: results_subject(&plan.run_id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .context("cannot subscribe to the run's results")?;
        let backlog = results.cached_info().num_pending;
        let mut results = results.messages().await.context("cannot read the run's results")?;
        let mut earlier: Vec<JobResult> = Vec::new();
        for _ in 0..backlog {
            let message = tokio::time::timeout(Duration::from_secs(10), results.next())
                .await
                .context("timed out replaying the run's earlier results")?
                .context("the results stream ended")??;
            match JobResult::decode(&message.payload) {
                Ok(r)
                    if self.belongs(plan, &r) && !earlier.iter().any(|e| e.job_id == r.job_id) =>
                {
                    earlier.push(r)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "undecodable result ignored"),
            }
        }
        Ok((results, earlier))
    }

    /// Publishes ready jobs and collects results until every job of the plan has one.
    async fn drive(
        &self,
        plan: &Plan,
        on_result: &(dyn for<'r> Fn(&'r JobResult) + Sync),
        record: &mut RunRecord,
    ) -> anyhow::Result<Vec<JobResult>> {
        let (mut results, earlier) = self.results_of(plan).await?;
        let mut schedule = Schedule::new(plan, self.continue_on_error);
        let mut pending: BTreeMap<String, (Instant, &Job)> = BTreeMap::new();
        if !earlier.is_empty() || !record.published.is_empty() {
            tracing::info!(results = earlier.len(), "resuming: earlier results replayed");
            earlier.iter().for_each(on_result);
            record.finished_jobs = earlier.len();
            record.failed_jobs =
                earlier.iter().filter(|r| matches!(r.outcome, Outcome::Failed { .. })).count();
            schedule.restore(earlier);
            // Jobs handed out before and still without a result are running (or queued).
            for job in schedule.mark_started(record.published.iter().cloned()) {
                pending.insert(job.id.clone(), (Instant::now(), job));
            }
        }
        let mut last_heard = Instant::now();
        // A job another run has out waits (it is tried again on the next tick): never block
        // here, this loop releases what the run holds.
        let mut held = BTreeMap::new();
        loop {
            let (ready, skipped) = schedule.next(|job| match &self.locks {
                Some(locks) if job.runs_alone() => {
                    locks.try_hold(&job.id).map(|g| held.insert(job.id.clone(), g)).is_some()
                }
                _ => true,
            });
            skipped.iter().for_each(on_result);
            if !ready.is_empty() {
                for job in ready {
                    self.publish(job).await?;
                    pending.insert(job.id.clone(), (Instant::now(), job));
                    record.published.push(job.id.clone());
                }
                record.updated_at = now();
                self.record(record).await;
            }
            if schedule.is_done() {
                break;
            }
            let mut arrived = Vec::new();
            match tokio::time::timeout(TICK, results.next()).await {
                Ok(Some(Ok(message))) => match JobResult::decode(&message.payload) {
                    Ok(result) => arrived.push(result),
                    Err(e) => tracing::warn!(error = %e, "undecodable result ignored"),
                },
                Ok(Some(Err(e))) => tracing::warn!(error = %e, "reading results; retrying"),
                Ok(None) => anyhow::bail!("the results stream ended"),
                Err(_) => {
                    if last_heard.elapsed() >= QUIET_WARNING {
                        tracing::warn!(
                            waiting = pending.len(),
                            "no job result for 30 s; are workers running?"
                        );
                        last_heard = Instant::now();
                    }
                }
            }
            for (id, (sent, job)) in &pending {
                if sent.elapsed() >= self.job_timeout {
                    let error = format!(
                        "target `{}`: no worker finished job {id} within {} s",
                        job.target,
                        self.job_timeout.as_secs()
                    );
                    arrived.push(JobResult::new(job, Outcome::Failed { error, retryable: true }));
                }
            }
            for result in arrived {
                last_heard = Instant::now();
                if !self.belongs(plan, &result) {
                    continue;
                }
                let failed = matches!(result.outcome, Outcome::Failed { .. });
                let id = result.job_id.clone();
                if schedule.finish(result.clone()) {
                    pending.remove(&id);
                    held.remove(&id);
                    record.finished_jobs += 1;
                    record.failed_jobs += usize::from(failed);
                    on_result(&result);
                }
            }
        }
        record.finished_jobs = plan.jobs.len();
        Ok(schedule.into_results())
    }
}
