//! From the raw config to [`Config`]: names resolved, every rule checked, all diagnostics at
//! once. `build` reads top-down: stores, pipeline settings, targets, execution.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::check::{Checker, hint, join, path};
use super::raw::{self, RawConfig, RawExecution, RawPipeline, RawState, RawTarget};
use super::secret_ref::{RawSecretRef, SecretRef};
use super::stores::aws::{self, RawAws, RawAwsStore};
use super::stores::vault::{Connection, RawVault};
use super::stores::{Role, StoreCheck};
use super::yaml::{Document, KeyPath, Segment};
use super::{
    Config, DeleteThreshold, Diagnostic, Layer, LogSettings, NatsSpec, PipelineSettings,
    ServeSettings, StateSpec, StoreSpec, Target, Timeouts,
};

/// The most sync jobs one target can be split into.
const MAX_SHARDS: u32 = 256;

/// What every store check may need, resolved once.
pub(crate) struct Context<'a> {
    /// The config file's folder.
    pub base: &'a Path,
    /// The environment (injected).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The `vault:` connection.
    pub vault: Connection,
    /// The `aws:` block.
    pub aws: Option<&'a RawAws>,
}

/// Builds the config from a parsed document; all diagnostics at once.
pub(super) fn build(
    mut doc: Document,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Diagnostic>> {
    raw::normalize_shorthands(&mut doc.root);
    let (mut diags, removed) = raw::credential_references(&mut doc, file);
    let (raw, more) = raw::deserialize(&mut doc, file, removed);
    diags.extend(more);
    let Some(raw) = raw else { return Err(diags) };
    let mut ck = Checker::new(file, &doc, diags);

    if raw.dynamic_targets.is_some() {
        ck.not_supported(&path(&["dynamic_targets"]), "the `dynamic_targets` section");
    }
    let vault = RawVault::connection(raw.vault.as_ref(), &mut ck, base, env);
    if let Some(aws) = &raw.aws {
        aws.check(&mut ck);
    }
    let ctx = Context { base, env, vault, aws: raw.aws.as_ref() };

    let merge_store =
        raw.merge_store.as_ref().and_then(|s| s.check(&mut ck, path(&["merge_store"]), &ctx));
    let source = raw.source.as_ref().and_then(|s| s.check(&mut ck, path(&["source"]), &ctx));
    let mut sources = BTreeMap::new();
    for (name, s) in &raw.sources {
        if name.trim().is_empty() {
            ck.error(&path(&["sources"]), "a source needs a name".into());
            continue;
        }
        if let Some(spec) = s.check(&mut ck, path(&["sources", name]), &ctx) {
            sources.insert(name.clone(), spec);
        }
    }
    let pipeline = pipeline_settings(&mut ck, &raw);
    let targets = targets(&mut ck, &raw, &pipeline, &ctx);
    check_cycles(&mut ck, &raw.targets);
    let serve = serve_settings(&mut ck, &raw, base);
    let state_is_default = raw.state.is_none();
    let (state, hash_key, nats) = execution(raw.state, raw.hash_key, raw.execution, base);
    if let Some(level) = raw.log.as_ref().and_then(|l| l.level.as_deref())
        && let Err(message) = check_log_filter(level)
    {
        ck.error(&path(&["log", "level"]), message);
    }
    let log = raw.log.map(|l| LogSettings { level: l.level, format: l.format }).unwrap_or_default();

    if !ck.diags.is_empty() {
        return Err(ck.diags);
    }
    Ok(Config {
        pipeline,
        merge_store,
        state,
        state_is_default,
        source,
        sources,
        targets,
        log,
        hash_key,
        nats,
        serve,
    })
}

/// `pipeline:` — which phases run, how many jobs at once, the mass-delete guard.
fn pipeline_settings(ck: &mut Checker, raw: &RawConfig) -> PipelineSettings {
    let p: &RawPipeline = &raw.pipeline;
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
    let mut timeouts = Timeouts::default();
    if let Some(t) = &p.timeouts {
        for (key, value, slot) in [
            ("connect_secs", t.connect_secs, &mut timeouts.connect_secs),
            ("request_secs", t.request_secs, &mut timeouts.request_secs),
            ("outage_secs", t.outage_secs, &mut timeouts.outage_secs),
        ] {
            match value {
                Some(0) => {
                    ck.error(&path(&["pipeline", "timeouts", key]), "must be at least 1".into())
                }
                Some(v) => *slot = v,
                None => {}
            }
        }
        if timeouts.outage_secs < timeouts.request_secs {
            let message = "must be at least `request_secs`: one slow request would use it all";
            ck.error(&path(&["pipeline", "timeouts", "outage_secs"]), message.into());
        }
    }
    PipelineSettings {
        merge_enabled,
        merge_parallel: p.merge.parallel.unwrap_or(4),
        sync_enabled,
        sync_parallel: p.sync.parallel.unwrap_or(8),
        delete_orphans: p.sync.delete_orphans,
        delete_threshold,
        dry_run: p.dry_run,
        continue_on_error: p.continue_on_error,
        timeouts,
    }
}

/// `targets:` — each target's layers and store.
fn targets(
    ck: &mut Checker,
    raw: &RawConfig,
    pipeline: &PipelineSettings,
    ctx: &Context,
) -> BTreeMap<String, Target> {
    if raw.targets.is_empty() {
        ck.error(&path(&["targets"]), "at least one target is required".into());
    }
    let mut targets = BTreeMap::new();
    for (name, t) in &raw.targets {
        let at = path(&["targets", name]);
        if t.shards.is_some_and(|n| n == 0 || n > MAX_SHARDS) {
            ck.error(&join(&at, &["shards"]), format!("must be between 1 and {MAX_SHARDS}"));
        }
        if !is_target_name(name) {
            let message = "target names may use only letters, digits, `_`, `-` and `.`, and start with a letter or digit";
            ck.error(&at, message.into());
        }
        let layers = layers(ck, raw, &at, t);
        let Some(store) = target_store(ck, &at, name, t, pipeline.sync_enabled, ctx) else {
            continue;
        };
        targets.insert(
            name.clone(),
            Target {
                name: name.clone(),
                layers,
                store,
                delete: t.delete.unwrap_or(pipeline.delete_orphans),
                list_merge: t.list_merge.unwrap_or_default(),
                shards: t.shards.unwrap_or(1),
            },
        );
    }
    targets
}

/// A target's merge inputs, in order: its parent, then its imports (sources or targets).
fn layers(ck: &mut Checker, raw: &RawConfig, at: &[Segment], t: &RawTarget) -> Vec<Layer> {
    let target_names = || raw.targets.keys().map(String::as_str);
    let mut layers = Vec::new();
    if let Some(parent) = &t.inherits {
        let at = join(at, &["inherits"]);
        if raw.targets.contains_key(parent) {
            layers.push(Layer::Target(parent.clone()));
        } else if ck.is_from_env(&at) {
            ck.error(&at, "unknown parent target (value from the environment, not shown)".into());
        } else {
            let hint = hint(parent, target_names());
            ck.error(&at, format!("unknown parent target `{parent}`{hint}"));
        }
    }
    for (i, import) in t.imports.iter().enumerate() {
        let mut at = join(at, &["imports"]);
        at.push(Segment::Index(i));
        match (raw.sources.contains_key(import), raw.targets.contains_key(import)) {
            (true, true) => ck.error(
                &at,
                format!("`{import}` names both a source and a target; rename one of them"),
            ),
            (true, false) => layers.push(Layer::Source(import.clone())),
            (false, true) => layers.push(Layer::Target(import.clone())),
            (false, false) if ck.is_from_env(&at) => {
                let message = "unknown source or target (value from the environment, not shown)";
                ck.error(&at, message.into());
            }
            (false, false) => {
                let known = raw.sources.keys().map(String::as_str).chain(target_names());
                let hint = hint(import, known);
                ck.error(&at, format!("unknown source or target `{import}`{hint}"));
            }
        }
    }
    layers
}

/// Where a target syncs: its `store`, or the Secrets Manager of its `account_id`.
fn target_store(
    ck: &mut Checker,
    at: &KeyPath,
    name: &str,
    t: &RawTarget,
    sync_enabled: bool,
    ctx: &Context,
) -> Option<StoreSpec> {
    let aws_keys_without_account = t.account_id.is_none()
        && (t.region.is_some() || t.role_arn.is_some() || t.secret_prefix.is_some());
    if aws_keys_without_account {
        ck.error(at, "`region`, `role_arn` and `secret_prefix` need an `account_id`".into());
    }
    match (&t.store, &t.account_id) {
        (Some(_), Some(account)) => {
            let at = join(at, &["account_id"]);
            if !aws::is_account_id(account) {
                ck.error(&at, aws::BAD_ACCOUNT_ID.into());
            }
            let message = "`account_id` names an AWS target; this target has a `store`";
            ck.error(&at, message.into());
            None
        }
        (Some(s), None) => s.check(ck, join(at, &["store"]), ctx),
        (None, Some(account)) => {
            let store = RawAwsStore {
                prefix: t.secret_prefix.clone(),
                region: t.region.clone(),
                account_id: Some(account.clone()),
                role_arn: t.role_arn.clone(),
                tags: None,
            };
            store.check(&mut StoreCheck::new(ck, at.clone(), Role::Target, ctx))
        }
        (None, None) if sync_enabled => {
            ck.error(at, "the target has no `store` to sync to".into());
            None
        }
        // A merge-only config needs no target store; nothing will ever sync there.
        (None, None) => Some(StoreSpec::File { dir: ctx.base.join(".vss/unsynced").join(name) }),
    }
}

/// `state:`, `hash_key:` and `execution:` — where the ledger and the hash key live, and
/// where jobs run.
fn execution(
    state: Option<RawState>,
    hash_key: Option<RawSecretRef>,
    execution: Option<RawExecution>,
    base: &Path,
) -> (StateSpec, Option<SecretRef>, Option<NatsSpec>) {
    let hash_key = hash_key.map(|r| r.resolve(base));
    let nats = execution.and_then(|e| e.nats).map(|n| NatsSpec {
        url: n.url,
        credentials: n.credentials.map(|p| base.join(p)),
        token: n.token.map(|r| r.resolve(base)),
        nkey: n.nkey.map(|r| r.resolve(base)),
        tls_ca: n.tls_ca.map(|p| base.join(p)),
        job_timeout_secs: n.job_timeout_secs.unwrap_or(NatsSpec::DEFAULT_JOB_TIMEOUT_SECS),
    });
    // A distributed run keeps its ledger where every worker reaches it.
    let state = match state {
        Some(RawState::File { path }) => StateSpec::File { path: base.join(path) },
        Some(RawState::Nats { bucket }) => {
            StateSpec::Nats { bucket: bucket.unwrap_or_else(|| StateSpec::DEFAULT_BUCKET.into()) }
        }
        None if nats.is_some() => StateSpec::Nats { bucket: StateSpec::DEFAULT_BUCKET.into() },
        None => StateSpec::File { path: base.join(".vss/state") },
    };
    (state, hash_key, nats)
}

/// `serve:` — API tokens, webhook secrets, GitHub push triggers (naming existing targets).
fn serve_settings(ck: &mut Checker, raw: &RawConfig, base: &Path) -> ServeSettings {
    let Some(serve) = &raw.serve else { return ServeSettings::default() };
    for (git_ref, targets) in &serve.github_push {
        for (i, name) in targets.iter().enumerate() {
            if !raw.targets.contains_key(name) {
                let mut at = path(&["serve", "github_push", git_ref]);
                at.push(Segment::Index(i));
                let hint = hint(name, raw.targets.keys().map(String::as_str));
                ck.error(&at, format!("unknown target `{name}`{hint}"));
            }
        }
    }
    if serve.max_body_bytes == Some(0) {
        ck.error(&path(&["serve", "max_body_bytes"]), "must be at least 1".into());
    }
    ServeSettings {
        tokens: serve.tokens.iter().map(|r| r.resolve(base)).collect(),
        webhook_secrets: serve.webhook_secrets.iter().map(|r| r.resolve(base)).collect(),
        github_push: serve.github_push.clone(),
        max_body_bytes: serve.max_body_bytes.unwrap_or(ServeSettings::default().max_body_bytes),
    }
}

/// A target name: letters, digits, `_`, `-` and `.`, starting with a letter or digit (it
/// names ledger files, merge-store folders and jobs).
fn is_target_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Checks a `RUST_LOG`-style filter: `level` or `target=level` directives, comma-separated.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level_ok = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    let target_ok = |t: &str| {
        !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
    };
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match directive.split_once('=') {
            Some((target, level)) => target_ok(target) && level_ok(level),
            None => level_ok(directive) || target_ok(directive),
        };
        if !ok {
            return Err(format!(
                "`{directive}` is not a log filter directive: write a level ({}) or `target=level`",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
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
                    let text = format!("{} -> {next}", chain.join(" -> "));
                    ck.error(&path(&["targets", &chain[0]]), format!("inheritance cycle: {text}"));
                }
            } else if !done.contains(&next) {
                let p = parents(&next);
                stack.push((next, p));
            }
        }
    }
}
