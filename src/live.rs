//! Live build events for `/v1/ws/builds`: the scheduler and the build runner publish state changes and
//! log lines here; each connected client has a subscription and a bounded queue of encoded messages.
//!
//! Publishing never waits: a message goes to each matching client's queue with `try_send`. A client whose
//! queue is full (it does not read) is dropped at once: its queue is closed, which ends its connection,
//! and `eka_ci_ws_clients_dropped_total` counts it. With no client connected publishing costs a lock and
//! a length check, and the runner does not ask Nix for live log lines ([`wanted`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_channel::{Receiver, Sender, TrySendError};

/// Messages queued for one client before it counts as not reading and is dropped.
pub const CLIENT_QUEUE: usize = 256;

/// What one client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Every derivation (`{"all": true}`).
    pub all: bool,
    /// These derivations (`.drv` store paths).
    pub drvs: HashSet<String>,
}

impl Subscription {
    fn matches(&self, drv: &str) -> bool {
        self.all || self.drvs.contains(drv)
    }
}

struct Client {
    id: u64,
    sub: Subscription,
    tx: Sender<Arc<str>>,
}

#[derive(Default)]
struct Hub {
    next: u64,
    clients: Vec<Client>,
}

fn hub() -> MutexGuard<'static, Hub> {
    static HUB: OnceLock<Mutex<Hub>> = OnceLock::new();
    HUB.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether any client is connected (the runner then asks Nix for live log lines).
pub fn wanted() -> bool {
    !hub().clients.is_empty()
}

/// One connected client: its id and the queue its connection writes from. Dropping it unregisters it.
pub struct Registration {
    pub id: u64,
    pub rx: Receiver<Arc<str>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut h = hub();
        let before = h.clients.len();
        h.clients.retain(|c| c.id != self.id);
        if h.clients.len() < before {
            crate::metrics::global().ws_clients.dec();
        }
    }
}

/// Registers a client with an empty subscription.
pub fn register() -> Registration {
    let (tx, rx) = async_channel::bounded(CLIENT_QUEUE);
    let mut h = hub();
    h.next += 1;
    let id = h.next;
    h.clients.push(Client { id, sub: Subscription::default(), tx });
    crate::metrics::global().ws_clients.inc();
    Registration { id, rx }
}

/// Changes client `id`'s subscription (`false`: the client is gone).
pub fn update(id: u64, change: impl FnOnce(&mut Subscription)) -> bool {
    let mut h = hub();
    match h.clients.iter_mut().find(|c| c.id == id) {
        Some(c) => {
            change(&mut c.sub);
            true
        }
        None => false,
    }
}

/// Queues `message` for client `id` only (answers to its own requests), with the same rule as events.
pub fn reply(id: u64, message: &serde_json::Value) {
    let text: Arc<str> = Arc::from(message.to_string());
    deliver(|c| c.id == id, || text.clone());
}

fn deliver(matches: impl Fn(&Client) -> bool, mut text: impl FnMut() -> Arc<str>) {
    let mut h = hub();
    if h.clients.is_empty() {
        return;
    }
    let mut dropped = 0;
    h.clients.retain(|c| {
        if !matches(c) {
            return true;
        }
        match c.tx.try_send(text()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                c.tx.close();
                dropped += 1;
                false
            }
            Err(TrySendError::Closed(_)) => {
                crate::metrics::global().ws_clients.dec();
                false
            }
        }
    });
    let m = crate::metrics::global();
    for _ in 0..dropped {
        m.ws_clients_dropped.inc();
        m.ws_clients.dec();
    }
}

/// Publishes `event` (about derivation `drv`) to every client subscribed to it, encoded once and only
/// when some client wants it.
fn publish(drv: &str, event: impl FnOnce() -> serde_json::Value) {
    let mut event = Some(event);
    let mut encoded: Option<Arc<str>> = None;
    deliver(
        |c| c.sub.matches(drv),
        || {
            encoded
                .get_or_insert_with(|| Arc::from(event.take().map(|f| f()).unwrap_or_default().to_string()))
                .clone()
        },
    );
}

/// `build_state_change`: derivation `drv` entered `state` in attempt `attempt` at `at_ms` (Unix ms).
pub fn state_change(drv: &str, state: &str, attempt: u32, at_ms: u64) {
    publish(drv, || {
        serde_json::json!({
            "type": "build_state_change", "drv": drv, "state": state, "attempt": attempt, "time_ms": at_ms,
        })
    });
}

/// `log_line`: one line of the log of `drv`'s attempt `attempt`.
pub fn log_line(drv: &str, attempt: u32, line: &str) {
    publish(drv, || serde_json::json!({ "type": "log_line", "drv": drv, "attempt": attempt, "line": line }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_only_that_client_and_counts_it() {
        let drv = "/nix/store/00000000000000000000000000000000-live-unit-test.drv";
        let dropped = || crate::metrics::global().ws_clients_dropped.get();
        let before = dropped();
        let slow = register();
        let reader = register();
        let other = register();
        assert!(update(slow.id, |s| _ = s.drvs.insert(drv.to_string())));
        assert!(update(reader.id, |s| _ = s.drvs.insert(drv.to_string())));
        for i in 0..=CLIENT_QUEUE {
            log_line(drv, 1, &format!("line {i}"));
            // The reader keeps up.
            let got = reader.rx.try_recv().expect("the reader's event");
            assert!(got.contains(&format!("\"line {i}\"")), "{got}");
        }
        assert!(slow.rx.is_closed(), "the client that did not read is dropped");
        assert_eq!(slow.rx.len(), CLIENT_QUEUE, "what it had queued stays readable");
        assert!(dropped() > before);
        assert!(!update(slow.id, |_| {}), "and no longer registered");
        assert!(other.rx.is_empty(), "a client subscribed to nothing gets nothing");
        state_change(drv, "success", 1, 7);
        let got: serde_json::Value =
            serde_json::from_str(&reader.rx.try_recv().expect("event")).expect("JSON");
        assert_eq!(
            got,
            serde_json::json!({"type": "build_state_change", "drv": drv, "state": "success", "attempt": 1, "time_ms": 7})
        );
    }
}
