//! `vss serve`: the run API over HTTP (bearer tokens, signed webhooks, GitHub deliveries),
//! idempotency, coalescing, body limits, reports equal to the CLI's, graceful shutdown.

use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use serde_json::{Value, json};
use vss_tests::servers::{JsonServer, OpenBao, ROOT_TOKEN};
use vss_tests::{Background, Workspace};

const TOKEN: &str = "api-token-canary";
const SECRET: &str = "hook-secret-canary";

struct Served {
    ws: Workspace,
    process: Background,
    url: String,
    client: reqwest::Client,
}

/// `vss serve` on a free port over `config` (a `serve:` block is appended).
async fn serve(ws: Workspace, config: &str) -> Served {
    serve_with(ws, config, &[], &[]).await
}

/// [`serve`] with more arguments and environment.
async fn serve_with(
    ws: Workspace,
    config: &str,
    extra: &[&str],
    extra_env: &[(&str, &str)],
) -> Served {
    ws.config(&format!(
        "{config}serve:\n  tokens: [\"${{VSS_API_TOKEN}}\"]\n  webhook_secrets: [{{ env: HOOK_SECRET }}]\n  github_push: {{ refs/heads/main: [T] }}\n  max_body_bytes: 4096\n"
    ));
    let log = ws.path().join("serve.log");
    let mut args = vec![
        "serve",
        "--config",
        "vss.yaml",
        "--listen",
        "127.0.0.1:0",
        "--reconcile-interval",
        "off",
    ];
    args.extend_from_slice(extra);
    let mut env = vec![("VSS_API_TOKEN", TOKEN), ("HOOK_SECRET", SECRET)];
    env.extend_from_slice(extra_env);
    let process = ws.spawn_env(&args, &log, &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.find(" address=").map(|at| at + 1) {
            let address: String =
                text[at + 8..].chars().take_while(|c| !c.is_whitespace()).collect();
            break format!("http://{address}");
        }
        assert!(Instant::now() < deadline, "serve did not start:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Served { ws, process, url, client: reqwest::Client::new() }
}

impl Served {
    async fn post(&self, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
        let mut request = self.client.post(format!("{}/v1/runs", self.url)).body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The run, once it finished.
    async fn finished(&self, id: &str) -> Value {
        for _ in 0..300 {
            let (_, run) = self.get(&format!("/v1/runs/{id}"), Some(TOKEN)).await;
            if run["status"] == "finished" || run["status"] == "failed" {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {id} did not finish");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.ws.path().join("serve.log")).unwrap_or_default()
    }
}

fn signature(secret: &str, body: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, body.as_bytes());
    format!("sha256={}", tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn files_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.secret("src", "app/db", json!({"password": "p"}));
    ws
}

const FILES: &str = "source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } } }\n  U: { store: { file: { dir: out-u } } }\n";

#[tokio::test]
async fn serve_runs_on_tokens_and_signed_webhooks_and_refuses_the_rest() {
    let served = serve(files_workspace(), FILES).await;
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(served.get("/healthz", None).await.0, 200);
    assert_eq!(served.get("/readyz", None).await.0, 200);

    assert_eq!(served.post(&[], "{}").await.0, 401);
    assert_eq!(served.post(&[("authorization", "Bearer wrong")], "{}").await.0, 401);
    assert_eq!(served.get("/v1/runs", None).await.0, 401);
    let body = r#"{"targets": ["T"]}"#;
    let bad = signature("another-secret", body);
    assert_eq!(served.post(&[("x-hub-signature-256", &bad)], body).await.0, 401);
    let (status, reason) = served.post(&[("authorization", &bearer)], "{not json").await;
    assert_eq!(status, 400, "{reason}");
    assert!(reason["error"].as_str().unwrap().starts_with("malformed run request"), "{reason}");
    let (status, reason) =
        served.post(&[("authorization", &bearer)], r#"{"targets": ["Nope"]}"#).await;
    assert_eq!((status, reason["error"].as_str()), (400, Some("unknown target `Nope`")));
    for changes in [r#"{"sources": {"nope": ["x"]}}"#, r#"{"source": ["app/../../etc"]}"#] {
        let body = format!(r#"{{"changes": {changes}}}"#);
        let (status, reason) = served.post(&[("authorization", &bearer)], &body).await;
        assert_eq!(status, 400, "{changes}: {reason}");
    }
    let oversize = format!(r#"{{"targets": ["{}"]}}"#, "x".repeat(5000));
    assert_eq!(served.post(&[("authorization", &bearer)], &oversize).await.0, 413);

    let signed = signature(SECRET, body);
    let (status, queued) = served.post(&[("x-hub-signature-256", &signed)], body).await;
    assert_eq!(status, 202, "{queued}");
    let run = served.finished(queued["id"].as_str().unwrap()).await;
    assert_eq!(run["trigger"], "webhook");
    assert_eq!(run["report"]["summary"]["added"], 1, "{run}");
    assert_eq!(served.ws.read_secret("out", "app/db"), Some(json!({"password": "p"})));
    assert_eq!(served.ws.read_secret("out-u", "app/db"), None, "only T was asked for");

    let log = served.log();
    for secret in [TOKEN, SECRET, &signed[7..], "\"targets\""] {
        assert!(!log.contains(secret), "`{secret}` logged:\n{log}");
    }
}

#[tokio::test]
async fn serve_reports_what_the_cli_reports_and_replays_deliveries() {
    let served = serve(files_workspace(), FILES).await;
    let bearer = format!("Bearer {TOKEN}");
    // A first run creates the ledger's hash key (a dry run alone would use a key of its own).
    let (_, first_run) = served.post(&[("authorization", bearer.as_str())], "").await;
    served.finished(first_run["id"].as_str().unwrap()).await;
    served.ws.secret("src", "app/db", json!({"password": "changed", "user": "u"}));
    let headers = [("authorization", bearer.as_str()), ("idempotency-key", "delivery-1")];
    let (status, first) = served.post(&headers, r#"{"dry_run": true}"#).await;
    assert_eq!(status, 202);
    let (status, again) = served.post(&headers, r#"{"dry_run": true}"#).await;
    assert_eq!(
        (status, &again["id"], again["status"].as_str()),
        (200, &first["id"], Some("replayed"))
    );
    let run = served.finished(first["id"].as_str().unwrap()).await;
    let args = ["pipeline", "--config", "vss.yaml", "--output", "json", "--dry-run"];
    let cli = served.ws.run_env(&args, &[("VSS_API_TOKEN", TOKEN)]);
    assert_eq!(run["report"], cli.json(), "the API's report is the CLI's");
    let (_, runs) = served.get("/v1/runs", Some(TOKEN)).await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "a replay runs nothing: {runs}");
    assert_eq!(run["report"]["summary"]["modified"], 2, "{run}");
}

#[tokio::test]
async fn serve_github_pushes_map_to_targets_and_pings_run_nothing() {
    let served = serve(files_workspace(), FILES).await;
    let served = &served;
    let post = |event: &'static str, body: String, delivery: &'static str| {
        let signed = signature(SECRET, &body);
        async move {
            let headers = [
                ("x-github-event", event),
                ("x-github-delivery", delivery),
                ("x-hub-signature-256", signed.as_str()),
            ];
            served.post(&headers, &body).await
        }
    };
    let (status, ping) = post("ping", r#"{"zen": "hi"}"#.into(), "d-1").await;
    assert_eq!((status, &ping["ignored"]), (200, &json!("ping")));
    let (status, other) = post("push", r#"{"ref": "refs/heads/feature"}"#.into(), "d-2").await;
    assert_eq!((status, &other["ignored"]), (200, &json!("push")));
    let (status, queued) = post("push", r#"{"ref": "refs/heads/main"}"#.into(), "d-3").await;
    assert_eq!(status, 202, "{queued}");
    let run = served.finished(queued["id"].as_str().unwrap()).await;
    assert_eq!(
        (run["trigger"].as_str(), &run["request"]["targets"]),
        (Some("github:push"), &json!(["T"]))
    );
    assert_eq!(served.ws.read_secret("out-u", "app/db"), None);
    let (status, malformed) = post("push", "{}".into(), "d-4").await;
    assert_eq!(status, 400, "{malformed}");
}

#[tokio::test]
async fn serve_coalesces_triggers_that_wait_and_stops_cleanly_on_sigterm() {
    // A source that takes a second to answer keeps the first run busy.
    let body = json!({"db": {"password": "p"}}).to_string();
    let slow = JsonServer::start_delayed("x-key: k", vec![(200, "", body)], Duration::from_secs(1));
    let ws = Workspace::new();
    ws.write("key", "k");
    let config = format!(
        "source: {{ http: {{ url: \"{}\", headers: {{ X-Key: {{ file: key }} }} }} }}\ntargets:\n  T: {{ store: {{ file: {{ dir: out }} }} }}\n  U: {{ store: {{ file: {{ dir: out-u }} }} }}\n",
        slow.url
    );
    let mut served = serve(ws, &config).await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let (_, running) = served.post(&auth, r#"{"targets": ["T"]}"#).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, second) = served.post(&auth, r#"{"targets": ["T"]}"#).await;
    let (_, third) = served.post(&auth, r#"{"targets": ["U"]}"#).await;
    assert_eq!(second["status"], "queued");
    assert_eq!((&third["id"], third["status"].as_str()), (&second["id"], Some("coalesced")));
    assert_ne!(running["id"], second["id"]);
    let merged = served.finished(second["id"].as_str().unwrap()).await;
    assert_eq!(merged["request"]["targets"], json!(["T", "U"]));
    assert_eq!(served.ws.read_secret("out-u", "db"), Some(json!({"password": "p"})));
    assert_eq!(slow.requests(), 2, "two runs for three triggers");

    let pid = served.process.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(served.process.wait(), Some(0), "{}", served.log());
}

/// The address a log line gives after `marker`.
fn address_after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    Some(text[at..].chars().take_while(|c| !c.is_whitespace()).collect())
}

#[tokio::test]
async fn serve_vault_audit_events_resync_the_targets_that_read_them() {
    // OpenBao connects to its audit socket at start: through a relay that vss joins later.
    let relay = vss_tests::relay::Relay::start();
    let hcl = format!(
        "audit \"socket\" \"vss\" {{\n  options {{\n    address = \"{}\"\n    socket_type = \"tcp\"\n  }}\n}}\n",
        relay.address
    );
    let bao = OpenBao::start_with_config(Some(&hcl));
    let config = format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: VSS_TEST_VAULT_TOKEN }} }} }}\nmerge_store: {{ file: {{ dir: merged }} }}\nsources:\n  app: {{ vault: {{ path: secret/src/app }} }}\n  other: {{ vault: {{ path: secret/src/other }} }}\ntargets:\n  T: {{ imports: [app], store: {{ file: {{ dir: out }} }} }}\n  Child: {{ inherits: T, store: {{ file: {{ dir: out-child }} }} }}\n  U: {{ imports: [other], store: {{ file: {{ dir: out-u }} }} }}\n",
        bao.address
    );
    let extra = ["--audit-listen", "127.0.0.1:0"];
    let env = [("VSS_TEST_VAULT_TOKEN", ROOT_TOKEN)];
    let served = serve_with(Workspace::new(), &config, &extra, &env).await;
    let audit =
        address_after(&served.log(), "audit_address=").expect("the audit address is logged");
    relay.forward_to(&audit);

    bao.put("src/app/db", &json!({"password": "p1"}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while served.ws.read_secret("out-child", "db").is_none() {
        assert!(Instant::now() < deadline, "no resync:\n{}", served.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served.ws.read_secret("out", "db"), Some(json!({"password": "p1"})));
    assert_eq!(served.ws.read_secret("out-u", "db"), None, "U does not read that path");
    let (_, runs) = served.get("/v1/runs", Some(TOKEN)).await;
    let runs = runs["runs"].as_array().unwrap().clone();
    assert!(runs.iter().all(|r| r["trigger"] == "audit"), "{runs:?}");
    assert!(runs.iter().all(|r| r["request"]["targets"] == json!(["Child", "T"])), "{runs:?}");

    // A write nothing reads starts no run; a stranger's garbage is counted, not fatal.
    bao.put("unrelated/x", &json!({"k": "v"}));
    let mut garbage = tokio::net::TcpStream::connect(&audit).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"not json\n{\"type\": 1}\n").await.unwrap();
    drop(garbage);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, counts) = served.get("/v1/audit", Some(TOKEN)).await;
    assert!(counts["malformed"].as_u64().unwrap() >= 1, "{counts}");
    let (_, after) = served.get("/v1/runs", Some(TOKEN)).await;
    assert_eq!(
        after["runs"].as_array().unwrap().len(),
        runs.len(),
        "no run for an unrelated write"
    );
    bao.put("src/app/db", &json!({"password": "p2"}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while served.ws.read_secret("out", "db") != Some(json!({"password": "p2"})) {
        assert!(Instant::now() < deadline, "the listener stopped after garbage:\n{}", served.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_runs_a_failed_target_again_until_it_lands() {
    let ws = files_workspace();
    // A file where the target folder should be: every write there fails until it is gone.
    ws.write("out", "in the way");
    let served = serve(ws, FILES).await;
    let bearer = format!("Bearer {TOKEN}");
    let (_, queued) =
        served.post(&[("authorization", bearer.as_str())], r#"{"targets": ["T"]}"#).await;
    let first = served.finished(queued["id"].as_str().unwrap()).await;
    assert_eq!(first["report"]["targets"][0]["status"], "failed", "{first}");
    std::fs::remove_file(served.ws.path().join("out")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while served.ws.read_secret("out", "app/db").is_none() {
        assert!(Instant::now() < deadline, "never retried:\n{}", served.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, runs) = served.get("/v1/runs", Some(TOKEN)).await;
    assert!(runs["runs"].as_array().unwrap().iter().any(|r| r["trigger"] == "retry"), "{runs}");
}
