//! `http`: a read-only source fetched with one GET per run.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Role, StoreCheck, StoreIdentity, StoreSpec, canonical_url, display_url};
use crate::config::secret_ref::{RawSecretRef, SecretRef};

/// `{ http: { url, headers?, timeout? } }`: a JSON document `{name: {key: value}}` fetched
/// over HTTP; a source only.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpStore {
    /// The document's URL (`http://` or `https://`). Example: `https://config.internal/secrets.json`.
    pub url: String,
    /// Request headers, by name; values are credentials, so references only.
    /// Example: `{ Authorization: "${SECRETS_API_AUTH}" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, RawSecretRef>,
    /// Seconds before a request is abandoned. Default: 30.
    pub timeout: Option<u64>,
}

impl RawHttpStore {
    pub(crate) fn check(&self, cx: &mut StoreCheck) -> Option<StoreSpec> {
        let read_only = "the `http` store is read-only: use it as a source";
        if !cx.refuse_unless(&[Role::Source], read_only) {
            return None;
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            cx.error("`url` must start with http:// or https://");
            return None;
        }
        let headers =
            self.headers.iter().map(|(name, r)| (name.clone(), r.resolve(cx.base))).collect();
        Some(StoreSpec::Http(Box::new(HttpSpec {
            url: self.url.clone(),
            headers,
            timeout_secs: self.timeout.unwrap_or(30),
        })))
    }
}

/// Where an HTTP source is fetched from. Header values are references, never values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpSpec {
    /// The URL.
    pub url: String,
    /// Request headers, by name.
    pub headers: BTreeMap<String, SecretRef>,
    /// Seconds before a request is abandoned.
    pub timeout_secs: u64,
}

impl HttpSpec {
    /// The canonical URL; a query string (which may hold a credential) only as a hash.
    pub(super) fn identity(&self) -> StoreIdentity {
        let query = self.url.split_once('?').map(|(_, q)| blake3::hash(q.as_bytes()).to_hex());
        let query = query.as_ref().map(|h| &h.as_str()[..16]).unwrap_or_default();
        StoreIdentity::new("http", &[&canonical_url(&self.url), query])
    }
}

/// `http:<url>`, without userinfo or query.
impl fmt::Display for HttpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http:{}", display_url(&self.url))
    }
}
