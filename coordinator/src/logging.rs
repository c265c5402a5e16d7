//! Logs go to stderr (reports own stdout), filtered by `RUST_LOG`, else the config's
//! `log.level`, else `warn` (`info` for `vss worker`).
//!
//! Whatever the filter says, client libraries that log request and response bodies at debug
//! level (Google's, when `GOOGLE_CLOUD_RUST_LOGGING` is set: an access response holds a
//! secret's payload) are held at `info`.

use std::io::IsTerminal;

use tracing::Metadata;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};
use vss_protocol::config::LogFormat;

/// Targets whose debug and trace events may carry message bodies.
const BODY_LOGGING_TARGETS: [&str; 1] = ["google_cloud"];

/// Whether an event may be logged at all.
fn safe(meta: &Metadata<'_>) -> bool {
    *meta.level() <= tracing::Level::INFO
        || !BODY_LOGGING_TARGETS.iter().any(|t| meta.target().starts_with(t))
}

/// Installs the global subscriber once; `service` names the process in exported traces
/// (see [`crate::telemetry`]).
pub fn init(level: Option<&str>, format: Option<LogFormat>, service: &'static str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("warn")))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let layer = fmt::layer().with_writer(std::io::stderr);
    let layer = match format.unwrap_or(LogFormat::Text) {
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Text => layer
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(filter_fn(safe)))
        .with(crate::telemetry::layer(service))
        .try_init();
    // A second call (e.g. after a config error) keeps the first subscriber.
    drop(installed);
}
