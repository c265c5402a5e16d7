//! Real servers for the tests, each on a port of its own and stopped on drop.
//!
//! Every server picks its own port (port 0, or nats-server's "random port") and the harness
//! learns it from the server itself, so no two servers can race for one port. The one
//! exception is [`Nats::restart`], which must come back on the port its clients know.
//!
//! Binaries come from the project's venv (`$VSS_VENV/bin`, default `~/.cache/vss-venv/bin`,
//! filled by `scripts/test`), else from `PATH`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The path of a server binary installed by `scripts/test`.
pub fn server_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("VSS_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vss-venv")));
    if let Some(bin) = venv.map(|v| v.join("bin").join(name)).filter(|p| p.exists()) {
        return bin;
    }
    PathBuf::from(name)
}

/// A local port that refuses connections: a socket bound to it but never listening, so no
/// server can take the port while this value lives.
pub struct ClosedPort {
    /// The port number.
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    /// Reserves a port on `127.0.0.1`.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let port = socket.local_addr().unwrap().port();
        Self { port, _socket: socket }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// The status code of `GET path` on `127.0.0.1:port`, if the server answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Calls `probe` every 50 ms until it finds something; `None` once `child` has exited or
/// `deadline` has passed.
fn poll<T>(
    child: &mut Child,
    deadline: Instant,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills `child` and reaps it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What a server wrote to `file` so far (empty if unreadable).
/// The TCP ports process `pid` listens on (Linux: its socket inodes in `/proc/<pid>/fd`,
/// matched with the LISTEN entries of `/proc/net/tcp`).
fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let inodes: std::collections::BTreeSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let listening = *state == "0A" && inodes.contains(*inode);
            let port = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            port.filter(|_| listening)
        })
        .collect()
}

fn output(file: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()).into_owned()
}

/// The port of the address that follows `marker` in `text` (`host:PORT` or
/// `scheme://host:PORT`), once the address is written whole (a space, quote or line end after
/// it).
fn port_after(text: &str, marker: &str) -> Option<u16> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == '\x1b')?;
    port_of(&rest[..end])
}

/// The port of `host:PORT` or `scheme://host:PORT`.
fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':')?.1.parse().ok()
}

/// An OpenBao dev server (Vault's API; KV v2 mounted at `secret/`), root token `root`.
pub struct OpenBao {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
}

/// The root token of every test OpenBao.
pub const ROOT_TOKEN: &str = "root";

impl OpenBao {
    /// Starts a dev server on a port of its choosing and waits until it is unsealed and
    /// ready.
    ///
    /// OpenBao accepts port 0 but prints the address as configured (`127.0.0.1:0`), not the
    /// one it bound, and the cluster address it prints is not reliably derived from the
    /// bound port. So the ports come from the kernel: the TCP sockets the process listens on
    /// (`/proc/<pid>/fd` → `/proc/net/tcp`), and the one answering `/v1/sys/health` is the API.
    ///
    /// Its cluster listener takes the API port plus one; when another process holds that port
    /// the server may die at start, so a server that dies is started again (three tries).
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// [`start`](Self::start) with more server configuration (HCL), e.g. an `audit` stanza.
    pub fn start_with_config(hcl: Option<&str>) -> Self {
        let config = hcl.map(|text| {
            let file = tempfile::Builder::new().suffix(".hcl").tempfile().unwrap();
            std::fs::write(file.path(), text).unwrap();
            file
        });
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(config.as_ref().map(|f| f.path())) {
                Ok(bao) => return bao,
                Err(output) => failures.push(output),
            }
        }
        panic!("OpenBao did not start in three tries; its output:\n{}", failures.join("\n---\n"));
    }

    fn try_start(config: Option<&Path>) -> Result<Self, String> {
        let (out, log) =
            (tempfile::NamedTempFile::new().unwrap(), tempfile::NamedTempFile::new().unwrap());
        let mut args = vec![
            "server".to_string(),
            "-dev".to_string(),
            format!("-dev-root-token-id={ROOT_TOKEN}"),
            "-dev-listen-address=127.0.0.1:0".to_string(),
        ];
        args.extend(config.map(|c| format!("-config={}", c.display())));
        let mut child = Command::new(server_bin("bao"))
            .args(&args)
            .stdout(out.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("bao runs (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = child.id();
        let ready = poll(&mut child, deadline, || {
            listening_ports(pid)
                .into_iter()
                .find(|&port| http_status(port, "/v1/sys/health") == Some(200))
        });
        let Some(port) = ready else {
            stop(&mut child);
            return Err(format!("{}\n{}", output(out.path()), output(log.path())));
        };
        Ok(Self { child, address: format!("http://127.0.0.1:{port}") })
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(server_bin("bao"))
            .args(args)
            .env("BAO_ADDR", &self.address)
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("VAULT_ADDR", &self.address)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .output()
            .expect("bao runs")
    }

    /// Writes a KV v2 secret with the real CLI.
    pub fn put(&self, path: &str, value: &Value) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), value.to_string()).unwrap();
        let data = format!("@{}", file.path().display());
        let out = self.cli(&["kv", "put", "-mount=secret", path, &data]);
        assert!(out.status.success(), "bao kv put: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Reads any API path with the real CLI (`bao read`); its `data`, `None` if absent.
    pub fn read(&self, path: &str) -> Option<Value> {
        let out = self.cli(&["read", "-format=json", path]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(v["data"].clone())
    }

    /// Reads a KV v2 secret's data and version with the real CLI.
    pub fn get(&self, path: &str) -> Option<(Value, u64)> {
        let out = self.cli(&["kv", "get", "-format=json", "-mount=secret", path]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Some((v["data"]["data"].clone(), v["data"]["metadata"]["version"].as_u64().unwrap()))
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "bao {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Enables AppRole (once) with a role `vss` allowed everything under `secret/`, whose
    /// tokens live `token_ttl`; returns a role id and a fresh secret id.
    pub fn approle(&self, token_ttl: &str) -> (String, String) {
        let policy = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(policy.path(), "path \"secret/*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\"] }\n").unwrap();
        if !self.cli(&["auth", "list"]).stdout.windows(8).any(|w| w == b"approle/") {
            self.cli_ok(&["auth", "enable", "approle"]);
        }
        self.cli_ok(&["policy", "write", "vss", &policy.path().display().to_string()]);
        self.cli_ok(&[
            "write",
            "auth/approle/role/vss",
            "token_policies=vss",
            &format!("token_ttl={token_ttl}"),
            "token_max_ttl=1h",
        ]);
        let role_id = self.cli_ok(&["read", "-field=role_id", "auth/approle/role/vss/role-id"]);
        let secret_id =
            self.cli_ok(&["write", "-f", "-field=secret_id", "auth/approle/role/vss/secret-id"]);
        (role_id, secret_id)
    }

    /// Limits requests under `secret/` to `rate` per `interval`, answering 429 with
    /// `Retry-After` beyond that (a real rate-limit quota).
    pub fn rate_limit(&self, rate: u32, interval: &str) {
        self.cli_ok(&["write", "sys/quotas/config", "enable_rate_limit_response_headers=true"]);
        self.cli_ok(&[
            "write",
            "sys/quotas/rate-limit/vss-test",
            &format!("rate={rate}"),
            &format!("interval={interval}"),
            "path=secret/",
        ]);
    }

    /// A KV v2 secret's metadata (`current_version`, `custom_metadata`, …).
    pub fn metadata(&self, path: &str) -> Value {
        let out = self.cli_ok(&["kv", "metadata", "get", "-format=json", "-mount=secret", path]);
        serde_json::from_str::<Value>(&out).unwrap()["data"].clone()
    }

    /// Deletes a KV v2 secret with all its versions.
    pub fn delete(&self, path: &str) {
        let out = self.cli(&["kv", "metadata", "delete", "-mount=secret", path]);
        assert!(
            out.status.success(),
            "bao kv metadata delete: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The names under a KV v2 folder (one level).
    pub fn list(&self, folder: &str) -> Vec<String> {
        let out = self.cli(&["kv", "list", "-format=json", "-mount=secret", folder]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A moto server (AWS APIs: Secrets Manager, S3, STS …), driven in tests with boto3 from the
/// same venv.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

/// The credentials every test gives vss and boto3 (moto accepts any).
pub const AWS_TEST_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

impl Moto {
    /// Starts a server on a port of its choosing (werkzeug binds port 0 and logs the port it
    /// got: ` * Running on http://127.0.0.1:PORT`) and waits until it answers.
    pub fn start() -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(server_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("moto_server runs (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = poll(&mut child, deadline, || port_after(&output(log.path()), "Running on "));
        let ready = port.filter(|&port| {
            poll(&mut child, deadline, || {
                (http_status(port, "/moto-api/") == Some(200)).then_some(())
            })
            .is_some()
        });
        let Some(port) = ready else {
            stop(&mut child);
            panic!("moto did not start; its log:\n{}", output(log.path()));
        };
        Self { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// Runs Python with `sm`, a boto3 Secrets Manager client on this server; returns what the
    /// code prints as JSON (`out(value)`).
    pub fn secretsmanager(&self, code: &str) -> Value {
        let script = format!(
            "import boto3, json\nsm = boto3.client('secretsmanager', endpoint_url='{}', region_name='us-east-1')\ndef out(v):\n    print(json.dumps(v, default=str))\n{code}\n",
            self.endpoint
        );
        let output = Command::new(server_bin("python"))
            .args(["-c", &script])
            .envs(AWS_TEST_ENV)
            .output()
            .expect("python runs");
        assert!(output.status.success(), "boto3: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).unwrap();
        if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A small HTTP server for the `http` source: answers `GET` with the queued responses (the
/// last one repeats), `401` when the request lacks `required_header`, and counts requests.
pub struct JsonServer {
    /// `http://127.0.0.1:<port>/secrets.json`.
    pub url: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl JsonServer {
    /// Serves `responses` (status, extra headers, body) in order, the last one forever.
    pub fn start(required_header: &str, responses: Vec<(u16, &str, String)>) -> Self {
        Self::start_delayed(required_header, responses, Duration::ZERO)
    }

    /// [`start`](Self::start), each answer sent `delay` after its request arrived: a source
    /// that is deterministically slow.
    pub fn start_delayed(
        required_header: &str,
        responses: Vec<(u16, &str, String)>,
        delay: Duration,
    ) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (requests.clone(), stop.clone());
        let required = required_header.to_ascii_lowercase();
        let responses: Vec<(u16, String, String)> =
            responses.into_iter().map(|(s, h, b)| (s, h.to_string(), b)).collect();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                std::thread::sleep(delay);
                let n = count.fetch_add(1, Ordering::SeqCst);
                let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let (status, headers, body) = if head.lines().any(|l| l.trim() == required) {
                    responses[n.min(responses.len() - 1)].clone()
                } else {
                    (401, String::new(), "{\"error\": \"unauthorized\"}".to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
            }
        });
        Self { url: format!("http://127.0.0.1:{port}/secrets.json"), requests, stop }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A nats-server with JetStream, its storage in a folder of its own; restartable in place.
pub struct Nats {
    child: Child,
    port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl Nats {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with more server flags, e.g. `["--auth", "token"]`.
    ///
    /// The server picks its port (`-p -1`) and reports it in the ports file it writes to
    /// `--ports_file_dir` (`nats-server_<pid>.ports`: `{"nats": ["nats://127.0.0.1:PORT"]}`,
    /// `tls://` with TLS on).
    pub fn start_with(extra: &[&str]) -> Self {
        let store = tempfile::tempdir().unwrap();
        let ports = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let listen = [
            "-p".into(),
            "-1".into(),
            "--ports_file_dir".into(),
            ports.path().display().to_string(),
        ];
        let mut child = Self::spawn(&listen, store.path(), &extra);
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        let Some(port) = poll(&mut child, deadline, || Self::reported_port(ports.path(), pid))
        else {
            stop(&mut child);
            panic!("nats-server did not report its port");
        };
        let nats = Self { child, port, store, extra, url: format!("nats://127.0.0.1:{port}") };
        nats.wait_ready();
        nats
    }

    /// The client port in the ports file of process `pid` under `dir`, once it is written
    /// whole.
    fn reported_port(dir: &Path, pid: u32) -> Option<u16> {
        let suffix = format!("_{pid}.ports");
        let file = std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
        let ports: Value = serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
        let url = ports["nats"].get(0)?.as_str()?;
        port_of(url)
    }

    fn spawn(listen: &[String], store: &Path, extra: &[String]) -> Child {
        Command::new(server_bin("nats-server"))
            .args(["-js", "-a", "127.0.0.1"])
            .args(listen)
            .args(extra)
            .arg("-sd")
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (scripts/test installs it)")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and storage.
    ///
    /// This is the one place a port is released and bound again: clients reconnect to the URL
    /// they know, so the new server cannot pick another. Another process could take the port
    /// in between, while the new process starts.
    pub fn restart(&mut self) {
        stop(&mut self.child);
        let listen = ["-p".into(), self.port.to_string()];
        self.child = Self::spawn(&listen, self.store.path(), &self.extra);
        self.wait_ready();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::{port_after, port_of};

    #[test]
    fn ports_are_read_from_what_each_server_prints() {
        let bao = r#"  Listener 1: tcp (addr: "127.0.0.1:0", cluster address: "127.0.0.1:40116", tls: "disabled")"#;
        assert_eq!(port_after(bao, "cluster address: \""), Some(40116));
        let moto = " * Running on http://127.0.0.1:33231\n\x1b[33mPress CTRL+C to quit\x1b[0m\n";
        assert_eq!(port_after(moto, "Running on "), Some(33231));
        assert_eq!(port_of("tls://127.0.0.1:35703"), Some(35703));
        // An address still being written is not read yet.
        assert_eq!(port_after(" * Running on http://127.0.0.1:332", "Running on "), None);
        assert_eq!(port_after("nothing yet", "Running on "), None);
    }
}
