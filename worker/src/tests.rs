//! The speed core, measured in store calls: an unchanged resync is listings only.

use std::collections::BTreeMap;
use std::path::Path;

use vss_protocol::config::Config;
use vss_protocol::job::Outcome;
use vss_protocol::plan::{PlanRequest, plan_run};

use crate::{WorkerContext, execute};

fn write(dir: &Path, name: &str, json: &str) {
    let path = dir.join(format!("{name}.json"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, json).unwrap();
}

/// Runs every job of a fresh plan with a fresh context (as a new process would) and returns
/// the store calls made, by store folder name.
async fn run(root: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    let config = "merge_store: { file: { dir: merged } }
sources:
  a: { file: { dir: src-a } }
  b: { file: { dir: src-b } }
targets:
  Parent: { imports: [a], store: { file: { dir: out-parent } } }
  Child: { inherits: Parent, imports: [b], store: { file: { dir: out-child } }, delete: true }
";
    let cfg = Config::from_yaml(config, "vss.yaml", root, &|_| None).unwrap();
    let plan = plan_run(&cfg, "run", &PlanRequest::default()).unwrap();
    let ctx = WorkerContext::new(false, Default::default());
    for job in &plan.jobs {
        let result = execute(job, &ctx).await;
        assert_eq!(result.outcome, Outcome::Succeeded, "{}", job.id);
    }
    let name = |spec: &str| root.join(spec).display().to_string();
    ctx.stores()
        .api_calls()
        .into_iter()
        .map(|(store, calls)| {
            let short = ["merged", "src-a", "src-b", "out-parent", "out-child"]
                .into_iter()
                .find(|s| store.ends_with(&name(s)))
                .unwrap_or("?")
                .to_string();
            (short, calls)
        })
        .collect()
}

fn calls(all: &BTreeMap<String, BTreeMap<String, u64>>, store: &str, op: &str) -> u64 {
    all.get(store).and_then(|c| c.get(op)).copied().unwrap_or(0)
}

#[tokio::test]
async fn an_unchanged_resync_is_listings_only() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        write(&dir.path().join("src-a"), &format!("s{i}"), &format!(r#"{{"i": {i}}}"#));
    }
    write(&dir.path().join("src-b"), "s0", r#"{"extra": true}"#);
    let first = run(dir.path()).await;
    assert_eq!(calls(&first, "out-child", "write"), 20);
    assert_eq!(calls(&first, "src-a", "read"), 20);

    let second = run(dir.path()).await;
    for store in ["src-a", "src-b", "out-parent", "out-child"] {
        assert_eq!(calls(&second, store, "read"), 0, "{store}: {second:?}");
        assert_eq!(calls(&second, store, "write"), 0, "{store}: {second:?}");
        assert_eq!(calls(&second, store, "compare"), 0, "{store}: {second:?}");
    }
    assert_eq!(calls(&second, "merged", "write"), 0, "{second:?}");
    // Only manifests are read from the merge store: each target's by its merge and its sync,
    // and the parent's by the child's merge.
    assert_eq!(calls(&second, "merged", "read"), 5, "{second:?}");
    // Listings: each merge lists its own folder (the parent layer comes from its manifest);
    // syncs trust the manifest their merge just checked.
    assert_eq!(calls(&second, "merged", "list"), 2, "{second:?}");

    // One changed source secret: merges reread that name only; each target gets one write.
    write(&dir.path().join("src-a"), "s3", r#"{"i": "changed"}"#);
    let third = run(dir.path()).await;
    assert_eq!(calls(&third, "src-a", "read"), 1, "{third:?}");
    assert_eq!(calls(&third, "src-b", "read"), 0, "src-b has no `s3`: {third:?}");
    assert_eq!(calls(&third, "out-parent", "write"), 1, "{third:?}");
    assert_eq!(calls(&third, "out-child", "write"), 1, "{third:?}");
    assert_eq!(calls(&third, "out-child", "read"), 1, "the changed secret, for its key diff");

    // A change in the layer that only the child imports.
    write(&dir.path().join("src-b"), "s0", r#"{"extra": false}"#);
    let fourth = run(dir.path()).await;
    assert_eq!(calls(&fourth, "src-a", "read"), 0, "{fourth:?}");
    assert_eq!(calls(&fourth, "src-b", "read"), 1, "{fourth:?}");
    assert_eq!(calls(&fourth, "out-parent", "write"), 0, "{fourth:?}");
    assert_eq!(calls(&fourth, "out-child", "write"), 1, "{fourth:?}");
}

#[tokio::test]
async fn a_touched_but_identical_source_rereads_only_that_source_secret() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write(&dir.path().join("src-a"), &format!("s{i}"), &format!(r#"{{"i": {i}}}"#));
    }
    run(dir.path()).await;
    // Rewritten with the same content: a new version, the same merge result.
    std::thread::sleep(std::time::Duration::from_millis(5));
    write(&dir.path().join("src-a"), "s1", r#"{"i": 1}"#);
    let calls_made = run(dir.path()).await;
    assert_eq!(calls(&calls_made, "src-a", "read"), 1, "{calls_made:?}");
    // The merged copies are vouched for by the manifest: only the two manifests and nothing
    // else are read there, twice each (merge and sync), plus the parent's by the child.
    assert_eq!(calls(&calls_made, "merged", "read"), 5, "{calls_made:?}");
    // The parent's manifest records the new inputs; the child's inputs did not move.
    assert_eq!(calls(&calls_made, "merged", "write"), 1, "{calls_made:?}");
    for target in ["out-parent", "out-child"] {
        assert_eq!(calls(&calls_made, target, "read"), 0, "{calls_made:?}");
        assert_eq!(calls(&calls_made, target, "write"), 0, "{calls_made:?}");
    }
}
