//! The `vault` store: a folder of a Vault (or OpenBao) KV v2 mount, over a [`VaultClient`].
//!
//! Secret `a/b` of the store `{mount: secret, prefix: app}` is the KV v2 secret `app/a/b` of
//! mount `secret`. Versions are KV v2 version numbers; writes use check-and-set (`cas: 0` to
//! create, `cas: <version read>` to replace), so a concurrent writer is never overwritten.
//! Listing is a recursive `LIST` plus one metadata read per secret (KV v2 lists names only).

mod client;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use client::VaultClient;
/// The HTTP method of a [`VaultClient::api`] call.
pub use reqwest::Method;
use reqwest::Url;
use serde_json::{Value, json};
use vss_protocol::config::{Timeouts, VaultSpec};
use vss_protocol::{ContentHash, SecretValue};
use zeroize::Zeroize;

use crate::{
    Capabilities, Entry, ErrorKind, Precondition, SecretStore, Stamp, StoreError, Version,
    Versioned,
};

/// Metadata reads a listing keeps in flight at once.
const CONCURRENT_METADATA_READS: usize = 16;

/// A folder of a KV v2 mount.
pub struct VaultStore {
    client: Arc<VaultClient>,
    mount: String,
    prefix: String,
    /// Sources only: the secrets to read; empty means all.
    paths: Vec<glob::Pattern>,
}

impl VaultStore {
    /// Opens the store with a connection of its own; reads the credentials `spec` references.
    pub fn open(spec: &VaultSpec, timeouts: &Timeouts) -> Result<Self, StoreError> {
        let label = vss_protocol::config::StoreSpec::Vault(Box::new(spec.clone())).to_string();
        let client = Arc::new(VaultClient::open(&spec.connection, &label, timeouts)?);
        let paths = spec
            .paths
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|e| {
                    client.err(ErrorKind::Invalid, None, format!("invalid glob `{p}`: {e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { paths, ..Self::over(client, &spec.mount, &spec.prefix) })
    }

    /// The folder `prefix` of the KV v2 mount `mount`, over an existing connection (errors
    /// name the connection's label).
    pub fn over(client: Arc<VaultClient>, mount: &str, prefix: &str) -> Self {
        let trim = |s: &str| s.trim_matches('/').to_string();
        Self { client, mount: trim(mount), prefix: trim(prefix), paths: Vec::new() }
    }

    fn err(&self, kind: ErrorKind, secret: Option<&str>, message: impl Into<String>) -> StoreError {
        self.client.err(kind, secret, message)
    }

    /// The KV path of a store-relative name (or folder, ending in `/`).
    fn kv_path(&self, name: &str) -> String {
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => name.to_string(),
            (false, true) => format!("{}/", self.prefix),
            (false, false) => format!("{}/{name}", self.prefix),
        }
    }

    fn check_name(&self, name: &str) -> Result<(), StoreError> {
        let valid = !name.is_empty()
            && name.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if valid {
            Ok(())
        } else {
            Err(self.err(
                ErrorKind::Invalid,
                Some(name),
                "invalid secret name (empty, `.` or `..` segments)",
            ))
        }
    }

    /// `<address>/v1/<mount>/<kind>/<path>`.
    fn url(&self, kind: &str, path: &str) -> Url {
        let mut segments: Vec<&str> = self.mount.split('/').collect();
        segments.push(kind);
        segments.extend(path.split('/'));
        self.client.url(&segments)
    }

    /// The names of every secret under the KV folder `folder` (ending in `/` or empty).
    async fn list_names(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut pending = vec![folder.to_string()];
        while let Some(dir) = pending.pop() {
            let mut url = self.url("metadata", dir.trim_end_matches('/'));
            url.query_pairs_mut().append_pair("list", "true");
            let Some(listing) = self.client.call("list", Method::GET, url, None, None).await?
            else {
                continue;
            };
            let keys = listing["data"]["keys"].as_array().cloned().unwrap_or_default();
            for key in keys.iter().filter_map(Value::as_str) {
                let child = format!("{dir}{key}");
                if key.ends_with('/') {
                    pending.push(child);
                } else {
                    names.push(child);
                }
            }
        }
        Ok(names)
    }

    /// The current version of the KV secret at `path` (unless its latest version is deleted),
    /// with vss's stamp if it was written for that version.
    async fn current_version(
        &self,
        path: &str,
        name: &str,
    ) -> Result<Option<(Version, Option<Stamp>)>, StoreError> {
        let url = self.url("metadata", path);
        let Some(meta) = self.client.call("metadata", Method::GET, url, None, Some(name)).await?
        else {
            return Ok(None);
        };
        let meta = &meta["data"];
        let current = meta["current_version"].as_u64().unwrap_or(0);
        let latest = &meta["versions"][current.to_string()];
        let gone = latest["destroyed"].as_bool() == Some(true)
            || latest["deletion_time"].as_str().is_some_and(|t| !t.is_empty());
        if current == 0 || gone {
            return Ok(None);
        }
        let version = Version(current.to_string());
        let custom = &meta["custom_metadata"];
        let stamp = match (custom[STAMP_HASH].as_str(), custom[STAMP_OWNER].as_str()) {
            (Some(hash), Some(owner)) if custom[STAMP_VERSION].as_str() == Some(&version.0) => {
                ContentHash::parse(hash).map(|hash| Stamp { hash, owner: owner.to_string() })
            }
            _ => None,
        };
        Ok(Some((version, stamp)))
    }
}

/// `custom_metadata` keys of vss's stamp.
const STAMP_HASH: &str = "vss-content-hash";
const STAMP_OWNER: &str = "vss-managed-by";
const STAMP_VERSION: &str = "vss-version";

#[async_trait::async_trait]
impl SecretStore for VaultStore {
    fn describe(&self) -> String {
        self.client.label().to_string()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_values: true, metadata: true, conditional_writes: true }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let base = self.kv_path("");
        let options = glob::MatchOptions { require_literal_separator: true, ..Default::default() };
        let wanted = |name: &str| {
            self.paths.is_empty() || self.paths.iter().any(|p| p.matches_with(name, options))
        };
        let names: Vec<String> = self
            .list_names(&format!("{base}{prefix}"))
            .await?
            .into_iter()
            .filter(|path| wanted(&path[base.len()..]))
            .collect();
        let base = &base;
        crate::entries_concurrently(names, CONCURRENT_METADATA_READS, |path| async move {
            let name = path[base.len()..].to_string();
            let found = self.current_version(&path, &name).await?;
            Ok(found.map(|(version, stamp)| Entry { name, version, stamp }))
        })
        .await
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        self.check_name(name)?;
        let url = self.url("data", &self.kv_path(name));
        let Some(mut found) = self.client.call("read", Method::GET, url, None, Some(name)).await?
        else {
            return Ok(None);
        };
        let version = found["data"]["metadata"]["version"].as_u64();
        let value = match found["data"]["data"].take() {
            Value::Object(map) => SecretValue::new(map),
            Value::Null => return Ok(None),
            other => {
                let kind = vss_protocol::secret::json_kind(&other);
                vss_protocol::secret::zeroize_value(other);
                return Err(self.err(
                    ErrorKind::Invalid,
                    Some(name),
                    format!("expected a JSON object, found {kind}"),
                ));
            }
        };
        vss_protocol::secret::zeroize_value(found);
        let version = version.ok_or_else(|| {
            self.err(ErrorKind::Invalid, Some(name), "no version in the response")
        })?;
        Ok(Some(Versioned { value, version: Version(version.to_string()) }))
    }

    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError> {
        self.check_name(name)?;
        let mut body = json!({ "data": value.expose() });
        match &pre {
            Precondition::None => {}
            Precondition::Absent => body["options"] = json!({ "cas": 0 }),
            Precondition::Matches(v) => {
                let cas: u64 = v.0.parse().map_err(|_| {
                    self.err(ErrorKind::Invalid, Some(name), "precondition is not a KV v2 version")
                })?;
                body["options"] = json!({ "cas": cas });
            }
        }
        let mut bytes = serde_json::to_vec(&body).expect("JSON values serialize");
        vss_protocol::secret::zeroize_value(body);
        let url = self.url("data", &self.kv_path(name));
        let written = self.client.call("write", Method::POST, url, Some(&bytes), Some(name)).await;
        bytes.zeroize();
        let response = written?
            .ok_or_else(|| self.err(ErrorKind::NotFound, Some(name), "write: mount not found"))?;
        let version = response["data"]["version"].as_u64().ok_or_else(|| {
            self.err(ErrorKind::Invalid, Some(name), "write: no version in the response")
        })?;
        Ok(Version(version.to_string()))
    }

    async fn write_stamped(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
        stamp: &Stamp,
    ) -> Result<Version, StoreError> {
        let version = self.write(name, value, pre).await?;
        // A merge patch keeps whatever else users keep in `custom_metadata`.
        let patch = json!({ "custom_metadata": {
            STAMP_HASH: stamp.hash.as_str(),
            STAMP_OWNER: stamp.owner,
            STAMP_VERSION: version.0,
        }});
        let bytes = serde_json::to_vec(&patch).expect("JSON values serialize");
        let url = self.url("metadata", &self.kv_path(name));
        // The value is written; a missing stamp only costs a read on the next run (and the
        // ledger still records ownership), so a refused stamp (no `patch` capability on
        // `<mount>/metadata/*`) is a warning, not a failure.
        if let Err(e) =
            self.client.call("stamp", Method::PATCH, url, Some(&bytes), Some(name)).await
        {
            tracing::warn!(error = %e, "secret written but not stamped");
        }
        Ok(version)
    }

    async fn delete(&self, name: &str, pre: Precondition) -> Result<(), StoreError> {
        self.check_name(name)?;
        let path = self.kv_path(name);
        if !matches!(pre, Precondition::None)
            && !pre.holds(self.current_version(&path, name).await?.map(|(v, _)| v).as_ref())
        {
            return Err(StoreError::conflict(self.client.label(), name));
        }
        self.client
            .call("delete", Method::DELETE, self.url("metadata", &path), None, Some(name))
            .await?;
        Ok(())
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.client.calls().snapshot()
    }
}
