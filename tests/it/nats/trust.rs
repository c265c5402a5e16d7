//! What a worker trusts and what it can read: a store allow-list, and version skew in a
//! fleet (jobs a worker cannot read answered at once, runs refused that the fleet cannot run).

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use vss_protocol::job::{JobResult, Outcome};
use vss_tests::servers::Nats;
use vss_tests::{Workspace, target};

use super::{jetstream_ready, logs, only_job, workers};

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.config("source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } } }\n");
    ws.secret("src", "app/db", json!({"password": "p"}));
    ws
}

#[test]
fn nats_a_worker_refuses_stores_outside_its_allow_list() {
    let nats = Nats::start();
    let ws = workspace();
    let root = ws.path().display().to_string();
    let only_out = format!("file:{root}/out");
    let log = ws.path().join("worker-0.log");
    let args =
        ["worker", "--nats", &nats.url, "--allow-store", &only_out, "--allow-store", "state:*"];
    let worker = ws.spawn(&args, &log);
    let refused = ws.pipeline(&["--nats", &nats.url]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    let t = target(&refused.json(), "T").clone();
    let error = t["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("`file:{root}/src` is not in this worker's allow-list")),
        "{error}"
    );
    assert_eq!(ws.read_secret("out", "app/db"), None, "nothing ran");
    assert!(!logs(&ws).contains("job started"), "{}", logs(&ws));
    drop(worker);

    let everything_here = format!("file:{root}/*");
    let args = [
        "worker",
        "--nats",
        &nats.url,
        "--allow-store",
        &everything_here,
        "--allow-store",
        "state:*",
    ];
    let _worker = ws.spawn(&args, &ws.path().join("worker-1.log"));
    let allowed = ws.pipeline(&["--nats", &nats.url]);
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert_eq!(ws.read_secret("out", "app/db"), Some(json!({"password": "p"})));
}

/// Publishes `payload` as a job of `run` with the given wire version; returns its result.
async fn answer_to(js: &jetstream::Context, run: &str, wire: &str, payload: Vec<u8>) -> JobResult {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Vss-Wire-Version", wire);
    headers.insert("Vss-Run", run);
    headers.insert("Vss-Job", "sync:T");
    headers.insert("Vss-Target", "T");
    let message = jetstream::message::PublishMessage::build()
        .headers(headers)
        .payload(payload.into())
        .message_id(format!("{run}/sync:T"));
    js.send_publish("vss.jobs.sync", message).await.unwrap().await.unwrap();
    let results = js.get_stream("VSS_RESULTS").await.unwrap();
    for _ in 0..50 {
        if let Ok(message) =
            results.get_last_raw_message_by_subject(&format!("vss.results.{run}")).await
        {
            return JobResult::decode(&message.payload).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no result for {run} within 5 s");
}

#[tokio::test]
async fn nats_a_job_a_worker_cannot_read_is_answered_at_once() {
    let nats = Nats::start();
    let ws = workspace();
    let _workers = workers(&ws, &nats, 1);
    let js = jetstream_ready(&nats).await;

    let newer = only_job(&ws, "run-newer");
    let result = answer_to(&js, "run-newer", "99", newer.encode()).await;
    let Outcome::Failed { error, retryable } = &result.outcome else { panic!("{result:?}") };
    assert!(!retryable);
    assert!(
        error.contains("job of wire version 99") && error.contains("upgrade the workers"),
        "{error}"
    );
    assert_eq!(ws.read_secret("out", "app/db"), None, "a newer job is not run");

    let garbage = answer_to(&js, "run-garbage", "2", b"\x93not a job".to_vec()).await;
    let Outcome::Failed { error, .. } = &garbage.outcome else { panic!("{garbage:?}") };
    assert!(error.contains("cannot read it"), "{error}");
    assert_eq!((garbage.target.as_str(), garbage.job_id.as_str()), ("T", "sync:T"));
}

/// `vss pipeline --nats` in `ws`, off the async runtime.
async fn pipeline(ws: &Workspace, nats: &Nats) -> std::process::Output {
    let (dir, url) = (ws.path().to_path_buf(), nats.url.clone());
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(vss_tests::vss_bin())
            .current_dir(dir)
            .args(["pipeline", "--config", "vss.yaml", "--nats", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn nats_a_run_the_live_workers_cannot_read_is_refused() {
    let nats = Nats::start();
    let ws = workspace();
    let _workers = workers(&ws, &nats, 1);
    let js = jetstream_ready(&nats).await;
    let registry = async {
        for _ in 0..50 {
            if let Ok(kv) = js.get_key_value("vss-worker-registry").await {
                return kv;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no worker registry");
    }
    .await;
    registry.put("w-old", br#"{"version": "0.0.9", "wire": 1}"#.to_vec().into()).await.unwrap();
    let refused = pipeline(&ws, &nats).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("workers at vss 0.0.9 (wire version 1) are live"), "{stderr}");
    assert_eq!(ws.read_secret("out", "app/db"), None, "nothing was published");

    registry.delete("w-old").await.unwrap();
    let ran = pipeline(&ws, &nats).await;
    assert_eq!(ran.status.code(), Some(0), "{}", String::from_utf8_lossy(&ran.stderr));
    assert_eq!(ws.read_secret("out", "app/db"), Some(json!({"password": "p"})));
}
