//! `aws`: AWS Secrets Manager (a source or a target), cross-account through STS AssumeRole,
//! and the top-level `aws:` block every AWS store (this one and `s3`) reads.

use std::fmt;

use schemars::JsonSchema;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::{StoreCheck, StoreIdentity, StoreSpec, canonical_url};
use crate::config::check::{Checker, path};

/// The top-level `aws:` block: region, endpoint and cross-account roles of every AWS store.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAws {
    /// The default region. Default: `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// An endpoint override (VPC endpoints, local test servers). Example:
    /// `http://127.0.0.1:5000`.
    pub endpoint: Option<String>,
    /// The role assumed in a target's account, `{account_id}` replaced. Example:
    /// `arn:aws:iam::{account_id}:role/vss-sync`.
    pub execution_role: Option<String>,
    /// Days a deleted secret stays recoverable, 7 to 30. Default: 7.
    pub recovery_window_days: Option<i64>,
    /// Delete secrets at once, without a recovery window. Default: false.
    #[serde(default)]
    pub force_delete: bool,
    /// The external id the assumed roles' trust policies ask for.
    pub external_id: Option<String>,
    /// AWS Control Tower: its execution role is the default role in target accounts.
    pub control_tower: Option<RawControlTower>,
    /// Where vss runs (the reference's block); `custom_role_pattern` names the role to assume.
    pub execution_context: Option<RawExecutionContext>,
    /// Not supported yet.
    #[schemars(with = "Option<serde_json::Value>")]
    pub organizations: Option<IgnoredAny>,
    /// Not supported yet.
    #[schemars(with = "Option<serde_json::Value>")]
    pub identity_center: Option<IgnoredAny>,
}

/// `control_tower: { enabled?, execution_role? }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControlTower {
    /// Default: true (when the block is present).
    pub enabled: Option<bool>,
    /// The execution role. Default: `AWSControlTowerExecution` at `/`.
    pub execution_role: Option<RawRoleName>,
    /// Not supported yet.
    #[schemars(with = "Option<serde_json::Value>")]
    pub account_factory: Option<IgnoredAny>,
}

/// `execution_role: { name?, path? }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoleName {
    /// The role's name. Default: `AWSControlTowerExecution`.
    pub name: Option<String>,
    /// The role's path. Default: `/`. Example: `/automation/`.
    pub path: Option<String>,
}

/// `execution_context: { type?, account_id?, custom_role_pattern? }`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExecutionContext {
    /// Where vss runs (the reference's informational key); changes nothing.
    #[serde(rename = "type")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub _kind: Option<IgnoredAny>,
    /// The account vss runs in (informational); changes nothing.
    #[serde(rename = "account_id")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub _account_id: Option<IgnoredAny>,
    /// Not supported yet.
    #[schemars(with = "Option<serde_json::Value>")]
    pub delegation: Option<IgnoredAny>,
    /// The role to assume, `{{.AccountID}}` replaced. Example:
    /// `arn:aws:iam::{{.AccountID}}:role/SecretsSync`.
    pub custom_role_pattern: Option<String>,
}

/// `{ aws: { prefix?, region?, account_id?, role_arn? } }`: AWS Secrets Manager (the
/// reference's source spelling); with `account_id`, reached through a role in that account.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAwsStore {
    /// Prepended to every secret name. Default: none. Example: `app/`.
    pub prefix: Option<String>,
    /// The region. Default: `aws.region`, then `AWS_REGION`, `AWS_DEFAULT_REGION`, then
    /// `us-east-1`.
    pub region: Option<String>,
    /// Another account (12 digits, quoted to keep leading zeros), reached through a role.
    /// Example: `"123456789012"`.
    #[schemars(with = "Option<AccountId>")]
    pub account_id: Option<String>,
    /// The role to assume in `account_id`. Default: `aws.execution_role`, the Control Tower
    /// execution role, or `aws.execution_context.custom_role_pattern`.
    pub role_arn: Option<String>,
    /// Not supported yet.
    #[schemars(with = "Option<serde_json::Value>")]
    pub tags: Option<IgnoredAny>,
}

/// An AWS account id: 12 digits, as text (a number is accepted too).
#[derive(JsonSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub(crate) enum AccountId {
    /// `"012345678901"`.
    Text(#[schemars(regex(pattern = r"^[0-9]{12}$"))] String),
    /// `123456789012` (leading zeros are lost: quote those).
    Number(u64),
}

/// What is wrong with an account id that [`is_account_id`] refuses.
pub(crate) const BAD_ACCOUNT_ID: &str =
    "an AWS account id is exactly 12 digits (quote it to keep leading zeros)";

/// Whether `id` is an AWS account id: exactly 12 digits.
pub(crate) fn is_account_id(id: &str) -> bool {
    id.len() == 12 && id.chars().all(|c| c.is_ascii_digit())
}

impl RawAwsStore {
    pub(crate) fn check(&self, cx: &mut StoreCheck) -> Option<StoreSpec> {
        if self.tags.is_some() {
            let at = cx.within(&["tags"]);
            cx.ck.not_supported(&at, "`tags` filters on an AWS store");
            return None;
        }
        if self.account_id.as_deref().is_some_and(|id| !is_account_id(id)) {
            cx.error_at(&["account_id"], BAD_ACCOUNT_ID);
            return None;
        }
        let aws = cx.aws;
        let role_arn =
            self.account_id.as_deref().map(|id| role_for(id, self.role_arn.as_deref(), aws));
        Some(StoreSpec::AwsSm(Box::new(AwsSmSpec {
            region: region(self.region.as_deref(), aws, cx.env),
            endpoint: aws.and_then(|a| a.endpoint.clone()),
            prefix: self.prefix.clone().unwrap_or_default(),
            role_arn,
            external_id: aws.and_then(|a| a.external_id.clone()),
            recovery_window_days: aws.and_then(|a| a.recovery_window_days).unwrap_or(7),
            force_delete: aws.is_some_and(|a| a.force_delete),
        })))
    }
}

/// A store's region: its own, else `aws.region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`,
/// else `us-east-1` (the reference's default).
pub(super) fn region(
    own: Option<&str>,
    aws: Option<&RawAws>,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    own.map(str::to_string)
        .or_else(|| aws.and_then(|a| a.region.clone()))
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into())
}

/// The role to assume in `account`: the store's or target's `role_arn`, else the
/// `aws.execution_role` template, else the Control Tower execution role (`path` + `name`,
/// default `AWSControlTowerExecution`), else `execution_context.custom_role_pattern`, else the
/// Control Tower default. `{account_id}` and `{{.AccountID}}` are replaced.
fn role_for(account: &str, explicit: Option<&str>, aws: Option<&RawAws>) -> String {
    let control_tower =
        aws.and_then(|a| a.control_tower.as_ref()).filter(|c| c.enabled != Some(false));
    let template = explicit
        .map(str::to_string)
        .or_else(|| aws.and_then(|a| a.execution_role.clone()))
        .or_else(|| {
            control_tower.map(|c| {
                let role = c.execution_role.as_ref();
                let name =
                    role.and_then(|r| r.name.as_deref()).unwrap_or("AWSControlTowerExecution");
                let path = role.and_then(|r| r.path.as_deref()).unwrap_or("/").trim_matches('/');
                let path = if path.is_empty() { "/".to_string() } else { format!("/{path}/") };
                format!("arn:aws:iam::{{account_id}}:role{path}{name}")
            })
        })
        .or_else(|| {
            aws.and_then(|a| a.execution_context.as_ref())
                .and_then(|e| e.custom_role_pattern.clone())
        })
        .unwrap_or_else(|| "arn:aws:iam::{account_id}:role/AWSControlTowerExecution".into());
    template.replace("{{.AccountID}}", account).replace("{account_id}", account)
}

impl RawAws {
    /// Checks the `aws:` block and reports the keys vss does not implement yet.
    pub(crate) fn check(&self, ck: &mut Checker) {
        if self.recovery_window_days.is_some_and(|d| !(7..=30).contains(&d)) {
            ck.error(
                &path(&["aws", "recovery_window_days"]),
                "must be between 7 and 30 (AWS's limits)".into(),
            );
        }
        let context = self.execution_context.as_ref();
        let factory = self.control_tower.as_ref().is_some_and(|c| c.account_factory.is_some());
        for (k, present) in [
            ("organizations", self.organizations.is_some()),
            ("identity_center", self.identity_center.is_some()),
            ("control_tower.account_factory", factory),
            ("execution_context.delegation", context.is_some_and(|c| c.delegation.is_some())),
        ] {
            if present {
                let parts: Vec<&str> = std::iter::once("aws").chain(k.split('.')).collect();
                ck.not_supported(&path(&parts), &format!("`aws.{k}`"));
            }
        }
    }
}

/// Where an AWS Secrets Manager store lives. Credentials come from the default chain of the
/// process that uses it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AwsSmSpec {
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// An endpoint override (tests, VPC endpoints).
    pub endpoint: Option<String>,
    /// Prepended to every secret name (e.g. `app/`); empty for none.
    pub prefix: String,
    /// A role to assume (another account's), if any.
    pub role_arn: Option<String>,
    /// The external id the role's trust policy asks for.
    pub external_id: Option<String>,
    /// Days a deleted secret stays recoverable (7–30).
    pub recovery_window_days: i64,
    /// Delete at once, without a recovery window (only if configured).
    pub force_delete: bool,
}

impl AwsSmSpec {
    /// Account (from the role, else the caller's), region, prefix and endpoint; not which
    /// role reaches the account.
    pub(super) fn identity(&self) -> StoreIdentity {
        let account = self
            .role_arn
            .as_deref()
            .and_then(|arn| arn.split(':').nth(4))
            .filter(|a| !a.is_empty())
            .unwrap_or("caller");
        let endpoint = self.endpoint.as_deref().map(canonical_url).unwrap_or_default();
        StoreIdentity::new("aws-sm", &[account, &self.region, &self.prefix, &endpoint])
    }
}

/// `aws-sm:<region>/<prefix>[ via <role>]`.
impl fmt::Display for AwsSmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aws-sm:{}/{}", self.region, self.prefix)?;
        match &self.role_arn {
            Some(role) => write!(f, " via {role}"),
            None => Ok(()),
        }
    }
}
