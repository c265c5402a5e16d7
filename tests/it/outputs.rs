//! Report formats and the streams they use: human, JSON, GitHub, logs, graphs.

use std::process::Command;

use serde_json::Value;
use vss_tests::{Workspace, vss_bin};

use crate::three_levels;

#[test]
fn human_output_is_a_plan_with_symbols_key_names_and_counts() {
    let ws = three_levels();
    let run = ws.run(&["pipeline", "--config", "vss.yaml", "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    assert!(out.contains("Production\n  + app/db  (+host, +opts, +port, +tags)"), "{out}");
    assert!(out.contains("  3 to add, 0 to change, 0 to delete, 0 unchanged"), "{out}");
    assert!(out.contains("Plan: 7 added, 0 modified, 0 removed, 0 unchanged across 3 targets (dry run: nothing was written)"), "{out}");
    assert!(!out.contains('\x1b'), "no colour when stdout is not a terminal");

    assert_eq!(ws.run(&["pipeline", "--config", "vss.yaml"]).code, 0);
    ws.secret(
        "src/prod",
        "app/db",
        serde_json::json!({"host": "db-prod-2", "tags": ["c"], "extra": 1}),
    );
    let run = ws.run(&["pipeline", "--config", "vss.yaml"]);
    assert!(run.stdout.contains("  ~ app/db  (+extra, ~host)"), "{}", run.stdout);
    assert!(run.stdout.contains("Base: no changes (2 unchanged)"), "{}", run.stdout);
}

/// Runs vss under a pseudo-terminal (util-linux `script`) and returns what it printed.
fn on_a_terminal(ws: &Workspace, no_color: bool) -> String {
    let cmd = format!("{} pipeline --config vss.yaml --dry-run", vss_bin().display());
    let mut script = Command::new("script");
    script
        .current_dir(ws.path())
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null());
    if no_color {
        script.env("NO_COLOR", "1");
    }
    let out = script.output().expect("script runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let ws = three_levels();
    assert!(on_a_terminal(&ws, false).contains("\x1b[32m+ app/db"), "colour on a terminal");
    // The progress bar may still move the cursor; colours (SGR 1, 3x) are gone.
    let plain = on_a_terminal(&ws, true);
    assert!(plain.contains("+ app/db"), "{plain}");
    assert!(
        !plain.contains("\x1b[3") && !plain.contains("\x1b[1m"),
        "NO_COLOR turns colour off: {plain:?}"
    );
}

#[test]
fn json_stays_clean_under_trace_logging() {
    let ws = three_levels();
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[("RUST_LOG", "trace")],
    );
    let report: Value =
        serde_json::from_str(&run.stdout).expect("stdout is exactly one JSON document");
    for key in ["dry_run", "summary", "targets"] {
        assert!(report.get(key).is_some(), "{key} in {report}");
    }
    for key in ["added", "modified", "removed", "unchanged", "total"] {
        assert!(report["summary"].get(key).is_some(), "summary.{key}");
    }
    let change = &report["targets"][0]["changes"][0];
    for key in [
        "path",
        "change_type",
        "keys_added",
        "keys_removed",
        "keys_modified",
        "current_hash",
        "desired_hash",
    ] {
        assert!(change.get(key).is_some(), "change.{key} in {change}");
    }
    assert!(run.stderr.contains("job finished"), "logs go to stderr: {}", run.stderr);
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let ws = three_levels();
    let run = ws.run_env(
        &["--log-format", "json", "pipeline", "--config", "vss.yaml"],
        &[("RUST_LOG", "info")],
    );
    assert_eq!(run.code, 0);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some());
    }
}

#[test]
fn github_output_writes_commands_and_a_step_summary() {
    let ws = three_levels();
    ws.write("src/bad/x.json", "nope");
    let config = crate::THREE_LEVELS.replace(
        "  prod: { file: { dir: src/prod } }",
        "  prod: { file: { dir: src/prod } }\n  bad: { file: { dir: src/bad } }",
    );
    ws.config(&format!(
        "{config}  Broken: {{ imports: [bad], store: {{ file: {{ dir: out/broken }} }} }}\n"
    ));
    let summary = ws.path().join("summary.md");
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "github", "--continue-on-error"],
        &[("GITHUB_STEP_SUMMARY", summary.to_str().unwrap())],
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains(
            "::notice title=vss Production::3 to add, 0 to change, 0 to delete, 0 unchanged"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("::error title=vss Broken::target `Broken`"), "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "::notice title=vss::7 added, 0 modified, 0 removed, 0 unchanged across 4 targets"
        ),
        "{}",
        run.stdout
    );
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("| Production | ok | 3 | 0 | 0 | 0 |"), "{md}");
    assert!(md.contains("| Broken | failed |"), "{md}");
    assert!(md.contains("- `+` payments/key"), "{md}");
}

#[test]
fn graph_draws_the_job_dag() {
    let ws = three_levels();
    let dot = ws.run(&["graph", "--config", "vss.yaml"]);
    assert_eq!(dot.code, 0);
    assert!(dot.stdout.starts_with("digraph vss {"), "{}", dot.stdout);
    assert!(dot.stdout.contains("\"merge:Base\" -> \"merge:Staging\""));
    assert!(dot.stdout.contains("\"merge:Staging\" -> \"merge:Production\""));
    assert!(dot.stdout.contains("\"merge:Production\" -> \"sync:Production\""));
    let mermaid = ws.run(&["graph", "--config", "vss.yaml", "--format", "mermaid"]);
    assert!(mermaid.stdout.starts_with("flowchart LR"));
    assert!(mermaid.stdout.contains("merge_Staging --> merge_Production"), "{}", mermaid.stdout);
}

#[test]
fn names_with_newlines_and_escape_codes_cannot_forge_report_lines() {
    let ws = Workspace::new();
    ws.config("source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } } }\n");
    let forged = "x\n  - forged (deleted)\nApplied: 99 added, 0 modified, 0 removed, 0 unchanged";
    ws.secret("src", forged, serde_json::json!({"k\u{1b}[8mhidden": "v"}));
    ws.secret("src", "plain\u{202e}txt", serde_json::json!({"k": "v"}));
    let run = ws.run(&["pipeline", "--config", "vss.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(!lines.iter().any(|l| l.starts_with("Applied: 99")), "{}", run.stdout);
    assert!(!lines.iter().any(|l| l.trim_start().starts_with("- forged")), "{}", run.stdout);
    assert!(
        !run.stdout.contains('\u{1b}'),
        "no escape code reaches the terminal: {:?}",
        run.stdout
    );
    assert!(!run.stdout.contains('\u{202e}'), "{:?}", run.stdout);
    assert!(run.stdout.contains("x\\u{a}  - forged"), "the name is shown, escaped: {}", run.stdout);
    assert!(run.stdout.contains("Applied: 2 added"), "{}", run.stdout);
}
