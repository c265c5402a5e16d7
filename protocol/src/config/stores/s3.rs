//! `s3`: an S3 bucket as merge store (one JSON object per secret, ETag versions).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{StoreCheck, StoreIdentity, StoreSpec, aws, canonical_url};

/// `{ s3: { bucket, prefix?, region? } }`: a merge store in an S3 bucket. Credentials come
/// from the default AWS chain; the endpoint from `aws.endpoint`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawS3Store {
    /// The bucket. Example: `acme-vss-merged`.
    pub bucket: String,
    /// Prepended to every object key. Default: none. Example: `merged/`.
    pub prefix: Option<String>,
    /// The bucket's region. Default: `aws.region`, then `AWS_REGION`, `AWS_DEFAULT_REGION`,
    /// then `us-east-1`.
    pub region: Option<String>,
    /// Not supported yet: the bucket's default encryption applies.
    #[schemars(with = "Option<String>")]
    pub kms_key_id: Option<serde::de::IgnoredAny>,
}

impl RawS3Store {
    pub(crate) fn check(&self, cx: &mut StoreCheck) -> Option<StoreSpec> {
        if self.kms_key_id.is_some() {
            let at = cx.within(&["kms_key_id"]);
            cx.ck.not_supported(&at, "`kms_key_id` (the bucket's default encryption applies)");
            return None;
        }
        if self.bucket.is_empty() {
            cx.error("`bucket` is empty");
            return None;
        }
        Some(StoreSpec::S3(Box::new(S3Spec {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone().unwrap_or_default(),
            region: aws::region(self.region.as_deref(), cx.aws, cx.env),
            endpoint: cx.aws.and_then(|a| a.endpoint.clone()),
        })))
    }
}

/// Where an S3 store lives. Credentials come from the default chain of the process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct S3Spec {
    /// The bucket.
    pub bucket: String,
    /// Prepended to every key (e.g. `merged/`).
    pub prefix: String,
    /// The bucket's region.
    pub region: String,
    /// An endpoint override (tests, VPC endpoints); path-style addressing is used with one.
    pub endpoint: Option<String>,
}

impl S3Spec {
    /// Bucket, prefix and endpoint (bucket names are global: the region is not part of it).
    pub(super) fn identity(&self) -> StoreIdentity {
        let endpoint = self.endpoint.as_deref().map(canonical_url).unwrap_or_default();
        StoreIdentity::new("s3", &[&self.bucket, &self.prefix, &endpoint])
    }
}

/// `s3://<bucket>/<prefix>`.
impl fmt::Display for S3Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}
