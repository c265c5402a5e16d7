//! The `vault` store: a folder of a Vault (or OpenBao) KV v2 mount, over its HTTP API.
//!
//! Secret `a/b` of the store `{mount: secret, prefix: app}` is the KV v2 secret `app/a/b` of
//! mount `secret`. Versions are KV v2 version numbers; writes use check-and-set (`cas: 0` to
//! create, `cas: <version read>` to replace), so a concurrent writer is never overwritten.
//! Listing is a recursive `LIST` plus one metadata read per secret (KV v2 lists names only).
//! Throttling and unavailability are retried with jittered exponential backoff, waiting at
//! least as long as a `Retry-After` asks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::credentials::ReadSecretRef;
/// The HTTP method of an [`VaultStore::api`] call.
pub use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use vss_protocol::config::{SecretRef, VaultAuth, VaultSpec};
use vss_protocol::{ContentHash, SecretValue};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    ApiCalls, Capabilities, Entry, ErrorKind, Precondition, SecretStore, Stamp, StoreError,
    Version, Versioned,
};

/// Metadata reads a listing keeps in flight at once.
const CONCURRENT_METADATA_READS: usize = 16;

/// How the store gets its token.
enum Login {
    /// A fixed token.
    Token(HeaderValue),
    /// AppRole credentials, exchanged for a token that is renewed before it expires.
    AppRole { mount: String, role_id: Zeroizing<String>, secret_id: Zeroizing<String> },
}

/// A token from a login, and when to renew it.
struct Session {
    token: HeaderValue,
    renew_at: Option<Instant>,
}

/// Reads a credential from the process's own environment or a file.
fn read_credential(
    reference: &SecretRef,
    what: &str,
    label: &str,
) -> Result<Zeroizing<String>, StoreError> {
    reference.read().map_err(|e| {
        StoreError::new(ErrorKind::Unauthorized, label, None, format!("no Vault {what}: {e}"))
    })
}

/// A header value that `Debug` never prints.
fn sensitive_header(text: &str, label: &str) -> Result<HeaderValue, StoreError> {
    let mut header = HeaderValue::from_str(text).map_err(|_| {
        StoreError::new(
            ErrorKind::Invalid,
            label,
            None,
            "the Vault token is not a valid header value",
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// A folder of a KV v2 mount.
pub struct VaultStore {
    client: reqwest::Client,
    address: Url,
    namespace: Option<String>,
    login: Login,
    session: tokio::sync::Mutex<Option<Session>>,
    mount: String,
    prefix: String,
    /// Sources only: the secrets to read; empty means all.
    paths: Vec<glob::Pattern>,
    label: String,
    calls: ApiCalls,
}

impl VaultStore {
    /// Opens the store; reads the token from the reference in `spec`.
    pub fn open(spec: &VaultSpec) -> Result<Self, StoreError> {
        let label = vss_protocol::config::StoreSpec::Vault(Box::new(spec.clone())).to_string();
        let err = |message: String| StoreError::new(ErrorKind::Invalid, &label, None, message);
        let address =
            Url::parse(&spec.address).map_err(|e| err(format!("invalid Vault address: {e}")))?;
        let login = match &spec.auth {
            VaultAuth::Token(reference) => {
                let token = read_credential(reference, "token", &label)?;
                Login::Token(sensitive_header(&token, &label)?)
            }
            VaultAuth::AppRole { mount, role_id, secret_id } => Login::AppRole {
                mount: mount.clone(),
                role_id: read_credential(role_id, "AppRole role id", &label)?,
                secret_id: read_credential(secret_id, "AppRole secret id", &label)?,
            },
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| err(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            client,
            address,
            namespace: spec.namespace.clone(),
            login,
            session: tokio::sync::Mutex::new(None),
            mount: spec.mount.clone(),
            prefix: spec.prefix.clone(),
            paths: spec
                .paths
                .iter()
                .map(|p| glob::Pattern::new(p).map_err(|e| err(format!("invalid glob `{p}`: {e}"))))
                .collect::<Result<_, _>>()?,
            label,
            calls: ApiCalls::default(),
        })
    }

    /// Any Vault API call (`path` is what follows `/v1/`) with this store's address, login,
    /// namespace and retries, for tools beside the pipeline (`vss migrate`). `Ok(None)`: 404.
    /// `body` is sent as JSON; the error names `path`, never the body.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, StoreError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let url = self.api_url(&segments);
        let mut bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialize"));
        let done = self.call("api", method, url, bytes.as_deref(), Some(path)).await;
        if let Some(bytes) = bytes.as_mut() {
            bytes.zeroize();
        }
        done
    }

    fn err(&self, kind: ErrorKind, secret: Option<&str>, message: impl Into<String>) -> StoreError {
        StoreError::new(kind, &self.label, secret, message)
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

    /// `<address>/v1/<segments…>`, each segment percent-encoded; the address may carry a path
    /// of its own (a proxy prefix).
    fn api_url(&self, segments: &[&str]) -> Url {
        let mut url = self.address.clone();
        url.path_segments_mut()
            .expect("http(s) URLs have paths")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        url
    }

    /// `<address>/v1/<mount>/<kind>/<path>`.
    fn url(&self, kind: &str, path: &str) -> Url {
        let mut segments: Vec<&str> = self.mount.split('/').collect();
        segments.push(kind);
        segments.extend(path.split('/'));
        self.api_url(&segments)
    }

    /// One HTTP request, counted as `operation`. `Ok(None)`: 404.
    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<&[u8]>,
        token: Option<HeaderValue>,
        secret: Option<&str>,
    ) -> Result<Option<Value>, StoreError> {
        self.calls.record(operation);
        let mut request = self.client.request(method.clone(), url);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns.as_str());
        }
        if let Some(body) = body {
            // KV v2 metadata PATCH takes a JSON merge patch; everything else plain JSON.
            let content_type = if method == Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            request = request.header(CONTENT_TYPE, content_type).body(body.to_vec());
        }
        let unavailable = |e: reqwest::Error| {
            self.err(ErrorKind::Unavailable, secret, format!("{operation}: {}", without_url(&e)))
        };
        let response = request.send().await.map_err(unavailable)?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let retry_after = crate::retry::retry_after(response.headers());
        let text = Zeroizing::new(response.text().await.map_err(unavailable)?);
        if !status.is_success() {
            return Err(self
                .status_error(operation, status, &text, secret)
                .with_retry_after(retry_after));
        }
        if text.trim().is_empty() {
            return Ok(Some(Value::Null));
        }
        serde_json::from_str(&text).map(Some).map_err(|_| {
            self.err(ErrorKind::Invalid, secret, format!("{operation}: the response is not JSON"))
        })
    }

    /// [`Self::send`] retried on throttling and unavailability, with jittered backoff.
    async fn send_retrying(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<&[u8]>,
        token: Option<HeaderValue>,
        secret: Option<&str>,
    ) -> Result<Option<Value>, StoreError> {
        // Up to ~40 s of patience: enough for a rate-limit quota to refill.
        crate::retry::transient(8, || {
            self.send(operation, method.clone(), url.clone(), body, token.clone(), secret)
        })
        .await
    }

    /// One authenticated API call. With AppRole, a refused token leads to one fresh login.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<&[u8]>,
        secret: Option<&str>,
    ) -> Result<Option<Value>, StoreError> {
        let token = self.token().await?;
        let first = self
            .send_retrying(operation, method.clone(), url.clone(), body, Some(token), secret)
            .await;
        match first {
            Err(e)
                if e.kind == ErrorKind::Unauthorized
                    && matches!(self.login, Login::AppRole { .. }) =>
            {
                *self.session.lock().await = None;
                let token = self.token().await?;
                self.send_retrying(operation, method, url, body, Some(token), secret).await
            }
            other => other,
        }
    }

    /// The current token: fixed, or from an AppRole login renewed two thirds into its lease.
    async fn token(&self) -> Result<HeaderValue, StoreError> {
        let (mount, role_id, secret_id) = match &self.login {
            Login::Token(token) => return Ok(token.clone()),
            Login::AppRole { mount, role_id, secret_id } => (mount, role_id, secret_id),
        };
        let mut session = self.session.lock().await;
        if let Some(current) = session.as_ref() {
            if current.renew_at.is_none_or(|at| Instant::now() < at) {
                return Ok(current.token.clone());
            }
            let url = self.api_url(&["auth", "token", "renew-self"]);
            let renewed = self
                .send_retrying(
                    "renew",
                    Method::POST,
                    url,
                    Some(b"{}"),
                    Some(current.token.clone()),
                    None,
                )
                .await;
            if let Ok(Some(auth)) = renewed {
                let renewed = self.session_from(&auth)?;
                let token = renewed.token.clone();
                *session = Some(renewed);
                return Ok(token);
            }
        }
        let mut segments = vec!["auth"];
        segments.extend(mount.split('/'));
        segments.push("login");
        let url = self.api_url(&segments);
        let mut body = serde_json::to_vec(
            &json!({"role_id": role_id.as_str(), "secret_id": secret_id.as_str()}),
        )
        .expect("JSON values serialize");
        let response =
            self.send_retrying("login", Method::POST, url, Some(&body), None, None).await;
        body.zeroize();
        let response = response?.ok_or_else(|| {
            self.err(ErrorKind::Unauthorized, None, format!("AppRole mount `{mount}` not found"))
        })?;
        let fresh = self.session_from(&response)?;
        let token = fresh.token.clone();
        *session = Some(fresh);
        Ok(token)
    }

    /// A session from a login or renew response.
    fn session_from(&self, response: &Value) -> Result<Session, StoreError> {
        let auth = &response["auth"];
        let token = auth["client_token"].as_str().ok_or_else(|| {
            self.err(ErrorKind::Unauthorized, None, "the login response has no token")
        })?;
        let lease = auth["lease_duration"].as_u64().unwrap_or(0);
        let renew_at = (lease > 0).then(|| Instant::now() + Duration::from_secs(lease) * 2 / 3);
        Ok(Session { token: sensitive_header(token, &self.label)?, renew_at })
    }

    /// Maps a failed response to an error; Vault's own messages name no secret values.
    fn status_error(
        &self,
        operation: &str,
        status: StatusCode,
        body: &str,
        secret: Option<&str>,
    ) -> StoreError {
        let errors: Vec<String> = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("errors").cloned())
            .and_then(|e| serde_json::from_value(e).ok())
            .unwrap_or_default();
        let detail = errors.join("; ");
        let kind = match status.as_u16() {
            400 if detail.contains("check-and-set") => ErrorKind::Conflict,
            401 | 403 => ErrorKind::Unauthorized,
            412 => ErrorKind::Conflict,
            429 => ErrorKind::Throttled,
            500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Invalid,
        };
        self.err(kind, secret, format!("{operation}: HTTP {status}: {detail}"))
    }

    /// The names of every secret under the KV folder `folder` (ending in `/` or empty).
    async fn list_names(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut pending = vec![folder.to_string()];
        while let Some(dir) = pending.pop() {
            let mut url = self.url("metadata", dir.trim_end_matches('/'));
            url.query_pairs_mut().append_pair("list", "true");
            let Some(listing) = self.call("list", Method::GET, url, None, None).await? else {
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
        let Some(meta) = self.call("metadata", Method::GET, url, None, Some(name)).await? else {
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

/// A reqwest error without its URL (which holds secret names, not values, but is noise).
fn without_url(e: &reqwest::Error) -> String {
    let e = e.to_string();
    e.split(" for url").next().unwrap_or(&e).to_string()
}

#[async_trait::async_trait]
impl SecretStore for VaultStore {
    fn describe(&self) -> String {
        self.label.clone()
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
        let Some(mut found) = self.call("read", Method::GET, url, None, Some(name)).await? else {
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
        let written = self.call("write", Method::POST, url, Some(&bytes), Some(name)).await;
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
        if let Err(e) = self.call("stamp", Method::PATCH, url, Some(&bytes), Some(name)).await {
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
            return Err(StoreError::conflict(&self.label, name));
        }
        self.call("delete", Method::DELETE, self.url("metadata", &path), None, Some(name)).await?;
        Ok(())
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }
}
