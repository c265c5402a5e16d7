//! The `vss` binary's library: command line, planning, executors and reports.
//!
//! - [`cli`]: parses arguments and runs a command.
//! - [`executor`]: runs a plan's jobs in DAG order ([`executor::InProcess`] is the embedded
//!   default).
//! - [`report`]: aggregates job results into one report and renders it (human, JSON, GitHub).
//! - [`logging`]: tracing to stderr.

pub mod cli;
pub mod executor;
pub mod logging;
pub mod report;
