//! The `http` source against a local HTTP server.

use serde_json::json;
use vss_tests::servers::JsonServer;
use vss_tests::{Workspace, counts, target};

const AUTH: &str = "Bearer tok-canary-4411";

fn workspace(server: &JsonServer) -> Workspace {
    let ws = Workspace::new();
    ws.config(&format!(
        "merge_store: {{ file: {{ dir: merged }} }}
sources:
  vendor: {{ http: {{ url: \"{}\", headers: {{ Authorization: \"${{VENDOR_AUTH}}\" }}, timeout: 5 }} }}
targets:
  T: {{ imports: [vendor], store: {{ file: {{ dir: out }} }} }}
",
        server.url
    ));
    ws
}

#[test]
fn http_source_is_fetched_once_per_run_and_resyncs_without_writes() {
    let body = json!({"db": {"user": "u", "password": "canary-http-1"}, "token": "canary-http-2"})
        .to_string();
    let server = JsonServer::start(&format!("authorization: {AUTH}"), vec![(200, "", body)]);
    let ws = workspace(&server);
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[("VENDOR_AUTH", AUTH)],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(counts(&target(&run.json(), "T")["summary"]), (2, 0, 0, 0));
    assert_eq!(
        ws.read_secret("out", "db").unwrap(),
        json!({"user": "u", "password": "canary-http-1"})
    );
    assert_eq!(ws.read_secret("out", "token").unwrap(), json!({"value": "canary-http-2"}));
    assert_eq!(server.requests(), 1, "one GET per run");

    let before = ws.mtimes();
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[("VENDOR_AUTH", AUTH)],
    );
    assert_eq!(counts(&run.json()["summary"]), (0, 0, 0, 2));
    assert_eq!(ws.mtimes(), before, "versions are stable across runs: nothing rewritten");
    assert!(!run.stdout.contains("canary") && !run.stderr.contains("canary"));
}

#[test]
fn http_errors_are_clear_and_quote_nothing() {
    let server = JsonServer::start(
        &format!("authorization: {AUTH}"),
        vec![(200, "", "<html>canary-page</html>".into())],
    );
    let ws = workspace(&server);
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[("VENDOR_AUTH", AUTH)],
    );
    assert_eq!(run.code, 2);
    let error = run.json()["targets"][0]["error"].as_str().unwrap().to_string();
    assert!(error.contains("not a JSON object of secrets"), "{error}");
    assert!(!run.stdout.contains("canary") && !run.stderr.contains("canary"));

    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[("VENDOR_AUTH", "Bearer wrong-canary")],
    );
    assert_eq!(run.code, 2);
    assert!(run.stdout.contains("HTTP 401"), "{}", run.stdout);
    assert!(!run.stdout.contains("canary") && !run.stderr.contains("canary"));
}

#[test]
fn http_unavailability_is_retried_after_the_wait_asked() {
    let ok = json!({"s": {"k": 1}}).to_string();
    let server = JsonServer::start(
        &format!("authorization: {AUTH}"),
        vec![(503, "Retry-After: 1\r\n", "{}".into()), (200, "", ok)],
    );
    let ws = workspace(&server);
    let started = std::time::Instant::now();
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[("VENDOR_AUTH", AUTH)],
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(server.requests(), 2);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
}
