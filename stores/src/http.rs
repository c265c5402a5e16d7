//! The `http` store: a read-only source fetched with one GET returning `{name: {key: value}}`.
//!
//! The document is fetched once per store handle (once per run in-process) and kept in
//! memory. A secret's version is a keyed hash of its content (the run's content-hash key), so
//! versions are stable across runs without revealing anything. Header values are read from
//! the references in the spec by the process that fetches. Throttling and server errors are
//! retried with backoff, never sooner than `Retry-After`; a body that is not the expected JSON
//! is a clear error that never quotes it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::credentials::ReadSecretRef;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::OnceCell;
use vss_protocol::config::HttpSpec;
use vss_protocol::config::Timeouts;
use vss_protocol::{HashKey, SecretValue};
use zeroize::Zeroizing;

use crate::{
    ApiCalls, Capabilities, Entry, ErrorKind, Precondition, SecretStore, StoreError, Version,
    Versioned,
};

/// A fetched document: name → (value, version).
type Document = BTreeMap<String, (SecretValue, Version)>;

/// An HTTP source.
pub struct HttpStore {
    /// Circuit breaker and outage budget over this run.
    health: crate::retry::Health,
    /// How long a request may take.
    timeout: Duration,
    /// How long connecting may take.
    connect_timeout: Duration,
    url: String,
    client: reqwest::Client,
    key: HashKey,
    document: OnceCell<Document>,
    label: String,
    calls: ApiCalls,
}

impl HttpStore {
    /// Opens the store: reads the header references and builds the client.
    pub fn open(spec: &HttpSpec, key: HashKey, timeouts: &Timeouts) -> Result<Self, StoreError> {
        let label = spec.to_string();
        let invalid = |message: String| StoreError::new(ErrorKind::Invalid, &label, None, message);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        for (name, reference) in &spec.headers {
            let text = reference.read().map_err(|e| {
                StoreError::new(
                    ErrorKind::Unauthorized,
                    &label,
                    None,
                    format!("header {name}: {e}"),
                )
            })?;
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("`{name}` is not a valid header name")))?;
            let mut value = HeaderValue::from_str(text.trim()).map_err(|_| {
                invalid(format!("the value of header {name} is not a valid header value"))
            })?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(spec.timeout_secs.max(1)))
            .connect_timeout(timeouts.connect())
            .default_headers(headers)
            .build()
            .map_err(|e| invalid(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            url: spec.url.clone(),
            client,
            key,
            document: OnceCell::new(),
            timeout: Duration::from_secs(spec.timeout_secs.max(1)),
            health: crate::retry::Health::new(
                &label,
                &Timeouts { request_secs: spec.timeout_secs.max(1), ..*timeouts },
            ),
            connect_timeout: timeouts.connect(),
            label,
            calls: ApiCalls::default(),
        })
    }

    fn err(&self, kind: ErrorKind, secret: Option<&str>, message: impl Into<String>) -> StoreError {
        StoreError::new(kind, &self.label, secret, message)
    }

    /// The document, fetched on first use.
    async fn document(&self) -> Result<&Document, StoreError> {
        self.document
            .get_or_try_init(|| async {
                let body = self.health.retry(5, || self.fetch()).await?;
                self.parse(&body)
            })
            .await
    }

    async fn fetch(&self) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.calls.record("GET");
        let unavailable = |e: reqwest::Error| {
            let reason = crate::retry::transport_error(&e, self.connect_timeout, self.timeout);
            self.err(ErrorKind::Unavailable, None, format!("GET: {reason}"))
        };
        let response = self.client.get(&self.url).send().await.map_err(unavailable)?;
        let status = response.status();
        let retry_after = crate::retry::retry_after(response.headers());
        let body = Zeroizing::new(response.bytes().await.map_err(unavailable)?.to_vec());
        if status.is_success() {
            return Ok(body);
        }
        let kind = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorKind::Unauthorized,
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::TOO_MANY_REQUESTS => ErrorKind::Throttled,
            s if s.is_server_error() => ErrorKind::Unavailable,
            _ => ErrorKind::Invalid,
        };
        // The body may echo anything: it is never quoted.
        Err(self.err(kind, None, format!("GET: HTTP {status}")).with_retry_after(retry_after))
    }

    /// `{name: {key: value}}`; a plain string entry becomes `{"value": …}`.
    fn parse(&self, body: &[u8]) -> Result<Document, StoreError> {
        let not_expected = "the response is not a JSON object of secrets ({name: {key: value}})";
        let Ok(Value::Object(entries)) = serde_json::from_slice::<Value>(body) else {
            return Err(self.err(ErrorKind::Invalid, None, not_expected));
        };
        let mut document = Document::new();
        for (name, entry) in entries {
            let value = match entry {
                Value::Object(map) => SecretValue::new(map),
                Value::String(s) => SecretValue::new(serde_json::Map::from_iter([(
                    "value".into(),
                    Value::String(s),
                )])),
                other => {
                    let kind = vss_protocol::secret::json_kind(&other);
                    vss_protocol::secret::zeroize_value(other);
                    return Err(self.err(
                        ErrorKind::Invalid,
                        Some(&name),
                        format!("expected an object, found {kind}"),
                    ));
                }
            };
            let mut bytes = name.clone().into_bytes();
            bytes.push(0);
            bytes.extend(value.canonical_json());
            let version = Version(self.key.fingerprint(&bytes).as_str().to_string());
            zeroize::Zeroize::zeroize(&mut bytes);
            document.insert(name, (value, version));
        }
        Ok(document)
    }

    fn read_only(&self, name: &str) -> StoreError {
        self.err(ErrorKind::Invalid, Some(name), "the http store is read-only")
    }
}

#[async_trait::async_trait]
impl SecretStore for HttpStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_values: true, metadata: false, conditional_writes: false }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .document()
            .await?
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, (_, version))| Entry {
                name: name.clone(),
                version: version.clone(),
                stamp: None,
            })
            .collect())
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        Ok(self
            .document()
            .await?
            .get(name)
            .map(|(value, version)| Versioned { value: value.clone(), version: version.clone() }))
    }

    async fn write(
        &self,
        name: &str,
        _value: &SecretValue,
        _pre: Precondition,
    ) -> Result<Version, StoreError> {
        Err(self.read_only(name))
    }

    async fn delete(&self, name: &str, _pre: Precondition) -> Result<(), StoreError> {
        Err(self.read_only(name))
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }
}
