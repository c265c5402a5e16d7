//! `vss config schema`, the examples a user copies, and shell completions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vss_protocol::config::Config;
use vss_tests::{Workspace, schema, vss_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

#[test]
fn the_printed_schema_is_the_committed_one() {
    let ws = Workspace::new();
    let run = ws.run(&["config", "schema"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(printed, Config::schema());
    let committed = std::fs::read_to_string(repo().join("vss.schema.json")).expect("committed");
    let committed: serde_json::Value = serde_json::from_str(&committed).expect("JSON");
    assert_eq!(
        committed, printed,
        "vss.schema.json is stale: regenerate it with `vss config schema > vss.schema.json`"
    );
    assert_eq!(printed["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

#[test]
fn every_example_conforms_and_validates() {
    let env = [("VAULT_ADDR", "http://127.0.0.1:8200"), ("VAULT_TOKEN", "t"), ("NATS_TOKEN", "t")];
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples/") {
        let config = entry.expect("entry").path().join("vss.yaml");
        if !config.exists() {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&config).expect("readable");
        assert!(
            text.starts_with("# yaml-language-server: $schema=../../vss.schema.json"),
            "{} does not name the schema",
            config.display()
        );
        let violations = schema::violations(&text);
        assert!(violations.is_empty(), "{}: {violations:#?}", config.display());
        let ws = Workspace::new();
        let path = config.to_str().expect("UTF-8 path");
        let run = ws.run_env(&["validate", "--config", path], &env);
        assert_eq!(run.code, 0, "{}: {}", config.display(), run.stderr);
    }
    assert!(seen >= 4, "the quickstart and three examples: found {seen}");
}

#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    for (bad, why) in [
        (
            "source: { file: { dir: s } }\ntargets: { A: { store: { fiel: { dir: o } } } }\n",
            "unknown store kind",
        ),
        (
            "source: { file: { dir: s } }\ntargets: { A: { imports: [], stroe: { file: { dir: o } } } }\n",
            "unknown key",
        ),
        (
            "source: { file: { dir: s } }\npipeline: { sync: { parallel: lots } }\ntargets: { A: [] }\n",
            "wrong type",
        ),
        (
            "source: { file: { dir: s } }\ntargets: { A: { store: { github: { owner: o, repo: r, token: ghp_literal } } } }\n",
            "literal credential",
        ),
        (
            "source: { vault: { path: secret/a } }\nvault: { auth: { token: t, kubernetes: {} } }\ntargets: { A: [] }\nlog: { format: xml }\n",
            "unknown log format",
        ),
        (
            "source: { file: { dir: s } }\ntargets: { A: { account_id: \"12345\" } }\n",
            "short account id",
        ),
    ] {
        assert!(!schema::violations(bad).is_empty(), "{why}: the schema accepts\n{bad}");
        let ws = Workspace::new();
        ws.write("vss.yaml", bad);
        let run = ws.run(&["validate", "--config", "vss.yaml"]);
        assert_eq!(run.code, 2, "{why}: vss accepts\n{bad}");
    }
    // The shorthands the loader accepts conform too.
    let ok = "source: { file: { dir: s } }\ntargets:\n  A: []\n  B: { account_id: 123456789012 }\n";
    assert_eq!(schema::violations(ok), Vec::<String>::new());
}

#[test]
fn completions_are_printed_for_each_shell() {
    let ws = Workspace::new();
    for shell in ["bash", "zsh", "fish"] {
        let run = ws.run(&["completions", shell]);
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("pipeline") && run.stdout.contains("migrate"), "{shell}");
    }
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let ws = Workspace::new();
    ws.config("source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } } }\n");
    ws.secret("src", "a", serde_json::json!({"k": 1}));
    for args in [
        &["config", "schema"][..],
        &["graph", "--config", "vss.yaml"],
        &["validate", "--config", "vss.yaml"],
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
    ] {
        let mut child = Command::new(vss_bin())
            .current_dir(ws.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vss starts");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("vss ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(ws.read_secret("out", "a"), Some(serde_json::json!({"k": 1})), "the run ran");
}
