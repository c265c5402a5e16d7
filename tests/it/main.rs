//! Integration tests: one binary, one module per area. Each test gets its own workspace and
//! drives the real `vss` binary.

mod aws;
mod canary;
mod config_errors;
mod conflict;
mod deletion;
mod events;
mod faults;
mod files;
mod gcp;
mod github;
mod http;
mod kube;
mod migrate;
mod nats;
mod outputs;
mod pipeline;
mod schema;
mod serve;
mod targeted;
mod traces;
mod vault;

use serde_json::json;
use vss_tests::Workspace;

/// Three sources and a three-level inheritance chain: Base → Staging → Production.
pub const THREE_LEVELS: &str = "
merge_store: { file: { dir: merged } }
sources:
  common: { file: { dir: src/common } }
  stg: { file: { dir: src/stg } }
  prod: { file: { dir: src/prod } }
targets:
  Base: { imports: [common], store: { file: { dir: out/base } } }
  Staging: { inherits: Base, imports: [stg], store: { file: { dir: out/stg } } }
  Production: { inherits: Staging, imports: [prod], store: { file: { dir: out/prod } }, delete: true }
";

/// A workspace with [`THREE_LEVELS`] and a few secrets in each source.
pub fn three_levels() -> Workspace {
    let ws = Workspace::new();
    ws.config(THREE_LEVELS);
    ws.secret(
        "src/common",
        "app/db",
        json!({"host": "db", "port": 5432, "opts": {"ssl": true}, "tags": ["a"]}),
    );
    ws.secret("src/common", "shared/flags", json!({"beta": false}));
    ws.secret("src/stg", "app/db", json!({"host": "db-stg", "opts": {"pool": 5}, "tags": ["b"]}));
    ws.secret("src/prod", "app/db", json!({"host": "db-prod", "port": null, "tags": ["c"]}));
    ws.secret("src/prod", "payments/key", json!({"key": "k1"}));
    ws
}
