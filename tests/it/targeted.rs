//! Targeted runs: a run limited to a few changed secrets touches only those names, costs the
//! same for a target of 1,000 secrets or 10,000, journals its ledger records, and leaves the
//! next full run with nothing to write.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::json;
use vss_protocol::config::{Config, Timeouts};
use vss_protocol::diff::ChangeType;
use vss_protocol::job::{JobResult, Outcome};
use vss_protocol::plan::{Changes, PlanRequest, plan_run};
use vss_tests::Workspace;

const CONFIG: &str = "merge_store: { file: { dir: merged } }
sources:
  app: { file: { dir: src } }
  other: { file: { dir: other } }
targets:
  Base: { imports: [app], store: { file: { dir: out/base } }, delete: true }
  Child: { inherits: Base, store: { file: { dir: out/child } }, delete: true }
  Unrelated: { imports: [other], store: { file: { dir: out/unrelated } } }
";

/// Calls by store and operation, and the results, of one in-process run of `req`.
struct Ran {
    calls: BTreeMap<String, BTreeMap<String, u64>>,
    results: Vec<JobResult>,
}

impl Ran {
    /// Calls of `operation` over every store.
    fn total(&self, operation: &str) -> u64 {
        self.calls.values().filter_map(|ops| ops.get(operation)).sum()
    }
}

async fn run(root: &Path, req: &PlanRequest) -> Ran {
    let text = std::fs::read_to_string(root.join("vss.yaml")).unwrap();
    let cfg = Config::from_yaml(&text, "vss.yaml", root, &|_| None).unwrap();
    let plan = plan_run(&cfg, "run", req).unwrap();
    let ctx = vss_worker::WorkerContext::new(req.dry_run, Timeouts::default());
    let mut results = Vec::new();
    for job in &plan.jobs {
        let result = vss_worker::execute(job, &ctx).await;
        assert_eq!(result.outcome, Outcome::Succeeded, "{}: {result:?}", job.id);
        results.push(result);
    }
    Ran { calls: ctx.stores().api_calls(), results }
}

fn changed(source: &str, names: &[&str]) -> PlanRequest {
    let names: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    let changes =
        Changes { sources: BTreeMap::from([(source.into(), names)]), ..Default::default() };
    PlanRequest { changes: Some(changes), ..Default::default() }
}

/// A workspace with `size` secrets in `app`, fully synced once.
async fn synced(size: usize) -> Workspace {
    let ws = Workspace::new();
    ws.config(CONFIG);
    for i in 0..size {
        ws.secret("src", &format!("team{}/app{i:05}", i % 10), json!({"n": i, "list": [i]}));
    }
    ws.secret("other", "x", json!({"x": 1}));
    run(ws.path(), &PlanRequest::default()).await;
    ws
}

fn read(ws: &Workspace, path: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ws.path().join(path)).unwrap()).unwrap()
}

#[tokio::test]
async fn a_targeted_run_costs_the_same_at_1k_and_10k_secrets() {
    let mut costs = Vec::new();
    for size in [1_000, 10_000] {
        let ws = synced(size).await;
        ws.secret("src", "team3/app00003", json!({"n": "changed", "list": [3]}));
        let started = std::time::Instant::now();
        let ran = run(ws.path(), &changed("app", &["team3/app00003"])).await;
        let took = started.elapsed();
        let ids: Vec<&str> = ran.results.iter().map(|r| r.job_id.as_str()).collect();
        assert_eq!(ids, ["merge:Base", "merge:Child", "sync:Base", "sync:Child"]);
        assert_eq!(ran.total("list"), 0, "{:?}", ran.calls);
        assert_eq!(ran.total("write"), 4, "two merged copies, two targets: {:?}", ran.calls);
        for out in ["out/base", "out/child"] {
            let value = read(&ws, &format!("{out}/team3/app00003.json"));
            assert_eq!(value["n"], "changed", "{out}");
        }
        assert!(ws.path().join(".vss/state/targets/Base.journal").exists(), "records journaled");
        eprintln!("{size} secrets: {:?} in {took:?}", ran.calls);
        let root = ws.path().display().to_string();
        let by_store: BTreeMap<String, BTreeMap<String, u64>> =
            ran.calls.iter().map(|(store, ops)| (store.replace(&root, ""), ops.clone())).collect();
        costs.push(by_store);

        // The full run after it writes nothing, and folds the journal into the ledger.
        let full = run(ws.path(), &PlanRequest::default()).await;
        // The merge manifests learn the new versions (a manifest is a per-target document,
        // so targeted runs leave it to the next full merge); no secret is written.
        assert_eq!(full.total("write"), 2, "the two manifests only: {:?}", full.calls);
        assert!(!ws.path().join(".vss/state/targets/Base.journal").exists());
        let changes: usize = full.results.iter().map(|r| r.changes.len()).sum();
        assert_eq!(changes, 0);
    }
    assert_eq!(costs[0], costs[1], "the same calls whatever the target's size");
}

#[tokio::test]
async fn a_targeted_delete_removes_only_what_vss_owns() {
    let ws = synced(20).await;
    // Someone else's secret at a name that then appears and disappears in the source.
    ws.secret("out/base", "theirs", json!({"mine": false}));
    std::fs::remove_file(ws.path().join("src/team1/app00001.json")).unwrap();
    let ran = run(ws.path(), &changed("app", &["team1/app00001", "theirs"])).await;
    for out in ["merged/targets/Base", "out/base", "out/child"] {
        assert!(!ws.path().join(format!("{out}/team1/app00001.json")).exists(), "{out}");
    }
    assert!(ws.path().join("out/base/theirs.json").exists(), "never vss's: kept");
    let removed: usize = ran
        .results
        .iter()
        .flat_map(|r| &r.changes)
        .filter(|c| c.change_type == ChangeType::Removed)
        .count();
    assert_eq!(removed, 4, "{:?}", ran.results);

    // Nothing for the unrelated target, and a dry run changes nothing.
    ws.secret("src", "team2/app00002", json!({"n": "dry"}));
    let dry = PlanRequest { dry_run: true, ..changed("app", &["team2/app00002"]) };
    let plan = run(ws.path(), &dry).await;
    assert!(plan.results.iter().all(|r| r.target != "Unrelated"));
    let would: Vec<&str> = plan
        .results
        .iter()
        .flat_map(|r| &r.changes)
        .filter(|c| c.change_type == ChangeType::Modified)
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(would.len(), 4, "merged copies and targets of Base and Child: {would:?}");
    assert_eq!(read(&ws, "out/base/team2/app00002.json")["n"], 2, "a dry run writes nothing");
    assert_eq!(read(&ws, "merged/targets/Base/team2/app00002.json")["n"], 2);
}
