//! Deletion safety: opt-in, ownership, failed or empty sources, the mass-delete guard.

use serde_json::json;
use vss_tests::{Workspace, counts, target};

use crate::three_levels;

/// A sync-only workspace: `src` → target `T` in `out`, with `delete` as given.
fn direct(delete: &str, extra: &str) -> Workspace {
    let ws = Workspace::new();
    ws.config(&format!(
        "source: {{ file: {{ dir: src }} }}\ntargets:\n  T: {{ store: {{ file: {{ dir: out }} }}{delete} }}\n{extra}"
    ));
    ws
}

#[test]
fn deletes_happen_only_where_enabled() {
    let ws = three_levels();
    assert_eq!(ws.pipeline(&[]).code, 0);
    std::fs::remove_file(ws.path().join("src/common/shared/flags.json")).unwrap();
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    // Base and Staging have no `delete: true`: the orphan stays.
    assert_eq!(counts(&target(&report, "Staging")["summary"]), (0, 0, 0, 1));
    assert!(ws.read_secret("out/stg", "shared/flags").is_some());
    // Production opted in.
    let prod = target(&report, "Production");
    assert_eq!(counts(&prod["summary"]), (0, 0, 1, 2));
    assert_eq!(prod["changes"][0]["change_type"], "removed");
    assert!(prod["changes"][0]["desired_hash"].is_null());
    assert!(ws.read_secret("out/prod", "shared/flags").is_none());
}

#[test]
fn only_secrets_vss_wrote_are_deleted() {
    let ws = direct(", delete: true", "");
    ws.secret("src", "mine", json!({"k": 1}));
    ws.secret("src", "also-mine", json!({"k": 2}));
    ws.secret("out", "foreign", json!({"owner": "someone else"}));
    assert_eq!(ws.pipeline(&[]).code, 0);
    std::fs::remove_file(ws.path().join("src/also-mine.json")).unwrap();
    let run = ws.pipeline(&[]);
    assert_eq!(counts(&target(&run.json(), "T")["summary"]), (0, 0, 1, 1));
    assert!(ws.read_secret("out", "also-mine").is_none());
    assert_eq!(ws.read_secret("out", "foreign").unwrap(), json!({"owner": "someone else"}));
}

#[test]
fn delete_orphans_in_the_pipeline_section_turns_deletion_on() {
    let ws = direct("", "pipeline: { sync: { delete_orphans: true } }\n");
    ws.secret("src", "a", json!({"k": 1}));
    ws.secret("src", "b", json!({"k": 1}));
    assert_eq!(ws.pipeline(&[]).code, 0);
    std::fs::remove_file(ws.path().join("src/b.json")).unwrap();
    assert_eq!(counts(&ws.pipeline(&[]).json()["summary"]), (0, 0, 1, 1));
}

#[test]
fn a_failed_source_read_never_deletes() {
    let ws = direct(", delete: true", "");
    ws.secret("src", "a", json!({"k": 1}));
    ws.secret("src", "b", json!({"k": 2}));
    assert_eq!(ws.pipeline(&[]).code, 0);
    std::fs::remove_file(ws.path().join("src/b.json")).unwrap();
    ws.write("src/a.json", "{ broken");
    let run = ws.pipeline(&["--allow-mass-delete"]);
    assert_eq!(run.code, 2);
    let t = target(&run.json(), "T").clone();
    assert_eq!(t["status"], "failed");
    assert!(t["changes"].as_array().unwrap().is_empty());
    assert!(ws.read_secret("out", "a").is_some() && ws.read_secret("out", "b").is_some());
}

#[test]
fn an_empty_source_never_deletes() {
    let ws = direct(", delete: true", "");
    ws.secret("src", "a", json!({"k": 1}));
    assert_eq!(ws.pipeline(&[]).code, 0);
    std::fs::remove_file(ws.path().join("src/a.json")).unwrap();
    let run = ws.pipeline(&["--allow-mass-delete"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = target(&run.json(), "T").clone();
    assert_eq!(counts(&t["summary"]), (0, 0, 0, 0));
    assert!(t["warnings"][0].as_str().unwrap().contains("deletes skipped"), "{t}");
    assert!(ws.read_secret("out", "a").is_some());
}

#[test]
fn mass_deletes_are_refused_unless_allowed() {
    let ws = direct(", delete: true", "");
    for i in 0..20 {
        ws.secret("src", &format!("s{i:02}"), json!({"i": i}));
    }
    assert_eq!(ws.pipeline(&[]).code, 0);
    for i in 0..7 {
        std::fs::remove_file(ws.path().join(format!("src/s{i:02}.json"))).unwrap();
    }
    ws.secret("src", "s19", json!({"i": "changed"}));
    let before = ws.contents();

    // 7 of 20 is more than 10% and more than 5.
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 2);
    let t = target(&run.json(), "T").clone();
    let error = t["error"].as_str().unwrap();
    assert!(
        error.contains("refusing to delete 7 of 20") && error.contains("--allow-mass-delete"),
        "{error}"
    );
    assert_eq!(ws.contents(), before, "a refused target changes nothing, updates included");

    let run = ws.pipeline(&["--allow-mass-delete"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(counts(&target(&run.json(), "T")["summary"]), (0, 1, 7, 12));
    assert!(ws.read_secret("out", "s00").is_none());
}

#[test]
fn the_mass_delete_threshold_is_configurable() {
    let ws = direct(", delete: true", "pipeline: { sync: { max_delete_count: 10 } }\n");
    for i in 0..20 {
        ws.secret("src", &format!("s{i:02}"), json!({"i": i}));
    }
    assert_eq!(ws.pipeline(&[]).code, 0);
    for i in 0..7 {
        std::fs::remove_file(ws.path().join(format!("src/s{i:02}.json"))).unwrap();
    }
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(counts(&run.json()["summary"]), (0, 0, 7, 13));
}
