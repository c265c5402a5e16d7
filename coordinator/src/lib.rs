//! The `vss` binary's library: command line, planning, executors and reports.
//!
//! - [`cli`]: parses arguments and runs a command.
//! - [`executor`]: runs a plan's jobs in DAG order ([`executor::InProcess`] is the embedded
//!   default).
//! - [`migrate`]: `vss migrate`, the command line of `vss-migrations`.
//! - [`nats`]: distributed runs: the JetStream executor and the `vss worker` loop.
//! - [`report`]: aggregates job results into one report and renders it (human, JSON, GitHub).
//! - [`state`]: `vss state migrate`, a ledger folder into NATS.
//! - [`logging`]: tracing to stderr.

pub mod cli;
pub mod executor;
pub mod logging;
pub mod migrate;
pub mod nats;
pub mod report;
pub mod serve;
pub mod state;
pub mod telemetry;
