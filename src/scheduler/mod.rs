//! The build scheduler: one loop that decides what to build, where and when, and records every state
//! transition in redb.
//!
//! Everything goes through the loop (`Engine::run`, in `engine/run.rs`): one task on the server's executor
//! owning the in-memory scheduling state, fed by one `async_channel` inbox (requests from
//! [`SchedulerHandle`], events of running batches, retry timers, shutdown). Each turn of the loop handles
//! every message waiting, runs the follow-ups they caused (failure propagation and requeues walk the
//! persisted graph), commits all state changes in one write transaction, answers the callers whose work is
//! now persisted, and dispatches batches.
//!
//! * **Requests.** `request(jobset, roots)` walks the graph down from the roots ([`prepare`]), asks Nix in bulk
//!   which outputs of the never-seen derivations are already valid (one `nix-store --check-validity` per chunk)
//!   and marks those `Cached`; the walk does not descend below a cached or already-built derivation, so the
//!   closure of something valid is never built. The rest become `Queued`, or `Buildable` when every input is
//!   `Completed(Success)` or `Cached`.
//! * **Builders and batches.** A builder ([`builders`]) with a free child slot gets a batch: up to
//!   `seed_cap` ready derivations it should take, in priority order (longest remaining chain of dependents
//!   first, then most direct dependents), plus every queued derivation whose unbuilt inputs are all in the
//!   batch (the sub-DAG above them), up to `batch_cap`. One Nix child builds the batch with `-j max_jobs` and
//!   orders it itself, so a large jobset costs about what one `nix-build` of it costs (see
//!   docs/benchmarks.md, "Engine versus `nix-build`"); priority is honoured between batches, `seed_cap` ready derivations at a time.
//!   A builder runs at most `children_per_builder` (default 2) children; another one starts only while the
//!   running ones leave slots idle (fewer members `Buildable` or `Building` than `max_jobs`), with `-j` =
//!   the idle slots, so a batch's tail overlaps the next batch and the builder runs about `max_jobs` builds.
//! * **Builder health** ([`health`]). A remote builder is probed (`nix store ping`) at start-up and
//!   periodically; only an up builder gets batches. Work it would have taken goes to the next builder of
//!   its route that is up, or waits (`Buildable`) with the reason `no builder available: <builder> down`
//!   shown on the derivation. A builder lost during a batch (Nix's connection to it broke) is marked down
//!   and probed again at once; the derivations it was building are requeued, not failed: the attempt is
//!   closed as `builder-lost`, the history says so, and the failure count is not touched (after
//!   [`LOST_LIMIT`] losses during builds of one derivation it is interrupted, so a build that kills its
//!   builder cannot loop).
//! * **Outcomes.** A first failure is retried once after `retry_backoff`; a second one is final and every
//!   dependent (found through the persisted graph) becomes `TransitiveFailure`, naming the failed dependency.
//!   Time-outs, OOM kills and process deaths interrupt the derivation and block its dependents. A transient
//!   host error (a batch that could not start or read a `.drv` for lack of file descriptors, disk space or a
//!   fork; the `nix-build` process itself killed by the OOM killer) is no verdict: the derivation waits in
//!   `FailedRetry` with a message `transient: <reason>` and is retried after a backoff doubling from
//!   `retry_backoff` up to 10 minutes, without counting as a failure. A rebuild
//!   that succeeds requeues the dependents it had failed or blocked.
//! * **Cancellation.** Pending work no other live owner needs becomes `Interrupted(Cancelled)`. A running batch
//!   is killed only when none of its unfinished derivations is needed by a live owner any more; otherwise it
//!   keeps running (shared derivations keep building) and its derivations nobody needs are cancelled when the
//!   batch ends if they have not finished by then.
//!   Cancelling one derivation ([`SchedulerHandle::cancel_drv`], an administrator's request) ends it whoever
//!   needs it: `Interrupted(Cancelled)` with the given reason, its running batch killed (the batch's other
//!   derivations requeued), and its non-final dependents `Blocked` on it.
//! * **Recovery.** At start the scheduler resumes every live owner from its persisted roots: derivations left
//!   `Building` by a crash are marked `Completed(Success)` if their outputs are now valid, else requeued; so the
//!   final states equal those of an uninterrupted run.
//!
//! Where things are: this file holds the configuration ([`SchedulerConfig`]) and the re-exports;
//! `handle.rs` the public [`SchedulerHandle`], its commands and result types; `state.rs` the persisted
//! state machine; `engine/` the loop's in-memory state and transitions (`engine/mod.rs`), split by concern
//! into requests, follow-ups, dispatch, batch events and inspection, with the one loop in `engine/run.rs`;
//! `prepare.rs` the blocking graph walk; `runner.rs` the scheduler's view of the Nix build runner;
//! `builders.rs` builder routing; `health.rs` builder health and the probes (the loop's side is
//! `engine/health.rs`); `engine/checks.rs` the check slots (repository checks run on the local builder's
//! worker slots).

pub mod builders;
mod engine;
mod handle;
pub mod health;
mod owner;
mod prepare;
mod runner;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ServerConfig;

use builders::{BuilderPool, BuilderSpec};

pub use engine::{start, CheckSlot};
pub use handle::{
    ActiveBuild, DrvStatus, OwnerOutcome, QueueDepth, RootOutcome, SchedulerError, SchedulerHandle,
};
pub use health::{BuilderStatus, Health};
pub use owner::Owner;
pub use state::{
    Attempt, Completion, DrvRecord, DrvState, HistoryEntry, InterruptKind, OwnerRecord, OwnerStatus,
};

/// Builders lost while building one derivation before it is interrupted instead of requeued again.
pub const LOST_LIMIT: u32 = 3;

/// How the scheduler works.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Systems the local machine builds (`system` and `extra-platforms`).
    pub local_systems: Vec<String>,
    /// The local machine's `system-features`.
    pub local_features: Vec<String>,
    /// Concurrent local builds (default: the number of cores).
    pub local_max_jobs: u32,
    /// Concurrent fixed-output builds (default 10).
    pub fod_max_jobs: u32,
    /// Remote builders, from `[[remote_builders]]` or a machines file.
    pub remote_builders: Vec<BuilderSpec>,
    /// A build printing nothing for this long is killed.
    pub max_silent: Duration,
    /// Wall-clock cap of one build.
    pub max_duration: Duration,
    /// Build logs go to `logs_dir/<drv hash>/<attempt>.log`.
    pub logs_dir: PathBuf,
    /// Delay before the one automatic retry of a failed build (default 2 s).
    pub retry_backoff: Duration,
    /// Most derivations in one batch (default 5000).
    pub batch_cap: usize,
    /// Most ready derivations that open a batch, taken in priority order (default 64); the queued
    /// derivations above them that join the batch are bounded by `batch_cap` only. Nix orders the builds of
    /// one batch itself (not by our priority), so this is the granularity at which priority is honoured.
    pub seed_cap: usize,
    /// Most concurrent batch children per builder (default 2; see the module documentation).
    pub children_per_builder: usize,
    /// Bytes of one attempt's log kept on disk (`[builds] max_log_bytes`, default 64 MiB).
    pub max_log_bytes: u64,
    /// Between health probes of an up remote builder (`[builders] health_check_interval_seconds`).
    pub health_interval: Duration,
    /// One health probe's time limit (`[builders] health_check_timeout_seconds`).
    pub health_timeout: Duration,
}

impl SchedulerConfig {
    /// Defaults for a local machine building `systems` with `features`.
    pub fn local(systems: Vec<String>, features: Vec<String>, logs_dir: PathBuf) -> SchedulerConfig {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        SchedulerConfig {
            local_systems: systems,
            local_features: features,
            local_max_jobs: u32::try_from(cores).unwrap_or(1),
            fod_max_jobs: 10,
            remote_builders: Vec::new(),
            max_silent: Duration::from_secs(1200),
            max_duration: Duration::from_secs(14400),
            logs_dir,
            retry_backoff: Duration::from_secs(2),
            batch_cap: 5000,
            seed_cap: 64,
            children_per_builder: 2,
            max_log_bytes: 64 * 1024 * 1024,
            health_interval: Duration::from_secs(60),
            health_timeout: Duration::from_secs(20),
        }
    }

    /// The configuration the server uses: time limits, logs and remote builders from `cfg`, the local
    /// machine as `local` describes it (see [`builders::detect_local`]).
    pub fn from_server(cfg: &ServerConfig, local: builders::LocalNix) -> SchedulerConfig {
        let mut c = SchedulerConfig::local(local.systems, local.features, cfg.logs_dir());
        c.max_silent = Duration::from_secs(cfg.build_no_output_timeout_seconds);
        c.max_duration = Duration::from_secs(cfg.build_max_duration_seconds);
        c.max_log_bytes = cfg.builds.max_log_bytes;
        c.remote_builders = cfg.remote_builders.iter().map(BuilderSpec::remote).collect();
        if let Some(jobs) = cfg.builders.local_max_jobs {
            c.local_max_jobs = jobs;
        }
        c.fod_max_jobs = cfg.builders.fod_max_jobs;
        c.health_interval = Duration::from_secs(cfg.builders.health_check_interval_seconds);
        c.health_timeout = Duration::from_secs(cfg.builders.health_check_timeout_seconds);
        c
    }

    fn pool(&self) -> BuilderPool {
        let mut all = vec![
            BuilderSpec::fixed_output(
                self.local_systems.clone(),
                self.local_features.clone(),
                self.fod_max_jobs,
            ),
            BuilderSpec::local(self.local_systems.clone(), self.local_features.clone(), self.local_max_jobs),
        ];
        all.extend(self.remote_builders.iter().cloned());
        BuilderPool::new(all)
    }
}
