//! The `gcp` store: GCP Secret Manager secrets of one project, through the official
//! `google-cloud-secretmanager-v1` client (REST) and Application Default Credentials.
//!
//! Secret `app/db` is the secret id `<prefix>app__db`: `/` becomes `__` and any other
//! character outside `[A-Za-z0-9_-]` becomes `_` (two names that map to one id are withheld by
//! the worker). A secret's value is its latest version's payload, stored as text (a lone
//! `value` as itself, anything else as JSON) with a CRC32C checksum.
//!
//! What vss writes: the label `vss-managed-by: vss` (plus the configured `labels`) and the
//! annotations `vss-content-hash` and `vss-managed-by` (labels cannot hold a 64-character
//! hash). A stamp is reported only while the latest version's payload still hashes to it.
//!
//! Versions: a secret's version is its latest version's number and the secret's creation
//! time (`7@1767225600.0`), so a secret deleted and created again is never taken for the one
//! vss wrote. A latest version that is disabled or destroyed (`7:DISABLED@…`) is listed but
//! not read or written: vss reports it and leaves it to whoever disabled it, rather than undo
//! a deliberate act. A secret without any version (never given a value) is not listed;
//! creating it adds its first version.
//!
//! Listing costs one `ListSecrets` per 25,000 secrets plus one `AccessSecretVersion` per
//! secret, which counts against the generous access quota (90,000/min) rather than the read
//! quota (600/min). Secret Manager has no conditional `AddSecretVersion`: vss checks the
//! latest version just before writing (and again after an ambiguous failure, so a retry never
//! adds a second copy); metadata updates and deletes carry the secret's etag.
//!
//! Writes go through a small pool ([`MAX_CONCURRENT_WRITES`]) and are retried on
//! `RESOURCE_EXHAUSTED` and `UNAVAILABLE` with backoff: the project's write quota is 600
//! requests a minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::{
    Replication, Secret, SecretPayload, replication::Automatic, secret_version::State,
};
use tokio::sync::{OnceCell, Semaphore};
use vss_protocol::config::Timeouts;
use vss_protocol::config::{GcpSpec, StoreSpec};
use vss_protocol::{ContentHash, HashKey, SecretValue};

use crate::{
    ApiCalls, Capabilities, Entry, ErrorKind, Precondition, SecretStore, Stamp, StoreError,
    Version, Versioned,
};

const LABEL_MANAGED: &str = "vss-managed-by";
const ANNOTATION_HASH: &str = "vss-content-hash";
const ANNOTATION_OWNER: &str = "vss-managed-by";
/// The largest payload Secret Manager accepts.
const MAX_PAYLOAD: usize = 64 * 1024;
/// ListSecrets' largest page.
const PAGE_SIZE: i32 = 25_000;
/// Writes (creates, versions, metadata updates, deletes) in flight at once.
pub const MAX_CONCURRENT_WRITES: usize = 4;
/// Latest-version reads in flight at once while listing.
const CONCURRENT_READS: usize = 16;
/// Retries of a throttled or unavailable call: enough to wait out a one-minute quota window.
const MAX_RETRIES: usize = 10;

/// The secret id of secret `name` (without the store's prefix).
pub fn gcp_name(name: &str) -> Result<String, String> {
    let mapped: String = name
        .replace('/', "__")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if mapped.is_empty() {
        return Err("an empty name is not a GCP secret id".into());
    }
    Ok(mapped)
}

/// What a listing saw of a secret's metadata: kept so a later update merges into it and
/// carries its etag.
#[derive(Clone, Debug, Default)]
struct Metadata {
    /// `seconds.nanos` of the secret's creation.
    created: String,
    etag: String,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
}

/// What a secret's latest version is.
enum Latest {
    /// The secret does not exist.
    Absent,
    /// The secret exists without any version.
    Empty,
    /// The latest version is disabled or destroyed: `<number>:<STATE>@<created>`.
    Unreadable(Version),
    /// The latest version and its payload.
    Readable(Version, bytes::Bytes),
}

impl Latest {
    /// The version a precondition compares (`None`: absent).
    fn version(&self) -> Option<Version> {
        match self {
            Latest::Absent => None,
            Latest::Empty => Some(Version("empty".into())),
            Latest::Unreadable(v) | Latest::Readable(v, _) => Some(v.clone()),
        }
    }
}

/// GCP Secret Manager secrets of one project under an id prefix.
pub struct GcpSmStore {
    /// How long calls may take.
    timeouts: Timeouts,
    /// Circuit breaker and outage budget over this run.
    health: crate::retry::Health,
    spec: GcpSpec,
    /// The run's content-hash key: a stamp is trusted only while the payload hashes to it.
    key: HashKey,
    client: OnceCell<SecretManagerService>,
    writes: Semaphore,
    metadata: Mutex<HashMap<String, Metadata>>,
    label: String,
    calls: ApiCalls,
}

impl GcpSmStore {
    /// A store for `spec`; the client is built on first use. `key` is the run's content-hash
    /// key.
    pub fn new(spec: &GcpSpec, key: HashKey, timeouts: &Timeouts) -> Self {
        Self {
            spec: spec.clone(),
            key,
            client: OnceCell::new(),
            writes: Semaphore::new(MAX_CONCURRENT_WRITES),
            metadata: Mutex::new(HashMap::new()),
            label: StoreSpec::Gcp(Box::new(spec.clone())).to_string(),
            calls: ApiCalls::default(),
            health: crate::retry::Health::new(
                &StoreSpec::Gcp(Box::new(spec.clone())).to_string(),
                timeouts,
            ),
            timeouts: *timeouts,
        }
    }

    fn err(&self, kind: ErrorKind, secret: Option<&str>, message: impl Into<String>) -> StoreError {
        StoreError::new(kind, &self.label, secret, message)
    }

    async fn client(&self) -> Result<&SecretManagerService, StoreError> {
        self.client
            .get_or_try_init(|| async {
                let mut builder = SecretManagerService::builder()
                    .with_retry_policy(NeverRetry)
                    .with_attempt_timeout(self.timeouts.request());
                if let Some(endpoint) = &self.spec.endpoint {
                    builder = builder.with_endpoint(endpoint.clone());
                }
                builder.build().await.map_err(|e| {
                    self.err(ErrorKind::Unauthorized, None, format!("GCP client: {e}"))
                })
            })
            .await
    }

    /// The full resource name of secret id `id`.
    fn resource(&self, id: &str) -> String {
        format!("projects/{}/secrets/{id}", self.spec.project)
    }

    /// Secret `name`'s id: the prefix, then the name (already in store spelling).
    fn id(&self, name: &str) -> String {
        format!("{}{name}", self.spec.prefix)
    }

    /// Classifies a client error; the message is the service's, which never holds a payload.
    fn api_err(
        &self,
        operation: &str,
        secret: Option<&str>,
        e: google_cloud_secretmanager_v1::Error,
    ) -> StoreError {
        let Some(status) = e.status() else {
            // No `google.rpc.Status`: classify by what failed. An HTTP body is never quoted.
            let (kind, message) = if let Some(code) = e.http_status_code() {
                let kind = match code {
                    404 => ErrorKind::NotFound,
                    409 => ErrorKind::Conflict,
                    429 => ErrorKind::Throttled,
                    401 | 403 => ErrorKind::Unauthorized,
                    400..=499 => ErrorKind::Invalid,
                    _ => ErrorKind::Unavailable,
                };
                (kind, format!("{operation}: HTTP {code} without an error status"))
            } else if e.is_timeout() {
                let timeouts = &self.timeouts;
                let message = crate::retry::timed_out(timeouts.connect(), timeouts.request());
                (ErrorKind::Unavailable, format!("{operation}: {message}"))
            } else if e.is_authentication() {
                (ErrorKind::Unauthorized, format!("{operation}: credentials: {e}"))
            } else if e.is_deserialization() {
                // Decoder messages may quote what they could not decode: a payload.
                (ErrorKind::Invalid, format!("{operation}: the response could not be decoded"))
            } else if e.is_binding() || e.is_serialization() {
                (ErrorKind::Invalid, format!("{operation}: {e}"))
            } else {
                (ErrorKind::Unavailable, format!("{operation}: {e}"))
            };
            return self.err(kind, secret, message);
        };
        let kind = match status.code {
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists | Code::Aborted => ErrorKind::Conflict,
            Code::ResourceExhausted => ErrorKind::Throttled,
            Code::Unavailable | Code::DeadlineExceeded | Code::Internal => ErrorKind::Unavailable,
            Code::PermissionDenied | Code::Unauthenticated => ErrorKind::Unauthorized,
            _ => ErrorKind::Invalid,
        };
        self.err(kind, secret, format!("{operation}: {:?}: {}", status.code, status.message))
    }

    /// Whether `e` is the service's answer for a version that exists but cannot be read.
    fn is_failed_precondition(e: &google_cloud_secretmanager_v1::Error) -> bool {
        e.status().is_some_and(|s| s.code == Code::FailedPrecondition)
    }

    /// Whether `e` is the service's answer for an etag that no longer matches.
    fn is_stale_etag(e: &google_cloud_secretmanager_v1::Error) -> bool {
        e.status().is_some_and(|s| matches!(s.code, Code::FailedPrecondition | Code::Aborted))
    }

    /// When secret `id` was created (from what a listing or a write saw, else asked for).
    async fn created(&self, id: &str) -> Result<String, StoreError> {
        if let Some(m) = self.metadata.lock().expect("metadata lock").get(id) {
            return Ok(m.created.clone());
        }
        let secret = self.get_secret(id).await?;
        Ok(self.remember(id, &secret).created)
    }

    async fn get_secret(&self, id: &str) -> Result<Secret, StoreError> {
        let client = self.client().await?;
        self.health
            .retry(MAX_RETRIES, || async {
                self.calls.record("get_secret");
                client
                    .get_secret()
                    .set_name(self.resource(id))
                    .send()
                    .await
                    .map_err(|e| self.api_err("GetSecret", Some(id), e))
            })
            .await
    }

    /// Secret `id`'s latest version.
    async fn latest(&self, id: &str) -> Result<Latest, StoreError> {
        let client = self.client().await?;
        let latest = format!("{}/versions/latest", self.resource(id));
        // A version re-enabled between the access and the metadata read is accessed again.
        for _ in 0..3 {
            let accessed = self
                .health
                .retry(MAX_RETRIES, || async {
                    self.calls.record("access_version");
                    match client.access_secret_version().set_name(&latest).send().await {
                        Ok(response) => Ok(Some(response)),
                        // Disabled or destroyed: its number and state come from its metadata.
                        Err(e) if Self::is_failed_precondition(&e) => Ok(None),
                        Err(e) => Err(self.api_err("AccessSecretVersion", Some(id), e)),
                    }
                })
                .await;
            match accessed {
                Ok(Some(response)) => {
                    let payload = response.payload.unwrap_or_default();
                    if let Some(expected) = payload.data_crc32c
                        && crc32c(&payload.data) != expected
                    {
                        return Err(self.err(
                            ErrorKind::Invalid,
                            Some(id),
                            "the payload does not match its CRC32C checksum",
                        ));
                    }
                    let created = self.created(id).await?;
                    let version = Version(format!("{}@{created}", version_number(&response.name)));
                    return Ok(Latest::Readable(version, payload.data));
                }
                Ok(None) => {
                    let found = self
                        .health
                        .retry(MAX_RETRIES, || async {
                            self.calls.record("get_version");
                            client
                                .get_secret_version()
                                .set_name(&latest)
                                .send()
                                .await
                                .map_err(|e| self.api_err("GetSecretVersion", Some(id), e))
                        })
                        .await?;
                    let state = match found.state {
                        State::Disabled => "DISABLED",
                        State::Destroyed => "DESTROYED",
                        _ => continue,
                    };
                    let created = self.created(id).await?;
                    let number = version_number(&found.name);
                    return Ok(Latest::Unreadable(Version(format!("{number}:{state}@{created}"))));
                }
                // No latest version: either the secret has none or it is gone.
                Err(e) if e.kind == ErrorKind::NotFound => {
                    return match self.get_secret(id).await {
                        Ok(secret) => {
                            self.remember(id, &secret);
                            Ok(Latest::Empty)
                        }
                        Err(e) if e.kind == ErrorKind::NotFound => Ok(Latest::Absent),
                        Err(e) => Err(e),
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.err(ErrorKind::Conflict, Some(id), "its latest version keeps changing state"))
    }

    /// The error for a latest version vss must not read or write over.
    fn unreadable(&self, name: &str, version: &Version) -> StoreError {
        let shown = version.0.split('@').next().unwrap_or_default().replace(':', " is ");
        self.err(
            ErrorKind::Invalid,
            Some(name),
            format!(
                "its latest version ({shown}) cannot be read; enable it or add a version in \
                 Secret Manager (vss does not undo a disable or destroy)"
            ),
        )
    }

    /// Keeps what a response says of a secret's metadata; returns it.
    fn remember(&self, id: &str, secret: &Secret) -> Metadata {
        let created = secret.create_time.as_ref().map(|t| format!("{}.{}", t.seconds(), t.nanos()));
        let metadata = Metadata {
            created: created.unwrap_or_default(),
            etag: secret.etag.clone(),
            labels: secret.labels.clone(),
            annotations: secret.annotations.clone(),
        };
        self.metadata.lock().expect("metadata lock").insert(id.to_string(), metadata.clone());
        metadata
    }

    /// The value a payload holds.
    fn value_of(&self, name: &str, payload: &[u8]) -> Result<SecretValue, StoreError> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| self.err(ErrorKind::Invalid, Some(name), "the payload is not UTF-8"))?;
        Ok(SecretValue::from_text(text))
    }

    /// The labels and annotations vss keeps on a secret, merged into `metadata`.
    fn stamped(&self, metadata: &Metadata, stamp: Option<&Stamp>) -> Metadata {
        let mut merged = metadata.clone();
        merged.labels.insert(LABEL_MANAGED.into(), "vss".into());
        merged.labels.extend(self.spec.labels.clone());
        if let Some(stamp) = stamp {
            merged.annotations.insert(ANNOTATION_HASH.into(), stamp.hash.as_str().to_string());
            merged.annotations.insert(ANNOTATION_OWNER.into(), stamp.owner.clone());
        }
        merged
    }

    async fn create(&self, id: &str, stamp: Option<&Stamp>) -> Result<(), StoreError> {
        let client = self.client().await?;
        let wanted = self.stamped(&Metadata::default(), stamp);
        let created = self
            .health
            .retry(MAX_RETRIES, || async {
                self.calls.record("create_secret");
                let secret = Secret::new()
                    .set_replication(Replication::new().set_automatic(Automatic::new()))
                    .set_labels(wanted.labels.clone())
                    .set_annotations(wanted.annotations.clone());
                client
                    .create_secret()
                    .set_parent(format!("projects/{}", self.spec.project))
                    .set_secret_id(id)
                    .set_secret(secret)
                    .send()
                    .await
                    .map_err(|e| self.api_err("CreateSecret", Some(id), e))
            })
            .await?;
        self.remember(id, &created);
        Ok(())
    }

    /// Adds a version holding `payload`. AddSecretVersion is not idempotent: after a failure
    /// that may have been applied (a timeout, a 5xx), the latest version is checked before
    /// trying again, so a retry never adds a second copy.
    async fn add_version(&self, id: &str, payload: &[u8]) -> Result<Version, StoreError> {
        let client = self.client().await?;
        self.health
            .retry(MAX_RETRIES, || async {
                self.calls.record("add_version");
                let sent = SecretPayload::new()
                    .set_data(bytes::Bytes::copy_from_slice(payload))
                    .set_data_crc32c(crc32c(payload));
                match client
                    .add_secret_version()
                    .set_parent(self.resource(id))
                    .set_payload(sent)
                    .send()
                    .await
                {
                    Ok(added) => {
                        let created = self.created(id).await?;
                        Ok(Version(format!("{}@{created}", version_number(&added.name))))
                    }
                    Err(e) => match self.api_err("AddSecretVersion", Some(id), e) {
                        // Deleted since it was checked: the caller re-reads.
                        e if e.kind == ErrorKind::NotFound => {
                            Err(StoreError::conflict(&self.label, id))
                        }
                        e if e.kind == ErrorKind::Unavailable => match self.latest(id).await? {
                            Latest::Readable(version, current) if current == payload => Ok(version),
                            _ => Err(e),
                        },
                        e => Err(e),
                    },
                }
            })
            .await
    }

    /// Brings the secret's labels and annotations up to date (merged into what is there,
    /// conditional on its etag; a concurrent metadata edit is read again once).
    async fn restamp(&self, id: &str, stamp: Option<&Stamp>) -> Result<(), StoreError> {
        let client = self.client().await?;
        for attempt in 0..2 {
            let cached = self.metadata.lock().expect("metadata lock").get(id).cloned();
            let current = match cached {
                Some(metadata) if attempt == 0 => metadata,
                _ => {
                    let secret = self.get_secret(id).await?;
                    self.remember(id, &secret)
                }
            };
            let wanted = self.stamped(&current, stamp);
            if wanted.labels == current.labels && wanted.annotations == current.annotations {
                return Ok(());
            }
            let updated = self
                .health
                .retry(MAX_RETRIES, || async {
                    self.calls.record("update_secret");
                    let secret = Secret::new()
                        .set_name(self.resource(id))
                        .set_etag(current.etag.clone())
                        .set_labels(wanted.labels.clone())
                        .set_annotations(wanted.annotations.clone());
                    let mask =
                        google_cloud_wkt::FieldMask::default().set_paths(["labels", "annotations"]);
                    match client
                        .update_secret()
                        .set_secret(secret)
                        .set_update_mask(mask)
                        .send()
                        .await
                    {
                        Ok(secret) => Ok(secret),
                        Err(e) if Self::is_stale_etag(&e) => {
                            Err(StoreError::conflict(&self.label, id))
                        }
                        Err(e) => Err(self.api_err("UpdateSecret", Some(id), e)),
                    }
                })
                .await;
            match updated {
                Ok(secret) => {
                    self.remember(id, &secret);
                    return Ok(());
                }
                Err(e) if e.kind == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::conflict(&self.label, id))
    }

    async fn put(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
        stamp: Option<&Stamp>,
    ) -> Result<Version, StoreError> {
        let id = self.id(name);
        let text = value.to_text();
        if text.len() > MAX_PAYLOAD {
            return Err(self.err(
                ErrorKind::Invalid,
                Some(name),
                format!("{} bytes is more than Secret Manager's 64 KiB", text.len()),
            ));
        }
        let _slot = self.writes.acquire().await.expect("the write pool is never closed");
        let mut exists = false;
        if pre != Precondition::Absent {
            let latest = self.latest(&id).await?;
            if !pre.holds(latest.version().as_ref()) {
                return Err(StoreError::conflict(&self.label, name));
            }
            match latest {
                Latest::Absent => {}
                Latest::Unreadable(version) => return Err(self.unreadable(name, &version)),
                // Already there (a write retried after its stamp failed): only the stamp.
                Latest::Readable(version, current) if current == text.as_bytes() => {
                    self.restamp(&id, stamp).await?;
                    return Ok(version);
                }
                Latest::Empty | Latest::Readable(..) => exists = true,
            }
        }
        if !exists {
            match self.create(&id, stamp).await {
                Ok(()) => {}
                // It exists. Without any version (a create whose first version failed, or a
                // placeholder) it holds nothing to overwrite: give it its first version.
                Err(e) if e.kind == ErrorKind::Conflict => match self.latest(&id).await? {
                    Latest::Empty => exists = true,
                    _ => return Err(StoreError::conflict(&self.label, name)),
                },
                Err(e) => return Err(e),
            }
        }
        let version = self.add_version(&id, text.as_bytes()).await?;
        if exists {
            self.restamp(&id, stamp).await?;
        }
        Ok(version)
    }
}

/// The number at the end of a version's resource name (`…/versions/7` → `7`).
fn version_number(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The CRC32C (Castagnoli) checksum Secret Manager verifies payloads with.
fn crc32c(bytes: &[u8]) -> i64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as i64
}

#[async_trait::async_trait]
impl SecretStore for GcpSmStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_values: true, metadata: true, conditional_writes: false }
    }

    fn store_name(&self, name: &str) -> Result<String, StoreError> {
        let id = gcp_name(name).map_err(|e| self.err(ErrorKind::Invalid, Some(name), e))?;
        if self.spec.prefix.len() + id.len() > 255 {
            return Err(self.err(
                ErrorKind::Invalid,
                Some(name),
                format!("`{}{id}` is longer than GCP's 255 characters", self.spec.prefix),
            ));
        }
        Ok(id)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let client = self.client().await?;
        // `prefix` is in vss's spelling (`app/`); ids are in GCP's (`app__`).
        let prefix = gcp_name(prefix).unwrap_or_default();
        let mut ids = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .health
                .retry(MAX_RETRIES, || async {
                    self.calls.record("list_secrets");
                    client
                        .list_secrets()
                        .set_parent(format!("projects/{}", self.spec.project))
                        .set_page_size(PAGE_SIZE)
                        .set_page_token(&page_token)
                        .send()
                        .await
                        .map_err(|e| self.api_err("ListSecrets", None, e))
                })
                .await?;
            for secret in &page.secrets {
                let id = version_number(&secret.name);
                let Some(name) = id.strip_prefix(&self.spec.prefix) else { continue };
                if !name.starts_with(&prefix) || name.is_empty() {
                    continue;
                }
                self.remember(id, secret);
                let annotation = |k: &str| secret.annotations.get(k).cloned();
                ids.push((
                    name.to_string(),
                    annotation(ANNOTATION_HASH),
                    annotation(ANNOTATION_OWNER),
                ));
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        crate::entries_concurrently(ids, CONCURRENT_READS, |(name, hash, owner)| async move {
            let id = self.id(&name);
            let (version, payload) = match self.latest(&id).await? {
                // Gone since the listing, or never given a value: nothing to list.
                Latest::Absent | Latest::Empty => return Ok(None),
                Latest::Unreadable(version) => (version, None),
                Latest::Readable(version, payload) => (version, Some(payload)),
            };
            // The stamp counts only while the latest payload still hashes to it.
            let stamp = match (hash.as_deref().and_then(ContentHash::parse), owner, payload) {
                (Some(hash), Some(owner), Some(payload))
                    if self.value_of(&name, &payload).is_ok_and(|v| self.key.hash(&v) == hash) =>
                {
                    Some(Stamp { hash, owner })
                }
                _ => None,
            };
            Ok(Some(Entry { name, version, stamp }))
        })
        .await
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        let id = self.id(name);
        match self.latest(&id).await? {
            Latest::Absent | Latest::Empty => Ok(None),
            Latest::Unreadable(version) => Err(self.unreadable(name, &version)),
            Latest::Readable(version, payload) => {
                Ok(Some(Versioned { value: self.value_of(name, &payload)?, version }))
            }
        }
    }

    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError> {
        self.put(name, value, pre, None).await
    }

    async fn write_stamped(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
        stamp: &Stamp,
    ) -> Result<Version, StoreError> {
        self.put(name, value, pre, Some(stamp)).await
    }

    async fn delete(&self, name: &str, pre: Precondition) -> Result<(), StoreError> {
        let id = self.id(name);
        let client = self.client().await?;
        let _slot = self.writes.acquire().await.expect("the write pool is never closed");
        if let Precondition::Matches(_) = &pre {
            let current = self.latest(&id).await?.version();
            if current.is_none() {
                return Ok(());
            }
            if !pre.holds(current.as_ref()) {
                return Err(StoreError::conflict(&self.label, name));
            }
        }
        let etag = self
            .metadata
            .lock()
            .expect("metadata lock")
            .get(&id)
            .map(|m| m.etag.clone())
            .unwrap_or_default();
        let deleted = self
            .health
            .retry(MAX_RETRIES, || async {
                self.calls.record("delete_secret");
                match client
                    .delete_secret()
                    .set_name(self.resource(&id))
                    .set_etag(&etag)
                    .send()
                    .await
                {
                    Ok(()) => Ok(()),
                    // The etag no longer matches: someone changed the secret since it was listed.
                    Err(e) if Self::is_stale_etag(&e) => {
                        Err(StoreError::conflict(&self.label, name))
                    }
                    Err(e) => Err(self.api_err("DeleteSecret", Some(name), e)),
                }
            })
            .await;
        match deleted {
            Ok(()) => {
                self.metadata.lock().expect("metadata lock").remove(&id);
                Ok(())
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::{crc32c, gcp_name, version_number};

    #[test]
    fn names_become_secret_ids() {
        assert_eq!(gcp_name("app/db").unwrap(), "app__db");
        assert_eq!(gcp_name("team-a/api.key").unwrap(), "team-a__api_key");
        assert_eq!(gcp_name("A_b-9").unwrap(), "A_b-9");
        assert!(gcp_name("").is_err());
    }

    #[test]
    fn versions_and_checksums() {
        assert_eq!(version_number("projects/p/secrets/s/versions/12"), "12");
        // The CRC32C check value (RFC 3720, B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
