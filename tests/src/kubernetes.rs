//! A local Kubernetes API for core/v1 Secrets in namespaces, faithful to the API where vss
//! depends on it: bearer-token auth (401), list with `labelSelector` (equality), `limit` and
//! `continue`; get; create (201, 409 AlreadyExists); replace with `resourceVersion` (409
//! Conflict on a stale one); delete with `preconditions.resourceVersion`; errors as `Status`
//! objects; and throttling (429 with `Retry-After`). Tests reach it through a kubeconfig, as
//! production does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

#[derive(Default)]
struct Cluster {
    /// (namespace, name) → the Secret object.
    secrets: BTreeMap<(String, String), Value>,
    resource_version: u64,
    requests: BTreeMap<String, usize>,
    throttle: usize,
    conflict_next_replace: bool,
}

struct Shared {
    token: String,
    cluster: Mutex<Cluster>,
}

/// The server; stopped when dropped.
pub struct FakeKubernetes {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn admit(shared: &Shared, headers: &HeaderMap, operation: &str) -> Option<Response> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth.strip_prefix("Bearer ") != Some(shared.token.as_str()) {
        return Some(status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"));
    }
    let mut cluster = shared.cluster.lock().unwrap();
    if cluster.throttle > 0 {
        cluster.throttle -= 1;
        *cluster.requests.entry("throttled".into()).or_default() += 1;
        let mut response =
            status(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "too many requests");
        response.headers_mut().insert("retry-after", "1".parse().unwrap());
        return Some(response);
    }
    *cluster.requests.entry(operation.into()).or_default() += 1;
    None
}

fn not_found(name: &str) -> Response {
    status(StatusCode::NOT_FOUND, "NotFound", &format!("secrets \"{name}\" not found"))
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(ns): UrlPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "list") {
        return r;
    }
    let selector: Vec<(String, String)> = query
        .get("labelSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let cluster = shared.cluster.lock().unwrap();
    let matching: Vec<&Value> = cluster
        .secrets
        .iter()
        .filter(|((n, _), _)| n == &ns)
        .map(|(_, s)| s)
        .filter(|s| selector.iter().all(|(k, v)| s["metadata"]["labels"][k].as_str() == Some(v)))
        .collect();
    let start: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(usize::MAX);
    let page: Vec<Value> = matching.iter().skip(start).take(limit).map(|s| (*s).clone()).collect();
    let mut metadata = json!({"resourceVersion": cluster.resource_version.to_string()});
    if start + page.len() < matching.len() {
        metadata["continue"] = json!((start + page.len()).to_string());
    }
    Json(json!({"kind": "SecretList", "apiVersion": "v1", "metadata": metadata, "items": page}))
        .into_response()
}

async fn get_one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "get") {
        return r;
    }
    match shared.cluster.lock().unwrap().secrets.get(&(ns, name.clone())) {
        Some(s) => Json(s.clone()).into_response(),
        None => not_found(&name),
    }
}

/// Stores `secret` under a fresh resourceVersion; returns it.
fn store(cluster: &mut Cluster, ns: &str, name: &str, mut secret: Value) -> Value {
    cluster.resource_version += 1;
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    secret["metadata"]["namespace"] = json!(ns);
    secret["metadata"]["resourceVersion"] = json!(cluster.resource_version.to_string());
    cluster.secrets.insert((ns.to_string(), name.to_string()), secret.clone());
    secret
}

async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(ns): UrlPath<String>,
    Json(secret): Json<Value>,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "create") {
        return r;
    }
    let Some(name) = secret["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    let mut cluster = shared.cluster.lock().unwrap();
    if cluster.secrets.contains_key(&(ns.clone(), name.clone())) {
        let message = format!("secrets \"{name}\" already exists");
        return status(StatusCode::CONFLICT, "AlreadyExists", &message);
    }
    (StatusCode::CREATED, Json(store(&mut cluster, &ns, &name, secret))).into_response()
}

async fn replace(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Json(secret): Json<Value>,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "replace") {
        return r;
    }
    let mut cluster = shared.cluster.lock().unwrap();
    let key = (ns.clone(), name.clone());
    let Some(current) = cluster.secrets.get(&key).cloned() else { return not_found(&name) };
    if std::mem::take(&mut cluster.conflict_next_replace) {
        // Someone else wrote first.
        store(&mut cluster, &ns, &name, current.clone());
    }
    let current_version = cluster.secrets[&key]["metadata"]["resourceVersion"].clone();
    let asked = &secret["metadata"]["resourceVersion"];
    if !asked.is_null() && asked != &current_version {
        let message = format!(
            "Operation cannot be fulfilled on secrets \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        );
        return status(StatusCode::CONFLICT, "Conflict", &message);
    }
    Json(store(&mut cluster, &ns, &name, secret)).into_response()
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = admit(&shared, &headers, "delete") {
        return r;
    }
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut cluster = shared.cluster.lock().unwrap();
    let key = (ns, name.clone());
    let Some(current) = cluster.secrets.get(&key) else { return not_found(&name) };
    let wanted = &options["preconditions"]["resourceVersion"];
    if !wanted.is_null() && wanted != &current["metadata"]["resourceVersion"] {
        let message = format!(
            "Precondition failed: ResourceVersion: Precondition failed on secrets \"{name}\""
        );
        return status(StatusCode::CONFLICT, "Conflict", &message);
    }
    cluster.secrets.remove(&key);
    Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}))
        .into_response()
}

impl FakeKubernetes {
    /// Starts a server that accepts `token`.
    pub fn start(token: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared { token: token.into(), cluster: Mutex::default() });
        let app = axum::Router::new()
            .route("/api/v1/namespaces/{ns}/secrets", get(list).post(create))
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                get(get_one).put(replace).delete(delete),
            )
            .with_state(shared.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url, shared, _runtime: runtime }
    }

    /// Writes a kubeconfig for this server to `path`.
    pub fn kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: vss\n  user:\n    token: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: vss\n    namespace: default\ncurrent-context: fake\n",
            self.url, self.shared.token
        );
        std::fs::write(path, text).unwrap();
    }

    /// The Secret `namespace/name`, as stored.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        let cluster = self.shared.cluster.lock().unwrap();
        cluster.secrets.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// A Secret's `data`, decoded.
    pub fn data(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let secret = self.secret(namespace, name)?;
        let data = secret["data"].as_object().cloned().unwrap_or_default();
        Some(
            data.into_iter()
                .map(|(k, v)| {
                    let bytes = BASE64.decode(v.as_str().unwrap_or_default()).unwrap();
                    (k, String::from_utf8(bytes).unwrap())
                })
                .collect(),
        )
    }

    /// Names of the Secrets in `namespace`.
    pub fn names(&self, namespace: &str) -> Vec<String> {
        let cluster = self.shared.cluster.lock().unwrap();
        cluster.secrets.keys().filter(|(n, _)| n == namespace).map(|(_, s)| s.clone()).collect()
    }

    /// Stores a Secret as someone else would (a new resourceVersion).
    pub fn put(&self, namespace: &str, secret: Value) {
        let mut cluster = self.shared.cluster.lock().unwrap();
        let name = secret["metadata"]["name"].as_str().unwrap().to_string();
        store(&mut cluster, namespace, &name, secret);
    }

    /// Requests answered so far for `operation` (`list`, `get`, `create`, `replace`,
    /// `delete`, `throttled`).
    pub fn requests(&self, operation: &str) -> usize {
        self.shared.cluster.lock().unwrap().requests.get(operation).copied().unwrap_or(0)
    }

    /// Refuses the next `n` requests with 429.
    pub fn throttle(&self, n: usize) {
        self.shared.cluster.lock().unwrap().throttle = n;
    }

    /// Makes the next replace meet a concurrent writer (409 after its version moved).
    pub fn conflict_on_next_replace(&self) {
        self.shared.cluster.lock().unwrap().conflict_next_replace = true;
    }
}
