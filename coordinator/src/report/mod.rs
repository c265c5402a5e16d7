//! The run report: one document built from job results, rendered as human text, JSON or
//! GitHub workflow commands. Holds names, key names, hashes and counts; never a value.

mod github;
mod human;

use serde::Serialize;
use vss_protocol::diff::{SecretChange, Summary};
use vss_protocol::job::{JobResult, Outcome, Phase};
use vss_protocol::plan::Plan;

pub use github::render as github;
pub use human::render as human;

/// What a run did (or, in a dry run, would do).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// The phase whose changes are reported: `sync`, or `merge` for merge-only runs.
    pub phase: Phase,
    /// Totals over all targets.
    pub summary: Summary,
    /// One entry per target, in plan order.
    pub targets: Vec<TargetReport>,
    /// Every failure of the run, including jobs of targets not reported (e.g. a parent's merge).
    pub errors: Vec<String>,
}

/// One target's part of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetReport {
    /// The target.
    pub target: String,
    /// `ok`, `failed` or `skipped`.
    pub status: Status,
    /// Counts of its changes.
    pub summary: Summary,
    /// Created, changed and deleted secrets; unchanged ones are only counted.
    pub changes: Vec<SecretChange>,
    /// Secrets whose planned write or delete failed: not in `changes` nor in the counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
    /// Things worth knowing that did not fail the target.
    pub warnings: Vec<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
}

/// How a target fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every job succeeded.
    Ok,
    /// A job failed.
    Failed,
    /// A job did not run.
    Skipped,
}

impl Report {
    /// Aggregates results into the report, in plan order (so it does not depend on the order
    /// results arrived in). Consumes the results: a first run's change lists can be large.
    pub fn build(plan: &Plan, mut results: Vec<JobResult>, dry_run: bool) -> Self {
        let phase = if plan.jobs.iter().any(|j| j.phase() == Phase::Sync) {
            Phase::Sync
        } else {
            Phase::Merge
        };
        let errors = results
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Failed { error, .. } => Some(format!("{}: {error}", r.job_id)),
                _ => None,
            })
            .collect();
        let mut targets = Vec::new();
        let mut summary = Summary::default();
        let mut reported = std::collections::BTreeSet::new();
        for job in plan.jobs.iter().filter(|j| j.phase() == phase) {
            if !reported.insert(job.target.as_str()) {
                continue;
            }
            let own = || results.iter().filter(|r| r.target == job.target);
            let failure = own().find_map(|r| match &r.outcome {
                Outcome::Failed { error, .. } => Some(error.clone()),
                _ => None,
            });
            // Shards of one target may each say the same thing once.
            let mut warnings: Vec<String> = Vec::new();
            for w in own().flat_map(|r| r.warnings.iter()) {
                if !warnings.contains(w) {
                    warnings.push(w.clone());
                }
            }
            // A target's jobs in this phase: one, or one per shard.
            let mut mains: Vec<&mut JobResult> =
                results.iter_mut().filter(|r| r.target == job.target && r.phase == phase).collect();
            if mains.is_empty() {
                continue;
            }
            let skipped = mains.iter().find_map(|r| match &r.outcome {
                Outcome::Skipped { reason } => Some(reason.clone()),
                _ => None,
            });
            let ran = mains.iter().any(|r| !matches!(r.outcome, Outcome::Skipped { .. }));
            let (status, error) = match (failure, skipped) {
                (Some(e), _) => (Status::Failed, Some(e)),
                // Some shards ran and some did not: the target is half done, not skipped.
                (None, Some(reason)) if ran => {
                    (Status::Failed, Some(format!("some of its shards did not run ({reason})")))
                }
                (None, Some(reason)) => (Status::Skipped, Some(reason)),
                (None, None) => (Status::Ok, None),
            };
            let unchanged = mains.iter().map(|r| r.unchanged).sum();
            let mut changes: Vec<SecretChange> =
                mains.iter_mut().flat_map(|r| std::mem::take(&mut r.changes)).collect();
            changes.sort_by(|a, b| a.path.cmp(&b.path));
            let mut not_applied: Vec<String> =
                mains.iter_mut().flat_map(|r| std::mem::take(&mut r.not_applied)).collect();
            not_applied.sort();
            let target_summary = Summary::of(&changes, unchanged);
            summary.add(&target_summary);
            targets.push(TargetReport {
                target: job.target.clone(),
                status,
                summary: target_summary,
                changes,
                not_applied,
                warnings,
                error,
            });
        }
        Self { dry_run, phase, summary, targets, errors }
    }

    /// Whether any job failed or was skipped.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty() || self.targets.iter().any(|t| t.status != Status::Ok)
    }

    /// The exit code: 2 on errors; with `exit_code`, 1 when anything changes; else 0.
    pub fn exit_code(&self, exit_code: bool) -> u8 {
        if self.has_errors() {
            2
        } else if exit_code && self.summary.has_changes() {
            1
        } else {
            0
        }
    }

    /// Writes the JSON document.
    pub fn write_json(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vss_protocol::config::Config;
    use vss_protocol::diff::ChangeType;
    use vss_protocol::plan::{PlanRequest, plan_run};

    use super::*;

    fn sharded_plan() -> Plan {
        let config = "source: { file: { dir: s } }\ntargets:\n  T: { store: { file: { dir: t } }, shards: 2 }\n";
        let cfg = Config::from_yaml(config, "vss.yaml", Path::new("/x"), &|_| None).unwrap();
        plan_run(&cfg, "r", &PlanRequest::default()).unwrap()
    }

    fn change(path: &str) -> SecretChange {
        SecretChange {
            path: path.into(),
            change_type: ChangeType::Added,
            keys_added: vec!["k".into()],
            keys_removed: Vec::new(),
            keys_modified: Vec::new(),
            current_hash: None,
            desired_hash: None,
        }
    }

    #[test]
    fn shards_of_a_target_are_one_entry() {
        let plan = sharded_plan();
        let mut results: Vec<JobResult> =
            plan.jobs.iter().map(|j| JobResult::new(j, Outcome::Succeeded)).collect();
        results[0].changes = vec![change("b")];
        results[1].changes = vec![change("a")];
        results[0].unchanged = 3;
        for r in &mut results {
            r.warnings.push("the same warning".into());
        }
        let report = Report::build(&plan, results, false);
        assert_eq!(report.targets.len(), 1);
        let t = &report.targets[0];
        assert_eq!(t.status, Status::Ok);
        let paths: Vec<&str> = t.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["a", "b"]);
        assert_eq!((t.summary.added, t.summary.unchanged), (2, 3));
        assert_eq!(t.warnings, ["the same warning"]);
    }

    #[test]
    fn a_target_with_some_shards_skipped_is_failed_not_skipped() {
        let plan = sharded_plan();
        let results = vec![
            JobResult::new(&plan.jobs[0], Outcome::Succeeded),
            JobResult::new(&plan.jobs[1], Outcome::Skipped { reason: "not started".into() }),
        ];
        let report = Report::build(&plan, results, false);
        assert_eq!(report.targets[0].status, Status::Failed);
        assert!(report.targets[0].error.as_deref().unwrap().contains("some of its shards"));
        assert_eq!(report.exit_code(false), 2);
    }
}
