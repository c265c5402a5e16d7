//! A local GitHub REST API for repository Actions secrets, faithful to the public docs where
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
}

#[derive(Default)]
struct Repo {
    secrets: BTreeMap<String, Stored>,
    /// Requests answered by operation (`list`, `get`, `put`, `delete`, `key`, `throttled`).
    requests: BTreeMap<String, usize>,
    /// The next this many requests are refused as rate-limited.
    throttle: usize,
    /// Seconds since the fake epoch, advanced on every write (timestamps differ per write).
    clock: u64,
}

struct Shared {
    token: String,
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
    if token != Some(shared.token.as_str()) {
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

async fn public_key(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = admit(&shared, &headers, "key") {
        return r;
    }
    let key = BASE64.encode(shared.key.public_key().as_bytes());
    Json(json!({"key_id": KEY_ID, "key": key})).into_response()
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "list") {
        return r;
    }
    let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
    let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let per_page = per_page.clamp(1, 100);
    let repo = shared.repo.lock().unwrap();
    let secrets: Vec<Value> = repo
        .secrets
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|(name, s)| json!({"name": name, "created_at": s.created_at, "updated_at": s.updated_at}))
        .collect();
    Json(json!({"total_count": repo.secrets.len(), "secrets": secrets})).into_response()
}

async fn get_one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, name)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "get") {
        return r;
    }
    let repo = shared.repo.lock().unwrap();
    match repo.secrets.get(&name.to_ascii_uppercase()) {
        Some(s) => Json(json!({"name": name.to_ascii_uppercase(), "created_at": s.created_at, "updated_at": s.updated_at}))
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn put_one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, name)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "put") {
        return r;
    }
    if !valid_name(&name) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid name");
    }
    if body["key_id"].as_str() != Some(KEY_ID) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Bad key_id");
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
    let name = name.to_ascii_uppercase();
    match repo.secrets.get_mut(&name) {
        Some(s) => {
            s.plaintext = plaintext;
            s.updated_at = now;
            StatusCode::NO_CONTENT.into_response()
        }
        None => {
            let stored = Stored { plaintext, created_at: now.clone(), updated_at: now };
            repo.secrets.insert(name, stored);
            StatusCode::CREATED.into_response()
        }
    }
}

async fn delete_one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((_, _, name)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "delete") {
        return r;
    }
    match shared.repo.lock().unwrap().secrets.remove(&name.to_ascii_uppercase()) {
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
        let shared = Arc::new(Shared { token: token.into(), key, repo: Mutex::default() });
        let app = axum::Router::new()
            .route("/repos/{owner}/{repo}/actions/secrets/public-key", get(public_key))
            .route("/repos/{owner}/{repo}/actions/secrets", get(list))
            .route(
                "/repos/{owner}/{repo}/actions/secrets/{name}",
                get(get_one).put(put_one).delete(delete_one),
            )
            .with_state(shared.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url, shared, _runtime: runtime }
    }

    /// Secret name → the plaintext vss sealed.
    pub fn plaintexts(&self) -> BTreeMap<String, String> {
        let repo = self.shared.repo.lock().unwrap();
        repo.secrets.iter().map(|(n, s)| (n.clone(), s.plaintext.clone())).collect()
    }

    /// Creates a secret as someone else would.
    pub fn put(&self, name: &str, plaintext: &str) {
        let mut repo = self.shared.repo.lock().unwrap();
        repo.clock += 1;
        let now = timestamp(repo.clock);
        let stored =
            Stored { plaintext: plaintext.into(), created_at: now.clone(), updated_at: now };
        repo.secrets.insert(name.into(), stored);
    }

    /// Requests answered so far for `operation` (`list`, `get`, `put`, `delete`, `key`,
    /// `throttled`).
    pub fn requests(&self, operation: &str) -> usize {
        self.shared.repo.lock().unwrap().requests.get(operation).copied().unwrap_or(0)
    }

    /// Refuses the next `n` requests as rate-limited.
    pub fn throttle(&self, n: usize) {
        self.shared.repo.lock().unwrap().throttle = n;
    }
}
