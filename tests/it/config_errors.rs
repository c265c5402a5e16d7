//! Bad config: every error at once, each naming file, line and key; nothing changes.

use serde_json::json;
use vss_tests::Workspace;

#[test]
fn validate_prints_every_error_with_file_line_and_key() {
    let ws = Workspace::new();
    ws.config(
        "merge_store: { file: { dir: m } }
sources:
  common: { file: { dir: c } }
targets:
  Base: { imports: [comon], store: { file: { dir: o } } }
  Staging: { inherits: Bsae, store: { file: { dir: o2 } } }
  Loop: { imports: [Loop], store: { file: { dir: o3 } } }
  Bare: { imports: [common] }
",
    );
    let run = ws.run(&["validate", "--config", "vss.yaml"]);
    assert_eq!(run.code, 2);
    for expected in [
        "config has 4 errors",
        "vss.yaml:5: targets.Base.imports[0]: unknown source or target `comon` (did you mean `common`?)",
        "vss.yaml:6: targets.Staging.inherits: unknown parent target `Bsae` (did you mean `Base`?)",
        "vss.yaml:7: targets.Loop: inheritance cycle: Loop -> Loop",
        "vss.yaml:8: targets.Bare: the target has no `store` to sync to",
    ] {
        assert!(run.stderr.contains(expected), "missing {expected:?} in:\n{}", run.stderr);
    }
}

#[test]
fn unknown_keys_and_wrong_types() {
    let ws = Workspace::new();
    ws.config("merge_store: { file: { dir: m } }\npipeline:\n  sync: { parallel: lots }\ntargets:\n  A: { improts: [], store: { file: { dir: o } } }\n");
    let run = ws.run(&["validate", "--config", "vss.yaml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("vss.yaml:3: pipeline.sync.parallel: wrong type"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "vss.yaml:5: targets.A.improts: unknown key `improts` (did you mean `imports`?)"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn cycles_through_several_targets_print_the_chain() {
    let ws = Workspace::new();
    ws.config("merge_store: { file: { dir: m } }\ntargets:\n  Production: { imports: [Staging], store: { file: { dir: a } } }\n  Staging: { imports: [Production], store: { file: { dir: b } } }\n");
    let run = ws.run(&["validate", "--config", "vss.yaml"]);
    assert!(
        run.stderr.contains("inheritance cycle: Production -> Staging -> Production"),
        "{}",
        run.stderr
    );
}

#[test]
fn merge_enabled_without_a_merge_store() {
    let ws = Workspace::new();
    ws.config("pipeline: { merge: { enabled: true } }\nsources: { s: { file: { dir: s } } }\ntargets:\n  A: { imports: [s], store: { file: { dir: o } } }\n");
    let run = ws.run(&["validate", "--config", "vss.yaml"]);
    assert!(run.stderr.contains("vss.yaml:1: pipeline.merge.enabled: the merge phase is enabled but no `merge_store` is configured"), "{}", run.stderr);
}

#[test]
fn invalid_yaml_and_missing_files() {
    let ws = Workspace::new();
    ws.config("targets:\n  A: { store: [\n");
    let run = ws.run(&["validate", "--config", "vss.yaml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("vss.yaml:") && run.stderr.contains("invalid YAML"),
        "{}",
        run.stderr
    );
    let run = ws.run(&["validate", "--config", "nope.yaml"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot read config file nope.yaml"), "{}", run.stderr);
}

#[test]
fn not_yet_supported_reference_keys_are_named() {
    let ws = Workspace::new();
    ws.config("dynamic_targets: { sandboxes: { imports: [a] } }\nsource: { file: { dir: s } }\ntargets:\n  A: { store: { file: { dir: o } } }\n");
    let run = ws.run(&["validate", "--config", "vss.yaml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(
            "vss.yaml:1: dynamic_targets: the `dynamic_targets` section is not supported yet"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_reference_style_config_validates_zero_sum() {
    let ws = Workspace::new();
    ws.config(
        "log: { level: info, format: json }
merge_store: { file: { dir: \"${MERGE_DIR}\" } }
sources:
  analytics: { file: { dir: src/analytics } }
  engineers: { file: { dir: \"${ENG_DIR:-src/engineers}\" } }
targets:
  Serverless_Stg: { imports: [analytics, engineers], store: { file: { dir: out/stg } } }
  Serverless_Prod: { imports: [Serverless_Stg], store: { file: { dir: out/prod } } }
pipeline:
  merge: { parallel: 4 }
  sync: { parallel: 4, delete_orphans: false }
  dry_run: false
  continue_on_error: true
",
    );
    ws.secret("src/analytics", "db", json!({"user": "a"}));
    ws.secret("src/engineers", "db", json!({"pass": "b"}));
    let env = [("MERGE_DIR", "merged")];
    let run = ws.run_env(&["pipeline", "--config", "vss.yaml"], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(ws.read_secret("out/prod", "db").unwrap(), json!({"user": "a", "pass": "b"}));
    // The migration check: the same config, dry run, exit code 0 = zero-sum.
    let run = ws.run_env(&["pipeline", "--config", "vss.yaml", "--dry-run", "--exit-code"], &env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // `log.format: json` from the config applies to stderr.
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml"],
        &[("MERGE_DIR", "merged"), ("RUST_LOG", "info")],
    );
    let first = run.stderr.lines().next().expect("log lines");
    assert!(serde_json::from_str::<serde_json::Value>(first).is_ok(), "{first}");

    let run = ws.run(&["validate", "--config", "vss.yaml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(
            "vss.yaml:2: merge_store.file.dir: environment variable `MERGE_DIR` is not set"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bad_config_changes_nothing() {
    let ws = crate::three_levels();
    ws.config(&format!(
        "{}  Extra: {{ imports: [nope], store: {{ file: {{ dir: x }} }} }}\n",
        crate::THREE_LEVELS
    ));
    let before = ws.contents();
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 2);
    assert!(run.stdout.is_empty(), "no report for a config that does not load");
    assert!(run.stderr.contains("unknown source or target `nope`"), "{}", run.stderr);
    assert_eq!(ws.contents(), before);
}

#[test]
fn a_vault_address_without_a_scheme_is_a_clear_error_never_a_panic() {
    let ws = Workspace::new();
    ws.config(
        "vault: { address: \"localhost:8200\" }\nsource: { vault: { path: secret/app } }\ntargets:\n  T: { store: { file: { dir: out } } }\n",
    );
    let run = ws.run(&["validate", "--config", "vss.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(
        run.stderr.contains("vss.yaml:1: vault.address: `localhost:8200` is not a URL: write http://localhost:8200 or https://localhost:8200"),
        "{}",
        run.stderr
    );
    let run = ws.run_env(
        &["migrate", "status", "--dir", "migrations", "--vault-addr", "localhost:8200"],
        &[("VAULT_TOKEN", "t")],
    );
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("is not an http:// or https:// URL"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}
