//! The Nix build runner: builds one batch of derivations (a sub-DAG chosen by the scheduler for one builder
//! slot) in ONE supervised `nix-build` child, and turns Nix's `internal-json` log into a state, a log file
//! and a timing per derivation.
//!
//! See `docs/build-runner.md` for the design and its measurements. In short:
//!
//! * **One child per batch.** Nix start-up dominates small builds (200 trivial derivations: 1.5 s as one
//!   `nix-build -j2`, 10.3 s as one `nix-store --realise` each), so a batch is one process.
//! * **An aggregate root.** The child is `nix-build <scratch>/batch.nix --no-out-link` where `batch.nix` is
//!   a tiny derivation depending on every output of every batch derivation (`import "<drv>"`), unique per
//!   run (a nonce), so it is never already valid. Nix 2.8 keeps the goals of command-line arguments alive
//!   until the very end and prints the errors of goals without waiters only at the end; as dependencies of
//!   the aggregate, each batch derivation's activity stops and its error is printed the moment it is done.
//!   That gives a live `Finished` event and a true duration per derivation. No result symlink is created.
//! * **Success is confirmed, not assumed.** A build activity's `stop` also comes when Nix is interrupted.
//!   Nix increments the `done` counter of its "builds" activity (a `resProgress` result) right before the
//!   `stop` of a build that succeeded; a `stop` without that increment and without an error is left
//!   undetermined and settled after the child exits with ONE `nix-store --check-validity` of the
//!   undetermined derivations' outputs (read from the `.drv` files): valid means
//!   `Success { built }` (`built: false`: Nix had nothing to do, i.e. cached), invalid means `Killed` or
//!   `NotBuilt`.
//! * **Logs.** Log lines are streamed line by line into `logs_dir/<drv-hash>/<attempt>.log`. Nix's JSON log
//!   is lossy (invalid UTF-8 becomes U+FFFD, `\r` rewrites the line), so the child also writes its own
//!   byte-exact log (`NIX_LOG_DIR=<scratch>/nixlog`, `compress-build-log = false`); when a build ends that
//!   file replaces the streamed one (a rename). With a Nix daemon the builds happen in the daemon and only
//!   the streamed (UTF-8-sanitised) log exists. Nix's error message, or ours, is appended at the end.
//! * **Supervision.** The child leads its own process group; Nix's builders run in sessions of their own
//!   (`setsid`), which a group kill cannot reach, so stopping a batch is SIGTERM to the group (Nix kills
//!   its builders and exits), then after [`KILL_GRACE`] SIGKILL to the group and to every builder session
//!   seen as a child of Nix. Limits are passed to Nix (`--max-silent-time`, `--timeout`) and enforced by a
//!   watchdog as a backstop; see [`BuildBatch::watchdog_margin`].
//!
//! Observed `internal-json` forms (Debian's Nix 2.8.0; `msg` texts carry ANSI colours, removed first):
//!
//! ```text
//! @nix {"action":"start","id":N,"level":3,"type":105,"fields":["/nix/store/…-x.drv","",1,1],"text":"building '…'"}
//! @nix {"action":"result","id":N,"type":101,"fields":["a log line"]}
//! @nix {"action":"result","id":B,"type":105,"fields":[done,expected,running,failed]}   (B: the type-104 activity)
//! @nix {"action":"stop","id":N}
//! @nix {"action":"msg","level":0,"msg":"error: builder for '…drv' failed with exit code 3"}
//! @nix {"action":"msg","level":0,"msg":"error: builder for '…drv' failed due to signal 9 (Killed)"}
//! @nix {"action":"msg","level":0,"msg":"error: builder for '…drv' failed to produce output path for output 'out' at '…'"}
//! @nix {"action":"msg","level":0,"msg":"error: building of '…drv!*' from .drv file timed out after 2 seconds of silence"}
//! @nix {"action":"msg","level":0,"msg":"error: building of '…drv!*' from .drv file timed out after 3 seconds"}
//! @nix {"action":"msg","level":0,"msg":"error: 1 dependencies of derivation '…drv' failed to build"}
//! @nix {"action":"msg","level":0,"msg":"error: hash mismatch in fixed-output derivation '…drv':\n  specified: …\n  got: …"}
//! @nix {"action":"msg","level":0,"msg":"error: a 'aarch64-darwin' with features {} is required to build '…drv', but I am a 'x86_64-linux' with features {…}"}
//! @nix {"action":"msg","level":0,"msg":"error: build of '…drv', '…drv' failed"}          (summary, ignored)
//! @nix {"action":"msg","level":0,"msg":"error: interrupted by the user"}                   (after SIGTERM)
//! ```
//!
//! The "required system or feature" error aborts the whole child even with `--keep-going` (running builds
//! are interrupted); the runner then records that derivation as [`DrvOutcome::NoBuilder`], its dependents
//! in the batch as [`DrvOutcome::DependencyFailed`], and starts a new child for the rest.
//!
//! Layout: `protocol.rs` parses Nix's `internal-json` lines and error messages; `batch/` drives a batch
//! (`child.rs`: the `nix-build` child and its supervision, `events.rs`: Nix's lines turned into
//! per-derivation state, `settle.rs`: outcomes, logs and the summary); `validity.rs` is the bulk
//! `nix-store --check-validity`. Store path parsing is [`crate::nix::store_path`]; finding and killing
//! Nix's builders and reading the kernel's OOM counter is `crate::nix::process::builders`.

mod batch;
mod protocol;
mod validity;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::Signal;
use serde::{Deserialize, Serialize};

pub use batch::{start_batch, BatchKiller, RunningBatch};
pub use validity::{invalid_outputs, nix_processes_spawned};

use crate::nix::process::ProcessError;
use crate::nix::store_path::{DrvPath, StorePathError};

/// After SIGTERM, how long Nix gets to stop its builders and exit before everything is SIGKILLed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// Nix's messages kept in outcomes are cut to this many bytes.
pub const MESSAGE_LIMIT: usize = 4096;
/// Scratch directories (aggregate expression, Nix's raw logs) live in the logs directory under this prefix.
pub const SCRATCH_PREFIX: &str = ".eka-ci-batch-";

/// One batch for one builder slot: derivations that may depend on each other; their dependencies outside
/// the batch are expected to be valid already (Nix builds them otherwise; see
/// [`BatchSummary::extra_builds`]).
#[derive(Debug, Clone)]
pub struct BuildBatch {
    /// `.drv` store paths; order is kept in [`BatchSummary::reports`]. Duplicates are an error.
    pub drvs: Vec<String>,
    /// The attempt number of each derivation, for its log file name; absent means 1.
    pub attempt_of: HashMap<String, u32>,
    /// `--max-jobs`: concurrent builds of this slot.
    pub max_jobs: u32,
    /// `--max-silent-time`: a build with no output for this long is killed ([`DrvOutcome::TimedOut`]).
    /// Whole seconds, rounded up; zero means no limit.
    pub max_silent: Duration,
    /// `--timeout`: a build running this long is killed ([`DrvOutcome::MaxDuration`]). Whole seconds,
    /// rounded up; zero means no limit.
    pub max_duration: Duration,
    /// `--builders` (Nix's machine specification) for a remote slot; `None` passes `''`: local only,
    /// whatever `nix.conf` says.
    pub builders: Option<String>,
    /// `logs_dir/<drv-hash>/<attempt>.log` is each derivation's log; scratch directories go here too.
    pub logs_dir: PathBuf,
    /// Extra `--option NAME VALUE` pairs (e.g. `system-features` of the slot).
    pub options: Vec<(String, String)>,
    /// Send every log line as a [`BuildEvent::Log`] (they always go to the log file).
    pub live_log: bool,
    /// The watchdog's margin over Nix's own limits. The group is stopped when the whole child printed no
    /// line for `max_silent + margin` (running builds: [`DrvOutcome::TimedOut`]), when one build has run
    /// for `max_duration + margin` ([`DrvOutcome::MaxDuration`]), or when the batch has run for
    /// `max_duration × (depth + ⌈n / max_jobs⌉) + 2 × margin` (Graham's bound for a greedy schedule of `n`
    /// builds of at most `max_duration` on `max_jobs` slots with a longest chain of `depth`; running builds:
    /// [`DrvOutcome::MaxDuration`]). Nix only sees complete lines: a builder that writes without newlines
    /// looks silent to the watchdog but not to Nix.
    pub watchdog_margin: Duration,
    /// Bytes of one derivation's log kept on disk in this attempt (`[builds] max_log_bytes`). When the
    /// streamed log reaches it, writing stops, [`log_cut_marker`] is appended and the build goes on.
    pub max_log_bytes: u64,
}

/// The line appended to a log cut at `max_log_bytes` (it starts with a newline, so it is a line of its
/// own whatever the cut split).
pub fn log_cut_marker(max_log_bytes: u64) -> String {
    format!("\n[eka-ci: log cut at {max_log_bytes} bytes: [builds] max_log_bytes]\n")
}

impl BuildBatch {
    /// A batch with one job, one hour of silence, ten hours per build, local builds only, a 30 s margin.
    pub fn new(drvs: Vec<String>, logs_dir: impl Into<PathBuf>) -> BuildBatch {
        BuildBatch {
            drvs,
            attempt_of: HashMap::new(),
            max_jobs: 1,
            max_silent: Duration::from_secs(3600),
            max_duration: Duration::from_secs(36000),
            builders: None,
            logs_dir: logs_dir.into(),
            options: Vec::new(),
            live_log: false,
            watchdog_margin: Duration::from_secs(30),
            max_log_bytes: 64 * 1024 * 1024,
        }
    }

    fn attempt(&self, drv: &str) -> u32 {
        self.attempt_of.get(drv).copied().unwrap_or(1)
    }
}

/// What the runner reports while a batch runs. Every batch derivation gets exactly one `Finished`; a
/// `Started` precedes it when Nix started a build (again after a restart, see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// Nix started building `drv`, locally (`machine: None`) or on a remote machine.
    Started { drv: String, machine: Option<String> },
    /// One log line (only with [`BuildBatch::live_log`]); lossy UTF-8, as Nix sent it.
    Log { drv: String, line: String },
    /// `drv` is done and its log file is complete. `duration` runs from its `Started` (zero if none).
    Finished { drv: String, outcome: DrvOutcome, duration: Duration },
}

/// How one derivation of a batch ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrvOutcome {
    /// Its outputs are valid. `built: false`: Nix did not build it (already valid: the caller may call it
    /// cached).
    Success { built: bool },
    /// The builder failed (exit code, missing output, hash mismatch, …); `message` is Nix's, bounded.
    Failure { message: String, exit_code: Option<i32> },
    /// Not built because a dependency failed. `dependency` is the root failure when it is known (Nix's
    /// message does not name it; it is found among the failed inputs).
    DependencyFailed { dependency: Option<String> },
    /// No output for `max_silent` (Nix's limit, or the watchdog's).
    TimedOut,
    /// Ran longer than `max_duration` (Nix's limit, or the watchdog's).
    MaxDuration,
    /// The builder died of SIGKILL while the kernel's `oom_kill` counter rose during the batch.
    OutOfMemory,
    /// The builder (or the whole batch) died of a signal: a builder killed by a signal, or a build that was
    /// running when the batch was stopped (`signal`: the one the runner sent last).
    Killed { signal: Option<i32> },
    /// No machine of this slot can build it (system or required features).
    NoBuilder { message: String },
    /// Never started: the batch was stopped (cancelled, watchdog) or Nix gave up before reaching it.
    NotBuilt,
    /// Interrupted by the host's trouble, not its own: the `nix-build` process itself was killed by the
    /// kernel's out-of-memory killer (SIGKILL while the `oom_kill` counter rose). Transient: retried.
    HostTrouble { reason: String },
    /// The remote machine building it was lost (its connection broke: Nix printed `unexpected
    /// end-of-file` or a like error of the connection right before the build's failure). No verdict on
    /// the derivation; `reason` is Nix's words.
    BuilderLost { reason: String },
}

impl DrvOutcome {
    /// True for [`DrvOutcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, DrvOutcome::Success { .. })
    }

    /// A short name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DrvOutcome::Success { built: true } => "built",
            DrvOutcome::Success { built: false } => "cached",
            DrvOutcome::Failure { .. } => "failed",
            DrvOutcome::DependencyFailed { .. } => "dependency-failed",
            DrvOutcome::TimedOut => "timed-out",
            DrvOutcome::MaxDuration => "max-duration",
            DrvOutcome::OutOfMemory => "out-of-memory",
            DrvOutcome::Killed { .. } => "killed",
            DrvOutcome::NoBuilder { .. } => "no-builder",
            DrvOutcome::HostTrouble { .. } => "host-trouble",
            DrvOutcome::BuilderLost { .. } => "builder-lost",
            DrvOutcome::NotBuilt => "not-built",
        }
    }
}

/// The final state of one derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvReport {
    pub drv: String,
    pub outcome: DrvOutcome,
    pub duration: Duration,
    pub attempt: u32,
    /// The log file; `None` for a derivation Nix did not build and had nothing to say about (cached).
    pub log: Option<PathBuf>,
    /// The remote machine that built it, if any.
    pub machine: Option<String>,
}

/// Why the runner stopped a batch itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// [`RunningBatch::kill`] or [`BatchKiller::kill`].
    Killed,
    /// The child printed nothing for `max_silent + margin`.
    SilenceWatchdog,
    /// One build ran for `max_duration + margin`.
    BuildDurationWatchdog { drv: String },
    /// The whole batch exceeded its bound.
    BatchDeadline,
}

/// The end of a batch.
#[derive(Debug, Clone)]
pub struct BatchSummary {
    /// One report per batch derivation, in batch order.
    pub reports: Vec<DrvReport>,
    /// `nix-build` children started (more than one only after a "no builder" abort).
    pub nix_runs: u32,
    /// Set when the runner stopped the batch itself.
    pub stopped: Option<StopReason>,
    /// The last error message Nix printed that names no batch derivation (e.g. an evaluation error).
    pub error: Option<String>,
    /// In a batch on a remote machine: the first error of the connection to it (`cannot build on '…'`,
    /// `unexpected end-of-file`, …), i.e. the machine was unreachable or lost during the batch.
    pub builder_lost: Option<String>,
    /// Stderr lines that were not Nix JSON, plus unattributed errors and warnings; the last 64 KiB.
    pub batch_log: String,
    /// Derivations outside the batch that Nix built (dependencies that were not valid yet).
    pub extra_builds: Vec<String>,
    /// Log files that could not be written (the build itself is unaffected).
    pub log_errors: u32,
    pub elapsed: Duration,
}

impl BatchSummary {
    /// The report of `drv`.
    pub fn report(&self, drv: &str) -> Option<&DrvReport> {
        self.reports.iter().find(|r| r.drv == drv)
    }
}

/// Failures of the runner itself (never of a build: those are [`DrvOutcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("malformed derivation path {path:?}: {reason}")]
    InvalidDrvPath { path: String, reason: StorePathError },
    #[error("malformed store path {path:?}: {reason}")]
    InvalidStorePath { path: String, reason: StorePathError },
    #[error("derivation {0} appears twice in the batch")]
    Duplicate(String),
    #[error("invalid Nix option {name:?}: {reason}")]
    InvalidOption { name: String, reason: &'static str },
    #[error("cannot prepare {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot read the derivation {path}: {source}")]
    ReadDrv { path: String, source: io::Error },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("nix-store --check-validity failed ({termination}): {message}")]
    Validity { termination: String, message: String },
}

/// A builder that died of `signal`: SIGKILL while the kernel's `oom_kill` counter rose during the batch
/// is taken for the OOM killer (heuristic: another process of the machine may have been the victim; Nix
/// only reports "signal 9"). Anything else is [`DrvOutcome::Killed`].
pub fn classify_signal(signal: i32, oom_kills_during_batch: u64) -> DrvOutcome {
    if signal == libc_sigkill() && oom_kills_during_batch > 0 {
        DrvOutcome::OutOfMemory
    } else {
        DrvOutcome::Killed { signal: Some(signal) }
    }
}

fn libc_sigkill() -> i32 {
    Signal::KILL.as_raw()
}

/// `logs_dir/<drv-hash>/<attempt>.log`, after checking the shape of `drv` (so nothing can escape
/// `logs_dir`).
pub fn log_path(logs_dir: &Path, drv: &str, attempt: u32) -> Result<PathBuf, BuildError> {
    let drv_path =
        DrvPath::parse(drv).map_err(|reason| BuildError::InvalidDrvPath { path: drv.to_string(), reason })?;
    Ok(logs_dir.join(drv_path.hash()).join(format!("{attempt}.log")))
}

/// Removes scratch directories left in `logs_dir` by a runner that died (call at start-up, before any
/// batch runs). Returns how many were removed.
pub async fn remove_stale_scratch(logs_dir: &Path) -> usize {
    let dir = logs_dir.to_path_buf();
    smol::unblock(move || {
        let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
        let mut removed = 0;
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX)
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                removed += 1;
            }
        }
        removed
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::protocol::{classify_message, clean_message, MsgKind};
    use super::*;

    const DRV: &str = "/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv";

    #[test]
    fn log_paths() {
        let p = log_path(Path::new("/logs"), DRV, 2).expect("ok");
        assert_eq!(p, Path::new("/logs/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh/2.log"));
        assert!(matches!(
            log_path(Path::new("/logs"), "/nix/store/../x.drv", 1),
            Err(BuildError::InvalidDrvPath { .. })
        ));
    }

    #[test]
    fn signal_classification_uses_the_oom_counter() {
        // Nix's text for an OOM kill is the plain SIGKILL one; the counter decides.
        let text = clean_message(&format!("error: builder for '{DRV}' failed due to signal 9 (Killed)"));
        let Some((_, MsgKind::Signal(sig))) = classify_message(&text) else { panic!("{text}") };
        assert_eq!(classify_signal(sig, 1), DrvOutcome::OutOfMemory);
        assert_eq!(classify_signal(sig, 0), DrvOutcome::Killed { signal: Some(9) });
        assert_eq!(classify_signal(15, 3), DrvOutcome::Killed { signal: Some(15) });
    }
}
