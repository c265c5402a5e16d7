//! A local GitHub REST API for Actions secrets (repository, environment, organization), faithful to the public docs where
//! vss depends on it: bearer-token auth (401 otherwise), the repository's public key, paginated
//! listing (`per_page` ≤ 100, `page`), get, create-or-update (201 created, 204 updated; 422 for
//! a bad name or key id), delete (204, 404), and primary rate limits (403 with
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset`). It holds a real X25519 key pair and
//! opens every sealed box, so tests check the plaintext vss sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use crypto_box::SecretKey;
use serde_json::{Value, json};

/// One stored secret.
#[derive(Clone, Debug)]
struct Stored {
    plaintext: String,
    created_at: String,
    updated_at: String,
    /// An organization secret's visibility and selected repositories, as sent.
    details: Value,
}

#[derive(Default)]
struct Repo {
    /// (scope, name) → the secret.
    secrets: BTreeMap<(String, String), Stored>,
    /// Requests answered by operation (`list`, `get`, `put`, `delete`, `key`, `throttled`).
    requests: BTreeMap<String, usize>,
    /// The next this many requests are refused as rate-limited.
    throttle: usize,
    /// Seconds since the fake epoch, advanced on every write (timestamps differ per write).
    clock: u64,
}

/// A GitHub App that may mint installation tokens.
struct App {
    id: u64,
    installation: u64,
    public_key_pem: String,
}

struct Shared {
    token: String,
    app: Mutex<Option<App>>,
    /// Installation tokens minted so far (each accepted like `token`).
    minted: Mutex<Vec<String>>,
    key: SecretKey,
    repo: Mutex<Repo>,
}

/// The server; stopped when dropped.
pub struct FakeGithub {
    /// The API base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

const KEY_ID: &str = "568250167242549743";

fn timestamp(clock: u64) -> String {
    let (h, m, s) = (clock / 3600 % 24, clock / 60 % 60, clock % 60);
    format!("2026-01-{:02}T{h:02}:{m:02}:{s:02}Z", 1 + clock / 86_400 % 28)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"message": message, "documentation_url": "https://docs.github.com/rest"});
    (status, Json(body)).into_response()
}

/// Checks the token and the rate limit (`Some`: the refusal); counts the request.
fn admit(shared: &Shared, headers: &HeaderMap, operation: &str) -> Option<Response> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("token "));
    let minted = token.is_some_and(|t| shared.minted.lock().unwrap().iter().any(|m| m == t));
    if token != Some(shared.token.as_str()) && !minted {
        return Some(error(StatusCode::UNAUTHORIZED, "Bad credentials"));
    }
    let mut repo = shared.repo.lock().unwrap();
    if repo.throttle > 0 {
        repo.throttle -= 1;
        *repo.requests.entry("throttled".into()).or_default() += 1;
        let reset =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
                + 1;
        let mut response = error(StatusCode::FORBIDDEN, "API rate limit exceeded");
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        return Some(response);
    }
    *repo.requests.entry(operation.into()).or_default() += 1;
    None
}

/// GitHub's rule for secret names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && !name.to_ascii_uppercase().starts_with("GITHUB_")
}

/// Where a request goes: the secrets scope (`repos/o/r/actions`, `repos/o/r/environments/e`,
/// `orgs/o/actions`) and the rest (`""`, `/public-key`, `/NAME`).
fn scope_of(path: &str) -> Option<(String, String)> {
    let (scope, rest) = path.trim_start_matches('/').split_once("/secrets")?;
    let valid = scope.starts_with("orgs/") && scope.ends_with("/actions")
        || scope.starts_with("repos/")
            && (scope.ends_with("/actions") || scope.contains("/environments/"));
    valid.then(|| (scope.to_string(), rest.to_string()))
}

/// The id GitHub would give `owner/repo` (stable per name).
fn repository_id(path: &str) -> u64 {
    path.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) % 1_000_000
}

async fn any_get(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(path): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let Some((scope, rest)) = scope_of(&path) else {
        // GET /repos/{owner}/{repo}: the repository, for its id.
        let parts: Vec<&str> = path.split('/').collect();
        if let ["repos", _, _] = parts.as_slice() {
            if let Some(r) = admit(&shared, &headers, "repository") {
                return r;
            }
            return Json(json!({"id": repository_id(&path), "full_name": &path[6..]}))
                .into_response();
        }
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    match rest.as_str() {
        "/public-key" => {
            if let Some(r) = admit(&shared, &headers, "key") {
                return r;
            }
            let key = BASE64.encode(shared.key.public_key().as_bytes());
            Json(json!({"key_id": KEY_ID, "key": key})).into_response()
        }
        "" => {
            if let Some(r) = admit(&shared, &headers, "list") {
                return r;
            }
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
            let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
            let per_page = per_page.clamp(1, 100);
            let repo = shared.repo.lock().unwrap();
            let in_scope: Vec<(&String, &Stored)> = repo
                .secrets
                .iter()
                .filter(|((s, _), _)| s == &scope)
                .map(|((_, n), v)| (n, v))
                .collect();
            let secrets: Vec<Value> = in_scope
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|(name, s)| json!({"name": name, "created_at": s.created_at, "updated_at": s.updated_at}))
                .collect();
            Json(json!({"total_count": in_scope.len(), "secrets": secrets})).into_response()
        }
        name => {
            if let Some(r) = admit(&shared, &headers, "get") {
                return r;
            }
            let name = name.trim_start_matches('/').to_ascii_uppercase();
            let repo = shared.repo.lock().unwrap();
            match repo.secrets.get(&(scope, name.clone())) {
                Some(s) => Json(
                    json!({"name": name, "created_at": s.created_at, "updated_at": s.updated_at}),
                )
                .into_response(),
                None => error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
    }
}

async fn any_put(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(path): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Some((scope, rest)) = scope_of(&path) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Some(r) = admit(&shared, &headers, "put") {
        return r;
    }
    let name = rest.trim_start_matches('/');
    if !valid_name(name) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid name");
    }
    if body["key_id"].as_str() != Some(KEY_ID) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Bad key_id");
    }
    if scope.starts_with("orgs/") {
        let visibility = body["visibility"].as_str().unwrap_or_default();
        let selected = body["selected_repository_ids"].as_array();
        let fits = match visibility {
            "all" | "private" => selected.is_none(),
            "selected" => selected.is_some(),
            _ => false,
        };
        if !fits {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "visibility is required for organization secrets",
            );
        }
    }
    let Some(sealed) = body["encrypted_value"].as_str().and_then(|v| BASE64.decode(v).ok()) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "encrypted_value is not base64");
    };
    let Ok(plain) = shared.key.unseal(&sealed) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "cannot decrypt encrypted_value");
    };
    let plaintext = String::from_utf8(plain).unwrap_or_default();
    let mut repo = shared.repo.lock().unwrap();
    repo.clock += 1;
    let now = timestamp(repo.clock);
    let key = (scope, name.to_ascii_uppercase());
    let details = json!({"visibility": body["visibility"], "selected_repository_ids": body["selected_repository_ids"]});
    match repo.secrets.get_mut(&key) {
        Some(s) => {
            s.plaintext = plaintext;
            s.updated_at = now;
            s.details = details;
            StatusCode::NO_CONTENT.into_response()
        }
        None => {
            let stored = Stored { plaintext, created_at: now.clone(), updated_at: now, details };
            repo.secrets.insert(key, stored);
            StatusCode::CREATED.into_response()
        }
    }
}

/// `POST /app/installations/{id}/access_tokens`, authorized by the app's RS256 JWT.
async fn any_post(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    use octocrab::jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    let parts: Vec<&str> = path.split('/').collect();
    let ["app", "installations", id, "access_tokens"] = parts.as_slice() else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let app = shared.app.lock().unwrap();
    let Some(app) = app.as_ref().filter(|a| id.parse() == Ok(a.installation)) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Ok(key) = DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes()) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bad test key");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.required_spec_claims = ["exp"].into_iter().map(String::from).collect();
    let claims = decode::<Value>(jwt, &key, &validation);
    let issuer =
        claims.as_ref().ok().map(|c| c.claims["iss"].to_string().trim_matches('"').to_string());
    if issuer != Some(app.id.to_string()) {
        let why = claims.err().map(|e| e.to_string()).unwrap_or_else(|| "wrong issuer".into());
        return error(
            StatusCode::UNAUTHORIZED,
            &format!("A JSON web token could not be decoded ({why})"),
        );
    }
    let mut minted = shared.minted.lock().unwrap();
    let token = format!("ghs_installation_{}", minted.len() + 1);
    minted.push(token.clone());
    *shared.repo.lock().unwrap().requests.entry("access_token".into()).or_default() += 1;
    let body = json!({"token": token, "expires_at": "2099-01-01T00:00:00Z", "permissions": {"secrets": "write"}});
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn any_delete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    let Some((scope, rest)) = scope_of(&path) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Some(r) = admit(&shared, &headers, "delete") {
        return r;
    }
    let key = (scope, rest.trim_start_matches('/').to_ascii_uppercase());
    match shared.repo.lock().unwrap().secrets.remove(&key) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

impl FakeGithub {
    /// Starts a server that accepts `token`.
    pub fn start(token: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let key = SecretKey::generate(&mut crypto_box::aead::OsRng);
        let shared = Arc::new(Shared {
            token: token.into(),
            app: Mutex::new(None),
            minted: Mutex::new(Vec::new()),
            key,
            repo: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/{*path}", get(any_get).put(any_put).delete(any_delete).post(any_post))
            .with_state(shared.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url, shared, _runtime: runtime }
    }

    /// Secret name → the plaintext vss sealed, in `scope` (e.g. `repos/acme/app/actions`,
    /// `repos/acme/app/environments/prod`, `orgs/acme/actions`).
    pub fn plaintexts(&self, scope: &str) -> BTreeMap<String, String> {
        let repo = self.shared.repo.lock().unwrap();
        repo.secrets
            .iter()
            .filter(|((s, _), _)| s == scope)
            .map(|((_, n), s)| (n.clone(), s.plaintext.clone()))
            .collect()
    }

    /// An organization secret's `visibility` and `selected_repository_ids`, as sent.
    pub fn details(&self, scope: &str, name: &str) -> Value {
        let repo = self.shared.repo.lock().unwrap();
        repo.secrets[&(scope.to_string(), name.to_string())].details.clone()
    }

    /// The id this server gives repository `owner/repo`.
    pub fn repository_id(owner: &str, repo: &str) -> u64 {
        repository_id(&format!("repos/{owner}/{repo}"))
    }

    /// Creates a secret in `scope` as someone else would.
    pub fn put(&self, scope: &str, name: &str, plaintext: &str) {
        let mut repo = self.shared.repo.lock().unwrap();
        repo.clock += 1;
        let now = timestamp(repo.clock);
        let stored = Stored {
            plaintext: plaintext.into(),
            created_at: now.clone(),
            updated_at: now,
            details: Value::Null,
        };
        repo.secrets.insert((scope.into(), name.into()), stored);
    }

    /// Requests answered so far for `operation` (`list`, `get`, `put`, `delete`, `key`,
    /// `throttled`).
    pub fn requests(&self, operation: &str) -> usize {
        self.shared.repo.lock().unwrap().requests.get(operation).copied().unwrap_or(0)
    }

    /// Registers GitHub App `id`, installed as `installation`, whose JWTs verify with
    /// `public_key_pem`.
    pub fn install_app(&self, id: u64, installation: u64, public_key_pem: &str) {
        let app = App { id, installation, public_key_pem: public_key_pem.into() };
        *self.shared.app.lock().unwrap() = Some(app);
    }

    /// Refuses the next `n` requests as rate-limited.
    pub fn throttle(&self, n: usize) {
        self.shared.repo.lock().unwrap().throttle = n;
    }
}
