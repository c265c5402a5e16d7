//! Pure data and logic of vss: no I/O, no async.
//!
//! - [`secret`]: [`SecretValue`](secret::SecretValue) (redacted, zeroized) and keyed
//!   [`ContentHash`](secret::ContentHash)es.
//! - [`config`]: the YAML config, its loader (line numbers, `${VAR}` expansion) and `validate`.
//! - [`env`]: `${VAR}` expansion, one set of rules for the config and migrations.
//! - [`merge`]: the deep-merge rules of the merge phase.
//! - [`diff`]: per-target change sets and their summaries (names, key names, hashes; never values).
//! - [`plan`]: a run as a DAG of [`Job`](job::Job)s, and its drawings (dot, mermaid).
//! - [`reconcile`]: the two decisions of a sync (what each secret needs, whether deletes may
//!   happen), pure.
//! - [`job`]: the job and result wire types shared by executors and workers (MessagePack).

pub mod config;
pub mod diff;
pub mod env;
pub mod job;
pub mod merge;
pub mod plan;
pub mod reconcile;
pub mod secret;

pub use secret::{ContentHash, HashKey, SecretValue};
