//! `vss serve` under a stream of Vault writes, with OpenBao's `socket` audit device pointing
//! at it: bursts coalesce into far fewer runs and end exact, a target that is down gets every
//! change once it is back, and a `serve` killed mid-burst converges after its restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vss_tests::faults::{Fault, FaultProxy};
use vss_tests::relay::Relay;
use vss_tests::servers::{AWS_TEST_ENV, Moto, Nats, OpenBao, ROOT_TOKEN};
use vss_tests::{Background, Workspace};

const TOKEN: &str = "events-api-token";
/// Secrets the writes go to.
const SECRETS: usize = 50;

/// OpenBao auditing to a socket (through a relay vss joins later) and to a file, so Vault
/// keeps answering while vss is down; moto behind a proxy that can take it down.
struct Setup {
    relay: Relay,
    bao: OpenBao,
    moto: Moto,
    proxy: FaultProxy,
    ws: Workspace,
    http: reqwest::Client,
}

impl Setup {
    fn start() -> Self {
        Self::start_with("")
    }

    /// [`Setup::start`] with more config (an `execution:` block).
    fn start_with(more: &str) -> Self {
        Self::start_config(|bao, proxy| {
            format!(
                "vault: {{ address: \"{bao}\", auth: {{ token: {{ env: VSS_TEST_VAULT_TOKEN }} }} }}
aws: {{ region: us-east-1, endpoint: \"{proxy}\" }}
merge_store: {{ file: {{ dir: merged }} }}
pipeline: {{ timeouts: {{ connect_secs: 1, request_secs: 2, outage_secs: 2 }} }}
sources:
  app: {{ vault: {{ path: secret/src }} }}
targets:
  F: {{ imports: [app], store: {{ file: {{ dir: out }} }} }}
  A: {{ imports: [app], store: {{ aws: {{ prefix: app/ }} }} }}
serve:
  tokens: [\"${{VSS_API_TOKEN}}\"]
{more}"
            )
        })
    }

    /// The servers, with the config `config(OpenBao's address, the moto proxy's URL)`.
    fn start_config(config: impl Fn(&str, &str) -> String) -> Self {
        let ws = Workspace::new();
        let relay = Relay::start();
        let hcl = format!(
            "audit \"socket\" \"vss\" {{\n  options {{\n    address = \"{}\"\n    socket_type = \"tcp\"\n  }}\n}}\naudit \"file\" \"local\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
            relay.address,
            ws.path().join("bao-audit.log").display()
        );
        let bao = OpenBao::start_with_config(Some(&hcl));
        let moto = Moto::start();
        let proxy = FaultProxy::start(&moto.endpoint);
        ws.config(&config(&bao.address, &proxy.url));
        Self { relay, bao, moto, proxy, ws, http: reqwest::Client::new() }
    }

    /// `vss serve` with the audit listener (reconciling at start and every `reconcile`),
    /// the relay pointed at it; its process and API URL.
    async fn serve(&self, log: &str, reconcile: &str) -> (Background, String) {
        let log = self.ws.path().join(log);
        let args = [
            "serve",
            "--config",
            "vss.yaml",
            "--listen",
            "127.0.0.1:0",
            "--audit-listen",
            "127.0.0.1:0",
            "--reconcile-interval",
            reconcile,
        ];
        let mut env = AWS_TEST_ENV.to_vec();
        env.extend([("VSS_API_TOKEN", TOKEN), ("VSS_TEST_VAULT_TOKEN", ROOT_TOKEN)]);
        let process = self.ws.spawn_env(&args, &log, &env);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let (Some(api), Some(audit)) =
                (after(&text, " address="), after(&text, "audit_address="))
            {
                self.relay.forward_to(&audit);
                return (process, format!("http://{api}"));
            }
            assert!(Instant::now() < deadline, "serve did not start:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `n` workers (`worker-<i>.log`).
    fn workers(&self, nats: &Nats, n: usize) -> Vec<Background> {
        let mut env = AWS_TEST_ENV.to_vec();
        env.push(("VSS_TEST_VAULT_TOKEN", ROOT_TOKEN));
        (0..n)
            .map(|i| {
                let log = self.ws.path().join(format!("worker-{i}.log"));
                let args = ["worker", "--nats", &nats.url, "--concurrency", "4"];
                self.ws.spawn_env(&args, &log, &env)
            })
            .collect()
    }

    /// How many of the workers logged a finished job.
    fn workers_that_ran_jobs(&self) -> usize {
        (0..2).filter(|i| self.log(&format!("worker-{i}.log")).contains("job finished")).count()
    }

    /// Writes round `round` to every secret, `src/s00` … `src/s49`.
    async fn write_round(&self, round: usize) {
        for i in 0..SECRETS {
            let url = format!("{}/v1/secret/data/src/s{i:02}", self.bao.address);
            let body = json!({"data": {"round": round, "i": i}});
            let response =
                self.http.post(url).header("X-Vault-Token", ROOT_TOKEN).json(&body).send().await;
            assert!(response.unwrap().status().is_success());
        }
    }

    /// Round of each secret in the AWS target (via boto3, straight to moto).
    fn aws_rounds(&self) -> Vec<Option<u64>> {
        let all = self.moto.secretsmanager(
            "names = [s['Name'] for p in sm.get_paginator('list_secrets').paginate() for s in p['SecretList']]\nout({n: json.loads(sm.get_secret_value(SecretId=n)['SecretString']) for n in names})",
        );
        (0..SECRETS).map(|i| all[format!("app/s{i:02}")]["round"].as_u64()).collect()
    }

    /// Round of each secret in the file target.
    fn file_rounds(&self) -> Vec<Option<u64>> {
        (0..SECRETS)
            .map(|i| {
                self.ws.read_secret("out", &format!("s{i:02}")).and_then(|v| v["round"].as_u64())
            })
            .collect()
    }

    /// Waits until both targets hold round `round` everywhere.
    async fn converged(&self, round: u64, within: Duration, log: &str) {
        let want = vec![Some(round); SECRETS];
        let deadline = Instant::now() + within;
        while self.file_rounds() != want {
            assert!(
                Instant::now() < deadline,
                "file target: {:?}\n{}",
                self.file_rounds(),
                self.log(log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while self.aws_rounds() != want {
            assert!(
                Instant::now() < deadline,
                "aws target: {:?}\n{}",
                self.aws_rounds(),
                self.log(log)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.ws.path().join(name)).unwrap_or_default()
    }

    /// The runs `serve` at `url` knows, once none is queued or running.
    async fn settled_runs(&self, url: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let runs = self.runs(url).await;
            if runs.iter().all(|r| r["status"] != "queued" && r["status"] != "running") {
                return runs;
            }
            assert!(Instant::now() < deadline, "runs never settled: {runs:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The runs `serve` at `url` knows.
    async fn runs(&self, url: &str) -> Vec<Value> {
        let response =
            self.http.get(format!("{url}/v1/runs")).bearer_auth(TOKEN).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        body["runs"].as_array().unwrap().clone()
    }
}

/// Runs the async part of a test (the fault proxy keeps a runtime of its own, which must not
/// be created or dropped inside another).
fn block_on(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Runtime::new().unwrap().block_on(test);
}

/// What a log line gives after `marker`.
fn after(text: &str, marker: &str) -> Option<String> {
    let at = text.find(marker)? + marker.len();
    Some(text[at..].chars().take_while(|c| !c.is_whitespace()).collect())
}

/// A setup in-process, or on a fleet of two workers (the NATS server and the workers, kept
/// for the test's length).
fn setup(fleet: bool) -> (Setup, Option<(Nats, Vec<Background>)>) {
    if !fleet {
        return (Setup::start(), None);
    }
    let nats = Nats::start();
    let setup = Setup::start_with(&format!("execution: {{ nats: {{ url: \"{}\" }} }}\n", nats.url));
    let workers = setup.workers(&nats, 2);
    (setup, Some((nats, workers)))
}

/// 500 writes to 50 secrets (with garbage sent to the audit listener mid-burst): every target
/// exact, far fewer runs than writes, none failed.
fn burst(fleet: bool) {
    let (setup, _fleet) = setup(fleet);
    block_on(async {
        let (_serve, url) = setup.serve("serve.log", "off").await;
        for round in 0..10 {
            setup.write_round(round).await;
            if round == 5 {
                let audit = after(&setup.log("serve.log"), "audit_address=").unwrap();
                let mut garbage = tokio::net::TcpStream::connect(&audit).await.unwrap();
                let lines = b"not json\n{\"type\": 1}\n\xff\xfe\n";
                tokio::io::AsyncWriteExt::write_all(&mut garbage, lines).await.unwrap();
            }
        }
        setup.converged(9, Duration::from_secs(60), "serve.log").await;
        let runs = setup.settled_runs(&url).await;
        assert!(runs.iter().all(|r| r["trigger"] == "audit"), "{runs:?}");
        assert!(
            (1..100).contains(&runs.len()),
            "500 writes coalesce into far fewer runs, got {}",
            runs.len()
        );
        eprintln!("500 writes → {} runs", runs.len());
        let failed: Vec<&Value> = runs.iter().filter(|r| r["status"] != "finished").collect();
        assert!(failed.is_empty(), "{failed:?}");
        if fleet {
            assert_eq!(setup.workers_that_ran_jobs(), 2, "both workers took jobs");
        }
    });
}

#[test]
fn events_a_burst_of_500_writes_ends_exact_in_far_fewer_runs() {
    burst(false);
}

#[test]
fn events_on_the_fleet_a_burst_of_500_writes_ends_exact_in_far_fewer_runs() {
    burst(true);
}

/// AWS down (503 to everything) while two rounds are written, then back: every change lands.
fn target_down(fleet: bool) {
    let (setup, _fleet) = setup(fleet);
    block_on(async {
        let (_serve, url) = setup.serve("serve.log", "off").await;
        setup.write_round(0).await;
        setup.converged(0, Duration::from_secs(60), "serve.log").await;

        // The file target follows meanwhile.
        setup.proxy.every(1, Fault::unavailable());
        setup.write_round(1).await;
        setup.write_round(2).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while setup.file_rounds() != vec![Some(2); SECRETS] {
            assert!(Instant::now() < deadline, "{}", setup.log("serve.log"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(setup.aws_rounds(), vec![Some(0); SECRETS], "nothing reached AWS while down");
        tokio::time::sleep(Duration::from_secs(2)).await;
        setup.proxy.clear();
        setup.converged(2, Duration::from_secs(90), "serve.log").await;
        let runs = setup.runs(&url).await;
        assert!(runs.iter().any(|r| r["trigger"] == "retry"), "{runs:?}");
    });
}

#[test]
fn events_a_target_down_during_writes_gets_every_change_once_back() {
    target_down(false);
}

#[test]
fn events_on_the_fleet_a_target_down_during_writes_gets_every_change_once_back() {
    target_down(true);
}

/// `serve` killed mid-burst; the writes after it reach no listener, so only the restart's
/// reconcile brings them.
fn killed(fleet: bool) {
    let (setup, _fleet) = setup(fleet);
    block_on(async {
        let (mut serve, _) = setup.serve("serve.log", "1h").await;
        for round in 0..4 {
            setup.write_round(round).await;
        }
        serve.kill();
        for round in 4..8 {
            setup.write_round(round).await;
        }
        let (_serve, url) = setup.serve("restarted.log", "1h").await;
        setup.converged(7, Duration::from_secs(90), "restarted.log").await;
        let runs = setup.runs(&url).await;
        assert!(runs.iter().any(|r| r["trigger"] == "reconcile"), "a restart reconciles: {runs:?}");
    });
}

#[test]
fn events_serve_killed_mid_burst_converges_after_a_restart() {
    killed(false);
}

#[test]
fn events_on_the_fleet_serve_killed_mid_burst_converges_after_a_restart() {
    killed(true);
}

#[test]
fn events_on_the_fleet_a_restart_runs_the_events_left_without_a_reconcile() {
    let nats = Nats::start();
    let setup = Setup::start_with(&format!(
        "execution: {{ nats: {{ url: \"{}\", job_timeout_secs: 4 }} }}\n",
        nats.url
    ));
    block_on(async {
        let mut workers = setup.workers(&nats, 2);
        let (mut serve, _) = setup.serve("serve.log", "off").await;
        setup.write_round(4).await;
        setup.converged(4, Duration::from_secs(60), "serve.log").await;

        // No worker: the round's events are recorded, their runs fail (no worker finishes
        // their jobs within 4 s); serve dies. Its successor, with no reconcile, runs them.
        for worker in &mut workers {
            worker.kill();
        }
        setup.write_round(5).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        serve.kill();
        let _workers = setup.workers(&nats, 2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(setup.file_rounds(), vec![Some(4); SECRETS], "nothing ran round 5 yet");
        let (_serve, url) = setup.serve("restarted.log", "off").await;
        setup.converged(5, Duration::from_secs(60), "restarted.log").await;
        let runs = setup.runs(&url).await;
        assert!(runs.iter().all(|r| r["trigger"] != "reconcile"), "{runs:?}");
        assert!(setup.log("restarted.log").contains("had not finished"));
    });
}

/// Secrets in the overlap tests' source.
const BULK: usize = 500;

/// A Vault folder (one level): name → data, read over HTTP.
async fn vault_folder(setup: &Setup, folder: &str) -> BTreeMap<String, Value> {
    use futures_util::StreamExt as _;
    let address = &setup.bao.address;
    let url = format!("{address}/v1/secret/metadata/{folder}?list=true");
    let listed = setup.http.get(url).header("X-Vault-Token", ROOT_TOKEN).send().await.unwrap();
    if listed.status() == reqwest::StatusCode::NOT_FOUND {
        return Default::default();
    }
    let keys: Value = listed.json().await.unwrap();
    let names: Vec<String> = keys["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    futures_util::stream::iter(names)
        .map(|name| async move {
            let url = format!("{address}/v1/secret/data/{folder}/{name}");
            let read = setup.http.get(url).header("X-Vault-Token", ROOT_TOKEN).send().await;
            let body: Value = read.unwrap().json().await.unwrap();
            (name, body["data"]["data"].clone())
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Writes `data` to `secret/<path>`, or deletes it with all its versions (`None`).
async fn vault_set(setup: &Setup, path: String, data: Option<Value>) {
    let address = &setup.bao.address;
    let response = match data {
        Some(data) => {
            let url = format!("{address}/v1/secret/data/{path}");
            setup.http.post(url).json(&json!({ "data": data }))
        }
        None => setup.http.delete(format!("{address}/v1/secret/metadata/{path}")),
    }
    .header("X-Vault-Token", ROOT_TOKEN)
    .send()
    .await
    .unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
}

/// Where the overlap tests keep their merged copies and target.
#[derive(Clone, Copy)]
enum Stores {
    /// An S3 merge store and a Vault target: both refuse stale writes.
    S3AndVault,
    /// A file merge store and an AWS Secrets Manager target: neither does (announcements).
    FilesAndAws,
}

impl Stores {
    fn config(self) -> &'static str {
        match self {
            Stores::S3AndVault => {
                "merge_store: { s3: { bucket: merge, prefix: merged/ } }
targets:
  V: { imports: [app], store: { vault: { path: secret/dst } }, delete: true }
"
            }
            Stores::FilesAndAws => {
                "merge_store: { file: { dir: merged } }
targets:
  V: { imports: [app], store: { aws: { prefix: dst/ } }, delete: true }
"
            }
        }
    }

    /// The target's secrets: name → content.
    async fn target(self, setup: &Setup) -> BTreeMap<String, Value> {
        match self {
            Stores::S3AndVault => vault_folder(setup, "dst").await,
            Stores::FilesAndAws => {
                let all = setup.moto.secretsmanager(
                    "names = [s['Name'] for p in sm.get_paginator('list_secrets').paginate() for s in p['SecretList']]\nout({n: json.loads(sm.get_secret_value(SecretId=n)['SecretString']) for n in names})",
                );
                let all = all.as_object().unwrap().iter();
                all.map(|(n, v)| (n.trim_start_matches("dst/").to_string(), v.clone())).collect()
            }
        }
    }

    /// The merged copies of target `V`: name → content.
    fn merged(self, setup: &Setup) -> BTreeMap<String, Value> {
        match self {
            Stores::S3AndVault => {
                let all = setup.moto.secretsmanager(
                    "s3 = boto3.client('s3', endpoint_url=sm.meta.endpoint_url, region_name='us-east-1')\nkeys = [o['Key'] for p in s3.get_paginator('list_objects_v2').paginate(Bucket='merge', Prefix='merged/targets/V/') for o in p.get('Contents', [])]\nout({k: json.loads(s3.get_object(Bucket='merge', Key=k)['Body'].read()) for k in keys})",
                );
                let all = all.as_object().unwrap().iter();
                all.map(|(key, value)| {
                    let name =
                        key.trim_start_matches("merged/targets/V/").trim_end_matches(".json");
                    (name.to_string(), value.clone())
                })
                .collect()
            }
            Stores::FilesAndAws => {
                let dir = setup.ws.path().join("merged/targets/V");
                let files = std::fs::read_dir(&dir).unwrap();
                files
                    .map(|f| f.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json"))
                    .map(|p| {
                        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                        let text = std::fs::read_to_string(&p).unwrap();
                        (name, serde_json::from_str(&text).unwrap())
                    })
                    .collect()
            }
        }
    }

    /// Wipes the merged copies and the target behind vss's back (the audit entries of `dst`
    /// name no source: no run).
    async fn wipe(self, setup: &Setup) {
        use futures_util::StreamExt as _;
        match self {
            Stores::S3AndVault => {
                setup.moto.secretsmanager("s3 = boto3.client('s3', endpoint_url=sm.meta.endpoint_url, region_name='us-east-1')\nfor p in s3.get_paginator('list_objects_v2').paginate(Bucket='merge', Prefix='merged/targets/V/'):\n    for o in p.get('Contents', []): s3.delete_object(Bucket='merge', Key=o['Key'])\nout(None)");
                futures_util::stream::iter(0..BULK)
                    .for_each_concurrent(16, |i| vault_set(setup, format!("dst/b{i:04}"), None))
                    .await;
            }
            Stores::FilesAndAws => {
                std::fs::remove_dir_all(setup.ws.path().join("merged/targets/V")).unwrap();
                setup.moto.secretsmanager("names = [s['Name'] for p in sm.get_paginator('list_secrets').paginate() for s in p['SecretList']]\nfor n in names: sm.delete_secret(SecretId=n, ForceDeleteWithoutRecovery=True)\nout(None)");
                assert!(self.target(setup).await.is_empty());
            }
        }
    }

    /// Whether the target holds `name`.
    async fn holds(self, setup: &Setup, name: &str) -> bool {
        match self {
            Stores::S3AndVault => setup.bao.get(&format!("dst/{name}")).is_some(),
            Stores::FilesAndAws => {
                let [(_, id), (_, secret), (_, region)] = AWS_TEST_ENV;
                let config = aws_sdk_secretsmanager::Config::builder()
                    .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
                    .region(aws_sdk_secretsmanager::config::Region::new(region))
                    .endpoint_url(&setup.moto.endpoint)
                    .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                        id, secret, None, None, "test",
                    ))
                    .build();
                let client = aws_sdk_secretsmanager::Client::from_conf(config);
                client.get_secret_value().secret_id(format!("dst/{name}")).send().await.is_ok()
            }
        }
    }
}

/// Events while a long full run of their own target goes on (the store the run writes made
/// slow, its merged copies and target wiped so it rewrites 500 secrets): updates, creates and
/// deletes land while the run still runs (the events' jobs do not wait for its jobs), and
/// once both are done the merge store and the target are exact: neither run undid the
/// other's writes, creates or deletes, and no run failed.
fn overlap(fleet: bool, stores: Stores) {
    let nats = fleet.then(Nats::start);
    let execution = match &nats {
        Some(nats) => format!("execution: {{ nats: {{ url: \"{}\" }} }}\n", nats.url),
        None => String::new(),
    };
    let setup = Setup::start_config(|bao, proxy| {
        format!(
            "vault: {{ address: \"{bao}\", auth: {{ token: {{ env: VSS_TEST_VAULT_TOKEN }} }} }}
aws: {{ region: us-east-1, endpoint: \"{proxy}\", force_delete: true }}
sources:
  app: {{ vault: {{ path: secret/src }} }}
{}serve:
  tokens: [\"${{VSS_API_TOKEN}}\"]
{execution}",
            stores.config()
        )
    });
    setup.moto.secretsmanager("boto3.client('s3', endpoint_url=sm.meta.endpoint_url, region_name='us-east-1').create_bucket(Bucket='merge')");
    let _workers = nats.as_ref().map(|nats| setup.workers(nats, 2));
    block_on(async {
        use futures_util::StreamExt as _;
        let (_serve, url) = setup.serve("serve.log", "off").await;
        futures_util::stream::iter(0..BULK)
            .for_each_concurrent(16, |i| {
                vault_set(&setup, format!("src/b{i:04}"), Some(json!({"round": 0, "i": i})))
            })
            .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while stores.target(&setup).await.len() < BULK {
            assert!(Instant::now() < deadline, "seeding: {}", setup.log("serve.log"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        setup.settled_runs(&url).await;

        // Rewritten by the full run, through a store that answers late.
        stores.wipe(&setup).await;
        // (An event's run then takes about 0.15 s with S3 and Vault, 0.55 s with AWS.)
        let (delay, round) = match stores {
            Stores::S3AndVault => (30, 150),
            Stores::FilesAndAws => (150, 450),
        };
        setup.proxy.every(1, Fault::Delay(Duration::from_millis(delay)));
        let response = setup
            .http
            .post(format!("{url}/v1/runs"))
            .bearer_auth(TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let full: Value = response.json().await.unwrap();
        let full_url = format!("{url}/v1/runs/{}", full["id"].as_str().unwrap());
        let status = async || -> String {
            let run = setup.http.get(&full_url).bearer_auth(TOKEN).send().await.unwrap();
            run.json::<Value>().await.unwrap()["status"].as_str().unwrap().to_string()
        };
        // Each round's created secret is looked for two rounds later, while the run still runs.
        let (mut running, mut landed) = (0, 0);
        for k in 0..20 {
            vault_set(&setup, format!("src/b{:04}", k * 3), Some(json!({"round": 1}))).await;
            vault_set(&setup, format!("src/n{k:02}"), Some(json!({"round": 1, "new": k}))).await;
            vault_set(&setup, format!("src/b{:04}", BULK - 1 - k), None).await;
            tokio::time::sleep(Duration::from_millis(round)).await;
            if k > 1 && status().await == "running" {
                running += 1;
                landed += usize::from(stores.holds(&setup, &format!("n{:02}", k - 2)).await);
            }
        }
        let runs = setup.settled_runs(&url).await;
        setup.proxy.clear();
        let failed: Vec<&Value> = runs.iter().filter(|r| r["status"] != "finished").collect();
        assert!(failed.is_empty(), "{failed:?}\n{}", setup.log("serve.log"));
        eprintln!("{landed} of {running} rounds landed while the full run ran");
        assert!(
            running >= 5,
            "the full run is long enough to overlap: {running} rounds\n{}",
            setup.log("serve.log")
        );
        assert!(
            landed + 2 >= running,
            "events wait for the full run: {landed} of {running}\n{}",
            setup.log("serve.log")
        );

        let source = vault_folder(&setup, "src").await;
        assert_eq!(source.len(), BULK, "20 created, 20 deleted");
        let target = stores.target(&setup).await;
        let differ: Vec<(&String, Option<&Value>, Option<&Value>)> = source
            .keys()
            .chain(target.keys())
            .filter(|n| source.get(*n) != target.get(*n))
            .map(|n| (n, source.get(n), target.get(n)))
            .collect();
        assert!(differ.is_empty(), "target differs at {differ:?}\n{}", setup.log("serve.log"));
        let merged = stores.merged(&setup);
        let differ: Vec<&String> = source
            .keys()
            .chain(merged.keys())
            .filter(|n| source.get(*n) != merged.get(*n))
            .collect();
        assert!(differ.is_empty(), "merge store differs at {differ:?}");
    });
}

#[test]
fn events_land_during_a_full_run_of_their_target_and_neither_undoes_the_other() {
    overlap(false, Stores::S3AndVault);
}

#[test]
fn events_on_the_fleet_land_during_a_full_run_of_their_target_and_neither_undoes_the_other() {
    overlap(true, Stores::S3AndVault);
}

#[test]
fn events_land_during_a_full_run_of_an_aws_target_that_has_no_version_checks() {
    overlap(false, Stores::FilesAndAws);
}

#[test]
fn events_on_the_fleet_land_during_a_full_run_of_an_aws_target_that_has_no_version_checks() {
    overlap(true, Stores::FilesAndAws);
}
