//! `vss-bench targeted [--sizes 1000,10000]`: the cost of a targeted run (one changed secret)
//! as the source grows, on file stores, in-process (the jobs `vss serve` runs for an event).
//!
//! For each size N: a source of N secrets, two targets (Child inherits Base), one full run;
//! then 100 times: change one secret, run the targeted run of it. Prints the median and p95
//! time of a targeted run, its store calls, and its ratio to a floor measured just before in
//! the same process: the same file reads and writes made directly (read the source file,
//! write the merged copies and the target files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use vss_protocol::config::{Config, Timeouts};
use vss_protocol::job::Outcome;
use vss_protocol::plan::{Changes, PlanRequest, plan_run};

const RUNS: usize = 100;
const CONFIG: &str = "merge_store: { file: { dir: merged } }
sources:
  app: { file: { dir: src } }
targets:
  Base: { imports: [app], store: { file: { dir: out/base } }, delete: true }
  Child: { inherits: Base, store: { file: { dir: out/child } }, delete: true }
";

/// Runs the benchmark for each size.
pub fn run(sizes: &[usize]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "vss targeted-run benchmark: one changed secret, file stores, in-process, {RUNS} runs"
    );
    println!(
        "{:>7}  {:>9} {:>9} {:>9} {:>8}  store calls per run",
        "secrets", "median", "p95", "floor", "x floor"
    );
    let mut medians = Vec::new();
    for &n in sizes {
        let root = tempfile::tempdir()?;
        std::fs::write(root.path().join("vss.yaml"), CONFIG)?;
        for i in 0..n {
            write(root.path(), &format!("src/team{}/app{i:06}", i % 10), &json!({"n": i}))?;
        }
        let cfg = Config::from_yaml(CONFIG, "vss.yaml", root.path(), &|_| None)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        runtime.block_on(execute(&cfg, &PlanRequest::default()))?;
        let floor = floor(root.path(), n)?;
        let mut times = Vec::with_capacity(RUNS);
        let mut calls = 0;
        for run in 0..RUNS {
            let name = secret_name(run, n);
            write(root.path(), &format!("src/{name}"), &json!({"n": "changed", "run": run}))?;
            let changes = Changes {
                sources: BTreeMap::from([("app".to_string(), BTreeSet::from([name]))]),
                ..Default::default()
            };
            let req = PlanRequest { changes: Some(changes), ..Default::default() };
            let started = Instant::now();
            calls = runtime.block_on(execute(&cfg, &req))?;
            times.push(started.elapsed());
        }
        times.sort();
        let (median, p95) = (times[RUNS / 2], times[RUNS * 95 / 100]);
        medians.push(median);
        println!(
            "{n:>7}  {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.1}x  {calls}",
            ms(median),
            ms(p95),
            ms(floor),
            median.as_secs_f64() / floor.as_secs_f64()
        );
    }
    if let (Some(first), Some(last)) = (medians.first(), medians.last()) {
        println!(
            "median at {} / median at {}: {:.2}x",
            sizes.last().unwrap_or(&0),
            sizes.first().unwrap_or(&0),
            last.as_secs_f64() / first.as_secs_f64()
        );
    }
    Ok(())
}

/// The secret run `run` changes: spread over the source, as it was written.
fn secret_name(run: usize, n: usize) -> String {
    let i = (run * 7919) % n;
    format!("team{}/app{i:06}", i % 10)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn write(root: &Path, name: &str, value: &serde_json::Value) -> anyhow::Result<()> {
    let path = root.join(format!("{name}.json"));
    std::fs::create_dir_all(path.parent().context("a folder")?)?;
    std::fs::write(path, value.to_string())?;
    Ok(())
}

/// Runs every job of `req` in-process; the store calls it made.
async fn execute(cfg: &Config, req: &PlanRequest) -> anyhow::Result<u64> {
    let plan = plan_run(cfg, "bench", req)?;
    let ctx = vss_worker::WorkerContext::new(false, Timeouts::default());
    for job in &plan.jobs {
        let result = vss_worker::execute(job, &ctx).await;
        anyhow::ensure!(result.outcome == Outcome::Succeeded, "{}: {:?}", job.id, result.outcome);
    }
    Ok(ctx.stores().api_calls().values().flat_map(|ops| ops.values()).sum())
}

/// The median of doing a targeted run's file work directly: read the source secret, write
/// the two merged copies and the two target files (each through a temp file and a rename).
fn floor(root: &Path, n: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let name = secret_name(run, n);
        let started = Instant::now();
        let text = std::fs::read(root.join(format!("src/{name}.json")))?;
        for folder in ["merged/targets/Base", "merged/targets/Child", "out/base", "out/child"] {
            let path = root.join(format!("{folder}/{name}.json"));
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, &path)?;
        }
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[RUNS / 2])
}
