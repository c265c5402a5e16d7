//! Things going wrong around a run: an expired deadline, a worker killed mid-job, the server
//! restarted, the coordinator killed and resumed.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use vss_protocol::job::{Job, JobResult, Outcome};
use vss_tests::otlp::Collector;
use vss_tests::servers::{Moto, Nats};
use vss_tests::{Workspace, target};

use super::{
    assert_desired_once, aws_worker, aws_workspace, jetstream_ready, logs, only_job, started,
    workers,
};

#[tokio::test]
async fn nats_a_job_past_its_deadline_is_never_run() {
    let nats = Nats::start();
    let ws = Workspace::new();
    ws.config("source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } } }\n");
    ws.secret("src", "app/db", json!({"password": "p"}));
    let _workers = workers(&ws, &nats, 1);
    let job = Job { deadline: Some(1), ..only_job(&ws, "late-run") };
    let js = jetstream_ready(&nats).await;
    let message = jetstream::message::PublishMessage::build().payload(job.encode().into());
    js.send_publish("vss.jobs.sync", message).await.unwrap().await.unwrap();
    let results = js.get_stream("VSS_RESULTS").await.unwrap();
    let mut result = None;
    for _ in 0..100 {
        if let Ok(m) = results.get_last_raw_message_by_subject("vss.results.late-run").await {
            result = Some(JobResult::decode(&m.payload).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = result.expect("a result");
    let Outcome::Failed { error, retryable } = &result.outcome else { panic!("{result:?}") };
    assert!(error.contains("expired before a worker took it") && !retryable, "{error}");
    assert!(!logs(&ws).contains("job started"), "{}", logs(&ws));
    assert_eq!(ws.read_secret("out", "app/db"), None);
}

#[test]
fn nats_a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing() {
    let (nats, moto) = (Nats::start(), Moto::start());
    let ws = aws_workspace(&moto);
    let mut pool = [aws_worker(&ws, &nats, 0), aws_worker(&ws, &nats, 1)];
    let run = std::thread::scope(|s| {
        let run = s.spawn(|| ws.pipeline(&["--nats", &nats.url]));
        let busy = started(&ws, 2);
        std::thread::sleep(Duration::from_millis(800));
        pool[busy].kill();
        run.join().unwrap()
    });
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, logs(&ws));
    let report = run.json();
    let t = target(&report, "T");
    // The surviving worker's result is the only one: each secret counted once, as created
    // by the first worker or by the second.
    let (added, unchanged) = (t["summary"]["added"].as_u64(), t["summary"]["unchanged"].as_u64());
    assert_eq!(added.unwrap() + unchanged.unwrap(), 500, "{report:#}");
    assert!(unchanged.unwrap() > 0, "the killed worker had written some: {report:#}");
    assert_desired_once(&moto);
}

#[test]
fn nats_a_server_restart_mid_run_still_completes_the_run() {
    let (mut nats, moto) = (Nats::start(), Moto::start());
    let ws = aws_workspace(&moto);
    let _worker = aws_worker(&ws, &nats, 0);
    let url = nats.url.clone();
    let run = std::thread::scope(|s| {
        let run = s.spawn(|| ws.pipeline(&["--nats", &url]));
        started(&ws, 1);
        nats.restart();
        run.join().unwrap()
    });
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, logs(&ws));
    assert_eq!(target(&run.json(), "T")["summary"]["total"], 500);
    assert_desired_once(&moto);
}

#[test]
fn nats_a_restarted_coordinator_resumes_the_run() {
    let (nats, moto) = (Nats::start(), Moto::start());
    let ws = aws_workspace(&moto);
    let _worker = aws_worker(&ws, &nats, 0);
    let collector = Collector::start();
    let env = collector.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = ws.path().join("coordinator.log");
    let mut coordinator = ws.spawn_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json", "--nats", &nats.url],
        &log,
        &env,
    );
    started(&ws, 1);
    coordinator.kill();

    let list = ws.run(&["runs", "--nats", &nats.url, "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let line = list.stdout.lines().find(|l| l.contains("running")).expect("an unfinished run");
    let run_id = line.split_whitespace().next().unwrap();

    let resumed = ws.run_env(
        &[
            "pipeline",
            "--config",
            "vss.yaml",
            "--output",
            "json",
            "--nats",
            &nats.url,
            "--resume",
            run_id,
            "--exit-code",
        ],
        &env,
    );
    assert_eq!(resumed.code, 1, "changes were made: {}\n{}", resumed.stderr, logs(&ws));
    let t = target(&resumed.json(), "T").clone();
    assert_eq!(t["summary"]["added"], 500, "the worker's one result, replayed or awaited: {t:#}");
    assert_desired_once(&moto);
    let show = ws.run(&["runs", "--nats", &nats.url, "show", run_id]);
    let record: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(
        (record["status"].as_str(), record["finished_jobs"].as_u64()),
        (Some("finished"), Some(1))
    );
    // The resumed run continues the trace the killed coordinator started.
    let traceparent = record["traceparent"].as_str().expect("the run's trace context");
    let [_, trace_id, span_id, _] = traceparent.split('-').collect::<Vec<_>>()[..] else {
        panic!("not a traceparent: {traceparent}");
    };
    let spans = collector.spans();
    let runs: Vec<_> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(runs.len(), 1, "the killed coordinator exported nothing: {runs:#?}");
    assert_eq!((runs[0].trace_id.as_str(), runs[0].parent_span_id.as_str()), (trace_id, span_id));
}
