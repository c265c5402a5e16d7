//! The `kubernetes` store: one Kubernetes Secret per vss secret in a namespace, through `kube`.
//!
//! Secret `app/db` is the Secret `app.db` (names are mapped to DNS-1123: lower-case, `/` → `.`,
//! anything else outside `[a-z0-9.-]` → `-`); its keys are the Secret's `data` entries: a
//! string as its bytes, anything else as JSON (listed in the `vss.io/json-keys` annotation, so
//! it reads back as it was). Every Secret vss writes carries the label
//! `app.kubernetes.io/managed-by: vss` (listings select on it) and the annotations
//! `vss.io/content-hash` and `vss.io/managed-by`. A secret's version is its `resourceVersion`:
//! replaces and deletes are conditional on it (a 409 is a conflict, re-read by the caller).
//! Credentials: in-cluster service account or kubeconfig (`KUBECONFIG`, `~/.kube/config`),
//! with an optional context.
//!
//! With `name`, every secret is instead one key of that single Secret (`app/db` is the key
//! `app.db`; characters outside `[-._a-zA-Z0-9]` become `-`), holding the secret as JSON (a
//! lone `value` as itself). A key's version is a keyed fingerprint of its bytes; each write
//! or delete re-reads the Secret and replaces it conditionally on its `resourceVersion`,
//! writes being serialized within the store.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::OnceCell;
use vss_protocol::config::KubernetesSpec;
use vss_protocol::config::Timeouts;
use vss_protocol::{ContentHash, HashKey, SecretValue};

use crate::{
    ApiCalls, Capabilities, Entry, ErrorKind, Precondition, SecretStore, Stamp, StoreError,
    Version, Versioned,
};

const LABEL_MANAGED: &str = "app.kubernetes.io/managed-by";
const ANNOTATION_HASH: &str = "vss.io/content-hash";
const ANNOTATION_OWNER: &str = "vss.io/managed-by";
const ANNOTATION_JSON_KEYS: &str = "vss.io/json-keys";
/// Retries of a throttled or unavailable call.
const MAX_RETRIES: usize = 5;

/// The Secrets of one namespace.
pub struct KubernetesStore {
    /// How long calls may take.
    timeouts: Timeouts,
    /// Circuit breaker and outage budget over this run.
    health: crate::retry::Health,
    spec: KubernetesSpec,
    /// The run's content-hash key: a stamp is trusted only while the data still hashes to it.
    key: HashKey,
    api: OnceCell<Api<Secret>>,
    /// Named mode: one read-modify-write of the Secret at a time.
    named_writes: tokio::sync::Mutex<()>,
    label: String,
    calls: ApiCalls,
}

/// The Kubernetes name of a secret: a DNS-1123 subdomain.
pub fn kubernetes_name(name: &str) -> Result<String, String> {
    let mapped: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            '/' => '.',
            _ => '-',
        })
        .collect();
    let edges_ok = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if mapped.len() > 253 || !mapped.split('.').all(edges_ok) {
        return Err(format!("`{mapped}` is not a valid Kubernetes name (DNS-1123 subdomain)"));
    }
    Ok(mapped)
}

impl KubernetesStore {
    /// A store for `spec`; the client is built on first use. `key` is the run's content-hash
    /// key.
    pub fn new(spec: &KubernetesSpec, key: HashKey, timeouts: &Timeouts) -> Self {
        Self {
            spec: spec.clone(),
            key,
            api: OnceCell::new(),
            named_writes: tokio::sync::Mutex::new(()),
            label: vss_protocol::config::StoreSpec::Kubernetes(Box::new(spec.clone())).to_string(),
            calls: ApiCalls::default(),
            health: crate::retry::Health::new(
                &vss_protocol::config::StoreSpec::Kubernetes(Box::new(spec.clone())).to_string(),
                timeouts,
            ),
            timeouts: *timeouts,
        }
    }

    fn err(&self, kind: ErrorKind, secret: Option<&str>, message: impl Into<String>) -> StoreError {
        StoreError::new(kind, &self.label, secret, message)
    }

    async fn api(&self) -> Result<&Api<Secret>, StoreError> {
        self.api
            .get_or_try_init(|| async {
                let options = kube::config::KubeConfigOptions {
                    context: self.spec.context.clone(),
                    ..Default::default()
                };
                let mut config = match kube::Config::from_kubeconfig(&options).await {
                    Ok(config) => config,
                    Err(kubeconfig) => kube::Config::incluster().map_err(|incluster| {
                        self.err(
                            ErrorKind::Unauthorized,
                            None,
                            format!("no Kubernetes credentials: kubeconfig: {kubeconfig}; in-cluster: {incluster}"),
                        )
                    })?,
                };
                config.connect_timeout = Some(self.timeouts.connect());
                config.read_timeout = Some(self.timeouts.request());
                config.write_timeout = Some(self.timeouts.request());
                let client = Client::try_from(config).map_err(|e| {
                    self.err(ErrorKind::Invalid, None, format!("Kubernetes client: {e}"))
                })?;
                Ok(Api::namespaced(client, &self.spec.namespace))
            })
            .await
    }

    fn api_err(&self, operation: &str, secret: Option<&str>, e: kube::Error) -> StoreError {
        let kube::Error::Api(status) = &e else {
            return self.err(ErrorKind::Unavailable, secret, format!("{operation}: {e}"));
        };
        let kind = match status.code {
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            429 => ErrorKind::Throttled,
            401 | 403 => ErrorKind::Unauthorized,
            500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Invalid,
        };
        let message =
            format!("{operation}: HTTP {} {}: {}", status.code, status.reason, status.message);
        self.err(kind, secret, message)
    }

    /// The Secret for a value, stamped.
    fn to_secret(
        &self,
        name: &str,
        value: &SecretValue,
        stamp: Option<&Stamp>,
        version: Option<&Version>,
    ) -> Secret {
        let mut data = BTreeMap::new();
        let mut json_keys = Vec::new();
        for (key, v) in value.expose() {
            let bytes = match v {
                Value::String(s) => s.as_bytes().to_vec(),
                other => {
                    json_keys.push(key.clone());
                    serde_json::to_vec(other).expect("JSON values serialize")
                }
            };
            data.insert(key.clone(), ByteString(bytes));
        }
        let mut annotations = BTreeMap::new();
        if !json_keys.is_empty() {
            annotations.insert(ANNOTATION_JSON_KEYS.to_string(), json_keys.join(","));
        }
        if let Some(stamp) = stamp {
            annotations.insert(ANNOTATION_HASH.to_string(), stamp.hash.as_str().to_string());
            annotations.insert(ANNOTATION_OWNER.to_string(), stamp.owner.clone());
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.spec.namespace.clone()),
                labels: Some(BTreeMap::from([(LABEL_MANAGED.to_string(), "vss".to_string())])),
                annotations: Some(annotations),
                resource_version: version.map(|v| v.0.clone()),
                ..Default::default()
            },
            data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        }
    }

    async fn put(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
        stamp: Option<&Stamp>,
    ) -> Result<Version, StoreError> {
        let api = self.api().await?;
        let written = match &pre {
            Precondition::Absent => {
                let secret = self.to_secret(name, value, stamp, None);
                self.health
                    .retry(MAX_RETRIES, || async {
                        self.calls.record("create");
                        api.create(&PostParams::default(), &secret)
                            .await
                            .map_err(|e| self.api_err("create", Some(name), e))
                    })
                    .await?
            }
            Precondition::Matches(version) => {
                let secret = self.to_secret(name, value, stamp, Some(version));
                self.health
                    .retry(MAX_RETRIES, || async {
                        self.calls.record("replace");
                        api.replace(name, &PostParams::default(), &secret)
                            .await
                            .map_err(|e| self.api_err("replace", Some(name), e))
                    })
                    .await?
            }
            Precondition::None => {
                let current = self.read_secret(name).await?;
                let version = current.and_then(|s| s.metadata.resource_version).map(Version);
                let pre = match version {
                    Some(v) => Precondition::Matches(v),
                    None => Precondition::Absent,
                };
                return Box::pin(self.put(name, value, pre, stamp)).await;
            }
        };
        Ok(Version(written.metadata.resource_version.unwrap_or_default()))
    }

    async fn read_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let api = self.api().await?;
        self.health
            .retry(MAX_RETRIES, || async {
                self.calls.record("get");
                api.get_opt(name).await.map_err(|e| self.api_err("get", Some(name), e))
            })
            .await
    }
}

/// The key of secret `name` in a named Secret.
pub fn key_name(name: &str) -> Result<String, String> {
    let mapped: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            '/' => '.',
            _ => '-',
        })
        .collect();
    if mapped.is_empty() || mapped.len() > 253 || mapped == "." || mapped == ".." {
        return Err(format!("`{mapped}` is not a valid Secret key"));
    }
    Ok(mapped)
}

impl KubernetesStore {
    fn key_version(&self, bytes: &[u8]) -> Version {
        Version(self.key.fingerprint(bytes).as_str().to_string())
    }

    /// Named mode: sets (`Some`) or removes (`None`) one key under `pre`, re-reading and
    /// replacing the Secret conditionally; returns the key's new version.
    async fn update_key(
        &self,
        secret_name: &str,
        key: &str,
        bytes: Option<Vec<u8>>,
        pre: &Precondition,
    ) -> Result<Option<Version>, StoreError> {
        let api = self.api().await?;
        let _one_at_a_time = self.named_writes.lock().await;
        for _ in 0..5 {
            let current = self.read_secret(secret_name).await?;
            let existing = current.as_ref().and_then(|s| s.data.as_ref()).and_then(|d| d.get(key));
            let holds = pre.holds(existing.map(|b| self.key_version(&b.0)).as_ref());
            if !holds {
                return Err(StoreError::conflict(&self.label, key));
            }
            let new_version = bytes.as_deref().map(|b| self.key_version(b));
            let written = match current {
                None => {
                    let Some(bytes) = &bytes else { return Ok(None) };
                    let mut secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(secret_name.to_string()),
                            namespace: Some(self.spec.namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                LABEL_MANAGED.to_string(),
                                "vss".to_string(),
                            )])),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        ..Default::default()
                    };
                    secret.data =
                        Some(BTreeMap::from([(key.to_string(), ByteString(bytes.clone()))]));
                    self.calls.record("create");
                    api.create(&PostParams::default(), &secret).await
                }
                Some(mut secret) => {
                    let data = secret.data.get_or_insert_with(BTreeMap::new);
                    match &bytes {
                        Some(bytes) => {
                            data.insert(key.to_string(), ByteString(bytes.clone()));
                        }
                        None => {
                            data.remove(key);
                        }
                    }
                    self.calls.record("replace");
                    api.replace(secret_name, &PostParams::default(), &secret).await
                }
            };
            match written {
                Ok(_) => return Ok(new_version),
                Err(e) => {
                    let e = self.api_err("update", Some(key), e);
                    // Another writer changed the Secret (perhaps another key): read again.
                    // Throttling and unavailability: wait, then read again.
                    if e.kind != ErrorKind::Conflict {
                        if !e.is_retryable() {
                            return Err(e);
                        }
                        let wait = e.retry_after.unwrap_or(std::time::Duration::from_millis(500));
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Err(StoreError::conflict(&self.label, key))
    }
}

/// The value a Secret holds (see the module's encoding).
fn from_secret(secret: &Secret) -> Result<SecretValue, String> {
    let json_keys: BTreeSet<&str> = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_JSON_KEYS))
        .map(|k| k.split(',').collect())
        .unwrap_or_default();
    let mut fields = serde_json::Map::new();
    for (key, bytes) in secret.data.iter().flatten() {
        let value = if json_keys.contains(key.as_str()) {
            serde_json::from_slice(&bytes.0)
                .map_err(|_| format!("key `{key}` is not the JSON its annotation says"))?
        } else {
            Value::String(
                String::from_utf8(bytes.0.clone())
                    .map_err(|_| format!("key `{key}` is not UTF-8"))?,
            )
        };
        fields.insert(key.clone(), value);
    }
    Ok(SecretValue::new(fields))
}

#[async_trait::async_trait]
impl SecretStore for KubernetesStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_values: true, metadata: true, conditional_writes: true }
    }

    fn store_name(&self, name: &str) -> Result<String, StoreError> {
        let mapped = match self.spec.name {
            Some(_) => key_name(name),
            None => kubernetes_name(name),
        };
        mapped.map_err(|e| self.err(ErrorKind::Invalid, Some(name), e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        if let Some(secret_name) = &self.spec.name {
            let Some(secret) = self.read_secret(secret_name).await? else { return Ok(Vec::new()) };
            return Ok(secret
                .data
                .iter()
                .flatten()
                .filter(|(key, _)| key.starts_with(prefix))
                .map(|(key, bytes)| Entry {
                    name: key.clone(),
                    version: self.key_version(&bytes.0),
                    stamp: None,
                })
                .collect());
        }
        let api = self.api().await?;
        let mut entries = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut params =
                ListParams::default().labels(&format!("{LABEL_MANAGED}=vss")).limit(500);
            if let Some(token) = next.take() {
                params = params.continue_token(&token);
            }
            let page = self
                .health
                .retry(MAX_RETRIES, || async {
                    self.calls.record("list");
                    api.list(&params).await.map_err(|e| self.api_err("list", None, e))
                })
                .await?;
            for secret in &page.items {
                let meta = &secret.metadata;
                let (Some(name), Some(version)) = (&meta.name, &meta.resource_version) else {
                    continue;
                };
                if !name.starts_with(prefix) {
                    continue;
                }
                let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k));
                // The listing carries the data: a stamp counts only while the data still
                // hashes to it (an edit behind vss's back keeps the annotations).
                let stamp = match (
                    annotation(ANNOTATION_HASH).and_then(|h| ContentHash::parse(h)),
                    annotation(ANNOTATION_OWNER),
                ) {
                    (Some(hash), Some(owner))
                        if from_secret(secret).is_ok_and(|v| self.key.hash(&v) == hash) =>
                    {
                        Some(Stamp { hash, owner: owner.clone() })
                    }
                    _ => None,
                };
                entries.push(Entry {
                    name: name.clone(),
                    version: Version(version.clone()),
                    stamp,
                });
            }
            next = page.metadata.continue_.filter(|t| !t.is_empty());
            if next.is_none() {
                break;
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        if let Some(secret_name) = &self.spec.name {
            let secret = self.read_secret(secret_name).await?;
            let Some(bytes) =
                secret.as_ref().and_then(|s| s.data.as_ref()).and_then(|d| d.get(name))
            else {
                return Ok(None);
            };
            let text = std::str::from_utf8(&bytes.0)
                .map_err(|_| self.err(ErrorKind::Invalid, Some(name), "not UTF-8"))?;
            let value = SecretValue::from_text(text);
            return Ok(Some(Versioned { value, version: self.key_version(&bytes.0) }));
        }
        let Some(secret) = self.read_secret(name).await? else { return Ok(None) };
        let version = Version(secret.metadata.resource_version.clone().unwrap_or_default());
        let value =
            from_secret(&secret).map_err(|e| self.err(ErrorKind::Invalid, Some(name), e))?;
        Ok(Some(Versioned { value, version }))
    }

    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError> {
        if let Some(secret_name) = &self.spec.name {
            let version = self
                .update_key(secret_name, name, Some(value.to_text().as_bytes().to_vec()), &pre)
                .await?;
            return Ok(version.expect("a written key has a version"));
        }
        self.put(name, value, pre, None).await
    }

    async fn write_stamped(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
        stamp: &Stamp,
    ) -> Result<Version, StoreError> {
        if self.spec.name.is_some() {
            return self.write(name, value, pre).await;
        }
        self.put(name, value, pre, Some(stamp)).await
    }

    async fn delete(&self, name: &str, pre: Precondition) -> Result<(), StoreError> {
        if let Some(secret_name) = &self.spec.name {
            self.update_key(secret_name, name, None, &pre).await?;
            return Ok(());
        }
        let api = self.api().await?;
        let params = DeleteParams {
            preconditions: match &pre {
                Precondition::Matches(v) => {
                    Some(Preconditions { resource_version: Some(v.0.clone()), uid: None })
                }
                _ => None,
            },
            ..Default::default()
        };
        let deleted = self
            .health
            .retry(MAX_RETRIES, || async {
                self.calls.record("delete");
                api.delete(name, &params).await.map_err(|e| self.api_err("delete", Some(name), e))
            })
            .await;
        match deleted {
            Err(e) if e.kind != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::kubernetes_name;

    #[test]
    fn names_follow_dns_1123() {
        assert_eq!(kubernetes_name("app/db_URL").unwrap(), "app.db-url");
        assert_eq!(kubernetes_name("team-a/api.key").unwrap(), "team-a.api.key");
        assert!(kubernetes_name("-lead").is_err());
        assert!(kubernetes_name("app//db").is_err());
        assert!(kubernetes_name(&"a".repeat(254)).is_err());
    }
}
