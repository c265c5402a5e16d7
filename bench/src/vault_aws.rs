//! `vss-bench vault-aws`: N secrets from Vault through a Vault merge store into AWS Secrets
//! Manager, on real OpenBao and moto servers started for the run.
//!
//! For each size it times the release binary on a first run (N creates), an unchanged resync
//! and a run after 1% of the secrets changed, prints the store calls per secret by class, and
//! compares each run with a floor measured in the same process: the Secrets Manager calls the
//! run had to make (CreateSecret ×N, ListSecrets pages, PutSecretValue ×1%), made directly with
//! the SDK in a loop at the same concurrency (16).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_secretsmanager::Client;
use futures_util::{StreamExt, stream};
use vss_tests::servers::{AWS_TEST_ENV, Moto, OpenBao, ROOT_TOKEN};

/// Store calls of one run: store → operation → count.
type Calls = BTreeMap<String, BTreeMap<String, u64>>;

/// Runs the benchmark for each size.
pub fn run(vss: &Path, sizes: &[usize]) -> anyhow::Result<()> {
    let bao = OpenBao::start();
    let moto = Moto::start();
    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(sdk_client(&moto.endpoint));
    println!(
        "vss vault-aws benchmark: Vault source -> Vault merge store -> AWS Secrets Manager (OpenBao, moto)"
    );
    println!(
        "{:>7}  {:<11} {:>8} {:>9} {:>8}  calls per secret: vault reads | vault lists+metadata | AWS writes | AWS reads | AWS lists",
        "secrets", "run", "wall", "floor", "x floor"
    );
    for &n in sizes {
        bench_size(vss, &bao, &moto, &runtime, &client, n)?;
    }
    Ok(())
}

async fn sdk_client(endpoint: &str) -> Client {
    let credentials =
        aws_sdk_secretsmanager::config::Credentials::new("testing", "testing", None, None, "bench");
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .load()
        .await;
    Client::new(&base)
}

fn bench_size(
    vss: &Path,
    bao: &OpenBao,
    moto: &Moto,
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    n: usize,
) -> anyhow::Result<()> {
    let ws = tempfile::tempdir()?;
    let root = ws.path();
    let write_sources = |round: usize| -> anyhow::Result<()> {
        for i in 0..n {
            // Round 0 writes everything; later rounds change 1% of the secrets.
            if round > 0 && i % 100 != 0 {
                continue;
            }
            let path = root.join(format!("seed/team{:02}/app{i:06}.json", i % 20));
            std::fs::create_dir_all(path.parent().unwrap())?;
            let v = serde_json::json!({"user": format!("u{i}"), "password": format!("pw-{i}-{round}"), "port": 5432});
            std::fs::write(path, v.to_string())?;
        }
        Ok(())
    };
    let vault = format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: VSS_BENCH_VAULT_TOKEN }} }} }}",
        bao.address
    );
    let seed = format!(
        "{vault}\nsource: {{ file: {{ dir: seed }} }}\ntargets:\n  Seed: {{ store: {{ vault: {{ path: secret/b{n}/src }} }} }}\n"
    );
    let main = format!(
        "{vault}
aws: {{ region: us-east-1, endpoint: \"{}\" }}
merge_store: {{ vault: {{ path: secret/b{n}/merged }} }}
sources:
  src: {{ vault: {{ path: secret/b{n}/src }} }}
targets:
  T: {{ imports: [src], store: {{ aws: {{ prefix: b{n}/app/ }} }} }}
",
        moto.endpoint
    );
    std::fs::write(root.join("seed.yaml"), seed)?;
    std::fs::write(root.join("main.yaml"), main)?;

    write_sources(0)?;
    vss_run(vss, root, "seed.yaml")?;
    let (wall, calls) = vss_run(vss, root, "main.yaml")?;
    let floor = runtime.block_on(floor_creates(client, &format!("f{n}/app/"), n));
    row(n, "first run", wall, floor, &calls);

    let (wall, calls) = vss_run(vss, root, "main.yaml")?;
    let floor = runtime.block_on(floor_lists(client, &format!("b{n}/app/")));
    row(n, "unchanged", wall, floor, &calls);

    write_sources(1)?;
    vss_run(vss, root, "seed.yaml")?;
    let (wall, calls) = vss_run(vss, root, "main.yaml")?;
    let floor = runtime.block_on(floor_puts(client, &format!("f{n}/app/"), n));
    row(n, "1% changed", wall, floor, &calls);
    Ok(())
}

/// Runs `vss pipeline --config <config>` in `dir`; returns its wall time and store calls.
fn vss_run(vss: &Path, dir: &Path, config: &str) -> anyhow::Result<(Duration, Calls)> {
    let started = Instant::now();
    let out = Command::new(vss)
        .current_dir(dir)
        .args(["pipeline", "--config", config, "--output", "json"])
        .envs(AWS_TEST_ENV)
        .env("VSS_BENCH_VAULT_TOKEN", ROOT_TOKEN)
        .env("RUST_LOG", "vss_coordinator=debug")
        .output()?;
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("vss failed on {config}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout));
    }
    let line =
        stderr.lines().find(|l| l.contains("api_calls=")).context("no call counts logged")?;
    let json = &line[line.find("api_calls=").unwrap() + "api_calls=".len()..];
    Ok((wall, serde_json::from_str(json.trim())?))
}

fn row(n: usize, label: &str, wall: Duration, floor: Duration, calls: &Calls) {
    let sum = |store: &str, ops: &[&str]| -> u64 {
        calls
            .iter()
            .filter(|(s, _)| s.contains(store))
            .flat_map(|(_, c)| c.iter())
            .filter(|(op, _)| ops.contains(&op.as_str()))
            .map(|(_, count)| count)
            .sum()
    };
    let per = |count: u64| count as f64 / n as f64;
    println!(
        "{n:>7}  {label:<11} {:>7.2}s {:>8.2}s {:>7.1}x  {:.2} | {:.2} | {:.2} | {:.2} | {:.3}",
        wall.as_secs_f64(),
        floor.as_secs_f64(),
        wall.as_secs_f64() / floor.as_secs_f64(),
        per(sum("vault:", &["read"])),
        per(sum("vault:", &["list", "metadata"])),
        per(sum(
            "aws-sm:",
            &["CreateSecret", "PutSecretValue", "TagResource", "RestoreSecret", "DeleteSecret"]
        )),
        per(sum("aws-sm:", &["GetSecretValue", "BatchGetSecretValue"])),
        per(sum("aws-sm:", &["ListSecrets"])),
    );
}

/// N CreateSecret calls, 16 at a time.
async fn floor_creates(client: &Client, prefix: &str, n: usize) -> Duration {
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| async move {
            let _ = client
                .create_secret()
                .name(format!("{prefix}s{i:06}"))
                .secret_string("{\"k\": 1}")
                .send()
                .await;
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}

/// The ListSecrets pages (100 each) of everything under `prefix`.
async fn floor_lists(client: &Client, prefix: &str) -> Duration {
    let started = Instant::now();
    let mut next = None;
    loop {
        let filter = aws_sdk_secretsmanager::types::Filter::builder()
            .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
            .values(prefix)
            .build();
        let page = client
            .list_secrets()
            .max_results(100)
            .filters(filter)
            .set_next_token(next.take())
            .send()
            .await;
        next = page.ok().and_then(|p| p.next_token().map(str::to_string));
        if next.is_none() {
            break;
        }
    }
    started.elapsed()
}

/// PutSecretValue for 1% of the secrets, 16 at a time.
async fn floor_puts(client: &Client, prefix: &str, n: usize) -> Duration {
    let started = Instant::now();
    stream::iter((0..n).step_by(100))
        .map(|i| async move {
            let _ = client
                .put_secret_value()
                .secret_id(format!("{prefix}s{i:06}"))
                .secret_string(format!("{{\"k\": {i}}}"))
                .send()
                .await;
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}
