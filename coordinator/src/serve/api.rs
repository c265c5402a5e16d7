//! The HTTP side of `vss serve`: `POST /v1/runs` (API calls, signed webhooks, GitHub
//! `push`/`ping` deliveries), `GET /v1/runs[/{id}]`, `GET /healthz`, `GET /readyz`. Bodies,
//! tokens and signatures are never logged.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::Server;
use super::auth::Caller;
use super::runs::{RunRequest, Submitted};

/// The routes.
pub(super) fn router(server: Arc<Server>) -> axum::Router {
    let limit = server.cfg.serve.max_body_bytes;
    axum::Router::new()
        .route("/v1/runs", post(trigger).get(list))
        .route("/v1/runs/{id}", get(show))
        .route("/v1/audit", get(audit_counts))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(server)
}

fn error(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn ready(State(server): State<Arc<Server>>) -> Response {
    if server.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready").into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn trigger(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(caller) = server.credentials.check(&headers, &body) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "a bearer token or a valid X-Hub-Signature-256 is required",
        );
    };
    let (trigger, request) = match header(&headers, "x-github-event") {
        Some(event) => match github_request(&server, event, &body) {
            Ok(Some(request)) => ("github:push", request),
            Ok(None) => return (StatusCode::OK, Json(json!({ "ignored": event }))).into_response(),
            Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
        },
        None => {
            let request = if body.iter().all(u8::is_ascii_whitespace) {
                RunRequest::default()
            } else {
                match serde_json::from_slice::<RunRequest>(&body) {
                    Ok(request) => request,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!("malformed run request: {e}"),
                        );
                    }
                }
            };
            (if caller == Caller::Webhook { "webhook" } else { "api" }, request)
        }
    };
    if let Some(unknown) =
        request.targets.iter().flatten().find(|t| !server.cfg.targets.contains_key(*t))
    {
        return error(StatusCode::BAD_REQUEST, &format!("unknown target `{unknown}`"));
    }
    if let Some(reason) = request.changes.as_ref().and_then(|c| bad_change(&server, c)) {
        return error(StatusCode::BAD_REQUEST, &reason);
    }
    let key = header(&headers, "x-github-delivery")
        .or_else(|| header(&headers, "idempotency-key"))
        .map(str::to_string);
    let mut request = request;
    // Recorded before it is acknowledged (`--nats`), so a restart does not lose it.
    if let Some(log) = &server.events
        && key.as_ref().is_none_or(|k| server.runs.replayed(k).is_none())
    {
        match log.record(trigger, &request).await {
            Ok(sequence) => {
                request.events.insert(sequence);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record a trigger");
                return error(StatusCode::SERVICE_UNAVAILABLE, "cannot record the trigger");
            }
        }
    }
    let submitted = server.runs.submit(trigger, request, key);
    let (status, how) = match &submitted {
        Submitted::New(_) => (StatusCode::ACCEPTED, "queued"),
        Submitted::Coalesced(_) => (StatusCode::ACCEPTED, "coalesced"),
        Submitted::Replayed(_) => (StatusCode::OK, "replayed"),
    };
    tracing::info!(run = %submitted.id(), trigger, how, "run requested");
    (status, Json(json!({ "id": submitted.id(), "status": how }))).into_response()
}

/// Why the changed names of a request cannot be run: an unknown source, or a name that is
/// empty, absolute or climbs out of its folder.
fn bad_change(server: &Server, changes: &vss_protocol::plan::Changes) -> Option<String> {
    if let Some(unknown) = changes.sources.keys().find(|s| !server.cfg.sources.contains_key(*s)) {
        return Some(format!("unknown source `{unknown}` in changes"));
    }
    let names = changes.sources.values().flatten().chain(&changes.source);
    let bad = |n: &&String| n.is_empty() || n.starts_with('/') || n.split('/').any(|s| s == "..");
    names
        .into_iter()
        .find(bad)
        .map(|n| format!("`{n}` is not a secret name (empty, absolute or with `..`)"))
}

/// A GitHub delivery: `push` on a configured ref → its targets; `ping` and other events,
/// or a ref nothing is configured for: nothing to run.
fn github_request(server: &Server, event: &str, body: &[u8]) -> Result<Option<RunRequest>, String> {
    if event != "push" {
        return Ok(None);
    }
    let push: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("malformed push delivery: {e}"))?;
    let git_ref = push.get("ref").and_then(|r| r.as_str()).ok_or("a push delivery has a `ref`")?;
    let mapping = &server.cfg.serve.github_push;
    let Some(targets) = mapping.get(git_ref).or_else(|| mapping.get("*")) else {
        return Ok(None);
    };
    let targets: BTreeSet<String> = targets.iter().cloned().collect();
    Ok(Some(RunRequest { targets: (!targets.is_empty()).then_some(targets), ..Default::default() }))
}

async fn audit_counts(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if server.credentials.check(&headers, b"") != Some(Caller::Token) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
    Json(&server.audit).into_response()
}

async fn list(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    if server.credentials.check(&headers, b"") != Some(Caller::Token) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
    Json(json!({ "runs": server.runs.list() })).into_response()
}

async fn show(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if server.credentials.check(&headers, b"") != Some(Caller::Token) {
        return error(StatusCode::UNAUTHORIZED, "a bearer token is required");
    }
    match server.runs.get(&id) {
        Some(run) => Json(run).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such run"),
    }
}
