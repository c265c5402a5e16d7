//! How vss jobs travel over NATS JetStream; both sides use it: the coordinator's JetStream
//! executor publishes jobs and reads results, `vss worker` takes jobs and publishes results.
//!
//! - Stream `VSS_JOBS` (work-queue retention, file storage) holds jobs until a worker acks
//!   them: full jobs on `vss.jobs.<phase>` (consumer `vss-workers`), targeted jobs (events) on
//!   `vss.jobs.event.<phase>`, a lane of their own (consumer `vss-workers-events`) so a live
//!   change never waits behind a reconcile's jobs. Each is published with
//!   `Nats-Msg-Id: <run_id>/<job_id>`, so publishing a job twice stores it once.
//! - Stream `VSS_RESULTS` (subjects `vss.results.<run_id>`) carries results back, deduplicated
//!   the same way.
//! - KV bucket `vss-runs` keeps one record per run (status and counts) and its plan.
//! - [`trace`]: the W3C trace context travels in each job's headers.
//!
//! Jobs and results are MessagePack of [`vss_protocol::job`] types: references, names, hashes
//! and counts, never a value or a credential.

pub mod trace;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use vss_protocol::config::NatsSpec;
use vss_protocol::job::{Job, Phase};
use vss_stores::credentials::ReadSecretRef;

/// The stream of pending jobs.
pub const JOBS_STREAM: &str = "VSS_JOBS";
/// The stream of job results.
pub const RESULTS_STREAM: &str = "VSS_RESULTS";
/// The KV bucket of run records.
pub const RUNS_BUCKET: &str = "vss-runs";
/// The durable consumer all workers share.
pub const WORKERS_CONSUMER: &str = "vss-workers";
/// The KV bucket where live workers say which wire version they run (entries expire).
pub const WORKERS_BUCKET: &str = "vss-worker-registry";
/// How long a worker's registry entry lives unless renewed.
pub const WORKER_TTL: Duration = Duration::from_secs(60);
/// Job header: the wire version of the job (`vss_protocol::job::WIRE_VERSION`).
pub const WIRE_HEADER: &str = "Vss-Wire-Version";
/// Job header: the run id, readable even when the body is not.
pub const RUN_HEADER: &str = "Vss-Run";
/// Job header: the job id.
pub const JOB_HEADER: &str = "Vss-Job";
/// Job header: the job's target.
pub const TARGET_HEADER: &str = "Vss-Target";
/// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish: long enough
/// for a stopped coordinator to be resumed without handing a job out twice.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 3600);

/// NATS could not be reached or set up. Messages never quote a credential or URL userinfo.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A credential or the CA could not be read.
    #[error("{0}")]
    Credentials(String),
    /// The server list does not parse.
    #[error("invalid NATS URL `{0}`")]
    Url(String),
    /// No server answered.
    #[error("cannot connect to NATS at {url}: {cause}")]
    Connect {
        /// The URL(s), userinfo hidden.
        url: String,
        /// Why.
        cause: async_nats::ConnectError,
    },
    /// A stream, consumer or bucket could not be created or opened.
    #[error("cannot set up {what}: {message}")]
    Setup {
        /// E.g. `stream VSS_JOBS`.
        what: String,
        /// The server's answer.
        message: String,
    },
}

impl TransportError {
    /// A setup error about `what`.
    pub fn setup(what: impl Into<String>, error: impl std::fmt::Display) -> Self {
        TransportError::Setup { what: what.into(), message: error.to_string() }
    }
}

/// The subject a job is published on: targeted jobs (events) have a lane of their own.
pub fn job_subject(job: &Job) -> String {
    let lane = if job.names.is_some() { "event." } else { "" };
    match job.phase() {
        Phase::Merge => format!("vss.jobs.{lane}merge"),
        Phase::Sync => format!("vss.jobs.{lane}sync"),
    }
}

/// The subjects of full jobs (the `vss-workers` consumer's lane).
pub const FULL_JOB_SUBJECTS: [&str; 2] = ["vss.jobs.merge", "vss.jobs.sync"];
/// The subjects of targeted jobs (the `vss-workers-events` consumer's lane).
pub const EVENT_JOB_SUBJECTS: &str = "vss.jobs.event.>";
/// The durable consumer of targeted jobs, shared by every worker.
pub const EVENTS_CONSUMER: &str = "vss-workers-events";

/// The subject a run's results are published on.
pub fn results_subject(run_id: &str) -> String {
    format!("vss.results.{run_id}")
}

/// The headers a job travels with: its wire version and ids, so a worker that cannot read
/// the body can still answer for it.
pub fn job_headers(job: &Job) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(WIRE_HEADER, vss_protocol::job::WIRE_VERSION.to_string().as_str());
    headers.insert(RUN_HEADER, job.run_id.as_str());
    headers.insert(JOB_HEADER, job.id.as_str());
    headers.insert(TARGET_HEADER, job.target.as_str());
    headers
}

/// A live worker, as it registers itself in [`WORKERS_BUCKET`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WorkerEntry {
    /// The vss release it runs.
    pub version: String,
    /// The wire version it reads.
    pub wire: u32,
}

/// The idempotency key of a job (and of its result): `<run_id>/<job_id>`.
pub fn message_id(run_id: &str, job_id: &str) -> String {
    format!("{run_id}/{job_id}")
}

/// Connects with the spec's credentials; reconnects with backoff for as long as the process
/// runs. `name` shows in the server's connection list.
pub async fn connect(spec: &NatsSpec, name: &str) -> Result<async_nats::Client, TransportError> {
    let mut options = async_nats::ConnectOptions::new().name(name);
    if let Some(path) = &spec.credentials {
        options = options.credentials_file(path).await.map_err(|e| {
            TransportError::Credentials(format!(
                "cannot read NATS credentials file {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(token) = &spec.token {
        let token =
            token.read().map_err(|e| TransportError::Credentials(format!("NATS token: {e}")))?;
        options = options.token(token.to_string());
    }
    if let Some(seed) = &spec.nkey {
        let seed =
            seed.read().map_err(|e| TransportError::Credentials(format!("NATS NKey seed: {e}")))?;
        options = options.nkey(seed.to_string());
    }
    if let Some(ca) = &spec.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers = spec
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TransportError::Url(without_userinfo(&spec.url)))?;
    options
        .connect(servers)
        .await
        .map_err(|cause| TransportError::Connect { url: without_userinfo(&spec.url), cause })
}

/// The URL(s) with any `user:password@` replaced, for messages.
pub fn without_userinfo(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &url[..scheme], &url[at + 1..])
            }
            _ => url.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Creates the streams and the run bucket if they do not exist yet (idempotent).
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), TransportError> {
    js.get_or_create_stream(stream::Config {
        name: JOBS_STREAM.into(),
        subjects: vec!["vss.jobs.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(|e| TransportError::setup(format!("stream {JOBS_STREAM}"), e))?;
    js.get_or_create_stream(stream::Config {
        name: RESULTS_STREAM.into(),
        subjects: vec!["vss.results.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })
    .await
    .map_err(|e| TransportError::setup(format!("stream {RESULTS_STREAM}"), e))?;
    if js.get_key_value(WORKERS_BUCKET).await.is_err() {
        js.create_key_value(jetstream::kv::Config {
            bucket: WORKERS_BUCKET.into(),
            history: 1,
            storage: stream::StorageType::Memory,
            max_age: WORKER_TTL,
            ..Default::default()
        })
        .await
        .map_err(|e| TransportError::setup(format!("KV bucket {WORKERS_BUCKET}"), e))?;
    }
    if js.get_key_value(RUNS_BUCKET).await.is_err() {
        js.create_key_value(jetstream::kv::Config {
            bucket: RUNS_BUCKET.into(),
            history: 1,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        })
        .await
        .map_err(|e| TransportError::setup(format!("KV bucket {RUNS_BUCKET}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::without_userinfo;

    #[test]
    fn passwords_in_urls_are_not_repeated() {
        assert_eq!(
            without_userinfo("nats://vss:s3cret@nats-1:4222,nats://nats-2:4222"),
            "nats://***@nats-1:4222,nats://nats-2:4222"
        );
        assert_eq!(without_userinfo("tls://nats:4222"), "tls://nats:4222");
    }
}
