//! The AWS Secrets Manager store against a real moto server.

use serde_json::{Value, json};
use vss_tests::servers::{AWS_TEST_ENV, Moto};
use vss_tests::{Run, Workspace, counts, target};

fn config(moto: &Moto) -> String {
    format!(
        "aws: {{ region: us-east-1, endpoint: \"{}\" }}
source: {{ file: {{ dir: src }} }}
targets:
  T: {{ store: {{ aws: {{ prefix: app/ }} }}, delete: true }}
",
        moto.endpoint
    )
}

fn run(ws: &Workspace, args: &[&str]) -> Run {
    let mut all = vec!["pipeline", "--config", "vss.yaml", "--output", "json"];
    all.extend_from_slice(args);
    let mut env: Vec<(&str, &str)> = AWS_TEST_ENV.to_vec();
    env.push(("RUST_LOG", "vss_coordinator=debug"));
    ws.run_env(&all, &env)
}

/// The store calls of the target, from the run's debug log.
fn target_calls(run: &Run) -> Value {
    let line = run.stderr.lines().find(|l| l.contains("api_calls")).expect("call counts logged");
    let start = line.find("\"aws-sm:us-east-1/app/\": ").expect("target calls")
        + "\"aws-sm:us-east-1/app/\": ".len();
    let end = start + line[start..].find('}').unwrap() + 1;
    serde_json::from_str(&line[start..end]).unwrap()
}

fn versions(moto: &Moto, name: &str) -> usize {
    moto.secretsmanager(&format!(
        "out(len(sm.list_secret_version_ids(SecretId='{name}')['Versions']))"
    ))
    .as_u64()
    .unwrap() as usize
}

#[test]
fn aws_target_create_unchanged_update_drift_delete_and_restore() {
    let moto = Moto::start();
    let ws = Workspace::new();
    ws.config(&config(&moto));
    ws.secret("src", "db", json!({"user": "u", "password": "p1"}));
    ws.secret("src", "token", json!({"value": "plain-string"}));

    let first = run(&ws, &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(counts(&target(&first.json(), "T")["summary"]), (2, 0, 0, 0));
    let db = moto.secretsmanager("out(sm.get_secret_value(SecretId='app/db')['SecretString'])");
    assert_eq!(
        serde_json::from_str::<Value>(db.as_str().unwrap()).unwrap(),
        json!({"user": "u", "password": "p1"})
    );
    assert_eq!(
        moto.secretsmanager("out(sm.get_secret_value(SecretId='app/token')['SecretString'])"),
        "plain-string"
    );
    let tags = moto.secretsmanager(
        "out({t['Key']: t['Value'] for t in sm.describe_secret(SecretId='app/db')['Tags']})",
    );
    assert_eq!(tags["vss:managed-by"], "vss:T", "{tags}");
    assert_eq!(tags["vss:content-hash"].as_str().unwrap().len(), 64);

    // Unchanged: listing only, no new version.
    let second = run(&ws, &["--exit-code"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(target_calls(&second), json!({"ListSecrets": 1}));
    assert_eq!(versions(&moto, "app/db"), 1);

    // A change is one PutSecretValue (and its tags); drift behind vss's back is repaired.
    ws.secret("src", "db", json!({"user": "u", "password": "p2"}));
    moto.secretsmanager("sm.put_secret_value(SecretId='app/token', SecretString='tampered')");
    let third = run(&ws, &[]);
    assert_eq!(counts(&target(&third.json(), "T")["summary"]), (0, 2, 0, 0));
    assert_eq!(target_calls(&third)["PutSecretValue"], 2);
    assert_eq!(
        moto.secretsmanager("out(sm.get_secret_value(SecretId='app/token')['SecretString'])"),
        "plain-string"
    );

    // Deletes keep a recovery window; a secret desired again is restored.
    ws.secret("src", "extra", json!({"k": 1}));
    assert_eq!(run(&ws, &[]).code, 0);
    std::fs::remove_file(ws.path().join("src/extra.json")).unwrap();
    let fourth = run(&ws, &[]);
    assert_eq!(counts(&target(&fourth.json(), "T")["summary"]), (0, 0, 1, 2));
    let deleted = moto.secretsmanager(
        "out(sm.describe_secret(SecretId='app/extra').get('DeletedDate') is not None)",
    );
    assert_eq!(deleted, true, "scheduled for deletion, not gone");
    ws.secret("src", "extra", json!({"k": 2}));
    let fifth = run(&ws, &[]);
    assert_eq!(fifth.code, 0, "{}", fifth.stderr);
    assert_eq!(
        counts(&target(&fifth.json(), "T")["summary"]),
        (1, 0, 0, 2),
        "absent while scheduled"
    );
    assert_eq!(target_calls(&fifth)["RestoreSecret"], 1);
    let restored = moto
        .secretsmanager("out(sm.describe_secret(SecretId='app/extra').get('DeletedDate') is None)");
    assert_eq!(restored, true);
}

#[test]
fn aws_slash_and_bare_names_are_one_secret_and_a_conflict_when_both_exist() {
    let moto = Moto::start();
    moto.secretsmanager(
        "sm.create_secret(Name='/app/x', SecretString='{\"a\": 1}')\nsm.create_secret(Name='app/x', SecretString='{\"a\": 2}')",
    );
    let ws = Workspace::new();
    ws.config(&config(&moto));
    ws.secret("src", "x", json!({"a": 3}));
    let run = run(&ws, &[]);
    assert_eq!(run.code, 2);
    let t = target(&run.json(), "T").clone();
    assert!(t["error"].as_str().unwrap().contains("both `/x` and `x` exist"), "{t}");
    for name in ["/app/x", "app/x"] {
        assert_eq!(versions(&moto, name), 1, "{name} was written");
    }
}

#[test]
fn aws_canary_values_never_leave_the_stores() {
    const CANARY: &str = "CANARY-aws-93be";
    let moto = Moto::start();
    let ws = Workspace::new();
    ws.config(&config(&moto));
    ws.secret("src", "db", json!({"password": format!("{CANARY}-1")}));
    ws.secret("src", "token", json!({"value": format!("{CANARY}-plain")}));
    let mut outputs = Vec::new();
    let mut all_formats = |ws: &Workspace, extra: &[&str]| {
        for format in ["human", "json", "github"] {
            let mut args = vec!["pipeline", "--config", "vss.yaml", "--output", format];
            args.extend_from_slice(extra);
            let mut env: Vec<(&str, &str)> = AWS_TEST_ENV.to_vec();
            env.push(("RUST_LOG", "trace"));
            let run = ws.run_env(&args, &env);
            outputs.push(run.stdout);
            outputs.push(run.stderr);
        }
    };
    all_formats(&ws, &["--dry-run"]);
    all_formats(&ws, &[]);
    ws.secret("src", "db", json!({"password": format!("{CANARY}-2")}));
    moto.secretsmanager(&format!(
        "sm.put_secret_value(SecretId='app/token', SecretString='{CANARY}-drift')"
    ));
    all_formats(&ws, &[]);
    assert!(outputs.iter().any(|o| o.contains("TRACE")), "trace logging was on");
    for text in &outputs {
        assert!(
            !text.contains(CANARY),
            "canary leaked:\n{}",
            &text[text.find(CANARY).unwrap().saturating_sub(300)..]
        );
    }
}

#[test]
fn aws_account_targets_write_into_that_account_through_its_role() {
    let moto = Moto::start();
    let ws = Workspace::new();
    ws.config(&format!(
        "aws: {{ region: us-east-1, endpoint: \"{}\", execution_role: \"arn:aws:iam::{{account_id}}:role/vss-sync\" }}
source: {{ file: {{ dir: src }} }}
targets:
  Staging: {{ account_id: \"222222222222\", secret_prefix: stg/ }}
  Production: {{ account_id: \"333333333333\" }}
",
        moto.endpoint
    ));
    ws.secret("src", "db", json!({"k": 1}));
    let first = run(&ws, &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(counts(&first.json()["summary"]), (2, 0, 0, 0));
    let names_in = |account: &str| {
        moto.secretsmanager(&format!(
            "sts = boto3.client('sts', endpoint_url='{}', region_name='us-east-1')\n\
             c = sts.assume_role(RoleArn='arn:aws:iam::{account}:role/vss-sync', RoleSessionName='vss-test')['Credentials']\n\
             s = boto3.client('secretsmanager', endpoint_url='{}', region_name='us-east-1', aws_access_key_id=c['AccessKeyId'], aws_secret_access_key=c['SecretAccessKey'], aws_session_token=c['SessionToken'])\n\
             out(sorted(x['Name'] for x in s.list_secrets()['SecretList']))",
            moto.endpoint, moto.endpoint
        ))
    };
    assert_eq!(names_in("222222222222"), json!(["stg/db"]));
    assert_eq!(names_in("333333333333"), json!(["db"]));
    let own = moto.secretsmanager("out([x['Name'] for x in sm.list_secrets()['SecretList']])");
    assert_eq!(own, json!([]), "nothing lands in the caller's own account");
    assert_eq!(counts(&run(&ws, &[]).json()["summary"]), (0, 0, 0, 2));
}

#[test]
fn aws_resync_of_200_secrets_from_vault_through_a_vault_merge_store_is_two_listings() {
    let bao = vss_tests::servers::OpenBao::start();
    let moto = Moto::start();
    let ws = Workspace::new();
    for i in 0..200 {
        ws.secret(
            "seed",
            &format!("team{}/app{i:03}", i % 4),
            json!({"user": format!("u{i}"), "n": i}),
        );
    }
    let token_env = ("VSS_TEST_VAULT_TOKEN", vss_tests::servers::ROOT_TOKEN);
    let vault_block = format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: VSS_TEST_VAULT_TOKEN }} }} }}",
        bao.address
    );
    // Seed Vault with vss itself: file → Vault.
    ws.config(&format!("{vault_block}\nsource: {{ file: {{ dir: seed }} }}\ntargets:\n  Seed: {{ store: {{ vault: {{ path: secret/src }} }} }}\n"));
    assert_eq!(ws.run_env(&["pipeline", "--config", "vss.yaml"], &[token_env]).code, 0);

    ws.config(&format!(
        "{vault_block}
aws: {{ region: us-east-1, endpoint: \"{}\" }}
merge_store: {{ vault: {{ path: secret/merged }} }}
sources:
  src: {{ vault: {{ path: secret/src }} }}
targets:
  T: {{ imports: [src], store: {{ aws: {{ prefix: app/ }} }} }}
",
        moto.endpoint
    ));
    let mut env: Vec<(&str, &str)> = AWS_TEST_ENV.to_vec();
    env.extend([token_env, ("RUST_LOG", "vss_coordinator=debug")]);
    let args = ["pipeline", "--config", "vss.yaml", "--output", "json"];
    let first = ws.run_env(&args, &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(counts(&first.json()["summary"]), (200, 0, 0, 0));
    assert_eq!(target_calls(&first)["CreateSecret"], 200);

    let second = ws.run_env(&args, &env);
    assert_eq!(counts(&second.json()["summary"]), (0, 0, 0, 200));
    assert_eq!(target_calls(&second), json!({"ListSecrets": 2}), "pages of 100, nothing else");
    let line = second.stderr.lines().find(|l| l.contains("api_calls")).unwrap();
    let store_calls = |store: &str| {
        let start =
            line.find(&format!("{store}\": ")).unwrap_or_else(|| panic!("{store} in {line}"))
                + store.len()
                + 3;
        let end = start + line[start..].find('}').unwrap() + 1;
        serde_json::from_str::<Value>(&line[start..end]).unwrap()
    };
    let source = store_calls("/secret/src");
    assert!(source.get("read").is_none(), "no source value read: {source}");
    let merged = store_calls("/secret/merged");
    assert!(
        merged.get("write").is_none() && merged.get("stamp").is_none(),
        "merge store untouched: {merged}"
    );
}

#[test]
fn aws_s3_merge_store_feeds_secrets_manager_and_resyncs_without_writes() {
    let moto = Moto::start();
    moto.secretsmanager("boto3.client('s3', endpoint_url=sm.meta.endpoint_url, region_name='us-east-1').create_bucket(Bucket='merge')");
    let ws = Workspace::new();
    ws.config(&format!(
        "aws: {{ region: us-east-1, endpoint: \"{}\" }}
merge_store: {{ s3: {{ bucket: merge, prefix: merged/ }} }}
sources:
  base: {{ file: {{ dir: base }} }}
  over: {{ file: {{ dir: over }} }}
targets:
  T: {{ imports: [base, over], store: {{ aws: {{ prefix: app/ }} }} }}
",
        moto.endpoint
    ));
    ws.secret("base", "db", json!({"user": "u", "tags": ["a"]}));
    ws.secret("over", "db", json!({"password": "p", "tags": ["b"]}));
    let first = run(&ws, &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let db = moto
        .secretsmanager("out(json.loads(sm.get_secret_value(SecretId='app/db')['SecretString']))");
    assert_eq!(db, json!({"user": "u", "password": "p", "tags": ["a", "b"]}));
    let keys = moto.secretsmanager(
        "s3 = boto3.client('s3', endpoint_url=sm.meta.endpoint_url, region_name='us-east-1')\nout(sorted(o['Key'] for o in s3.list_objects_v2(Bucket='merge')['Contents']))",
    );
    assert_eq!(keys, json!(["merged/manifests/T.json", "merged/targets/T/db.json"]));

    let second = run(&ws, &["--exit-code"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let line = second.stderr.lines().find(|l| l.contains("api_calls")).unwrap();
    assert!(!line.contains("PutObject") && !line.contains("PutSecretValue"), "{line}");
}

#[test]
fn aws_sources_are_read_20_secrets_per_call() {
    let moto = Moto::start();
    moto.secretsmanager("for i in range(45):\n    sm.create_secret(Name=f'src/s{i:02}', SecretString=json.dumps({'i': i}))\nsm.create_secret(Name='src/plain', SecretString='text')");
    let ws = Workspace::new();
    ws.config(&format!(
        "aws: {{ region: us-east-1, endpoint: \"{}\" }}\nsource: {{ aws: {{ prefix: src/ }} }}\ntargets:\n  T: {{ store: {{ file: {{ dir: out }} }} }}\n",
        moto.endpoint
    ));
    let mut env: Vec<(&str, &str)> = AWS_TEST_ENV.to_vec();
    env.push(("RUST_LOG", "vss_coordinator=debug"));
    let run = ws.run_env(&["pipeline", "--config", "vss.yaml", "--output", "json"], &env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(counts(&run.json()["summary"]), (46, 0, 0, 0));
    assert_eq!(ws.read_secret("out", "s07").unwrap(), json!({"i": 7}));
    assert_eq!(ws.read_secret("out", "plain").unwrap(), json!({"value": "text"}));
    let line = run.stderr.lines().find(|l| l.contains("api_calls")).unwrap();
    let start =
        line.find("\"aws-sm:us-east-1/src/\": ").unwrap() + "\"aws-sm:us-east-1/src/\": ".len();
    let end = start + line[start..].find('}').unwrap() + 1;
    let calls: Value = serde_json::from_str(&line[start..end]).unwrap();
    assert_eq!(calls, json!({"BatchGetSecretValue": 3, "ListSecrets": 1}), "46 secrets: 3 batches");
}

#[test]
fn aws_force_delete_only_when_configured() {
    let moto = Moto::start();
    let ws = Workspace::new();
    let config = |extra: &str| {
        format!(
            "aws: {{ region: us-east-1, endpoint: \"{}\"{extra} }}\nsource: {{ file: {{ dir: src }} }}\ntargets:\n  T: {{ store: {{ aws: {{ prefix: app/ }} }}, delete: true }}\n",
            moto.endpoint
        )
    };
    ws.config(&config(", force_delete: true"));
    ws.secret("src", "keep", json!({"k": 1}));
    ws.secret("src", "gone", json!({"k": 2}));
    assert_eq!(run(&ws, &[]).code, 0);
    std::fs::remove_file(ws.path().join("src/gone.json")).unwrap();
    assert_eq!(run(&ws, &[]).code, 0);
    let names = moto.secretsmanager("out(sorted(x['Name'] for x in sm.list_secrets(IncludePlannedDeletion=True)['SecretList']))");
    assert_eq!(names, json!(["app/keep"]), "deleted at once, no recovery window");

    ws.config(&config(", recovery_window_days: 3"));
    let check = ws.run(&["validate", "--config", "vss.yaml"]);
    assert!(
        check.stderr.contains("aws.recovery_window_days: must be between 7 and 30"),
        "{}",
        check.stderr
    );
}
