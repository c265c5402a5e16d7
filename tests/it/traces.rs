//! OpenTelemetry traces, exported over OTLP/HTTP to a local collector: one trace per run,
//! whether its jobs run in-process or on workers across NATS.

use serde_json::json;
use vss_tests::Workspace;
use vss_tests::otlp::{Collector, Span};
use vss_tests::servers::Nats;

const CANARY: &str = "CANARY-trace-7741";

/// A three-level workspace with a canary value in one source.
fn workspace() -> Workspace {
    let ws = crate::three_levels();
    ws.secret("src/prod", "payments/key", json!({"key": CANARY}));
    ws
}

fn named<'a>(spans: &'a [Span], service: &str, name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.service == service && s.name == name).collect()
}

fn assert_no_values(collector: &Collector) {
    let bodies = collector.bodies();
    assert!(!bodies.is_empty(), "nothing exported");
    for body in bodies {
        assert!(!body.contains(CANARY), "a value reached a trace: {body}");
    }
}

#[test]
fn traces_an_in_process_run_is_one_trace_of_job_spans() {
    let collector = Collector::start();
    let ws = workspace();
    let mut env = collector.env();
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = ws.run_env(&["pipeline", "--config", "vss.yaml", "--output", "json"], &env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    let spans = collector.spans();
    let roots = named(&spans, "vss", "run");
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0];
    assert!(root.parent_span_id.is_empty(), "the run is the trace's root");
    let run_id = root.attributes["run_id"].as_str().unwrap_or_default();
    assert_eq!(run_id.len(), 36, "the run's id: {:?}", root.attributes);
    let jobs = named(&spans, "vss", "job");
    assert_eq!(jobs.len(), 6, "3 merges and 3 syncs: {spans:#?}");
    for job in &jobs {
        assert_eq!((&job.trace_id, &job.parent_span_id), (&root.trace_id, &root.span_id));
    }
    // Store calls are spans of their job, named by operation and store.
    let calls = named(&spans, "vss", "store");
    let production = jobs.iter().find(|j| j.attributes["job"] == "sync:Production").unwrap();
    let writes: Vec<_> = calls
        .iter()
        .filter(|c| c.parent_span_id == production.span_id && c.attributes["operation"] == "apply")
        .collect();
    assert_eq!(writes.len(), 1, "{calls:#?}");
    assert_eq!(writes[0].attributes["secrets"], "3", "{:?}", writes[0].attributes);
    assert!(writes[0].attributes["store"].as_str().unwrap().starts_with("file:"));
    let common = calls.iter().find(|c| {
        c.attributes["operation"] == "list"
            && c.attributes["store"].as_str().unwrap().ends_with("src/common")
    });
    assert_eq!(common.expect("the listing of a source").attributes["secrets"], "2");
    assert!(collector.content_types().iter().all(|t| t.starts_with("application/json")));

    // A failing job exports its error, never the value that made it fail.
    ws.write("src/prod/broken.json", &format!("{{\"key\": \"{CANARY}"));
    let failed = ws.run_env(&["pipeline", "--config", "vss.yaml", "--output", "json"], &env);
    assert_eq!(failed.code, 2, "{}\n{}", failed.stdout, failed.stderr);
    let spans = collector.spans();
    assert_eq!(named(&spans, "vss", "run").len(), 2);
    assert_no_values(&collector);
}

#[test]
fn traces_cross_nats_from_the_coordinator_to_the_workers() {
    let (nats, collector) = (Nats::start(), Collector::start());
    let ws = workspace();
    let env = collector.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = ws.path().join("worker.log");
    let mut worker =
        ws.spawn_env(&["worker", "--nats", &nats.url, "--concurrency", "2"], &log, &env);
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json", "--nats", &nats.url],
        &env,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // A worker stopped with SIGTERM exports what it still holds before exiting.
    let pid = worker.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let worker_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(worker.wait(), Some(0), "{}", worker_log());

    let spans = collector.spans();
    let roots = named(&spans, "vss", "run");
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0];
    let deliveries = named(&spans, "vss-worker", "delivery");
    assert_eq!(deliveries.len(), 6, "one per job: {spans:#?}");
    for delivery in &deliveries {
        assert_eq!(delivery.trace_id, root.trace_id, "the worker joined the run's trace");
        assert_eq!(delivery.parent_span_id, root.span_id);
    }
    let jobs = named(&spans, "vss-worker", "job");
    assert_eq!(jobs.len(), 6);
    for job in jobs {
        assert!(deliveries.iter().any(|d| d.span_id == job.parent_span_id), "{job:?}");
        assert_eq!(job.trace_id, root.trace_id);
    }
    let types = collector.content_types();
    assert!(types.iter().all(|t| t.starts_with("application/x-protobuf")), "{types:?}");
    assert_no_values(&collector);
}

#[test]
fn traces_an_unreachable_collector_is_a_logged_warning_not_a_failure() {
    let ws = workspace();
    // Bound but not listening: connections are refused for as long as the test runs.
    let port = vss_tests::servers::ClosedPort::new();
    let closed = format!("http://127.0.0.1:{}", port.port);
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", closed.as_str())],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("ExportError"), "{}", run.stderr);
}
