//! Secret values never appear in any output, log, error or file other than the stores: a
//! full set of runs with canary values, trace logging and every output format.

use serde_json::json;
use vss_tests::Workspace;

const CANARY: &str = "CANARY-5f3a9c";

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(CANARY), "canary leaked into {what}:\n{text}");
    assert!(!text.contains("canary-in-env"), "environment value leaked into {what}:\n{text}");
}

#[test]
fn canary_values_never_leave_the_stores() {
    let ws = Workspace::new();
    ws.config(
        "merge_store: { file: { dir: merged } }
sources:
  a: { file: { dir: src/a } }
  b: { file: { dir: src/b } }
targets:
  Base: { imports: [a], store: { file: { dir: out/base } } }
  Child: { inherits: Base, imports: [b], store: { file: { dir: out/child } }, delete: true }
",
    );
    for i in 0..8 {
        ws.secret("src/a", &format!("app/s{i}"), json!({"password": format!("{CANARY}-a{i}"), "list": [CANARY], "nested": {"k": CANARY}}));
    }
    ws.secret(
        "src/b",
        "app/s0",
        json!({"password": format!("{CANARY}-b"), "list": [format!("{CANARY}-b")]}),
    );
    let summary = ws.path().join("summary.md");
    let env = [("RUST_LOG", "trace"), ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap())];
    let formats = ["human", "json", "github"];

    let mut outputs = Vec::new();
    let mut run_all = |ws: &Workspace, extra: &[&str]| {
        for format in formats {
            for log in ["text", "json"] {
                let mut args = vec![
                    "--log-format",
                    log,
                    "pipeline",
                    "--config",
                    "vss.yaml",
                    "--output",
                    format,
                ];
                args.extend_from_slice(extra);
                let run = ws.run_env(&args, &env);
                outputs.push((format!("{format}/{log} {extra:?} stdout"), run.stdout));
                outputs.push((format!("{format}/{log} {extra:?} stderr"), run.stderr));
            }
        }
    };
    // Planned creates, applied creates, unchanged.
    run_all(&ws, &["--dry-run"]);
    run_all(&ws, &[]);
    // Modifications (key-level diffs) and drift.
    ws.secret("src/b", "app/s0", json!({"password": format!("{CANARY}-b2"), "new": CANARY}));
    ws.secret("out/base", "app/s1", json!({"password": format!("{CANARY}-drift")}));
    run_all(&ws, &["--dry-run"]);
    run_all(&ws, &["--continue-on-error"]);
    // Failures: a malformed secret quoting the canary, and a refused mass delete.
    ws.write("src/b/broken.json", &format!("{{\"password\": \"{CANARY}\" oops"));
    run_all(&ws, &["--continue-on-error"]);
    std::fs::remove_file(ws.path().join("src/b/broken.json")).unwrap();
    for i in 1..8 {
        std::fs::remove_file(ws.path().join(format!("src/a/app/s{i}.json"))).unwrap();
    }
    run_all(&ws, &["--continue-on-error"]);

    assert!(
        outputs.iter().any(|(_, o)| o.contains("refusing to delete")),
        "the mass delete was refused"
    );
    assert!(
        outputs.iter().any(|(_, o)| o.contains("secret `broken`")),
        "the malformed secret was reported"
    );
    assert!(outputs.iter().any(|(_, o)| o.contains("keys_modified") || o.contains("~password")));
    assert!(
        outputs.iter().any(|(w, o)| w.contains("stderr") && o.contains("TRACE")
            || o.contains("\"level\":\"TRACE\"")),
        "trace logging was on"
    );
    for (what, text) in &outputs {
        assert_clean(what, text);
    }
    assert_clean("GITHUB_STEP_SUMMARY", &std::fs::read_to_string(&summary).unwrap());

    // Bookkeeping holds hashes, never values: ledger and merge manifests.
    for (path, text) in ws.contents() {
        let p = path.to_string_lossy();
        if p.contains("/.vss/") || p.contains("/merged/manifests/") {
            assert_clean(&p, &text);
        }
    }

    // A config value taken from the environment is never quoted, even in an error.
    ws.config("source: { file: { dir: src/a } }\npipeline: { sync: { parallel: \"${PAR}\" } }\ntargets: { T: { store: { file: { dir: o } } } }\n");
    let run = ws.run_env(&["validate", "--config", "vss.yaml"], &[("PAR", "canary-in-env")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("pipeline.sync.parallel"), "{}", run.stderr);
    assert_clean("validate stderr", &run.stderr);
}
