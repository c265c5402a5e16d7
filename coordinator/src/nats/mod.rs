//! Distributed runs over NATS JetStream: the coordinator's executor ([`JetStream`]) and the
//! worker loop ([`worker`]).
//!
//! - Stream `VSS_JOBS` (subjects `vss.jobs.<phase>`, work-queue retention, file storage) holds
//!   jobs until a worker acks them; each is published with `Nats-Msg-Id: <run_id>/<job_id>`, so
//!   publishing a job twice stores it once.
//! - Stream `VSS_RESULTS` (subjects `vss.results.<run_id>`) carries results back, deduplicated
//!   the same way.
//! - KV bucket `vss-runs` keeps one record per run (status and counts).
//!
//! Jobs and results are MessagePack of [`vss_protocol::job`] types: references, names, hashes
//! and counts, never a value or a credential.

mod dispatch;
pub mod worker;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
pub use dispatch::JetStream;
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
/// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish: long enough
/// for a stopped coordinator to be resumed without handing a job out twice.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 3600);

/// The subject a job is published on.
fn job_subject(job: &Job) -> String {
    match job.phase() {
        Phase::Merge => "vss.jobs.merge".to_string(),
        Phase::Sync => "vss.jobs.sync".to_string(),
    }
}

/// The subject a run's results are published on.
fn results_subject(run_id: &str) -> String {
    format!("vss.results.{run_id}")
}

/// The idempotency key of a job (and of its result): `<run_id>/<job_id>`.
fn message_id(run_id: &str, job_id: &str) -> String {
    format!("{run_id}/{job_id}")
}

/// Connects with the spec's credentials; reconnects with backoff for as long as the process
/// runs. `name` shows in the server's connection list.
pub async fn connect(spec: &NatsSpec, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new().name(name);
    if let Some(path) = &spec.credentials {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("cannot read NATS credentials file {}", path.display()))?;
    }
    if let Some(token) = &spec.token {
        let token = token.read().map_err(|e| anyhow::anyhow!("NATS token: {e}"))?;
        options = options.token(token.to_string());
    }
    if let Some(seed) = &spec.nkey {
        let seed = seed.read().map_err(|e| anyhow::anyhow!("NATS NKey seed: {e}"))?;
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
        .with_context(|| format!("invalid NATS URL `{}`", without_userinfo(&spec.url)))?;
    options
        .connect(servers)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", without_userinfo(&spec.url)))
}

/// The URL(s) with any `user:password@` replaced, for messages.
fn without_userinfo(urls: &str) -> String {
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
async fn ensure_streams(js: &jetstream::Context) -> anyhow::Result<()> {
    js.get_or_create_stream(stream::Config {
        name: JOBS_STREAM.into(),
        subjects: vec!["vss.jobs.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .context("cannot create stream VSS_JOBS")?;
    js.get_or_create_stream(stream::Config {
        name: RESULTS_STREAM.into(),
        subjects: vec!["vss.results.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })
    .await
    .context("cannot create stream VSS_RESULTS")?;
    if js.get_key_value(RUNS_BUCKET).await.is_err() {
        js.create_key_value(jetstream::kv::Config {
            bucket: RUNS_BUCKET.into(),
            history: 1,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        })
        .await
        .context("cannot create KV bucket vss-runs")?;
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
