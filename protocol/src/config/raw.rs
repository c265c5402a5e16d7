//! The config as written (serde types, unknown keys rejected) and its resolution into
//! [`Config`], with every rule of `validate` checked along the way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::yaml::{Document, KeyPath, Segment, display_path};
use super::{
    AwsSmSpec, Config, DeleteThreshold, Diagnostic, GcpSpec, GithubAuth, GithubScope, GithubSpec,
    HttpSpec, KubernetesSpec, Layer, LogFormat, LogSettings, NatsSpec, PipelineSettings, S3Spec,
    SecretRef, StateSpec, StoreSpec, Target, VaultAuth, VaultSpec,
};
use crate::merge::ListMerge;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    pipeline: RawPipeline,
    merge_store: Option<RawStore>,
    state: Option<RawState>,
    source: Option<RawStore>,
    #[serde(default)]
    sources: BTreeMap<String, RawStore>,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
    log: Option<RawLog>,
    hash_key: Option<RawSecretRef>,
    // Keys of the reference format that later releases implement: named, so that using one
    // is a clear "not supported yet" rather than an unknown key or silence.
    vault: Option<RawVault>,
    aws: Option<RawAws>,
    dynamic_targets: Option<IgnoredAny>,
    execution: Option<RawExecution>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    merge: RawPhase,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    continue_on_error: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    enabled: Option<bool>,
    parallel: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    enabled: Option<bool>,
    parallel: Option<usize>,
    #[serde(default)]
    delete_orphans: bool,
    max_delete_percent: Option<f64>,
    max_delete_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawStore {
    File(RawFileStore),
    Vault(RawVaultStore),
    Aws(RawAwsStore),
    S3(RawS3Store),
    Http(RawHttpStore),
    Gcp(RawGcpStore),
    Github(RawGithubStore),
    Kubernetes(RawKubernetesStore),
}

/// The top-level `aws:` block: the region and endpoint every AWS store uses.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<String>,
    endpoint: Option<String>,
    /// Role ARN template, `{account_id}` replaced.
    execution_role: Option<String>,
    recovery_window_days: Option<i64>,
    #[serde(default)]
    force_delete: bool,
    external_id: Option<String>,
    control_tower: Option<RawControlTower>,
    execution_context: Option<RawExecutionContext>,
    organizations: Option<IgnoredAny>,
    identity_center: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControlTower {
    enabled: Option<bool>,
    execution_role: Option<RawRoleName>,
    account_factory: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoleName {
    name: Option<String>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecutionContext {
    // `type` and `account_id` describe where vss runs; they change nothing here.
    #[serde(rename = "type")]
    _kind: Option<IgnoredAny>,
    #[serde(rename = "account_id")]
    _account_id: Option<IgnoredAny>,
    delegation: Option<IgnoredAny>,
    custom_role_pattern: Option<String>,
}

/// `{aws: {prefix, region, account_id}}`: AWS Secrets Manager (the reference's source
/// spelling); with `account_id`, reached through a role in that account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAwsStore {
    prefix: Option<String>,
    region: Option<String>,
    account_id: Option<String>,
    role_arn: Option<String>,
    tags: Option<IgnoredAny>,
}

/// `{http: {url, headers, timeout}}`: a source fetched over HTTP.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpStore {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, RawSecretRef>,
    timeout: Option<u64>,
}

/// `{github: {owner, repo}}`: a repository's Actions secrets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithubStore {
    owner: Option<String>,
    repo: Option<String>,
    environment: Option<String>,
    org: Option<String>,
    visibility: Option<String>,
    #[serde(default)]
    selected_repositories: Vec<String>,
    token: Option<RawSecretRef>,
    app: Option<RawGithubApp>,
    api_url: Option<String>,
}

/// `app: {app_id, installation_id, private_key}`: GitHub App authentication.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithubApp {
    app_id: u64,
    installation_id: u64,
    private_key: RawSecretRef,
}

/// `{kubernetes: {namespace, name?, context?}}`: Secrets in a namespace.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetesStore {
    namespace: String,
    name: Option<String>,
    context: Option<String>,
}

/// `{gcp: {project, prefix?, labels?, endpoint?}}`: GCP Secret Manager.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGcpStore {
    project: String,
    prefix: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    endpoint: Option<String>,
}

/// `{s3: {bucket, prefix}}`: a merge store in S3.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3Store {
    bucket: String,
    prefix: Option<String>,
    region: Option<String>,
    kms_key_id: Option<IgnoredAny>,
}

/// Checks a `gcp:` store: GCP's rules for project ids, secret ids and labels.
fn gcp_spec(ck: &mut Checker, at: &[Segment], g: &RawGcpStore) -> Option<StoreSpec> {
    let within = |segment: &str| {
        let mut at = at.to_vec();
        at.push(Segment::Key(segment.to_string()));
        at
    };
    let mut ok = true;
    let project_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c);
    if g.project.is_empty() || !g.project.chars().all(project_ok) {
        ck.error(&within("project"), format!("`{}` is not a GCP project id", g.project));
        ok = false;
    }
    let prefix = g.prefix.clone().unwrap_or_default();
    if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        ck.error(&within("prefix"), "GCP secret ids allow only `A-Z a-z 0-9 _ -`".into());
        ok = false;
    }
    let label_ok = |s: &str| {
        s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    for (name, value) in &g.labels {
        let mut at = within("labels");
        at.push(Segment::Key(name.clone()));
        if !name.starts_with(|c: char| c.is_ascii_lowercase())
            || !label_ok(name)
            || !label_ok(value)
        {
            ck.error(
                &at,
                "GCP labels are lower-case `a-z 0-9 _ -`, at most 63 characters, keys starting with a letter".into(),
            );
            ok = false;
        } else if name == "vss-managed-by" {
            ck.error(&at, "`vss-managed-by` is the label vss sets itself".into());
            ok = false;
        }
    }
    ok.then(|| {
        StoreSpec::Gcp(Box::new(GcpSpec {
            project: g.project.clone(),
            prefix,
            labels: g.labels.clone(),
            endpoint: g.endpoint.as_ref().map(|e| e.trim_end_matches('/').to_string()),
        }))
    })
}

/// The top-level `vault:` block: the connection every vault store uses.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: Option<String>,
    namespace: Option<String>,
    auth: Option<RawVaultAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultAuth {
    token: Option<RawSecretRef>,
    approle: Option<RawAppRole>,
    kubernetes: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppRole {
    mount: Option<String>,
    role_id: RawSecretRef,
    secret_id: RawSecretRef,
}

/// `{vault: {path: mount/folder}}` or `{vault: {mount, prefix}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultStore {
    path: Option<String>,
    mount: Option<String>,
    prefix: Option<String>,
    paths: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileStore {
    dir: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawState {
    File { path: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecution {
    nats: Option<RawNats>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    url: String,
    credentials: Option<String>,
    token: Option<RawSecretRef>,
    nkey: Option<RawSecretRef>,
    tls_ca: Option<String>,
    job_timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawSecretRef {
    Env(String),
    File(String),
}

/// The most sync jobs one target can be split into.
const MAX_SHARDS: u32 = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    shards: Option<u32>,
    #[serde(default)]
    imports: Vec<String>,
    inherits: Option<String>,
    store: Option<RawStore>,
    account_id: Option<String>,
    delete: Option<bool>,
    list_merge: Option<ListMerge>,
    region: Option<String>,
    role_arn: Option<String>,
    secret_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

fn key(k: &str) -> Segment {
    Segment::Key(k.to_string())
}

fn path(parts: &[&str]) -> KeyPath {
    parts.iter().map(|p| key(p)).collect()
}

struct Checker<'a> {
    file: &'a str,
    doc: &'a Document,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, at: &[Segment], message: String) {
        self.diags.push(Diagnostic::at(self.file, self.doc.line_of(at), display_path(at), message));
    }

    fn not_supported(&mut self, at: &[Segment], what: &str) {
        self.error(at, format!("{what} is not supported yet by this version of vss"));
    }
}

/// Accepts the reference format's shorthands before typed deserialization: a target written
/// as a bare list is its `imports`, and a numeric `account_id` is text.
fn normalize_shorthands(root: &mut Value) {
    let Some(Value::Object(targets)) = root.get_mut("targets") else {
        return;
    };
    for target in targets.values_mut() {
        if let Value::Array(imports) = target {
            *target = serde_json::json!({ "imports": std::mem::take(imports) });
        }
        if let Some(id @ Value::Number(_)) = target.get_mut("account_id") {
            *id = Value::String(id.to_string());
        }
    }
}

/// Whether a key path is inside `sources` or `source` (stores vss only reads).
fn is_source_path(at: &[Segment]) -> bool {
    matches!(at.first(), Some(Segment::Key(k)) if k == "sources" || k == "source")
}

/// Credentials in the config must stay references: `${NAME}` becomes `{env: NAME}` (the
/// reference configs' spelling), and a literal value is refused without being quoted.
fn credential_references(doc: &mut Document, file: &str) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let credential_paths: [&[&str]; 4] = [
        &["vault", "auth", "token"],
        &["vault", "auth", "token", "token"],
        &["vault", "auth", "approle", "role_id"],
        &["vault", "auth", "approle", "secret_id"],
    ];
    let mut paths: Vec<KeyPath> = credential_paths.iter().map(|p| path(p)).collect();
    // HTTP source headers carry credentials too.
    let sources =
        doc.get(&path(&["sources"])).and_then(Value::as_object).cloned().unwrap_or_default();
    let http_sources =
        sources.keys().map(|n| vec![key("sources"), key(n)]).chain([vec![key("source")]]);
    for source in http_sources {
        let mut headers = source.clone();
        headers.extend([key("http"), key("headers")]);
        if let Some(Value::Object(map)) = doc.get(&headers) {
            for name in map.keys() {
                let mut at = headers.clone();
                at.push(key(name));
                paths.push(at);
            }
        }
    }
    for at in paths {
        if !matches!(doc.get(&at), Some(Value::String(_))) {
            continue;
        }
        match doc.env_reference(&at).map(str::to_string) {
            Some(name) => {
                doc.replace(&at, serde_json::json!({ "env": name }));
            }
            None => {
                let message = "a credential cannot be written in the config: use `${NAME}`, \
                               `{ env: NAME }` or `{ file: PATH }`";
                diags.push(Diagnostic::at(
                    file,
                    doc.line_of(&at),
                    display_path(&at),
                    message.into(),
                ));
                doc.remove(&at);
            }
        }
    }
    // The reference format nests the token once more: `token: { token: ${VAULT_TOKEN} }`.
    let nested = path(&["vault", "auth", "token"]);
    if let Some(inner) = doc.get(&nested).and_then(|t| t.get("token")).cloned() {
        doc.replace(&nested, inner);
    }
    diags
}

/// Deserializes the raw config, collecting every unknown key and type error: each failure is
/// recorded, its node removed, and deserialization tried again. When what remains
/// deserializes, it comes back with the diagnostics, so the later checks can add theirs.
fn deserialize(doc: &mut Document, file: &str) -> (Option<RawConfig>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut removed: Vec<KeyPath> = Vec::new();
    for _ in 0..64 {
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(&doc.root) {
            Ok(raw) => return (Some(raw), diags),
            Err(err) => err,
        };
        let at: KeyPath = err
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => {
                    Some(Segment::Key(variant.clone()))
                }
                serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = err.into_inner().to_string();
        if let Some(field) =
            message.strip_prefix("missing field `").and_then(|m| m.split('`').next())
        {
            let mut missing = at.clone();
            missing.push(key(field));
            if !removed.contains(&missing) {
                diags.push(Diagnostic::at(
                    file,
                    doc.line_of(&at),
                    display_path(&at),
                    format!("missing required key `{field}`"),
                ));
            }
            return (None, diags);
        }
        let message = explain(&message, doc.is_from_env(&at));
        diags.push(Diagnostic::at(file, doc.line_of(&at), display_path(&at), message));
        if !doc.remove(&at) {
            return (None, diags);
        }
        removed.push(at);
    }
    (None, diags)
}

/// Turns a serde message into one for people: "did you mean", and no quoted values from the
/// environment.
fn explain(message: &str, from_env: bool) -> String {
    for (prefix, what) in
        [("unknown field `", "unknown key"), ("unknown variant `", "unknown kind")]
    {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let mut out = format!("{what} `{name}`");
            if let Some(best) = did_you_mean(name, known.iter().copied()) {
                out.push_str(&format!(" (did you mean `{best}`?)"));
            }
            if !known.is_empty() {
                out.push_str(&format!("; expected one of: {}", known.join(", ")));
            }
            return out;
        }
    }
    if from_env {
        if let Some(rest) = message.strip_prefix("invalid type: ") {
            let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
            return format!(
                "wrong type (value from the environment, not shown); expected {expected}"
            );
        }
        return "invalid value (value from the environment, not shown)".into();
    }
    message.replacen("invalid type: ", "wrong type: ", 1)
}

/// The closest known name to a mistyped one, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_lowercase();
    known
        .map(|k| {
            let lower = k.to_lowercase();
            let similarity = strsim::normalized_damerau_levenshtein(&name, &lower);
            let prefix = name.len() >= 3 && (lower.starts_with(&name) || name.starts_with(&lower));
            (if prefix { similarity.max(0.8) } else { similarity }, k)
        })
        .filter(|(score, _)| *score >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Builds the config from a parsed document; all diagnostics at once.
pub(super) fn build(
    mut doc: Document,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Diagnostic>> {
    normalize_shorthands(&mut doc.root);
    let mut diags = credential_references(&mut doc, file);
    let (raw, more) = deserialize(&mut doc, file);
    diags.extend(more);
    let Some(raw) = raw else { return Err(diags) };
    let mut ck = Checker { file, doc: &doc, diags };
    let resolve = |p: &str| base.join(p);

    for (k, present) in [("dynamic_targets", raw.dynamic_targets.is_some())] {
        if present {
            ck.not_supported(&path(&[k]), &format!("the `{k}` section"));
        }
    }

    let vault = vault_connection(&mut ck, raw.vault.as_ref(), env, base);
    check_aws_block(&mut ck, raw.aws.as_ref());
    let store = |ck: &mut Checker, at: KeyPath, s: &RawStore| -> Option<StoreSpec> {
        match s {
            RawStore::File(f) => Some(StoreSpec::File { dir: resolve(&f.dir) }),
            RawStore::Vault(v) => {
                let mut at = at;
                at.push(key("vault"));
                vault_store(ck, &at, v, &vault)
            }
            RawStore::Aws(a) => {
                let mut at = at;
                at.push(key("aws"));
                aws_store(ck, &at, a, raw.aws.as_ref(), env)
            }
            RawStore::Http(h) => {
                let mut at = at;
                at.push(key("http"));
                if !is_source_path(&at) {
                    ck.error(&at, "the `http` store is read-only: use it as a source".into());
                    return None;
                }
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    ck.error(&at, "`url` must start with http:// or https://".into());
                    return None;
                }
                let headers = h
                    .headers
                    .iter()
                    .map(|(name, r)| {
                        let reference = match r {
                            RawSecretRef::Env(v) => SecretRef::Env(v.clone()),
                            RawSecretRef::File(p) => SecretRef::File(resolve(p)),
                        };
                        (name.clone(), reference)
                    })
                    .collect();
                Some(StoreSpec::Http(Box::new(HttpSpec {
                    url: h.url.clone(),
                    headers,
                    timeout_secs: h.timeout.unwrap_or(30),
                })))
            }
            RawStore::S3(s3) => {
                let mut at = at;
                at.push(key("s3"));
                if s3.kms_key_id.is_some() {
                    at.push(key("kms_key_id"));
                    ck.not_supported(&at, "`kms_key_id` (the bucket's default encryption applies)");
                    return None;
                }
                if s3.bucket.is_empty() {
                    ck.error(&at, "`bucket` is empty".into());
                    return None;
                }
                let aws = raw.aws.as_ref();
                Some(StoreSpec::S3(Box::new(S3Spec {
                    bucket: s3.bucket.clone(),
                    prefix: s3.prefix.clone().unwrap_or_default(),
                    region: aws_region(s3.region.as_deref(), aws, env),
                    endpoint: aws.and_then(|a| a.endpoint.clone()),
                })))
            }
            RawStore::Github(g) => {
                let mut at = at;
                at.push(key("github"));
                if is_source_path(&at) || at.first() == Some(&key("merge_store")) {
                    ck.error(&at, "GitHub secrets are write-only: use them as a target".into());
                    return None;
                }
                let scope = match (&g.org, &g.owner, &g.repo, &g.environment) {
                    (Some(org), None, None, None) => {
                        let visibility = g.visibility.clone().unwrap_or_else(|| "private".into());
                        if !["all", "private", "selected"].contains(&visibility.as_str()) {
                            ck.error(&at, "`visibility` is `all`, `private` or `selected`".into());
                            return None;
                        }
                        if (visibility == "selected") == g.selected_repositories.is_empty() {
                            ck.error(
                                &at,
                                "`selected_repositories` goes with `visibility: selected`, and only with it".into(),
                            );
                            return None;
                        }
                        GithubScope::Organization {
                            org: org.clone(),
                            visibility,
                            selected_repositories: g.selected_repositories.clone(),
                        }
                    }
                    (None, Some(owner), Some(repo), environment)
                        if g.visibility.is_none() && g.selected_repositories.is_empty() =>
                    {
                        match environment {
                            Some(environment) => GithubScope::Environment {
                                owner: owner.clone(),
                                repo: repo.clone(),
                                environment: environment.clone(),
                            },
                            None => {
                                GithubScope::Repository { owner: owner.clone(), repo: repo.clone() }
                            }
                        }
                    }
                    _ => {
                        ck.error(
                            &at,
                            "either `owner` and `repo` (and optionally `environment`), or `org` (with `visibility`, `selected_repositories`)".into(),
                        );
                        return None;
                    }
                };
                let reference = |r: &RawSecretRef| match r {
                    RawSecretRef::Env(v) => SecretRef::Env(v.clone()),
                    RawSecretRef::File(p) => SecretRef::File(resolve(p)),
                };
                let auth = match (&g.token, &g.app) {
                    (Some(_), Some(_)) => {
                        ck.error(&at, "either `token` or `app`, not both".into());
                        return None;
                    }
                    (_, Some(app)) => GithubAuth::App {
                        app_id: app.app_id,
                        installation_id: app.installation_id,
                        private_key: reference(&app.private_key),
                    },
                    (Some(token), None) => GithubAuth::Token(reference(token)),
                    (None, None) => GithubAuth::Token(SecretRef::Env("GITHUB_TOKEN".into())),
                };
                let api_url = g
                    .api_url
                    .clone()
                    .or_else(|| env("GITHUB_API_URL"))
                    .unwrap_or_else(|| "https://api.github.com".into());
                Some(StoreSpec::Github(Box::new(GithubSpec {
                    scope,
                    auth,
                    api_url: api_url.trim_end_matches('/').to_string(),
                })))
            }
            RawStore::Gcp(g) => {
                let mut at = at;
                at.push(key("gcp"));
                if at.first() == Some(&key("merge_store")) {
                    ck.error(
                        &at,
                        "GCP Secret Manager is a source or a target, not a merge store".into(),
                    );
                    return None;
                }
                gcp_spec(ck, &at, g)
            }
            RawStore::Kubernetes(k) => {
                let mut at = at;
                at.push(key("kubernetes"));
                if is_source_path(&at) || at.first() == Some(&key("merge_store")) {
                    ck.error(&at, "the `kubernetes` store is a target".into());
                    return None;
                }
                Some(StoreSpec::Kubernetes(Box::new(KubernetesSpec {
                    namespace: k.namespace.clone(),
                    context: k.context.clone(),
                    name: k.name.clone(),
                })))
            }
        }
    };

    let merge_store =
        raw.merge_store.as_ref().and_then(|s| store(&mut ck, path(&["merge_store"]), s));
    let source = raw.source.as_ref().and_then(|s| store(&mut ck, path(&["source"]), s));
    let mut sources = BTreeMap::new();
    for (name, s) in &raw.sources {
        if let Some(spec) = store(&mut ck, path(&["sources", name]), s) {
            sources.insert(name.clone(), spec);
        }
    }

    let p = &raw.pipeline;
    let merge_enabled = p.merge.enabled.unwrap_or(raw.merge_store.is_some());
    if merge_enabled && raw.merge_store.is_none() {
        ck.error(
            &path(&["pipeline", "merge", "enabled"]),
            "the merge phase is enabled but no `merge_store` is configured".into(),
        );
    }
    let sync_enabled = p.sync.enabled.unwrap_or(true);
    if sync_enabled && !merge_enabled && raw.source.is_none() {
        ck.error(
            &path(&["pipeline", "sync"]),
            "the sync phase runs without the merge phase, so it needs a top-level `source`".into(),
        );
    }
    for (phase, parallel) in [("merge", p.merge.parallel), ("sync", p.sync.parallel)] {
        if parallel == Some(0) {
            ck.error(&path(&["pipeline", phase, "parallel"]), "must be at least 1".into());
        }
    }
    let mut delete_threshold = DeleteThreshold::default();
    if let Some(percent) = p.sync.max_delete_percent {
        if !(0.0..=100.0).contains(&percent) {
            ck.error(
                &path(&["pipeline", "sync", "max_delete_percent"]),
                "must be between 0 and 100".into(),
            );
        }
        delete_threshold.percent = percent;
    }
    if let Some(count) = p.sync.max_delete_count {
        delete_threshold.count = count;
    }

    if raw.targets.is_empty() {
        ck.error(&path(&["targets"]), "at least one target is required".into());
    }
    let target_names: BTreeSet<&str> = raw.targets.keys().map(String::as_str).collect();
    let mut targets = BTreeMap::new();
    for (name, t) in &raw.targets {
        let at = path(&["targets", name]);
        if t.shards.is_some_and(|n| n == 0 || n > MAX_SHARDS) {
            let mut at = at.clone();
            at.push(key("shards"));
            ck.error(&at, format!("must be between 1 and {MAX_SHARDS}"));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            ck.error(&at, "target names may use only letters, digits, `_`, `-` and `.`".into());
        }
        let mut layers = Vec::new();
        if let Some(parent) = &t.inherits {
            let mut at = at.clone();
            at.push(key("inherits"));
            if target_names.contains(parent.as_str()) {
                layers.push(Layer::Target(parent.clone()));
            } else {
                let hint = did_you_mean(parent, target_names.iter().copied())
                    .map(|b| format!(" (did you mean `{b}`?)"))
                    .unwrap_or_default();
                ck.error(&at, format!("unknown parent target `{parent}`{hint}"));
            }
        }
        for (i, import) in t.imports.iter().enumerate() {
            let mut at = at.clone();
            at.extend([key("imports"), Segment::Index(i)]);
            let is_source = sources.contains_key(import) || raw.sources.contains_key(import);
            let is_target = target_names.contains(import.as_str());
            match (is_source, is_target) {
                (true, true) => ck.error(
                    &at,
                    format!("`{import}` names both a source and a target; rename one of them"),
                ),
                (true, false) => layers.push(Layer::Source(import.clone())),
                (false, true) => layers.push(Layer::Target(import.clone())),
                (false, false) => {
                    let known =
                        raw.sources.keys().map(String::as_str).chain(target_names.iter().copied());
                    let hint = did_you_mean(import, known)
                        .map(|b| format!(" (did you mean `{b}`?)"))
                        .unwrap_or_default();
                    ck.error(&at, format!("unknown source or target `{import}`{hint}"));
                }
            }
        }
        if let Some(id) = &t.account_id
            && (id.len() != 12 || !id.chars().all(|c| c.is_ascii_digit()))
        {
            let mut at = at.clone();
            at.push(key("account_id"));
            ck.error(
                &at,
                "an AWS account id is exactly 12 digits (quote it to keep leading zeros)".into(),
            );
        }
        let aws_keys_without_account = t.account_id.is_none()
            && (t.region.is_some() || t.role_arn.is_some() || t.secret_prefix.is_some());
        if aws_keys_without_account {
            ck.error(&at, "`region`, `role_arn` and `secret_prefix` need an `account_id`".into());
        }
        let target_store = match (&t.store, &t.account_id) {
            (Some(_), Some(_)) => {
                let mut at = at.clone();
                at.push(key("account_id"));
                ck.error(&at, "`account_id` names an AWS target; this target has a `store`".into());
                None
            }
            (Some(s), None) => {
                let mut at = at.clone();
                at.push(key("store"));
                store(&mut ck, at, s)
            }
            (None, Some(account)) => {
                let store = RawAwsStore {
                    prefix: t.secret_prefix.clone(),
                    region: t.region.clone(),
                    account_id: Some(account.clone()),
                    role_arn: t.role_arn.clone(),
                    tags: None,
                };
                aws_store(&mut ck, &at, &store, raw.aws.as_ref(), env)
            }
            (None, None) if sync_enabled => {
                ck.error(&at, "the target has no `store` to sync to".into());
                None
            }
            // A merge-only config needs no target store; nothing will ever sync there.
            (None, None) => Some(StoreSpec::File { dir: base.join(".vss/unsynced").join(name) }),
        };
        if let Some(store) = target_store {
            targets.insert(
                name.clone(),
                Target {
                    name: name.clone(),
                    layers,
                    store,
                    delete: t.delete.unwrap_or(p.sync.delete_orphans),
                    list_merge: t.list_merge.unwrap_or_default(),
                    shards: t.shards.unwrap_or(1),
                },
            );
        }
    }
    check_cycles(&mut ck, &raw.targets);

    let state = match &raw.state {
        Some(RawState::File { path }) => StateSpec::File { path: resolve(path) },
        None => StateSpec::File { path: base.join(".vss/state") },
    };
    let reference = |r: RawSecretRef| match r {
        RawSecretRef::Env(name) => SecretRef::Env(name),
        RawSecretRef::File(p) => SecretRef::File(resolve(&p)),
    };
    let hash_key = raw.hash_key.map(reference);
    let nats = raw.execution.and_then(|e| e.nats).map(|n| NatsSpec {
        url: n.url,
        credentials: n.credentials.as_deref().map(resolve),
        token: n.token.map(reference),
        nkey: n.nkey.map(reference),
        tls_ca: n.tls_ca.as_deref().map(resolve),
        job_timeout_secs: n.job_timeout_secs.unwrap_or(NatsSpec::DEFAULT_JOB_TIMEOUT_SECS),
    });
    let log = raw.log.map(|l| LogSettings { level: l.level, format: l.format }).unwrap_or_default();

    if !ck.diags.is_empty() {
        return Err(ck.diags);
    }
    Ok(Config {
        pipeline: PipelineSettings {
            merge_enabled,
            merge_parallel: p.merge.parallel.unwrap_or(4),
            sync_enabled,
            sync_parallel: p.sync.parallel.unwrap_or(8),
            delete_orphans: p.sync.delete_orphans,
            delete_threshold,
            dry_run: p.dry_run,
            continue_on_error: p.continue_on_error,
        },
        merge_store,
        state,
        source,
        sources,
        targets,
        log,
        hash_key,
        nats,
    })
}

/// Reports each inheritance cycle once, with its chain: `A -> B -> A`.
fn check_cycles(ck: &mut Checker, targets: &BTreeMap<String, RawTarget>) {
    let parents = |name: &str| -> Vec<String> {
        targets.get(name).map_or_else(Vec::new, |t| {
            t.inherits
                .iter()
                .chain(t.imports.iter())
                .filter(|n| targets.contains_key(*n))
                .cloned()
                .collect()
        })
    };
    let mut reported: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    for start in targets.keys() {
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), parents(start))];
        while let Some((_, pending)) = stack.last_mut() {
            let Some(next) = pending.pop() else {
                done.insert(stack.pop().unwrap().0);
                continue;
            };
            if let Some(pos) = stack.iter().position(|(n, _)| *n == next) {
                let chain: Vec<String> = stack[pos..].iter().map(|(n, _)| n.clone()).collect();
                if reported.insert(chain.iter().cloned().collect()) {
                    let mut text = chain.join(" -> ");
                    text.push_str(&format!(" -> {next}"));
                    let at = path(&["targets", &chain[0]]);
                    ck.error(&at, format!("inheritance cycle: {text}"));
                }
            } else if !done.contains(&next) {
                let p = parents(&next);
                stack.push((next, p));
            }
        }
    }
}

/// The connection of vault stores: the `vault:` block, then `VAULT_ADDR`, `VAULT_NAMESPACE`
/// and `VAULT_TOKEN`. A missing address is reported where a vault store needs it.
type VaultConnection = Result<(String, Option<String>, VaultAuth), String>;

fn vault_connection(
    ck: &mut Checker,
    raw: Option<&RawVault>,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> VaultConnection {
    let default = RawVault::default();
    let raw = raw.unwrap_or(&default);
    let auth = raw.auth.as_ref();
    if auth.is_some_and(|a| a.kubernetes.is_some()) {
        ck.not_supported(&path(&["vault", "auth", "kubernetes"]), "Vault `kubernetes` auth");
    }
    let reference = |r: &RawSecretRef| match r {
        RawSecretRef::Env(name) => SecretRef::Env(name.clone()),
        RawSecretRef::File(p) => SecretRef::File(base.join(p)),
    };
    let login = match (auth.and_then(|a| a.token.as_ref()), auth.and_then(|a| a.approle.as_ref())) {
        (Some(_), Some(_)) => {
            ck.error(&path(&["vault", "auth"]), "choose one of `token` and `approle`".into());
            VaultAuth::Token(SecretRef::Env("VAULT_TOKEN".into()))
        }
        (Some(token), None) => VaultAuth::Token(reference(token)),
        (None, Some(approle)) => VaultAuth::AppRole {
            mount: approle.mount.as_deref().unwrap_or("approle").trim_matches('/').to_string(),
            role_id: reference(&approle.role_id),
            secret_id: reference(&approle.secret_id),
        },
        (None, None) => VaultAuth::Token(SecretRef::Env("VAULT_TOKEN".into())),
    };
    let namespace = raw.namespace.clone().or_else(|| env("VAULT_NAMESPACE"));
    match raw.address.clone().or_else(|| env("VAULT_ADDR")) {
        Some(address) => Ok((address, namespace, login)),
        None => Err("no Vault address: set `vault.address` or VAULT_ADDR".into()),
    }
}

fn vault_store(
    ck: &mut Checker,
    at: &[Segment],
    raw: &RawVaultStore,
    connection: &VaultConnection,
) -> Option<StoreSpec> {
    let is_source = is_source_path(at);
    let paths = raw.paths.clone().unwrap_or_default();
    if !paths.is_empty() && !is_source {
        let mut at = at.to_vec();
        at.push(key("paths"));
        ck.error(
            &at,
            "`paths` filters what a source reads; it is not allowed on a store vss writes to"
                .into(),
        );
        return None;
    }
    for (i, pattern) in paths.iter().enumerate() {
        if let Err(e) = glob::Pattern::new(pattern) {
            let mut at = at.to_vec();
            at.extend([key("paths"), Segment::Index(i)]);
            ck.error(&at, format!("invalid glob: {e}"));
            return None;
        }
    }
    let trim = |s: &str| s.trim_matches('/').to_string();
    let (mount, prefix) = match (&raw.path, &raw.mount) {
        (Some(p), None) if raw.prefix.is_none() => {
            let p = trim(p);
            match p.split_once('/') {
                Some((m, rest)) => (m.to_string(), trim(rest)),
                None => (p, String::new()),
            }
        }
        (None, Some(m)) => (trim(m), raw.prefix.as_deref().map(trim).unwrap_or_default()),
        _ => {
            let message =
                "write either `path: <mount>/<folder>` or `mount` (with an optional `prefix`)";
            ck.error(at, message.into());
            return None;
        }
    };
    if mount.is_empty() {
        ck.error(at, "the KV v2 mount is empty".into());
        return None;
    }
    match connection {
        Ok((address, namespace, auth)) => Some(StoreSpec::Vault(Box::new(VaultSpec {
            address: address.clone(),
            namespace: namespace.clone(),
            auth: auth.clone(),
            mount,
            prefix,
            paths,
        }))),
        Err(message) => {
            ck.error(at, message.clone());
            None
        }
    }
}

/// An AWS Secrets Manager store: region from the store, the `aws:` block, `AWS_REGION` or
/// `AWS_DEFAULT_REGION`, else `us-east-1` (the reference's default). With an `account_id`,
/// the store is reached through a role in that account (see [`role_for`]).
fn aws_store(
    ck: &mut Checker,
    at: &[Segment],
    raw: &RawAwsStore,
    aws: Option<&RawAws>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<StoreSpec> {
    if raw.tags.is_some() {
        let mut at = at.to_vec();
        at.push(key("tags"));
        ck.not_supported(&at, "`tags` filters on an AWS store");
        return None;
    }
    if let Some(id) = &raw.account_id
        && (id.len() != 12 || !id.chars().all(|c| c.is_ascii_digit()))
    {
        let mut at = at.to_vec();
        at.push(key("account_id"));
        ck.error(
            &at,
            "an AWS account id is exactly 12 digits (quote it to keep leading zeros)".into(),
        );
        return None;
    }
    let region = aws_region(raw.region.as_deref(), aws, env);
    let role_arn = raw.account_id.as_deref().map(|id| role_for(id, raw.role_arn.as_deref(), aws));
    Some(StoreSpec::AwsSm(Box::new(AwsSmSpec {
        region,
        endpoint: aws.and_then(|a| a.endpoint.clone()),
        prefix: raw.prefix.clone().unwrap_or_default(),
        role_arn,
        external_id: aws.and_then(|a| a.external_id.clone()),
        recovery_window_days: aws.and_then(|a| a.recovery_window_days).unwrap_or(7),
        force_delete: aws.is_some_and(|a| a.force_delete),
    })))
}

/// A store's region: its own, else `aws.region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`,
/// else `us-east-1` (the reference's default).
fn aws_region(
    own: Option<&str>,
    aws: Option<&RawAws>,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    own.map(str::to_string)
        .or_else(|| aws.and_then(|a| a.region.clone()))
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into())
}

/// The role to assume in `account`: the store's or target's `role_arn`, else the
/// `aws.execution_role` template, else the Control Tower execution role (`path` + `name`,
/// default `AWSControlTowerExecution`), else `execution_context.custom_role_pattern`, else the
/// Control Tower default. `{account_id}` and `{{.AccountID}}` are replaced.
fn role_for(account: &str, explicit: Option<&str>, aws: Option<&RawAws>) -> String {
    let control_tower =
        aws.and_then(|a| a.control_tower.as_ref()).filter(|c| c.enabled != Some(false));
    let template = explicit
        .map(str::to_string)
        .or_else(|| aws.and_then(|a| a.execution_role.clone()))
        .or_else(|| {
            control_tower.map(|c| {
                let role = c.execution_role.as_ref();
                let name =
                    role.and_then(|r| r.name.as_deref()).unwrap_or("AWSControlTowerExecution");
                let path = role.and_then(|r| r.path.as_deref()).unwrap_or("/").trim_matches('/');
                let path = if path.is_empty() { "/".to_string() } else { format!("/{path}/") };
                format!("arn:aws:iam::{{account_id}}:role{path}{name}")
            })
        })
        .or_else(|| {
            aws.and_then(|a| a.execution_context.as_ref())
                .and_then(|e| e.custom_role_pattern.clone())
        })
        .unwrap_or_else(|| "arn:aws:iam::{account_id}:role/AWSControlTowerExecution".into());
    template.replace("{{.AccountID}}", account).replace("{account_id}", account)
}

/// Checks the `aws:` block and reports the keys vss does not implement yet.
fn check_aws_block(ck: &mut Checker, aws: Option<&RawAws>) {
    let Some(aws) = aws else { return };
    if aws.recovery_window_days.is_some_and(|d| !(7..=30).contains(&d)) {
        ck.error(
            &path(&["aws", "recovery_window_days"]),
            "must be between 7 and 30 (AWS's limits)".into(),
        );
    }
    let context = aws.execution_context.as_ref();
    let factory = aws.control_tower.as_ref().is_some_and(|c| c.account_factory.is_some());
    for (k, present) in [
        ("organizations", aws.organizations.is_some()),
        ("identity_center", aws.identity_center.is_some()),
        ("control_tower.account_factory", factory),
        ("execution_context.delegation", context.is_some_and(|c| c.delegation.is_some())),
    ] {
        if present {
            let parts: Vec<&str> = std::iter::once("aws").chain(k.split('.')).collect();
            ck.not_supported(&path(&parts), &format!("`aws.{k}`"));
        }
    }
}
