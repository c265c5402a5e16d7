//! A run as a DAG of jobs: `merge:<target>` after its parents' merges, `sync:<target>` after
//! its own merge.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, Layer};
use crate::job::{
    DesiredState, Job, JobId, JobSpec, LayerSpec, MergeSpec, Phase, RunOptions, Shard, SyncSpec,
};

/// What the user asked of a run.
#[derive(Clone, Debug, Default)]
pub struct PlanRequest {
    /// `--merge-only`.
    pub merge_only: bool,
    /// `--sync-only`.
    pub sync_only: bool,
    /// `--targets`: only these (their parents' merges still run).
    pub targets: Option<Vec<String>>,
    /// `--dry-run` (or `pipeline.dry_run`).
    pub dry_run: bool,
    /// `--allow-mass-delete`.
    pub allow_mass_delete: bool,
    /// `Some`: a targeted run of the secrets that changed, and only of the targets whose
    /// desired state reads them.
    pub changes: Option<Changes>,
}

/// Secrets that changed, by the source they changed in (names relative to the source's
/// folder): a targeted run reads and writes only these names, in the targets that read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// Named source → changed names.
    #[serde(default)]
    pub sources: BTreeMap<String, BTreeSet<String>>,
    /// Changed names of the top-level `source` (sync-only configs).
    #[serde(default)]
    pub source: BTreeSet<String>,
}

impl Changes {
    /// How many names, over all sources.
    pub fn len(&self) -> usize {
        self.source.len() + self.sources.values().map(BTreeSet::len).sum::<usize>()
    }

    /// Whether no name changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `other`'s names to these.
    pub fn extend(&mut self, other: &Changes) {
        self.source.extend(other.source.iter().cloned());
        for (source, names) in &other.sources {
            self.sources.entry(source.clone()).or_default().extend(names.iter().cloned());
        }
    }

    /// The names each target's desired state takes from these changes (sources through
    /// their `paths`, then imports and inheritance), for the targets it touches at all.
    pub fn per_target<'c>(
        &self,
        cfg: &'c Config,
        merging: bool,
    ) -> BTreeMap<&'c str, BTreeSet<String>> {
        let mut out: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        if !merging {
            let Some(source) = &cfg.source else { return out };
            let names: BTreeSet<String> =
                self.source.iter().filter(|n| source.covers(n)).cloned().collect();
            if !names.is_empty() {
                out.extend(cfg.targets.keys().map(|t| (t.as_str(), names.clone())));
            }
            return out;
        }
        for name in cfg.topological_order() {
            let mut names = BTreeSet::new();
            for layer in &cfg.targets[name].layers {
                match layer {
                    Layer::Source(s) => names.extend(
                        self.sources
                            .get(s)
                            .into_iter()
                            .flatten()
                            .filter(|n| cfg.sources[s].covers(n))
                            .cloned(),
                    ),
                    Layer::Target(t) => {
                        names.extend(out.get(t.as_str()).into_iter().flatten().cloned())
                    }
                }
            }
            if !names.is_empty() {
                out.insert(name, names);
            }
        }
        out
    }
}

/// A run's jobs in an order where every job comes after its dependencies.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The run's id.
    pub run_id: String,
    /// The jobs.
    pub jobs: Vec<Job>,
}

impl Plan {
    /// The plan as MessagePack (kept so a restarted coordinator can resume the run).
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("plans always serialize")
    }

    /// A plan from MessagePack.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// The request cannot be planned with this config.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--targets` names a target the config lacks.
    #[error("unknown target `{name}` in --targets{hint}")]
    UnknownTarget {
        /// The name given.
        name: String,
        /// A suggestion, if one is close.
        hint: String,
    },
    /// The phases asked for cannot run with this config.
    #[error("{0}")]
    Phase(String),
}

/// Which phases the request runs, and where its syncs read the desired state; refuses
/// unknown targets and phases the config cannot run.
fn phases(cfg: &Config, req: &PlanRequest) -> Result<(bool, bool, DesiredState), PlanError> {
    if let Some(names) = &req.targets {
        for name in names {
            if !cfg.targets.contains_key(name) {
                let hint = crate::config::suggest(name, cfg.targets.keys().map(String::as_str))
                    .map(|b| format!(" (did you mean `{b}`?)"))
                    .unwrap_or_default();
                return Err(PlanError::UnknownTarget { name: name.clone(), hint });
            }
        }
    }
    let run_merge = !req.sync_only && (req.merge_only || cfg.pipeline.merge_enabled);
    let run_sync = !req.merge_only && (req.sync_only || cfg.pipeline.sync_enabled);
    if !run_merge && !run_sync {
        return Err(PlanError::Phase("both phases are disabled: nothing to run".into()));
    }
    if run_merge && cfg.merge_store.is_none() {
        return Err(PlanError::Phase("the merge phase needs a `merge_store`".into()));
    }
    let desired = if run_merge {
        DesiredState::Merged {
            merge_store: cfg.merge_store.clone().expect("checked above"),
            merged_this_run: true,
        }
    } else if let Some(store) = &cfg.source {
        DesiredState::Source { store: store.clone() }
    } else if let Some(store) = &cfg.merge_store {
        DesiredState::Merged { merge_store: store.clone(), merged_this_run: false }
    } else {
        return Err(PlanError::Phase(
            "a sync-only run needs a top-level `source` or an existing `merge_store`".into(),
        ));
    };
    Ok((run_merge, run_sync, desired))
}

/// Turns a config and a request into a plan.
pub fn plan_run(cfg: &Config, run_id: &str, req: &PlanRequest) -> Result<Plan, PlanError> {
    let (run_merge, run_sync, desired) = phases(cfg, req)?;

    // A targeted run touches only the targets whose desired state reads a changed name.
    let focus = req
        .changes
        .as_ref()
        .map(|c| c.per_target(cfg, matches!(desired, DesiredState::Merged { .. })));
    let selected: BTreeSet<&str> = match &req.targets {
        Some(names) => names.iter().map(String::as_str).collect(),
        None => cfg.targets.keys().map(String::as_str).collect(),
    };
    let selected: BTreeSet<&str> = match &focus {
        Some(focus) => selected.into_iter().filter(|t| focus.contains_key(t)).collect(),
        None => selected,
    };
    let to_merge = to_merge(cfg, &selected, focus.as_ref());
    let names_of = |target: &str| focus.as_ref().map(|f| f[target].clone());

    let options = RunOptions {
        dry_run: req.dry_run,
        allow_mass_delete: req.allow_mass_delete,
        state: cfg.state.clone(),
        hash_key: cfg.hash_key.clone(),
        timeouts: cfg.pipeline.timeouts,
    };
    let job = |id: JobId, target: &str, spec: JobSpec, depends_on: Vec<JobId>| Job {
        run_id: run_id.to_string(),
        id,
        target: target.to_string(),
        spec,
        options: options.clone(),
        depends_on,
        deadline: None,
        names: names_of(target),
    };
    let mut jobs = Vec::new();
    let order = cfg.topological_order();
    if run_merge {
        for name in order.iter().filter(|n| to_merge.contains(*n)) {
            let target = &cfg.targets[*name];
            let layers = target
                .layers
                .iter()
                .map(|l| match l {
                    Layer::Source(s) => {
                        LayerSpec::Source { name: s.clone(), store: cfg.sources[s].clone() }
                    }
                    Layer::Target(t) => LayerSpec::Target { name: t.clone() },
                })
                .collect();
            let spec = JobSpec::Merge(MergeSpec {
                layers,
                merge_store: cfg.merge_store.clone().expect("checked above"),
                list_merge: target.list_merge,
            });
            let parents = target.parents().filter(|p| to_merge.contains(p));
            jobs.push(job(
                job_id(Phase::Merge, name),
                name,
                spec,
                parents.map(|p| job_id(Phase::Merge, p)).collect(),
            ));
        }
    }
    if run_sync {
        for name in order.iter().filter(|n| selected.contains(*n)) {
            let target = &cfg.targets[*name];
            let shards: Vec<Option<Shard>> = match target.shards {
                0 | 1 => vec![None],
                count => (0..count).map(|index| Some(Shard { index, count })).collect(),
            };
            for shard in shards {
                let id = match shard {
                    None => job_id(Phase::Sync, name),
                    Some(s) => format!("{}#{}/{}", job_id(Phase::Sync, name), s.index, s.count),
                };
                let spec = JobSpec::Sync(SyncSpec {
                    desired: desired.clone(),
                    store: target.store.clone(),
                    delete: target.delete.then_some(cfg.pipeline.delete_threshold),
                    shard,
                });
                let after = if run_merge { vec![job_id(Phase::Merge, name)] } else { Vec::new() };
                let mut job = job(id, name, spec, after);
                // A targeted shard job takes the changed names that hash to it, if any.
                if let (Some(names), Some(shard)) = (&mut job.names, shard) {
                    names.retain(|n| shard.owns(n));
                    if names.is_empty() {
                        continue;
                    }
                }
                jobs.push(job);
            }
        }
    }
    Ok(Plan { run_id: run_id.to_string(), jobs })
}

/// The targets to merge: the selected ones and their ancestors (in a targeted run, those
/// whose merged result the changes reach).
fn to_merge<'c>(
    cfg: &'c Config,
    selected: &BTreeSet<&'c str>,
    focus: Option<&BTreeMap<&'c str, BTreeSet<String>>>,
) -> BTreeSet<&'c str> {
    let mut to_merge = BTreeSet::new();
    let mut pending: Vec<&str> = selected.iter().copied().collect();
    while let Some(name) = pending.pop() {
        if focus.is_some_and(|f| !f.contains_key(name)) {
            continue;
        }
        if to_merge.insert(name) {
            pending.extend(cfg.targets[name].parents());
        }
    }
    to_merge
}

/// The id of a target's job in a phase.
pub fn job_id(phase: Phase, target: &str) -> JobId {
    match phase {
        Phase::Merge => format!("merge:{target}"),
        Phase::Sync => format!("sync:{target}"),
    }
}

impl Plan {
    /// The DAG in Graphviz dot.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph vss {\n  rankdir=LR;\n  node [shape=box];\n");
        for job in &self.jobs {
            let shape = if job.phase() == Phase::Merge { "box" } else { "ellipse" };
            out.push_str(&format!("  \"{}\" [shape={shape}];\n", job.id));
        }
        for job in &self.jobs {
            for dep in &job.depends_on {
                out.push_str(&format!("  \"{dep}\" -> \"{}\";\n", job.id));
            }
        }
        out.push_str("}\n");
        out
    }

    /// The DAG as a mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        let node = |id: &str| id.replace([':', '.', '-'], "_");
        let mut out = String::from("flowchart LR\n");
        for job in &self.jobs {
            let (open, close) = if job.phase() == Phase::Merge { ("[", "]") } else { ("([", "])") };
            out.push_str(&format!("  {}{open}\"{}\"{close}\n", node(&job.id), job.id));
        }
        for job in &self.jobs {
            for dep in &job.depends_on {
                out.push_str(&format!("  {} --> {}\n", node(dep), node(&job.id)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config() -> Config {
        Config::from_yaml(
            "merge_store: { file: { dir: m } }\nsources: { s: { file: { dir: s } } }\ntargets:\n  Base: { imports: [s], store: { file: { dir: a } } }\n  Staging: { inherits: Base, store: { file: { dir: b } } }\n  Production: { imports: [Staging, s], store: { file: { dir: c } } }\n  Other: { imports: [s], store: { file: { dir: d } } }\n",
            "f.yaml",
            Path::new("/x"),
            &|_| None,
        )
        .unwrap()
    }

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.jobs.iter().map(|j| j.id.as_str()).collect()
    }

    #[test]
    fn full_run_orders_merges_by_inheritance_then_syncs() {
        let plan = plan_run(&config(), "r1", &PlanRequest::default()).unwrap();
        assert_eq!(
            ids(&plan),
            vec![
                "merge:Base",
                "merge:Other",
                "merge:Staging",
                "merge:Production",
                "sync:Base",
                "sync:Other",
                "sync:Staging",
                "sync:Production",
            ]
        );
        let prod = plan.jobs.iter().find(|j| j.id == "merge:Production").unwrap();
        assert_eq!(prod.depends_on, vec!["merge:Staging"]);
        let sync = plan.jobs.iter().find(|j| j.id == "sync:Production").unwrap();
        assert_eq!(sync.depends_on, vec!["merge:Production"]);
    }

    #[test]
    fn selected_targets_bring_their_ancestors_merges() {
        let req = PlanRequest { targets: Some(vec!["Production".into()]), ..Default::default() };
        let plan = plan_run(&config(), "r1", &req).unwrap();
        assert_eq!(
            ids(&plan),
            vec!["merge:Base", "merge:Staging", "merge:Production", "sync:Production"]
        );
        let req = PlanRequest { targets: Some(vec!["Prod".into()]), ..Default::default() };
        let err = plan_run(&config(), "r1", &req).unwrap_err().to_string();
        assert!(err.contains("did you mean `Production`"), "{err}");
    }

    #[test]
    fn phase_flags_select_jobs() {
        let cfg = config();
        let merge = plan_run(&cfg, "r", &PlanRequest { merge_only: true, ..Default::default() });
        assert!(merge.unwrap().jobs.iter().all(|j| j.phase() == Phase::Merge));
        let sync =
            plan_run(&cfg, "r", &PlanRequest { sync_only: true, ..Default::default() }).unwrap();
        assert!(sync.jobs.iter().all(|j| j.phase() == Phase::Sync && j.depends_on.is_empty()));
    }

    #[test]
    fn a_targeted_run_reaches_the_targets_that_read_the_names_only() {
        let text = "merge_store: { file: { dir: m } }\nsources:\n  s: { file: { dir: s } }\n  v: { vault: { path: secret/app, paths: [\"db/*\"] } }\nvault: { address: \"http://v:8200\" }\ntargets:\n  Base: { imports: [s], store: { file: { dir: a } } }\n  Staging: { inherits: Base, store: { file: { dir: b } }, shards: 2 }\n  Other: { imports: [v], store: { file: { dir: d } } }\n";
        let cfg = Config::from_yaml(text, "f.yaml", Path::new("/x"), &|_| None).unwrap();
        let changed = |source: &str, names: &[&str]| PlanRequest {
            changes: Some(Changes {
                sources: BTreeMap::from([(
                    source.to_string(),
                    names.iter().map(|n| n.to_string()).collect(),
                )]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let plan = plan_run(&cfg, "r", &changed("s", &["x"])).unwrap();
        let shard = if (Shard { index: 0, count: 2 }).owns("x") { "0" } else { "1" };
        assert_eq!(
            ids(&plan),
            vec![
                "merge:Base".to_string(),
                "merge:Staging".to_string(),
                "sync:Base".to_string(),
                format!("sync:Staging#{shard}/2"),
            ],
            "a shard job only where the name hashes"
        );
        assert!(plan.jobs.iter().all(|j| j.names == Some(BTreeSet::from(["x".to_string()]))));
        let staging = plan.jobs.iter().find(|j| j.id == "merge:Staging").unwrap();
        assert_eq!(staging.depends_on, vec!["merge:Base"]);

        // `paths` decide: only `db/*` of the vault source reaches `Other`.
        let plan = plan_run(&cfg, "r", &changed("v", &["db/main", "web"])).unwrap();
        assert_eq!(ids(&plan), vec!["merge:Other", "sync:Other"]);
        assert_eq!(plan.jobs[0].names, Some(BTreeSet::from(["db/main".to_string()])));
        assert!(plan_run(&cfg, "r", &changed("v", &["web"])).unwrap().jobs.is_empty());

        // A child alone: its parent's merged result is untouched, so not merged again.
        let only = PlanRequest { targets: Some(vec!["Staging".into()]), ..changed("s", &["x"]) };
        let plan = plan_run(&cfg, "r", &only).unwrap();
        assert_eq!(
            ids(&plan)[..2],
            ["merge:Base", "merge:Staging"],
            "the change is the parent's too"
        );
        let full = plan_run(&cfg, "r", &PlanRequest::default()).unwrap();
        assert!(full.jobs.iter().all(|j| j.names.is_none()), "a full run names nothing");
    }

    #[test]
    fn jobs_round_trip_through_messagepack() {
        let plan = plan_run(&config(), "r1", &PlanRequest::default()).unwrap();
        for job in &plan.jobs {
            assert_eq!(&Job::decode(&job.encode()).unwrap(), job);
        }
    }

    #[test]
    fn graphs_name_every_edge() {
        let plan = plan_run(&config(), "r1", &PlanRequest::default()).unwrap();
        let dot = plan.to_dot();
        assert!(dot.contains("\"merge:Staging\" -> \"merge:Production\""), "{dot}");
        let mermaid = plan.to_mermaid();
        assert!(mermaid.contains("merge_Staging --> merge_Production"), "{mermaid}");
    }

    #[test]
    fn sharded_targets_get_one_sync_job_per_shard_after_their_merge() {
        let cfg = Config::from_yaml(
            "merge_store: { file: { dir: m } }\nsources: { s: { file: { dir: s } } }\ntargets:\n  T: { imports: [s], store: { file: { dir: t } }, shards: 3 }\n",
            "f.yaml",
            Path::new("/x"),
            &|_| None,
        )
        .unwrap();
        let plan = plan_run(&cfg, "r1", &PlanRequest::default()).unwrap();
        assert_eq!(ids(&plan), vec!["merge:T", "sync:T#0/3", "sync:T#1/3", "sync:T#2/3"]);
        for (index, job) in plan.jobs[1..].iter().enumerate() {
            assert_eq!(job.depends_on, vec!["merge:T".to_string()]);
            let JobSpec::Sync(spec) = &job.spec else { panic!("a sync job") };
            assert_eq!(spec.shard, Some(Shard { index: index as u32, count: 3 }));
        }
        // Every name belongs to exactly one shard, and the shards share the work.
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        let mut sizes = [0usize; 3];
        for i in 0..3000 {
            let name = format!("team{}/app{i}", i % 7);
            let owners: Vec<usize> = (0..3).filter(|&s| shards[s].owns(&name)).collect();
            assert_eq!(owners.len(), 1, "{name}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| (800..1200).contains(&n)), "{sizes:?}");
    }
}
