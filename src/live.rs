//! Live build events for `/v1/ws/builds`: the scheduler and the build runner publish state changes and
//! log lines here; each connected client has a subscription and a bounded queue of encoded messages.
//!
//! Publishing never waits: a message goes to each matching client's queue with `try_send`. A client whose
//! queue is full (it does not read) is dropped at once: its queue is closed, which ends its connection,
//! and `eka_ci_ws_clients_dropped_total` counts it. With no client connected publishing costs a lock and
//! a length check, and the runner does not ask Nix for live log lines ([`wanted`]).
//!
//! Clients may also follow jobsets (`job`) and commits (`commit`). A state change names the jobsets
//! whose builds needed the derivation (the scheduler's owners); the hub knows each followed jobset's
//! repository and commit ([`note_jobset`]). Followed jobsets touched by a change are marked dirty and a
//! waker is signalled; `web::ws_stats` then recomputes their counts at most once per interval and
//! publishes `job_stats_update` with [`publish_stats`] — a burst of 30,000 changes becomes one message.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use async_channel::{Receiver, Sender, TrySendError};

/// Messages queued for one client before it counts as not reading and is dropped.
pub const CLIENT_QUEUE: usize = 256;
/// Jobsets whose repository and commit the hub remembers while clients are connected.
const JOBSETS_KNOWN: usize = 100_000;

/// What one client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Every derivation (`{"all": true}`).
    pub all: bool,
    /// These derivations (`.drv` store paths).
    pub drvs: HashSet<String>,
    /// These jobsets (`{"job": id}`), by id.
    pub jobs: HashSet<u64>,
    /// These commits (`{"commit": sha}`), each with the repositories (as jobsets record them) whose
    /// jobsets of that commit the client may follow; `None`: any repository.
    pub commits: HashMap<String, Option<HashSet<String>>>,
}

/// Where a jobset comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsetOrigin {
    pub repo: String,
    pub commit: String,
}

impl Subscription {
    /// Whether the client follows jobset `id` (from `origin`, when known); `all` follows every jobset.
    pub fn follows(&self, id: u64, origin: Option<&JobsetOrigin>) -> bool {
        self.all || self.names(id, origin)
    }

    /// Whether the client names jobset `id` in a `job` or `commit` subscription.
    fn names(&self, id: u64, origin: Option<&JobsetOrigin>) -> bool {
        self.jobs.contains(&id)
            || origin.is_some_and(|o| {
                self.commits
                    .get(&o.commit)
                    .is_some_and(|repos| repos.as_ref().is_none_or(|r| r.contains(&o.repo)))
            })
    }

    fn follows_any(&self, jobsets: &[u64], known: &HashMap<u64, JobsetOrigin>) -> bool {
        jobsets.iter().any(|j| self.follows(*j, known.get(j)))
    }

    fn follows_jobsets(&self) -> bool {
        self.all || !self.jobs.is_empty() || !self.commits.is_empty()
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
    /// Repository and commit of jobsets (filled while clients are connected).
    jobsets: HashMap<u64, JobsetOrigin>,
    /// Followed jobsets whose counts may have changed since the last `job_stats_update`.
    dirty: HashSet<u64>,
    /// A change whose jobsets are unknown: every followed jobset may have changed.
    dirty_all: bool,
    /// Wakes the stats task (`web::ws_stats`).
    waker: Option<Sender<()>>,
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
        if h.clients.is_empty() {
            h.jobsets.clear();
            h.dirty.clear();
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

/// Remembers that jobset `id` is of `origin` while clients are connected (called when a jobset is
/// started, and for the jobsets a subscription names).
pub fn note_jobset(id: u64, origin: JobsetOrigin) {
    let mut h = hub();
    if h.clients.is_empty() {
        return;
    }
    if h.jobsets.len() >= JOBSETS_KNOWN && !h.jobsets.contains_key(&id) {
        // Forget those no client follows.
        let Hub { jobsets, clients, .. } = &mut *h;
        jobsets.retain(|j, o| clients.iter().any(|c| c.sub.names(*j, Some(o))));
        if jobsets.len() >= JOBSETS_KNOWN {
            return;
        }
    }
    h.jobsets.insert(id, origin);
}

/// Marks followed jobset `id` as changed (an evaluation committed attributes, or it finished) and
/// wakes the stats task.
pub fn jobset_changed(id: u64) {
    let mut h = hub();
    let followed = {
        let origin = h.jobsets.get(&id);
        h.clients.iter().any(|c| c.sub.follows(id, origin))
    };
    if followed {
        h.dirty.insert(id);
        wake(&h);
    }
}

fn wake(h: &Hub) {
    if let Some(w) = &h.waker {
        let _ = w.try_send(());
    }
}

/// Installs the stats task's waker (a channel of capacity 1: signals coalesce).
pub fn set_waker(waker: Sender<()>) {
    hub().waker = Some(waker);
}

/// Takes the followed jobsets changed since the last call, with their origins when known.
pub fn take_dirty() -> Vec<(u64, Option<JobsetOrigin>)> {
    let mut h = hub();
    let mut ids: HashSet<u64> = std::mem::take(&mut h.dirty);
    if std::mem::take(&mut h.dirty_all) {
        ids.extend(h.clients.iter().flat_map(|c| c.sub.jobs.iter().copied()));
        let Hub { jobsets, clients, .. } = &*h;
        ids.extend(
            jobsets
                .iter()
                .filter(|(j, o)| clients.iter().any(|c| c.sub.follows(**j, Some(o))))
                .map(|(j, _)| *j),
        );
    }
    let mut out: Vec<_> = ids.into_iter().map(|j| (j, h.jobsets.get(&j).cloned())).collect();
    out.sort_by_key(|(j, _)| *j);
    out
}

/// Queues `message` for client `id` only (answers to its own requests), with the same rule as events.
pub fn reply(id: u64, message: &serde_json::Value) {
    let text: Arc<str> = Arc::from(message.to_string());
    deliver(|c, _| c.id == id, || text.clone());
}

fn deliver(
    matches: impl Fn(&Client, &HashMap<u64, JobsetOrigin>) -> bool,
    mut text: impl FnMut() -> Arc<str>,
) {
    let mut h = hub();
    if h.clients.is_empty() {
        return;
    }
    let mut dropped = 0;
    let Hub { clients, jobsets, .. } = &mut *h;
    clients.retain(|c| {
        if !matches(c, jobsets) {
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

/// Publishes `event` to every client `matches` accepts, encoded once and only when some client wants it.
fn publish(
    matches: impl Fn(&Subscription, &HashMap<u64, JobsetOrigin>) -> bool,
    event: impl FnOnce() -> serde_json::Value,
) {
    let mut event = Some(event);
    let mut encoded: Option<Arc<str>> = None;
    deliver(
        |c, known| matches(&c.sub, known),
        || {
            encoded
                .get_or_insert_with(|| Arc::from(event.take().map(|f| f()).unwrap_or_default().to_string()))
                .clone()
        },
    );
}

/// `build_state_change`: derivation `drv` entered `state` in attempt `attempt` at `at_ms` (Unix ms);
/// `jobsets` are the jobsets whose builds needed it (empty: unknown). Followed jobsets among them are
/// marked for a `job_stats_update`.
pub fn state_change(drv: &str, state: &str, attempt: u32, at_ms: u64, jobsets: &[u64]) {
    publish(
        |s, known| s.all || s.drvs.contains(drv) || s.follows_any(jobsets, known),
        || {
            serde_json::json!({
                "type": "build_state_change", "drv": drv, "state": state, "attempt": attempt, "time_ms": at_ms,
            })
        },
    );
    let mut h = hub();
    if !h.clients.iter().any(|c| c.sub.follows_jobsets()) {
        return;
    }
    if jobsets.is_empty() {
        // Unknown owners (a propagated failure, a rebuild): any named jobset may have changed.
        h.dirty_all = true;
    } else {
        let Hub { dirty, clients, jobsets: known, .. } = &mut *h;
        for j in jobsets {
            if clients.iter().any(|c| c.sub.follows(*j, known.get(j))) {
                dirty.insert(*j);
            }
        }
    }
    wake(&h);
}

/// `log_line`: one line of the log of `drv`'s attempt `attempt`.
pub fn log_line(drv: &str, attempt: u32, line: &str) {
    publish(
        |s, _| s.all || s.drvs.contains(drv),
        || serde_json::json!({ "type": "log_line", "drv": drv, "attempt": attempt, "line": line }),
    );
}

/// `job_stats_update`: `message` about jobset `id` (of `origin`, when known), to the clients following it.
pub fn publish_stats(id: u64, origin: Option<&JobsetOrigin>, message: serde_json::Value) {
    publish(|s, _| s.follows(id, origin), || message);
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
        state_change(drv, "success", 1, 7, &[]);
        let got: serde_json::Value =
            serde_json::from_str(&reader.rx.try_recv().expect("event")).expect("JSON");
        assert_eq!(
            got,
            serde_json::json!({"type": "build_state_change", "drv": drv, "state": "success", "attempt": 1, "time_ms": 7})
        );
    }

    #[test]
    fn jobset_and_commit_followers_get_changes_of_their_jobsets_only() {
        let drv = "/nix/store/11111111111111111111111111111111-live-follow-test.drv";
        let (repo, other_repo) = ("file:///live-test/a".to_string(), "file:///live-test/b".to_string());
        let commit = "c".repeat(40);
        let by_job = register();
        let by_commit = register();
        let other_repo_only = register();
        assert!(update(by_job.id, |s| _ = s.jobs.insert(900_001)));
        assert!(update(by_commit.id, |s| _ = s.commits.insert(commit.clone(), Some([repo.clone()].into()))));
        assert!(update(other_repo_only.id, |s| _ =
            s.commits.insert(commit.clone(), Some([other_repo.clone()].into()))));
        note_jobset(900_001, JobsetOrigin { repo: repo.clone(), commit: commit.clone() });
        state_change(drv, "building", 1, 1, &[900_001]);
        assert!(by_job.rx.try_recv().expect("job follower").contains("build_state_change"));
        assert!(by_commit.rx.try_recv().expect("commit follower").contains("build_state_change"));
        assert!(other_repo_only.rx.is_empty(), "a commit follower allowed another repository only");
        assert!(take_dirty()
            .iter()
            .any(|(j, o)| *j == 900_001 && o.as_ref().is_some_and(|o| o.repo == repo)));
        state_change(drv, "success", 1, 2, &[900_002]);
        assert!(by_job.rx.is_empty() && by_commit.rx.is_empty(), "another jobset's change");
    }
}
