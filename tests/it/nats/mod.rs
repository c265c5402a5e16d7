//! Distributed runs through a real nats-server (JetStream) and `vss worker` processes, one
//! module per theme; the helpers they share live here.

mod auth;
mod dispatch;
mod faults;
mod shards;
mod state;
mod trust;
mod worker;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use vss_protocol::config::Config;
use vss_protocol::job::Job;
use vss_protocol::plan::{PlanRequest, plan_run};
use vss_tests::servers::{AWS_TEST_ENV, Moto, Nats};
use vss_tests::{Background, Workspace};

/// Starts `n` workers in `ws`, logging into `ws/worker-<i>.log`.
fn workers(ws: &Workspace, nats: &Nats, n: usize) -> Vec<Background> {
    (0..n)
        .map(|i| {
            let log = ws.path().join(format!("worker-{i}.log"));
            let health = ws.path().join(format!("worker-{i}.health"));
            let args = ["worker", "--nats", &nats.url, "--concurrency", "2", "--health-file"];
            let mut args = args.to_vec();
            args.push(health.to_str().unwrap());
            ws.spawn(&args, &log)
        })
        .collect()
}

/// Everything workers 0 to 3 of `ws` logged (`worker-<i>.log`), in order.
fn logs(ws: &Workspace) -> String {
    let mut all = String::new();
    for i in 0..4 {
        if let Ok(text) = std::fs::read_to_string(ws.path().join(format!("worker-{i}.log"))) {
            all.push_str(&text);
        }
    }
    all
}

/// The one sync job of `ws`'s config (a sync-only config with one target), as run `run_id`.
fn only_job(ws: &Workspace, run_id: &str) -> Job {
    let config = std::fs::read_to_string(ws.path().join("vss.yaml")).unwrap();
    let cfg = Config::from_yaml(&config, "vss.yaml", ws.path(), &|_| None).unwrap();
    plan_run(&cfg, run_id, &PlanRequest::default()).unwrap().jobs.remove(0)
}

/// A JetStream context on `nats`, once the workers have created the streams.
async fn jetstream_ready(nats: &Nats) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    for _ in 0..100 {
        if js.get_stream("VSS_JOBS").await.is_ok() {
            return js;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no VSS_JOBS stream");
}

/// Every file under `dir`, relative, with its contents.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A sync-only run of 500 secrets into Secrets Manager (moto): slow enough to interrupt.
fn aws_workspace(moto: &Moto) -> Workspace {
    let ws = Workspace::new();
    ws.config(&format!(
        "aws: {{ region: us-east-1, endpoint: \"{}\" }}
source: {{ file: {{ dir: src }} }}
targets:
  T: {{ store: {{ aws: {{ prefix: app/ }} }} }}
",
        moto.endpoint
    ));
    for i in 0..500 {
        ws.secret("src", &format!("s{i:03}"), json!({"n": i}));
    }
    ws
}

/// Starts worker `i` with AWS credentials and a short AckWait (so a dead worker's job is
/// redelivered within seconds).
fn aws_worker(ws: &Workspace, nats: &Nats, i: usize) -> Background {
    aws_worker_with(ws, nats, i, &["--ack-wait", "2"])
}

/// Starts worker `i` as [`aws_worker`] does, with `extra` flags instead of the short AckWait.
fn aws_worker_with(ws: &Workspace, nats: &Nats, i: usize, extra: &[&str]) -> Background {
    let log = ws.path().join(format!("worker-{i}.log"));
    let mut args = vec!["worker", "--nats", &nats.url, "--concurrency", "1"];
    args.extend_from_slice(extra);
    ws.spawn_env(&args, &log, &AWS_TEST_ENV)
}

/// Waits until a worker log says a job started; the index of that worker.
fn started(ws: &Workspace, n: usize) -> usize {
    for _ in 0..600 {
        for i in 0..n {
            let log = std::fs::read_to_string(ws.path().join(format!("worker-{i}.log")));
            if log.is_ok_and(|l| l.contains("job started")) {
                return i;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no job started:\n{}", logs(ws));
}

/// Every secret under `app/` holds its value and has exactly one version.
fn assert_desired_once(moto: &Moto) {
    let found = moto.secretsmanager(
        "names = [s['Name'] for p in sm.get_paginator('list_secrets').paginate() for s in p['SecretList']]
out({'count': len(names), 'multi': [n for n in names if len(sm.list_secret_version_ids(SecretId=n)['Versions']) != 1],
     'sample': json.loads(sm.get_secret_value(SecretId='app/s499')['SecretString'])})",
    );
    assert_eq!(found, json!({"count": 500, "multi": [], "sample": {"n": 499}}));
}
