//! Distributed runs through a real nats-server (JetStream) and `vss worker` processes.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::json;
use vss_protocol::config::Config;
use vss_protocol::job::{Job, JobResult, Outcome, Shard};
use vss_protocol::plan::{PlanRequest, plan_run};
use vss_tests::otlp::Collector;
use vss_tests::servers::{AWS_TEST_ENV, JsonServer, Moto, Nats};
use vss_tests::{Background, Workspace, target};

use crate::{THREE_LEVELS, three_levels};

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

#[test]
fn nats_a_sharded_target_is_shared_by_workers_and_reported_as_one() {
    let nats = Nats::start();
    let config = |shards: u32| {
        format!(
            "hash_key: {{ file: hash.key }}
source: {{ file: {{ dir: src }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }}, delete: true, shards: {shards} }}
"
        )
    };
    let (local, sharded) = (Workspace::new(), Workspace::new());
    local.config(&config(1));
    sharded.config(&config(4));
    for ws in [&local, &sharded] {
        ws.write("hash.key", "one key for both");
        for i in 0..200 {
            ws.secret("src", &format!("team{}/app{i:03}", i % 5), json!({"n": i}));
        }
    }
    let _workers = workers(&sharded, &nats, 2);
    let graph = sharded.run(&["graph", "--config", "vss.yaml"]);
    assert!(graph.stdout.contains("sync:T#3/4"), "{}", graph.stdout);

    let compare = |extra: &[&str]| {
        let here = local.pipeline(extra);
        let mut args = extra.to_vec();
        args.extend(["--nats", nats.url.as_str()]);
        let there = sharded.pipeline(&args);
        assert_eq!(here.code, there.code, "{}\n{}", there.stderr, logs(&sharded));
        assert_eq!(here.json(), there.json(), "one report for the four shards");
        assert_eq!(tree(&local.path().join("out")), tree(&sharded.path().join("out")));
        there
    };
    let first = compare(&["--exit-code"]);
    assert_eq!(target(&first.json(), "T")["summary"]["added"], 200);
    assert_eq!(logs(&sharded).matches("job finished").count(), 4, "{}", logs(&sharded));

    // Deletes stay within each shard's owned secrets; the guard allows 10 of 200.
    for ws in [&local, &sharded] {
        for i in 0..10 {
            std::fs::remove_file(ws.path().join(format!("src/team{}/app{i:03}.json", i % 5)))
                .unwrap();
        }
    }
    let second = compare(&["--exit-code"]);
    assert_eq!(target(&second.json(), "T")["summary"]["removed"], 10);
    let unchanged = compare(&["--exit-code"]);
    assert_eq!(unchanged.code, 0);
    assert_eq!(target(&unchanged.json(), "T")["summary"]["unchanged"], 190);

    // 30 of 190 is over the guard for the target as a whole: every shard refuses, even the
    // shards none of whose own secrets would go, and they create nothing either.
    let first_shard = Shard { index: 0, count: 4 };
    let doomed: Vec<String> = (10..200)
        .map(|i| format!("team{}/app{i:03}", i % 5))
        .filter(|n| first_shard.owns(n))
        .take(30)
        .collect();
    assert_eq!(doomed.len(), 30);
    let fresh: Vec<String> =
        (0..40).map(|i| format!("new/s{i}")).filter(|n| !first_shard.owns(n)).collect();
    for ws in [&local, &sharded] {
        for name in &doomed {
            std::fs::remove_file(ws.path().join(format!("src/{name}.json"))).unwrap();
        }
        for name in &fresh {
            ws.secret("src", name, json!({"fresh": true}));
        }
    }
    let refused = sharded.pipeline(&["--nats", &nats.url]);
    assert_eq!((local.pipeline(&[]).code, refused.code), (2, 2));
    assert!(refused.stdout.contains("refusing to delete 30 of 190"), "{}", refused.stdout);
    assert_eq!(tree(&sharded.path().join("out")).len(), 190, "nothing deleted or created");
    assert_eq!(tree(&local.path().join("out")).len(), 190, "nothing deleted or created");
}

#[test]
fn nats_token_auth_from_files_and_a_clear_error_without_it() {
    const TOKEN: &str = "s3cr3t-nats-token-77";
    let nats = Nats::start_with(&["--auth", TOKEN]);
    let ws = Workspace::new();
    ws.write("nats.token", TOKEN);
    ws.config(&format!(
        "execution: {{ nats: {{ url: \"{}\", token: {{ file: nats.token }} }} }}
source: {{ file: {{ dir: src }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }} }}
",
        nats.url
    ));
    ws.secret("src", "app/db", json!({"password": "p"}));
    let log = ws.path().join("worker-0.log");
    let token_file = ws.path().join("nats.token");
    let _worker = ws.spawn(
        &["worker", "--nats", &nats.url, "--nats-token-file", token_file.to_str().unwrap()],
        &log,
    );
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, logs(&ws));
    assert_eq!(ws.read_secret("out", "app/db"), Some(json!({"password": "p"})));

    let refused = ws.run(&["runs", "--nats", &nats.url, "list"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("cannot connect to NATS at"), "{}", refused.stderr);
    assert!(!refused.stderr.contains(TOKEN) && !logs(&ws).contains(TOKEN));
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn nats_tls_with_a_private_ca_and_nkey_auth() {
    let ws = Workspace::new();
    let dir = ws.path();
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=vss test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    ws.write("san.ext", "subjectAltName=IP:127.0.0.1\n");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    let user = nkeys::KeyPair::new_user();
    ws.write("user.nk", &user.seed().unwrap());
    let server_conf = ws.write(
        "server.conf",
        &format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\ntls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
            user.public_key(),
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    );
    let nats = Nats::start_with(&["-c", server_conf.to_str().unwrap()]);
    let url = nats.url.replace("nats://", "tls://");
    ws.config(&format!(
        "execution: {{ nats: {{ url: \"{url}\", nkey: {{ file: user.nk }}, tls_ca: ca.pem }} }}
source: {{ file: {{ dir: src }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }} }}
"
    ));
    ws.secret("src", "app/db", json!({"password": "p"}));
    let (seed, ca) = (dir.join("user.nk"), dir.join("ca.pem"));
    let args = [
        "worker",
        "--nats",
        &url,
        "--nats-nkey-file",
        seed.to_str().unwrap(),
        "--nats-ca",
        ca.to_str().unwrap(),
    ];
    let _worker = ws.spawn(&args, &dir.join("worker-0.log"));
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, logs(&ws));
    assert_eq!(ws.read_secret("out", "app/db"), Some(json!({"password": "p"})));

    // Without the CA the server's certificate is refused.
    let untrusted =
        ws.run(&["runs", "--nats", &url, "--nats-nkey-file", seed.to_str().unwrap(), "list"]);
    assert_eq!(untrusted.code, 2, "{}", untrusted.stdout);
    assert!(untrusted.stderr.contains("cannot connect to NATS"), "{}", untrusted.stderr);
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
