//! `vault`: a folder of a Vault / OpenBao KV v2 mount (source, merge store, target), and the
//! top-level `vault:` connection every vault store uses.

use std::fmt;

use schemars::JsonSchema;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::{Role, StoreCheck, StoreIdentity, StoreSpec, canonical_url, display_url};
use crate::config::check::{Checker, path};
use crate::config::secret_ref::{RawSecretRef, SecretRef};

/// The top-level `vault:` block: the connection every vault store (and `vss migrate`) uses.
/// Each key falls back to the usual environment variable.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVault {
    /// The server's URL. Default: `VAULT_ADDR`. Example: `https://vault.example.com:8200`.
    pub address: Option<String>,
    /// The Vault Enterprise / OpenBao namespace. Default: `VAULT_NAMESPACE`, else none.
    /// Example: `team-a`.
    pub namespace: Option<String>,
    /// How to log in. Default: the token in `VAULT_TOKEN`.
    pub auth: Option<RawVaultAuth>,
}

/// `auth:` — exactly one of `token` and `approle`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVaultAuth {
    /// A token, by reference. Example: `${VAULT_TOKEN}`, `{ file: /var/run/vault-token }`, or
    /// the reference spelling `{ token: ${VAULT_TOKEN} }`.
    #[schemars(with = "Option<RawVaultToken>")]
    pub token: Option<RawSecretRef>,
    /// AppRole login; its token is renewed before it expires.
    pub approle: Option<RawAppRole>,
    /// Not supported yet.
    #[schemars(with = "Option<serde_json::Value>")]
    pub kubernetes: Option<IgnoredAny>,
}

/// The spellings a token reference may take (for the schema only: the nested reference
/// spelling is unwrapped before deserialization).
#[derive(JsonSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum RawVaultToken {
    /// `${VAULT_TOKEN}`, `{ env: NAME }` or `{ file: PATH }`.
    Reference(RawSecretRef),
    /// `{ token: ${VAULT_TOKEN} }`.
    Nested {
        /// The token, by reference.
        token: RawSecretRef,
    },
}

/// `approle: { mount?, role_id, secret_id }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppRole {
    /// The auth mount. Default: `approle`.
    pub mount: Option<String>,
    /// The role id, by reference. Example: `{ env: VAULT_ROLE_ID }`.
    pub role_id: RawSecretRef,
    /// The secret id, by reference. Example: `{ file: secret-id }`.
    pub secret_id: RawSecretRef,
}

/// `{ vault: { path: <mount>/<folder> } }` or `{ vault: { mount, prefix? } }`: a folder of a
/// KV v2 mount.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVaultStore {
    /// The mount and folder in one, the mount being the first segment. Example:
    /// `secret/apps/payments`.
    pub path: Option<String>,
    /// The KV v2 mount, instead of `path`. Example: `secret`.
    pub mount: Option<String>,
    /// With `mount`: the folder inside it. Default: the whole mount. Example: `apps/payments`.
    pub prefix: Option<String>,
    /// Sources only: glob patterns (relative to the folder) of the secrets to read; `*` stays
    /// within one path segment, `**` spans any number. Default: everything.
    /// Example: `["db/*", "api/**"]`.
    pub paths: Option<Vec<String>>,
}

/// The connection of vault stores: the `vault:` block, then `VAULT_ADDR`, `VAULT_NAMESPACE`
/// and `VAULT_TOKEN`, resolved once per config.
pub(crate) enum Connection {
    /// Everything a vault store needs.
    Ready(VaultConnection),
    /// No usable address: the message is reported where a vault store needs one.
    Unusable(String),
    /// The `vault:` block itself is wrong (already reported there).
    Reported,
}

impl RawVault {
    /// Resolves the connection, reporting what is wrong in the `vault:` block itself.
    pub(crate) fn connection(
        raw: Option<&RawVault>,
        ck: &mut Checker,
        base: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Connection {
        let default = RawVault::default();
        let raw = raw.unwrap_or(&default);
        let auth = raw.auth.as_ref();
        if auth.is_some_and(|a| a.kubernetes.is_some()) {
            ck.not_supported(&path(&["vault", "auth", "kubernetes"]), "Vault `kubernetes` auth");
        }
        let token = auth.and_then(|a| a.token.as_ref());
        let login = match (token, auth.and_then(|a| a.approle.as_ref())) {
            (Some(_), Some(_)) => {
                ck.error(&path(&["vault", "auth"]), "choose one of `token` and `approle`".into());
                VaultAuth::Token(SecretRef::Env("VAULT_TOKEN".into()))
            }
            (Some(token), None) => VaultAuth::Token(token.resolve(base)),
            (None, Some(approle)) => VaultAuth::AppRole {
                mount: approle.mount.as_deref().unwrap_or("approle").trim_matches('/').to_string(),
                role_id: approle.role_id.resolve(base),
                secret_id: approle.secret_id.resolve(base),
            },
            (None, None) => VaultAuth::Token(SecretRef::Env("VAULT_TOKEN".into())),
        };
        let namespace = raw.namespace.clone().or_else(|| env("VAULT_NAMESPACE"));
        match (&raw.address, env("VAULT_ADDR")) {
            (Some(address), _) if !is_http_url(address) => {
                let at = path(&["vault", "address"]);
                let message = if ck.is_from_env(&at) {
                    "not an http:// or https:// URL (value from the environment, not shown)".into()
                } else if address.contains("://") {
                    format!("`{address}` is not an http:// or https:// URL")
                } else {
                    format!("`{address}` is not a URL: write http://{address} or https://{address}")
                };
                ck.error(&at, message);
                Connection::Reported
            }
            (Some(address), _) => Connection::Ready(VaultConnection {
                address: address.clone(),
                namespace,
                auth: login,
            }),
            (None, Some(address)) if !is_http_url(&address) => Connection::Unusable(
                "VAULT_ADDR is not an http:// or https:// URL (value not shown)".into(),
            ),
            (None, Some(address)) => {
                Connection::Ready(VaultConnection { address, namespace, auth: login })
            }
            (None, None) => {
                Connection::Unusable("no Vault address: set `vault.address` or VAULT_ADDR".into())
            }
        }
    }
}

/// Whether `text` is an `http://` or `https://` URL with a host: a Vault address.
pub fn is_http_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

impl RawVaultStore {
    pub(crate) fn check(&self, cx: &mut StoreCheck) -> Option<StoreSpec> {
        let paths = self.paths.clone().unwrap_or_default();
        if !paths.is_empty() && cx.role != Role::Source {
            cx.error_at(
                &["paths"],
                "`paths` filters what a source reads; it is not allowed on a store vss writes to",
            );
            return None;
        }
        for (i, pattern) in paths.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(pattern) {
                let mut at = cx.within(&["paths"]);
                at.push(crate::config::yaml::Segment::Index(i));
                cx.ck.error(&at, format!("invalid glob: {e}"));
                return None;
            }
        }
        let trim = |s: &str| s.trim_matches('/').to_string();
        let (mount, prefix) = match (&self.path, &self.mount) {
            (Some(p), None) if self.prefix.is_none() => {
                let p = trim(p);
                match p.split_once('/') {
                    Some((m, rest)) => (m.to_string(), trim(rest)),
                    None => (p, String::new()),
                }
            }
            (None, Some(m)) => (trim(m), self.prefix.as_deref().map(trim).unwrap_or_default()),
            _ => {
                cx.error(
                    "write either `path: <mount>/<folder>` or `mount` (with an optional `prefix`)",
                );
                return None;
            }
        };
        if mount.is_empty() {
            cx.error("the KV v2 mount is empty");
            return None;
        }
        let segments = mount.split('/').chain(prefix.split('/').filter(|_| !prefix.is_empty()));
        if segments.clone().any(|s| s.is_empty() || s == "." || s == "..") {
            cx.error("a Vault path cannot hold empty, `.` or `..` segments");
            return None;
        }
        match cx.vault {
            Connection::Ready(connection) => Some(StoreSpec::Vault(Box::new(VaultSpec {
                connection: connection.clone(),
                mount,
                prefix,
                paths,
            }))),
            Connection::Unusable(message) => {
                let message = message.clone();
                cx.error(message);
                None
            }
            Connection::Reported => None,
        }
    }
}

/// How to reach a Vault server: address, namespace, login. Holds references, never a token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VaultConnection {
    /// The server, e.g. `https://vault.example.com:8200`.
    pub address: String,
    /// The Vault Enterprise / OpenBao namespace, if any.
    pub namespace: Option<String>,
    /// How to log in.
    pub auth: VaultAuth,
}

/// Where a Vault store lives and how to reach it. Holds references, never a token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VaultSpec {
    /// The server and login.
    pub connection: VaultConnection,
    /// The KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// The folder inside the mount (no leading or trailing `/`; empty for the whole mount).
    pub prefix: String,
    /// Sources only: glob patterns (relative to the folder) of the secrets to read; `*`
    /// stays within one path segment, `**` spans any number. Empty: everything.
    #[serde(default)]
    pub paths: Vec<String>,
}

impl VaultSpec {
    /// Whether the store reads `name` (relative to its folder): every name when `paths` is
    /// empty, else the names one of its globs matches.
    pub fn covers(&self, name: &str) -> bool {
        let options = glob::MatchOptions { require_literal_separator: true, ..Default::default() };
        self.paths.is_empty()
            || self
                .paths
                .iter()
                .any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches_with(name, options)))
    }

    /// The name, relative to this store's folder, of secret `path` of KV mount `mount`;
    /// `None` when it lies outside the folder or the store does not read it.
    pub fn name_of(&self, mount: &str, path: &str) -> Option<String> {
        if self.mount != mount.trim_matches('/') {
            return None;
        }
        let relative = match self.prefix.as_str() {
            "" => path,
            prefix => path.strip_prefix(prefix)?.strip_prefix('/')?,
        };
        (!relative.is_empty() && self.covers(relative)).then(|| relative.to_string())
    }

    /// Server, namespace, mount and folder; not the login.
    pub(super) fn identity(&self) -> StoreIdentity {
        let connection = &self.connection;
        let namespace = connection.namespace.as_deref().unwrap_or_default().trim_matches('/');
        let folder = format!("{}/{}", self.mount, self.prefix);
        StoreIdentity::new("vault", &[&canonical_url(&connection.address), namespace, &folder])
    }
}

/// `vault:<address>/<mount>[/<prefix>]`.
impl fmt::Display for VaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vault:{}/{}", display_url(&self.connection.address), self.mount)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// How a Vault store logs in: references to credentials, never their values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VaultAuth {
    /// A token.
    Token(SecretRef),
    /// AppRole login; the token it returns is renewed before it expires.
    AppRole {
        /// The auth mount, e.g. `approle`.
        mount: String,
        /// The role id.
        role_id: SecretRef,
        /// The secret id.
        secret_id: SecretRef,
    },
}
