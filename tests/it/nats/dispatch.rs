//! Runs dispatched to workers: the same report as an in-process run, and nothing secret on
//! the wire.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use vss_protocol::job::{Job, JobResult};
use vss_tests::servers::Nats;

use super::{logs, tree, workers};
use crate::{THREE_LEVELS, three_levels};

#[test]
fn nats_run_reports_exactly_what_an_in_process_run_reports() {
    let nats = Nats::start();
    let (local, remote) = (three_levels(), three_levels());
    // One hash key for both, so their reports' hashes compare.
    for ws in [&local, &remote] {
        ws.config(&format!("{THREE_LEVELS}hash_key: {{ file: hash.key }}\n"));
        ws.write("hash.key", "a shared hash key");
    }
    let _workers = workers(&remote, &nats, 2);

    let here = local.pipeline(&[]);
    let there = remote.pipeline(&["--nats", &nats.url]);
    assert_eq!(here.code, 0, "{}", here.stderr);
    assert_eq!(there.code, 0, "{}\nworkers:\n{}", there.stderr, logs(&remote));
    assert_eq!(here.json(), there.json(), "the same report either way");
    assert_eq!(tree(&local.path().join("out")), tree(&remote.path().join("out")));

    // A source change, then nothing: both runs report as a local run would.
    for ws in [&local, &remote] {
        ws.secret("src/prod", "payments/key", json!({"key": "k2"}));
    }
    let here = local.pipeline(&["--exit-code"]);
    let there = remote.pipeline(&["--exit-code", "--nats", &nats.url]);
    assert_eq!((here.code, there.code), (1, 1), "{}", there.stderr);
    assert_eq!(here.json(), there.json());
    let unchanged = remote.pipeline(&["--exit-code", "--nats", &nats.url]);
    assert_eq!(unchanged.code, 0, "{}", unchanged.stdout);
    // Live workers keep their health files fresh.
    for i in 0..2 {
        let health = std::fs::metadata(remote.path().join(format!("worker-{i}.health"))).unwrap();
        assert!(health.modified().unwrap().elapsed().unwrap() < Duration::from_secs(30));
    }
}

#[tokio::test]
async fn nats_messages_carry_no_secret_values() {
    const CANARY: &str = "CANARY-nats-8e41";
    let nats = Nats::start();
    let ws = three_levels();
    for i in 0..5 {
        let value = json!({"password": format!("{CANARY}-{i}"), "list": [CANARY]});
        ws.secret("src/common", &format!("canary/s{i}"), value);
    }
    ws.secret("src/prod", "canary/s0", json!({"password": format!("{CANARY}-prod")}));
    let _workers = workers(&ws, &nats, 2);

    // Everything published on vss.> while the run goes, as any subscriber would see it.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut wire = client.subscribe("vss.>").await.unwrap();
    client.flush().await.unwrap();
    let url = nats.url.clone();
    let (ws, run) = tokio::task::spawn_blocking(move || {
        let run = ws.pipeline(&["--nats", &url]);
        (ws, run)
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);

    let (mut jobs, mut results) = (0, 0);
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), wire.next()).await
    {
        let text = String::from_utf8_lossy(&message.payload);
        assert!(!text.contains(CANARY), "canary on {}: {text}", message.subject);
        if message.subject.starts_with("vss.jobs.") {
            Job::decode(&message.payload).expect("a job");
            jobs += 1;
        } else if message.subject.starts_with("vss.results.") {
            JobResult::decode(&message.payload).expect("a result");
            results += 1;
        }
    }
    assert_eq!((jobs, results), (6, 6), "three merges and three syncs, each way");
    assert!(!logs(&ws).contains(CANARY), "canary in worker logs");
    assert!(!run.stdout.contains(CANARY) && !run.stderr.contains(CANARY));
}
