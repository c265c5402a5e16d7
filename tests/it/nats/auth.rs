//! Connecting to a server that wants credentials: a token, or an nkey over TLS with a
//! private CA.

use serde_json::json;
use vss_tests::servers::Nats;
use vss_tests::{Workspace, openssl};

use super::logs;

#[test]
fn nats_token_auth_from_files_and_a_clear_error_without_it() {
    const TOKEN: &str = "s3cr3t-nats-token-77";
    let nats = Nats::start_with(&["--auth", TOKEN]);
    let ws = Workspace::new();
    ws.write("nats.token", TOKEN);
    ws.config(&format!(
        "execution: {{ nats: {{ url: \"{}\", token: {{ file: nats.token }} }} }}
source: {{ file: {{ dir: src }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }} }}
",
        nats.url
    ));
    ws.secret("src", "app/db", json!({"password": "p"}));
    let log = ws.path().join("worker-0.log");
    let token_file = ws.path().join("nats.token");
    let _worker = ws.spawn(
        &["worker", "--nats", &nats.url, "--nats-token-file", token_file.to_str().unwrap()],
        &log,
    );
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, logs(&ws));
    assert_eq!(ws.read_secret("out", "app/db"), Some(json!({"password": "p"})));

    let refused = ws.run(&["runs", "--nats", &nats.url, "list"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("cannot connect to NATS at"), "{}", refused.stderr);
    assert!(!refused.stderr.contains(TOKEN) && !logs(&ws).contains(TOKEN));
}

#[test]
fn nats_tls_with_a_private_ca_and_nkey_auth() {
    let ws = Workspace::new();
    let dir = ws.path();
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=vss test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    ws.write("san.ext", "subjectAltName=IP:127.0.0.1\n");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    let user = nkeys::KeyPair::new_user();
    ws.write("user.nk", &user.seed().unwrap());
    let server_conf = ws.write(
        "server.conf",
        &format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\ntls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
            user.public_key(),
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    );
    let nats = Nats::start_with(&["-c", server_conf.to_str().unwrap()]);
    let url = nats.url.replace("nats://", "tls://");
    ws.config(&format!(
        "execution: {{ nats: {{ url: \"{url}\", nkey: {{ file: user.nk }}, tls_ca: ca.pem }} }}
source: {{ file: {{ dir: src }} }}
targets:
  T: {{ store: {{ file: {{ dir: out }} }} }}
"
    ));
    ws.secret("src", "app/db", json!({"password": "p"}));
    let (seed, ca) = (dir.join("user.nk"), dir.join("ca.pem"));
    let args = [
        "worker",
        "--nats",
        &url,
        "--nats-nkey-file",
        seed.to_str().unwrap(),
        "--nats-ca",
        ca.to_str().unwrap(),
    ];
    let _worker = ws.spawn(&args, &dir.join("worker-0.log"));
    let run = ws.pipeline(&[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, logs(&ws));
    assert_eq!(ws.read_secret("out", "app/db"), Some(json!({"password": "p"})));

    // Without the CA the server's certificate is refused.
    let untrusted =
        ws.run(&["runs", "--nats", &url, "--nats-nkey-file", seed.to_str().unwrap(), "list"]);
    assert_eq!(untrusted.code, 2, "{}", untrusted.stdout);
    assert!(untrusted.stderr.contains("cannot connect to NATS"), "{}", untrusted.stderr);
}
