//! Logs go to stderr (reports own stdout), filtered by `RUST_LOG`, else the config's
//! `log.level`, else `warn` (`info` for `vss worker`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use vss_protocol::config::LogFormat;

/// Installs the global subscriber once.
pub fn init(level: Option<&str>, format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("warn")))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match format.unwrap_or(LogFormat::Text) {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
    };
    // A second call (e.g. after a config error) keeps the first subscriber.
    drop(installed);
}
