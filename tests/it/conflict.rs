//! A concurrent writer between a run's listing and its write: the write conflicts, the secret
//! is re-read, and only then replaced (or left alone), against real OpenBao and S3 (moto).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use vss_protocol::config::{S3Spec, SecretRef, Timeouts, VaultAuth, VaultConnection, VaultSpec};
use vss_protocol::{HashKey, SecretValue};
use vss_stores::conflict::{
    DesiredWrite, Settled, delete_resolving_conflicts, write_resolving_conflicts,
};
use vss_stores::s3::S3Store;
use vss_stores::vault::VaultStore;
use vss_stores::{
    Capabilities, Entry, ErrorKind, Precondition, SecretStore, Stamp, StoreError, Version,
    Versioned,
};
use vss_tests::servers::{AWS_TEST_ENV, Moto, OpenBao};

fn value(v: Value) -> SecretValue {
    SecretValue::new(v.as_object().unwrap().clone())
}

/// A store whose next `rivals` writes or deletes are each preceded by a rival's unconditional
/// write of `rival`, as if another process wrote in between.
struct Interloper {
    inner: Arc<dyn SecretStore>,
    rival: Value,
    rivals: AtomicUsize,
}

impl Interloper {
    fn new(inner: Arc<dyn SecretStore>, rival: Value, rivals: usize) -> Self {
        Self { inner, rival, rivals: AtomicUsize::new(rivals) }
    }

    async fn interfere(&self, name: &str) {
        let armed =
            self.rivals.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if armed.is_ok() {
            self.inner.write(name, &value(self.rival.clone()), Precondition::None).await.unwrap();
        }
    }
}

#[async_trait::async_trait]
impl SecretStore for Interloper {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        self.inner.read(name).await
    }
    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError> {
        self.interfere(name).await;
        self.inner.write(name, value, pre).await
    }
    async fn write_stamped(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
        stamp: &Stamp,
    ) -> Result<Version, StoreError> {
        self.interfere(name).await;
        self.inner.write_stamped(name, value, pre, stamp).await
    }
    async fn delete(&self, name: &str, pre: Precondition) -> Result<(), StoreError> {
        self.interfere(name).await;
        self.inner.delete(name, pre).await
    }
    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.inner.api_calls()
    }
}

fn vault_store(bao: &OpenBao, token: &tempfile::NamedTempFile) -> Arc<dyn SecretStore> {
    std::fs::write(token.path(), vss_tests::servers::ROOT_TOKEN).unwrap();
    Arc::new(
        VaultStore::open(
            &VaultSpec {
                connection: VaultConnection {
                    address: bao.address.clone(),
                    namespace: None,
                    auth: VaultAuth::Token(SecretRef::File(token.path().into())),
                },
                mount: "secret".into(),
                prefix: "race".into(),
                paths: Vec::new(),
            },
            &Timeouts::default(),
        )
        .unwrap(),
    )
}

fn key() -> HashKey {
    HashKey::from_bytes([7; 32])
}

/// Writes `desired` to `s`, planned against the version `s` had before the rival's write.
async fn write_over_rival(
    store: &Interloper,
    desired: &SecretValue,
    planned_at: Version,
) -> Result<Version, StoreError> {
    let key = key();
    let hash = key.hash(desired);
    let write = DesiredWrite { name: "s", value: desired, hash: &hash, stamp: None };
    match write_resolving_conflicts(store, write, Precondition::Matches(planned_at), &key, None)
        .await?
    {
        Settled::Written(_, version) => Ok(version),
        other => panic!("a write with no refresh is written or fails: {other:?}"),
    }
}

#[tokio::test]
async fn conflict_on_vault_rereads_then_writes_against_the_rivals_version() {
    let bao = OpenBao::start();
    let token = tempfile::NamedTempFile::new().unwrap();
    let inner = vault_store(&bao, &token);
    let v1 = inner.write("s", &value(json!({"a": 1})), Precondition::Absent).await.unwrap();
    let store = Interloper::new(inner.clone(), json!({"a": "rival"}), 1);

    let desired = value(json!({"a": 2}));
    let written = write_over_rival(&store, &desired, v1).await.unwrap();
    // Ours, the rival's, ours again: the rival's version was seen before it was replaced.
    assert_eq!(written, Version("3".into()));
    assert_eq!(bao.get("race/s"), Some((json!({"a": 2}), 3)));
    let calls = inner.api_calls();
    assert_eq!(calls.get("read"), Some(&1), "one re-read: {calls:?}");
}

/// Another vss run (an event during a reconcile) moved a secret on after this write was
/// planned: the conflict re-reads the desired value too, and the older plan is never written.
#[tokio::test]
async fn conflict_rereads_the_desired_value_and_never_writes_back_an_older_one() {
    use vss_stores::conflict::{Fresh, Refresh};
    let bao = OpenBao::start();
    let token = tempfile::NamedTempFile::new().unwrap();
    let inner = vault_store(&bao, &token);
    let v1 = inner.write("s", &value(json!({"a": 1})), Precondition::Absent).await.unwrap();
    // The rival is the newer run: it wrote {"a": "new"}, which is also the desired value now.
    let store = Interloper::new(inner.clone(), json!({"a": "new"}), 1);
    let now_desired = |answer: Option<Value>| -> Box<Refresh> {
        Box::new(move |name: String| -> Fresh {
            assert_eq!(name, "s");
            let answer = answer.clone();
            Box::pin(async move { Ok(answer.map(value)) })
        })
    };
    let key = key();
    let stale = value(json!({"a": "planned before"}));
    let hash = key.hash(&stale);
    let write = DesiredWrite { name: "s", value: &stale, hash: &hash, stamp: None };
    let fresh = now_desired(Some(json!({"a": "new"})));
    let written = write_resolving_conflicts(
        &store,
        write,
        Precondition::Matches(v1),
        &key,
        Some((&*fresh, "s")),
    )
    .await
    .unwrap();
    assert_eq!(bao.get("race/s"), Some((json!({"a": "new"}), 2)), "nothing older written");
    assert_eq!(
        written,
        Settled::Written(key.hash(&value(json!({"a": "new"}))), Version("2".into()))
    );

    // No longer desired at all: left as the other run left it; superseded, not a failure.
    let store = Interloper::new(inner.clone(), json!({"a": "newer"}), 1);
    let write = DesiredWrite { name: "s", value: &stale, hash: &hash, stamp: None };
    let gone = now_desired(None);
    let refresh = Some((&*gone, "s"));
    let planned = Precondition::Matches(Version("2".into()));
    let settled = write_resolving_conflicts(&store, write, planned, &key, refresh).await.unwrap();
    assert_eq!(settled, Settled::Superseded);
    assert_eq!(bao.get("race/s").unwrap().0, json!({"a": "newer"}));
}

#[tokio::test]
async fn conflict_with_a_rival_that_wrote_the_same_content_writes_nothing_more() {
    let bao = OpenBao::start();
    let token = tempfile::NamedTempFile::new().unwrap();
    let inner = vault_store(&bao, &token);
    let v1 = inner.write("s", &value(json!({"a": 1})), Precondition::Absent).await.unwrap();
    let store = Interloper::new(inner.clone(), json!({"a": 2}), 1);

    let written = write_over_rival(&store, &value(json!({"a": 2})), v1).await.unwrap();
    assert_eq!(written, Version("2".into()), "the rival's version is the result");
    assert_eq!(bao.get("race/s"), Some((json!({"a": 2}), 2)));
}

#[tokio::test]
async fn conflict_that_keeps_recurring_is_reported_not_forced() {
    let bao = OpenBao::start();
    let token = tempfile::NamedTempFile::new().unwrap();
    let inner = vault_store(&bao, &token);
    let v1 = inner.write("s", &value(json!({"a": 1})), Precondition::Absent).await.unwrap();
    let store = Interloper::new(inner.clone(), json!({"a": "rival"}), usize::MAX);

    let err = write_over_rival(&store, &value(json!({"a": 2})), v1).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert_eq!(err.secret.as_deref(), Some("s"));
    let (current, _) = bao.get("race/s").unwrap();
    assert_eq!(current, json!({"a": "rival"}), "the rival's write stands");
}

#[tokio::test]
async fn conflict_on_a_planned_delete_leaves_the_rewritten_secret_in_place() {
    let bao = OpenBao::start();
    let token = tempfile::NamedTempFile::new().unwrap();
    let inner = vault_store(&bao, &token);
    let v1 = inner.write("s", &value(json!({"a": 1})), Precondition::Absent).await.unwrap();
    let store = Interloper::new(inner.clone(), json!({"a": "rival"}), 1);

    let settled = delete_resolving_conflicts(&store, "s", Precondition::Matches(v1)).await;
    assert_eq!(settled.unwrap(), Settled::Superseded, "left in place");
    assert_eq!(bao.get("race/s"), Some((json!({"a": "rival"}), 2)));

    // Planned against the version now current, the delete goes through.
    let current = inner.read("s").await.unwrap().unwrap().version;
    let settled = delete_resolving_conflicts(&store, "s", Precondition::Matches(current)).await;
    assert_eq!(settled.unwrap(), Settled::Deleted);
    assert_eq!(inner.read("s").await.unwrap().map(|v| v.version), None);
}

#[tokio::test]
async fn conflict_on_s3_rereads_then_writes_against_the_rivals_etag() {
    let moto = Moto::start();
    moto.secretsmanager("boto3.client('s3', endpoint_url=sm.meta.endpoint_url, region_name='us-east-1').create_bucket(Bucket='race')");
    let [(_, id), (_, secret), (_, region)] = AWS_TEST_ENV;
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(region))
        .endpoint_url(&moto.endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(id, secret, None, None, "test"))
        .build();
    let spec = S3Spec {
        bucket: "race".into(),
        prefix: "merged/".into(),
        region: region.into(),
        endpoint: Some(moto.endpoint.clone()),
    };
    let inner: Arc<dyn SecretStore> =
        Arc::new(S3Store::with_client(&spec, aws_sdk_s3::Client::from_conf(config)));
    let etag1 = inner.write("s", &value(json!({"a": 1})), Precondition::Absent).await.unwrap();
    let store = Interloper::new(inner.clone(), json!({"a": "rival"}), 1);

    let desired = value(json!({"a": 2}));
    let written = write_over_rival(&store, &desired, etag1.clone()).await.unwrap();
    let now = inner.read("s").await.unwrap().unwrap();
    assert_eq!(now.value.expose()["a"], 2);
    assert_eq!(now.version, written);
    assert_eq!(inner.api_calls().get("GetObject"), Some(&2), "one re-read, one check");

    // A delete planned before a rival's rewrite is refused by S3 (If-Match) and left alone.
    let store = Interloper::new(inner.clone(), json!({"a": "rival"}), 1);
    let settled = delete_resolving_conflicts(&store, "s", Precondition::Matches(written)).await;
    assert_eq!(settled.unwrap(), Settled::Superseded);
    assert_eq!(inner.read("s").await.unwrap().unwrap().value.expose()["a"], "rival");
    assert_ne!(etag1, now.version);
}
