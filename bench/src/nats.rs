//! `vss-bench nats`: one run of 20 targets and 1,000 secrets, in-process and over JetStream
//! with 1, 2 and 4 workers, against a Vault (OpenBao) reached through a proxy that delays every
//! request by a fixed latency (default 20 ms), so that the work is store-bound, as in
//! production, and scaling shows on a small machine.
//!
//! Each target merges its own Vault source folder into a Vault merge store and syncs into a
//! folder: per target, 50 source reads, 50 merge-store writes, manifests and listings, all
//! through the proxy. Every mode starts from empty merge store and targets. The in-process
//! run uses 4 jobs at once per phase, the same as one worker (`--concurrency 4`); the
//! per-job dispatch overhead is (1-worker wall − in-process wall) / jobs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vss_tests::servers::{Nats, OpenBao, ROOT_TOKEN};

const TARGETS: usize = 20;
const SECRETS: usize = 1_000;
const WORKER_CONCURRENCY: usize = 4;

/// Runs the benchmark; `latency` is added to every request to Vault.
pub fn run(vss: &Path, latency: Duration) -> anyhow::Result<()> {
    let bao = OpenBao::start();
    let nats = Nats::start();
    let runtime = tokio::runtime::Runtime::new()?;
    let upstream = bao.address.trim_start_matches("http://").to_string();
    let proxy = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let slow_vault = format!("http://{}", proxy.local_addr()?);
    runtime.spawn(delaying_proxy(proxy, upstream, latency));

    let ws = tempfile::tempdir()?;
    let root = ws.path();
    seed(vss, root, &bao.address)?;
    let jobs = TARGETS * 2;
    println!(
        "vss nats benchmark: {TARGETS} targets, {SECRETS} secrets, Vault source and merge store with {} ms per request; {jobs} jobs",
        latency.as_millis()
    );
    println!(
        "{:<22} {:>8} {:>10} {:>12} {:>14}",
        "mode", "wall", "jobs/s", "secrets/s", "x in-process"
    );

    let inproc = timed_run(vss, root, &slow_vault, "inproc", None)?;
    row("in-process (4 at once)", inproc, inproc);
    let mut one_worker = None;
    for workers in [1, 2, 4] {
        let mode = format!("w{workers}");
        let mut pool: Vec<Child> = (0..workers)
            .map(|i| spawn_worker(vss, root, &nats.url, &format!("{mode}-{i}")))
            .collect::<Result<_, _>>()?;
        for i in 0..workers {
            wait_ready(&root.join(format!("worker-{mode}-{i}.log")))?;
        }
        let wall = timed_run(vss, root, &slow_vault, &mode, Some(&nats.url));
        for child in &mut pool {
            let _ = child.kill();
            let _ = child.wait();
        }
        let wall = wall?;
        one_worker.get_or_insert(wall);
        row(&format!("JetStream, {workers} worker(s)"), wall, inproc);
    }
    if let Some(one) = one_worker {
        let overhead = one.saturating_sub(inproc).as_secs_f64() * 1000.0 / jobs as f64;
        println!("dispatch overhead per job (1 worker vs in-process): {overhead:.1} ms");
    }
    Ok(())
}

fn row(mode: &str, wall: Duration, inproc: Duration) {
    let secs = wall.as_secs_f64();
    println!(
        "{mode:<22} {:>7.2}s {:>10.1} {:>12.0} {:>13.2}x",
        secs,
        (TARGETS * 2) as f64 / secs,
        SECRETS as f64 / secs,
        secs / inproc.as_secs_f64()
    );
}

/// Writes the source secrets into Vault directly (no proxy): `secret/nb/src/tNN/sMMM`.
fn seed(vss: &Path, root: &Path, vault: &str) -> anyhow::Result<()> {
    for i in 0..SECRETS {
        let path = root.join(format!("seed/t{:02}/s{i:04}.json", i % TARGETS));
        std::fs::create_dir_all(path.parent().unwrap())?;
        let value = serde_json::json!({"user": format!("u{i}"), "password": format!("pw-{i}")});
        std::fs::write(path, value.to_string())?;
    }
    let config = format!(
        "vault: {{ address: \"{vault}\" }}\nsource: {{ file: {{ dir: seed }} }}\ntargets:\n  Seed: {{ store: {{ vault: {{ path: secret/nb/src }} }} }}\n"
    );
    std::fs::write(root.join("seed.yaml"), config)?;
    let out = vss_command(vss, root).args(["pipeline", "--config", "seed.yaml"]).output()?;
    if !out.status.success() {
        bail!("seeding failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn vss_command(vss: &Path, root: &Path) -> Command {
    let mut command = Command::new(vss);
    command.current_dir(root).env("VAULT_TOKEN", ROOT_TOKEN).env_remove("RUST_LOG");
    command
}

/// One full run (merge + sync) of every target into fresh folders; its wall time.
fn timed_run(
    vss: &Path,
    root: &Path,
    vault: &str,
    mode: &str,
    nats: Option<&str>,
) -> anyhow::Result<Duration> {
    let mut config = format!(
        "vault: {{ address: \"{vault}\" }}\nmerge_store: {{ vault: {{ path: secret/nb/merged-{mode} }} }}\nstate: {{ file: {{ path: state-{mode} }} }}\nhash_key: {{ file: hash.key }}\nsources:\n"
    );
    for t in 0..TARGETS {
        config.push_str(&format!("  s{t:02}: {{ vault: {{ path: secret/nb/src/t{t:02} }} }}\n"));
    }
    config.push_str("targets:\n");
    for t in 0..TARGETS {
        config.push_str(&format!(
            "  T{t:02}: {{ imports: [s{t:02}], store: {{ file: {{ dir: out-{mode}/t{t:02} }} }} }}\n"
        ));
    }
    let file = format!("{mode}.yaml");
    std::fs::write(root.join(&file), config)?;
    std::fs::write(root.join("hash.key"), "bench hash key")?;
    let mut command = vss_command(vss, root);
    command.args(["pipeline", "--config", &file, "--output", "json", "--parallelism", "4"]);
    if let Some(url) = nats {
        command.args(["--nats", url]);
    }
    let started = Instant::now();
    let out = command.output()?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!("run {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let added = report["summary"]["added"].as_u64().unwrap_or(0);
    if added != SECRETS as u64 {
        bail!("run {mode} synced {added} secrets, not {SECRETS}");
    }
    Ok(wall)
}

fn spawn_worker(vss: &Path, root: &Path, nats: &str, name: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::create(root.join(format!("worker-{name}.log")))?;
    let concurrency = WORKER_CONCURRENCY.to_string();
    Ok(vss_command(vss, root)
        .args(["worker", "--nats", nats, "--concurrency", &concurrency])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

fn wait_ready(log: &PathBuf) -> anyhow::Result<()> {
    for _ in 0..200 {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains("worker ready")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(log)
        .map_or(Ok(()), |l| Err(anyhow::anyhow!("{l}")))
        .context("worker not ready")
}

/// Forwards connections to `upstream`, holding every chunk the client sends for `latency`.
async fn delaying_proxy(listener: TcpListener, upstream: String, latency: Duration) {
    while let Ok((client, _)) = listener.accept().await {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else { return };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let requests = async {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                    tokio::time::sleep(latency).await;
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown().await;
            };
            let responses = async {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                let _ = client_write.shutdown().await;
            };
            tokio::join!(requests, responses);
        });
    }
}
