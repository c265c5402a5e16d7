//! The `github` target (repository Actions secrets) through octocrab, against a local GitHub
//! API that opens every sealed box.

use serde_json::{Value, json};
use vss_tests::github::FakeGithub;
use vss_tests::{Run, Workspace, counts, target};

const TOKEN: &str = "ghp_test_token_0001";
/// The repository secrets of `acme/app` on the fake.
const REPO: &str = "repos/acme/app/actions";

fn workspace(github: &FakeGithub, extra: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write("gh.token", TOKEN);
    ws.config(&format!(
        "source: {{ file: {{ dir: src }} }}
targets:
  T:
    store: {{ github: {{ owner: acme, repo: app, api_url: \"{}\", token: {{ file: gh.token }} }} }}
{extra}",
        github.url
    ));
    ws
}

fn run(ws: &Workspace) -> Run {
    ws.pipeline(&["--exit-code"])
}

#[test]
fn github_creates_updates_skips_unchanged_and_deletes_only_its_own() {
    const CANARY: &str = "CANARY-github-3317";
    let github = FakeGithub::start(TOKEN);
    let ws = workspace(&github, "    delete: true\n");
    ws.secret("src", "app/db", json!({"user": "u", "password": CANARY}));
    ws.secret("src", "api-key", json!({"value": "k1"}));
    ws.secret("src", "keep/me", json!({"value": "x"}));
    github.put(REPO, "SOMEONE_ELSES", "theirs");

    let first = run(&ws);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(counts(&target(&first.json(), "T")["summary"]), (3, 0, 0, 0));
    let sent = github.plaintexts(REPO);
    let db: Value = serde_json::from_str(&sent["APP_DB"]).unwrap();
    assert_eq!(db, json!({"user": "u", "password": CANARY}));
    assert_eq!(sent["API_KEY"], "k1", "a lone `value` is sent as a plain string");
    assert_eq!(github.requests("key"), 1, "the public key is fetched once");

    // Unchanged: a listing, no write, no key.
    let puts = github.requests("put");
    let second = run(&ws);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(counts(&target(&second.json(), "T")["summary"]), (0, 0, 0, 3));
    assert_eq!(github.requests("put"), puts);
    assert_eq!(github.requests("key"), 1, "nothing to seal, no key fetched");

    // A change is rewritten; a removed source secret is deleted (vss wrote it); a secret vss
    // never wrote is left alone.
    ws.secret("src", "api-key", json!({"value": "k2"}));
    std::fs::remove_file(ws.path().join("src/keep/me.json")).unwrap();
    ws.secret("src", "extra/one", json!({"value": "1"}));
    let third = run(&ws);
    assert_eq!(third.code, 1, "{}\n{}", third.stdout, third.stderr);
    assert_eq!(counts(&target(&third.json(), "T")["summary"]), (1, 1, 1, 1));
    let sent = github.plaintexts(REPO);
    assert_eq!(sent["API_KEY"], "k2");
    assert!(!sent.contains_key("KEEP_ME"));
    assert_eq!(sent["SOMEONE_ELSES"], "theirs");

    // A value changed on GitHub by someone else (its updated_at moves) is repaired.
    github.put(REPO, "API_KEY", "tampered");
    let fourth = run(&ws);
    assert_eq!(counts(&target(&fourth.json(), "T")["summary"]), (0, 1, 0, 2));
    assert_eq!(github.plaintexts(REPO)["API_KEY"], "k2");

    for text in [&first.stdout, &first.stderr, &third.stdout, &third.stderr] {
        assert!(!text.contains(CANARY) && !text.contains(TOKEN), "{text}");
    }
}

#[test]
fn github_names_that_collide_or_are_refused_are_withheld() {
    let github = FakeGithub::start(TOKEN);
    let ws = workspace(&github, "    delete: true\n");
    ws.secret("src", "app/db", json!({"value": "a"}));
    ws.secret("src", "app-db", json!({"value": "b"}));
    ws.secret("src", "github/token", json!({"value": "c"}));
    ws.secret("src", "fine", json!({"value": "d"}));
    let run = run(&ws);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let warnings = target(&report, "T")["warnings"].to_string();
    assert!(warnings.contains("app-db, app/db are all `APP_DB`"), "{warnings}");
    assert!(warnings.contains("GITHUB_"), "{warnings}");
    assert_eq!(github.plaintexts(REPO).keys().collect::<Vec<_>>(), ["FINE"]);
}

#[test]
fn github_rate_limits_are_waited_out() {
    let github = FakeGithub::start(TOKEN);
    let ws = workspace(&github, "");
    ws.secret("src", "one", json!({"value": "1"}));
    github.throttle(2);
    let run = run(&ws);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(github.requests("throttled"), 2);
    assert_eq!(github.plaintexts(REPO)["ONE"], "1");
}

#[test]
fn github_limits_are_reported_before_sending() {
    let github = FakeGithub::start(TOKEN);
    let ws = workspace(&github, "");
    ws.secret("src", "big", json!({"value": "x".repeat(49 * 1024)}));
    ws.secret("src", "small", json!({"value": "y"}));
    let run = run(&ws);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let error = target(&run.json(), "T")["error"].to_string();
    assert!(error.contains("secret `BIG`") && error.contains("48 KB"), "{error}");
    assert_eq!(github.plaintexts(REPO).keys().collect::<Vec<_>>(), ["SMALL"]);

    let bad = Workspace::new();
    bad.write("gh.token", "wrong");
    bad.config(&format!(
        "source: {{ file: {{ dir: src }} }}\ntargets:\n  T: {{ store: {{ github: {{ owner: acme, repo: app, api_url: \"{}\", token: {{ file: gh.token }} }} }} }}\n",
        github.url
    ));
    bad.secret("src", "one", json!({"value": "1"}));
    let refused = bad.pipeline(&[]);
    assert_eq!(refused.code, 2);
    assert!(
        target(&refused.json(), "T")["error"].to_string().contains("401"),
        "{}",
        refused.stdout
    );
}

#[test]
fn github_environment_and_organization_secrets() {
    let github = FakeGithub::start(TOKEN);
    let ws = Workspace::new();
    ws.write("gh.token", TOKEN);
    ws.config(&format!(
        "source: {{ file: {{ dir: src }} }}
targets:
  Env:
    store: {{ github: {{ owner: acme, repo: app, environment: prod, api_url: \"{url}\", token: {{ file: gh.token }} }} }}
  Org:
    store: {{ github: {{ org: acme, visibility: selected, selected_repositories: [app, web], api_url: \"{url}\", token: {{ file: gh.token }} }} }}
",
        url = github.url
    ));
    ws.secret("src", "db/password", json!({"value": "p"}));
    let first = run(&ws);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(github.plaintexts("repos/acme/app/environments/prod")["DB_PASSWORD"], "p");
    assert_eq!(github.plaintexts("orgs/acme/actions")["DB_PASSWORD"], "p");
    let ids = [FakeGithub::repository_id("acme", "app"), FakeGithub::repository_id("acme", "web")];
    assert_eq!(
        github.details("orgs/acme/actions", "DB_PASSWORD"),
        json!({"visibility": "selected", "selected_repository_ids": ids})
    );
    assert!(github.plaintexts(REPO).is_empty(), "repository secrets untouched");
    assert_eq!(run(&ws).code, 0, "unchanged");
}

#[test]
fn github_app_installation_tokens_authorize_the_writes() {
    let github = FakeGithub::start(TOKEN);
    let ws = Workspace::new();
    let openssl = |args: &[&str]| vss_tests::openssl(ws.path(), args);
    openssl(&["genrsa", "-out", "app.pem", "2048"]);
    openssl(&["rsa", "-in", "app.pem", "-pubout", "-out", "app.pub"]);
    openssl(&["genrsa", "-out", "other.pem", "2048"]);
    let public = std::fs::read_to_string(ws.path().join("app.pub")).unwrap();
    github.install_app(4242, 77, &public);
    let config = |key: &str| {
        format!(
            "source: {{ file: {{ dir: src }} }}
targets:
  T:
    store: {{ github: {{ owner: acme, repo: app, api_url: \"{}\", app: {{ app_id: 4242, installation_id: 77, private_key: {{ file: {key} }} }} }} }}
",
            github.url
        )
    };
    ws.config(&config("app.pem"));
    ws.secret("src", "deploy/key", json!({"value": "d1"}));
    let first = run(&ws);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(github.plaintexts(REPO)["DEPLOY_KEY"], "d1");
    assert_eq!(github.requests("access_token"), 1);
    let private = std::fs::read_to_string(ws.path().join("app.pem")).unwrap();
    assert!(!first.stdout.contains(&private[40..80]) && !first.stderr.contains(&private[40..80]));

    // A key the app does not have: the token exchange is refused, and that is the error.
    ws.config(&config("other.pem"));
    ws.secret("src", "deploy/key", json!({"value": "d2"}));
    let refused = run(&ws);
    assert_eq!(refused.code, 2, "{}", refused.stdout);
    assert!(
        target(&refused.json(), "T")["error"].to_string().contains("401"),
        "{}",
        refused.stdout
    );
    assert_eq!(github.plaintexts(REPO)["DEPLOY_KEY"], "d1");
}
