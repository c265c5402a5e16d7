//! `vss serve`: runs triggered over HTTP (the run API, signed webhooks, GitHub pushes) and
//! by a periodic reconcile, executed one at a time (in-process, or on the fleet with
//! `--nats`), each reported exactly as `vss pipeline --output json` reports it.

mod api;
mod audit;
mod auth;
mod event_log;
mod runs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use vss_protocol::config::{Config, NatsSpec};
use vss_protocol::plan::{PlanRequest, plan_run};
use vss_stores::credentials::ReadSecretRef;

use crate::executor::Limits;
use crate::report::Report;
pub use runs::{Lane, RunBook, RunRequest};

/// What the server shares between its handlers and its executor.
pub(crate) struct Server {
    cfg: Config,
    nats: Option<NatsSpec>,
    credentials: auth::Credentials,
    runs: RunBook,
    ready: AtomicBool,
    audit: audit::AuditCounts,
    /// Consecutive failed runs per target (for the retry backoff).
    failures: std::sync::Mutex<std::collections::BTreeMap<String, u32>>,
    /// One job per target at a time across the lanes, for the jobs that run alone.
    locks: crate::executor::JobLocks,
    /// Accepted events kept until done (`--nats`).
    events: Option<event_log::EventLog>,
    /// Event-driven runs that overlapped a full run, run again once it is over.
    overlaps: std::sync::Mutex<Overlaps>,
}

/// What the event lane needs to know of the full lane. An event's jobs do not wait for a
/// full run's jobs of the same target, and neither rolls the other back; but a full run that
/// read a secret before an event deleted it can create it again after the event's run found
/// nothing to delete (an absence has no version to conflict with), and an announcement can
/// reach a full job just after it looked. So the changes of an event-driven run that
/// overlapped a full run are run again, targeted, once that full run is over: a few single
/// reads that settle whatever order the two runs' writes landed in.
#[derive(Default)]
struct Overlaps {
    /// Full runs (that write) started so far.
    full_started: u64,
    /// Whether one runs now.
    full_running: bool,
    /// Changes to run again when the running full run is over.
    waiting: Vec<RunRequest>,
}

impl Overlaps {
    /// Where the full lane stands: runs started, and whether one runs.
    fn mark(&self) -> (u64, bool) {
        (self.full_started, self.full_running)
    }

    /// Whether a full run ran at any time since [`mark`](Self::mark) returned `since`.
    fn overlapped(&self, since: (u64, bool)) -> bool {
        since.1 || self.full_running || self.full_started != since.0
    }
}

/// How `vss serve` runs.
pub struct ServeOptions {
    /// Where the run API listens.
    pub listen: SocketAddr,
    /// A full run every this often (with ±10% jitter), and at start; `None`: never.
    pub reconcile_every: Option<Duration>,
    /// Run jobs on the fleet instead of in-process.
    pub nats: Option<NatsSpec>,
    /// Where Vault's `socket` audit device connects, if anywhere.
    pub audit_listen: Option<SocketAddr>,
}

/// Serves until `shutdown` resolves: then stops accepting, lets the running run finish,
/// drops what is queued (a reconcile at the next start covers it) and returns.
pub async fn serve(
    cfg: Config,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let read = |r: &vss_protocol::config::SecretRef| {
        r.read().map_err(|e| anyhow::anyhow!("serve credential: {e}"))
    };
    let tokens = cfg.serve.tokens.iter().map(read).collect::<anyhow::Result<_>>()?;
    let secrets = cfg.serve.webhook_secrets.iter().map(read).collect::<anyhow::Result<_>>()?;
    let credentials = auth::Credentials::new(tokens, secrets);
    if credentials.is_empty() {
        anyhow::bail!(
            "vss serve needs `serve.tokens` or `serve.webhook_secrets` in the config: it never runs unauthenticated"
        );
    }
    let events = match &options.nats {
        Some(spec) => {
            crate::nats::JetStream::connect(spec, false).await.context("NATS is not reachable")?;
            Some(event_log::EventLog::open(spec).await?)
        }
        None => None,
    };
    let server = Arc::new(Server {
        cfg,
        nats: options.nats,
        credentials,
        runs: RunBook::default(),
        ready: AtomicBool::new(false),
        audit: audit::AuditCounts::default(),
        failures: Default::default(),
        locks: Default::default(),
        events,
        overlaps: Default::default(),
    });
    if let Some(log) = &server.events {
        let pending = log.pending().await.context("cannot read the recorded events")?;
        if !pending.is_empty() {
            tracing::info!(
                events = pending.len(),
                "running the events an earlier serve had not finished"
            );
        }
        for (sequence, trigger, mut request) in pending {
            request.events = std::collections::BTreeSet::from([sequence]);
            server.runs.submit(&trigger, request, None);
        }
    }
    // The audit listener comes first: Vault refuses to start while its audit socket does
    // not accept connections.
    let audit = match options.audit_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for audit events on {address}"))?;
            tracing::info!(audit_address = %listener.local_addr()?, "listening for Vault audit events");
            Some(tokio::spawn(audit::listen(listener, server.clone())))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving the run API");
    server.ready.store(true, Ordering::SeqCst);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Events and full runs have lanes of their own, so a change never waits for a
    // reconcile: an event's jobs run beside the reconcile's jobs of the same target, and
    // neither undoes the other (conditional writes against the versions listed first,
    // announcements where a store has no version check, and `Overlaps`). Only targeted
    // syncs of targets that respell names run the full sync, one per target at a time across
    // the lanes (`Job::runs_alone`).
    let executors: Vec<_> = [Lane::Events, Lane::Full]
        .into_iter()
        .map(|lane| tokio::spawn(execute_runs(server.clone(), lane, stopped.clone())))
        .collect();
    let reconcile = options
        .reconcile_every
        .map(|every| tokio::spawn(reconcile_every(server.clone(), every, stopped.clone())));
    let app = api::router(server.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: no new runs; the running one finishes");
        })
        .await?;
    server.ready.store(false, Ordering::SeqCst);
    let _ = stop.send(true);
    if let Some(reconcile) = reconcile {
        reconcile.abort();
    }
    if let Some(audit) = audit {
        audit.abort();
    }
    for executor in executors {
        executor.await?;
    }
    let dropped = server.runs.queued_count();
    if dropped > 0 {
        tracing::warn!(dropped, "queued runs dropped at shutdown; the next start reconciles");
    }
    Ok(())
}

/// Runs the queued runs of `lane` one at a time until told to stop (the running one is
/// finished first).
async fn execute_runs(
    server: Arc<Server>,
    lane: Lane,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut submitted = server.runs.submissions();
    loop {
        while let Some((id, request)) = server.runs.next(lane) {
            let since = full_run_starts(&server, lane, &request);
            let outcome = run_one(&server, &id, &request).await;
            full_run_ends(&server, lane, &request, since);
            match &outcome {
                Ok(report) => {
                    server.failures.lock().expect("failures lock").remove("(run start)");
                    let retried = retry_failed(&server, &request, report);
                    if let (false, Some(log)) = (retried, &server.events) {
                        log.done(&request.events).await;
                    }
                }
                Err(e) if e.starts_with("cannot plan") => {
                    tracing::error!(run = %id, error = %e, "run cannot be planned; dropped");
                    if let Some(log) = &server.events {
                        log.done(&request.events).await;
                    }
                }
                // NATS or a store unreachable at start: the whole run again, later.
                Err(e) => {
                    tracing::error!(run = %id, error = %e, "run failed to start");
                    retry_later(&server, request.clone(), "(run start)");
                }
            }
            server.runs.finish(&id, outcome);
            if *stop.borrow() {
                return;
            }
        }
        tokio::select! {
            _ = submitted.changed() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Before a run of `lane`: a full run that writes is marked as running. Returns where the
/// full lane stood.
fn full_run_starts(server: &Server, lane: Lane, request: &RunRequest) -> (u64, bool) {
    let mut overlaps = server.overlaps.lock().expect("overlaps lock");
    let since = overlaps.mark();
    if lane == Lane::Full && !request.dry_run {
        overlaps.full_started += 1;
        overlaps.full_running = true;
    }
    since
}

/// After a run of `lane`: a full run's end releases the event-driven changes that overlapped
/// it; an event-driven run that overlapped a full run has its changes run again once no full
/// run runs (see [`Overlaps`]).
fn full_run_ends(server: &Server, lane: Lane, request: &RunRequest, since: (u64, bool)) {
    let mut overlaps = server.overlaps.lock().expect("overlaps lock");
    let again = match lane {
        Lane::Full if !request.dry_run => {
            overlaps.full_running = false;
            std::mem::take(&mut overlaps.waiting)
        }
        Lane::Events if request.is_targeted() && !request.dry_run => {
            if !overlaps.overlapped(since) {
                return;
            }
            let follow_up = RunRequest { events: Default::default(), ..request.clone() };
            if overlaps.full_running {
                overlaps.waiting.push(follow_up);
                return;
            }
            vec![follow_up]
        }
        _ => return,
    };
    drop(overlaps);
    for follow_up in again {
        server.runs.submit("follow-up", follow_up, None);
    }
}

/// The longest wait before a failed target is run again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Nothing dropped: the targets a run could not bring up to date are run again, with backoff
/// (2, 4, 8… s, at most a minute) for as long as they keep failing; a success resets it.
/// Whether a retry was scheduled (it carries the run's events on).
fn retry_failed(server: &Arc<Server>, request: &RunRequest, report: &serde_json::Value) -> bool {
    let mut failed = std::collections::BTreeSet::new();
    let mut failures = server.failures.lock().expect("failures lock");
    for target in report["targets"].as_array().into_iter().flatten() {
        let Some(name) = target["target"].as_str() else { continue };
        if target["status"] == "ok" {
            failures.remove(name);
        } else {
            *failures.entry(name.to_string()).or_default() += 1;
            failed.insert(name.to_string());
        }
    }
    if failed.is_empty() || request.dry_run {
        return false;
    }
    let attempts = failed.iter().filter_map(|t| failures.get(t)).max().copied().unwrap_or(1);
    drop(failures);
    tracing::warn!(targets = ?failed, "targets not brought up to date; running them again");
    let retry = RunRequest { targets: Some(failed), ..request.clone() };
    schedule_retry(server, retry, attempts);
    true
}

/// Runs `request` again later (a run that could not start), backing off while it keeps
/// failing; `key` counts its attempts.
fn retry_later(server: &Arc<Server>, request: RunRequest, key: &str) {
    let attempts = {
        let mut failures = server.failures.lock().expect("failures lock");
        let attempts = failures.entry(key.to_string()).or_default();
        *attempts += 1;
        *attempts
    };
    schedule_retry(server, request, attempts);
}

/// Submits `retry` after 2, 4, 8… s (at most a minute) for the `attempts`-th failure, unless
/// serve is shutting down by then (its events stay recorded for the next start).
fn schedule_retry(server: &Arc<Server>, retry: RunRequest, attempts: u32) {
    let delay = Duration::from_secs(1 << attempts.clamp(1, 6)).min(MAX_RETRY_DELAY);
    tracing::info!(retry_in = ?delay, "run scheduled again");
    let server = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if server.ready.load(Ordering::SeqCst) {
            server.runs.submit("retry", retry, None);
        }
    });
}

/// Plans and executes one run; its report as JSON (the CLI's very format).
async fn run_one(
    server: &Server,
    id: &str,
    request: &RunRequest,
) -> Result<serde_json::Value, String> {
    let cfg = &server.cfg;
    let req = PlanRequest {
        merge_only: request.merge_only,
        sync_only: request.sync_only,
        targets: request.targets.as_ref().map(|t| t.iter().cloned().collect()),
        dry_run: request.dry_run || cfg.pipeline.dry_run,
        allow_mass_delete: false,
        changes: request.changes.clone(),
    };
    // A run the config cannot plan never will be: its events are dropped, not retried.
    let plan = plan_run(cfg, id, &req).map_err(|e| format!("cannot plan: {e:#}"))?;
    let limits = Limits {
        merge_parallel: cfg.pipeline.merge_parallel,
        sync_parallel: cfg.pipeline.sync_parallel,
        continue_on_error: cfg.pipeline.continue_on_error,
    };
    let nats = server.nats.as_ref();
    let results = crate::cli::execute(cfg, &plan, req.dry_run, nats, limits, Some(&server.locks))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let report = Report::build(&plan, results, req.dry_run);
    serde_json::to_value(&report).map_err(|e| e.to_string())
}

/// Queues a full run now and then every `every`, ±10%.
async fn reconcile_every(
    server: Arc<Server>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        server.runs.submit("reconcile", RunRequest::default(), None);
        let jitter = 0.9 + 0.2 * (uuid::Uuid::now_v7().as_u128() % 1000) as f64 / 1000.0;
        tokio::select! {
            () = tokio::time::sleep(every.mul_f64(jitter)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How often to reconcile; `None`: never.
#[derive(Clone, Copy, Debug)]
pub struct Interval(pub Option<Duration>);

/// Parses `90s`, `15m`, `2h` or plain seconds; `0` or `off`: never.
pub fn parse_interval(text: &str) -> Result<Interval, String> {
    let text = text.trim();
    if text == "off" {
        return Ok(Interval(None));
    }
    let (number, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration like 90s, 15m or 2h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{text}` is not a duration like 90s, 15m or 2h")),
    };
    Ok(Interval((secs > 0).then(|| Duration::from_secs(secs))))
}
