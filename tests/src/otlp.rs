//! A local OpenTelemetry collector: accepts OTLP/HTTP trace exports (`POST /v1/traces`, an
//! `ExportTraceServiceRequest` as protobuf or JSON, by `Content-Type`) and keeps every span
//! with its service name, so tests can follow a trace across processes.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// One exported span.
#[derive(Clone, Debug)]
pub struct Span {
    /// The exporting process's `service.name`.
    pub service: String,
    /// The span's name (`run`, `job`, `delivery`, …).
    pub name: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root.
    pub parent_span_id: String,
    /// Its attributes as `key → value` (values as exported, JSON).
    pub attributes: Value,
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    bodies: Vec<String>,
    content_types: Vec<String>,
}

/// The collector; stopped when dropped.
pub struct Collector {
    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub url: String,
    received: Arc<Mutex<Received>>,
    _runtime: tokio::runtime::Runtime,
}

fn attributes(list: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for kv in list.as_array().into_iter().flatten() {
        let key = kv["key"].as_str().unwrap_or_default().to_string();
        let value = kv["value"].as_object().and_then(|v| v.values().next().cloned());
        out.insert(key, value.unwrap_or(Value::Null));
    }
    Value::Object(out)
}

async fn traces(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    // Protobuf is read into the same JSON mapping the JSON protocol sends (hex ids).
    let body = if content_type.starts_with("application/x-protobuf") {
        match ExportTraceServiceRequest::decode(body.as_ref()) {
            Ok(request) => serde_json::to_string(&request).expect("the JSON mapping"),
            Err(_) => return (StatusCode::BAD_REQUEST, Json(json!({"message": "not OTLP"}))),
        }
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"message": "not OTLP JSON"})));
    };
    let mut received = received.lock().unwrap();
    for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
        let resource = attributes(&resource_spans["resource"]["attributes"]);
        let service = resource["service.name"].as_str().unwrap_or_default().to_string();
        for scope in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| span[k].as_str().unwrap_or_default().to_string();
                received.spans.push(Span {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    received.bodies.push(body);
    received.content_types.push(content_type.to_string());
    (StatusCode::OK, Json(json!({})))
}

impl Collector {
    /// Starts a collector on a free port.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .with_state(received.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url, received, _runtime: runtime }
    }

    /// The environment that makes a vss process export its traces here (with the default
    /// protocol). Batches are held for ten minutes, so whatever arrives was flushed as the
    /// process exited.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.url.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
        ]
    }

    /// The `Content-Type`s of the exports received so far.
    pub fn content_types(&self) -> Vec<String> {
        self.received.lock().unwrap().content_types.clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Every export request body received so far, as sent.
    pub fn bodies(&self) -> Vec<String> {
        self.received.lock().unwrap().bodies.clone()
    }
}
