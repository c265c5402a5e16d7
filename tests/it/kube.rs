//! The `kubernetes` target through the `kube` client, against a local Kubernetes API reached
//! through a kubeconfig.

use serde_json::json;
use vss_tests::kubernetes::FakeKubernetes;
use vss_tests::{Run, Workspace, counts, target};

const TOKEN: &str = "kube-test-token-42";

fn workspace(kube: &FakeKubernetes) -> Workspace {
    let ws = Workspace::new();
    kube.kubeconfig(&ws.path().join("kubeconfig"));
    ws.config(
        "source: { file: { dir: src } }
targets:
  K: { store: { kubernetes: { namespace: apps } }, delete: true }
",
    );
    ws
}

fn run(ws: &Workspace) -> Run {
    let kubeconfig = ws.path().join("kubeconfig");
    ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json", "--exit-code"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    )
}

#[test]
fn kube_secrets_are_created_stamped_resynced_repaired_and_deleted() {
    const CANARY: &str = "CANARY-kube-8123";
    let kube = FakeKubernetes::start(TOKEN);
    let ws = workspace(&kube);
    ws.secret("src", "app/db_URL", json!({"user": "u", "port": 5432, "password": CANARY}));
    ws.secret("src", "api-key", json!({"value": "k1"}));
    kube.put("apps", json!({"metadata": {"name": "not-ours"}, "data": {"x": "eQ=="}}));

    let first = run(&ws);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(counts(&target(&first.json(), "K")["summary"]), (2, 0, 0, 0));
    let data = kube.data("apps", "app.db-url").expect("app/db_URL as app.db-url");
    assert_eq!(data["user"], "u");
    assert_eq!(data["port"], "5432");
    assert_eq!(data["password"], CANARY);
    let secret = kube.secret("apps", "app.db-url").unwrap();
    let meta = &secret["metadata"];
    assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "vss");
    assert_eq!(meta["annotations"]["vss.io/json-keys"], "port");
    assert_eq!(meta["annotations"]["vss.io/managed-by"], "vss:K");
    assert!(meta["annotations"]["vss.io/content-hash"].as_str().unwrap().len() >= 32);

    // Unchanged: one listing; no read, no write.
    let (gets, writes) = (kube.requests("get"), kube.requests("create") + kube.requests("replace"));
    let lists = kube.requests("list");
    let second = run(&ws);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(kube.requests("list"), lists + 1);
    assert_eq!(kube.requests("get"), gets);
    assert_eq!(kube.requests("create") + kube.requests("replace"), writes);

    // Drift: someone edits the Secret; the next run reads it back and repairs it.
    let mut edited = kube.secret("apps", "api-key").unwrap();
    edited["data"]["value"] = json!("dGFtcGVyZWQ=");
    kube.put("apps", edited);
    let third = run(&ws);
    assert_eq!(counts(&target(&third.json(), "K")["summary"]), (0, 1, 0, 1), "{}", third.stdout);
    assert_eq!(kube.data("apps", "api-key").unwrap()["value"], "k1");

    // Removed from the source: deleted; a Secret vss never wrote stays.
    std::fs::remove_file(ws.path().join("src/api-key.json")).unwrap();
    let fourth = run(&ws);
    assert_eq!(counts(&target(&fourth.json(), "K")["summary"]), (0, 0, 1, 1), "{}", fourth.stdout);
    assert_eq!(kube.names("apps"), ["app.db-url", "not-ours"]);

    for text in [&first.stdout, &first.stderr, &third.stdout, &third.stderr] {
        assert!(!text.contains(CANARY) && !text.contains(TOKEN), "{text}");
    }
}

#[test]
fn kube_a_concurrent_writer_is_reread_and_throttling_waited_out() {
    let kube = FakeKubernetes::start(TOKEN);
    let ws = workspace(&kube);
    ws.secret("src", "app/db", json!({"value": "v1"}));
    assert_eq!(run(&ws).code, 1);

    ws.secret("src", "app/db", json!({"value": "v2"}));
    kube.conflict_on_next_replace();
    kube.throttle(2);
    let run = run(&ws);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(kube.requests("throttled"), 2);
    assert_eq!(kube.requests("replace"), 2, "a 409, then the write against the version re-read");
    assert_eq!(kube.data("apps", "app.db").unwrap()["value"], "v2");
}

#[test]
fn kube_names_kubernetes_refuses_are_withheld_and_bad_credentials_named() {
    let kube = FakeKubernetes::start(TOKEN);
    let ws = workspace(&kube);
    ws.secret("src", "ok", json!({"value": "1"}));
    ws.secret("src", "-dash", json!({"value": "2"}));
    let first = run(&ws);
    assert_eq!(first.code, 1, "{}", first.stdout);
    let warnings = target(&first.json(), "K")["warnings"].to_string();
    assert!(warnings.contains("not a valid Kubernetes name"), "{warnings}");
    assert_eq!(kube.names("apps"), ["ok"]);

    let other = FakeKubernetes::start("another-token");
    let ws = workspace(&kube);
    other.kubeconfig(&ws.path().join("kubeconfig"));
    std::fs::write(
        ws.path().join("kubeconfig"),
        std::fs::read_to_string(ws.path().join("kubeconfig"))
            .unwrap()
            .replace(&other.url, &kube.url),
    )
    .unwrap();
    ws.secret("src", "ok", json!({"value": "1"}));
    let refused = run(&ws);
    assert_eq!(refused.code, 2);
    assert!(
        target(&refused.json(), "K")["error"].to_string().contains("401"),
        "{}",
        refused.stdout
    );
}

#[test]
fn kube_a_named_secret_holds_every_secret_as_a_key() {
    let kube = FakeKubernetes::start(TOKEN);
    let ws = workspace(&kube);
    ws.config(
        "source: { file: { dir: src } }
targets:
  K: { store: { kubernetes: { namespace: apps, name: app-env } }, delete: true }
",
    );
    ws.secret("src", "db/url", json!({"value": "postgres://db"}));
    ws.secret("src", "api", json!({"key": "k1", "retries": 3}));
    ws.secret("src", "gone/soon", json!({"value": "x"}));
    let first = run(&ws);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(kube.names("apps"), ["app-env"]);
    let data = kube.data("apps", "app-env").unwrap();
    assert_eq!(data["db.url"], "postgres://db");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&data["api"]).unwrap(),
        json!({"key": "k1", "retries": 3})
    );

    // Unchanged: one read of the Secret, no write.
    let writes = kube.requests("create") + kube.requests("replace");
    assert_eq!(run(&ws).code, 0);
    assert_eq!(kube.requests("create") + kube.requests("replace"), writes);

    // A key someone else added stays; a key vss wrote and the source dropped goes; a key
    // edited behind vss's back is repaired.
    let mut secret = kube.secret("apps", "app-env").unwrap();
    secret["data"]["theirs"] = json!("eA==");
    secret["data"]["db.url"] = json!("dGFtcGVyZWQ=");
    kube.put("apps", secret);
    std::fs::remove_file(ws.path().join("src/gone/soon.json")).unwrap();
    let third = run(&ws);
    assert_eq!(counts(&target(&third.json(), "K")["summary"]), (0, 1, 1, 1), "{}", third.stdout);
    let data = kube.data("apps", "app-env").unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["api", "db.url", "theirs"]);
    assert_eq!(data["db.url"], "postgres://db");
}
