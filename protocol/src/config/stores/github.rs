//! `github`: GitHub Actions secrets of a repository, an environment or an organization (a
//! write-only target).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Role, StoreCheck, StoreIdentity, StoreSpec, canonical_url};
use crate::config::secret_ref::{RawSecretRef, SecretRef};

/// `{ github: { owner, repo, environment? } }` or `{ github: { org, visibility?,
/// selected_repositories? } }`: Actions secrets, written sealed with the scope's public key.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGithubStore {
    /// A repository's owner (a user or an organization), with `repo`. Example: `acme`.
    pub owner: Option<String>,
    /// The repository, with `owner`. Example: `payments-api`.
    pub repo: Option<String>,
    /// One of the repository's environments; its secrets instead of the repository's.
    /// Example: `production`.
    pub environment: Option<String>,
    /// An organization, instead of `owner` and `repo`: its organization secrets.
    /// Example: `acme`.
    pub org: Option<String>,
    /// With `org`: which repositories see the secrets, `all`, `private` or `selected`.
    /// Default: `private`.
    pub visibility: Option<String>,
    /// With `visibility: selected`: the repositories (names in the organization).
    /// Example: `[payments-api, billing]`.
    #[serde(default)]
    pub selected_repositories: Vec<String>,
    /// A personal access token, by reference. Default: `{ env: GITHUB_TOKEN }`.
    pub token: Option<RawSecretRef>,
    /// GitHub App authentication, instead of `token`.
    pub app: Option<RawGithubApp>,
    /// The REST API's base URL. Default: `GITHUB_API_URL`, else `https://api.github.com`.
    /// Example: `https://github.example.com/api/v3` (GitHub Enterprise Server).
    pub api_url: Option<String>,
}

/// `app: { app_id, installation_id, private_key }`: GitHub App authentication; installation
/// tokens are bought with a JWT signed by the app's key and renewed before they expire.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGithubApp {
    /// The app's id. Example: `123456`.
    pub app_id: u64,
    /// The installation's id (the app installed on the owner or organization).
    pub installation_id: u64,
    /// The app's private key (PEM), by reference. Example: `{ file: github-app.pem }`.
    pub private_key: RawSecretRef,
}

impl RawGithubStore {
    pub(crate) fn check(&self, cx: &mut StoreCheck) -> Option<StoreSpec> {
        let write_only = "GitHub secrets are write-only: use them as a target";
        if !cx.refuse_unless(&[Role::Target], write_only) {
            return None;
        }
        let scope = self.scope(cx)?;
        let auth = match (&self.token, &self.app) {
            (Some(_), Some(_)) => {
                cx.error("either `token` or `app`, not both");
                return None;
            }
            (_, Some(app)) => GithubAuth::App {
                app_id: app.app_id,
                installation_id: app.installation_id,
                private_key: app.private_key.resolve(cx.base),
            },
            (Some(token), None) => GithubAuth::Token(token.resolve(cx.base)),
            (None, None) => GithubAuth::Token(SecretRef::Env("GITHUB_TOKEN".into())),
        };
        let api_url = self
            .api_url
            .clone()
            .or_else(|| (cx.env)("GITHUB_API_URL"))
            .unwrap_or_else(|| "https://api.github.com".into());
        Some(StoreSpec::Github(Box::new(GithubSpec {
            scope,
            auth,
            api_url: api_url.trim_end_matches('/').to_string(),
        })))
    }

    /// Whose secrets: a repository's, one of its environments', or an organization's.
    fn scope(&self, cx: &mut StoreCheck) -> Option<GithubScope> {
        match (&self.org, &self.owner, &self.repo, &self.environment) {
            (Some(org), None, None, None) => {
                let visibility = self.visibility.clone().unwrap_or_else(|| "private".into());
                if !["all", "private", "selected"].contains(&visibility.as_str()) {
                    cx.error("`visibility` is `all`, `private` or `selected`");
                    return None;
                }
                if (visibility == "selected") == self.selected_repositories.is_empty() {
                    cx.error(
                        "`selected_repositories` goes with `visibility: selected`, and only with it",
                    );
                    return None;
                }
                Some(GithubScope::Organization {
                    org: org.clone(),
                    visibility,
                    selected_repositories: self.selected_repositories.clone(),
                })
            }
            (None, Some(owner), Some(repo), environment)
                if self.visibility.is_none() && self.selected_repositories.is_empty() =>
            {
                let (owner, repo) = (owner.clone(), repo.clone());
                Some(match environment {
                    Some(environment) => {
                        GithubScope::Environment { owner, repo, environment: environment.clone() }
                    }
                    None => GithubScope::Repository { owner, repo },
                })
            }
            _ => {
                cx.error(
                    "either `owner` and `repo` (and optionally `environment`), or `org` (with `visibility`, `selected_repositories`)",
                );
                None
            }
        }
    }
}

/// How a GitHub target authenticates: references, read by the process that syncs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GithubAuth {
    /// A personal access token (fine-grained or classic).
    Token(SecretRef),
    /// A GitHub App installation: a JWT signed with the app's private key buys short-lived
    /// installation tokens (renewed before they expire).
    App {
        /// The app's id.
        app_id: u64,
        /// The installation's id.
        installation_id: u64,
        /// The app's private key (PEM).
        private_key: SecretRef,
    },
}

/// The secrets a GitHub target writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GithubScope {
    /// A repository's Actions secrets.
    Repository {
        /// The owner (a user or an organization).
        owner: String,
        /// The repository.
        repo: String,
    },
    /// A repository environment's secrets.
    Environment {
        /// The owner.
        owner: String,
        /// The repository.
        repo: String,
        /// The environment.
        environment: String,
    },
    /// An organization's Actions secrets.
    Organization {
        /// The organization.
        org: String,
        /// Which repositories see them: `all`, `private` or `selected`.
        visibility: String,
        /// With `selected`: the repositories (names in the organization).
        selected_repositories: Vec<String>,
    },
}

/// Where a GitHub Actions secrets target lives. The token is a reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GithubSpec {
    /// Whose secrets: a repository's, one of its environments', or an organization's.
    pub scope: GithubScope,
    /// How vss authenticates.
    pub auth: GithubAuth,
    /// The REST API's base URL (`https://api.github.com`, GitHub Enterprise's, or a test's).
    pub api_url: String,
}

impl GithubSpec {
    /// API server and scope; names in lower case (GitHub ignores their case); not the login.
    pub(super) fn identity(&self) -> StoreIdentity {
        let scope = match &self.scope {
            GithubScope::Repository { owner, repo } => format!("repo:{owner}/{repo}"),
            GithubScope::Environment { owner, repo, environment } => {
                format!("environment:{owner}/{repo}/{environment}")
            }
            GithubScope::Organization { org, .. } => format!("org:{org}"),
        };
        StoreIdentity::new("github", &[&canonical_url(&self.api_url), &scope.to_lowercase()])
    }
}

/// `github:<owner>/<repo>[@<environment>]` or `github:<org>`.
impl fmt::Display for GithubSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            GithubScope::Repository { owner, repo } => write!(f, "github:{owner}/{repo}"),
            GithubScope::Environment { owner, repo, environment } => {
                write!(f, "github:{owner}/{repo}@{environment}")
            }
            GithubScope::Organization { org, .. } => write!(f, "github:{org}"),
        }
    }
}
