//! Vault/OpenBao's `socket` audit device as a trigger: one JSON object per line over TCP.
//! Successful KV v2 responses that change data (`create`, `update`, `patch`, `delete` on
//! `<mount>/data|metadata|delete|destroy|undelete/<name>`, in the source's namespace) of a path
//! some vault source reads queue a targeted run of that name in the targets that depend on
//! the source (its importers and their descendants); everything else is ignored. Lines are read as they come, never slowing
//! Vault down; malformed ones are counted and skipped. Audit entries carry HMACs of values,
//! never values, and their paths in clear unless an operator HMACs them (then no entry
//! matches, and only the periodic reconcile resyncs).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use vss_protocol::config::{Config, StoreSpec};
use vss_protocol::plan::Changes;

use super::Server;
use super::runs::RunRequest;

/// The longest audit line read; a longer one is counted as malformed and skipped.
const MAX_LINE: usize = 1 << 20;
/// Changes read and not yet queued as runs; past this, a full reconcile instead of waiting.
const BUFFER: usize = 10_000;

/// What the audit listener has seen.
#[derive(Default, Serialize)]
pub struct AuditCounts {
    /// Lines received.
    pub received: AtomicU64,
    /// Lines that changed a source and queued a run.
    pub triggered: AtomicU64,
    /// Lines about anything else.
    pub ignored: AtomicU64,
    /// Lines that were not audit entries.
    pub malformed: AtomicU64,
    /// Changes dropped because the buffer was full (each time, a full reconcile is queued).
    pub overflowed: AtomicU64,
}

/// One KV v2 change an audit entry reports.
#[derive(Debug, PartialEq, Eq)]
struct KvChange {
    /// The namespace (no slashes at either end; empty: the root).
    namespace: String,
    mount: String,
    name: String,
}

/// Accepts audit connections (Vault reconnects when one drops) until the task is aborted.
/// Readers hand changes to a bounded buffer and never wait on it, so Vault is never slowed.
pub(super) async fn listen(listener: tokio::net::TcpListener, server: Arc<Server>) {
    let (changes, buffered) = tokio::sync::mpsc::channel(BUFFER);
    let forwarding = tokio::spawn(forward(buffered, server.clone()));
    let _stop_forwarding = AbortOnDrop(forwarding);
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        tracing::debug!(%peer, "audit device connected");
        let (server, changes) = (server.clone(), changes.clone());
        tokio::spawn(async move { read_entries(stream, &server, &changes).await });
    }
}

/// Aborts the task when the listener goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Queues the buffered changes as targeted runs (recorded first with `--nats`).
async fn forward(mut buffered: tokio::sync::mpsc::Receiver<KvChange>, server: Arc<Server>) {
    while let Some(change) = buffered.recv().await {
        trigger(&server, &change).await;
    }
}

async fn read_entries(
    stream: tokio::net::TcpStream,
    server: &Server,
    changes: &tokio::sync::mpsc::Sender<KvChange>,
) {
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await;
        let counts = &server.audit;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => {
                counts.malformed.fetch_add(1, Ordering::Relaxed);
                // Skip the rest of the overlong line.
                let mut rest = Vec::new();
                if reader.read_until(b'\n', &mut rest).await.is_err() {
                    return;
                }
            }
            Ok(_) => {
                counts.received.fetch_add(1, Ordering::Relaxed);
                match serde_json::from_slice::<Value>(&line).ok().and_then(|e| change_of(&e)) {
                    Some(Ok(change)) => {
                        if changes.try_send(change).is_err() {
                            counts.overflowed.fetch_add(1, Ordering::Relaxed);
                            server.runs.submit("audit-overflow", RunRequest::default(), None);
                        }
                    }
                    Some(Err(())) => {
                        counts.ignored.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        counts.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// `None`: not an audit entry; `Some(Err)`: an entry about something else.
fn change_of(entry: &Value) -> Option<Result<KvChange, ()>> {
    let kind = entry.get("type")?.as_str()?;
    let request = entry.get("request")?;
    let failed = entry.get("error").and_then(Value::as_str).is_some_and(|e| !e.is_empty());
    let operation = request.get("operation").and_then(Value::as_str).unwrap_or_default();
    let changes = matches!(operation, "create" | "update" | "patch" | "delete");
    if kind != "response" || failed || !changes {
        return Some(Err(()));
    }
    let (Some(path), Some(mount)) = (
        request.get("path").and_then(Value::as_str),
        request.get("mount_point").and_then(Value::as_str),
    ) else {
        return Some(Err(()));
    };
    let Some((area, name)) = path.strip_prefix(mount).and_then(|rest| rest.split_once('/')) else {
        return Some(Err(()));
    };
    if !matches!(area, "data" | "metadata" | "delete" | "destroy" | "undelete") || name.is_empty() {
        return Some(Err(()));
    }
    let namespace = request
        .pointer("/namespace/path")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim_matches('/')
        .to_string();
    let mount = mount.trim_end_matches('/').to_string();
    Some(Ok(KvChange { namespace, mount, name: name.trim_end_matches('/').to_string() }))
}

/// Queues a targeted run of `change` in the targets whose desired state reads it, if any.
async fn trigger(server: &Server, change: &KvChange) {
    let changes = changes_of(&server.cfg, change);
    let targets: BTreeSet<String> = changes
        .per_target(&server.cfg, server.cfg.pipeline.merge_enabled)
        .into_keys()
        .map(str::to_string)
        .collect();
    if targets.is_empty() {
        server.audit.ignored.fetch_add(1, Ordering::Relaxed);
        return;
    }
    server.audit.triggered.fetch_add(1, Ordering::Relaxed);
    let mut request =
        RunRequest { targets: Some(targets), changes: Some(changes), ..Default::default() };
    if let Some(log) = &server.events {
        match log.record("audit", &request).await {
            Ok(sequence) => {
                request.events.insert(sequence);
            }
            Err(e) => tracing::warn!(error = %e, "cannot record an audit event; running it anyway"),
        }
    }
    let submitted = server.runs.submit("audit", request, None);
    tracing::debug!(run = %submitted.id(), "audit event queued a run");
}

/// The change as the config's sources name it: per vault source that reads it (same
/// namespace, mount, folder and `paths`), its name relative to the source's folder.
fn changes_of(cfg: &Config, change: &KvChange) -> Changes {
    let name_in = |spec: &StoreSpec| match spec {
        StoreSpec::Vault(v)
            if v.connection.namespace.as_deref().unwrap_or_default().trim_matches('/')
                == change.namespace =>
        {
            v.name_of(&change.mount, &change.name)
        }
        _ => None,
    };
    let mut changes = Changes::default();
    if !cfg.pipeline.merge_enabled {
        changes.source.extend(cfg.source.as_ref().and_then(name_in));
    }
    for (source, spec) in &cfg.sources {
        if let Some(name) = name_in(spec) {
            changes.sources.entry(source.clone()).or_default().insert(name);
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn entry(kind: &str, operation: &str, path: &str) -> Value {
        serde_json::json!({"type": kind, "request": {"operation": operation, "mount_point": "secret/", "path": path}})
    }

    #[test]
    fn only_successful_kv_changes_count() {
        let change = change_of(&entry("response", "create", "secret/data/src/app/db"));
        assert_eq!(
            change,
            Some(Ok(KvChange {
                namespace: String::new(),
                mount: "secret".into(),
                name: "src/app/db".into()
            }))
        );
        assert_eq!(change_of(&entry("request", "create", "secret/data/src/a")), Some(Err(())));
        assert_eq!(change_of(&entry("response", "read", "secret/data/src/a")), Some(Err(())));
        assert_eq!(change_of(&entry("response", "update", "secret/config")), Some(Err(())));
        assert!(matches!(
            change_of(&entry("response", "delete", "secret/metadata/src/a")),
            Some(Ok(_))
        ));
        assert_eq!(change_of(&serde_json::json!({"hello": 1})), None);
    }

    #[test]
    fn a_change_reaches_the_names_of_importers_and_their_descendants_only() {
        let text = "vault: { address: \"http://v:8200\" }\nmerge_store: { file: { dir: m } }\nsources:\n  app: { vault: { path: secret/src/app } }\n  other: { vault: { path: secret/src/other } }\ntargets:\n  A: { imports: [app], store: { file: { dir: a } } }\n  B: { inherits: A, store: { file: { dir: b } } }\n  C: { imports: [other], store: { file: { dir: c } } }\n";
        let cfg = Config::from_yaml(text, "vss.yaml", Path::new("/base"), &|_| None).unwrap();
        let change = |namespace: &str, name: &str| KvChange {
            namespace: namespace.into(),
            mount: "secret".into(),
            name: name.into(),
        };
        let targets = |change: KvChange| {
            let changes = changes_of(&cfg, &change);
            let per_target = changes.per_target(&cfg, true);
            per_target.into_iter().map(|(t, names)| format!("{t}:{names:?}")).collect::<Vec<_>>()
        };
        assert_eq!(targets(change("", "src/app/db")), [r#"A:{"db"}"#, r#"B:{"db"}"#]);
        assert_eq!(targets(change("", "src/other/x/y")), [r#"C:{"x/y"}"#]);
        assert!(targets(change("", "src/application")).is_empty());
        assert!(targets(change("", "unrelated/x")).is_empty());
        assert!(targets(change("team-a", "src/app/db")).is_empty(), "another namespace");
    }
}
