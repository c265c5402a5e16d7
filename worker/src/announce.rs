//! Announcements: how a targeted job and a full job of the same target run side by side on a
//! store that has no check of versions of its own (AWS Secrets Manager, files).
//!
//! The targeted job (an event's) announces the names it is about to change before it reads
//! them; the full job (a reconcile's) watches from before it lists, and leaves every announced
//! name to the targeted job, whose view of it is newer. In one process announcements go
//! through memory; on the fleet through NATS (`vss.announce.<job>`, names only, never a
//! value), from whichever worker to whichever worker. An announcement that arrives just after
//! the full job looked is settled by serve, which runs an event that overlapped a full run
//! again once that run is over.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;

/// Names announced in this process: per job id, name → the announcement's sequence number.
static ANNOUNCED: Mutex<Option<HashMap<String, HashMap<String, u64>>>> = Mutex::new(None);
static SEQUENCE: AtomicU64 = AtomicU64::new(0);
/// Names kept per job id in memory; older announcements are forgotten past this.
const KEPT: usize = 50_000;

/// Where announcements go.
#[derive(Clone, Default)]
pub enum Announcements {
    /// This process's memory (the in-process executor).
    #[default]
    InProcess,
    /// NATS, through a worker's connection.
    Nats(async_nats::Client),
}

/// What a full job sees of the announcements for its job id since it started watching.
pub enum Watch {
    /// Announcements in memory after this sequence number.
    InProcess { job: String, since: u64 },
    /// Names received over NATS (the subscription ends with the watch).
    Nats { names: Arc<Mutex<HashSet<String>>>, task: tokio::task::JoinHandle<()> },
}

impl Announcements {
    /// Announces that a targeted job of `job` (its id) is about to change `names`.
    pub async fn announce(&self, job: &str, names: &BTreeSet<String>) {
        match self {
            Announcements::InProcess => {
                let sequence = SEQUENCE.fetch_add(1, Ordering::SeqCst) + 1;
                let mut announced = ANNOUNCED.lock().expect("announcements lock");
                let of_job = announced.get_or_insert_default().entry(job.to_string()).or_default();
                of_job.extend(names.iter().map(|n| (n.clone(), sequence)));
                if of_job.len() > KEPT {
                    let oldest_kept = sequence.saturating_sub(KEPT as u64);
                    of_job.retain(|_, s| *s > oldest_kept);
                }
            }
            Announcements::Nats(client) => {
                let names: Vec<&String> = names.iter().collect();
                let payload = serde_json::to_vec(&names).expect("names serialize");
                // Flushed before the job reads anything: the full job hears of it first.
                let sent = client.publish(subject(job), payload.into()).await;
                if let Err(e) = sent
                    .map_err(|e| e.to_string())
                    .and(client.flush().await.map_err(|e| e.to_string()))
                {
                    tracing::warn!(error = %e, "cannot announce; the overlap's follow-up settles it");
                }
            }
        }
    }

    /// Starts watching the announcements for `job` (its id).
    pub async fn watch(&self, job: &str) -> Watch {
        match self {
            Announcements::InProcess => {
                Watch::InProcess { job: job.to_string(), since: SEQUENCE.load(Ordering::SeqCst) }
            }
            Announcements::Nats(client) => {
                let names: Arc<Mutex<HashSet<String>>> = Arc::default();
                let subscribed = client.subscribe(subject(job)).await;
                let task = match subscribed {
                    Ok(mut subscription) => {
                        // The subscription is in place before the job lists anything.
                        let _ = client.flush().await;
                        let names = names.clone();
                        tokio::spawn(async move {
                            while let Some(message) = subscription.next().await {
                                if let Ok(announced) =
                                    serde_json::from_slice::<Vec<String>>(&message.payload)
                                {
                                    names.lock().expect("names lock").extend(announced);
                                }
                            }
                        })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch announcements");
                        tokio::spawn(async {})
                    }
                };
                Watch::Nats { names, task }
            }
        }
    }
}

impl Watch {
    /// Whether a targeted job announced `name` since the watch began.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Watch::InProcess { job, since } => ANNOUNCED
                .lock()
                .expect("announcements lock")
                .as_ref()
                .and_then(|all| all.get(job)?.get(name))
                .is_some_and(|sequence| sequence > since),
            Watch::Nats { names, .. } => names.lock().expect("names lock").contains(name),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Watch::Nats { task, .. } = self {
            task.abort();
        }
    }
}

/// `vss.announce.<job id, base64url>`.
fn subject(job: &str) -> String {
    format!("vss.announce.{}", URL_SAFE_NO_PAD.encode(job.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_sees_what_is_announced_after_it_began_for_its_job_only() {
        let here = Announcements::InProcess;
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        here.announce("sync:T", &names(&["before"])).await;
        let watch = here.watch("sync:T").await;
        here.announce("sync:T", &names(&["a", "b"])).await;
        here.announce("sync:Other", &names(&["c"])).await;
        assert!(watch.contains("a") && watch.contains("b"));
        assert!(!watch.contains("before"), "announced before the full job began");
        assert!(!watch.contains("c"), "another job's");
        // Announced again after the watch began: seen, though it was known before.
        here.announce("sync:T", &names(&["before"])).await;
        assert!(watch.contains("before"));
    }
}
