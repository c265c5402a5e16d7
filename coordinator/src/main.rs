//! `vss`: keeps secrets in sync across stores.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = vss_coordinator::cli::Cli::parse();
    std::process::ExitCode::from(vss_coordinator::cli::run(cli).await)
}
