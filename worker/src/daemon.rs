//! The `vss worker` daemon: takes jobs from `VSS_JOBS`, runs them with [`execute_isolated`],
//! publishes their results.
//!
//! One durable pull consumer shared by every worker, explicit acks. A job that outlives a third
//! of AckWait sends `Progress` so it is not redelivered while it runs. A retryable failure is
//! `Nak`ed with backoff until `max_deliver` (a targeted job's is final at once: `vss serve`
//! retries the target itself); a permanent one (or the last attempt) publishes its
//! failed result and is `Term`inated. A result is published, and JetStream has stored it,
//! before the job is acked: a crash in between redelivers the job, and the idempotent writes
//! (and the results' `Nats-Msg-Id`) make running it twice harmless.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, message::PublishMessage};
use futures_util::StreamExt;
use tokio::task::JoinSet;
use tracing::Instrument;
use vss_protocol::config::{NatsSpec, StateSpec, StoreSpec};
use vss_protocol::job::{Job, JobResult, Outcome, Phase, WIRE_VERSION};
use vss_transport::{
    EVENT_JOB_SUBJECTS, EVENTS_CONSUMER, FULL_JOB_SUBJECTS, JOB_HEADER, JOBS_STREAM, RUN_HEADER,
    TARGET_HEADER, TransportError, WIRE_HEADER, WORKERS_BUCKET, WORKERS_CONSUMER, WorkerEntry,
    ensure_streams, message_id, results_subject,
};

use crate::{WorkerContext, execute_isolated};

/// How a worker takes and runs jobs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a job may go without an ack or a heartbeat before JetStream redelivers it
    /// (applies when the shared consumer is first created).
    pub ack_wait: Duration,
    /// Deliveries of a job before its failure is final (likewise).
    pub max_deliver: i64,
    /// On shutdown, how long in-flight jobs may take to finish.
    pub shutdown_grace: Duration,
    /// Glob patterns of the stores (labels, e.g. `vault:https://vault.internal:8200/*`) and
    /// ledgers (`state:<path>`) this worker may use; empty: any. A job that names anything
    /// else gets a failed result and is not run.
    pub allowed_stores: Vec<glob::Pattern>,
}

/// What every job handler of a worker shares.
struct Taker {
    js: jetstream::Context,
    contexts: RunContexts,
    ack_wait: Duration,
    max_deliver: i64,
    allowed: Vec<glob::Pattern>,
}

/// A file the worker touches on every turn of its loop (at least every few seconds), for
/// liveness probes without a network port: `find FILE -mmin -1`.
#[derive(Clone, Debug)]
pub struct HealthFile(pub std::path::PathBuf);

impl HealthFile {
    fn touch(&self) {
        if let Err(e) = std::fs::write(&self.0, b"ok\n") {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot write the health file");
        }
    }
}

/// A run's context: its id, whether it is a dry run, its open stores.
type RunContext = (String, bool, Arc<WorkerContext>);

/// Run contexts kept so one run's jobs share open stores; a handful, oldest dropped first.
/// Each reaches a ledger in NATS through the worker's own connection.
#[derive(Clone)]
struct RunContexts {
    kept: Arc<Mutex<VecDeque<RunContext>>>,
    jetstream: jetstream::Context,
}

impl RunContexts {
    const KEPT: usize = 8;

    /// The run's context; a redelivered job gets a fresh one (fresh store handles, so a
    /// store's open circuit breaker from the failed delivery does not fail it at once).
    fn for_job(&self, job: &Job, delivered: i64) -> Arc<WorkerContext> {
        let mut kept = self.kept.lock().expect("run contexts lock");
        let dry_run = job.options.dry_run;
        let same = |(run, dry, _): &RunContext| run == &job.run_id && *dry == dry_run;
        if delivered > 1 {
            kept.retain(|c| !same(c));
        } else if let Some((_, _, ctx)) = kept.iter().find(|c| same(c)) {
            return ctx.clone();
        }
        let ctx = WorkerContext::new(dry_run, job.options.timeouts);
        let ctx = ctx.with_jetstream(self.jetstream.clone()).on_fleet(self.jetstream.client());
        let ctx = Arc::new(ctx);
        kept.push_back((job.run_id.clone(), dry_run, ctx.clone()));
        if kept.len() > Self::KEPT {
            kept.pop_front();
        }
        ctx
    }
}

/// Runs a worker until `shutdown` resolves; then stops taking jobs and gives in-flight ones
/// [`WorkerOptions::shutdown_grace`] to finish (unfinished ones are redelivered elsewhere).
/// Full jobs and targeted ones (events) are taken in two lanes, each with `concurrency`
/// slots, so an event never waits for a slot a reconcile's job holds.
pub async fn run(
    spec: &NatsSpec,
    options: WorkerOptions,
    health: Option<HealthFile>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let client = vss_transport::connect(spec, "vss-worker").await?;
    let js = jetstream::new(client);
    let (jobs, events) = shared_consumers(&js, &options).await?;
    let ack_wait = jobs.cached_info().config.ack_wait;
    let max_deliver = jobs.cached_info().config.max_deliver;
    let concurrency = options.concurrency.max(1);
    tracing::info!(concurrency, ?ack_wait, max_deliver, "worker ready");

    let taker = Arc::new(Taker {
        js: js.clone(),
        contexts: RunContexts { kept: Arc::default(), jetstream: js.clone() },
        ack_wait,
        max_deliver,
        allowed: options.allowed_stores.clone(),
    });
    let registration = Registration::new(&js).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let heartbeat = || async {
        if let Some(health) = &health {
            health.touch();
        }
        registration.renew().await;
    };
    let ((), full, event) = tokio::join!(
        async {
            shutdown.await;
            let _ = stop.send(true);
        },
        take(&jobs, concurrency, &taker, stopped.clone(), Some(&heartbeat)),
        take(&events, concurrency, &taker, stopped, None::<&fn() -> std::future::Ready<()>>),
    );
    drain(full, event, options.shutdown_grace).await;
    registration.withdraw().await;
    // Acks, naks and terms are buffered publishes: send them before the connection goes.
    if let Err(e) = js.client().flush().await {
        tracing::warn!(error = %e, "cannot flush the last acks");
    }
    Ok(())
}

/// Takes jobs from one lane's consumer into at most `concurrency` running ones until `stop`
/// turns true; returns what still runs. `heartbeat` runs on every turn of the loop.
async fn take<H, F>(
    consumer: &consumer::PullConsumer,
    concurrency: usize,
    taker: &Arc<Taker>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    heartbeat: Option<&H>,
) -> JoinSet<()>
where
    H: Fn() -> F,
    F: Future<Output = ()>,
{
    let mut running = JoinSet::new();
    'taking: loop {
        if *stop.borrow() {
            break;
        }
        if let Some(heartbeat) = heartbeat {
            heartbeat().await;
        }
        while running.try_join_next().is_some() {}
        let free = concurrency - running.len();
        if free == 0 {
            tokio::select! {
                _ = running.join_next() => continue,
                () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                _ = stop.changed() => break 'taking,
            }
        }
        let fetch = consumer.fetch().max_messages(free).expires(Duration::from_secs(5)).messages();
        let mut batch = tokio::select! {
            batch = fetch => match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch jobs; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            _ = stop.changed() => break 'taking,
        };
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                _ = stop.changed() => {
                    // Jobs already delivered to this fetch go back at once, not after AckWait.
                    while let Ok(Some(Ok(message))) =
                        tokio::time::timeout(Duration::from_millis(100), batch.next()).await
                    {
                        settle(&message, AckKind::Nak(None)).await;
                    }
                    break 'taking;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let taker = taker.clone();
                    running.spawn(async move { handle(&taker, message).await });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "fetch ended");
                    break;
                }
                None => break,
            }
        }
    }
    running
}

/// The durable pull consumers every worker shares, full jobs' and events' (created with
/// `options` the first time). A full-jobs consumer from before the lanes, which took every
/// subject, is narrowed to full jobs first (a work queue allows no overlapping consumers).
async fn shared_consumers(
    js: &jetstream::Context,
    options: &WorkerOptions,
) -> Result<(consumer::PullConsumer, consumer::PullConsumer), TransportError> {
    ensure_streams(js).await?;
    let stream = js
        .get_stream(JOBS_STREAM)
        .await
        .map_err(|e| TransportError::setup(format!("stream {JOBS_STREAM}"), e))?;
    let config = |name: &str, subjects: Vec<String>| consumer::pull::Config {
        durable_name: Some(name.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: options.max_deliver,
        filter_subjects: subjects,
        ..Default::default()
    };
    let full_subjects: Vec<String> = FULL_JOB_SUBJECTS.iter().map(|s| s.to_string()).collect();
    let setup = |name: &str| {
        let name = name.to_string();
        move |e| TransportError::setup(format!("consumer {name}"), e)
    };
    let mut jobs = stream
        .get_or_create_consumer(WORKERS_CONSUMER, config(WORKERS_CONSUMER, full_subjects.clone()))
        .await
        .map_err(setup(WORKERS_CONSUMER))?;
    let info = jobs.cached_info().config.clone();
    if info.filter_subjects.is_empty() && info.filter_subject.is_empty() {
        let narrowed = consumer::pull::Config {
            ack_wait: info.ack_wait,
            max_deliver: info.max_deliver,
            ..config(WORKERS_CONSUMER, full_subjects)
        };
        jobs = stream.create_consumer(narrowed).await.map_err(setup(WORKERS_CONSUMER))?;
    }
    let events = stream
        .get_or_create_consumer(
            EVENTS_CONSUMER,
            config(EVENTS_CONSUMER, vec![EVENT_JOB_SUBJECTS.to_string()]),
        )
        .await
        .map_err(setup(EVENTS_CONSUMER))?;
    Ok((jobs, events))
}

/// Gives the lanes' in-flight jobs `grace` to finish; the rest are abandoned (JetStream
/// redelivers them).
async fn drain(mut full: JoinSet<()>, mut events: JoinSet<()>, grace: Duration) {
    let in_flight = full.len() + events.len();
    tracing::info!(in_flight, "shutting down: finishing in-flight jobs");
    let both = async {
        while full.join_next().await.is_some() {}
        while events.join_next().await.is_some() {}
    };
    if tokio::time::timeout(grace, both).await.is_err() {
        tracing::warn!(
            abandoned = full.len() + events.len(),
            "shutdown grace ran out; those jobs will be redelivered"
        );
        full.abort_all();
        events.abort_all();
    }
}

/// Runs one delivered job and settles it (ack, nak or term).
async fn handle(taker: &Taker, message: jetstream::Message) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let header = |name: &str| {
        message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_string())
    };
    let wire = header(WIRE_HEADER).and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
    let job = match Job::decode(&message.payload) {
        Ok(job) if wire <= WIRE_VERSION => job,
        decoded => {
            let why = match decoded {
                Err(e) => format!("cannot read it ({e})"),
                Ok(_) => "it is newer than this worker".to_string(),
            };
            let error = format!(
                "job of wire version {wire}: this worker (vss {}, wire version {WIRE_VERSION}) {why}; upgrade the workers",
                env!("CARGO_PKG_VERSION")
            );
            answer_unreadable(taker, &message, header, error).await;
            return;
        }
    };
    let span = tracing::info_span!("delivery", job = %job.id, attempt = delivered);
    vss_transport::trace::continue_trace(&span, message.headers.as_ref());
    run_and_settle(taker, &message, &job, delivered).instrument(span).await;
}

/// A job this worker cannot read: its coordinator hears at once (from the ids in the
/// headers) instead of at the job's deadline; without ids it is only logged. Either way it
/// is terminated.
async fn answer_unreadable(
    taker: &Taker,
    message: &jetstream::Message,
    header: impl Fn(&str) -> Option<String>,
    error: String,
) {
    tracing::error!(subject = %message.subject, %error, "job not run");
    if let (Some(run_id), Some(job_id), Some(target)) =
        (header(RUN_HEADER), header(JOB_HEADER), header(TARGET_HEADER))
    {
        let phase = if message.subject.ends_with(".merge") { Phase::Merge } else { Phase::Sync };
        let mut result = JobResult {
            run_id,
            job_id,
            target,
            phase,
            outcome: Outcome::Failed { error: String::new(), retryable: false },
            changes: Vec::new(),
            not_applied: Vec::new(),
            unchanged: 0,
            warnings: Vec::new(),
        };
        result.outcome = Outcome::Failed {
            error: format!("target `{}`: {error}", result.target),
            retryable: false,
        };
        if let Err(e) = publish_result(&taker.js, &result).await {
            tracing::warn!(error = %e, "cannot publish the failed result");
        }
    }
    settle(message, AckKind::Term).await;
}

/// Why this worker will not run `job`: a store or ledger outside its allow-list.
fn refusal(job: &Job, allowed: &[glob::Pattern]) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    let mut used: Vec<Option<String>> = job.stores().iter().map(|s| s.location()).collect();
    // A ledger in NATS is reached through this worker's own connection: nothing to allow.
    if let StateSpec::File { path } = &job.options.state {
        let dir = StoreSpec::File { dir: path.clone() };
        used.push(dir.location().map(|l| format!("state:{}", &l[5..])));
    }
    let outside = used
        .into_iter()
        .find(|location| location.as_ref().is_none_or(|l| !allowed.iter().any(|p| p.matches(l))))?;
    let what = outside.unwrap_or_else(|| "a path with `..`".into());
    Some(format!(
        "target `{}`: `{what}` is not in this worker's allow-list (--allow-store); job {} not run",
        job.target, job.id
    ))
}

async fn run_and_settle(taker: &Taker, message: &jetstream::Message, job: &Job, delivered: i64) {
    let (js, ack_wait, max_deliver) = (&taker.js, taker.ack_wait, taker.max_deliver);
    let ctx = taker.contexts.for_job(job, delivered);
    // Past its deadline the coordinator has given up on the job: never start or finish it.
    let remaining = job.deadline.map(|d| Duration::from_secs(d.saturating_sub(unix_now())));
    let past_deadline = |why: &str| {
        let error = format!("target `{}`: job {} {why}", job.target, job.id);
        JobResult::new(job, Outcome::Failed { error, retryable: false })
    };
    let result = match remaining {
        _ if refusal(job, &taker.allowed).is_some() => {
            let error = refusal(job, &taker.allowed).unwrap_or_default();
            tracing::error!(%error, "job refused");
            JobResult::new(job, Outcome::Failed { error, retryable: false })
        }
        Some(left) if left.is_zero() => past_deadline("expired before a worker took it"),
        _ => {
            tracing::info!("job started");
            let work = with_heartbeat(message, ack_wait, execute_isolated(job, &ctx));
            match remaining {
                Some(left) => tokio::time::timeout(left, work)
                    .await
                    .unwrap_or_else(|_| past_deadline("ran past its deadline and was stopped")),
                None => work.await,
            }
        }
    };

    // A targeted job (an event) is not redelivered: its run would wait for the backoff, and
    // the other targets' events with it; `vss serve` runs the target again itself.
    let last_attempt = (max_deliver > 0 && delivered >= max_deliver) || job.names.is_some();
    if let Outcome::Failed { retryable: true, error } = &result.outcome
        && !last_attempt
    {
        let delay = Duration::from_secs(1 << delivered.clamp(0, 5));
        tracing::warn!(error = %error, retry_in = ?delay, "retryable failure; redelivering");
        settle(message, AckKind::Nak(Some(delay))).await;
        return;
    }
    if let Err(e) = publish_result(js, &result).await {
        tracing::error!(error = %e, "cannot publish the result; redelivering the job");
        settle(message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        return;
    }
    if matches!(result.outcome, Outcome::Failed { .. }) {
        settle(message, AckKind::Term).await;
    } else if let Err(e) = message.double_ack().await {
        // The result is stored; a redelivery repeats idempotent work and a duplicate result.
        tracing::warn!(error = %e, "ack not confirmed");
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "cannot settle the job message");
    }
}

/// Awaits `work`, telling JetStream the job is still in progress every third of AckWait.
async fn with_heartbeat(
    message: &jetstream::Message,
    ack_wait: Duration,
    work: impl Future<Output = JobResult>,
) -> JobResult {
    tokio::pin!(work);
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = beat.tick() => settle(message, AckKind::Progress).await,
        }
    }
}

/// Publishes a result and waits until JetStream has stored it.
async fn publish_result(js: &jetstream::Context, result: &JobResult) -> Result<(), String> {
    let message = PublishMessage::build()
        .payload(result.encode().into())
        .message_id(message_id(&result.run_id, &result.job_id));
    let ack = js
        .send_publish(results_subject(&result.run_id), message)
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map_err(|e| e.to_string())?;
    Ok(())
}

/// This worker's entry in the registry of live workers, renewed while it runs, so a
/// coordinator can tell which wire versions the fleet reads before it starts a run.
struct Registration {
    kv: Option<jetstream::kv::Store>,
    key: String,
    renewed: Mutex<Option<std::time::Instant>>,
}

impl Registration {
    async fn new(js: &jetstream::Context) -> Self {
        let kv = js.get_key_value(WORKERS_BUCKET).await.ok();
        let key = format!("w-{}", uuid::Uuid::now_v7().simple());
        let registration = Self { kv, key, renewed: Mutex::new(None) };
        registration.renew().await;
        registration
    }

    /// Writes the entry again when a third of its lifetime has passed.
    async fn renew(&self) {
        let due = self
            .renewed
            .lock()
            .expect("registration lock")
            .is_none_or(|at| at.elapsed() > vss_transport::WORKER_TTL / 3);
        let Some(kv) = self.kv.as_ref().filter(|_| due) else { return };
        let entry = WorkerEntry { version: env!("CARGO_PKG_VERSION").into(), wire: WIRE_VERSION };
        let bytes = serde_json::to_vec(&entry).expect("entries serialize");
        match kv.put(&self.key, bytes.into()).await {
            Ok(_) => {
                *self.renewed.lock().expect("registration lock") = Some(std::time::Instant::now())
            }
            Err(e) => tracing::warn!(error = %e, "cannot register in the worker registry"),
        }
    }

    /// Removes the entry (a stopped worker runs nothing).
    async fn withdraw(&self) {
        if let Some(kv) = &self.kv {
            let _ = kv.delete(&self.key).await;
        }
    }
}
