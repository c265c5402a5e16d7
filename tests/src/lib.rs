//! The integration-test harness: builds the `vss` binary once, gives each test its own
//! workspace folder, and runs the binary there as a user would; [`servers`] starts real
//! servers for the stores that talk to one.

pub mod faults;
pub mod gcp;
pub mod github;
pub mod kubernetes;
pub mod otlp;
pub mod relay;
pub mod schema;
pub mod servers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::SystemTime;

use serde_json::Value;

/// The `vss` binary, built (or found up to date) once per test process.
pub fn vss_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "vss-coordinator", "--bin", "vss"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building vss failed");
        // The test binary lives in <target>/<profile>/deps/; vss in <target>/<profile>/.
        let exe = std::env::current_exe().expect("test binary path");
        let bin = exe.parent().and_then(Path::parent).expect("target dir").join("vss");
        assert!(bin.exists(), "vss binary not found at {}", bin.display());
        bin
    })
}

/// What one `vss` invocation did.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Stdout parsed as the JSON report.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

/// A temporary folder holding a config, its sources and its targets.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// A new, empty workspace (removed on drop).
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir") }
    }

    /// The workspace's root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file, creating folders.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes secret `name` of the file store at `store` (a folder relative to the root).
    pub fn secret(&self, store: &str, name: &str, value: Value) {
        self.write(&format!("{store}/{name}.json"), &value.to_string());
    }

    /// Reads secret `name` of the file store at `store`, if it exists.
    pub fn read_secret(&self, store: &str, name: &str) -> Option<Value> {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("{store}/{name}.json"))).ok()?;
        Some(serde_json::from_str(&text).expect("secret files hold JSON"))
    }

    /// Writes the config as `vss.yaml`. Every config is also checked against the JSON Schema
    /// editors use: one the schema refuses must be one `vss validate` refuses too.
    pub fn config(&self, yaml: &str) {
        self.write("vss.yaml", yaml);
        let violations = schema::violations(yaml);
        if !violations.is_empty() {
            let run = self.run(&["validate", "--config", "vss.yaml"]);
            assert_eq!(
                run.code, 2,
                "the schema refuses a config vss accepts: {violations:#?}\n{yaml}"
            );
        }
    }

    /// Runs `vss <args>` in the workspace with a clean environment plus `env`.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(vss_bin());
        cmd.current_dir(self.dir.path())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("GITHUB_STEP_SUMMARY");
        without_otel(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().expect("vss runs"))
    }

    /// Starts `vss <args>` in the background (e.g. a worker), its output in `log`; the
    /// process is killed when the returned handle drops.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Background {
        self.spawn_env(args, log, &[])
    }

    /// [`spawn`](Self::spawn) with `env` added to the environment.
    pub fn spawn_env(&self, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Background {
        let out = std::fs::File::create(log).expect("log file");
        let mut cmd = Command::new(vss_bin());
        without_otel(&mut cmd);
        let child = cmd
            .current_dir(self.dir.path())
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("vss starts");
        Background { child }
    }

    /// Runs `vss <args>` in the workspace.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Runs `vss pipeline --config vss.yaml <args> --output json`.
    pub fn pipeline(&self, args: &[&str]) -> Run {
        let mut all = vec!["pipeline", "--config", "vss.yaml", "--output", "json"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Every file under the workspace with its modification time.
    pub fn mtimes(&self) -> BTreeMap<PathBuf, SystemTime> {
        let mut out = BTreeMap::new();
        let mut pending = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    pending.push(entry.path());
                } else {
                    out.insert(entry.path(), meta.modified().unwrap());
                }
            }
        }
        out
    }

    /// Every file under the workspace with its contents.
    pub fn contents(&self) -> BTreeMap<PathBuf, String> {
        self.mtimes()
            .into_keys()
            .map(|p| {
                let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
                (p, text)
            })
            .collect()
    }
}

/// A `vss` process running in the background; killed on drop.
pub struct Background {
    child: std::process::Child,
}

impl Background {
    /// Sends SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (e.g. after a SIGTERM); its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keeps the test machine's own OpenTelemetry settings away from a `vss` process.
fn without_otel(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(name);
        }
    }
}

/// Runs the `openssl` command in `dir` (test keys); panics with its stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The report entry of `target`.
pub fn target<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["targets"]
        .as_array()
        .expect("targets array")
        .iter()
        .find(|t| t["target"] == name)
        .unwrap_or_else(|| panic!("no target {name} in report: {report:#}"))
}

/// `(added, modified, removed, unchanged)` of a summary.
pub fn counts(summary: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| summary[k].as_u64().unwrap_or_else(|| panic!("summary.{k} in {summary}"));
    (n("added"), n("modified"), n("removed"), n("unchanged"))
}
