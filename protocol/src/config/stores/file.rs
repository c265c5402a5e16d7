//! `file`: a folder of JSON files, one per secret (`a/b` is `<dir>/a/b.json`).

use std::fmt;
use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{StoreCheck, StoreSpec};

/// `{ file: { dir: PATH } }`: a folder of JSON files; source, merge store or target.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFileStore {
    /// The folder, relative to the config file's folder. Example: `out/production`.
    pub dir: String,
}

impl RawFileStore {
    pub(crate) fn check(&self, cx: &mut StoreCheck) -> Option<StoreSpec> {
        if self.dir.trim().is_empty() {
            cx.error_at(&["dir"], "`dir` is empty: name a folder");
            return None;
        }
        Some(StoreSpec::File { dir: cx.resolve(&self.dir) })
    }
}

/// The label of a file store: `file:<dir>`.
pub(super) fn label(f: &mut fmt::Formatter<'_>, dir: &Path) -> fmt::Result {
    write!(f, "file:{}", dir.display())
}
