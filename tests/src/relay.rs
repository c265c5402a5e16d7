//! A TCP relay with an address of its own, forwarding what connects to a destination named
//! later: lets a server that must connect at start (OpenBao's socket audit device) be started
//! before the process it talks to.

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The relay; its threads end with the test process.
pub struct Relay {
    /// `127.0.0.1:<port>`: where clients connect.
    pub address: String,
    destination: Arc<Mutex<Option<String>>>,
}

impl Relay {
    /// A relay on a port of its own, holding connections until [`Relay::forward_to`].
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let destination: Arc<Mutex<Option<String>>> = Arc::default();
        let to = destination.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let to = to.clone();
                std::thread::spawn(move || relay(client, &to));
            }
        });
        Self { address, destination }
    }

    /// Where connections go from now on (waiting ones included).
    pub fn forward_to(&self, address: &str) {
        *self.destination.lock().unwrap() = Some(address.to_string());
    }
}

fn relay(mut client: TcpStream, destination: &Mutex<Option<String>>) {
    let address = loop {
        if let Some(address) = destination.lock().unwrap().clone() {
            break address;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Ok(mut upstream) = TcpStream::connect(address) else { return };
    // As the client would: no Nagle delay on small writes (an audit line is one).
    let _ = upstream.set_nodelay(true);
    let _ = std::io::copy(&mut client, &mut upstream);
}
