//! `gcp`: GCP Secret Manager secrets of a project (a source or a target).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Role, StoreCheck, StoreIdentity, StoreSpec, canonical_url};

/// `{ gcp: { project, prefix?, labels?, endpoint? } }`: GCP Secret Manager, with Application
/// Default Credentials.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGcpStore {
    /// The project id. Example: `acme-prod`.
    pub project: String,
    /// Secret ids start with this (`A-Z a-z 0-9 _ -`); names are relative to it. Default:
    /// none. Example: `payments_`.
    pub prefix: Option<String>,
    /// Labels set on every secret vss creates or adopts, beside `vss-managed-by` (GCP rules:
    /// lower-case `a-z 0-9 _ -`, at most 63 characters, keys start with a letter).
    /// Example: `{ team: payments }`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The API's base URL. Default: `https://secretmanager.googleapis.com`. Example: a
    /// regional or private endpoint.
    pub endpoint: Option<String>,
}

/// The label vss sets on every secret it manages.
const MANAGED_BY: &str = "vss-managed-by";

impl RawGcpStore {
    pub(crate) fn check(&self, cx: &mut StoreCheck) -> Option<StoreSpec> {
        let not_merge = "GCP Secret Manager is a source or a target, not a merge store";
        if !cx.refuse_unless(&[Role::Source, Role::Target], not_merge) {
            return None;
        }
        let mut ok = true;
        let project_ok =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c);
        if self.project.is_empty() || !self.project.chars().all(project_ok) {
            cx.error_at(&["project"], format!("`{}` is not a GCP project id", self.project));
            ok = false;
        }
        let prefix = self.prefix.clone().unwrap_or_default();
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            cx.error_at(&["prefix"], "GCP secret ids allow only `A-Z a-z 0-9 _ -`");
            ok = false;
        }
        for (name, value) in &self.labels {
            let at = ["labels", name.as_str()];
            if !name.starts_with(|c: char| c.is_ascii_lowercase())
                || !label_ok(name)
                || !label_ok(value)
            {
                cx.error_at(
                    &at,
                    "GCP labels are lower-case `a-z 0-9 _ -`, at most 63 characters, keys starting with a letter",
                );
                ok = false;
            } else if name == MANAGED_BY {
                cx.error_at(&at, format!("`{MANAGED_BY}` is the label vss sets itself"));
                ok = false;
            }
        }
        ok.then(|| {
            StoreSpec::Gcp(Box::new(GcpSpec {
                project: self.project.clone(),
                prefix,
                labels: self.labels.clone(),
                endpoint: self.endpoint.as_ref().map(|e| e.trim_end_matches('/').to_string()),
            }))
        })
    }
}

/// A GCP label key or value: lower-case `a-z 0-9 _ -`, at most 63 characters.
fn label_ok(s: &str) -> bool {
    s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Where a GCP Secret Manager store lives. Credentials are Application Default Credentials
/// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials, or the metadata server).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GcpSpec {
    /// The project id.
    pub project: String,
    /// Secret ids start with this (`[A-Za-z0-9_-]`); names are relative to it.
    pub prefix: String,
    /// Labels set on every secret vss creates or adopts, beside `vss-managed-by`.
    pub labels: BTreeMap<String, String>,
    /// The API's base URL (default `https://secretmanager.googleapis.com`): a private or
    /// regional endpoint.
    pub endpoint: Option<String>,
}

impl GcpSpec {
    /// Project, prefix and endpoint; not the labels.
    pub(super) fn identity(&self) -> StoreIdentity {
        let endpoint = self.endpoint.as_deref().map(canonical_url).unwrap_or_default();
        StoreIdentity::new("gcp", &[&self.project, &self.prefix, &endpoint])
    }
}

/// `gcp:<project>/<prefix>`.
impl fmt::Display for GcpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gcp:{}/{}", self.project, self.prefix)
    }
}
