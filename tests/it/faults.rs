//! Faults between vss and its stores, injected by a proxy in front of real OpenBao and moto:
//! throttling, outages, stalls. Each scenario ends in the exact expected state, within its
//! time bound, and never with partial deletes.

use std::time::{Duration, Instant};

use serde_json::json;
use vss_tests::faults::{Fault, FaultProxy};
use vss_tests::servers::{AWS_TEST_ENV, Moto, OpenBao, ROOT_TOKEN};
use vss_tests::{Run, Workspace, counts, target};

const TOKEN_ENV: &str = "VSS_TEST_VAULT_TOKEN";
const SECRETS: usize = 60;
/// In every value: it must never show up in what vss prints, errors included.
const CANARY: &str = "CANARY-faults-7d41";

/// Vault → Vault through `proxy`, deletes on; `extra` is appended to the config.
fn vault_workspace(bao: &OpenBao, proxy: &FaultProxy, extra: &str) -> Workspace {
    for i in 0..SECRETS {
        bao.put(&format!("src/s{i:02}"), &json!({"n": i, "password": format!("{CANARY}-{i}")}));
    }
    let ws = Workspace::new();
    ws.config(&format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: {TOKEN_ENV} }} }} }}
source: {{ vault: {{ path: secret/src }} }}
targets:
  T: {{ store: {{ vault: {{ path: secret/out }} }}, delete: true }}
{extra}",
        proxy.url
    ));
    ws
}

fn run(ws: &Workspace) -> Run {
    ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[(TOKEN_ENV, ROOT_TOKEN)],
    )
}

/// Calls made over calls that reached the server (the retry amplification).
fn amplification(proxy: &FaultProxy) -> f64 {
    proxy.made() as f64 / (proxy.made() - proxy.faulted()).max(1) as f64
}

#[test]
fn faults_vault_throttling_a_quarter_of_calls_completes_with_bounded_amplification() {
    let bao = OpenBao::start();
    let proxy = FaultProxy::start(&bao.address);
    let ws = vault_workspace(&bao, &proxy, "");
    proxy.every(4, Fault::too_many_requests());
    let first = run(&ws);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(counts(&target(&first.json(), "T")["summary"]), (SECRETS as u64, 0, 0, 0));
    let ratio = amplification(&proxy);
    eprintln!(
        "vault, 25% throttled: {} calls made, {} faulted, amplification {ratio:.2}",
        proxy.made(),
        proxy.faulted()
    );
    assert!(ratio <= 1.5, "amplification {ratio:.2}");
    assert_eq!(bao.list("out").len(), SECRETS);
    let again = run(&ws);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(counts(&target(&again.json(), "T")["summary"]), (0, 0, 0, SECRETS as u64));
}

#[test]
fn faults_aws_throttling_a_quarter_of_calls_completes_with_bounded_amplification() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint);
    let ws = Workspace::new();
    ws.config(&format!(
        "aws: {{ region: us-east-1, endpoint: \"{}\" }}\nsource: {{ file: {{ dir: src }} }}\ntargets:\n  T: {{ store: {{ aws: {{ prefix: app/ }} }} }}\n",
        proxy.url
    ));
    for i in 0..SECRETS {
        ws.secret("src", &format!("s{i:02}"), json!({"n": i}));
    }
    proxy.every(4, Fault::aws_throttling());
    let first =
        ws.run_env(&["pipeline", "--config", "vss.yaml", "--output", "json"], &AWS_TEST_ENV);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(counts(&target(&first.json(), "T")["summary"]), (SECRETS as u64, 0, 0, 0));
    let ratio = amplification(&proxy);
    eprintln!(
        "aws, 25% throttled: {} calls made, {} faulted, amplification {ratio:.2}",
        proxy.made(),
        proxy.faulted()
    );
    assert!(ratio <= 1.5, "amplification {ratio:.2}");
    let listed = moto.secretsmanager("out(len(sm.list_secrets(MaxResults=100)['SecretList']))");
    assert_eq!(listed, json!(SECRETS));
}

#[test]
fn faults_a_short_outage_is_retried_through() {
    let bao = OpenBao::start();
    let proxy = FaultProxy::start(&bao.address);
    let ws = vault_workspace(&bao, &proxy, "");
    proxy.window(Duration::ZERO, Duration::from_secs(3), Fault::unavailable());
    let run = run(&ws);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(bao.list("out").len(), SECRETS);
    assert!(
        run.stderr.contains("store unreachable; retrying"),
        "warned: {}\n{}",
        run.stderr,
        proxy.faulted()
    );
}

#[test]
fn faults_a_dead_target_fails_within_a_minute_and_deletes_nothing() {
    let bao = OpenBao::start();
    let proxy = FaultProxy::start(&bao.address);
    let ws = vault_workspace(&bao, &proxy, "");
    assert_eq!(run(&ws).code, 0);
    // Half the source goes away (deletes are due), one value changes, then Vault "dies".
    for i in 0..SECRETS / 2 {
        bao.delete(&format!("src/s{i:02}"));
    }
    bao.put("src/s59", &json!({"n": "changed"}));
    for fault in [Fault::unavailable(), Fault::Reset] {
        proxy.every(1, fault.clone());
        let started = Instant::now();
        let env = [(TOKEN_ENV, ROOT_TOKEN), ("RUST_LOG", "trace")];
        let failed = ws.run_env(&["pipeline", "--config", "vss.yaml", "--allow-mass-delete"], &env);
        let leaked = failed.stdout.contains(CANARY) || failed.stderr.contains(CANARY);
        assert!(!leaked, "a value leaked:\n{}\n{}", failed.stdout, failed.stderr);
        let took = started.elapsed();
        eprintln!("dead target ({fault:?}): the run failed in {took:.1?}");
        assert_eq!(failed.code, 2, "{}", failed.stdout);
        assert!(took < Duration::from_secs(60), "took {took:?}");
        assert!(failed.stderr.contains("store unreachable; retrying"), "{}", failed.stderr);
        assert!(failed.stdout.contains("still failing after"), "{}", failed.stdout);
        proxy.clear();
        assert_eq!(bao.list("out").len(), SECRETS, "nothing deleted while Vault was down");
    }
    let recovered = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--allow-mass-delete", "--output", "json"],
        &[(TOKEN_ENV, ROOT_TOKEN)],
    );
    assert_eq!(recovered.code, 0, "{}", recovered.stderr);
    assert_eq!(bao.list("out").len(), SECRETS / 2);
    assert_eq!(bao.read("secret/data/out/s59").unwrap()["data"], json!({"n": "changed"}));
}

#[test]
fn faults_a_stalled_store_times_out_within_the_configured_bound() {
    let bao = OpenBao::start();
    let proxy = FaultProxy::start(&bao.address);
    let ws = vault_workspace(
        &bao,
        &proxy,
        "pipeline: { timeouts: { request_secs: 2, outage_secs: 6 } }\n",
    );
    proxy.every(1, Fault::Stall);
    let started = Instant::now();
    let stalled = ws.run_env(&["pipeline", "--config", "vss.yaml"], &[(TOKEN_ENV, ROOT_TOKEN)]);
    let took = started.elapsed();
    assert_eq!(stalled.code, 2, "{}", stalled.stdout);
    assert!(stalled.stdout.contains("timed out"), "{}", stalled.stdout);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(bao.list("out").is_empty());
}
