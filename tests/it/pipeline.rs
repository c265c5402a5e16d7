//! The pipeline end to end: merge rules, inheritance, idempotence, dry runs, phase and target
//! selection, exit codes.

use serde_json::json;
use vss_tests::{Workspace, counts, target};

use crate::three_levels;

#[test]
fn deep_merge_rules_through_three_levels_of_inheritance() {
    let ws = three_levels();
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(counts(&target(&report, "Base")["summary"]), (2, 0, 0, 0));
    assert_eq!(counts(&target(&report, "Staging")["summary"]), (2, 0, 0, 0));
    assert_eq!(counts(&target(&report, "Production")["summary"]), (3, 0, 0, 0));
    assert_eq!(counts(&report["summary"]), (7, 0, 0, 0));

    assert_eq!(
        ws.read_secret("out/base", "app/db").unwrap(),
        json!({"host": "db", "port": 5432, "opts": {"ssl": true}, "tags": ["a"]})
    );
    // Maps merge recursively, lists append in layer order, scalars override.
    assert_eq!(
        ws.read_secret("out/stg", "app/db").unwrap(),
        json!({"host": "db-stg", "port": 5432, "opts": {"ssl": true, "pool": 5}, "tags": ["a", "b"]})
    );
    // `null` keeps the earlier value; a child inherits its parent's whole merged result.
    assert_eq!(
        ws.read_secret("out/prod", "app/db").unwrap(),
        json!({"host": "db-prod", "port": 5432, "opts": {"ssl": true, "pool": 5}, "tags": ["a", "b", "c"]})
    );
    assert_eq!(ws.read_secret("out/prod", "shared/flags").unwrap(), json!({"beta": false}));
    assert_eq!(ws.read_secret("out/prod", "payments/key").unwrap(), json!({"key": "k1"}));
    assert!(
        ws.read_secret("out/stg", "payments/key").is_none(),
        "children do not leak into parents"
    );
}

#[test]
fn type_conflicts_take_the_later_value_and_list_merge_modes_apply() {
    let ws = Workspace::new();
    ws.config(
        "merge_store: { file: { dir: m } }
sources:
  a: { file: { dir: a } }
  b: { file: { dir: b } }
targets:
  Append: { imports: [a, b], store: { file: { dir: o1 } } }
  Unique: { imports: [a, b], store: { file: { dir: o2 } }, list_merge: append_unique }
  Replace: { imports: [a, b], store: { file: { dir: o3 } }, list_merge: replace }
",
    );
    ws.secret("a", "s", json!({"l": [1, 2], "t": {"x": 1}, "keep": "a"}));
    ws.secret("b", "s", json!({"l": [2, 3], "t": "flat"}));
    assert_eq!(ws.pipeline(&[]).code, 0);
    assert_eq!(
        ws.read_secret("o1", "s").unwrap(),
        json!({"l": [1, 2, 2, 3], "t": "flat", "keep": "a"})
    );
    assert_eq!(
        ws.read_secret("o2", "s").unwrap(),
        json!({"l": [1, 2, 3], "t": "flat", "keep": "a"})
    );
    assert_eq!(ws.read_secret("o3", "s").unwrap(), json!({"l": [2, 3], "t": "flat", "keep": "a"}));
}

#[test]
fn a_second_run_changes_nothing_and_rewrites_no_file() {
    let ws = three_levels();
    assert_eq!(ws.pipeline(&[]).code, 0);
    let before = ws.mtimes();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let run = ws.pipeline(&["--exit-code"]);
    assert_eq!(run.code, 0, "no changes → exit 0 with --exit-code\n{}", run.stderr);
    assert_eq!(counts(&run.json()["summary"]), (0, 0, 0, 7));
    assert_eq!(ws.mtimes(), before, "an unchanged resync writes nothing");
    // Lists never grow on re-runs.
    assert_eq!(ws.read_secret("out/prod", "app/db").unwrap()["tags"], json!(["a", "b", "c"]));
}

#[test]
fn a_source_change_flows_to_every_descendant() {
    let ws = three_levels();
    assert_eq!(ws.pipeline(&[]).code, 0);
    ws.secret("src/common", "shared/flags", json!({"beta": true, "new": 1}));
    let run = ws.pipeline(&["--exit-code"]);
    assert_eq!(run.code, 1, "changes → exit 1 with --exit-code");
    let report = run.json();
    for name in ["Base", "Staging", "Production"] {
        let t = target(&report, name);
        assert_eq!(counts(&t["summary"]).1, 1, "{name}: {t}");
        let change = &t["changes"][0];
        assert_eq!(change["path"], "shared/flags");
        assert_eq!(change["change_type"], "modified");
        assert_eq!(change["keys_added"], json!(["new"]));
        assert_eq!(change["keys_modified"], json!(["beta"]));
        assert_ne!(change["current_hash"], change["desired_hash"]);
    }
    assert_eq!(
        ws.read_secret("out/prod", "shared/flags").unwrap(),
        json!({"beta": true, "new": 1})
    );
}

#[test]
fn drift_in_a_target_is_detected_and_repaired() {
    let ws = three_levels();
    assert_eq!(ws.pipeline(&[]).code, 0);
    ws.secret("out/stg", "app/db", json!({"host": "tampered"}));
    let run = ws.pipeline(&["--exit-code"]);
    assert_eq!(run.code, 1);
    let stg = target(&run.json(), "Staging").clone();
    assert_eq!(counts(&stg["summary"]), (0, 1, 0, 1));
    assert_eq!(ws.read_secret("out/stg", "app/db").unwrap()["host"], "db-stg");
}

#[test]
fn dry_run_writes_nothing_anywhere() {
    let ws = three_levels();
    let before = ws.contents();
    let run = ws.pipeline(&["--dry-run", "--exit-code"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["dry_run"], true);
    // The plan is complete: children see what their parents' merges would produce.
    assert_eq!(counts(&report["summary"]), (7, 0, 0, 0));
    assert_eq!(ws.contents(), before, "no merge store, target or state file appeared");

    // After a real run, a dry run with a pending change reports it and still writes nothing.
    assert_eq!(ws.pipeline(&[]).code, 0);
    ws.secret("src/prod", "payments/key", json!({"key": "k2"}));
    let before = ws.mtimes();
    let run = ws.pipeline(&["--dry-run"]);
    assert_eq!(run.code, 0, "without --exit-code a successful dry run exits 0");
    assert_eq!(counts(&target(&run.json(), "Production")["summary"]), (0, 1, 0, 2));
    assert_eq!(ws.mtimes(), before);
}

#[test]
fn pipeline_dry_run_in_the_config_is_honoured() {
    let ws = three_levels();
    ws.config(&format!("{}\npipeline: {{ dry_run: true }}\n", crate::THREE_LEVELS));
    let before = ws.contents();
    let run = ws.pipeline(&[]);
    assert_eq!(run.json()["dry_run"], true);
    assert_eq!(ws.contents(), before);
}

#[test]
fn merge_only_then_sync_only() {
    let ws = three_levels();
    let run = ws.pipeline(&["--merge-only"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["phase"], "merge");
    assert_eq!(counts(&target(&report, "Production")["summary"]), (3, 0, 0, 0));
    assert!(ws.read_secret("merged", "targets/Production/app/db").is_some());
    assert!(!ws.path().join("out").exists(), "merge-only never touches targets");

    let run = ws.pipeline(&["--sync-only"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["phase"], "sync");
    assert_eq!(counts(&report["summary"]), (7, 0, 0, 0));
    assert_eq!(ws.read_secret("out/prod", "app/db").unwrap()["host"], "db-prod");
}

#[test]
fn sync_only_before_any_merge_is_a_clear_error() {
    let ws = three_levels();
    let run = ws.pipeline(&["--sync-only"]);
    assert_eq!(run.code, 2);
    let base = target(&run.json(), "Base").clone();
    assert_eq!(base["status"], "failed");
    assert!(base["error"].as_str().unwrap().contains("run the merge phase first"), "{base}");
}

#[test]
fn sync_from_a_direct_source_without_merge() {
    let ws = Workspace::new();
    ws.config("source: { file: { dir: src } }\ntargets:\n  A: { store: { file: { dir: a } } }\n  B: { store: { file: { dir: b } } }\n");
    ws.secret("src", "x/y", json!({"k": "v"}));
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(counts(&run.json()["summary"]), (2, 0, 0, 0));
    assert_eq!(ws.read_secret("b", "x/y").unwrap(), json!({"k": "v"}));
    assert_eq!(counts(&ws.pipeline(&[]).json()["summary"]), (0, 0, 0, 2));
}

#[test]
fn selected_targets_run_with_their_parents_merges() {
    let ws = three_levels();
    let run = ws.pipeline(&["--targets", "Production", "--parallelism", "1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["targets"].as_array().unwrap().len(), 1);
    assert_eq!(counts(&target(&report, "Production")["summary"]), (3, 0, 0, 0));
    assert!(!ws.path().join("out/base").exists() && !ws.path().join("out/stg").exists());
    assert!(ws.read_secret("merged", "targets/Staging/app/db").is_some(), "parents were merged");

    let run = ws.pipeline(&["--targets", "Prod"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown target `Prod`")
            && run.stderr.contains("did you mean `Production`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_failed_target_stops_the_run_unless_continue_on_error() {
    let ws = Workspace::new();
    ws.config(
        "merge_store: { file: { dir: m } }
sources:
  good: { file: { dir: good } }
  bad: { file: { dir: bad } }
targets:
  Broken: { imports: [bad], store: { file: { dir: o1 } } }
  Child: { inherits: Broken, store: { file: { dir: o2 } } }
  Fine: { imports: [good], store: { file: { dir: o3 } } }
",
    );
    ws.secret("good", "s", json!({"k": 1}));
    ws.write("bad/s.json", "{ not json");

    let run =
        ws.run(&["pipeline", "--config", "vss.yaml", "--output", "json", "--parallelism", "1"]);
    assert_eq!(run.code, 2);
    let report = run.json();
    let broken = target(&report, "Broken");
    assert_eq!(broken["status"], "failed");
    let error = broken["error"].as_str().unwrap();
    assert!(
        error.contains("target `Broken`") && error.contains("secret `s`") && error.contains("bad"),
        "{error}"
    );
    assert_eq!(target(&report, "Child")["status"], "skipped");
    assert_eq!(target(&report, "Fine")["status"], "skipped", "the run stopped at the first error");
    assert!(ws.read_secret("o3", "s").is_none());

    let run = ws.pipeline(&["--continue-on-error", "--parallelism", "1", "--exit-code"]);
    assert_eq!(run.code, 2, "errors win over changes with --exit-code");
    let report = run.json();
    assert_eq!(target(&report, "Child")["status"], "skipped");
    assert_eq!(target(&report, "Fine")["status"], "ok");
    assert_eq!(ws.read_secret("o3", "s").unwrap(), json!({"k": 1}));
}

#[test]
fn a_configured_hash_key_is_used_and_changing_it_rewrites_nothing() {
    let ws = three_levels();
    ws.config(&format!("{}hash_key: {{ env: VSS_TEST_HASH_KEY }}\n", crate::THREE_LEVELS));
    let key = |k: &str| [("VSS_TEST_HASH_KEY", k.to_string())];
    let run = |k: &str| {
        let env = key(k);
        ws.run_env(
            &["pipeline", "--config", "vss.yaml", "--output", "json"],
            &[(env[0].0, env[0].1.as_str())],
        )
    };
    let first = run("first key").json();
    let hash = |r: &serde_json::Value| target(r, "Base")["changes"][0]["desired_hash"].clone();
    assert_eq!(counts(&first["summary"]), (7, 0, 0, 0));
    assert!(!ws.path().join(".vss/state/hash-key").exists(), "a configured key is not generated");

    // Same content under another key: every hash differs from the records, so values are
    // read and compared, and nothing is rewritten.
    let before = ws.mtimes();
    let second = run("second key").json();
    assert_eq!(counts(&second["summary"]), (0, 0, 0, 7));
    let targets_before: Vec<_> =
        before.iter().filter(|(p, _)| p.to_string_lossy().contains("/out/")).collect();
    let after = ws.mtimes();
    for (path, mtime) in targets_before {
        assert_eq!(after.get(path), Some(mtime), "{} was rewritten", path.display());
    }
    // Hashes depend on the key.
    ws.secret("src/common", "shared/flags", json!({"beta": true}));
    let a = run("second key").json();
    ws.secret("src/common", "shared/flags", json!({"beta": false}));
    run("first key");
    ws.secret("src/common", "shared/flags", json!({"beta": true}));
    let b = run("first key").json();
    assert_ne!(hash(&a), hash(&b));

    let missing = ws.run(&["pipeline", "--config", "vss.yaml"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("VSS_TEST_HASH_KEY"), "{}", missing.stderr);
}

#[test]
fn a_failed_write_fails_its_target_and_keeps_what_succeeded() {
    let ws = Workspace::new();
    ws.config("source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } } }\n");
    ws.secret("src", "a", json!({"k": 1}));
    ws.secret("src", "b", json!({"k": 2}));
    // A non-empty folder where `b.json` must go makes that one write fail.
    ws.write("out/b.json/blocker", "x");
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 2);
    let t = target(&run.json(), "T").clone();
    assert_eq!(t["status"], "failed");
    assert!(t["error"].as_str().unwrap().contains("secret `b`"), "{t}");
    assert_eq!(ws.read_secret("out", "a").unwrap(), json!({"k": 1}));
    // Only what was done is counted: `b` failed, so it is not "added".
    assert_eq!(counts(&t["summary"]), (1, 0, 0, 0), "{t}");
    assert_eq!(t["not_applied"], json!(["b"]), "{t}");
    let human = ws.run(&["pipeline", "--config", "vss.yaml"]);
    assert!(
        human.stdout.contains("Applied: 0 added, 0 modified, 0 removed, 1 unchanged"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("1 changes not applied"), "{}", human.stdout);

    std::fs::remove_dir_all(ws.path().join("out/b.json")).unwrap();
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        counts(&target(&run.json(), "T")["summary"]),
        (1, 0, 0, 1),
        "only `b` is left to create"
    );
}

#[test]
fn an_unreadable_manifest_is_rebuilt() {
    let ws = three_levels();
    assert_eq!(ws.pipeline(&[]).code, 0);
    ws.write("merged/manifests/Base.json", r#"{"secrets": 5}"#);
    let run = ws.pipeline(&["--exit-code"]);
    assert_eq!(run.code, 0, "derived data; nothing to change:\n{}", run.stderr);
    assert!(run.stderr.contains("unreadable manifest ignored"), "{}", run.stderr);
    let rebuilt = ws.read_secret("merged", "manifests/Base").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(rebuilt["vss-manifest"].as_str().unwrap()).unwrap();
    assert_eq!(manifest["secrets"].as_object().unwrap().len(), 2, "{manifest}");
}
