//! A webhook receiver for tests: `webhook_receiver.py`, which verifies every delivery with
//! the Standard Webhooks library (Python's `standardwebhooks`), answers each webhook-id's
//! first attempt 500 and later ones 204, and prints each delivery as a JSON line.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tokio::sync::mpsc;

/// The receiver, on a free port of its own; stopped when dropped.
pub struct WebhookReceiver {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    lines: mpsc::UnboundedReceiver<String>,
}

impl WebhookReceiver {
    /// Starts a receiver verifying with `secret` (`whsec_…`).
    pub fn start(secret: &str) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", include_str!("webhook_receiver.py"), secret])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        out.read_line(&mut first)
            .expect("the receiver's first line");
        let Ok(port) = first.trim().parse() else {
            let _ = child.kill();
            panic!(
                "the webhook receiver did not start: it needs Python's standardwebhooks \
                 (`python3 -m pip install standardwebhooks`; scripts/test installs it)"
            );
        };
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, port, lines }
    }

    /// The next delivery's line (`{"id","attempt","verified","status","body"}`), as
    /// `tokio::io::Lines::next_line` answers: `None` once the receiver has ended.
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        Ok(self.lines.recv().await)
    }

    /// Its URL, at `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deliveries the receiver printed, filed under their `webhook-id`, each attempt in order.
pub type Deliveries = BTreeMap<String, Vec<Value>>;

/// Files the delivery `line` under its `webhook-id` when `keep` takes it, after checking
/// the receiver verified its signature; answers it.
pub fn file_delivery(by_id: &mut Deliveries, line: &str, keep: impl Fn(&Value) -> bool) -> Value {
    let delivery: Value = serde_json::from_str(line).expect("the receiver prints JSON lines");
    assert_eq!(delivery["verified"], true, "{delivery}");
    if keep(&delivery) {
        by_id
            .entry(delivery["id"].as_str().expect("an id").to_owned())
            .or_default()
            .push(delivery.clone());
    }
    delivery
}
