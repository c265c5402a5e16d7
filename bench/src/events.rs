//! `vss-bench events [--writes 200]`: how long a Vault write takes to reach a target through
//! `vss serve` (in-process) and OpenBao's `socket` audit device, on real OpenBao servers.
//!
//! The source (`secret/ev/src`) holds 10,000 secrets besides the ones written; the target is
//! another folder of the same OpenBao (`secret/ev/dst`), as in the reference measurement of
//! vault-sync. It measures, write by write (the next write once the last one landed): the
//! latency from the write request to the target holding the value, idle and while a full
//! reconcile of the 10,000 secrets runs; then a burst of 1,000 writes to distinct secrets, as
//! the time from the last write to the last target update. All of it twice: in-process, and
//! on the fleet (`--nats`, two `vss worker`s on a local nats-server). The floor is a Vault
//! write and a read of the target made directly, in the same process.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use vss_tests::relay::Relay;
use vss_tests::servers::{Nats, OpenBao, ROOT_TOKEN};

const TOKEN: &str = "bench-api-token";
/// Secrets besides the written ones, all read by the target.
const BULK: usize = 10_000;

/// Runs the benchmark.
pub fn run(vss: &Path, writes: usize) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    if std::env::var_os("VSS_BENCH_KEEP").is_some() {
        println!("logs kept in {}", root.path().display());
    }
    let relay = Relay::start();
    let hcl = format!(
        "audit \"socket\" \"vss\" {{\n  options {{\n    address = \"{}\"\n    socket_type = \"tcp\"\n  }}\n}}\naudit \"file\" \"local\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
        relay.address,
        root.path().join("audit.log").display()
    );
    let bao = OpenBao::start_with_config(Some(&hcl));
    seed(vss, root.path(), &bao.address)?;
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "vss events benchmark: Vault write -> vss serve (socket audit device) -> Vault target"
    );
    println!("source: {BULK} secrets + the written ones");
    let nats = Nats::start();
    for fleet in [None, Some(&nats)] {
        let execution = fleet
            .map(|n| format!("execution: {{ nats: {{ url: \"{}\" }} }}\n", n.url))
            .unwrap_or_default();
        let config = format!(
            "vault: {{ address: \"{}\" }}\nsource: {{ vault: {{ path: secret/ev/src }} }}\ntargets:\n  T: {{ store: {{ vault: {{ path: secret/ev/dst }} }} }}\nserve: {{ tokens: [{{ env: VSS_API_TOKEN }}] }}\n{execution}",
            bao.address
        );
        std::fs::write(root.path().join("vss.yaml"), config)?;
        let mut children = match fleet {
            Some(nats) => (0..2)
                .map(|_| start_worker(vss, root.path(), &nats.url))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let (serve, api) = start_serve(vss, root.path(), &relay)?;
        children.push(serve);
        let mode = if fleet.is_some() { "NATS, 2 workers" } else { "in-process" };
        let outcome = runtime.block_on(measure(&bao.address, &api, writes, mode));
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        outcome?;
    }
    if std::env::var_os("VSS_BENCH_KEEP").is_some() {
        let _ = root.keep();
    }
    Ok(())
}

/// A `vss worker` on `nats`.
fn start_worker(vss: &Path, root: &Path, nats: &str) -> anyhow::Result<Child> {
    Ok(Command::new(vss)
        .current_dir(root)
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .env_remove("RUST_LOG")
        .args(["worker", "--nats", nats, "--concurrency", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Writes the bulk secrets into Vault with vss itself (a file source → the Vault folder).
fn seed(vss: &Path, root: &Path, vault: &str) -> anyhow::Result<()> {
    for i in 0..BULK {
        let path = root.join(format!("seed/bulk/s{i:05}.json"));
        std::fs::create_dir_all(path.parent().context("a folder")?)?;
        std::fs::write(path, json!({"user": format!("u{i}"), "n": i}).to_string())?;
    }
    let config = format!(
        "vault: {{ address: \"{vault}\" }}\nsource: {{ file: {{ dir: seed }} }}\ntargets:\n  Seed: {{ store: {{ vault: {{ path: secret/ev/src }} }} }}\n"
    );
    std::fs::write(root.join("seed.yaml"), config)?;
    let out = Command::new(vss)
        .current_dir(root)
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .env_remove("RUST_LOG")
        .args(["pipeline", "--config", "seed.yaml"])
        .output()?;
    if !out.status.success() {
        bail!("seeding failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `vss serve` with its audit listener behind the relay; the process and the API URL.
fn start_serve(vss: &Path, root: &Path, relay: &Relay) -> anyhow::Result<(Child, String)> {
    let log = root.join("serve.log");
    let child = Command::new(vss)
        .current_dir(root)
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .env("VSS_API_TOKEN", TOKEN)
        .env("RUST_LOG", "info,vss_worker=debug")
        .args(["serve", "--config", "vss.yaml", "--listen", "127.0.0.1:0"])
        .args(["--audit-listen", "127.0.0.1:0", "--reconcile-interval", "off"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let (Some(api), Some(audit)) =
            (after(&text, " address="), after(&text, "audit_address="))
        {
            relay.forward_to(&audit);
            return Ok((child, format!("http://{api}")));
        }
        if Instant::now() > deadline {
            bail!("serve did not start:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    Some(text[at..].chars().take_while(|c| !c.is_whitespace()).collect())
}

/// Vault over HTTP.
struct Vault {
    http: reqwest::Client,
    address: String,
}

impl Vault {
    async fn put(&self, path: &str, data: &Value) -> anyhow::Result<()> {
        let url = format!("{}/v1/secret/data/{path}", self.address);
        let body = json!({ "data": data });
        let response =
            self.http.post(url).header("X-Vault-Token", ROOT_TOKEN).json(&body).send().await?;
        if !response.status().is_success() {
            bail!("write of {path}: {}", response.status());
        }
        Ok(())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let url = format!("{}/v1/secret/data/{path}", self.address);
        let response = self.http.get(url).header("X-Vault-Token", ROOT_TOKEN).send().await?;
        if response.status() == 404 {
            return Ok(None);
        }
        let body: Value = response.json().await?;
        Ok(Some(body["data"]["data"].clone()))
    }

    /// Polls `path` until it holds `want`; how long that took from `since`.
    async fn landed(&self, path: &str, want: &Value, since: Instant) -> anyhow::Result<Duration> {
        let deadline = since + Duration::from_secs(120);
        loop {
            if self.get(path).await?.as_ref() == Some(want) {
                return Ok(since.elapsed());
            }
            if Instant::now() > deadline {
                bail!("{path} never reached the target");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn measure(address: &str, api: &str, writes: usize, mode: &str) -> anyhow::Result<()> {
    let vault = Vault { http: reqwest::Client::new(), address: address.to_string() };
    let run = |body: &'static str| {
        let http = vault.http.clone();
        let url = format!("{api}/v1/runs");
        async move {
            let response = http.post(url).bearer_auth(TOKEN).body(body).send().await?;
            let queued: Value = response.json().await?;
            anyhow::Ok(queued["id"].as_str().context("a run id")?.to_string())
        }
    };
    let finished = |id: String| {
        let http = vault.http.clone();
        let url = format!("{api}/v1/runs/{id}");
        async move {
            loop {
                let run: Value = http.get(&url).bearer_auth(TOKEN).send().await?.json().await?;
                if run["status"] == "finished" || run["status"] == "failed" {
                    return anyhow::Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Vault had audited the seeding before serve listened: let that backlog pass first.
    let quiet = {
        let http = vault.http.clone();
        async move {
            let mut last = (u64::MAX, usize::MAX);
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let counts: Value = http
                    .get(format!("{api}/v1/audit"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await?
                    .json()
                    .await?;
                let runs: Value = http
                    .get(format!("{api}/v1/runs"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await?
                    .json()
                    .await?;
                let busy = runs["runs"]
                    .as_array()
                    .context("runs")?
                    .iter()
                    .filter(|r| r["status"] == "queued" || r["status"] == "running")
                    .count();
                let now = (counts["received"].as_u64().unwrap_or_default(), busy);
                if now == last && busy == 0 {
                    return anyhow::Ok(());
                }
                last = now;
            }
        }
    };
    quiet.await?;
    // The target starts in sync: one full run of the 10,000 secrets.
    let started = Instant::now();
    let tag = mode.split(',').next().unwrap_or(mode).replace(' ', "-");
    finished(run("{}").await?).await?;
    let full_run = started.elapsed();

    let floor = direct(&vault, writes).await?;
    let idle = latencies(&vault, &format!("{tag}-idle"), writes).await?;
    let reconcile_started = Instant::now();
    let reconcile = run("{}").await?;
    let busy = latencies(&vault, &format!("{tag}-busy"), writes).await?;
    finished(reconcile).await?;
    let reconcile_took = reconcile_started.elapsed();
    let (burst, burst_writes) = burst(&vault, &tag, 1_000).await?;

    println!();
    println!("{mode}: the first full run of the source took {:.2}s", full_run.as_secs_f64());
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}",
        "latency, write -> target updated", "p50", "p95", "p99", "max"
    );
    row("floor: a write + a read, directly", &floor);
    row(&format!("idle, {writes} writes"), &idle);
    row(&format!("during a {BULK}-secret reconcile ({:.1}s)", reconcile_took.as_secs_f64()), &busy);
    println!(
        "burst of 1000 writes (written in {:.2}s): last target update {:.0} ms after the last write",
        burst_writes.as_secs_f64(),
        burst.as_secs_f64() * 1000.0
    );
    println!(
        "p99 idle / p99 floor: {:.1}x",
        percentile(&idle, 99.0).as_secs_f64() / percentile(&floor, 99.0).as_secs_f64()
    );
    Ok(())
}

/// The floor: a write to Vault and a read that sees it, made directly.
async fn direct(vault: &Vault, writes: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(writes);
    for i in 0..writes {
        let value = json!({"floor": i});
        let since = Instant::now();
        vault.put("ev/floor", &value).await?;
        out.push(vault.landed("ev/floor", &value, since).await?);
    }
    Ok(out)
}

/// One write at a time to 20 secrets; each write's time to reach the target.
async fn latencies(vault: &Vault, tag: &str, writes: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(writes);
    for i in 0..writes {
        let name = format!("live/k{:02}", i % 20);
        let value = json!({"tag": tag, "n": i});
        let since = Instant::now();
        vault.put(&format!("ev/src/{name}"), &value).await?;
        let took = vault.landed(&format!("ev/dst/{name}"), &value, since).await?;
        if took > Duration::from_secs(1) {
            eprintln!(
                "slow: {tag} write {i} ({name}) took {took:?}, landed at {:?}",
                std::time::SystemTime::now()
            );
        }
        out.push(took);
    }
    Ok(out)
}

/// `count` writes to distinct secrets, 16 at a time: the time from the last write to the
/// last target update, and how long the writes took.
async fn burst(vault: &Vault, tag: &str, count: usize) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let value = |i: usize| json!({"burst": i, "tag": tag});
    stream::iter(0..count)
        .map(|i| async move { vault.put(&format!("ev/src/burst/k{i:04}"), &value(i)).await })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let written = Instant::now();
    for i in 0..count {
        vault.landed(&format!("ev/dst/burst/k{i:04}"), &value(i), written).await?;
    }
    Ok((written.elapsed(), written - started))
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn row(label: &str, samples: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<44} {:>6.1}ms {:>6.1}ms {:>6.1}ms {:>6.1}ms",
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 95.0)),
        ms(percentile(samples, 99.0)),
        ms(*samples.iter().max().expect("samples"))
    );
}
