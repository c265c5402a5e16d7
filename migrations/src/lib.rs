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

use vss_stores::StoreError;

/// Why a migration command failed. Names files, versions, tasks and paths; never a value taken
/// from the environment.
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
    /// A rule stopped the command before it changed anything (or where it stopped).
    #[error("{0}")]
    Refused(String),
}

impl MigrateError {
    /// An error about `path`.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        MigrateError::File { path: path.display().to_string(), message: message.into() }
    }
}
