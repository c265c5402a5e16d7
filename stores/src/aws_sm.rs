//! The `aws` store: AWS Secrets Manager in one region, optionally under a name prefix.
//!
//! Secret `a/b` of the store `{prefix: app/}` is the Secrets Manager secret `app/a/b`; a name
//! with a leading `/` counts as the same secret as one without, and when both exist that name is
//! a conflict: it is listed as neither and writing it fails. A secret's version is its
//! `AWSCURRENT` version id. Writes carry a `ClientRequestToken` derived from (name, content
//! hash, version replaced): a retried write never makes a second version, and the token
//! becomes the version id, so the stamp tags (`vss:content-hash`, `vss:managed-by`,
//! `vss:version`) name it before the write. Deletes use a recovery window (forced only if
//! configured); a secret scheduled for deletion is absent from listings and restored when
//! written again. Secrets Manager has no conditional write, so preconditions are best-effort.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use tokio::sync::OnceCell;
use vss_protocol::config::AwsSmSpec;
use vss_protocol::config::Timeouts;
use vss_protocol::{ContentHash, SecretValue};
use zeroize::Zeroize;

use crate::{
    ApiCalls, Capabilities, Entry, ErrorKind, Precondition, SecretStore, Stamp, StoreError,
    Version, Versioned,
};

/// Tags of vss's stamp.
const TAG_HASH: &str = "vss:content-hash";
const TAG_OWNER: &str = "vss:managed-by";
const TAG_VERSION: &str = "vss:version";

/// Secrets per `BatchGetSecretValue` call (the API's limit).
const BATCH_SIZE: usize = 20;

/// Retries of a throttled or unavailable call, after the SDK's own.
const MAX_RETRIES: usize = 5;

/// AWS Secrets Manager.
pub struct AwsSmStore {
    /// How long calls may take.
    timeouts: Timeouts,
    /// Circuit breaker and outage budget over this run.
    health: crate::retry::Health,
    spec: AwsSmSpec,
    client: OnceCell<Client>,
    label: String,
    /// Names (relative) scheduled for deletion at the last listing: restored on write.
    scheduled: Mutex<BTreeSet<String>>,
    /// Names (relative) that exist both with and without a leading `/`.
    conflicts: Mutex<BTreeSet<String>>,
    /// Names (relative) whose secret is spelled with a leading `/` in Secrets Manager.
    slashed: Mutex<BTreeSet<String>>,
    calls: ApiCalls,
}

impl AwsSmStore {
    /// A store for `spec`; the client is built on first use from the default credential chain.
    pub fn new(spec: &AwsSmSpec, timeouts: &Timeouts) -> Self {
        let label = vss_protocol::config::StoreSpec::AwsSm(Box::new(spec.clone())).to_string();
        Self {
            spec: spec.clone(),
            client: OnceCell::new(),
            health: crate::retry::Health::new(&label, timeouts),
            timeouts: *timeouts,
            label,
            scheduled: Mutex::new(BTreeSet::new()),
            conflicts: Mutex::new(BTreeSet::new()),
            slashed: Mutex::new(BTreeSet::new()),
            calls: ApiCalls::default(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let base = crate::aws::base_config(
                    &self.spec.region,
                    self.spec.endpoint.as_deref(),
                    &self.timeouts,
                )
                .await;
                let Some(role) = &self.spec.role_arn else { return Client::new(&base) };
                // Credentials of the role, cached and refreshed before they expire.
                let mut provider =
                    aws_config::sts::AssumeRoleProvider::builder(role).session_name("vss");
                if let Some(id) = &self.spec.external_id {
                    provider = provider.external_id(id);
                }
                let provider = provider.configure(&base).build().await;
                let config = aws_sdk_secretsmanager::config::Builder::from(&base)
                    .credentials_provider(provider)
                    .build();
                Client::from_conf(config)
            })
            .await
    }

    fn err(&self, kind: ErrorKind, secret: Option<&str>, message: impl Into<String>) -> StoreError {
        StoreError::new(kind, &self.label, secret, message)
    }

    fn sdk_err<E>(&self, operation: &str, secret: Option<&str>, e: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        crate::aws::store_error(&self.label, operation, secret, e, &self.timeouts)
    }

    /// Makes one API call with `send`, counted per attempt; throttling and unavailability are
    /// retried ([`crate::retry`]) on top of the SDK's own few quick retries.
    async fn call<T, E, F, Fut>(
        &self,
        operation: &'static str,
        secret: Option<&str>,
        send: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.health
            .retry(MAX_RETRIES, || async {
                self.calls.record(operation);
                send().await.map_err(|e| self.sdk_err(operation, secret, e))
            })
            .await
    }

    /// The Secrets Manager name of `name`: prefixed, and with the leading `/` it was listed
    /// with, if any.
    fn full_name(&self, name: &str) -> String {
        let slash =
            if self.slashed.lock().expect("slashed lock").contains(name) { "/" } else { "" };
        format!("{slash}{}{name}", self.spec.prefix)
    }

    fn check_writable(&self, name: &str) -> Result<(), StoreError> {
        if name.is_empty() || name.starts_with('/') {
            return Err(self.err(ErrorKind::Invalid, Some(name), "invalid secret name"));
        }
        if self.conflicts.lock().expect("conflict lock").contains(name) {
            return Err(self.err(
                ErrorKind::Conflict,
                Some(name),
                format!(
                    "both `/{name}` and `{name}` exist; resolve that by hand, vss writes neither"
                ),
            ));
        }
        Ok(())
    }

    /// The token of a write, derived from the name, the keyed content hash and the version it
    /// replaces: a retried write repeats it (no second version), while writing a value back
    /// over a drifted version gets a new one (an old token would be a no-op). The token
    /// becomes the new version's id.
    fn request_token(&self, name: &str, hash: &ContentHash, pre: &Precondition) -> String {
        let replaces = match pre {
            Precondition::Matches(v) => v.0.as_str(),
            Precondition::Absent | Precondition::None => "",
        };
        let mut input = self.full_name(name).into_bytes();
        for part in [hash.as_str(), replaces] {
            input.push(0);
            input.extend(part.as_bytes());
        }
        blake3::hash(&input).to_hex()[..64].to_string()
    }

    /// Writes `text` as the next version of `name`, with `token` as its version id.
    async fn put(
        &self,
        name: &str,
        text: &str,
        token: &str,
        tags: Vec<Tag>,
        pre: &Precondition,
    ) -> Result<Version, StoreError> {
        let full = self.full_name(name);
        let client = self.client().await;
        let scheduled = self.scheduled.lock().expect("scheduled lock").remove(name);
        if scheduled {
            self.call("RestoreSecret", Some(name), || {
                client.restore_secret().secret_id(&full).send()
            })
            .await?;
        }
        if matches!(pre, Precondition::Absent) && !scheduled {
            let request = client
                .create_secret()
                .name(&full)
                .secret_string(text)
                .client_request_token(token)
                .set_tags((!tags.is_empty()).then_some(tags));
            let created = self.call("CreateSecret", Some(name), || request.clone().send()).await?;
            return Ok(Version(created.version_id().unwrap_or(token).to_string()));
        }
        if !tags.is_empty() {
            let request = client.tag_resource().secret_id(&full).set_tags(Some(tags));
            self.call("TagResource", Some(name), || request.clone().send()).await?;
        }
        let request = client
            .put_secret_value()
            .secret_id(&full)
            .secret_string(text)
            .client_request_token(token);
        let put = self.call("PutSecretValue", Some(name), || request.clone().send()).await?;
        Ok(Version(put.version_id().unwrap_or(token).to_string()))
    }
}

#[async_trait::async_trait]
impl SecretStore for AwsSmStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_values: true, metadata: true, conditional_writes: false }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let client = self.client().await;
        let full_prefix = format!("{}{prefix}", self.spec.prefix);
        let mut found: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        let mut scheduled = BTreeSet::new();
        let mut slashed = BTreeSet::new();
        let mut next = None;
        loop {
            let mut request = client.list_secrets().max_results(100).include_planned_deletion(true);
            if !full_prefix.is_empty() {
                // Values of one filter are ORed: the name with and without a leading `/`.
                let filter = Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(full_prefix.clone())
                    .values(format!("/{full_prefix}"))
                    .build();
                request = request.filters(filter);
            }
            let request = request.set_next_token(next.take());
            let page = self.call("ListSecrets", None, || request.clone().send()).await?;
            for secret in page.secret_list() {
                let Some(full) = secret.name() else { continue };
                let bare = full.strip_prefix('/').unwrap_or(full);
                let Some(name) =
                    bare.strip_prefix(&self.spec.prefix).filter(|n| n.starts_with(prefix))
                else {
                    continue;
                };
                if full.starts_with('/') {
                    slashed.insert(name.to_string());
                }
                if secret.deleted_date().is_some() {
                    scheduled.insert(name.to_string());
                    continue;
                }
                let current = secret
                    .secret_versions_to_stages()
                    .and_then(|versions| {
                        versions.iter().find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
                    })
                    .map(|(id, _)| Version(id.clone()));
                let Some(version) = current else { continue };
                let tag = |key: &str| {
                    secret.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
                };
                let stamp = match (tag(TAG_HASH).and_then(ContentHash::parse), tag(TAG_OWNER)) {
                    (Some(hash), Some(owner)) if tag(TAG_VERSION) == Some(version.0.as_str()) => {
                        Some(Stamp { hash, owner: owner.to_string() })
                    }
                    _ => None,
                };
                found.entry(name.to_string()).or_default().push(Entry {
                    name: name.to_string(),
                    version,
                    stamp,
                });
            }
            next = page.next_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        let conflicts: BTreeSet<String> =
            found.iter().filter(|(_, e)| e.len() > 1).map(|(n, _)| n.clone()).collect();
        for name in &conflicts {
            tracing::warn!(store = %self.label, secret = %name, "both `/name` and `name` exist; vss writes neither");
        }
        *self.scheduled.lock().expect("scheduled lock") = scheduled;
        *self.slashed.lock().expect("slashed lock") = slashed;
        *self.conflicts.lock().expect("conflict lock") = conflicts;
        Ok(found.into_values().filter(|e| e.len() == 1).flatten().collect())
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        self.check_writable(name)?;
        let request = self.client().await.get_secret_value().secret_id(self.full_name(name));
        let out = match self.call("GetSecretValue", Some(name), || request.clone().send()).await {
            Ok(out) => out,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let version = Version(out.version_id().unwrap_or_default().to_string());
        let Some(text) = out.secret_string() else {
            return Err(self.err(
                ErrorKind::Invalid,
                Some(name),
                "binary secrets are not supported",
            ));
        };
        let value = SecretValue::from_text(text);
        Ok(Some(Versioned { value, version }))
    }

    async fn read_batch(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<(String, Option<Versioned<SecretValue>>)>, StoreError> {
        let client = self.client().await;
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(BATCH_SIZE) {
            for name in chunk {
                self.check_writable(name)?;
            }
            let by_full: BTreeMap<String, &String> =
                chunk.iter().map(|n| (self.full_name(n), n)).collect();
            let request = client
                .batch_get_secret_value()
                .set_secret_id_list(Some(by_full.keys().cloned().collect()));
            let page = self.call("BatchGetSecretValue", None, || request.clone().send()).await?;
            let failed =
                page.errors().iter().find(|e| e.error_code() != Some("ResourceNotFoundException"));
            if let Some(error) = failed {
                let secret = error.secret_id().and_then(|id| by_full.get(id)).map(|n| n.as_str());
                return Err(self.err(
                    ErrorKind::Invalid,
                    secret,
                    format!("BatchGetSecretValue: {}", error.error_code().unwrap_or("error")),
                ));
            }
            let mut got: BTreeMap<&str, Versioned<SecretValue>> = BTreeMap::new();
            for entry in page.secret_values() {
                let (Some(full), Some(text)) = (entry.name(), entry.secret_string()) else {
                    continue;
                };
                let Some(name) = by_full.get(full) else { continue };
                let version = Version(entry.version_id().unwrap_or_default().to_string());
                got.insert(
                    name.as_str(),
                    Versioned { value: SecretValue::from_text(text), version },
                );
            }
            for name in chunk {
                let value = got.remove(name.as_str());
                out.push((name.clone(), value));
            }
        }
        Ok(out)
    }

    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError> {
        self.check_writable(name)?;
        let mut random = [0u8; 32];
        getrandom::fill(&mut random)
            .map_err(|e| self.err(ErrorKind::Io, Some(name), e.to_string()))?;
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        random.zeroize();
        self.put(name, &value.to_text(), &token, Vec::new(), &pre).await
    }

    async fn write_stamped(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
        stamp: &Stamp,
    ) -> Result<Version, StoreError> {
        self.check_writable(name)?;
        let token = self.request_token(name, &stamp.hash, &pre);
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let tags = vec![
            tag(TAG_HASH, stamp.hash.as_str()),
            tag(TAG_OWNER, &stamp.owner),
            tag(TAG_VERSION, &token),
        ];
        self.put(name, &value.to_text(), &token, tags, &pre).await
    }

    async fn delete(&self, name: &str, _pre: Precondition) -> Result<(), StoreError> {
        self.check_writable(name)?;
        let mut request = self.client().await.delete_secret().secret_id(self.full_name(name));
        request = if self.spec.force_delete {
            request.force_delete_without_recovery(true)
        } else {
            request.recovery_window_in_days(self.spec.recovery_window_days)
        };
        match self.call("DeleteSecret", Some(name), || request.clone().send()).await {
            Err(e) if e.kind != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }
}
