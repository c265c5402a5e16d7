//! A Vault (or OpenBao) server connection: address, namespace, login (a token, or AppRole
//! with renewal and one fresh login when a token is refused), retries with jittered backoff
//! that honour `Retry-After`, and generic API calls. The KV v2 store ([`super::VaultStore`])
//! and `vss migrate` both work through it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use vss_protocol::config::{SecretRef, Timeouts, VaultAuth, VaultConnection};
use zeroize::{Zeroize, Zeroizing};

use crate::credentials::ReadSecretRef;
use crate::{ApiCalls, ErrorKind, StoreError};

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

/// A connection to one Vault server, logged in.
pub struct VaultClient {
    http: reqwest::Client,
    address: Url,
    namespace: Option<String>,
    login: Login,
    session: tokio::sync::Mutex<Option<Session>>,
    /// Names the store (or server) in errors.
    label: String,
    calls: ApiCalls,
    /// Circuit breaker and outage budget over this run.
    health: crate::retry::Health,
    /// How long calls may take.
    timeouts: Timeouts,
}

impl VaultClient {
    /// Connects (lazily: the first call logs in); reads the credentials the connection
    /// references. `label` names the store or server in errors, e.g. `vault:https://v:8200`.
    pub fn open(
        connection: &VaultConnection,
        label: &str,
        timeouts: &Timeouts,
    ) -> Result<Self, StoreError> {
        let err = |message: String| StoreError::new(ErrorKind::Invalid, label, None, message);
        let address = Url::parse(&connection.address)
            .map_err(|e| err(format!("invalid Vault address: {e}")))?;
        let login = match &connection.auth {
            VaultAuth::Token(reference) => {
                let token = read_credential(reference, "token", label)?;
                Login::Token(sensitive_header(&token, label)?)
            }
            VaultAuth::AppRole { mount, role_id, secret_id } => Login::AppRole {
                mount: mount.clone(),
                role_id: read_credential(role_id, "AppRole role id", label)?,
                secret_id: read_credential(secret_id, "AppRole secret id", label)?,
            },
        };
        let http =
            shared_http(timeouts).map_err(|e| err(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            address,
            namespace: connection.namespace.clone(),
            login,
            session: tokio::sync::Mutex::new(None),
            label: label.to_string(),
            calls: ApiCalls::default(),
            health: crate::retry::Health::new(label, timeouts),
            timeouts: *timeouts,
        })
    }

    /// What errors name.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The calls made so far, by operation.
    pub(crate) fn calls(&self) -> &ApiCalls {
        &self.calls
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
        let url = self.url(&segments);
        let mut bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialize"));
        let done = self.call("api", method, url, bytes.as_deref(), Some(path)).await;
        if let Some(bytes) = bytes.as_mut() {
            bytes.zeroize();
        }
        done
    }

    /// An error naming this connection's label.
    pub(crate) fn err(
        &self,
        kind: ErrorKind,
        secret: Option<&str>,
        message: impl Into<String>,
    ) -> StoreError {
        StoreError::new(kind, &self.label, secret, message)
    }

    /// `<address>/v1/<segments…>`, each segment percent-encoded; the address may carry a path
    /// of its own (a proxy prefix).
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.address.clone();
        url.path_segments_mut()
            .expect("http(s) URLs have paths")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        url
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
        let mut request = self.http.request(method.clone(), url);
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
            if e.is_builder() {
                let message = format!(
                    "{operation}: the request could not be built: {}",
                    crate::retry::transport_error(&e, Default::default(), Default::default())
                );
                return self.err(ErrorKind::Invalid, secret, message);
            }
            let reason =
                crate::retry::transport_error(&e, self.timeouts.connect(), self.timeouts.request());
            self.err(ErrorKind::Unavailable, secret, format!("{operation}: {reason}"))
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
        self.health
            .retry(8, || {
                self.send(operation, method.clone(), url.clone(), body, token.clone(), secret)
            })
            .await
    }

    /// One authenticated API call. With AppRole, a refused token leads to one fresh login.
    pub(crate) async fn call(
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
            let url = self.url(&["auth", "token", "renew-self"]);
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
        let url = self.url(&segments);
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
}

/// One HTTP client (connection pool, TLS setup) per set of timeouts and thread: stores opened
/// run after run (`vss serve`) reuse warm connections instead of building a client, and its
/// TLS configuration, each time. Per thread, because a pooled connection belongs to the
/// runtime that opened it, and a runtime's threads end with it.
fn shared_http(timeouts: &Timeouts) -> Result<reqwest::Client, reqwest::Error> {
    thread_local! {
        static CLIENTS: std::cell::RefCell<HashMap<(Duration, Duration), reqwest::Client>> =
            std::cell::RefCell::default();
    }
    let key = (timeouts.request(), timeouts.connect());
    if let Some(client) = CLIENTS.with_borrow(|clients| clients.get(&key).cloned()) {
        return Ok(client);
    }
    let client = reqwest::Client::builder().timeout(key.0).connect_timeout(key.1).build()?;
    CLIENTS.with_borrow_mut(|clients| clients.insert(key, client.clone()));
    Ok(client)
}
