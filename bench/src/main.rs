//! `vss-bench embedded [--sizes 10000,100000]`: the embedded default on file stores.
//! `vss-bench vault-aws [--sizes 1000,10000]`: Vault → Vault merge store → AWS Secrets Manager
//! against real OpenBao and moto servers (see `vault_aws`).
//! `vss-bench nats [--latency-ms 20]`: in-process vs JetStream with 1, 2 and 4 workers (see
//! `nats`).
//! `vss-bench events [--writes 200]`: Vault write → target updated through `vss serve` and
//! OpenBao's socket audit device (see `events`).
//! `vss-bench targeted [--sizes 1000,10000]`: a targeted run's time as the source grows (see
//! `targeted`).
//!
//! For each size N it writes three sources (N common secrets, N/10 staging and N/10
//! production overrides) and a config with three targets in a three-level inheritance chain,
//! then times the real `vss` binary (release build) on: the first run, an unchanged resync, a
//! run after 1% of the secrets changed, and a dry run. Each run is compared with a floor
//! measured in the same process just before: reading and parsing every source file once.
//! Secrets/s counts target secrets (3 × N) per second; peak RSS is the child's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod events;
mod nats;
mod targeted;
mod vault_aws;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: vss-bench embedded [--sizes 10000,100000] | vault-aws [--sizes 1000,10000] | nats [--latency-ms 20] | events [--writes 200] | targeted [--sizes 1000,10000]";
    let Some(which) = args
        .first()
        .filter(|a| ["embedded", "vault-aws", "nats", "events", "targeted"].contains(&a.as_str()))
    else {
        bail!("{usage}");
    };
    if which == "events" {
        let writes = match args.iter().position(|a| a == "--writes") {
            Some(i) => args.get(i + 1).context("--writes needs a value")?.parse()?,
            None => 200,
        };
        return events::run(&build_vss()?, writes);
    }
    if which == "nats" {
        let latency = match args.iter().position(|a| a == "--latency-ms") {
            Some(i) => args.get(i + 1).context("--latency-ms needs a value")?.parse()?,
            None => 20,
        };
        return nats::run(&build_vss()?, Duration::from_millis(latency));
    }
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--sizes") {
        Some(i) => args
            .get(i + 1)
            .context("--sizes needs a value")?
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()?,
        None if which == "vault-aws" || which == "targeted" => vec![1_000, 10_000],
        None => vec![10_000, 100_000],
    };
    if which == "targeted" {
        return targeted::run(&sizes);
    }
    let vss = build_vss()?;
    if which == "vault-aws" {
        return vault_aws::run(&vss, &sizes);
    }
    println!(
        "vss embedded benchmark: file stores, 3 targets (Base -> Staging -> Production), merge + sync"
    );
    println!(
        "{:>8}  {:<16} {:>9} {:>12} {:>10} {:>9}",
        "secrets", "run", "wall", "secrets/s", "peak RSS", "x floor"
    );
    for n in sizes {
        bench_size(&vss, n)?;
    }
    Ok(())
}

/// Builds the release `vss` binary beside this one.
fn build_vss() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "vss-coordinator", "--bin", "vss"])
        .status()?;
    if !status.success() {
        bail!("building vss failed");
    }
    let bin = std::env::current_exe()?.parent().context("exe dir")?.join("vss");
    if !bin.exists() {
        bail!("vss not found at {}", bin.display());
    }
    Ok(bin)
}

fn write_secret(dir: &Path, name: &str, value: &serde_json::Value) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.json"));
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(path, value.to_string())?;
    Ok(())
}

fn secret_name(i: usize) -> String {
    format!("team{:02}/app{i:06}", i % 50)
}

fn bench_size(vss: &Path, n: usize) -> anyhow::Result<()> {
    let ws = tempfile::tempdir()?;
    let root = ws.path();
    for i in 0..n {
        let v = serde_json::json!({
            "host": format!("db{i}.internal"), "port": 5432, "user": format!("user{i}"),
            "password": format!("pw-{i:08}-xxxxxxxxxxxxxxxx"), "options": {"ssl": true, "pool": 5},
            "allowed": ["10.0.0.0/8"],
        });
        write_secret(&root.join("src/common"), &secret_name(i), &v)?;
    }
    for i in (0..n).step_by(10) {
        write_secret(
            &root.join("src/staging"),
            &secret_name(i),
            &serde_json::json!({"host": format!("stg{i}"), "allowed": ["10.1.0.0/16"]}),
        )?;
        write_secret(
            &root.join("src/production"),
            &secret_name(i + 5),
            &serde_json::json!({"host": format!("prod{i}"), "options": {"pool": 20}}),
        )?;
    }
    std::fs::write(
        root.join("vss.yaml"),
        "merge_store: { file: { dir: merged } }
sources:
  common: { file: { dir: src/common } }
  staging: { file: { dir: src/staging } }
  production: { file: { dir: src/production } }
targets:
  Base: { imports: [common], store: { file: { dir: out/base } } }
  Staging: { inherits: Base, imports: [staging], store: { file: { dir: out/staging } } }
  Production: { inherits: Staging, imports: [production], store: { file: { dir: out/production } }, delete: true }
",
    )?;

    let floor = read_floor(&root.join("src"))?;
    row(n, "floor (read all)", floor, None, floor)?;
    let runs: [(&str, &[&str]); 4] = [
        ("first run", &[]),
        ("unchanged", &[]),
        ("1% changed", &[]),
        ("dry run, 1% chg", &["--dry-run"]),
    ];
    for (label, extra) in runs {
        if label.starts_with("1%") || label.starts_with("dry") {
            let step = 100;
            for i in (0..n).step_by(step) {
                let v = serde_json::json!({"host": format!("db{i}.internal"), "rotated": label});
                write_secret(&root.join("src/common"), &secret_name(i), &v)?;
            }
        }
        let (wall, rss_kb) = run_vss(vss, root, extra)?;
        row(n, label, wall, Some(rss_kb), floor)?;
    }
    Ok(())
}

fn row(
    n: usize,
    label: &str,
    wall: Duration,
    rss_kb: Option<i64>,
    floor: Duration,
) -> anyhow::Result<()> {
    let per_sec = (3 * n) as f64 / wall.as_secs_f64();
    let rss = rss_kb.map_or("-".to_string(), |kb| format!("{:.0} MiB", kb as f64 / 1024.0));
    println!(
        "{n:>8}  {label:<16} {:>8.2}s {per_sec:>12.0} {rss:>10} {:>8.1}x",
        wall.as_secs_f64(),
        wall.as_secs_f64() / floor.as_secs_f64()
    );
    Ok(())
}

/// Reads and parses every source file once: the least any sync of these sources must do.
fn read_floor(dir: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut pending = vec![dir.to_path_buf()];
    let mut count = 0usize;
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                let bytes = std::fs::read(entry.path())?;
                let v: serde_json::Value = serde_json::from_slice(&bytes)?;
                count += usize::from(v.is_object());
            }
        }
    }
    std::hint::black_box(count);
    Ok(start.elapsed())
}

/// Runs `vss pipeline` in `dir`; returns wall time and the child's peak RSS in KiB.
#[allow(unsafe_code)] // wait4: the child's own peak RSS, which std does not expose
fn run_vss(vss: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<(Duration, i64)> {
    let start = Instant::now();
    let child = Command::new(vss)
        .current_dir(dir)
        .args(["pipeline", "--config", "vss.yaml", "--output", "json"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain libc call on our own child; `usage` is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("vss failed (status {status})");
    }
    Ok((wall, usage.ru_maxrss))
}
