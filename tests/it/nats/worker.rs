//! One worker's handling of its deliveries: permanent and retryable failures, duplicates,
//! heartbeats that outlive AckWait, and a graceful stop.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use vss_protocol::job::{JobResult, Outcome};
use vss_tests::servers::{JsonServer, Moto, Nats};
use vss_tests::{Workspace, target};

use super::{
    assert_desired_once, aws_worker, aws_workspace, jetstream_ready, logs, only_job, started,
    workers,
};

#[test]
fn nats_permanent_failure_fails_that_target_only_and_exits_2() {
    let nats = Nats::start();
    let ws = Workspace::new();
    ws.config(
        "source: { file: { dir: src } }
targets:
  Good: { store: { file: { dir: out/good } } }
  Broken: { store: { file: { dir: blocker/out } } }
",
    );
    ws.write("blocker", "a file where a folder should be");
    ws.secret("src", "app/db", json!({"password": "p"}));
    let _workers = workers(&ws, &nats, 1);

    let run = ws.pipeline(&["--exit-code", "--continue-on-error", "--nats", &nats.url]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(target(&report, "Good")["status"], "ok", "{report:#}");
    let broken = target(&report, "Broken");
    assert_eq!(broken["status"], "failed", "{report:#}");
    assert!(broken["error"].as_str().unwrap().contains("target `Broken`"), "{report:#}");
    assert_eq!(ws.read_secret("out/good", "app/db"), Some(json!({"password": "p"})));
    // Failed for good on its first delivery: terminated, not retried.
    assert!(!logs(&ws).contains("redelivering"), "{}", logs(&ws));
}

#[tokio::test]
async fn nats_the_same_job_published_twice_runs_once() {
    let nats = Nats::start();
    let ws = Workspace::new();
    ws.config("source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } } }\n");
    ws.secret("src", "app/db", json!({"password": "p"}));
    let _workers = workers(&ws, &nats, 2);

    let job = only_job(&ws, "dup-run");
    let js = jetstream_ready(&nats).await;
    let mut acks = Vec::new();
    for _ in 0..2 {
        let message = jetstream::message::PublishMessage::build()
            .payload(job.encode().into())
            .message_id(format!("{}/{}", job.run_id, job.id));
        acks.push(js.send_publish("vss.jobs.sync", message).await.unwrap().await.unwrap());
    }
    assert_eq!((acks[0].duplicate, acks[1].duplicate), (false, true));

    // One result arrives; after a pause there is still only one.
    let mut results = js.get_stream("VSS_RESULTS").await.unwrap();
    let mut count = 0;
    for _ in 0..100 {
        count = results.info().await.unwrap().state.messages;
        if count > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((count, results.info().await.unwrap().state.messages), (1, 1), "{}", logs(&ws));
    let message = results.get_last_raw_message_by_subject("vss.results.dup-run").await.unwrap();
    let result = JobResult::decode(&message.payload).unwrap();
    assert_eq!(result.outcome, Outcome::Succeeded);
    assert_eq!(result.summary().added, 1);
    assert_eq!(ws.read_secret("out", "app/db"), Some(json!({"password": "p"})));
    assert_eq!(logs(&ws).matches("job finished").count(), 1, "{}", logs(&ws));
}

#[test]
fn nats_a_job_longer_than_ack_wait_is_kept_alive_by_heartbeats() {
    let nats = Nats::start();
    // The source answers after 3.5 s: several AckWaits of 1 s. Without heartbeats the job
    // would be redelivered to the idle second worker meanwhile.
    let body = json!({"db": {"password": "p"}}).to_string();
    let delay = Duration::from_millis(3500);
    let server = JsonServer::start_delayed("x-key: k", vec![(200, "", body)], delay);
    let ws = Workspace::new();
    ws.config(&format!(
        "source: {{ http: {{ url: \"{}\", headers: {{ X-Key: {{ file: key }} }} }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }} }}
",
        server.url
    ));
    ws.write("key", "k");
    let _pool = [0, 1].map(|i| {
        let log = ws.path().join(format!("worker-{i}.log"));
        ws.spawn(&["worker", "--nats", &nats.url, "--concurrency", "1", "--ack-wait", "1"], &log)
    });
    let started_at = std::time::Instant::now();
    let run = ws.pipeline(&["--nats", &nats.url]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, logs(&ws));
    assert!(started_at.elapsed() > delay, "the job outlived AckWait");
    assert_eq!(logs(&ws).matches("job started").count(), 1, "{}", logs(&ws));
    assert_eq!(server.requests(), 1, "the source was read once");
    assert_eq!(ws.read_secret("out", "db"), Some(json!({"password": "p"})));
}

#[test]
fn nats_a_retryable_failure_is_redelivered_and_then_succeeds() {
    let nats = Nats::start();
    // The source answers 503 to the first delivery's request and its five retries, then 200.
    let body = json!({"db": {"password": "p"}}).to_string();
    let mut responses = vec![(503, "", "{}".to_string()); 6];
    responses.push((200, "", body));
    let server = JsonServer::start("x-key: k", responses);
    let ws = Workspace::new();
    ws.config(&format!(
        "source: {{ http: {{ url: \"{}\", headers: {{ X-Key: {{ file: key }} }} }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }} }}
",
        server.url
    ));
    ws.write("key", "k");
    let log = ws.path().join("worker-0.log");
    let _worker = ws.spawn(&["worker", "--nats", &nats.url, "--max-deliver", "3"], &log);

    let run = ws.pipeline(&["--nats", &nats.url, "--exit-code"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, logs(&ws));
    assert_eq!(ws.read_secret("out", "db"), Some(json!({"password": "p"})));
    let logs = logs(&ws);
    assert_eq!(logs.matches("job started").count(), 2, "two deliveries: {logs}");
    assert_eq!(logs.matches("redelivering").count(), 1, "one nak: {logs}");
    assert_eq!(server.requests(), 7);
}

#[test]
fn nats_a_worker_stopped_with_sigterm_finishes_its_job_before_exiting() {
    let (nats, moto) = (Nats::start(), Moto::start());
    let ws = aws_workspace(&moto);
    let mut worker = aws_worker(&ws, &nats, 0);
    let (run, exit) = std::thread::scope(|s| {
        let run = s.spawn(|| ws.pipeline(&["--nats", &nats.url]));
        started(&ws, 1);
        let pid = worker.id().to_string();
        assert!(
            std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success()
        );
        let exit = worker.wait();
        (run.join().unwrap(), exit)
    });
    assert_eq!(exit, Some(0), "{}", logs(&ws));
    assert!(logs(&ws).contains("finishing in-flight jobs"), "{}", logs(&ws));
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, logs(&ws));
    // Finished by the stopping worker itself, in one go.
    assert_eq!(target(&run.json(), "T")["summary"]["added"], 500);
    assert_desired_once(&moto);
}
