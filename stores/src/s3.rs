//! The `s3` store: a merge store in an S3 bucket, one JSON object per secret.
//!
//! Secret `a/b` of the store `{bucket: b, prefix: merged/}` is the object `merged/a/b.json`.
//! A secret's version is its ETag; writes are conditional (`If-None-Match: *` to create,
//! `If-Match: <etag>` to replace or delete), so a concurrent writer is a conflict (412), never
//! overwritten.

use std::collections::BTreeMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::OnceCell;
use vss_protocol::SecretValue;
use vss_protocol::config::S3Spec;
use vss_protocol::config::Timeouts;
use zeroize::Zeroize;

use crate::{
    ApiCalls, Capabilities, Entry, ErrorKind, Precondition, SecretStore, StoreError, Version,
    Versioned,
};

/// An S3 bucket under a key prefix.
pub struct S3Store {
    /// How long calls may take.
    timeouts: Timeouts,
    spec: S3Spec,
    client: OnceCell<Client>,
    label: String,
    calls: ApiCalls,
}

impl S3Store {
    /// A store for `spec`; the client is built on first use from the default credential chain.
    pub fn new(spec: &S3Spec, timeouts: &Timeouts) -> Self {
        Self {
            spec: spec.clone(),
            client: OnceCell::new(),
            label: vss_protocol::config::StoreSpec::S3(Box::new(spec.clone())).to_string(),
            calls: ApiCalls::default(),
            timeouts: *timeouts,
        }
    }

    /// A store for `spec` that uses `client` as given (its credentials, endpoint and retry
    /// settings), for callers that configure the SDK themselves.
    pub fn with_client(spec: &S3Spec, client: Client) -> Self {
        let store = Self::new(spec, &Timeouts::default());
        store.client.set(client).expect("a new store has no client yet");
        store
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
                let config = aws_sdk_s3::config::Builder::from(&base)
                    .force_path_style(self.spec.endpoint.is_some())
                    .build();
                Client::from_conf(config)
            })
            .await
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}.json", self.spec.prefix)
    }

    fn check_name(&self, name: &str) -> Result<(), StoreError> {
        let valid = !name.is_empty() && name.split('/').all(|seg| !seg.is_empty());
        if valid {
            Ok(())
        } else {
            Err(StoreError::new(ErrorKind::Invalid, &self.label, Some(name), "invalid secret name"))
        }
    }

    fn sdk_err<E>(
        &self,
        operation: &str,
        secret: Option<&str>,
        e: aws_sdk_s3::error::SdkError<E>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        crate::aws::store_error(&self.label, operation, secret, e, &self.timeouts)
    }
}

#[async_trait::async_trait]
impl SecretStore for S3Store {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_values: true, metadata: false, conditional_writes: true }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let client = self.client().await;
        let key_prefix = format!("{}{prefix}", self.spec.prefix);
        let mut entries = Vec::new();
        let mut next = None;
        loop {
            self.calls.record("ListObjectsV2");
            let page = client
                .list_objects_v2()
                .bucket(&self.spec.bucket)
                .prefix(&key_prefix)
                .set_continuation_token(next.take())
                .send()
                .await
                .map_err(|e| self.sdk_err("ListObjectsV2", None, e))?;
            for object in page.contents() {
                let (Some(key), Some(etag)) = (object.key(), object.e_tag()) else { continue };
                let Some(name) =
                    key.strip_prefix(&self.spec.prefix).and_then(|k| k.strip_suffix(".json"))
                else {
                    continue;
                };
                entries.push(Entry {
                    name: name.to_string(),
                    version: Version(etag.to_string()),
                    stamp: None,
                });
            }
            next = page.next_continuation_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        self.check_name(name)?;
        self.calls.record("GetObject");
        let got = self
            .client()
            .await
            .get_object()
            .bucket(&self.spec.bucket)
            .key(self.key(name))
            .send()
            .await;
        let out = match got {
            Ok(out) => out,
            Err(e) => {
                let e = self.sdk_err("GetObject", Some(name), e);
                return if e.kind == ErrorKind::NotFound { Ok(None) } else { Err(e) };
            }
        };
        let version = Version(out.e_tag().unwrap_or_default().to_string());
        let mut bytes = out
            .body
            .collect()
            .await
            .map_err(|e| {
                StoreError::new(
                    ErrorKind::Unavailable,
                    &self.label,
                    Some(name),
                    format!("GetObject: {e}"),
                )
            })?
            .to_vec();
        let value = SecretValue::from_json_slice(&bytes);
        bytes.zeroize();
        let value = value.map_err(|e| {
            StoreError::new(ErrorKind::Invalid, &self.label, Some(name), e.to_string())
        })?;
        Ok(Some(Versioned { value, version }))
    }

    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError> {
        self.check_name(name)?;
        let bytes = serde_json::to_vec(value.expose()).expect("a JSON map always serializes");
        let mut request = self
            .client()
            .await
            .put_object()
            .bucket(&self.spec.bucket)
            .key(self.key(name))
            .content_type("application/json")
            .body(ByteStream::from(bytes));
        request = match &pre {
            Precondition::None => request,
            Precondition::Absent => request.if_none_match("*"),
            Precondition::Matches(etag) => request.if_match(&etag.0),
        };
        self.calls.record("PutObject");
        let out = request.send().await.map_err(|e| self.sdk_err("PutObject", Some(name), e))?;
        Ok(Version(out.e_tag().unwrap_or_default().to_string()))
    }

    async fn delete(&self, name: &str, pre: Precondition) -> Result<(), StoreError> {
        self.check_name(name)?;
        self.calls.record("DeleteObject");
        let mut request =
            self.client().await.delete_object().bucket(&self.spec.bucket).key(self.key(name));
        if let Precondition::Matches(etag) = &pre {
            request = request.if_match(&etag.0);
        }
        match request.send().await.map_err(|e| self.sdk_err("DeleteObject", Some(name), e)) {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            done => done.map(drop),
        }
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }
}
