//! A local GCP Secret Manager REST API (v1), faithful to the service where vss depends on it:
//! service-account auth (an RS256 self-signed JWT verified against the account's public key,
//! 401 `UNAUTHENTICATED` otherwise); `secrets` list (`pageSize` capped, `pageToken`), create
//! (`secretId` and label rules, `replication` required, 409 `ALREADY_EXISTS`), get, patch
//! (`updateMask` required, stale `etag` → 409 `ABORTED`), delete (`etag`); `:addVersion` (64 KiB
//! limit, `dataCrc32c` verified); versions get and `:access` by number or `latest` (a version
//! that is not `ENABLED` → 400 `FAILED_PRECONDITION`); enums as numbers when the client asks
//! for `$alt=json;enum-encoding=int`; int64 as strings; errors as `{"error": {code, message,
//! status}}`; and quota exhaustion (429 `RESOURCE_EXHAUSTED`) on demand. Tests reach it through
//! the store's `endpoint` and a service-account key in `GOOGLE_APPLICATION_CREDENTIALS`, as
//! production reaches Google.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// A version's state, as the API numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    /// Readable.
    Enabled = 1,
    /// Kept, not readable.
    Disabled = 2,
    /// Its payload is gone.
    Destroyed = 3,
}

impl VersionState {
    fn name(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
        }
    }
}

struct Version {
    state: VersionState,
    data: Vec<u8>,
    crc32c: u32,
}

#[derive(Default)]
struct Secret {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    etag: u64,
    /// Creation order: a secret created again is a different secret.
    created: u64,
    /// Version `n` is `versions[n - 1]`.
    versions: Vec<Version>,
}

#[derive(Default)]
struct Project {
    secrets: BTreeMap<String, Secret>,
    etags: u64,
    requests: BTreeMap<String, usize>,
    /// Write requests still to refuse with RESOURCE_EXHAUSTED.
    exhausted_writes: usize,
    /// The largest page the server returns, whatever the client asks.
    max_page: usize,
    /// Someone edits the secret's metadata just before the next delete arrives.
    rival_before_delete: bool,
    /// Someone edits the secret's metadata just before the next update arrives.
    rival_before_update: bool,
    /// The next AddSecretVersion is applied, then answered 503 (as a timed-out call).
    lose_next_add_response: bool,
    /// The bearer token of the latest request.
    last_token: String,
}

struct Shared {
    project: String,
    client_email: String,
    public_key_pem: String,
    state: Mutex<Project>,
}

/// The server; stopped when dropped.
pub struct FakeSecretManager {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

fn error(code: StatusCode, status: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code.as_u16(), "message": message, "status": status}});
    (code, Json(body)).into_response()
}

fn not_found(what: &str) -> Response {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("{what} not found or has no versions."))
}

fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// Checks the bearer token: a JWT the service account signed, for the cloud-platform scope.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    use octocrab::jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let key = DecodingKey::from_rsa_pem(shared.public_key_pem.as_bytes()).expect("a test key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.required_spec_claims = ["exp", "iss"].into_iter().map(String::from).collect();
    validation.validate_aud = false;
    validation.set_issuer(&[&shared.client_email]);
    match decode::<Value>(jwt, &key, &validation) {
        Ok(token)
            if token.claims["scope"].as_str().is_some_and(|s| s.contains("cloud-platform")) =>
        {
            None
        }
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        )),
    }
}

fn secret_json(project: &str, id: &str, secret: &Secret) -> Value {
    let mut body = json!({
        "name": format!("projects/{project}/secrets/{id}"),
        "replication": {"automatic": {}},
        "createTime": format!("2026-01-01T00:00:00.{:09}Z", secret.created),
        "etag": format!("\"{}\"", secret.etag),
    });
    if !secret.labels.is_empty() {
        body["labels"] = json!(secret.labels);
    }
    if !secret.annotations.is_empty() {
        body["annotations"] = json!(secret.annotations);
    }
    body
}

fn version_json(project: &str, id: &str, number: usize, version: &Version, ints: bool) -> Value {
    let state = if ints { json!(version.state as i32) } else { json!(version.state.name()) };
    json!({
        "name": format!("projects/{project}/secrets/{id}/versions/{number}"),
        "createTime": "2026-01-01T00:00:00Z",
        "state": state,
        "etag": format!("\"{number}-{}\"", version.state as i32),
        "clientSpecifiedPayloadChecksum": true,
    })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_labels(labels: &Value) -> bool {
    let ok = |s: &str| {
        s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    labels.as_object().is_none_or(|m| {
        m.iter().all(|(k, v)| {
            k.starts_with(|c: char| c.is_ascii_lowercase()) && ok(k) && v.as_str().is_some_and(ok)
        })
    })
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().into())).collect()
        })
        .unwrap_or_default()
}

/// Every request: authenticate, count, maybe refuse for quota, then route by method and path.
async fn route(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    Path(path): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(refused) = authenticate(&shared, &headers) {
        return refused;
    }
    let ints = query.get("$alt").is_some_and(|alt| alt.contains("enum-encoding=int"));
    let (resource, verb) = match path.rsplit_once(':') {
        Some((resource, verb)) if !verb.contains('/') => (resource, Some(verb)),
        _ => (path.as_str(), None),
    };
    let parts: Vec<&str> = resource.split('/').collect();
    let operation = match (&method, parts.as_slice(), verb) {
        (&Method::GET, ["projects", _, "secrets"], None) => "list_secrets",
        (&Method::POST, ["projects", _, "secrets"], None) => "create_secret",
        (&Method::GET, ["projects", _, "secrets", _], None) => "get_secret",
        (&Method::PATCH, ["projects", _, "secrets", _], None) => "update_secret",
        (&Method::DELETE, ["projects", _, "secrets", _], None) => "delete_secret",
        (&Method::POST, ["projects", _, "secrets", _], Some("addVersion")) => "add_version",
        (&Method::GET, ["projects", _, "secrets", _, "versions", _], None) => "get_version",
        (&Method::GET, ["projects", _, "secrets", _, "versions", _], Some("access")) => "access",
        _ => return error(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found."),
    };
    if parts[1] != shared.project {
        return error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            &format!("Permission denied on resource project {}.", parts[1]),
        );
    }
    let mut state = shared.state.lock().unwrap();
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    state.last_token = bearer.trim_start_matches("Bearer ").to_string();
    let writes = ["create_secret", "update_secret", "delete_secret", "add_version"];
    if writes.contains(&operation) && state.exhausted_writes > 0 {
        state.exhausted_writes -= 1;
        *state.requests.entry("exhausted".into()).or_default() += 1;
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Write requests' of service 'secretmanager.googleapis.com'.",
        );
    }
    *state.requests.entry(operation.into()).or_default() += 1;
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Invalid JSON payload.");
            }
        }
    };
    let project = shared.project.clone();
    match operation {
        "list_secrets" => {
            let asked: usize = query.get("pageSize").and_then(|s| s.parse().ok()).unwrap_or(0);
            if asked > 25_000 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "page_size must be at most 25000.",
                );
            }
            let size = if asked == 0 { 25_000 } else { asked }.min(state.max_page);
            let start: usize = match query.get("pageToken").filter(|t| !t.is_empty()) {
                None => 0,
                Some(token) => match token.strip_prefix("after-").and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "INVALID_ARGUMENT",
                            "Invalid page token.",
                        );
                    }
                },
            };
            let all: Vec<Value> =
                state.secrets.iter().map(|(id, s)| secret_json(&project, id, s)).collect();
            let page: Vec<Value> = all.iter().skip(start).take(size).cloned().collect();
            let mut response = json!({"totalSize": all.len()});
            if !page.is_empty() {
                response["secrets"] = json!(page);
            }
            if start + page.len() < all.len() {
                response["nextPageToken"] = json!(format!("after-{}", start + page.len()));
            }
            Json(response).into_response()
        }
        "create_secret" => {
            let id = query.get("secretId").cloned().unwrap_or_default();
            if !valid_id(&id) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "Secret id must match [a-zA-Z0-9_-]{1,255}.",
                );
            }
            if body["replication"].is_null() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "Secret.replication is required.",
                );
            }
            if !valid_labels(&body["labels"]) {
                return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Invalid label.");
            }
            if state.secrets.contains_key(&id) {
                return error(
                    StatusCode::CONFLICT,
                    "ALREADY_EXISTS",
                    &format!("Secret [projects/{project}/secrets/{id}] already exists."),
                );
            }
            state.etags += 1;
            let secret = Secret {
                labels: string_map(&body["labels"]),
                annotations: string_map(&body["annotations"]),
                etag: state.etags,
                created: state.etags,
                versions: Vec::new(),
            };
            let response = secret_json(&project, &id, &secret);
            state.secrets.insert(id, secret);
            Json(response).into_response()
        }
        "get_secret" => match state.secrets.get(parts[3]) {
            Some(secret) => Json(secret_json(&project, parts[3], secret)).into_response(),
            None => not_found(&format!("Secret [{resource}]")),
        },
        "update_secret" => {
            let Some(mask) = query.get("updateMask").filter(|m| !m.is_empty()) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "update_mask is required.",
                );
            };
            if !valid_labels(&body["labels"]) {
                return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Invalid label.");
            }
            state.etags += 1;
            let etag = state.etags;
            let rival = std::mem::take(&mut state.rival_before_update);
            let Some(secret) = state.secrets.get_mut(parts[3]) else {
                return not_found(&format!("Secret [{resource}]"));
            };
            if rival {
                secret.annotations.insert("edited-by".into(), "someone".into());
                secret.etag = etag;
            }
            if let Some(sent) = body["etag"].as_str().filter(|e| !e.is_empty())
                && sent != format!("\"{}\"", secret.etag)
            {
                return error(
                    StatusCode::CONFLICT,
                    "ABORTED",
                    "The etag provided in the request does not match the etag of the secret.",
                );
            }
            for field in mask.split(',') {
                match field {
                    "labels" => secret.labels = string_map(&body["labels"]),
                    "annotations" => secret.annotations = string_map(&body["annotations"]),
                    other => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "INVALID_ARGUMENT",
                            &format!("Unsupported update_mask path: {other}"),
                        );
                    }
                }
            }
            secret.etag = etag;
            Json(secret_json(&project, parts[3], secret)).into_response()
        }
        "delete_secret" => {
            if std::mem::take(&mut state.rival_before_delete) {
                state.etags += 1;
                let etag = state.etags;
                if let Some(secret) = state.secrets.get_mut(parts[3]) {
                    secret.annotations.insert("edited-by".into(), "someone".into());
                    secret.etag = etag;
                }
            }
            let Some(secret) = state.secrets.get(parts[3]) else {
                return not_found(&format!("Secret [{resource}]"));
            };
            if let Some(sent) = query.get("etag").filter(|e| !e.is_empty())
                && *sent != format!("\"{}\"", secret.etag)
            {
                return error(
                    StatusCode::CONFLICT,
                    "ABORTED",
                    "The etag provided in the request does not match the etag of the secret.",
                );
            }
            state.secrets.remove(parts[3]);
            Json(json!({})).into_response()
        }
        "add_version" => {
            let Some(secret) = state.secrets.get_mut(parts[3]) else {
                return not_found(&format!("Secret [{resource}]"));
            };
            let payload = &body["payload"];
            let Ok(data) = BASE64.decode(payload["data"].as_str().unwrap_or_default()) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "payload.data is not base64.",
                );
            };
            if data.len() > 64 * 1024 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    "Secret payload data must be no larger than 64KiB.",
                );
            }
            let sent_crc = match &payload["dataCrc32c"] {
                Value::String(s) => s.parse::<u64>().ok(),
                other => other.as_u64(),
            };
            if sent_crc.is_some_and(|crc| crc != u64::from(crc32c(&data))) {
                return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Checksum mismatch.");
            }
            let crc32c = crc32c(&data);
            secret.versions.push(Version { state: VersionState::Enabled, data, crc32c });
            if std::mem::take(&mut state.lose_next_add_response) {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "The service is currently unavailable.",
                );
            }
            let secret = &state.secrets[parts[3]];
            let number = secret.versions.len();
            Json(version_json(&project, parts[3], number, &secret.versions[number - 1], ints))
                .into_response()
        }
        "get_version" | "access" => {
            let Some(secret) = state.secrets.get(parts[3]) else {
                return not_found(&format!("Secret [projects/{project}/secrets/{}]", parts[3]));
            };
            let number = match parts[5] {
                "latest" => secret.versions.len(),
                n => n.parse().unwrap_or(0),
            };
            let Some(version) = number.checked_sub(1).and_then(|i| secret.versions.get(i)) else {
                return not_found(&format!("Secret Version [{resource}]"));
            };
            if operation == "get_version" {
                return Json(version_json(&project, parts[3], number, version, ints))
                    .into_response();
            }
            if version.state != VersionState::Enabled {
                let message = format!(
                    "Secret Version [projects/{project}/secrets/{}/versions/{number}] is in {} state.",
                    parts[3],
                    version.state.name()
                );
                return error(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", &message);
            }
            Json(json!({
                "name": format!("projects/{project}/secrets/{}/versions/{number}", parts[3]),
                "payload": {"data": BASE64.encode(&version.data), "dataCrc32c": version.crc32c.to_string()},
            }))
            .into_response()
        }
        _ => unreachable!("routed above"),
    }
}

impl FakeSecretManager {
    /// Starts a server for `project` that accepts JWTs `client_email` signed with the key whose
    /// public half is `public_key_pem`.
    pub fn start(project: &str, client_email: &str, public_key_pem: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            project: project.into(),
            client_email: client_email.into(),
            public_key_pem: public_key_pem.into(),
            state: Mutex::new(Project { max_page: 25_000, ..Project::default() }),
        });
        let app = axum::Router::new()
            .route("/v1/{*path}", axum::routing::any(route))
            .with_state(shared.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url, shared, _runtime: runtime }
    }

    /// Secret ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().secrets.keys().cloned().collect()
    }

    /// The latest version's payload and number, if the secret has one.
    pub fn latest(&self, id: &str) -> Option<(String, usize)> {
        let state = self.shared.state.lock().unwrap();
        let versions = &state.secrets.get(id)?.versions;
        let data = &versions.last()?.data;
        Some((String::from_utf8(data.clone()).unwrap(), versions.len()))
    }

    /// A secret's labels and annotations.
    pub fn metadata(
        &self,
        id: &str,
    ) -> Option<(BTreeMap<String, String>, BTreeMap<String, String>)> {
        let state = self.shared.state.lock().unwrap();
        state.secrets.get(id).map(|s| (s.labels.clone(), s.annotations.clone()))
    }

    /// Adds a version as someone else would (creating the secret, unlabelled, if needed).
    pub fn add_version(&self, id: &str, payload: &str) {
        let mut state = self.shared.state.lock().unwrap();
        state.etags += 1;
        let etag = state.etags;
        let secret = state.secrets.entry(id.into()).or_insert_with(|| Secret {
            etag,
            created: etag,
            ..Secret::default()
        });
        let data = payload.as_bytes().to_vec();
        let crc32c = crc32c(&data);
        secret.versions.push(Version { state: VersionState::Enabled, data, crc32c });
    }

    /// Creates a secret without any version, as someone else would.
    pub fn create_empty(&self, id: &str) {
        let mut state = self.shared.state.lock().unwrap();
        state.etags += 1;
        let etag = state.etags;
        state.secrets.insert(id.into(), Secret { etag, created: etag, ..Secret::default() });
    }

    /// Damages the checksum stored with `id`'s latest version, as a corrupted read would.
    pub fn corrupt_checksum(&self, id: &str) {
        let mut state = self.shared.state.lock().unwrap();
        let version = state.secrets.get_mut(id).unwrap().versions.last_mut().unwrap();
        version.crc32c ^= 1;
    }

    /// Sets the state of version `number` of `id`.
    pub fn set_state(&self, id: &str, number: usize, state: VersionState) {
        let mut project = self.shared.state.lock().unwrap();
        let version = &mut project.secrets.get_mut(id).unwrap().versions[number - 1];
        version.state = state;
        if state == VersionState::Destroyed {
            version.data.clear();
        }
    }

    /// Requests answered so far for `operation` (`list_secrets`, `create_secret`,
    /// `get_secret`, `update_secret`, `delete_secret`, `add_version`, `get_version`, `access`,
    /// `exhausted`).
    pub fn requests(&self, operation: &str) -> usize {
        self.shared.state.lock().unwrap().requests.get(operation).copied().unwrap_or(0)
    }

    /// Write requests so far (everything Secret Manager's write quota counts).
    pub fn writes(&self) -> usize {
        ["create_secret", "update_secret", "delete_secret", "add_version"]
            .iter()
            .map(|op| self.requests(op))
            .sum()
    }

    /// Refuses the next `n` write requests with RESOURCE_EXHAUSTED.
    pub fn exhaust_writes(&self, n: usize) {
        self.shared.state.lock().unwrap().exhausted_writes = n;
    }

    /// Makes someone edit the next secret vss deletes just before the delete arrives.
    pub fn rival_before_next_delete(&self) {
        self.shared.state.lock().unwrap().rival_before_delete = true;
    }

    /// Makes someone edit the next secret vss updates just before the update arrives.
    pub fn rival_before_next_update(&self) {
        self.shared.state.lock().unwrap().rival_before_update = true;
    }

    /// Applies the next AddSecretVersion but answers it 503, as a call that timed out.
    pub fn lose_next_add_response(&self) {
        self.shared.state.lock().unwrap().lose_next_add_response = true;
    }

    /// Deletes a secret as someone else would.
    pub fn delete(&self, id: &str) {
        self.shared.state.lock().unwrap().secrets.remove(id);
    }

    /// The bearer token of the latest request (to check it never reaches an output).
    pub fn last_token(&self) -> String {
        self.shared.state.lock().unwrap().last_token.clone()
    }

    /// Returns at most `n` secrets per page.
    pub fn max_page(&self, n: usize) {
        self.shared.state.lock().unwrap().max_page = n;
    }
}
