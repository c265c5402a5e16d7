//! The coordinator's side of distributed runs: the [`JetStream`] executor publishes a run's
//! jobs in DAG order and collects their results; its streams, subjects and connection are
//! `vss_transport`'s, the worker loop is `vss_worker::daemon`.

mod dispatch;

pub use dispatch::{JetStream, RunRecord};
