//! The `github` store: GitHub Actions secrets of a repository, one of its environments, or an
//! organization, through `octocrab`.
//!
//! Write-only: GitHub never returns a secret's value, so what vss knows of the current content
//! is the hash it recorded in its ledger, against the secret's `updated_at`. Values are sealed
//! with the repository's public key (a libsodium sealed box, `crypto_box`), fetched once per
//! store. Names are mapped to GitHub's rules (`[A-Z0-9_]`, upper-case, not starting with a
//! digit or `GITHUB_`): `app/db-url` is `APP_DB_URL`. A repository or environment holds at most
//! 100 secrets (an organization 1,000) of at most 48 KB; both limits are reported before
//! anything is sent. Organization secrets carry their visibility (and, for `selected`, the
//! repositories' ids, looked up once). Rate limits (403/429 with
//! `x-ratelimit-remaining: 0` or `Retry-After`) are retried after the wait GitHub asks for.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::credentials::ReadSecretRef;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use crypto_box::PublicKey;
use octocrab::Octocrab;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;
use vss_protocol::SecretValue;
use vss_protocol::config::Timeouts;
use vss_protocol::config::{GithubAuth, GithubScope, GithubSpec};

use crate::{
    ApiCalls, Capabilities, Entry, ErrorKind, Precondition, SecretStore, StoreError, Version,
    Versioned,
};

/// The largest value GitHub accepts.
const MAX_VALUE_BYTES: usize = 48 * 1024;
/// Retries of a throttled or unavailable call.
const MAX_RETRIES: usize = 5;

/// One page of `GET /repos/{owner}/{repo}/actions/secrets`.
#[derive(Deserialize)]
struct SecretsPage {
    total_count: usize,
    secrets: Vec<ListedSecret>,
}

#[derive(Deserialize)]
struct ListedSecret {
    name: String,
    updated_at: String,
}

/// A repository's id (for an organization secret's `selected_repository_ids`).
#[derive(Deserialize)]
struct RepositoryId {
    id: u64,
}

/// The repository's sealing key.
struct SealingKey {
    id: String,
    key: PublicKey,
}

/// A repository's Actions secrets.
pub struct GithubStore {
    /// Circuit breaker and outage budget over this run.
    health: crate::retry::Health,
    spec: GithubSpec,
    client: Octocrab,
    key: OnceCell<SealingKey>,
    /// `selected_repository_ids` of an organization secret, looked up once.
    selected: OnceCell<Vec<u64>>,
    /// Secrets in the repository as of the last listing, plus those created since.
    count: Mutex<Option<usize>>,
    label: String,
    calls: ApiCalls,
}

impl GithubStore {
    /// Opens the store: reads the token reference and builds the client.
    pub fn open(spec: &GithubSpec, timeouts: &Timeouts) -> Result<Self, StoreError> {
        let label = vss_protocol::config::StoreSpec::Github(Box::new(spec.clone())).to_string();
        let unauthorized =
            |message: String| StoreError::new(ErrorKind::Unauthorized, &label, None, message);
        let invalid = |e: octocrab::Error| {
            StoreError::new(ErrorKind::Invalid, &label, None, format!("GitHub client: {e}"))
        };
        let builder = Octocrab::builder()
            .base_uri(spec.api_url.as_str())
            .map_err(invalid)?
            .set_connect_timeout(Some(timeouts.connect()))
            .set_read_timeout(Some(timeouts.request()))
            .set_write_timeout(Some(timeouts.request()));
        let client = match &spec.auth {
            GithubAuth::Token(reference) => {
                let token =
                    reference.read().map_err(|e| unauthorized(format!("no GitHub token: {e}")))?;
                builder.personal_token(token.to_string()).build().map_err(invalid)?
            }
            GithubAuth::App { app_id, installation_id, private_key } => {
                let pem = private_key
                    .read()
                    .map_err(|e| unauthorized(format!("no GitHub App private key: {e}")))?;
                let key = octocrab::jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|_| {
                        unauthorized("the GitHub App private key is not an RSA PEM key".into())
                    })?;
                let app = builder.app((*app_id).into(), key).build().map_err(invalid)?;
                app.installation((*installation_id).into()).map_err(invalid)?
            }
        };
        Ok(Self {
            spec: spec.clone(),
            client,
            key: OnceCell::new(),
            selected: OnceCell::new(),
            count: Mutex::new(None),
            health: crate::retry::Health::new(&label, timeouts),
            label,
            calls: ApiCalls::default(),
        })
    }

    fn route(&self, rest: &str) -> String {
        match &self.spec.scope {
            GithubScope::Repository { owner, repo } => {
                format!("/repos/{owner}/{repo}/actions/secrets{rest}")
            }
            GithubScope::Environment { owner, repo, environment } => {
                format!("/repos/{owner}/{repo}/environments/{environment}/secrets{rest}")
            }
            GithubScope::Organization { org, .. } => format!("/orgs/{org}/actions/secrets{rest}"),
        }
    }

    /// Secrets the scope can hold.
    fn max_secrets(&self) -> usize {
        match self.spec.scope {
            GithubScope::Organization { .. } => 1000,
            _ => 100,
        }
    }

    /// The body of a write: the sealed value, and an organization secret's visibility.
    async fn put_body(&self, sealed: &str, key_id: &str) -> Result<Value, StoreError> {
        let mut body = serde_json::json!({ "encrypted_value": sealed, "key_id": key_id });
        if let GithubScope::Organization { org, visibility, selected_repositories } =
            &self.spec.scope
        {
            body["visibility"] = Value::String(visibility.clone());
            if visibility == "selected" {
                let ids = self
                    .selected
                    .get_or_try_init(|| async {
                        let mut ids = Vec::new();
                        for repo in selected_repositories {
                            let found: RepositoryId = self
                                .health
                                .retry(MAX_RETRIES, || async {
                                    self.calls.record("get_repository");
                                    self.client
                                        .get(format!("/repos/{org}/{repo}"), None::<&()>)
                                        .await
                                        .map_err(|e| {
                                            self.api_err(
                                                &format!("look up repository {org}/{repo}"),
                                                None,
                                                e,
                                            )
                                        })
                                })
                                .await?;
                            ids.push(found.id);
                        }
                        Ok::<_, StoreError>(ids)
                    })
                    .await?;
                body["selected_repository_ids"] = serde_json::json!(ids);
            }
        }
        Ok(body)
    }

    fn err(&self, kind: ErrorKind, secret: Option<&str>, message: impl Into<String>) -> StoreError {
        StoreError::new(kind, &self.label, secret, message)
    }

    /// Maps a client error by status; rate limits carry the wait GitHub asks for.
    fn api_err(&self, operation: &str, secret: Option<&str>, e: octocrab::Error) -> StoreError {
        let octocrab::Error::GitHub { source, .. } = &e else {
            return self.err(ErrorKind::Unavailable, secret, format!("{operation}: {e}"));
        };
        let status = source.status_code.as_u16();
        let headers = source.headers.as_ref();
        let header = |name: &str| {
            headers.and_then(|h| h.get(name)).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        let exhausted = header("x-ratelimit-remaining").as_deref() == Some("0");
        let kind = match status {
            429 => ErrorKind::Throttled,
            403 if exhausted || header("retry-after").is_some() => ErrorKind::Throttled,
            401 | 403 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            409 | 412 => ErrorKind::Conflict,
            500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Invalid,
        };
        let wait = header("retry-after").and_then(|s| s.parse::<u64>().ok()).or_else(|| {
            let reset = source.rate_limit_reset?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
            Some(reset.saturating_sub(now.as_secs()))
        });
        self.err(kind, secret, format!("{operation}: HTTP {status}: {}", source.message))
            .with_retry_after(wait.map(|s| Duration::from_secs(s.min(60))))
    }

    async fn sealing_key(&self) -> Result<&SealingKey, StoreError> {
        self.key
            .get_or_try_init(|| async {
                let found: octocrab::models::PublicKey = self
                    .health
                    .retry(MAX_RETRIES, || async {
                        self.calls.record("get_public_key");
                        self.client
                            .get(self.route("/public-key"), None::<&()>)
                            .await
                            .map_err(|e| self.api_err("get public key", None, e))
                    })
                    .await?;
                let bytes: [u8; 32] = BASE64
                    .decode(found.key.as_bytes())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        self.err(
                            ErrorKind::Invalid,
                            None,
                            "the repository's public key is not a 32-byte base64 key",
                        )
                    })?;
                Ok(SealingKey { id: found.key_id, key: PublicKey::from(bytes) })
            })
            .await
    }

    /// The secret's `updated_at`, its version.
    async fn version_of(&self, github_name: &str) -> Result<Option<Version>, StoreError> {
        let got = self
            .health
            .retry(MAX_RETRIES, || async {
                self.calls.record("get_secret");
                self.client
                    .get::<ListedSecret, _, _>(self.route(&format!("/{github_name}")), None::<&()>)
                    .await
                    .map_err(|e| self.api_err("get secret", Some(github_name), e))
            })
            .await;
        match got {
            Ok(secret) => Ok(Some(Version(secret.updated_at))),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The GitHub name of a secret: upper-case, `[A-Z0-9_]`, every other character `_`.
pub fn github_name(name: &str) -> Result<String, String> {
    let mapped: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    if mapped.is_empty() || mapped.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`{mapped}` would start with a digit, which GitHub refuses"));
    }
    if mapped.starts_with("GITHUB_") {
        return Err(format!("`{mapped}` would start with GITHUB_, which GitHub reserves"));
    }
    Ok(mapped)
}

#[async_trait::async_trait]
impl SecretStore for GithubStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { read_values: false, metadata: false, conditional_writes: false }
    }

    fn store_name(&self, name: &str) -> Result<String, StoreError> {
        github_name(name).map_err(|e| self.err(ErrorKind::Invalid, Some(name), e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for page in 1.. {
            let query = [("per_page", 100u32), ("page", page)];
            let got: SecretsPage = self
                .health
                .retry(MAX_RETRIES, || async {
                    self.calls.record("list_secrets");
                    self.client
                        .get(self.route(""), Some(&query))
                        .await
                        .map_err(|e| self.api_err("list secrets", None, e))
                })
                .await?;
            let done =
                got.secrets.len() < 100 || entries.len() + got.secrets.len() >= got.total_count;
            entries.extend(
                got.secrets.into_iter().filter(|s| s.name.starts_with(prefix)).map(|s| Entry {
                    name: s.name,
                    version: Version(s.updated_at),
                    stamp: None,
                }),
            );
            if done {
                break;
            }
        }
        *self.count.lock().expect("count lock") = Some(entries.len());
        Ok(entries)
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<SecretValue>>, StoreError> {
        Err(self.err(ErrorKind::Invalid, Some(name), "GitHub secrets are write-only"))
    }

    async fn write(
        &self,
        name: &str,
        value: &SecretValue,
        pre: Precondition,
    ) -> Result<Version, StoreError> {
        let text = value.to_text();
        if text.len() > MAX_VALUE_BYTES {
            return Err(self.err(
                ErrorKind::Invalid,
                Some(name),
                format!("{} bytes; GitHub takes at most 48 KB", text.len()),
            ));
        }
        if matches!(pre, Precondition::Absent) {
            let mut count = self.count.lock().expect("count lock");
            let max = self.max_secrets();
            if count.is_some_and(|n| n >= max) {
                return Err(self.err(
                    ErrorKind::Invalid,
                    Some(name),
                    format!("{} already holds {max} secrets, GitHub's limit", self.label),
                ));
            }
            *count = count.map(|n| n + 1);
        }
        let key = self.sealing_key().await?;
        let sealed = key
            .key
            .seal(&mut crypto_box::aead::OsRng, text.as_bytes())
            .map_err(|_| self.err(ErrorKind::Invalid, Some(name), "cannot seal the value"))?;
        let sealed = BASE64.encode(sealed);
        let body = self.put_body(&sealed, &key.id).await?;
        let route = self.route(&format!("/{name}"));
        self.health
            .retry(MAX_RETRIES, || async {
                self.calls.record("put_secret");
                let response = self
                    .client
                    ._put(route.as_str(), Some(&body))
                    .await
                    .map_err(|e| self.api_err("put secret", Some(name), e))?;
                octocrab::map_github_error(response)
                    .await
                    .map_err(|e| self.api_err("put secret", Some(name), e))
            })
            .await?;
        self.version_of(name).await?.ok_or_else(|| {
            self.err(ErrorKind::Conflict, Some(name), "gone right after it was written")
        })
    }

    async fn delete(&self, name: &str, _pre: Precondition) -> Result<(), StoreError> {
        let route = self.route(&format!("/{name}"));
        let deleted = self
            .health
            .retry(MAX_RETRIES, || async {
                self.calls.record("delete_secret");
                let response = self
                    .client
                    ._delete(route.as_str(), None::<&()>)
                    .await
                    .map_err(|e| self.api_err("delete secret", Some(name), e))?;
                octocrab::map_github_error(response)
                    .await
                    .map_err(|e| self.api_err("delete secret", Some(name), e))
            })
            .await;
        match deleted {
            Err(e) if e.kind != ErrorKind::NotFound => Err(e),
            _ => {
                let mut count = self.count.lock().expect("count lock");
                *count = count.map(|n| n.saturating_sub(1));
                Ok(())
            }
        }
    }

    fn api_calls(&self) -> BTreeMap<String, u64> {
        self.calls.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::github_name;

    #[test]
    fn names_follow_githubs_rules() {
        assert_eq!(github_name("app/db-url").unwrap(), "APP_DB_URL");
        assert_eq!(github_name("Team.X/key_1").unwrap(), "TEAM_X_KEY_1");
        assert!(github_name("1password/token").unwrap_err().contains("digit"));
        assert!(github_name("github/token").unwrap_err().contains("GITHUB_"));
    }
}
