//! Vault configuration managed like database migrations (`vss migrate`).
//!
//! A schema declares the desired state by Vault path (auth methods, secrets engines, ACL
//! policies, data at any other path). `generate` compares it with what Vault holds (and with
//! the last known desired state, for removals) and writes the next `V<NNNN>__<name>.yaml`
//! with ordered `up` tasks and their `down` inverses. `apply` runs pending migrations in
//! order; `rollback` runs `down` tasks; the applied history (versions, checksums, a dirty
//! flag) and a lock live in Vault's KV v2, written with check-and-set.
//!
//! - [`schema`]: the schema file and `${VAR}` interpolation.
//! - [`normalize`]: the spellings Vault treats as equal.
//! - [`generate`]: the diff that becomes tasks.
//! - [`task`]: one step, as written in a migration file.
//! - [`files`]: the migrations folder.
//! - [`vault`]: reading Vault's state and running tasks.
//! - [`runner`]: history, lock, apply, rollback, repair, status.

pub mod files;
pub mod generate;
pub mod normalize;
pub mod runner;
pub mod schema;
pub mod task;
pub mod vault;

use std::path::Path;

use vss_protocol::env::ExpandError;
use vss_stores::StoreError;

/// Why a migration command failed. Each names the files, versions, tasks and paths involved,
/// and the fix; never a value taken from the environment.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A schema or migration file is unreadable or invalid.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Vault refused or could not be reached.
    #[error(transparent)]
    Vault(#[from] StoreError),
    /// A `${VAR}` could not be expanded.
    #[error(transparent)]
    Variable(#[from] ExpandError),
    /// A migration failed midway earlier; nothing runs until Vault is fixed and repaired.
    #[error(
        "V{version:04} failed midway ({direction} task {task}: {error}); fix Vault by hand, then run `vss migrate repair`"
    )]
    Dirty {
        /// The migration.
        version: u32,
        /// `up` or `down`.
        direction: String,
        /// Which task (number and description).
        task: String,
        /// What failed.
        error: String,
    },
    /// A task failed just now; Vault was marked dirty (or marking it failed too).
    #[error("V{version:04} {direction} task {task} failed: {error}; {marked}")]
    TaskFailed {
        /// The migration.
        version: u32,
        /// `up` or `down`.
        direction: String,
        /// Which task (number and description).
        task: String,
        /// What failed.
        error: String,
        /// Whether Vault is now marked dirty.
        marked: String,
    },
    /// An applied migration's file changed.
    #[error(
        "{path}: edited after it was applied (its checksum changed); restore it, and put new changes in a new migration"
    )]
    ChecksumChanged {
        /// The file.
        path: String,
    },
    /// An applied migration's file is gone.
    #[error("applied migration V{version:04}__{name} is missing from {dir}")]
    MissingFile {
        /// Its version.
        version: u32,
        /// Its name.
        name: String,
        /// The migrations folder.
        dir: String,
    },
    /// A pending migration is numbered below the last applied one.
    #[error("{path}: out of order: numbered below V{last_applied:04}, the last applied migration")]
    OutOfOrder {
        /// The file.
        path: String,
        /// The last applied version.
        last_applied: u32,
    },
    /// `generate` while a migration is still pending.
    #[error("{path}: not applied yet; apply it before generating the next migration")]
    NotApplied {
        /// The pending file.
        path: String,
    },
    /// Another runner holds the lock.
    #[error("another runner ({owner}) holds the migration lock; try again later")]
    Locked {
        /// Who holds it.
        owner: String,
    },
    /// The lock was taken over while this runner worked.
    #[error("the migration lock was taken over by another runner; stopping")]
    LockLost,
    /// What would run removes things and `--allow-destructive` was not given.
    #[error("{what} removes things: {tasks}; rerun with --allow-destructive{to}")]
    Destructive {
        /// `rolling back` or `the schema`.
        what: &'static str,
        /// The destructive tasks.
        tasks: String,
        /// What the flag would do, e.g. ` to generate that`.
        to: &'static str,
    },
    /// The history's KV engine does not exist.
    #[error("the history's KV engine `{mount}/` does not exist (see --state-mount)")]
    NoStateMount {
        /// The mount.
        mount: String,
    },
    /// Tasks ran but the history could not record them.
    #[error(
        "V{version:04} was {done}, but recording it in the history failed: {error}; check `vss migrate status` before anything else"
    )]
    NotRecorded {
        /// The migration.
        version: u32,
        /// `applied` or `rolled back`.
        done: &'static str,
        /// Why the history write failed.
        error: String,
    },
    /// Any other rule that stopped the command before it changed anything.
    #[error("{0}")]
    Refused(String),
}

impl MigrateError {
    /// An error about `path`.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        MigrateError::File { path: path.display().to_string(), message: message.into() }
    }
}
