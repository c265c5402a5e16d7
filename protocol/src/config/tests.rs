use std::path::Path;

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, Vec<Diagnostic>> {
    Config::from_yaml(text, "vss.yaml", Path::new("/base"), &no_env).map_err(|e| match e {
        ConfigError::Invalid(d) => d,
        ConfigError::Read { .. } => unreachable!(),
    })
}

fn errors(text: &str) -> Vec<String> {
    load(text).unwrap_err().iter().map(ToString::to_string).collect()
}

const GOOD: &str = "
merge_store: { file: { dir: merged } }
sources:
  common: { file: { dir: src/common } }
  prod-only: { file: { dir: src/prod } }
targets:
  Base: { imports: [common], store: { file: { dir: out/base } } }
  Staging: { inherits: Base, store: { file: { dir: out/stg } }, list_merge: append_unique }
  Production:
    imports: [Staging, prod-only]
    store: { file: { dir: out/prod } }
    delete: true
";

#[test]
fn loads_a_full_config_with_defaults() {
    let cfg = load(GOOD).unwrap();
    assert!(cfg.pipeline.merge_enabled && cfg.pipeline.sync_enabled);
    assert_eq!((cfg.pipeline.merge_parallel, cfg.pipeline.sync_parallel), (4, 8));
    assert_eq!(cfg.merge_store, Some(StoreSpec::File { dir: "/base/merged".into() }));
    assert_eq!(cfg.state, StateSpec::File { path: "/base/.vss/state".into() });
    let prod = &cfg.targets["Production"];
    assert_eq!(
        prod.layers,
        vec![Layer::Target("Staging".into()), Layer::Source("prod-only".into())]
    );
    assert!(prod.delete);
    assert_eq!(cfg.targets["Staging"].list_merge, ListMerge::AppendUnique);
    assert_eq!(cfg.topological_order(), vec!["Base", "Staging", "Production"]);
}

#[test]
fn unknown_keys_are_all_reported_with_line_and_suggestion() {
    let errs = errors(
        "merge_store: { file: { dir: m } }\nsources: {}\ntargets:\n  A:\n    improts: []\n    store: { file: { dri: x } }\npipline: {}\n",
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.contains(":6: targets.A.store.file: missing required key `dir`")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with(
            "vss.yaml:5: targets.A.improts: unknown key `improts` (did you mean `imports`?)"
        )),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e
                .contains(":6: targets.A.store.file.dri: unknown key `dri` (did you mean `dir`?)")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains(":7: pipline: unknown key `pipline` (did you mean `pipeline`?)")),
        "{errs:#?}"
    );
}

#[test]
fn wrong_types_are_reported() {
    let errs = errors(
        "source: { file: { dir: s } }\npipeline: { sync: { parallel: many } }\ntargets: { A: { store: { file: { dir: o } } } }\n",
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("vss.yaml:2: pipeline.sync.parallel: wrong type"), "{errs:#?}");
}

#[test]
fn unknown_imports_and_parents_suggest_names() {
    let errs = errors(
        "merge_store: { file: { dir: m } }\nsources: { common: { file: { dir: c } } }\ntargets:\n  Base: { imports: [comon], store: { file: { dir: o } } }\n  Child: { inherits: Bsae, store: { file: { dir: o2 } } }\n",
    );
    assert!(
        errs.iter().any(|e| e.contains(
            ":4: targets.Base.imports[0]: unknown source or target `comon` (did you mean `common`?)"
        )),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.contains(
            ":5: targets.Child.inherits: unknown parent target `Bsae` (did you mean `Base`?)"
        )),
        "{errs:#?}"
    );
}

#[test]
fn cycles_print_their_chain() {
    let errs = errors(
        "merge_store: { file: { dir: m } }\ntargets:\n  Production: { imports: [Staging], store: { file: { dir: a } } }\n  Staging: { inherits: Production, store: { file: { dir: b } } }\n  Loop: { imports: [Loop], store: { file: { dir: c } } }\n",
    );
    assert!(errs.iter().any(|e| e.contains("inheritance cycle: Loop -> Loop")), "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.contains("inheritance cycle: Production -> Staging -> Production")),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn merge_without_store_and_target_without_store() {
    let errs = errors("pipeline: { merge: { enabled: true } }\ntargets:\n  A: { imports: [] }\n");
    assert!(
        errs.iter().any(|e| e.contains(
            ":1: pipeline.merge.enabled: the merge phase is enabled but no `merge_store`"
        )),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.contains(":3: targets.A: the target has no `store`")),
        "{errs:#?}"
    );
}

#[test]
fn sync_only_needs_a_source() {
    let errs = errors("targets:\n  A: { store: { file: { dir: o } } }\n");
    assert!(errs.iter().any(|e| e.contains("needs a top-level `source`")), "{errs:#?}");
}

#[test]
fn reference_spellings_are_accepted() {
    let env = |n: &str| (n == "OUT").then(|| "from-env".to_string());
    let cfg = Config::from_yaml(
        "log: { level: debug, format: json }\nmerge_store: { file: { dir: \"${OUT}/m\" } }\nsources: { a: { file: { dir: \"${SRC:-src}\" } } }\ntargets:\n  Staging: [a]\n  Production: { imports: [Staging], store: { file: { dir: p } } }\npipeline:\n  merge: { parallel: 2 }\n  sync: { parallel: 3, delete_orphans: true }\n  dry_run: true\n  continue_on_error: true\n",
        "ref.yaml",
        Path::new("/base"),
        &|n| env(n),
    );
    let errs = cfg.unwrap_err().to_string();
    // `Staging: [a]` has no store in a config that syncs; everything else is accepted.
    assert!(errs.contains("targets.Staging: the target has no `store`"), "{errs}");
    assert!(!errs.contains("Production"), "{errs}");

    let cfg = Config::from_yaml(
        "log: { level: debug, format: json }\nmerge_store: { file: { dir: \"${OUT}/m\" } }\nsources: { a: { file: { dir: \"${SRC:-src}\" } } }\ntargets:\n  Staging: [a]\n  Production: { imports: [Staging] }\npipeline:\n  sync: { enabled: false, delete_orphans: true }\n  dry_run: true\n  continue_on_error: true\n",
        "ref.yaml",
        Path::new("/base"),
        &|n| env(n),
    )
    .unwrap();
    assert_eq!(cfg.merge_store, Some(StoreSpec::File { dir: "/base/from-env/m".into() }));
    assert_eq!(cfg.sources["a"], StoreSpec::File { dir: "/base/src".into() });
    assert_eq!(cfg.targets["Production"].layers, vec![Layer::Target("Staging".into())]);
    assert!(cfg.pipeline.dry_run && cfg.pipeline.continue_on_error && cfg.pipeline.delete_orphans);
    assert!(cfg.targets["Staging"].delete);
    assert_eq!(cfg.log.format, Some(LogFormat::Json));
}

#[test]
fn unimplemented_reference_keys_are_named_not_ignored() {
    let errs = errors(
        "aws: { region: us-east-1, organizations: { auto_discover: true } }\ndynamic_targets: { x: {} }\nmerge_store: { gcp: { project: p } }\ntargets:\n  A: { account_id: \"123456789012\" }\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.contains(":1: aws.organizations: `aws.organizations` is not supported yet")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e
            .contains(":2: dynamic_targets: the `dynamic_targets` section is not supported yet")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains(":3: merge_store.gcp: GCP Secret Manager is a source or a target")),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 3, "an `account_id` target is an AWS target now: {errs:#?}");
}

#[test]
fn bad_account_ids_are_rejected() {
    let errs = errors(
        "merge_store: { file: { dir: m } }\ntargets:\n  A: { account_id: 12345, store: { file: { dir: o } } }\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("targets.A.account_id: an AWS account id is exactly 12 digits")),
        "{errs:#?}"
    );
}

#[test]
fn values_from_the_environment_are_never_quoted() {
    let env = |n: &str| (n == "PAR").then(|| "canary-value-77".to_string());
    let err = Config::from_yaml(
        "source: { file: { dir: s } }\npipeline: { sync: { parallel: \"${PAR}\" } }\ntargets: { A: { store: { file: { dir: o } } } }\n",
        "vss.yaml",
        Path::new("/base"),
        &|n| env(n),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pipeline.sync.parallel: wrong type (value from the environment, not shown)"),
        "{err}"
    );
    assert!(!err.contains("canary"), "{err}");
}

#[test]
fn delete_threshold() {
    let t = DeleteThreshold::default();
    assert!(!t.exceeded(5, 10), "up to `count` deletions are always allowed");
    assert!(!t.exceeded(6, 100), "6 of 100 is under 10%");
    assert!(t.exceeded(11, 100));
    assert!(t.exceeded(6, 10));
}

#[test]
fn unknown_keys_and_semantic_errors_come_together() {
    let errs = errors(
        "merge_store: { file: { dir: m } }\ntargets:\n  A: { imports: [nope], store: { file: { dir: o } }, colour: red }\n",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs.iter().any(|e| e.contains("targets.A.colour: unknown key")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.contains("unknown source or target `nope`")), "{errs:#?}");
}

#[test]
fn vault_stores_take_their_connection_from_the_vault_block_or_the_environment() {
    let env = |n: &str| match n {
        "VAULT_ADDR" => Some("http://env:8200".to_string()),
        "VAULT_NAMESPACE" => Some("team".to_string()),
        _ => None,
    };
    let cfg = Config::from_yaml(
        "merge_store: { vault: { mount: secret, prefix: /merge/ } }\nsources:\n  a: { vault: { path: secret/api-keys } }\n  b: { vault: { mount: analytics } }\ntargets:\n  T: { imports: [a, b], store: { vault: { path: kv/out } } }\n",
        "v.yaml",
        Path::new("/base"),
        &env,
    )
    .unwrap();
    let StoreSpec::Vault(merge) = cfg.merge_store.unwrap() else { panic!("vault merge store") };
    assert_eq!(
        (merge.connection.address.as_str(), merge.mount.as_str(), merge.prefix.as_str()),
        ("http://env:8200", "secret", "merge")
    );
    assert_eq!(merge.connection.namespace.as_deref(), Some("team"));
    assert_eq!(merge.connection.auth, VaultAuth::Token(SecretRef::Env("VAULT_TOKEN".into())));
    let StoreSpec::Vault(a) = &cfg.sources["a"] else { panic!() };
    assert_eq!((a.mount.as_str(), a.prefix.as_str()), ("secret", "api-keys"));
    let StoreSpec::Vault(b) = &cfg.sources["b"] else { panic!() };
    assert_eq!((b.mount.as_str(), b.prefix.as_str()), ("analytics", ""));

    let cfg = Config::from_yaml(
        "vault: { address: http://cfg:8200, auth: { token: { file: tok } } }\nsource: { vault: { path: secret/x } }\ntargets:\n  T: { store: { file: { dir: o } } }\n",
        "v.yaml",
        Path::new("/base"),
        &env,
    )
    .unwrap();
    let StoreSpec::Vault(src) = cfg.source.unwrap() else { panic!() };
    assert_eq!(src.connection.address, "http://cfg:8200");
    assert_eq!(src.connection.auth, VaultAuth::Token(SecretRef::File("/base/tok".into())));

    let errs = errors(
        "source: { vault: { path: secret/x, mount: y } }\ntargets:\n  T: { store: { vault: { path: secret/y } } }\nvault: { auth: { kubernetes: {} } }\n",
    );
    assert!(errs.iter().any(|e| e.contains(":1: source.vault: write either `path")), "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.contains(":3: targets.T.store.vault: no Vault address")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e
                .contains("vault.auth.kubernetes: Vault `kubernetes` auth is not supported yet")),
        "{errs:#?}"
    );
}

#[test]
fn credentials_stay_references() {
    let env = |n: &str| match n {
        "VAULT_TOKEN" => Some("s.canary-token".to_string()),
        "ROLE" => Some("role-canary".to_string()),
        "SECRET" => Some("secret-canary".to_string()),
        _ => None,
    };
    let load = |text: &str| Config::from_yaml(text, "v.yaml", Path::new("/b"), &env);
    let target =
        "source: { vault: { path: secret/x } }\ntargets:\n  T: { store: { file: { dir: o } } }\n";
    // Block style, as the reference configs write it (`}` ends a flow-style plain scalar).
    for spelling in [
        "token: ${VAULT_TOKEN}",
        "token:\n      token: ${VAULT_TOKEN}",
        "token: { env: VAULT_TOKEN }",
    ] {
        let cfg = load(&format!("vault:\n  address: http://v\n  auth:\n    {spelling}\n{target}"))
            .unwrap();
        let Some(StoreSpec::Vault(spec)) = cfg.source else { panic!() };
        assert_eq!(
            spec.connection.auth,
            VaultAuth::Token(SecretRef::Env("VAULT_TOKEN".into())),
            "{spelling}"
        );
        assert!(!format!("{spec:?}").contains("canary"));
    }
    let cfg = load(&format!(
        "vault: {{ address: http://v, auth: {{ approle: {{ role_id: \"${{ROLE}}\", secret_id: {{ file: sid }} }} }} }}\n{target}"
    ))
    .unwrap();
    let Some(StoreSpec::Vault(spec)) = cfg.source else { panic!() };
    assert_eq!(
        spec.connection.auth,
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretRef::Env("ROLE".into()),
            secret_id: SecretRef::File("/b/sid".into()),
        }
    );
    let err = load(&format!(
        "vault: {{ address: http://v, auth: {{ token: s.literal-canary }} }}\n{target}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("v.yaml:1: vault.auth.token: a credential cannot be written in the config"),
        "{err}"
    );
    assert!(!err.contains("canary"), "{err}");
}

#[test]
fn aws_targets_by_account_assume_the_configured_role() {
    let role = |aws: &str, target: &str| {
        let text = format!(
            "{aws}\nsource: {{ file: {{ dir: s }} }}\ntargets:\n  T: {{ account_id: \"222222222222\"{target} }}\n"
        );
        let cfg = Config::from_yaml(&text, "a.yaml", Path::new("/b"), &no_env)
            .unwrap_or_else(|e| panic!("{e}"));
        let StoreSpec::AwsSm(spec) = &cfg.targets["T"].store else { panic!() };
        (**spec).clone()
    };
    let spec = role(
        "aws: { region: eu-west-1, execution_role: \"arn:aws:iam::{account_id}:role/vss-sync\", external_id: x }",
        "",
    );
    assert_eq!(spec.role_arn.as_deref(), Some("arn:aws:iam::222222222222:role/vss-sync"));
    assert_eq!((spec.region.as_str(), spec.external_id.as_deref()), ("eu-west-1", Some("x")));
    let spec = role(
        "aws: { control_tower: { enabled: true, execution_role: { name: Sync, path: /secrets/ } } }",
        "",
    );
    assert_eq!(spec.role_arn.as_deref(), Some("arn:aws:iam::222222222222:role/secrets/Sync"));
    let spec = role(
        "aws: { execution_context: { type: hub_account, custom_role_pattern: \"arn:aws:iam::{{.AccountID}}:role/Hub\" } }",
        "",
    );
    assert_eq!(spec.role_arn.as_deref(), Some("arn:aws:iam::222222222222:role/Hub"));
    let spec = role("aws: { region: us-east-1 }", "");
    assert_eq!(
        spec.role_arn.as_deref(),
        Some("arn:aws:iam::222222222222:role/AWSControlTowerExecution")
    );
    let spec = role(
        "aws: { execution_role: \"arn:aws:iam::{account_id}:role/ignored\" }",
        ", role_arn: \"arn:aws:iam::222222222222:role/Own\", region: ap-south-1, secret_prefix: team/",
    );
    assert_eq!(spec.role_arn.as_deref(), Some("arn:aws:iam::222222222222:role/Own"));
    assert_eq!((spec.region.as_str(), spec.prefix.as_str()), ("ap-south-1", "team/"));

    let errs = errors(
        "source: { file: { dir: s } }\ntargets:\n  T: { account_id: \"222222222222\", store: { file: { dir: o } } }\n  U: { region: us-east-1, store: { file: { dir: p } } }\n",
    );
    assert!(
        errs.iter().any(|e| e.contains("targets.T.account_id: `account_id` names an AWS target")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e
            .contains("targets.U: `region`, `role_arn` and `secret_prefix` need an `account_id`")),
        "{errs:#?}"
    );
}

#[test]
fn http_stores_are_sources_with_referenced_headers() {
    let env = |n: &str| (n == "TOKEN").then(|| "Bearer canary".to_string());
    let cfg = Config::from_yaml(
        "merge_store: { file: { dir: m } }\nsources:\n  v:\n    http:\n      url: https://example.test/s.json\n      headers:\n        Authorization: ${TOKEN}\n        X-Key: { file: key }\ntargets:\n  T: { imports: [v], store: { file: { dir: o } } }\n",
        "h.yaml",
        Path::new("/b"),
        &env,
    )
    .unwrap();
    let StoreSpec::Http(spec) = &cfg.sources["v"] else { panic!() };
    assert_eq!(spec.headers["Authorization"], SecretRef::Env("TOKEN".into()));
    assert_eq!(spec.headers["X-Key"], SecretRef::File("/b/key".into()));
    assert_eq!(spec.timeout_secs, 30);
    assert!(!format!("{spec:?}").contains("canary"));

    let errs = errors(
        "source: { file: { dir: s } }\ntargets:\n  T: { store: { http: { url: \"https://x\" } } }\n",
    );
    assert!(
        errs.iter().any(|e| e.contains("targets.T.store.http: the `http` store is read-only")),
        "{errs:#?}"
    );
    let errs = errors(
        "source: { http: { url: \"https://x\", headers: { A: literal-canary } } }\ntargets:\n  T: { store: { file: { dir: o } } }\n",
    );
    assert!(
        errs.iter()
            .any(|e| e
                .contains("source.http.headers.A: a credential cannot be written in the config")),
        "{errs:#?}"
    );
    assert!(errs.iter().all(|e| !e.contains("canary")), "{errs:#?}");
}

#[test]
fn shards_must_be_between_1_and_256() {
    let text = "source: { file: { dir: s } }\ntargets:\n  T:\n    store: { file: { dir: t } }\n    shards: 0\n";
    assert_eq!(errors(text), vec!["vss.yaml:5: targets.T.shards: must be between 1 and 256"]);
    let cfg = load(&text.replace("shards: 0", "shards: 8")).unwrap();
    assert_eq!(cfg.targets["T"].shards, 8);
}

#[test]
fn github_targets_default_their_token_and_refuse_other_roles() {
    let cfg = load("source: { file: { dir: s } }\ntargets:\n  T: { store: { github: { owner: acme, repo: app } } }\n").unwrap();
    let StoreSpec::Github(spec) = &cfg.targets["T"].store else { panic!("a github store") };
    assert_eq!(spec.auth, GithubAuth::Token(SecretRef::Env("GITHUB_TOKEN".into())));
    assert_eq!(spec.api_url, "https://api.github.com");
    assert_eq!(
        errors(
            "sources: { gh: { github: { owner: a, repo: b } } }\ntargets:\n  T: { imports: [gh], store: { file: { dir: t } } }\nmerge_store: { file: { dir: m } }\n"
        ),
        vec!["vss.yaml:1: sources.gh.github: GitHub secrets are write-only: use them as a target"]
    );
    let cfg = load("source: { file: { dir: s } }\ntargets:\n  E: { store: { github: { owner: a, repo: r, environment: prod } } }\n  O: { store: { github: { org: a, visibility: all } } }\n").unwrap();
    let StoreSpec::Github(env) = &cfg.targets["E"].store else { panic!("github") };
    assert!(
        matches!(&env.scope, GithubScope::Environment { environment, .. } if environment == "prod")
    );
    let StoreSpec::Github(org) = &cfg.targets["O"].store else { panic!("github") };
    assert!(
        matches!(&org.scope, GithubScope::Organization { visibility, .. } if visibility == "all")
    );
    let bad = errors(
        "source: { file: { dir: s } }\ntargets:\n  O: { store: { github: { org: a, visibility: selected } } }\n  P: { store: { github: { owner: a } } }\n",
    );
    assert!(bad[0].contains("`selected_repositories` goes with `visibility: selected`"), "{bad:?}");
    assert!(bad[1].contains("either `owner` and `repo`"), "{bad:?}");
}

#[test]
fn kubernetes_targets_take_a_namespace_and_context() {
    let cfg = load("source: { file: { dir: s } }\ntargets:\n  K: { store: { kubernetes: { namespace: apps, context: prod } } }\n").unwrap();
    let StoreSpec::Kubernetes(spec) = &cfg.targets["K"].store else { panic!("a kubernetes store") };
    assert_eq!((spec.namespace.as_str(), spec.context.as_deref()), ("apps", Some("prod")));
    let named = load("source: { file: { dir: s } }\ntargets:\n  K: { store: { kubernetes: { namespace: apps, name: all } } }\n").unwrap();
    let StoreSpec::Kubernetes(spec) = &named.targets["K"].store else { panic!("kubernetes") };
    assert_eq!(spec.name.as_deref(), Some("all"));
}

#[test]
fn gcp_stores_check_project_prefix_and_labels() {
    let cfg = load("source: { gcp: { project: src-proj } }\ntargets:\n  G: { store: { gcp: { project: my-proj, prefix: app_, labels: { team: payments }, endpoint: \"http://127.0.0.1:1/\" } } }\n").unwrap();
    let StoreSpec::Gcp(spec) = &cfg.targets["G"].store else { panic!("a gcp store") };
    assert_eq!((spec.project.as_str(), spec.prefix.as_str()), ("my-proj", "app_"));
    assert_eq!(spec.labels["team"], "payments");
    assert_eq!(spec.endpoint.as_deref(), Some("http://127.0.0.1:1"));
    assert_eq!(cfg.targets["G"].store.to_string(), "gcp:my-proj/app_");
    let bad = errors(
        "source: { file: { dir: s } }\ntargets:\n  A: { store: { gcp: { project: p, prefix: a/b } } }\n  B: { store: { gcp: { project: p, labels: { Team: x, vss-managed-by: y } } } }\n  C: { store: { gcp: { project: \"My Project\" } } }\n",
    );
    assert!(
        bad.iter().any(|e| e.contains(":3: targets.A.store.gcp.prefix: GCP secret ids allow only")),
        "{bad:#?}"
    );
    assert!(
        bad.iter()
            .any(|e| e.contains(":4: targets.B.store.gcp.labels.Team: GCP labels are lower-case")),
        "{bad:#?}"
    );
    assert!(
        bad.iter().any(|e| e.contains(
            "targets.B.store.gcp.labels.vss-managed-by: `vss-managed-by` is the label vss sets"
        )),
        "{bad:#?}"
    );
    assert!(
        bad.iter()
            .any(|e| e
                .contains(":5: targets.C.store.gcp.project: `My Project` is not a GCP project id")),
        "{bad:#?}"
    );
    assert_eq!(bad.len(), 4, "{bad:#?}");
}

#[test]
fn github_app_auth_is_a_key_reference() {
    let cfg = load("source: { file: { dir: s } }\ntargets:\n  T: { store: { github: { owner: a, repo: r, app: { app_id: 1, installation_id: 2, private_key: { file: app.pem } } } } }\n").unwrap();
    let StoreSpec::Github(spec) = &cfg.targets["T"].store else { panic!("github") };
    assert_eq!(
        spec.auth,
        GithubAuth::App {
            app_id: 1,
            installation_id: 2,
            private_key: SecretRef::File("/base/app.pem".into())
        }
    );
    let both = errors(
        "source: { file: { dir: s } }\ntargets:\n  T: { store: { github: { owner: a, repo: r, token: { env: T }, app: { app_id: 1, installation_id: 2, private_key: { env: K } } } } }\n",
    );
    assert!(both[0].contains("either `token` or `app`, not both"), "{both:?}");
}

#[test]
fn a_bad_account_id_is_reported_once() {
    let errs =
        errors("merge_store: { file: { dir: m } }\ntargets:\n  A: { account_id: \"12345\" }\n");
    assert_eq!(
        errs,
        [
            "vss.yaml:3: targets.A.account_id: an AWS account id is exactly 12 digits (quote it to keep leading zeros)"
        ],
    );
}

#[test]
fn a_vault_address_must_be_a_url() {
    let errs = errors(
        "vault: { address: \"localhost:8200\" }\nsource: { vault: { path: secret/app } }\ntargets:\n  A: { store: { vault: { path: secret/out } } }\n",
    );
    assert_eq!(
        errs,
        [
            "vss.yaml:1: vault.address: `localhost:8200` is not a URL: write http://localhost:8200 or https://localhost:8200"
        ],
    );
    let env = |n: &str| (n == "VAULT_ADDR").then(|| "canary-host:8200".to_string());
    let err = Config::from_yaml(
        "source: { vault: { path: secret/app } }\ntargets: { A: { store: { file: { dir: o } } } }\n",
        "vss.yaml",
        Path::new("/base"),
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("source.vault: VAULT_ADDR is not an http:// or https:// URL"), "{err}");
    assert!(!err.contains("canary-host"), "{err}");
}

#[test]
fn every_credential_is_a_reference_and_literals_are_never_quoted() {
    let text = "
hash_key: canary-hash-key
source: { file: { dir: s } }
execution: { nats: { url: nats://n:4222, token: canary-nats-token, nkey: \"${NKEY}\" } }
targets:
  A: { store: { github: { owner: o, repo: r, token: canary-github-token } } }
  B: { store: { github: { owner: o, repo: r, app: { app_id: 1, installation_id: 2, private_key: canary-pem } } } }
  C: { store: { github: { owner: o, repo: r, token: \"${GH}\" } } }
";
    let env = |n: &str| ["NKEY", "GH", "HK"].contains(&n).then(|| "from-env".to_string());
    let load = |text: &str| Config::from_yaml(text, "vss.yaml", Path::new("/base"), &env);
    let errs: Vec<String> = match load(text).unwrap_err() {
        ConfigError::Invalid(d) => d.iter().map(ToString::to_string).collect(),
        ConfigError::Read { .. } => unreachable!(),
    };
    for key in [
        "hash_key",
        "execution.nats.token",
        "targets.A.store.github.token",
        "targets.B.store.github.app.private_key",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(&format!(": {key}: a credential cannot be written"))),
            "{key}: {errs:#?}"
        );
    }
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(!errs.iter().any(|e| e.contains("canary")), "{errs:#?}");
    let ok = "source: { file: { dir: s } }\nhash_key: \"${HK}\"\ntargets:\n  C: { store: { github: { owner: o, repo: r, token: \"${GH}\" } } }\n";
    let cfg = load(ok).unwrap();
    assert_eq!(cfg.hash_key, Some(SecretRef::Env("HK".into())));
    let StoreSpec::Github(github) = &cfg.targets["C"].store else { panic!("a github target") };
    assert_eq!(github.auth, GithubAuth::Token(SecretRef::Env("GH".into())));
}

#[test]
fn the_schema_describes_every_store_and_documents_fields() {
    let schema = Config::schema();
    let text = schema.to_string();
    for kind in ["file", "vault", "aws", "s3", "http", "gcp", "github", "kubernetes"] {
        assert!(text.contains(&format!("\"{kind}\"")), "{kind} missing");
    }
    assert_eq!(schema["additionalProperties"], false);
    let targets = &schema["properties"]["targets"];
    assert!(targets.to_string().contains("TargetOrImports"), "{targets}");
    let vault_store = &schema["$defs"]["RawVaultStore"]["properties"]["path"]["description"];
    assert!(
        vault_store.as_str().is_some_and(|d| d.contains("secret/apps/payments")),
        "{vault_store}"
    );
}

#[test]
fn identities_ignore_spelling_and_labels_hide_credentials() {
    let vault = |address: &str| {
        let text = format!(
            "vault: {{ address: \"{address}\" }}\nsource: {{ file: {{ dir: s }} }}\ntargets:\n  A: {{ store: {{ vault: {{ path: secret/app/ }} }} }}\n"
        );
        load(&text).unwrap().targets["A"].store.clone()
    };
    let plain = vault("https://vault.example.com:8200");
    for same in ["https://vault.example.com:8200/", "HTTPS://Vault.Example.com:8200"] {
        assert_eq!(vault(same).identity(), plain.identity(), "{same}");
    }
    assert_eq!(
        vault("https://vault.example.com/").identity(),
        vault("https://vault.example.com:443").identity()
    );
    assert_ne!(vault("https://other:8200").identity(), plain.identity());
    assert!(plain.identity().as_str().starts_with("v1:vault:"));
    let with_userinfo = vault("https://user:canary-pass@vault.example.com:8200/?token=canary-q");
    assert_eq!(with_userinfo.identity(), plain.identity());
    assert_eq!(with_userinfo.to_string(), "vault:https://vault.example.com:8200/secret/app");
    assert!(!with_userinfo.identity().as_str().contains("canary"));

    let aws = |extra: &str| {
        let text = format!(
            "source: {{ file: {{ dir: s }} }}\ntargets:\n  A: {{ account_id: \"123456789012\"{extra} }}\n"
        );
        load(&text).unwrap().targets["A"].store.identity()
    };
    assert_eq!(aws(""), aws(", role_arn: \"arn:aws:iam::123456789012:role/Other\""));
    assert_ne!(aws(""), aws(", region: eu-west-1"));
    assert_ne!(aws(""), aws(", secret_prefix: app/"));

    let http = |url: &str| {
        let text = format!(
            "source: {{ http: {{ url: \"{url}\" }} }}\ntargets:\n  A: {{ store: {{ file: {{ dir: o }} }} }}\n"
        );
        load(&text).unwrap().source.unwrap()
    };
    let source = http("https://u:canary-pw@api.example.com/s.json?key=canary-key");
    assert_eq!(source.to_string(), "http:https://api.example.com/s.json");
    assert!(!source.identity().as_str().contains("canary"));
    assert_ne!(source.identity(), http("https://api.example.com/s.json?key=other").identity());
}

#[test]
fn hostile_names_paths_and_filters_are_refused_at_validate() {
    let text = r#"
log: { level: "info,[{evil}]" }
sources:
  "": { file: { dir: s } }
  up: { vault: { path: secret/../../sys } }
  blank: { file: { dir: "" } }
merge_store: { file: { dir: m } }
vault: { address: "http://v:8200" }
targets:
  ".": { imports: [blank], store: { file: { dir: a } } }
  "..": { imports: [blank], store: { file: { dir: b } } }
  .hidden: { imports: [blank], store: { file: { dir: c } } }
  K: { imports: [blank], store: { kubernetes: { namespace: "../../x" } } }
  N: { imports: [blank], store: { kubernetes: { namespace: ns, name: "A/b" } } }
"#;
    let errs = errors(text).join("\n");
    for expected in [
        "log.level: `[{evil}]` is not a log filter directive",
        "sources: a source needs a name",
        "sources.up.vault: a Vault path cannot hold empty, `.` or `..` segments",
        "sources.blank.file.dir: `dir` is empty",
        "targets..: target names may use only",
        "targets...: target names may use only",
        "targets..hidden: target names may use only",
        "targets.K.store.kubernetes.namespace: a namespace is a DNS label",
        "targets.N.store.kubernetes.name: a Secret name is lower-case",
    ] {
        assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
    }
    let ok = "log: { level: \"warn,vss_worker=debug,aws_smithy_runtime=off\" }\nsource: { file: { dir: s } }\ntargets: { A: { store: { file: { dir: o } } } }\n";
    assert!(load(ok).is_ok());
}

#[test]
fn more_errors_than_are_listed_say_so() {
    let mut text = String::from("source: { file: { dir: s } }\ntargets:\n");
    for i in 0..80 {
        text.push_str(&format!("  T{i}: {{ bogus: 1, store: {{ file: {{ dir: o{i} }} }} }}\n"));
    }
    let errs = errors(&text);
    assert_eq!(errs.len(), 65, "{errs:#?}");
    assert!(errs[64].contains("and more errors"), "{}", errs[64]);
}

#[test]
fn a_nested_default_is_an_error_not_a_wrong_path() {
    let errs = errors(
        "source: { file: { dir: \"${A:-${B}}/x\" } }\ntargets: { A: { store: { file: { dir: o } } } }\n",
    );
    assert!(errs[0].contains("a default cannot hold another"), "{errs:#?}");
}

#[test]
fn locations_name_where_requests_go_and_refuse_climbing_paths() {
    let vault = |address: &str| {
        let text = format!(
            "vault: {{ address: '{address}' }}\nsource: {{ vault: {{ path: secret/app }} }}\ntargets:\n  A: {{ store: {{ file: {{ dir: o }} }} }}\n"
        );
        load(&text).unwrap().source.unwrap()
    };
    let tricked = vault("https://evil.example\\@vault.internal:8200");
    let location = tricked.location().unwrap();
    assert!(location.starts_with("vault:https://evil.example/"), "{location}");
    let label = tricked.to_string();
    assert!(
        label.starts_with("vault:https://evil.example/"),
        "the label shows the real host: {label}"
    );
    assert_eq!(
        vault("https://vault.internal:8200").location().unwrap(),
        "vault:https://vault.internal:8200/secret/app"
    );
    let climbing = StoreSpec::File { dir: "/srv/secrets/../../etc".into() };
    assert_eq!(climbing.location(), None);
    let github = load("source: { file: { dir: s } }\ntargets:\n  A: { store: { github: { owner: o, repo: r, api_url: \"https://ghes.example/api/v3\" } } }\n").unwrap();
    let store = &github.targets["A"].store;
    assert!(
        store.location().unwrap().ends_with("at https://ghes.example/api/v3"),
        "{:?}",
        store.location()
    );
    assert!(!store.label_is_complete(), "the label leaves out the API URL");
}

#[test]
fn outage_budget_covers_at_least_one_request() {
    let errs = errors(
        "pipeline: { timeouts: { request_secs: 30, outage_secs: 10 } }\nsource: { file: { dir: s } }\ntargets: { A: { store: { file: { dir: o } } } }\n",
    );
    assert!(
        errs[0].contains("pipeline.timeouts.outage_secs: must be at least `request_secs`"),
        "{errs:#?}"
    );
}

#[test]
fn unknown_names_and_kinds_from_the_environment_are_not_quoted() {
    let env = |n: &str| n.starts_with("SECRET_").then(|| format!("canary-{n}"));
    let text = "log: { format: \"${SECRET_A}\" }\nsource: { file: { dir: s } }\ntargets:\n  A: { store: { file: { dir: o } }, list_merge: \"${SECRET_B}\", inherits: \"${SECRET_C}\", imports: [\"${SECRET_D}\"] }\n";
    let err =
        Config::from_yaml(text, "vss.yaml", Path::new("/base"), &env).unwrap_err().to_string();
    assert!(!err.contains("canary"), "{err}");
    assert!(
        err.contains("log.format: unknown kind (value from the environment, not shown)"),
        "{err}"
    );
}

#[test]
fn a_distributed_run_keeps_its_ledger_in_nats_unless_told_otherwise() {
    let nats = NatsSpec {
        url: "nats://n:4222".into(),
        credentials: None,
        token: None,
        nkey: None,
        tls_ca: None,
        job_timeout_secs: NatsSpec::DEFAULT_JOB_TIMEOUT_SECS,
    };
    let vss_state = StateSpec::Nats { bucket: "vss-state".into() };
    let execution = format!("{GOOD}execution: {{ nats: {{ url: \"nats://n:4222\" }} }}\n");
    assert_eq!(load(&execution).unwrap().state, vss_state);
    assert!(load(&execution).unwrap().warnings().is_empty());

    // `--nats` makes a run distributed too: a default ledger follows, a chosen one stays.
    let mut cfg = load(GOOD).unwrap();
    cfg.distribute(nats.clone());
    assert_eq!(cfg.state, vss_state);
    let named = format!("{GOOD}state: {{ nats: {{ bucket: team-a }} }}\n");
    assert_eq!(load(&named).unwrap().state, StateSpec::Nats { bucket: "team-a".into() });
    let folder = format!("{GOOD}state: {{ file: {{ path: shared }} }}\n");
    let mut cfg = load(&folder).unwrap();
    cfg.distribute(nats);
    assert_eq!(cfg.state, StateSpec::File { path: "/base/shared".into() });

    // A folder on a fleet without a shared hash key is valid, and warned about.
    let warnings = cfg.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("hashes never match"), "{warnings:?}");
    cfg.hash_key = Some(SecretRef::Env("K".into()));
    assert!(cfg.warnings().is_empty());
}
