//! The state ledger in NATS (`state: {nats: …}`, the default of a distributed run): workers
//! with no shared disk share records and one hash key, shards and targeted runs never clobber
//! each other's records, and a ledger folder moves into NATS with nothing owned forgotten.

use std::collections::BTreeMap;

use async_nats::jetstream;
use serde_json::json;
use vss_protocol::config::StoreSpec;
use vss_stores::Version;
use vss_stores::ledger::nats::NatsLedger;
use vss_stores::ledger::{Record, StateLedger};
use vss_tests::servers::{Nats, OpenBao, ROOT_TOKEN};
use vss_tests::{Workspace, counts, target};

use super::{logs, workers};

#[test]
fn nats_state_workers_without_a_shared_disk_share_records_and_one_hash_key() {
    let nats = Nats::start();
    let bao = OpenBao::start();
    let ws = Workspace::new();
    ws.config(&format!(
        "vault: {{ address: \"{}\", auth: {{ token: {{ env: VSS_TEST_VAULT_TOKEN }} }} }}
source: {{ vault: {{ path: secret/src }} }}
targets:
  T1: {{ store: {{ vault: {{ path: secret/dst/t1 }} }}, delete: true }}
  T2: {{ store: {{ vault: {{ path: secret/dst/t2 }} }}, delete: true }}
  T3: {{ store: {{ vault: {{ path: secret/dst/t3 }} }}, delete: true }}
execution: {{ nats: {{ url: \"{}\" }} }}
",
        bao.address, nats.url
    ));
    for i in 0..10 {
        bao.put(&format!("src/s{i}"), &json!({"n": i}));
    }
    // Each worker in a folder of its own: nothing on disk is shared with the coordinator.
    let homes: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    let _workers: Vec<_> = homes
        .iter()
        .enumerate()
        .map(|(i, home)| {
            let log = ws.path().join(format!("worker-{i}.log"));
            let args = ["worker", "--nats", &nats.url, "--concurrency", "1"];
            home.spawn_env(&args, &log, &[("VSS_TEST_VAULT_TOKEN", ROOT_TOKEN)])
        })
        .collect();
    let env = [("VSS_TEST_VAULT_TOKEN", ROOT_TOKEN)];
    let run = || {
        ws.run_env(&["pipeline", "--config", "vss.yaml", "--output", "json", "--exit-code"], &env)
    };
    let first = run();
    assert_eq!(first.code, 1, "{}\n{}", first.stderr, logs(&ws));
    for t in ["T1", "T2", "T3"] {
        assert_eq!(counts(&target(&first.json(), t)["summary"]), (10, 0, 0, 0));
    }
    // Records and the hash key are in NATS, not in any folder.
    for dir in [ws.path(), homes[0].path(), homes[1].path()] {
        assert!(!dir.join(".vss/state").exists(), "a ledger folder in {}", dir.display());
    }
    let unchanged = run();
    assert_eq!(unchanged.code, 0, "{}\n{}", unchanged.stdout, logs(&ws));
    for t in ["T1", "T2", "T3"] {
        assert_eq!(counts(&target(&unchanged.json(), t)["summary"]), (0, 0, 0, 10));
    }
    assert_eq!(bao.get("dst/t2/s3").unwrap().1, 1, "an unchanged resync writes nothing");

    // Ownership comes from the shared records: a secret gone from the source goes.
    bao.delete("src/s0");
    let deleted = run();
    assert_eq!(deleted.code, 1, "{}", deleted.stderr);
    assert_eq!(counts(&target(&deleted.json(), "T3")["summary"]), (0, 0, 1, 9));
    assert_eq!(bao.get("dst/t3/s0"), None);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        let kv = js.get_key_value("vss-state").await.unwrap();
        let key = kv.get("hash-key").await.unwrap().expect("the shared hash key");
        assert_eq!(key.len(), 64);
    });
}

#[test]
fn nats_state_hash_key_is_created_once_and_records_are_never_clobbered() {
    let nats = Nats::start();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        // Ten processes asking at once end with one key.
        let keys = futures_util::future::join_all((0..10).map(|_| {
            let js = js.clone();
            async move {
                let ledger = NatsLedger::open(&js, "race", false).await.unwrap();
                ledger.hash_key().await.unwrap().to_hex()
            }
        }))
        .await;
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");

        let spec = vss_protocol::config::StateSpec::Nats { bucket: "race".into() };
        let open = || StateLedger::open(&spec, false, Some(&js));
        let store = StoreSpec::File { dir: "/out".into() };
        let hash = NatsLedger::open(&js, "race", false)
            .await
            .unwrap()
            .hash_key()
            .await
            .unwrap()
            .hash(&vss_protocol::SecretValue::default());
        let record = |v: &str| Record { hash: hash.clone(), version: Version(v.into()) };

        // A full run saves 1,000 records; each is an entry of its own.
        let full = open().await.unwrap();
        let (name, mut records) = full.load_for_job("T/x", None, &store).await.unwrap();
        for i in 0..1000 {
            records.secrets.insert(format!("app/s{i:04}"), record("1"));
        }
        full.save(&name, &records).await.unwrap();
        let reloaded = open().await.unwrap().load("T/x", &store).await.unwrap();
        assert_eq!(reloaded, records);

        // Another full run loads; meanwhile an event's targeted run records `app/s0001` anew
        // and deletes `app/s0002`; the full run then saves its own view of both: theirs stay.
        let full = open().await.unwrap();
        let (name, mut records) = full.load_for_job("T/x", None, &store).await.unwrap();
        let event = BTreeMap::from([
            ("app/s0001".to_string(), Some(record("event"))),
            ("app/s0002".to_string(), None),
        ]);
        open().await.unwrap().append("T/x", None, &store, &event).await.unwrap();
        records.secrets.insert("app/s0001".into(), record("full"));
        records.secrets.insert("app/s0002".into(), record("full"));
        records.secrets.insert("app/s0003".into(), record("full"));
        full.save(&name, &records).await.unwrap();
        let now = open().await.unwrap().load("T/x", &store).await.unwrap();
        assert_eq!(now.secrets["app/s0001"], record("event"), "the event's record is kept");
        assert!(!now.secrets.contains_key("app/s0002"), "the event's delete is kept");
        assert_eq!(now.secrets["app/s0003"], record("full"));
        assert_eq!(now.secrets.len(), 999);

        // Shards save their own names only; records are bound to their store.
        let shard = vss_protocol::job::Shard { index: 1, count: 4 };
        let (name, part) =
            open().await.unwrap().load_for_job("T/x", Some(&shard), &store).await.unwrap();
        assert!(part.secrets.keys().all(|n| shard.owns(n)) && !part.secrets.is_empty());
        assert_eq!(name, "T/x#1-of-4");
        let other = StoreSpec::File { dir: "/elsewhere".into() };
        assert!(open().await.unwrap().load("T/x", &other).await.unwrap().secrets.is_empty());
    });
}

#[test]
fn nats_state_migrate_moves_a_ledger_folder_with_nothing_owned_forgotten() {
    let nats = Nats::start();
    let ws = Workspace::new();
    ws.config(
        "source: { file: { dir: src } }
targets:
  T: { store: { file: { dir: out } }, delete: true }
",
    );
    for i in 0..5 {
        ws.secret("src", &format!("s{i}"), json!({"n": i}));
    }
    assert_eq!(ws.pipeline(&["--exit-code"]).code, 1, "written, recorded in .vss/state");
    assert!(ws.path().join(".vss/state/hash-key").exists());

    let migrate = |ws: &Workspace| {
        ws.run(&["state", "migrate", "--from", "file:.vss/state", "--nats", &nats.url])
    };
    let moved = migrate(&ws);
    assert_eq!(moved.code, 0, "{}", moved.stderr);
    assert!(
        moved.stdout.contains("copied 5 records of 1 targets and the hash key"),
        "{}",
        moved.stdout
    );
    assert_eq!(migrate(&ws).code, 0, "safe to run again");

    // On the fleet, with the ledger in NATS: the file target keeps no stamps, so the records
    // alone say it is unchanged and owned.
    let _workers = workers(&ws, &nats, 1);
    std::fs::remove_file(ws.path().join("src/s0.json")).unwrap();
    let fleet = ws.pipeline(&["--exit-code", "--nats", &nats.url]);
    assert_eq!(fleet.code, 1, "{}\n{}", fleet.stderr, logs(&ws));
    assert_eq!(counts(&target(&fleet.json(), "T")["summary"]), (0, 0, 1, 4));
    assert_eq!(ws.read_secret("out", "s0"), None);

    // A bucket that holds another key refuses another ledger's records.
    let other = Workspace::new();
    other.config(
        "source: { file: { dir: src } }\ntargets:\n  T: { store: { file: { dir: out } } }\n",
    );
    other.secret("src", "s", json!({"n": 1}));
    assert_eq!(other.pipeline(&[]).code, 0);
    let refused = migrate(&other);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("already holds another hash key"), "{}", refused.stderr);
}
