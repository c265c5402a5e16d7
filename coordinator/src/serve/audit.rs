//! Vault/OpenBao's `socket` audit device as a trigger: one JSON object per line over TCP.
//! Successful KV v2 responses that change data (`create`, `update`, `patch`, `delete` on
//! `<mount>/data|metadata|delete|destroy|undelete/<name>`) of a path some vault source reads
//! queue a run of the targets that depend on that source (its importers and their
//! descendants); everything else is ignored. Lines are read as they come, never slowing
//! Vault down; malformed ones are counted and skipped. Audit entries carry HMACs of values,
//! never values, and their paths in clear unless an operator HMACs them (then no entry
//! matches, and only the periodic reconcile resyncs).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use vss_protocol::config::{Config, Layer, StoreSpec};

use super::Server;
use super::runs::RunRequest;

/// The longest audit line read; a longer one is counted as malformed and skipped.
const MAX_LINE: usize = 1 << 20;

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
}

/// One KV v2 change an audit entry reports.
#[derive(Debug, PartialEq, Eq)]
struct KvChange {
    mount: String,
    name: String,
}

/// Accepts audit connections (Vault reconnects when one drops) until the task is aborted.
pub(super) async fn listen(listener: tokio::net::TcpListener, server: Arc<Server>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        tracing::debug!(%peer, "audit device connected");
        let server = server.clone();
        tokio::spawn(async move { read_entries(stream, &server).await });
    }
}

async fn read_entries(stream: tokio::net::TcpStream, server: &Server) {
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
                    Some(Ok(change)) => trigger(server, &change),
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
    let mount = mount.trim_end_matches('/').to_string();
    Some(Ok(KvChange { mount, name: name.trim_end_matches('/').to_string() }))
}

/// Queues a run of the targets that depend on a source reading `change`, if any.
fn trigger(server: &Server, change: &KvChange) {
    let targets = affected_targets(&server.cfg, change);
    if targets.is_empty() {
        server.audit.ignored.fetch_add(1, Ordering::Relaxed);
        return;
    }
    server.audit.triggered.fetch_add(1, Ordering::Relaxed);
    let request = RunRequest { targets: Some(targets), ..Default::default() };
    let submitted = server.runs.submit("audit", request, None);
    tracing::debug!(run = %submitted.id(), "audit event queued a run");
}

/// The targets whose desired state reads `change`: importers of a vault source that covers
/// it, and every target that inherits from one of them (all targets for a plain `source`).
fn affected_targets(cfg: &Config, change: &KvChange) -> BTreeSet<String> {
    let covers = |spec: &StoreSpec| match spec {
        StoreSpec::Vault(v) if v.mount == change.mount => {
            let relative = if v.prefix.is_empty() {
                Some(change.name.as_str())
            } else {
                change.name.strip_prefix(&v.prefix).and_then(|r| r.strip_prefix('/'))
            };
            relative.is_some_and(|name| {
                let options =
                    glob::MatchOptions { require_literal_separator: true, ..Default::default() };
                v.paths.is_empty()
                    || v.paths
                        .iter()
                        .any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches_with(name, options)))
            })
        }
        _ => false,
    };
    if cfg.source.as_ref().is_some_and(covers) && !cfg.pipeline.merge_enabled {
        return cfg.targets.keys().cloned().collect();
    }
    let sources: BTreeSet<&str> =
        cfg.sources.iter().filter(|(_, s)| covers(s)).map(|(n, _)| n.as_str()).collect();
    let mut affected: BTreeSet<String> = BTreeSet::new();
    for name in cfg.topological_order() {
        let target = &cfg.targets[name];
        let reads = target.layers.iter().any(|l| match l {
            Layer::Source(s) => sources.contains(s.as_str()),
            Layer::Target(t) => affected.contains(t),
        });
        if reads {
            affected.insert(name.to_string());
        }
    }
    affected
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
            Some(Ok(KvChange { mount: "secret".into(), name: "src/app/db".into() }))
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
    fn a_change_reaches_importers_and_their_descendants_only() {
        let text = "vault: { address: \"http://v:8200\" }\nmerge_store: { file: { dir: m } }\nsources:\n  app: { vault: { path: secret/src/app } }\n  other: { vault: { path: secret/src/other } }\ntargets:\n  A: { imports: [app], store: { file: { dir: a } } }\n  B: { inherits: A, store: { file: { dir: b } } }\n  C: { imports: [other], store: { file: { dir: c } } }\n";
        let cfg = Config::from_yaml(text, "vss.yaml", Path::new("/base"), &|_| None).unwrap();
        let change = |name: &str| KvChange { mount: "secret".into(), name: name.into() };
        let names = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
        assert_eq!(names(affected_targets(&cfg, &change("src/app/db"))), ["A", "B"]);
        assert_eq!(names(affected_targets(&cfg, &change("src/other/x"))), ["C"]);
        assert!(affected_targets(&cfg, &change("src/application")).is_empty());
        assert!(affected_targets(&cfg, &change("unrelated/x")).is_empty());
    }
}
