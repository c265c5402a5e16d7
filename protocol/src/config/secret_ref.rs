//! References to credentials: the config names where a secret is read from, never the secret.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A reference to a secret the process that needs it reads from its own environment (the
/// reading lives in `vss-stores`, where credentials are used).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    /// An environment variable's name.
    Env(String),
    /// A file's path.
    File(PathBuf),
}

/// A credential as written: `{ env: NAME }`, `{ file: PATH }`, or `${NAME}` (turned into
/// `{ env: NAME }` before deserialization; a literal value is refused unquoted).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(crate) enum RawSecretRef {
    Env(String),
    File(String),
}

impl RawSecretRef {
    /// The reference, with a relative file path taken from `base` (the config's folder).
    pub(crate) fn resolve(&self, base: &Path) -> SecretRef {
        match self {
            RawSecretRef::Env(name) => SecretRef::Env(name.clone()),
            RawSecretRef::File(path) => SecretRef::File(base.join(path)),
        }
    }
}

impl JsonSchema for RawSecretRef {
    fn schema_name() -> Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A credential, by reference: `${NAME}` or `{ env: NAME }` (an environment variable of the process that uses it), or `{ file: PATH }` (a file, relative to the config's folder). A literal value is refused.",
            "oneOf": [
                {
                    "type": "string",
                    "pattern": "^\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}$",
                    "description": "`${NAME}`: the environment variable NAME."
                },
                {
                    "type": "object",
                    "properties": { "env": { "type": "string", "description": "The variable's name." } },
                    "required": ["env"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "file": { "type": "string", "description": "The file's path." } },
                    "required": ["file"],
                    "additionalProperties": false
                }
            ]
        })
    }
}
