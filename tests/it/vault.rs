//! The vault store against a real OpenBao server: as source, merge store and target.

use serde_json::json;
use vss_protocol::SecretValue;
use vss_protocol::config::{SecretRef, Timeouts, VaultAuth, VaultConnection, VaultSpec};
use vss_stores::vault::VaultStore;
use vss_stores::{ErrorKind, Precondition, SecretStore};
use vss_tests::servers::{OpenBao, ROOT_TOKEN};
use vss_tests::{Run, Workspace, counts, target};

const TOKEN_ENV: &str = "VSS_TEST_VAULT_TOKEN";

fn config(bao: &OpenBao) -> String {
    format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: {TOKEN_ENV} }} }} }}
merge_store: {{ vault: {{ mount: secret, prefix: merged }} }}
sources:
  common: {{ vault: {{ path: secret/src/common }} }}
  prod: {{ vault: {{ path: secret/src/prod }} }}
  local: {{ file: {{ dir: local }} }}
targets:
  Base: {{ imports: [common], store: {{ file: {{ dir: out/base }} }} }}
  Production: {{ inherits: Base, imports: [prod, local], store: {{ vault: {{ path: secret/out/prod }} }}, delete: true }}
",
        bao.address
    )
}

fn run(ws: &Workspace, args: &[&str]) -> Run {
    let mut all = vec!["pipeline", "--config", "vss.yaml", "--output", "json"];
    all.extend_from_slice(args);
    ws.run_env(&all, &[(TOKEN_ENV, ROOT_TOKEN)])
}

fn seeded() -> (OpenBao, Workspace) {
    let bao = OpenBao::start();
    bao.put("src/common/app/db", &json!({"host": "db", "port": 5432, "tags": ["a"]}));
    bao.put("src/common/shared/flags", &json!({"beta": false}));
    bao.put("src/prod/app/db", &json!({"host": "db-prod", "tags": ["p"]}));
    bao.put("src/prod/payments/key", &json!({"key": "k1"}));
    let ws = Workspace::new();
    ws.config(&config(&bao));
    ws.secret("local", "app/db", json!({"pool": 20}));
    (bao, ws)
}

#[test]
fn vault_sources_merge_store_and_target_end_to_end() {
    let (bao, ws) = seeded();
    let first = run(&ws, &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(counts(&target(&first.json(), "Production")["summary"]), (3, 0, 0, 0));
    assert_eq!(
        ws.read_secret("out/base", "app/db").unwrap(),
        json!({"host": "db", "port": 5432, "tags": ["a"]})
    );
    let (db, version) = bao.get("out/prod/app/db").unwrap();
    assert_eq!(db, json!({"host": "db-prod", "port": 5432, "tags": ["a", "p"], "pool": 20}));
    assert_eq!(version, 1);
    assert!(bao.get("merged/targets/Production/app/db").is_some(), "merged results live in Vault");

    // Unchanged: no new KV version anywhere.
    let second = run(&ws, &["--exit-code"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(counts(&second.json()["summary"]), (0, 0, 0, 5));
    for path in ["out/prod/app/db", "out/prod/payments/key", "merged/targets/Production/app/db"] {
        assert_eq!(bao.get(path).unwrap().1, 1, "{path} gained a version");
    }

    // A source change flows through; drift in the target is repaired.
    bao.put("src/prod/payments/key", &json!({"key": "k2"}));
    bao.put("out/prod/shared/flags", &json!({"beta": "tampered"}));
    let third = run(&ws, &["--exit-code"]);
    assert_eq!(third.code, 1, "{}", third.stderr);
    let prod = target(&third.json(), "Production").clone();
    assert_eq!(counts(&prod["summary"]), (0, 2, 0, 1), "{prod}");
    assert_eq!(bao.get("out/prod/payments/key").unwrap(), (json!({"key": "k2"}), 2));
    assert_eq!(bao.get("out/prod/shared/flags").unwrap().0, json!({"beta": false}));

    // An owned orphan is deleted from Vault; a foreign secret is not.
    bao.put("out/prod/foreign", &json!({"owner": "someone else"}));
    bao.delete("src/prod/payments/key");
    let fourth = run(&ws, &[]);
    assert_eq!(fourth.code, 0, "{}", fourth.stderr);
    assert_eq!(counts(&target(&fourth.json(), "Production")["summary"]), (0, 0, 1, 2));
    assert!(bao.get("out/prod/payments/key").is_none());
    assert!(bao.get("out/prod/foreign").is_some());
}

#[test]
fn vault_dry_run_writes_nothing_to_vault() {
    let (bao, ws) = seeded();
    let run = run(&ws, &["--dry-run", "--exit-code"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(counts(&target(&run.json(), "Production")["summary"]), (3, 0, 0, 0));
    assert_eq!(bao.list(""), vec!["src/"], "nothing but the sources in the mount");
}

#[test]
fn vault_errors_name_the_store_and_never_the_token() {
    let (_bao, ws) = seeded();
    let run =
        ws.run_env(&["pipeline", "--config", "vss.yaml"], &[(TOKEN_ENV, "wrong-token-canary")]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains("vault:http://127.0.0.1:") && run.stdout.contains("HTTP 403"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("wrong-token-canary") && !run.stderr.contains("wrong-token-canary")
    );
    let run = ws.run(&["pipeline", "--config", "vss.yaml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains(&format!("environment variable {TOKEN_ENV} is not set")),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn vault_writes_are_check_and_set() {
    let bao = OpenBao::start();
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), ROOT_TOKEN).unwrap();
    let store = VaultStore::open(
        &VaultSpec {
            connection: VaultConnection {
                address: bao.address.clone(),
                namespace: None,
                auth: VaultAuth::Token(SecretRef::File(token.path().into())),
            },
            mount: "secret".into(),
            prefix: "cas".into(),
            paths: Vec::new(),
        },
        &Timeouts::default(),
    )
    .unwrap();
    let value = |v: serde_json::Value| SecretValue::new(v.as_object().unwrap().clone());
    let v1 = store.write("s", &value(json!({"a": 1})), Precondition::Absent).await.unwrap();
    let again = store.write("s", &value(json!({"a": 2})), Precondition::Absent).await.unwrap_err();
    assert_eq!(again.kind, ErrorKind::Conflict, "{again}");
    let v2 =
        store.write("s", &value(json!({"a": 3})), Precondition::Matches(v1.clone())).await.unwrap();
    let stale =
        store.write("s", &value(json!({"a": 4})), Precondition::Matches(v1)).await.unwrap_err();
    assert_eq!(stale.kind, ErrorKind::Conflict);
    let listed = store.list("").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), &listed[0].version), ("s", &v2));
    assert_eq!(store.read("s").await.unwrap().unwrap().value.expose()["a"], 3);
    assert_eq!(store.api_calls().get("write"), Some(&4));
}

#[test]
fn vault_canary_values_never_leave_the_stores() {
    const CANARY: &str = "CANARY-vault-71d2";
    let bao = OpenBao::start();
    bao.put("src/common/app/db", &json!({"password": format!("{CANARY}-1"), "list": [CANARY]}));
    bao.put("src/prod/app/db", &json!({"password": format!("{CANARY}-2"), "extra": CANARY}));
    let ws = Workspace::new();
    ws.config(&config(&bao));
    ws.secret("local", "app/api", json!({"token": CANARY}));
    let mut outputs = Vec::new();
    let mut all_formats = |ws: &Workspace, extra: &[&str]| {
        for format in ["human", "json", "github"] {
            let mut args = vec!["pipeline", "--config", "vss.yaml", "--output", format];
            args.extend_from_slice(extra);
            let run = ws.run_env(&args, &[(TOKEN_ENV, ROOT_TOKEN), ("RUST_LOG", "trace")]);
            outputs.push(run.stdout);
            outputs.push(run.stderr);
        }
    };
    all_formats(&ws, &["--dry-run"]);
    all_formats(&ws, &[]);
    bao.put("src/prod/app/db", &json!({"password": format!("{CANARY}-3")}));
    bao.put("out/prod/app/api", &json!({"token": format!("{CANARY}-drift")}));
    all_formats(&ws, &["--dry-run"]);
    all_formats(&ws, &[]);
    assert_eq!(bao.get("out/prod/app/db").unwrap().0["password"], format!("{CANARY}-3"));
    assert!(outputs.iter().any(|o| o.contains("TRACE")), "trace logging was on");
    for text in &outputs {
        assert!(!text.contains(CANARY), "canary leaked:\n{text}");
    }
}

#[tokio::test]
async fn vault_approle_tokens_are_renewed_or_replaced_before_they_lapse() {
    let bao = OpenBao::start();
    let (role_id, secret_id) = bao.approle("4s");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        SecretRef::File(path)
    };
    let store = VaultStore::open(
        &VaultSpec {
            connection: VaultConnection {
                address: bao.address.clone(),
                namespace: None,
                auth: VaultAuth::AppRole {
                    mount: "approle".into(),
                    role_id: file("role", &role_id),
                    secret_id: file("secret", &secret_id),
                },
            },
            mount: "secret".into(),
            prefix: "approle".into(),
            paths: Vec::new(),
        },
        &Timeouts::default(),
    )
    .unwrap();
    let value = SecretValue::new(json!({"k": 1}).as_object().unwrap().clone());
    let calls = |op: &str| store.api_calls().get(op).copied().unwrap_or(0);
    store.write("a", &value, Precondition::Absent).await.unwrap();
    assert_eq!((calls("login"), calls("renew")), (1, 0));
    // Two thirds into the 4 s lease, the token is renewed.
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    store.write("b", &value, Precondition::Absent).await.unwrap();
    assert_eq!((calls("login"), calls("renew")), (1, 1));
    // Past the lease, the renewal is refused and the store logs in again.
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    store.write("c", &value, Precondition::Absent).await.unwrap();
    assert_eq!(calls("login"), 2, "{:?}", store.api_calls());
    assert_eq!(store.list("").await.unwrap().len(), 3);
}

#[test]
fn vault_approle_from_reference_config_spelling() {
    let (bao, ws) = seeded();
    let (role_id, secret_id) = bao.approle("1h");
    let config = config(&bao).replace(
        &format!("auth: {{ token: {{ env: {TOKEN_ENV} }} }}"),
        "auth: { approle: { role_id: \"${VSS_ROLE_ID}\", secret_id: \"${VSS_SECRET_ID}\" } }",
    );
    ws.config(&config);
    let env = [("VSS_ROLE_ID", role_id.as_str()), ("VSS_SECRET_ID", secret_id.as_str())];
    let run = ws.run_env(&["pipeline", "--config", "vss.yaml", "--output", "json"], &env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(counts(&target(&run.json(), "Production")["summary"]), (3, 0, 0, 0));
    assert!(!run.stdout.contains(&secret_id) && !run.stderr.contains(&secret_id));
}

#[test]
fn vault_source_paths_select_secrets_by_glob() {
    let bao = OpenBao::start();
    for path in ["shared/db", "shared/deep/x", "team-a/y", "team-a/sub/z", "other"] {
        bao.put(path, &json!({"p": path}));
    }
    let ws = Workspace::new();
    ws.config(&format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: {TOKEN_ENV} }} }} }}
source: {{ vault: {{ mount: secret, paths: [\"shared/*\", \"team-a/**\"] }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }} }}
",
        bao.address
    ));
    let run = run(&ws, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let names: Vec<String> = target(&run.json(), "T")["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["shared/db", "team-a/sub/z", "team-a/y"]);

    ws.config(&format!(
        "vault: {{ address: \"{}\" }}\nsource: {{ file: {{ dir: s }} }}\ntargets:\n  T: {{ store: {{ vault: {{ mount: secret, paths: [\"a/*\"] }} }} }}\n",
        bao.address
    ));
    let check = ws.run(&["validate", "--config", "vss.yaml"]);
    assert!(
        check.stderr.contains("targets.T.store.vault.paths: `paths` filters what a source reads"),
        "{}",
        check.stderr
    );
}

/// Store calls of one run of every job of `config`, in-process, by store.
async fn calls_of_run(
    config: &str,
    root: &std::path::Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> {
    use vss_protocol::config::Config;
    use vss_protocol::job::Outcome;
    use vss_protocol::plan::{PlanRequest, plan_run};
    let cfg = Config::from_yaml(config, "vss.yaml", root, &|_| None).unwrap();
    let plan = plan_run(&cfg, "run", &PlanRequest::default()).unwrap();
    let ctx = vss_worker::WorkerContext::new(false, Timeouts::default());
    for job in &plan.jobs {
        let result = vss_worker::execute(job, &ctx).await;
        assert_eq!(result.outcome, Outcome::Succeeded, "{}", job.id);
    }
    ctx.stores().api_calls()
}

#[tokio::test]
async fn vault_unchanged_resync_is_listings_and_metadata_only() {
    let bao = OpenBao::start();
    for i in 0..20 {
        bao.put(&format!("src/app{i:02}"), &json!({"i": i}));
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, ROOT_TOKEN).unwrap();
    let config = format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ file: \"{}\" }} }} }}
merge_store: {{ vault: {{ path: secret/merged }} }}
sources:
  src: {{ vault: {{ path: secret/src }} }}
targets:
  T: {{ imports: [src], store: {{ vault: {{ path: secret/out }} }}, delete: true }}
",
        bao.address,
        token.display()
    );
    let first = calls_of_run(&config, dir.path()).await;
    let target =
        |calls: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
         op: &str| {
            calls
                .iter()
                .find(|(s, _)| s.ends_with("/secret/out"))
                .and_then(|(_, c)| c.get(op))
                .copied()
                .unwrap_or(0)
        };
    assert_eq!(target(&first, "write"), 20, "{first:?}");

    let second = calls_of_run(&config, dir.path()).await;
    for (store, calls) in &second {
        assert_eq!(calls.get("write"), None, "{store} wrote on an unchanged run: {second:?}");
    }
    let source = second.iter().find(|(s, _)| s.ends_with("/secret/src")).unwrap().1;
    assert_eq!(source.get("read"), None, "no source value read: {second:?}");
    assert_eq!(target(&second, "read"), 0, "no target value read: {second:?}");
    assert_eq!(target(&second, "metadata"), 20, "one metadata read per target secret: {second:?}");
    assert_eq!(target(&second, "list"), 1, "{second:?}");
}

#[test]
fn vault_stamps_let_a_run_without_its_ledger_skip_reads_and_keep_ownership() {
    let (bao, ws) = seeded();
    assert_eq!(run(&ws, &[]).code, 0);
    let meta = bao.metadata("out/prod/app/db");
    assert_eq!(meta["custom_metadata"]["vss-managed-by"], "vss:Production", "{meta}");
    assert_eq!(meta["custom_metadata"]["vss-version"], "1", "{meta}");
    assert_eq!(meta["custom_metadata"]["vss-content-hash"].as_str().unwrap().len(), 64);

    // Without the ledger (a new machine, a stateless worker) the stamps still vouch for the
    // current values and mark what vss owns.
    std::fs::remove_dir_all(ws.path().join(".vss/state/targets")).unwrap();
    bao.delete("src/prod/payments/key");
    let run = ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json"],
        &[(TOKEN_ENV, ROOT_TOKEN), ("RUST_LOG", "vss_coordinator=debug")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(counts(&target(&run.json(), "Production")["summary"]), (0, 0, 1, 2));
    assert!(bao.get("out/prod/payments/key").is_none(), "the stamped orphan was deleted");
    // One LIST per folder (4), one metadata read per secret plus one before the delete, and a
    // single value read: the orphan's, for its key names.
    let calls = run.stderr.lines().find(|l| l.contains("api_calls")).expect("call counts logged");
    let target_calls = calls.split("secret/out/prod\": ").nth(1).expect("target store calls");
    assert!(
        target_calls.starts_with("{\"delete\": 1, \"list\": 4, \"metadata\": 4, \"read\": 1}"),
        "{target_calls}"
    );
}

#[tokio::test]
async fn vault_throttling_is_retried_after_the_wait_the_server_asks_for() {
    let bao = OpenBao::start();
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), ROOT_TOKEN).unwrap();
    let store = VaultStore::open(
        &VaultSpec {
            connection: VaultConnection {
                address: bao.address.clone(),
                namespace: None,
                auth: VaultAuth::Token(SecretRef::File(token.path().into())),
            },
            mount: "secret".into(),
            prefix: "throttled".into(),
            paths: Vec::new(),
        },
        &Timeouts::default(),
    )
    .unwrap();
    bao.rate_limit(2, "1s");
    let value = SecretValue::new(json!({"k": 1}).as_object().unwrap().clone());
    let started = std::time::Instant::now();
    for i in 0..6 {
        store.write(&format!("s{i}"), &value, Precondition::Absent).await.unwrap();
    }
    let calls = store.api_calls()["write"];
    assert!(calls > 6, "429s were retried: {calls} write calls for 6 writes");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "the waits were honoured");
    assert_eq!(store.list("").await.unwrap().len(), 6);
}

#[test]
fn vault_merge_store_holds_the_manifest_of_a_large_target() {
    // OpenBao refuses JSON objects with thousands of strings; a manifest of 1,200 secrets
    // (3 strings each) must still be writable.
    let bao = OpenBao::start();
    let ws = Workspace::new();
    for i in 0..1200 {
        ws.secret("src", &format!("s{i:04}"), json!({"i": i}));
    }
    ws.config(&format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: {TOKEN_ENV} }} }} }}
merge_store: {{ vault: {{ path: secret/merged }} }}
sources:
  src: {{ file: {{ dir: src }} }}
targets:
  T: {{ imports: [src], store: {{ file: {{ dir: out }} }} }}
",
        bao.address
    ));
    let first = run(&ws, &[]);
    assert_eq!(first.code, 0, "{}", first.stdout);
    assert_eq!(counts(&first.json()["summary"]), (1200, 0, 0, 0));
    assert_eq!(counts(&run(&ws, &[]).json()["summary"]), (0, 0, 0, 1200));
}
