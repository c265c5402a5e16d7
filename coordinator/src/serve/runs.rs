//! The runs `vss serve` knows: a bounded, in-memory book of queued, running and finished
//! runs, their idempotency keys, and the queue the executor takes from. Triggers that arrive
//! while a run waits are folded into it (coalescing).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use vss_protocol::plan::Changes;

/// Runs kept for `GET /v1/runs` (oldest finished ones are forgotten first).
const KEPT_RUNS: usize = 500;
/// Idempotency keys remembered.
const KEPT_KEYS: usize = 10_000;
/// The most changed names a targeted run gathers; past this, it becomes a full run of its
/// targets (bounded memory, and a listing is cheaper than that many single reads).
pub const MAX_PENDING_NAMES: usize = 1_000;

/// What a trigger asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Only these targets (their parents' merges run too); absent: all.
    #[serde(default)]
    pub targets: Option<BTreeSet<String>>,
    /// Plan only.
    #[serde(default)]
    pub dry_run: bool,
    /// Only the merge phase.
    #[serde(default)]
    pub merge_only: bool,
    /// Only the sync phase.
    #[serde(default)]
    pub sync_only: bool,
    /// A targeted run: only these changed secrets (by source), in the targets that read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    /// The recorded events this run carries (`--nats`: sequences in `VSS_EVENTS`), forgotten
    /// once every target holds them.
    #[serde(skip)]
    pub events: BTreeSet<u64>,
}

impl RunRequest {
    /// Whether this is a targeted run (event-driven work, which goes ahead of full runs).
    pub fn is_targeted(&self) -> bool {
        self.changes.is_some()
    }

    /// Whether `other` asks for the same kind of run (so this one, waiting, can absorb it):
    /// full runs absorb full runs, targeted runs targeted ones.
    fn same_kind(&self, other: &RunRequest) -> bool {
        (self.dry_run, self.merge_only, self.sync_only, self.is_targeted())
            == (other.dry_run, other.merge_only, other.sync_only, other.is_targeted())
    }

    /// Whether this waiting request is a full run of every target `other` (targeted) asks
    /// for: then it covers `other` already.
    fn covers(&self, other: &RunRequest) -> bool {
        let flags = |r: &RunRequest| (r.dry_run, r.merge_only, r.sync_only);
        let targets = match (&self.targets, &other.targets) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => theirs.is_subset(mine),
            (Some(_), None) => false,
        };
        !self.is_targeted() && other.is_targeted() && flags(self) == flags(other) && targets
    }

    /// Folds `other` (of the [same kind](Self::same_kind), or [covered](Self::covers)) into
    /// this waiting request; past
    /// [`MAX_PENDING_NAMES`] names the result is a full run of their targets.
    fn absorb(&mut self, other: &RunRequest) {
        self.events.extend(other.events.iter().copied());
        if self.covers(other) {
            return;
        }
        if let (Some(mine), Some(theirs)) = (&mut self.changes, &other.changes) {
            mine.extend(theirs);
            if mine.len() > MAX_PENDING_NAMES {
                tracing::info!(
                    names = mine.len(),
                    "too many changed names pending: a full run of their targets instead"
                );
                self.changes = None;
            }
        }
        self.targets = match (self.targets.take(), &other.targets) {
            (Some(mut mine), Some(theirs)) => {
                mine.extend(theirs.iter().cloned());
                Some(mine)
            }
            _ => None,
        };
    }
}

/// Which queued runs an executor takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Targeted runs (events).
    Events,
    /// Full runs (reconciles, API and webhook triggers).
    Full,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for the run before it.
    Queued,
    /// Running.
    Running,
    /// Finished; its report says how each target fared.
    Finished,
    /// Could not run at all (see `error`).
    Failed,
}

/// One run, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RunEntry {
    /// The run id (also the run's id in the report and traces).
    pub id: String,
    /// `api`, `webhook`, `github:push`, `reconcile`.
    pub trigger: String,
    /// What was asked (after coalescing).
    pub request: RunRequest,
    /// Where it is.
    pub status: RunStatus,
    /// The very report `vss pipeline --output json` prints, once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
    /// Why it could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
struct Book {
    runs: HashMap<String, RunEntry>,
    order: VecDeque<String>,
    queue: VecDeque<String>,
    keys: HashMap<String, String>,
    key_order: VecDeque<String>,
}

/// The book of runs.
pub struct RunBook {
    book: Mutex<Book>,
    /// Counts submissions, waking the executors' lanes (none misses one).
    queued: tokio::sync::watch::Sender<u64>,
}

impl Default for RunBook {
    fn default() -> Self {
        Self { book: Mutex::default(), queued: tokio::sync::watch::Sender::new(0) }
    }
}

/// What [`RunBook::submit`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    /// A new run was queued.
    New(String),
    /// Folded into a run already waiting.
    Coalesced(String),
    /// The idempotency key was seen: the first run's id.
    Replayed(String),
}

impl Submitted {
    /// The run id.
    pub fn id(&self) -> &str {
        match self {
            Submitted::New(id) | Submitted::Coalesced(id) | Submitted::Replayed(id) => id,
        }
    }
}

impl RunBook {
    /// Queues a run (or folds it into one waiting, or answers a replayed key).
    pub fn submit(&self, trigger: &str, mut request: RunRequest, key: Option<String>) -> Submitted {
        if request.changes.as_ref().is_some_and(|c| c.len() > MAX_PENDING_NAMES) {
            request.changes = None;
        }
        let mut book = self.book.lock().expect("run book lock");
        if let Some(id) = key.as_ref().and_then(|k| book.keys.get(k)) {
            return Submitted::Replayed(id.clone());
        }
        // A waiting run of the same kind takes it; else (a targeted request) a waiting full run
        // of its targets, which covers it: a flood of events that turned into a full run does
        // not start another.
        let waiting_like = |like: &dyn Fn(&RunRequest) -> bool| {
            book.queue
                .iter()
                .find(|id| book.runs.get(*id).is_some_and(|r| like(&r.request)))
                .cloned()
        };
        let waiting = waiting_like(&|r| r.same_kind(&request))
            .or_else(|| waiting_like(&|r| r.covers(&request)));
        let submitted = match waiting {
            Some(id) => {
                let run = book.runs.get_mut(&id).expect("queued runs are in the book");
                run.request.absorb(&request);
                Submitted::Coalesced(id)
            }
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                let entry = RunEntry {
                    id: id.clone(),
                    trigger: trigger.to_string(),
                    request,
                    status: RunStatus::Queued,
                    report: None,
                    error: None,
                };
                book.runs.insert(id.clone(), entry);
                book.order.push_back(id.clone());
                book.queue.push_back(id.clone());
                Self::forget_old(&mut book);
                Submitted::New(id)
            }
        };
        if let Some(key) = key {
            book.keys.insert(key.clone(), submitted.id().to_string());
            book.key_order.push_back(key);
            while book.key_order.len() > KEPT_KEYS {
                let old = book.key_order.pop_front().expect("non-empty");
                book.keys.remove(&old);
            }
        }
        drop(book);
        self.queued.send_modify(|n| *n += 1);
        submitted
    }

    fn forget_old(book: &mut Book) {
        while book.order.len() > KEPT_RUNS {
            let Some(pos) = book.order.iter().position(|id| {
                book.runs
                    .get(id)
                    .is_some_and(|r| matches!(r.status, RunStatus::Finished | RunStatus::Failed))
            }) else {
                break;
            };
            let id = book.order.remove(pos).expect("position is valid");
            book.runs.remove(&id);
        }
    }

    /// The run an idempotency key started, if it was seen.
    pub fn replayed(&self, key: &str) -> Option<String> {
        self.book.lock().expect("run book lock").keys.get(key).cloned()
    }

    /// Changes whenever a run is submitted (from now on).
    pub fn submissions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queued.subscribe()
    }

    /// The next queued run of `lane`, now marked running.
    pub fn next(&self, lane: Lane) -> Option<(String, RunRequest)> {
        let mut book = self.book.lock().expect("run book lock");
        let targeted = |id: &String| book.runs.get(id).is_some_and(|r| r.request.is_targeted());
        let at = match lane {
            Lane::Events => book.queue.iter().position(targeted),
            Lane::Full => book.queue.iter().position(|id| !targeted(id)),
        };
        let id = book.queue.remove(at?)?;
        let run = book.runs.get_mut(&id).expect("queued runs are in the book");
        run.status = RunStatus::Running;
        Some((id, run.request.clone()))
    }

    /// Records how a run ended: its report, or why it could not run.
    pub fn finish(&self, id: &str, outcome: Result<serde_json::Value, String>) {
        let mut book = self.book.lock().expect("run book lock");
        if let Some(run) = book.runs.get_mut(id) {
            match outcome {
                Ok(report) => (run.status, run.report) = (RunStatus::Finished, Some(report)),
                Err(error) => (run.status, run.error) = (RunStatus::Failed, Some(error)),
            }
        }
    }

    /// One run.
    pub fn get(&self, id: &str) -> Option<RunEntry> {
        self.book.lock().expect("run book lock").runs.get(id).cloned()
    }

    /// Every run kept, newest first, without reports.
    pub fn list(&self) -> Vec<RunEntry> {
        let book = self.book.lock().expect("run book lock");
        book.order
            .iter()
            .rev()
            .filter_map(|id| book.runs.get(id))
            .map(|r| RunEntry { report: None, ..r.clone() })
            .collect()
    }

    /// Runs still queued (dropped at shutdown).
    pub fn queued_count(&self) -> usize {
        self.book.lock().expect("run book lock").queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(names: &[&str]) -> RunRequest {
        RunRequest {
            targets: Some(names.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn waiting_runs_absorb_triggers_and_keys_replay() {
        let book = RunBook::default();
        let first = book.submit("api", targets(&["A"]), Some("k1".into()));
        assert!(matches!(first, Submitted::New(_)));
        let second = book.submit("api", targets(&["B"]), None);
        assert_eq!(second, Submitted::Coalesced(first.id().to_string()));
        assert_eq!(
            book.submit("api", targets(&["C"]), Some("k1".into())),
            Submitted::Replayed(first.id().to_string())
        );
        let dry = book.submit("api", RunRequest { dry_run: true, ..Default::default() }, None);
        assert!(matches!(dry, Submitted::New(_)), "another kind of run waits on its own");
        let (id, request) = book.next(Lane::Full).unwrap();
        assert_eq!(id, first.id());
        assert_eq!(request, targets(&["A", "B"]));
        let third = book.submit("api", targets(&["D"]), None);
        assert!(matches!(third, Submitted::New(_)), "a running run absorbs nothing");
        let all = book.submit("reconcile", RunRequest::default(), None);
        assert_eq!(all, Submitted::Coalesced(third.id().to_string()));
        assert_eq!(book.get(third.id()).unwrap().request.targets, None, "all absorbs some");
        book.finish(&id, Ok(serde_json::json!({"ok": true})));
        // A targeted request folds into a waiting targeted run, or else a covering full one.
        let changed = |target: &str| RunRequest {
            changes: Some(Changes { source: ["x".to_string()].into(), ..Default::default() }),
            ..targets(&[target])
        };
        assert_eq!(
            book.submit("audit", changed("A"), None),
            Submitted::Coalesced(third.id().to_string()),
            "the waiting full run of every target covers it"
        );
        assert_eq!(book.next(Lane::Full).unwrap().0, dry.id(), "in order");
        assert_eq!(book.next(Lane::Full).unwrap().0, third.id());
        let event = book.submit("audit", changed("A"), None);
        assert!(matches!(event, Submitted::New(_)));
        assert_eq!(
            book.submit("audit", changed("B"), None),
            Submitted::Coalesced(event.id().into())
        );
        assert_eq!(book.next(Lane::Events).unwrap().1.targets, targets(&["A", "B"]).targets);
        assert_eq!(book.get(&id).unwrap().status, RunStatus::Finished);
        assert_eq!(book.list().len(), 4, "first, dry, third, event");
        let many = Changes {
            source: (0..=MAX_PENDING_NAMES).map(|i| format!("s{i}")).collect(),
            ..Default::default()
        };
        let flood = RunRequest { changes: Some(many), ..targets(&["A"]) };
        let flood = book.submit("api", flood, None);
        assert_eq!(book.get(flood.id()).unwrap().request.changes, None, "too many: a full run");
    }
}
