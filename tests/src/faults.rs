//! A fault-injecting HTTP proxy to put between vss and a server (OpenBao, moto, the local API
//! servers): it forwards every request, except those a fault plan picks, which get a
//! throttling answer, a server error, a broken body, a stall or a delay instead. Faults are
//! picked by rate (every n-th request, deterministic) or by schedule (a window of time).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

/// What a faulted request gets instead of the server's answer.
#[derive(Clone, Debug)]
pub enum Fault {
    /// An answer with this status, `Retry-After` (seconds) and body: 429 or 503 as a
    /// rate-limiting server sends them, or AWS's throttling error.
    Status {
        /// The HTTP status.
        status: u16,
        /// `Retry-After`, in seconds.
        retry_after: Option<u64>,
        /// `Content-Type` and body.
        body: (&'static str, String),
    },
    /// Headers, then a body that breaks off: the connection was reset mid-answer.
    Reset,
    /// No answer at all (until the client gives up).
    Stall,
    /// The real answer, this much later.
    Delay(Duration),
}

impl Fault {
    /// `429 Too Many Requests` with `Retry-After: 0`.
    pub fn too_many_requests() -> Self {
        Fault::Status {
            status: 429,
            retry_after: Some(0),
            body: ("application/json", r#"{"errors":["rate limit quota exceeded"]}"#.into()),
        }
    }

    /// `503 Service Unavailable`.
    pub fn unavailable() -> Self {
        Fault::Status { status: 503, retry_after: None, body: ("text/plain", "down".into()) }
    }

    /// AWS's throttling error, as Secrets Manager (JSON protocol) sends it.
    pub fn aws_throttling() -> Self {
        Fault::Status {
            status: 400,
            retry_after: None,
            body: (
                "application/x-amz-json-1.1",
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.into(),
            ),
        }
    }
}

/// When faults happen.
#[derive(Clone, Debug, Default)]
struct Plan {
    /// Every n-th request (1-based: n, 2n, ...) gets the fault.
    every: Option<(usize, Fault)>,
    /// Every request inside the window gets the fault: it opens `after` the first request
    /// that comes once it is set, and lasts `lasting`.
    window: Option<Window>,
}

#[derive(Clone, Debug)]
struct Window {
    after: Duration,
    lasting: Duration,
    opens: Option<Instant>,
    fault: Fault,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    plan: Mutex<Plan>,
    made: AtomicUsize,
    faulted: AtomicUsize,
}

/// The proxy; it stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: point vss here instead of the server.
    pub url: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// A proxy in front of `upstream` (e.g. `http://127.0.0.1:8200`), injecting nothing yet.
    pub fn start(upstream: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().build().unwrap(),
            plan: Mutex::new(Plan::default()),
            made: AtomicUsize::new(0),
            faulted: AtomicUsize::new(0),
        });
        let app = axum::Router::new().fallback(forward).with_state(shared.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url, shared, _runtime: runtime }
    }

    /// Every `n`-th request from now on gets `fault` (n = 4: 25%).
    pub fn every(&self, n: usize, fault: Fault) {
        self.shared.plan.lock().unwrap().every = Some((n.max(1), fault));
    }

    /// Every request from `after` the next request on, for `lasting`, gets `fault` (timed
    /// from vss's first call, so a slow start does not eat the window).
    pub fn window(&self, after: Duration, lasting: Duration, fault: Fault) {
        let window = Window { after, lasting, opens: None, fault };
        self.shared.plan.lock().unwrap().window = Some(window);
    }

    /// No more faults.
    pub fn clear(&self) {
        *self.shared.plan.lock().unwrap() = Plan::default();
    }

    /// Requests received so far.
    pub fn made(&self) -> usize {
        self.shared.made.load(Ordering::SeqCst)
    }

    /// Requests that got a fault (a delayed one included).
    pub fn faulted(&self) -> usize {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// Starts counting afresh.
    pub fn reset_counts(&self) {
        self.shared.made.store(0, Ordering::SeqCst);
        self.shared.faulted.store(0, Ordering::SeqCst);
    }
}

/// The fault for the request numbered `n` (1-based), if any.
fn pick(shared: &Shared, n: usize) -> Option<Fault> {
    let mut plan = shared.plan.lock().unwrap();
    let now = Instant::now();
    if let Some(window) = plan.window.as_mut() {
        let opens = *window.opens.get_or_insert(now + window.after);
        if (opens..opens + window.lasting).contains(&now) {
            return Some(window.fault.clone());
        }
    }
    match &plan.every {
        Some((every, fault)) if n.is_multiple_of(*every) => Some(fault.clone()),
        _ => None,
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let n = shared.made.fetch_add(1, Ordering::SeqCst) + 1;
    let fault = pick(&shared, n);
    if fault.is_some() {
        shared.faulted.fetch_add(1, Ordering::SeqCst);
    }
    match fault {
        Some(Fault::Status { status, retry_after, body }) => {
            let mut response = Response::new(Body::from(body.1));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            let headers = response.headers_mut();
            headers.insert("content-type", HeaderValue::from_static(body.0));
            if let Some(secs) = retry_after {
                headers.insert("retry-after", HeaderValue::from(secs));
            }
            return response;
        }
        Some(Fault::Reset) => {
            let broken = futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::other("connection reset"))
            });
            return Response::new(Body::from_stream(broken));
        }
        Some(Fault::Stall) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    relay(&shared, request).await
}

/// Sends the request on to the server and its answer back.
async fn relay(shared: &Shared, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            headers.insert(name.clone(), value.clone());
        }
    }
    let sent = shared
        .client
        .request(parts.method.clone(), format!("{}{path}", shared.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(answer) = sent else {
        let mut response = Response::new(Body::from("upstream unreachable"));
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        return response;
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            response.headers_mut().insert(HeaderName::from(name), value.clone());
        }
    }
    response
}
