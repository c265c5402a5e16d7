//! A target split into shards, spread over workers and reported as one.

use serde_json::json;
use vss_protocol::job::Shard;
use vss_tests::servers::Nats;
use vss_tests::{Workspace, target};

use super::{logs, tree, workers};

#[test]
fn nats_a_sharded_target_is_shared_by_workers_and_reported_as_one() {
    let nats = Nats::start();
    let config = |shards: u32| {
        format!(
            "hash_key: {{ file: hash.key }}
source: {{ file: {{ dir: src }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }}, delete: true, shards: {shards} }}
"
        )
    };
    let (local, sharded) = (Workspace::new(), Workspace::new());
    local.config(&config(1));
    sharded.config(&config(4));
    for ws in [&local, &sharded] {
        ws.write("hash.key", "one key for both");
        for i in 0..200 {
            ws.secret("src", &format!("team{}/app{i:03}", i % 5), json!({"n": i}));
        }
    }
    let _workers = workers(&sharded, &nats, 2);
    let graph = sharded.run(&["graph", "--config", "vss.yaml"]);
    assert!(graph.stdout.contains("sync:T#3/4"), "{}", graph.stdout);

    let compare = |extra: &[&str]| {
        let here = local.pipeline(extra);
        let mut args = extra.to_vec();
        args.extend(["--nats", nats.url.as_str()]);
        let there = sharded.pipeline(&args);
        assert_eq!(here.code, there.code, "{}\n{}", there.stderr, logs(&sharded));
        assert_eq!(here.json(), there.json(), "one report for the four shards");
        assert_eq!(tree(&local.path().join("out")), tree(&sharded.path().join("out")));
        there
    };
    let first = compare(&["--exit-code"]);
    assert_eq!(target(&first.json(), "T")["summary"]["added"], 200);
    assert_eq!(logs(&sharded).matches("job finished").count(), 4, "{}", logs(&sharded));

    // Deletes stay within each shard's owned secrets; the guard allows 10 of 200.
    for ws in [&local, &sharded] {
        for i in 0..10 {
            std::fs::remove_file(ws.path().join(format!("src/team{}/app{i:03}.json", i % 5)))
                .unwrap();
        }
    }
    let second = compare(&["--exit-code"]);
    assert_eq!(target(&second.json(), "T")["summary"]["removed"], 10);
    let unchanged = compare(&["--exit-code"]);
    assert_eq!(unchanged.code, 0);
    assert_eq!(target(&unchanged.json(), "T")["summary"]["unchanged"], 190);

    // 30 of 190 is over the guard for the target as a whole: every shard refuses, even the
    // shards none of whose own secrets would go, and they create nothing either.
    let first_shard = Shard { index: 0, count: 4 };
    let doomed: Vec<String> = (10..200)
        .map(|i| format!("team{}/app{i:03}", i % 5))
        .filter(|n| first_shard.owns(n))
        .take(30)
        .collect();
    assert_eq!(doomed.len(), 30);
    let fresh: Vec<String> =
        (0..40).map(|i| format!("new/s{i}")).filter(|n| !first_shard.owns(n)).collect();
    for ws in [&local, &sharded] {
        for name in &doomed {
            std::fs::remove_file(ws.path().join(format!("src/{name}.json"))).unwrap();
        }
        for name in &fresh {
            ws.secret("src", name, json!({"fresh": true}));
        }
    }
    let refused = sharded.pipeline(&["--nats", &nats.url]);
    assert_eq!((local.pipeline(&[]).code, refused.code), (2, 2));
    assert!(refused.stdout.contains("refusing to delete 30 of 190"), "{}", refused.stdout);
    assert_eq!(tree(&sharded.path().join("out")).len(), 190, "nothing deleted or created");
    assert_eq!(tree(&local.path().join("out")).len(), 190, "nothing deleted or created");
}
