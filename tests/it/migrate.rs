//! `vss migrate` against a real OpenBao.

use serde_json::{Value, json};
use vss_tests::servers::{OpenBao, ROOT_TOKEN};
use vss_tests::{Run, Workspace};

const SCHEMA_V1: &str = r#"
desired_state:
  auth/approle:
    type: approle
    description: apps
  app/:
    type: kv-v2
    config: { default_lease_ttl: 1h }
  sys/policies/acl/app:
    policy: |
      path "app/data/*" {
        capabilities = ["read"]
      }
  auth/approle/role/app:
    token_ttl: 1h
    token_policies: app
  sys/audit/file: { type: file }
"#;

const SCHEMA_V2: &str = r#"
desired_state:
  auth/approle:
    type: approle
    description: applications
  app/:
    type: kv-v2
    config: { default_lease_ttl: 1h }
  kv1:
    type: kv
  sys/policies/acl/app:
    policy: |
      path "app/data/*" {
        capabilities = ["read", "list"]
      }
  auth/approle/role/app:
    token_ttl: 2h
    token_policies: app
"#;

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("token", ROOT_TOKEN);
    ws.write("schema.yaml", SCHEMA_V1);
    ws
}

fn migrate(ws: &Workspace, bao: &OpenBao, args: &[&str]) -> Run {
    migrate_env(ws, bao, args, &[])
}

/// `vss migrate <args>` against `bao`, with `env` added.
fn migrate_env(ws: &Workspace, bao: &OpenBao, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    all.extend(["--dir", "migrations", "--vault-addr", &bao.address]);
    all.extend(["--vault-token-file", "token"]);
    ws.run_env(&all, env)
}

fn files(ws: &Workspace) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ws.path().join("migrations"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with('V'));
    names.sort();
    names
}

/// What the schemas manage, as Vault reports it.
fn snapshot(bao: &OpenBao) -> Value {
    let mounts = bao.read("sys/mounts").unwrap();
    let mount = |m: &str| {
        mounts.get(m).map(|m| json!({"type": m["type"], "options": m["options"], "ttl": m["config"]["default_lease_ttl"]}))
    };
    let auth = bao.read("sys/auth").unwrap();
    let role = bao.read("auth/approle/role/app");
    json!({
        "app": mount("app/"),
        "kv1": mount("kv1/"),
        "approle": auth.get("approle/").map(|a| json!({"type": a["type"], "description": a["description"]})),
        "policy": bao.read("sys/policies/acl/app").map(|p| p["policy"].clone()),
        "role": role.map(|r| json!({"token_ttl": r["token_ttl"], "token_policies": r["token_policies"]})),
    })
}

#[test]
fn migrate_generate_apply_change_rollback_and_repair() {
    let bao = OpenBao::start();
    let ws = workspace();
    let before = snapshot(&bao);

    let first = migrate(&ws, &bao, &["generate", "--schema", "schema.yaml", "--name", "initial"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.contains("V0001__initial.yaml"), "{}", first.stdout);
    assert!(
        first.stderr.contains("sys/audit/file: audit devices are managed in OpenBao's config file")
    );
    let plan = migrate(&ws, &bao, &["plan", "--exit-code"]);
    assert_eq!(plan.code, 1, "pending: {}", plan.stdout);
    assert!(plan.stdout.contains("enable secrets engine app/"), "{}", plan.stdout);
    assert!(plan.stdout.contains("write auth/approle/role/app (keys: token_policies, token_ttl)"));

    let apply = migrate(&ws, &bao, &["apply"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(apply.stdout.trim(), "Applied V0001");
    let v1 = snapshot(&bao);
    assert_eq!(v1["app"], json!({"type": "kv", "options": {"version": "2"}, "ttl": 3600}));
    assert_eq!(v1["role"], json!({"token_ttl": 3600, "token_policies": ["app"]}));
    let status = migrate(&ws, &bao, &["status", "--exit-code"]);
    assert_eq!((status.code, status.stdout.trim()), (0, "applied  V0001 initial"));

    // Unchanged: normalization makes Vault's answers equal to the schema's spellings, even
    // with the policy re-indented.
    ws.write(
        "schema.yaml",
        &SCHEMA_V1.replace("        capabilities", "            capabilities  "),
    );
    let again = migrate(&ws, &bao, &["generate", "--schema", "schema.yaml"]);
    assert_eq!(
        (again.code, again.stdout.trim()),
        (0, "No changes required"),
        "{}\n{}",
        again.stderr,
        std::fs::read_to_string(ws.path().join("migrations/V0002__migration.yaml"))
            .unwrap_or_default()
    );
    assert_eq!(files(&ws), ["V0001__initial.yaml"]);

    ws.write("schema.yaml", SCHEMA_V2);
    let second =
        migrate(&ws, &bao, &["generate", "--schema", "schema.yaml", "--name", "More apps"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(files(&ws), ["V0001__initial.yaml", "V0002__more_apps.yaml"]);
    assert_eq!(migrate(&ws, &bao, &["apply"]).stdout.trim(), "Applied V0002");
    let v2 = snapshot(&bao);
    assert_eq!(v2["kv1"]["type"], "kv");
    assert_eq!(v2["approle"]["description"], "applications");
    assert_eq!(v2["role"]["token_ttl"], 7200);

    // V2's down tasks disable the new engine: refused without --allow-destructive.
    let careful = migrate(&ws, &bao, &["rollback", "--to", "1"]);
    assert_eq!(careful.code, 2);
    assert!(
        careful.stderr.contains("disable secrets engine kv1/ [destructive]"),
        "{}",
        careful.stderr
    );
    let back = migrate(&ws, &bao, &["rollback", "--to", "1", "--allow-destructive"]);
    assert_eq!((back.code, back.stdout.trim()), (0, "Rolled back V0002"), "{}", back.stderr);
    assert_eq!(snapshot(&bao), v1, "V1's state exactly");
    let status = migrate(&ws, &bao, &["status"]);
    assert!(status.stdout.contains("pending  V0002 more_apps"), "{}", status.stdout);

    let all_back = migrate(&ws, &bao, &["rollback", "--allow-destructive"]);
    assert_eq!(all_back.stdout.trim(), "Rolled back V0001", "{}", all_back.stderr);
    assert_eq!(snapshot(&bao), before, "the state before any migration");
    assert_eq!(migrate(&ws, &bao, &["repair"]).stdout.trim(), "Not dirty");
}

#[test]
fn migrate_a_failing_task_leaves_dirty_until_repaired() {
    let bao = OpenBao::start();
    let ws = workspace();
    ws.write(
        "schema.yaml",
        "desired_state:\n  a-good/: { type: kv }\n  z-bad/: { type: no-such-engine }\n",
    );
    assert_eq!(migrate(&ws, &bao, &["generate", "--schema", "schema.yaml"]).code, 0);
    let failed = migrate(&ws, &bao, &["apply"]);
    assert_eq!(failed.code, 2);
    assert!(
        failed.stderr.contains(
            "V0001 up task 2 (enable secrets engine z-bad/ (type=no-such-engine)) failed"
        ),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("marked dirty"), "{}", failed.stderr);
    let status = migrate(&ws, &bao, &["status"]);
    assert!(status.stdout.contains("DIRTY    V0001 up task 2"), "{}", status.stdout);
    let refused = migrate(&ws, &bao, &["apply"]);
    assert!(refused.stderr.contains("vss migrate repair"), "{}", refused.stderr);

    // A human fixes the (unapplied) migration, clears the flag, applies again.
    let file = ws.path().join("migrations/V0001__migration.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace("no-such-engine", "kv");
    std::fs::write(&file, text).unwrap();
    assert!(migrate(&ws, &bao, &["repair"]).stdout.contains("Cleared the dirty flag of V0001"));
    let apply = migrate(&ws, &bao, &["apply"]);
    assert_eq!((apply.code, apply.stdout.trim()), (0, "Applied V0001"), "{}", apply.stderr);
    assert!(bao.read("sys/mounts").unwrap().get("z-bad/").is_some());
}

#[test]
fn migrate_refuses_an_edited_applied_migration_and_destructive_generates() {
    let bao = OpenBao::start();
    let ws = workspace();
    migrate(&ws, &bao, &["generate", "--schema", "schema.yaml", "--name", "initial"]);
    assert_eq!(migrate(&ws, &bao, &["apply"]).code, 0);

    // Removing the mount from the schema is destructive.
    ws.write(
        "schema.yaml",
        &SCHEMA_V1.replace("  app/:\n    type: kv-v2\n    config: { default_lease_ttl: 1h }\n", ""),
    );
    let refused = migrate(&ws, &bao, &["generate", "--schema", "schema.yaml"]);
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("disable secrets engine app/ [destructive]"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--allow-destructive"));
    assert_eq!(files(&ws), ["V0001__initial.yaml"]);

    // Hand-written migrations: V0003 applied, then a V0002 appears below it.
    ws.write("migrations/V0003__later.yaml", "version: 3\nname: later\nup: []\ndown: []\n");
    assert_eq!(migrate(&ws, &bao, &["apply"]).stdout.trim(), "Applied V0003");
    ws.write("migrations/V0002__late.yaml", "version: 2\nname: late\nup: []\ndown: []\n");
    let late = migrate(&ws, &bao, &["apply"]);
    assert_eq!(late.code, 2);
    assert!(late.stderr.contains("V0002__late.yaml: out of order"), "{}", late.stderr);
    std::fs::remove_file(ws.path().join("migrations/V0002__late.yaml")).unwrap();

    // Secrets in a KV engine are not configuration.
    ws.write("kv-schema.yaml", "desired_state:\n  secret/data/app: { password: x }\n");
    let kv = migrate(&ws, &bao, &["generate", "--schema", "kv-schema.yaml"]);
    assert_eq!(kv.code, 2);
    assert!(
        kv.stderr.contains("secret/data/app is a secret in the KV engine secret/"),
        "{}",
        kv.stderr
    );

    let file = ws.path().join("migrations/V0001__initial.yaml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("# an innocent comment\n");
    std::fs::write(&file, text).unwrap();
    let edited = migrate(&ws, &bao, &["status"]);
    assert_eq!(edited.code, 2);
    assert!(
        edited.stderr.contains("V0001__initial.yaml: edited after it was applied"),
        "{}",
        edited.stderr
    );
}

#[test]
fn migrate_two_concurrent_applies_apply_each_migration_once() {
    let bao = OpenBao::start();
    let ws = workspace();
    assert_eq!(migrate(&ws, &bao, &["generate", "--schema", "schema.yaml"]).code, 0);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| migrate(&ws, &bao, &["apply"]));
        let b = s.spawn(|| migrate(&ws, &bao, &["apply"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a.code, b.code), (0, 0), "{}\n{}", a.stderr, b.stderr);
    let mut outputs = [a.stdout.trim().to_string(), b.stdout.trim().to_string()];
    outputs.sort();
    assert_eq!(outputs, ["Applied V0001", "Nothing to apply"]);
    let status = migrate(&ws, &bao, &["status", "--output", "json"]);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["applied"].as_array().unwrap().len(), 1);
}

#[test]
fn migrate_interpolated_values_are_applied_but_never_written_or_printed() {
    const SECRET: &str = "canary-migrate-5521";
    let bao = OpenBao::start();
    let ws = workspace();
    ws.write("schema.yaml", "desired_state:\n  auth/approle:\n    type: approle\n  auth/approle/role/ci:\n    token_ttl: 10m\n    secret_id_ttl: ${SID_TTL}\n    token_policies: \"${POLICY}\"\n");
    let missing = migrate(&ws, &bao, &["generate", "--schema", "schema.yaml"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("environment variable `SID_TTL` is not set"),
        "{}",
        missing.stderr
    );

    let env = [("SID_TTL", "5m"), ("POLICY", SECRET)];
    let run = |args: &[&str]| migrate_env(&ws, &bao, args, &env);
    let generated = run(&["generate", "--schema", "schema.yaml"]);
    assert_eq!(generated.code, 0, "{}", generated.stderr);
    let plan = run(&["plan"]);
    let apply = run(&["apply"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    let role = bao.read("auth/approle/role/ci").unwrap();
    assert_eq!(
        (role["secret_id_ttl"].clone(), role["token_policies"].clone()),
        (json!(300), json!([SECRET]))
    );
    for text in
        [generated.stdout, generated.stderr, plan.stdout, plan.stderr, apply.stdout, apply.stderr]
    {
        assert!(!text.contains(SECRET), "{text}");
    }
    for file in std::fs::read_dir(ws.path().join("migrations")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!text.contains(SECRET) && text.contains("${POLICY}"), "{text}");
    }
    let again = run(&["generate", "--schema", "schema.yaml"]);
    assert_eq!(again.stdout.trim(), "No changes required", "{}", again.stderr);
}

#[test]
fn migrate_a_released_lock_is_taken_silently_an_expired_one_with_a_warning() {
    let bao = OpenBao::start();
    let ws = workspace();
    let generate = migrate(&ws, &bao, &["generate", "--schema", "schema.yaml"]);
    assert_eq!(generate.code, 0, "{}", generate.stderr);
    for _ in 0..2 {
        let apply = migrate(&ws, &bao, &["apply"]);
        assert_eq!(apply.code, 0, "{}", apply.stderr);
        assert!(!apply.stderr.contains("taking over"), "{}", apply.stderr);
    }
    // A runner that died holding the lock left it to expire.
    bao.put("vss-migrations/lock", &json!({"owner": "crashed:1:1", "expires_at": 1}));
    let apply = migrate(&ws, &bao, &["apply"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert!(apply.stderr.contains("taking over an expired migration lock"), "{}", apply.stderr);
    assert!(apply.stderr.contains("crashed:1:1"), "{}", apply.stderr);
}
