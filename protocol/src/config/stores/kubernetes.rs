//! `kubernetes`: Secrets in a namespace (a target).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Role, StoreCheck, StoreIdentity, StoreSpec};

/// `{ kubernetes: { namespace, name?, context? } }`: Secrets in a namespace, reached with
/// the in-cluster service account or the kubeconfig of the process that syncs.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKubernetesStore {
    /// The namespace. Example: `payments`.
    pub namespace: String,
    /// Set: every secret becomes one key of this single Secret. Unset (the default): one
    /// Secret per secret. Example: `app-secrets`.
    pub name: Option<String>,
    /// A kubeconfig context. Default: the current one. Example: `prod-cluster`.
    pub context: Option<String>,
}

impl RawKubernetesStore {
    pub(crate) fn check(&self, cx: &mut StoreCheck) -> Option<StoreSpec> {
        if !cx.refuse_unless(&[Role::Target], "the `kubernetes` store is a target") {
            return None;
        }
        if !is_dns_label(&self.namespace) {
            cx.error_at(&["namespace"], "a namespace is a DNS label: lower-case letters, digits and `-`, at most 63, starting and ending with a letter or digit");
            return None;
        }
        if let Some(name) = &self.name
            && !(name.len() <= 253 && name.split('.').all(is_dns_label))
        {
            cx.error_at(
                &["name"],
                "a Secret name is lower-case letters, digits, `-` and `.`, at most 253 characters",
            );
            return None;
        }
        Some(StoreSpec::Kubernetes(Box::new(KubernetesSpec {
            namespace: self.namespace.clone(),
            context: self.context.clone(),
            name: self.name.clone(),
        })))
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a namespace (and each dot-separated part of a
/// Secret's name).
fn is_dns_label(s: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(edge)
        && s.ends_with(edge)
        && s.chars().all(|c| edge(c) || c == '-')
}

/// Where a Kubernetes target lives. Credentials come from the in-cluster service account or
/// the kubeconfig of the process that syncs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KubernetesSpec {
    /// The namespace.
    pub namespace: String,
    /// A kubeconfig context (default: the current one).
    pub context: Option<String>,
    /// `Some`: every secret is a key of this one Secret; `None`: one Secret per secret.
    pub name: Option<String>,
}

impl KubernetesSpec {
    /// Context, namespace and Secret name.
    pub(super) fn identity(&self) -> StoreIdentity {
        let (context, name) =
            (self.context.as_deref().unwrap_or_default(), self.name.as_deref().unwrap_or_default());
        StoreIdentity::new("kubernetes", &[context, &self.namespace, name])
    }
}

/// `kubernetes:[<context>/]<namespace>[/<name>]`.
impl fmt::Display for KubernetesSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kubernetes:")?;
        if let Some(context) = &self.context {
            write!(f, "{context}/")?;
        }
        write!(f, "{}", self.namespace)?;
        match &self.name {
            Some(name) => write!(f, "/{name}"),
            None => Ok(()),
        }
    }
}
