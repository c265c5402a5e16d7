//! The `vss` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::Instrument as _;
use vss_protocol::config::{Config, ConfigError, LogFormat, NatsSpec, SecretRef, StateSpec};
use vss_protocol::job::JobResult;
use vss_protocol::plan::{Plan, PlanRequest, plan_run};
use vss_worker::WorkerContext;

use crate::executor::{Executor, InProcess, JobLocks, Limits};
use crate::nats::JetStream;
use crate::report::{self, Report};
use vss_worker::daemon::{HealthFile, WorkerOptions};

/// Keeps secrets in sync across stores.
#[derive(Debug, Parser)]
#[command(name = "vss", version, about)]
pub struct Cli {
    /// Log line format on stderr (default: the config's `log.format`, else text).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline: merge sources into the merge store, then sync targets.
    Pipeline(PipelineArgs),
    /// Check a config and print every problem at once.
    Validate {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the job DAG of a run.
    Graph {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Drawing format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Only the merge phase.
        #[arg(long, conflicts_with = "sync_only")]
        merge_only: bool,
        /// Only the sync phase.
        #[arg(long)]
        sync_only: bool,
    },
    /// Take jobs from NATS JetStream and run them, until SIGTERM or Ctrl-C.
    Worker(WorkerArgs),
    /// Serve the run API: runs triggered over HTTP (tokens, signed webhooks, GitHub pushes)
    /// and by a periodic reconcile, until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Vault configuration as versioned migrations: generate, plan, apply, status, rollback,
    /// repair.
    Migrate(crate::migrate::MigrateArgs),
    /// The config file's format.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Prints a shell completion script, e.g. `vss completions bash > /etc/bash_completion.d/vss`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The state ledger: `vss state migrate --from file:PATH --nats URL` copies a ledger
    /// folder into NATS, so a fleet takes over what one machine owned.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Distributed runs kept in NATS (`vss-runs`).
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Where the run API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// A full run this often (with jitter) and at start: `90s`, `15m`, `2h`, or `off`.
    #[arg(long, default_value = "15m", value_parser = crate::serve::parse_interval)]
    reconcile_interval: crate::serve::Interval,
    /// Run the jobs on `vss worker`s through this NATS server (as `vss pipeline --nats`).
    #[arg(long = "nats", env = "VSS_NATS_URL")]
    nats_url: Option<String>,
    /// Listen here for Vault/OpenBao's `socket` audit device (one JSON entry per line); a
    /// change to a path a vault source reads queues a run of the targets that depend on it.
    #[arg(long)]
    audit_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Prints the JSON Schema of `vss.yaml`, for editors (YAML language servers read a
    /// `# yaml-language-server: $schema=<file>` line).
    Schema,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// One line per run: id, status, jobs finished and failed.
    List,
    /// One run's record as JSON.
    Show {
        /// The run id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Jobs run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds a job may go silent before JetStream redelivers it (heartbeats keep long jobs
    /// alive); applies when the shared consumer is first created.
    #[arg(long, default_value_t = 30)]
    ack_wait: u64,
    /// Deliveries of a job before a retryable failure becomes final; likewise.
    #[arg(long, default_value_t = 5)]
    max_deliver: i64,
    /// Seconds in-flight jobs get to finish after SIGTERM.
    #[arg(long, default_value_t = 60)]
    shutdown_grace: u64,
    /// Touch this file every few seconds while the worker loop runs (for liveness probes).
    #[arg(long, value_name = "PATH")]
    health_file: Option<PathBuf>,
    /// Only run jobs whose stores and ledger match one of these glob patterns (repeat the
    /// flag), matched against store labels such as `vault:https://vault.internal:8200/*`,
    /// `aws-sm:us-east-1/app/*`, `file:/srv/secrets/*` and `state:/var/lib/vss/*`. Anyone who
    /// can publish on `vss.jobs.*` can otherwise make the worker use its credentials on any
    /// store.
    #[arg(long = "allow-store", value_name = "PATTERN", value_parser = parse_glob)]
    allowed_stores: Vec<glob::Pattern>,
}

/// `vss state`.
#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Copies a ledger folder (every target's records, journals included, and its hash key)
    /// into a NATS bucket. Safe to run again; refuses when the bucket already holds another
    /// hash key (its records' hashes would not match).
    Migrate {
        /// The ledger folder: `file:PATH` (a config's default is `.vss/state` beside it).
        #[arg(long)]
        from: String,
        /// The bucket.
        #[arg(long, default_value = StateSpec::DEFAULT_BUCKET)]
        bucket: String,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

/// How a worker reaches NATS (a coordinator reads the same from `execution.nats`).
#[derive(Debug, Args)]
struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long = "nats", env = "VSS_NATS_URL")]
    url: String,
    /// A `.creds` file (JWT and NKey seed).
    #[arg(long = "nats-creds", env = "VSS_NATS_CREDS")]
    credentials: Option<PathBuf>,
    /// A file holding a token.
    #[arg(long = "nats-token-file", env = "VSS_NATS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// A file holding an NKey seed.
    #[arg(long = "nats-nkey-file", env = "VSS_NATS_NKEY_FILE")]
    nkey_file: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the server's TLS certificate with.
    #[arg(long = "nats-ca", env = "VSS_NATS_CA")]
    tls_ca: Option<PathBuf>,
}

impl NatsArgs {
    fn spec(self) -> NatsSpec {
        NatsSpec {
            url: self.url,
            credentials: self.credentials,
            token: self.token_file.map(SecretRef::File),
            nkey: self.nkey_file.map(SecretRef::File),
            tls_ca: self.tls_ca,
            job_timeout_secs: NatsSpec::DEFAULT_JOB_TIMEOUT_SECS,
        }
    }
}

#[derive(Debug, Args)]
struct PipelineArgs {
    /// The config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Compute and report every change, write nothing (merge store and state included).
    #[arg(long)]
    dry_run: bool,
    /// Only the merge phase.
    #[arg(long, conflicts_with = "sync_only")]
    merge_only: bool,
    /// Only the sync phase (from `source`, or from the merge store's last result).
    #[arg(long)]
    sync_only: bool,
    /// Only these targets (comma-separated); their parents' merges run too.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Jobs run at once in each phase (default: the config's `parallel` settings).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Keep running other targets after one fails.
    #[arg(long)]
    continue_on_error: bool,
    /// Allow deleting more than the configured share of a target's secrets.
    #[arg(long)]
    allow_mass_delete: bool,
    /// Exit 0 when nothing changes, 1 when something does, 2 on errors.
    #[arg(long)]
    exit_code: bool,
    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Run the jobs on `vss worker`s through this NATS server (overrides the config's
    /// `execution.nats.url`; its credentials settings still apply).
    #[arg(long = "nats", env = "VSS_NATS_URL")]
    nats_url: Option<String>,
    /// Resume a distributed run whose coordinator stopped: its stored plan runs to the end,
    /// with the results already in (see `vss runs list`).
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["dry_run", "merge_only", "sync_only", "targets"])]
    resume: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputFormat {
    Human,
    Json,
    Github,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let code = match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    crate::telemetry::shutdown();
    code
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let log_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Command::Validate { config } => {
            let cfg = match load_config(&config) {
                Ok(cfg) => cfg,
                Err(e) => return Ok(config_error(e)),
            };
            for warning in cfg.warnings() {
                eprintln!("warning: {}: {warning}", config.display());
            }
            print_or_closed(&format!(
                "{}: ok ({} sources, {} targets; merge {}, sync {})\n",
                config.display(),
                cfg.sources.len(),
                cfg.targets.len(),
                on_off(cfg.pipeline.merge_enabled),
                on_off(cfg.pipeline.sync_enabled)
            ))
        }
        Command::Graph { config, format, merge_only, sync_only } => {
            let cfg = match load_config(&config) {
                Ok(cfg) => cfg,
                Err(e) => return Ok(config_error(e)),
            };
            let req = PlanRequest { merge_only, sync_only, ..Default::default() };
            let plan = plan_run(&cfg, "graph", &req)?;
            print_or_closed(&match format {
                GraphFormat::Dot => plan.to_dot(),
                GraphFormat::Mermaid => plan.to_mermaid(),
            })
        }
        Command::Config { command: ConfigCommand::Schema } => {
            let schema = serde_json::to_string_pretty(&Config::schema())?;
            print_or_closed(&format!("{schema}\n"))
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "vss",
                &mut script,
            );
            print_or_closed(&String::from_utf8_lossy(&script))
        }
        Command::Pipeline(args) => pipeline(args, log_format).await,
        Command::Serve(args) => serve(args, log_format).await,
        Command::Migrate(args) => {
            crate::logging::init(None, log_format, "vss");
            crate::migrate::run(args).await
        }
        Command::State { command: StateCommand::Migrate { from, bucket, nats } } => {
            crate::logging::init(None, log_format, "vss");
            crate::state::migrate(&from, &bucket, &nats.spec()).await
        }
        Command::Runs { command, nats } => {
            crate::logging::init(None, log_format, "vss");
            runs(command, &nats.spec()).await
        }
        Command::Worker(args) => worker(args, log_format).await,
    }
}

/// `vss serve`.
async fn serve(args: ServeArgs, log_format: Option<LogFormat>) -> anyhow::Result<u8> {
    let mut cfg = match load_config(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => return Ok(config_error(e)),
    };
    let level = Some(cfg.log.level.as_deref().unwrap_or("info"));
    crate::logging::init(level, log_format.or(cfg.log.format), "vss");
    let nats = nats_spec(args.nats_url, cfg.nats.clone());
    if let Some(spec) = &nats {
        cfg.distribute(spec.clone());
    }
    let options = crate::serve::ServeOptions {
        listen: args.listen,
        reconcile_every: args.reconcile_interval.0,
        nats,
        audit_listen: args.audit_listen,
    };
    crate::serve::serve(cfg, options, shutdown_signal()).await?;
    Ok(0)
}

/// `vss runs list|show`.
async fn runs(command: RunsCommand, nats: &NatsSpec) -> anyhow::Result<u8> {
    let coordinator = JetStream::connect(nats, false).await?;
    match command {
        RunsCommand::List => {
            let mut text = String::new();
            for run in coordinator.runs().await? {
                text.push_str(&format!(
                    "{}  {:8}  {}/{} jobs finished, {} failed\n",
                    run.run_id, run.status, run.finished_jobs, run.jobs, run.failed_jobs
                ));
            }
            print_or_closed(&text)
        }
        RunsCommand::Show { id } => {
            let run = coordinator
                .runs()
                .await?
                .into_iter()
                .find(|r| r.run_id == id)
                .with_context(|| format!("no run {id}"))?;
            print_or_closed(&format!("{}\n", serde_json::to_string_pretty(&run)?))
        }
    }
}

/// `vss worker`: a daemon, whose job lines are its activity log.
async fn worker(args: WorkerArgs, log_format: Option<LogFormat>) -> anyhow::Result<u8> {
    crate::logging::init(Some("info"), log_format, "vss-worker");
    let options = WorkerOptions {
        concurrency: args.concurrency,
        ack_wait: Duration::from_secs(args.ack_wait),
        max_deliver: args.max_deliver,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        allowed_stores: args.allowed_stores,
    };
    if options.allowed_stores.is_empty() {
        tracing::warn!("no --allow-store: this worker runs jobs on any store a job names");
    }
    let health = args.health_file.map(HealthFile);
    vss_worker::daemon::run(&args.nats.spec(), options, health, shutdown_signal()).await?;
    Ok(0)
}

/// Writes `text` to stdout; a reader that closed the pipe early (`| head`) is no error.
fn print_or_closed(text: &str) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

fn parse_glob(text: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(text).map_err(|e| format!("invalid glob: {e}"))
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Reads and validates a config file with this process's environment; relative paths in it
/// are taken from its folder.
pub fn load_config(path: &std::path::Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    let base =
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    Config::from_yaml(&text, &path.display().to_string(), &base, &|name| std::env::var(name).ok())
}

fn config_error(e: ConfigError) -> u8 {
    eprintln!("error: {e}");
    2
}

async fn pipeline(args: PipelineArgs, log_format: Option<LogFormat>) -> anyhow::Result<u8> {
    let mut cfg = match load_config(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            crate::logging::init(None, log_format, "vss");
            return Ok(config_error(e));
        }
    };
    crate::logging::init(cfg.log.level.as_deref(), log_format.or(cfg.log.format), "vss");

    let dry_run = (args.dry_run || cfg.pipeline.dry_run) && args.resume.is_none();
    let run_id = uuid::Uuid::now_v7().to_string();
    let req = PlanRequest {
        merge_only: args.merge_only,
        sync_only: args.sync_only,
        targets: args.targets.clone(),
        dry_run,
        allow_mass_delete: args.allow_mass_delete,
        changes: None,
    };
    let nats = nats_spec(args.nats_url, cfg.nats.clone());
    if let Some(spec) = &nats {
        cfg.distribute(spec.clone());
    }
    let continue_on_error = args.continue_on_error || cfg.pipeline.continue_on_error;
    let resumed = match (&args.resume, &nats) {
        (None, _) => None,
        (Some(id), Some(spec)) => {
            let executor = JetStream::connect(spec, continue_on_error).await?;
            let plan = executor.load_plan(id).await?;
            Some((executor, plan))
        }
        (Some(_), None) => anyhow::bail!("--resume needs NATS: --nats URL or execution.nats"),
    };
    let plan = match &resumed {
        Some((_, plan)) => plan.clone(),
        None => plan_run(&cfg, &run_id, &req)?,
    };
    tracing::info!(run = %plan.run_id, jobs = plan.jobs.len(), dry_run, "run planned");

    let limits = Limits {
        merge_parallel: args.parallelism.unwrap_or(cfg.pipeline.merge_parallel),
        sync_parallel: args.parallelism.unwrap_or(cfg.pipeline.sync_parallel),
        continue_on_error,
    };
    let results = match resumed {
        Some((executor, _)) => {
            // The resumed run continues the trace the run started.
            let record = executor.run_record(&plan.run_id).await;
            let parent = record.and_then(|r| r.traceparent);
            run_with_progress(&executor, &plan, parent.as_deref()).await?
        }
        None => execute(&cfg, &plan, dry_run, nats.as_ref(), limits, None).await?,
    };
    let report = Report::build(&plan, results, dry_run);
    let mut summary = None;
    let written = {
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        let write = match args.output {
            OutputFormat::Json => report.write_json(&mut stdout),
            OutputFormat::Human => {
                let colour =
                    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                stdout.write_all(report::human(&report, colour).as_bytes())
            }
            OutputFormat::Github => {
                let (commands, markdown) = report::github(&report);
                summary = Some(markdown);
                stdout.write_all(commands.as_bytes())
            }
        };
        write.and_then(|()| stdout.flush())
    };
    // A reader that closed the pipe early (`| head`) has what it wanted.
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if let (Some(markdown), Some(path)) = (summary, std::env::var_os("GITHUB_STEP_SUMMARY")) {
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(
                || format!("cannot open GITHUB_STEP_SUMMARY file {}", path.display()),
            )?;
        file.write_all(markdown.as_bytes())?;
    }
    Ok(report.exit_code(args.exit_code))
}

/// Executes the plan with a progress bar on stderr when it is a terminal, in the run's span
/// (a child of `parent`, a `traceparent`, when a resumed run continues its trace).
/// The NATS connection: a `--nats URL` over the config's `execution.nats` (whose credentials
/// still apply), or the config's alone.
fn nats_spec(url: Option<String>, configured: Option<NatsSpec>) -> Option<NatsSpec> {
    match (url, configured) {
        (Some(url), Some(spec)) => Some(NatsSpec { url, ..spec }),
        (Some(url), None) => Some(NatsSpec {
            url,
            credentials: None,
            token: None,
            nkey: None,
            tls_ca: None,
            job_timeout_secs: NatsSpec::DEFAULT_JOB_TIMEOUT_SECS,
        }),
        (None, spec) => spec,
    }
}

/// Runs a plan in-process, or on the fleet when `nats` is given (a dry run always
/// in-process: its merges live in this process's memory, where its syncs must see them).
pub(crate) async fn execute(
    cfg: &Config,
    plan: &Plan,
    dry_run: bool,
    nats: Option<&NatsSpec>,
    limits: Limits,
    locks: Option<&JobLocks>,
) -> anyhow::Result<Vec<JobResult>> {
    // A context per run: stores keep per-run state (a source's fetched document, a dry run's
    // would-be writes, a breaker's outage budget).
    let mut ctx = WorkerContext::new(dry_run, cfg.pipeline.timeouts);
    if let StateSpec::Nats { bucket } = &cfg.state {
        let spec = nats.or(cfg.nats.as_ref()).with_context(|| {
            format!(
                "the state ledger is in NATS (bucket `{bucket}`): give --nats URL or execution.nats"
            )
        })?;
        let client = vss_transport::connect(spec, "vss").await?;
        ctx = ctx.with_jetstream(async_nats::jetstream::new(client));
    }
    let ctx = Arc::new(ctx);
    let locks = locks.cloned().unwrap_or_default();
    // Resolve the hash key before jobs run in parallel, so only one is ever generated.
    if let Some(job) = plan.jobs.first() {
        ctx.hash_key(&job.options).await.context("cannot resolve the content-hash key")?;
    }
    let results = match nats {
        Some(_) if dry_run => {
            tracing::info!("dry run: jobs run in-process (nothing is written, nothing to share)");
            run_with_progress(&InProcess::new(ctx.clone(), limits), plan, None).await?
        }
        Some(spec) => {
            let executor = JetStream::connect(spec, limits.continue_on_error).await?;
            run_with_progress(&executor.with_locks(locks), plan, None).await?
        }
        None => {
            let executor = InProcess::sharing(ctx.clone(), limits, locks);
            run_with_progress(&executor, plan, None).await?
        }
    };
    tracing::debug!(api_calls = ?ctx.stores().api_calls(), "store calls");
    Ok(results)
}

async fn run_with_progress(
    executor: &(dyn Executor + Sync),
    plan: &Plan,
    parent: Option<&str>,
) -> anyhow::Result<Vec<JobResult>> {
    let bar = if std::io::stderr().is_terminal() && plan.jobs.len() > 1 {
        ProgressBar::with_draw_target(Some(plan.jobs.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} jobs {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let on_result = |r: &JobResult| {
        bar.set_message(r.job_id.clone());
        bar.inc(1);
    };
    // The run's trace: every job's span (here or on a worker) is a child of this one.
    let span = tracing::info_span!("run", run_id = %plan.run_id, jobs = plan.jobs.len());
    if let Some(parent) = parent {
        crate::telemetry::continue_from(&span, parent);
    }
    let results = executor.execute(plan, &on_result).instrument(span).await;
    bar.finish_and_clear();
    results
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
