//! The `gcp` store (GCP Secret Manager) through the official Google client, against a local
//! Secret Manager API that checks the service-account JWT the client signs.

use serde_json::{Value, json};
use vss_tests::gcp::{FakeSecretManager, VersionState};
use vss_tests::github::FakeGithub;
use vss_tests::kubernetes::FakeKubernetes;
use vss_tests::servers::{OpenBao, ROOT_TOKEN};
use vss_tests::{Run, Workspace, counts, target};

const PROJECT: &str = "vss-test";
const EMAIL: &str = "vss-sync@vss-test.iam.gserviceaccount.com";

/// Writes a new service-account key to `sa.json` (signed by `sa.pem`) in `ws`; returns its
/// public key.
fn service_account(ws: &Workspace) -> String {
    let openssl = |args: &[&str]| vss_tests::openssl(ws.path(), args);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "sa.pem",
    ]);
    openssl(&["pkey", "-in", "sa.pem", "-pubout", "-out", "sa.pub"]);
    let private = std::fs::read_to_string(ws.path().join("sa.pem")).unwrap();
    let key = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "k1",
        "private_key": private,
        "client_email": EMAIL,
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    ws.write("sa.json", &key.to_string());
    std::fs::read_to_string(ws.path().join("sa.pub")).unwrap()
}

/// A workspace with a service-account key and a fake Secret Manager that trusts it.
fn setup() -> (FakeSecretManager, Workspace) {
    let ws = Workspace::new();
    let public = service_account(&ws);
    (FakeSecretManager::start(PROJECT, EMAIL, &public), ws)
}

fn config(gcp: &FakeSecretManager, store: &str, extra: &str) -> String {
    format!(
        "source: {{ file: {{ dir: src }} }}
targets:
  G:
    store: {{ gcp: {{ project: {PROJECT}, endpoint: \"{}\"{store} }} }}
{extra}",
        gcp.url
    )
}

/// Runs the pipeline with trace logging, the Google client's own logging on too (every
/// client's logs on stderr, for the canaries).
fn run(ws: &Workspace) -> Run {
    let credentials = ws.path().join("sa.json");
    ws.run_env(
        &["pipeline", "--config", "vss.yaml", "--output", "json", "--exit-code"],
        &[
            ("GOOGLE_APPLICATION_CREDENTIALS", credentials.to_str().unwrap()),
            ("GOOGLE_CLOUD_RUST_LOGGING", "true"),
            ("RUST_LOG", "trace"),
        ],
    )
}

#[test]
fn gcp_secrets_are_created_stamped_resynced_repaired_and_deleted() {
    const CANARY: &str = "CANARY-gcp-5521";
    let (gcp, ws) = setup();
    ws.config(&config(&gcp, ", prefix: app_, labels: { team: payments }", "    delete: true\n"));
    ws.secret("src", "db/URL", json!({"user": "u", "port": 5432, "password": CANARY}));
    ws.secret("src", "api-key", json!({"value": "k1"}));
    gcp.add_version("app_not-ours", "theirs");
    gcp.add_version("other_thing", "outside the prefix");
    let mut runs = Vec::new();

    let first = run(&ws);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(counts(&target(&first.json(), "G")["summary"]), (2, 0, 0, 0), "{}", first.stdout);
    let (payload, version) = gcp.latest("app_db__URL").expect("db/URL as app_db__URL");
    let stored: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(stored, json!({"user": "u", "port": 5432, "password": CANARY}));
    assert_eq!(version, 1);
    assert_eq!(gcp.latest("app_api-key"), Some(("k1".into(), 1)), "a lone value as itself");
    let (labels, annotations) = gcp.metadata("app_db__URL").unwrap();
    assert_eq!(labels["vss-managed-by"], "vss");
    assert_eq!(labels["team"], "payments");
    assert_eq!(annotations["vss-managed-by"], "vss:G");
    assert_eq!(annotations["vss-content-hash"].len(), 64);
    assert_eq!((gcp.requests("create_secret"), gcp.requests("add_version")), (2, 2));
    assert!(first.stderr.contains("TRACE"), "trace logs are checked too");
    runs.push(first);

    // Unchanged: one listing and one access per secret under the prefix; nothing written.
    let (writes, lists, accesses) =
        (gcp.writes(), gcp.requests("list_secrets"), gcp.requests("access"));
    let second = run(&ws);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(gcp.writes(), writes, "an unchanged resync writes nothing");
    assert_eq!(gcp.requests("list_secrets"), lists + 1);
    assert_eq!(gcp.requests("access"), accesses + 3);
    assert_eq!(gcp.requests("get_secret") + gcp.requests("get_version"), 0, "no read quota");
    runs.push(second);

    // A change adds a version and restamps; someone's concurrent metadata edit (the etag
    // moved) is read again and kept.
    ws.secret("src", "api-key", json!({"value": "k2"}));
    let hash_before = gcp.metadata("app_api-key").unwrap().1["vss-content-hash"].clone();
    gcp.rival_before_next_update();
    let changed = run(&ws);
    assert_eq!(
        counts(&target(&changed.json(), "G")["summary"]),
        (0, 1, 0, 1),
        "{}",
        changed.stdout
    );
    assert_eq!(gcp.latest("app_api-key"), Some(("k2".into(), 2)));
    let annotations = gcp.metadata("app_api-key").unwrap().1;
    assert_ne!(annotations["vss-content-hash"], hash_before);
    assert_eq!(annotations["edited-by"], "someone", "the rival's annotation is kept");
    assert_eq!((gcp.requests("update_secret"), gcp.requests("get_secret")), (2, 1));
    runs.push(changed);

    // Drift: someone adds a version; the next run reads it back and adds the desired one.
    gcp.add_version("app_api-key", "tampered");
    let drift = run(&ws);
    assert_eq!(counts(&target(&drift.json(), "G")["summary"]), (0, 1, 0, 1), "{}", drift.stdout);
    assert_eq!(gcp.latest("app_api-key"), Some(("k2".into(), 4)));
    runs.push(drift);

    // A disabled latest version is someone's deliberate act: reported, never overridden.
    gcp.set_state("app_api-key", 4, VersionState::Disabled);
    let disabled = run(&ws);
    assert_eq!(disabled.code, 2, "{}\n{}", disabled.stdout, disabled.stderr);
    let error = target(&disabled.json(), "G")["error"].to_string();
    assert!(error.contains("secret `api-key`") && error.contains("4 is DISABLED"), "{error}");
    assert_eq!(gcp.latest("app_api-key").unwrap().1, 4, "no version added");
    gcp.set_state("app_api-key", 4, VersionState::Enabled);
    let writes = gcp.writes();
    let enabled = run(&ws);
    assert_eq!(enabled.code, 0, "{}\n{}", enabled.stdout, enabled.stderr);
    assert_eq!(gcp.writes(), writes);
    runs.extend([disabled, enabled]);

    // Deleted and created again by someone else (version 1 again): a different secret, read
    // and brought back to the desired value.
    gcp.delete("app_db__URL");
    gcp.add_version("app_db__URL", "{}");
    let recreated = run(&ws);
    assert_eq!(counts(&target(&recreated.json(), "G")["summary"]), (0, 1, 0, 1));
    let (payload, version) = gcp.latest("app_db__URL").unwrap();
    assert_eq!(
        (serde_json::from_str::<Value>(&payload).unwrap()["user"].clone(), version),
        (json!("u"), 2)
    );
    runs.push(recreated);

    // A version whose response is lost (a 503 after it was stored) is not added twice.
    ws.secret("src", "api-key", json!({"value": "k3"}));
    gcp.lose_next_add_response();
    let adds = gcp.requests("add_version");
    let lost = run(&ws);
    assert_eq!(lost.code, 1, "{}\n{}", lost.stdout, lost.stderr);
    assert_eq!(gcp.latest("app_api-key"), Some(("k3".into(), 5)));
    assert_eq!(gcp.requests("add_version"), adds + 1);
    runs.push(lost);

    // Removed from the source: deleted; secrets vss never wrote stay.
    std::fs::remove_file(ws.path().join("src/api-key.json")).unwrap();
    let removed = run(&ws);
    assert_eq!(
        counts(&target(&removed.json(), "G")["summary"]),
        (0, 0, 1, 1),
        "{}",
        removed.stdout
    );
    assert_eq!(gcp.ids(), ["app_db__URL", "app_not-ours", "other_thing"]);
    runs.push(removed);

    let private = std::fs::read_to_string(ws.path().join("sa.pem")).unwrap();
    let key_line = private.lines().nth(1).unwrap();
    let token = gcp.last_token();
    assert!(token.len() > 100, "a signed JWT");
    for run in &runs {
        for text in [&run.stdout, &run.stderr] {
            assert!(!text.contains(CANARY), "{text}");
            assert!(!text.contains(key_line) && !text.contains(&token), "{text}");
        }
    }
}

#[test]
fn gcp_deletes_need_opt_in_ownership_and_an_unchanged_secret() {
    let (gcp, ws) = setup();
    ws.config(&config(&gcp, "", ""));
    ws.secret("src", "one", json!({"value": "1"}));
    ws.secret("src", "two", json!({"value": "2"}));
    assert_eq!(run(&ws).code, 1);

    // Without `delete: true`, a secret gone from the source stays.
    std::fs::remove_file(ws.path().join("src/two.json")).unwrap();
    let kept = run(&ws);
    assert_eq!(kept.code, 0, "{}", kept.stdout);
    assert_eq!(gcp.ids(), ["one", "two"]);

    // With it, a secret edited between listing and deleting is left in place (its etag
    // moved): the newer write wins, with a warning, and nothing was changed.
    ws.config(&config(&gcp, "", "    delete: true\n"));
    gcp.rival_before_next_delete();
    let refused = run(&ws);
    assert_eq!(refused.code, 0, "{}\n{}", refused.stdout, refused.stderr);
    assert_eq!(counts(&target(&refused.json(), "G")["summary"]), (0, 0, 0, 1));
    assert!(
        target(&refused.json(), "G").to_string().contains("left in place"),
        "{}\n{}",
        refused.stdout,
        refused.stderr
    );
    assert_eq!(gcp.ids(), ["one", "two"]);
    let deleted = run(&ws);
    assert_eq!(counts(&target(&deleted.json(), "G")["summary"]), (0, 0, 1, 1));
    assert_eq!(gcp.ids(), ["one"]);
}

#[test]
fn gcp_as_a_source_and_placeholders_without_versions() {
    let (gcp, ws) = setup();
    ws.config(&format!(
        "source: {{ gcp: {{ project: {PROJECT}, prefix: src_, endpoint: \"{url}\" }} }}
targets:
  Files: {{ store: {{ file: {{ dir: out }} }} }}
  G: {{ store: {{ gcp: {{ project: {PROJECT}, prefix: dst_, endpoint: \"{url}\" }} }} }}
",
        url = gcp.url
    ));
    gcp.add_version("src_db", r#"{"host":"db","port":5432}"#);
    gcp.add_version("src_token", "t1");
    gcp.create_empty("src_later");
    // A placeholder in the target (a secret without any version) gets its first version.
    gcp.create_empty("dst_token");
    let first = run(&ws);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(ws.read_secret("out", "db").unwrap(), json!({"host": "db", "port": 5432}));
    assert_eq!(ws.read_secret("out", "token").unwrap(), json!({"value": "t1"}));
    assert!(ws.read_secret("out", "later").is_none(), "a secret without a value is not listed");
    assert_eq!(gcp.latest("dst_token"), Some(("t1".into(), 1)));
    assert_eq!(gcp.metadata("dst_token").unwrap().1["vss-managed-by"], "vss:G");
    assert_eq!(counts(&target(&first.json(), "G")["summary"]), (2, 0, 0, 0));
    assert_eq!(run(&ws).code, 0, "unchanged");
}

#[test]
fn gcp_names_are_mapped_and_collisions_withheld() {
    let (gcp, ws) = setup();
    ws.config(&config(&gcp, "", ""));
    ws.secret("src", "a/b", json!({"value": "1"}));
    ws.secret("src", "a__b", json!({"value": "2"}));
    ws.secret("src", "svc.token", json!({"value": "3"}));
    let run = run(&ws);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let warnings = target(&run.json(), "G")["warnings"].to_string();
    assert!(warnings.contains("a/b, a__b are all `a__b`"), "{warnings}");
    assert_eq!(gcp.ids(), ["svc_token"]);
}

#[test]
fn gcp_quota_exhaustion_is_waited_out_and_pages_followed() {
    let (gcp, ws) = setup();
    ws.config(&config(&gcp, "", ""));
    for i in 0..5 {
        ws.secret("src", &format!("s{i}"), json!({"value": i.to_string()}));
    }
    gcp.max_page(2);
    gcp.exhaust_writes(3);
    let first = run(&ws);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(gcp.requests("exhausted"), 3);
    assert_eq!(gcp.ids().len(), 5);
    assert_eq!(gcp.requests("add_version"), 5, "each secret got exactly one version");

    let lists = gcp.requests("list_secrets");
    let second = run(&ws);
    assert_eq!(second.code, 0, "{}", second.stdout);
    assert_eq!(gcp.requests("list_secrets"), lists + 3, "5 secrets in pages of 2");
}

#[test]
fn gcp_oversized_payloads_and_bad_credentials_are_named() {
    let (gcp, ws) = setup();
    ws.config(&config(&gcp, "", ""));
    ws.secret("src", "big", json!({"value": "x".repeat(65 * 1024)}));
    ws.secret("src", "small", json!({"value": "y"}));
    let run_big = run(&ws);
    assert_eq!(run_big.code, 2, "{}", run_big.stdout);
    let error = target(&run_big.json(), "G")["error"].to_string();
    assert!(error.contains("secret `big`") && error.contains("64 KiB"), "{error}");
    assert_eq!(gcp.ids(), ["small"]);

    // A payload that does not match its checksum is refused, never used.
    gcp.corrupt_checksum("small");
    let corrupt = run(&ws);
    assert_eq!(corrupt.code, 2, "{}", corrupt.stdout);
    let error = target(&corrupt.json(), "G")["error"].to_string();
    assert!(error.contains("CRC32C"), "{error}");

    // A key the server does not trust: UNAUTHENTICATED, named, nothing written.
    let stranger = Workspace::new();
    service_account(&stranger);
    stranger.config(&config(&gcp, "", ""));
    stranger.secret("src", "one", json!({"value": "1"}));
    let refused = run(&stranger);
    assert_eq!(refused.code, 2, "{}", refused.stdout);
    let error = target(&refused.json(), "G")["error"].to_string();
    assert!(error.contains("Unauthenticated"), "{error}");
    assert_eq!(gcp.ids(), ["small"]);
}

/// Vault (source and merge store) → GCP Secret Manager, GitHub Actions and Kubernetes
/// Secrets in one run.
#[test]
fn gcp_github_kube_targets_from_vault_end_to_end() {
    let bao = OpenBao::start();
    bao.put("src/app/db", &json!({"host": "db", "password": "p1"}));
    bao.put("src/app/api", &json!({"value": "k1"}));
    let (gcp, ws) = setup();
    let github = FakeGithub::start("ghp_e2e");
    let kube = FakeKubernetes::start("kube-e2e");
    kube.kubeconfig(&ws.path().join("kubeconfig"));
    ws.write("gh.token", "ghp_e2e");
    ws.config(&format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: VSS_TEST_VAULT_TOKEN }} }} }}
merge_store: {{ vault: {{ mount: secret, prefix: merged }} }}
sources:
  app: {{ vault: {{ path: secret/src }} }}
targets:
  Gcp: {{ imports: [app], store: {{ gcp: {{ project: {PROJECT}, endpoint: \"{}\" }} }} }}
  Ci: {{ imports: [app], store: {{ github: {{ owner: acme, repo: app, api_url: \"{}\", token: {{ file: gh.token }} }} }} }}
  Cluster: {{ imports: [app], store: {{ kubernetes: {{ namespace: apps }} }} }}
",
        bao.address, gcp.url, github.url
    ));
    let credentials = ws.path().join("sa.json");
    let kubeconfig = ws.path().join("kubeconfig");
    let env = [
        ("VSS_TEST_VAULT_TOKEN", ROOT_TOKEN),
        ("GOOGLE_APPLICATION_CREDENTIALS", credentials.to_str().unwrap()),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
    ];
    let args = ["pipeline", "--config", "vss.yaml", "--output", "json", "--exit-code"];
    let first = ws.run_env(&args, &env);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    for name in ["Gcp", "Ci", "Cluster"] {
        assert_eq!(counts(&target(&first.json(), name)["summary"]), (2, 0, 0, 0), "{name}");
    }
    let db: Value = serde_json::from_str(&gcp.latest("app__db").unwrap().0).unwrap();
    assert_eq!(db, json!({"host": "db", "password": "p1"}));
    assert_eq!(github.plaintexts("repos/acme/app/actions")["APP_API"], "k1");
    assert_eq!(kube.data("apps", "app.db").unwrap()["password"], "p1");

    // A change in Vault reaches all three; nothing else is written.
    bao.put("src/app/api", &json!({"value": "k2"}));
    let second = ws.run_env(&args, &env);
    assert_eq!(second.code, 1, "{}\n{}", second.stdout, second.stderr);
    for name in ["Gcp", "Ci", "Cluster"] {
        assert_eq!(counts(&target(&second.json(), name)["summary"]), (0, 1, 0, 1), "{name}");
    }
    assert_eq!(gcp.latest("app__api"), Some(("k2".into(), 2)));
    assert_eq!(github.plaintexts("repos/acme/app/actions")["APP_API"], "k2");
    assert_eq!(kube.data("apps", "app.api").unwrap()["value"], "k2");
    assert_eq!(ws.run_env(&args, &env).code, 0, "unchanged everywhere");
}
