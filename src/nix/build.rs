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

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::future;
use futures_lite::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use futures_lite::StreamExt;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smol::process::ChildStderr;
use smol::Unblock;

use crate::nix::drv::{parse_graph_info, DrvGraphInfo};
use crate::nix::process::{
    bound_str, bounded_text, run_captured, strip_ansi, Pipe, ProcessError, RunLimits, SupervisedChild,
    TailBuffer,
};

/// The program that runs a batch.
const NIX_BUILD: &str = "nix-build";
/// The program that checks output validity.
const NIX_STORE: &str = "nix-store";

/// After SIGTERM, how long Nix gets to stop its builders and exit before everything is SIGKILLed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// Nix's messages kept in outcomes are cut to this many bytes.
pub const MESSAGE_LIMIT: usize = 4096;
/// The batch log (lines that are not Nix JSON, unattributed errors and warnings) keeps its last bytes.
const BATCH_LOG_LIMIT: usize = 64 << 10;
/// A single stderr line longer than this is cut (the byte-exact log still has it all).
const MAX_LINE: usize = 4 << 20;
/// The argv bytes of one `nix-store --check-validity` call (ARG_MAX is 2 MiB here, environment included).
const VALIDITY_ARGV_BYTES: usize = 256 << 10;
/// Scratch directories (aggregate expression, Nix's raw logs) live in the logs directory under this prefix.
pub const SCRATCH_PREFIX: &str = ".eka-ci-batch-";
/// The name of the aggregate derivation (its activity and errors are not reported).
const AGGREGATE_NAME: &str = "eka-ci-batch";
/// Nix's base-32 alphabet, used by store path hashes.
const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

// Nix's activity and result types (`src/libutil/logging.hh`).
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
const RES_BUILD_LOG_LINE: u64 = 101;
const RES_PROGRESS: u64 = 105;
const RES_POST_BUILD_LOG_LINE: u64 = 107;

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
    InvalidDrvPath { path: String, reason: &'static str },
    #[error("malformed store path {path:?}: {reason}")]
    InvalidStorePath { path: String, reason: &'static str },
    #[error("derivation {0} appears twice in the batch")]
    Duplicate(String),
    #[error("invalid Nix option {name:?}: {reason}")]
    InvalidOption { name: String, reason: &'static str },
    #[error("cannot prepare {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("nix-store --check-validity failed ({termination}): {message}")]
    Validity { termination: String, message: String },
}

// ---------------------------------------------------------------------------------------------------------
// Store paths and log paths
// ---------------------------------------------------------------------------------------------------------

/// The parts of a store path `<dir>/<hash>-<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePathParts<'a> {
    pub dir: &'a str,
    /// The 32-character base-32 hash.
    pub hash: &'a str,
    pub name: &'a str,
}

/// Checks the shape of a store path: an absolute store directory without `.`/`..` components, a 32-char
/// Nix base-32 hash, a dash, and a name of 1–211 characters from `[A-Za-z0-9+-._?=]` not starting with a
/// dot. No filesystem access.
pub fn parse_store_path(path: &str) -> Result<StorePathParts<'_>, &'static str> {
    let (dir, base) = path.rsplit_once('/').ok_or("not an absolute path")?;
    if !dir.starts_with('/') || dir.len() < 2 {
        return Err("not under an absolute store directory");
    }
    if dir[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("the store directory is not normalised");
    }
    if base.len() < 34 || !base.is_char_boundary(32) || base.as_bytes()[32] != b'-' {
        return Err("no 32-character hash followed by '-'");
    }
    let (hash, name) = (&base[..32], &base[33..]);
    if !hash.bytes().all(|b| NIX_BASE32.contains(&b)) {
        return Err("the hash is not Nix base-32");
    }
    if name.is_empty() || name.len() > 211 || name.starts_with('.') {
        return Err("bad name length or leading dot");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)) {
        return Err("forbidden character in the name");
    }
    Ok(StorePathParts { dir, hash, name })
}

/// Checks a `.drv` store path; returns its parts.
pub fn parse_drv_path(drv: &str) -> Result<StorePathParts<'_>, BuildError> {
    let parts = parse_store_path(drv)
        .map_err(|reason| BuildError::InvalidDrvPath { path: drv.to_string(), reason })?;
    if !parts.name.ends_with(".drv") || parts.name.len() == 4 {
        return Err(BuildError::InvalidDrvPath { path: drv.to_string(), reason: "does not end in .drv" });
    }
    Ok(parts)
}

/// `logs_dir/<drv-hash>/<attempt>.log`, after checking the shape of `drv` (so nothing can escape
/// `logs_dir`).
pub fn log_path(logs_dir: &Path, drv: &str, attempt: u32) -> Result<PathBuf, BuildError> {
    let parts = parse_drv_path(drv)?;
    Ok(logs_dir.join(parts.hash).join(format!("{attempt}.log")))
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

// ---------------------------------------------------------------------------------------------------------
// Output validity
// ---------------------------------------------------------------------------------------------------------

thread_local! {
    static NIX_SPAWNS: Cell<u64> = const { Cell::new(0) };
}

/// Nix processes this module started on the current thread (the daemon's executor is single-threaded, so
/// in the daemon this is a process-wide count). For tests and diagnostics.
pub fn nix_processes_spawned() -> u64 {
    NIX_SPAWNS.with(|c| c.get())
}

fn count_spawn() {
    NIX_SPAWNS.with(|c| c.set(c.get() + 1));
}

/// Groups paths so that each group's argv stays under `max_bytes` (every path counts its length plus a NUL).
fn chunk_paths<'a>(paths: &[&'a str], max_bytes: usize) -> Vec<Vec<&'a str>> {
    let mut chunks: Vec<Vec<&str>> = Vec::new();
    let mut size = 0usize;
    for p in paths {
        let n = p.len() + 1;
        match chunks.last_mut() {
            Some(c) if size + n <= max_bytes => c.push(p),
            _ => {
                chunks.push(vec![p]);
                size = 0;
            }
        }
        size += n;
    }
    chunks
}

/// The paths among `paths` that are not valid in the store: ONE `nix-store --check-validity
/// --print-invalid` per chunk of at most 256 KiB of arguments, never one process per path. Paths must be
/// well-formed store paths (checked first).
pub async fn invalid_outputs(paths: &[String]) -> Result<HashSet<String>, BuildError> {
    let mut unique: Vec<&str> = Vec::with_capacity(paths.len());
    let mut seen = HashSet::new();
    for p in paths {
        parse_store_path(p).map_err(|reason| BuildError::InvalidStorePath { path: p.clone(), reason })?;
        if seen.insert(p.as_str()) {
            unique.push(p);
        }
    }
    let mut invalid = HashSet::new();
    for chunk in chunk_paths(&unique, VALIDITY_ARGV_BYTES) {
        let mut cmd = std::process::Command::new(NIX_STORE);
        cmd.arg("--check-validity").arg("--print-invalid").args(&chunk);
        let limits = RunLimits { timeout: Some(Duration::from_secs(300)), ..RunLimits::default() };
        count_spawn();
        let out = run_captured(cmd, &limits).await?;
        if !out.termination.success() {
            return Err(BuildError::Validity {
                termination: format!("{:?}", out.termination),
                message: bounded_text(&out.stderr, MESSAGE_LIMIT),
            });
        }
        let wanted: HashSet<&str> = chunk.iter().copied().collect();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if wanted.contains(line) {
                invalid.insert(line.to_string());
            }
        }
    }
    Ok(invalid)
}

// ---------------------------------------------------------------------------------------------------------
// internal-json parsing
// ---------------------------------------------------------------------------------------------------------

/// One stderr line of `nix-build --log-format internal-json`.
#[derive(Debug, Clone, PartialEq)]
enum NixLine {
    Start {
        id: u64,
        kind: u64,
        fields: Vec<Value>,
    },
    Stop {
        id: u64,
    },
    Result {
        id: u64,
        kind: u64,
        fields: Vec<Value>,
    },
    Msg {
        level: u64,
        msg: String,
    },
    /// A well-formed JSON line with an action we do not use (`setPhase`, future actions, …).
    Ignored,
    /// Anything else: kept as text of the batch log.
    Text(String),
}

#[derive(Deserialize)]
struct RawLine {
    action: String,
    #[serde(default)]
    id: u64,
    #[serde(default, rename = "type")]
    kind: u64,
    #[serde(default)]
    level: u64,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    fields: Vec<Value>,
}

/// Parses one line (without its newline). Lines without the `@nix ` prefix, and prefixed lines that are
/// not a JSON object of the expected shape, are [`NixLine::Text`]; unknown actions are ignored.
fn parse_line(line: &[u8]) -> NixLine {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(json) = line.strip_prefix(b"@nix ") else {
        return NixLine::Text(String::from_utf8_lossy(line).into_owned());
    };
    let raw: RawLine = match serde_json::from_slice(json) {
        Ok(r) => r,
        Err(_) => return NixLine::Text(String::from_utf8_lossy(line).into_owned()),
    };
    match raw.action.as_str() {
        "start" => NixLine::Start { id: raw.id, kind: raw.kind, fields: raw.fields },
        "stop" => NixLine::Stop { id: raw.id },
        "result" => NixLine::Result { id: raw.id, kind: raw.kind, fields: raw.fields },
        "msg" => NixLine::Msg { level: raw.level, msg: raw.msg.unwrap_or_default() },
        _ => NixLine::Ignored,
    }
}

fn field_str(fields: &[Value], i: usize) -> Option<&str> {
    fields.get(i).and_then(Value::as_str)
}

// ---------------------------------------------------------------------------------------------------------
// Message classification
// ---------------------------------------------------------------------------------------------------------

/// What an error message says about the derivation it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgKind {
    /// `builder for '…' failed with exit code N`
    ExitCode(i32),
    /// `builder for '…' failed due to signal N (Name)`
    Signal(i32),
    /// `building of '…!*' from .drv file timed out after N seconds of silence`
    Silence,
    /// `building of '…!*' from .drv file timed out after N seconds`
    Duration,
    /// `N dependencies of derivation '…' failed to build`
    DependenciesFailed,
    /// `a 'system' with features {…} is required to build '…', but I am a '…' with features {…}`
    NoBuilder,
    /// `build of '…', '…' failed`: the final summary, ignored.
    Summary,
    /// Any other error naming a derivation (missing output, hash mismatch, …).
    Other,
}

/// Removes ANSI escapes, surrounding blanks and a leading `error: `.
fn clean_message(msg: &str) -> String {
    let text = strip_ansi(msg);
    let text = text.trim();
    text.strip_prefix("error:").map(str::trim_start).unwrap_or(text).to_string()
}

/// The quoted segments `'…'` of a message, in order.
fn quoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('\'').skip(1).step_by(2)
}

/// A quoted `.drv` path, without a `!outputs` suffix.
fn as_drv(segment: &str) -> Option<&str> {
    let path = segment.split('!').next().unwrap_or(segment);
    (path.starts_with('/') && path.ends_with(".drv")).then_some(path)
}

/// Classifies a cleaned error message (see [`clean_message`]) and returns the derivation it is about.
fn classify_message(text: &str) -> Option<(String, MsgKind)> {
    if text.starts_with("build of ") && text.ends_with(" failed") {
        let drv = quoted(text).find_map(as_drv)?;
        return Some((drv.to_string(), MsgKind::Summary));
    }
    if let Some(rest) = text.strip_prefix("builder for '") {
        let (drv, tail) = rest.split_once('\'')?;
        let drv = as_drv(drv)?.to_string();
        let tail = tail.trim_start();
        if let Some(code) = tail.strip_prefix("failed with exit code ") {
            let code = code.split(|c: char| !c.is_ascii_digit() && c != '-').next().unwrap_or("");
            return Some((drv, code.parse().map(MsgKind::ExitCode).unwrap_or(MsgKind::Other)));
        }
        if let Some(sig) = tail.strip_prefix("failed due to signal ") {
            let sig = sig.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
            return Some((drv, sig.parse().map(MsgKind::Signal).unwrap_or(MsgKind::Other)));
        }
        return Some((drv, MsgKind::Other));
    }
    if text.starts_with("building of '") && text.contains(" timed out after ") {
        let drv = quoted(text).find_map(as_drv)?.to_string();
        let kind = if text.trim_end().ends_with("seconds of silence") {
            MsgKind::Silence
        } else {
            MsgKind::Duration
        };
        return Some((drv, kind));
    }
    if text.contains(" dependencies of derivation '") && text.ends_with("failed to build") {
        let drv = quoted(text).find_map(as_drv)?.to_string();
        return Some((drv, MsgKind::DependenciesFailed));
    }
    if text.starts_with("a '") {
        if let Some((_, rest)) = text.split_once(" is required to build '") {
            let drv = rest.split('\'').next().and_then(as_drv)?.to_string();
            return Some((drv, MsgKind::NoBuilder));
        }
    }
    let drv = quoted(text).find_map(as_drv)?.to_string();
    Some((drv, MsgKind::Other))
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

/// The `oom_kill` counter of `/proc/vmstat` (Linux ≥ 4.13), if readable.
fn read_oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    parse_oom_kills(&text)
}

fn parse_oom_kills(vmstat: &str) -> Option<u64> {
    vmstat.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------------------
// Processes outside the group: Nix's builders
// ---------------------------------------------------------------------------------------------------------

/// `(ppid, pgrp, session)` from `/proc/<pid>/stat` (fields after the last `)`).
fn stat_ids(stat: &str) -> Option<(i32, i32, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Every process as `(pid, ppid, pgrp, session)`. Blocking (reads `/proc`).
fn scan_processes() -> Vec<(i32, i32, i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if let Some((ppid, pgrp, sid)) = stat_ids(&stat) {
            out.push((pid, ppid, pgrp, sid));
        }
    }
    out
}

/// The sessions of the leader's children that left its session (Nix's local builders call `setsid`).
/// Blocking.
fn builder_sessions(leader: i32) -> HashSet<i32> {
    let procs = scan_processes();
    let Some(own) = procs.iter().find(|p| p.0 == leader).map(|p| p.3) else { return HashSet::new() };
    procs.iter().filter(|p| p.1 == leader && p.3 != own && p.3 > 1).map(|p| p.3).collect()
}

/// SIGKILL to every process of the given sessions. Blocking.
fn kill_sessions(sessions: &HashSet<i32>) {
    if sessions.is_empty() {
        return;
    }
    for (pid, _, _, sid) in scan_processes() {
        if sessions.contains(&sid) {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The aggregate expression
// ---------------------------------------------------------------------------------------------------------

/// The aggregate root: a trivial derivation depending on every output of every derivation of `drvs`.
/// `drvs` must have passed [`parse_drv_path`] (their characters need no escaping in a Nix string).
fn batch_expression(drvs: &[&str], nonce: &str) -> String {
    let mut s = String::with_capacity(256 + drvs.iter().map(|d| d.len() + 6).sum::<usize>());
    s.push_str("# Written by eka-ci's build runner: builds the listed derivations.\nlet\n  drvs = [\n");
    for d in drvs {
        s.push_str("    \"");
        s.push_str(d);
        s.push_str("\"\n");
    }
    s.push_str("  ];\nin derivation {\n  name = \"");
    s.push_str(AGGREGATE_NAME);
    s.push_str("\";\n  system = builtins.currentSystem;\n");
    s.push_str("  builder = \"/bin/sh\";\n  args = [ \"-c\" \"echo > $out\" ];\n");
    s.push_str("  preferLocalBuild = true;\n  allowSubstitutes = false;\n");
    s.push_str("  nonce = \"");
    s.push_str(nonce);
    s.push_str("\";\n  deps = builtins.concatMap (p: (import p).all) drvs;\n}\n");
    s
}

/// True for the runner's own aggregate derivation.
fn is_aggregate(drv: &str) -> bool {
    drv.strip_suffix(".drv").and_then(|d| d.strip_suffix(AGGREGATE_NAME)).is_some_and(|d| d.ends_with('-'))
}

fn unique_nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos)
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

// ---------------------------------------------------------------------------------------------------------
// Lines from the child
// ---------------------------------------------------------------------------------------------------------

/// Reads one line into `buf` (without its newline), keeping at most `max` bytes of it. Returns `false` at
/// the end of input. Cancel-safe: a partial line stays in `buf` (and `overflow`) for the next call.
async fn read_line<R: futures_lite::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    overflow: &mut bool,
    max: usize,
) -> io::Result<bool> {
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty() || std::mem::take(overflow));
        }
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        if chunk.len() > room {
            *overflow = true;
        }
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        r.consume(used);
        if done {
            *overflow = false;
            return Ok(true);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------------------

/// A handle that stops a running batch from anywhere (cheap to clone).
#[derive(Debug, Clone)]
pub struct BatchKiller {
    tx: async_channel::Sender<()>,
}

impl BatchKiller {
    /// Asks the runner to stop the batch: SIGTERM to Nix, SIGKILL after [`KILL_GRACE`]. Finished builds
    /// keep their outcomes; running ones become [`DrvOutcome::Killed`], the rest [`DrvOutcome::NotBuilt`].
    pub fn kill(&self) {
        let _ = self.tx.try_send(());
    }
}

/// A batch whose `nix-build` child is running. Drive it with [`RunningBatch::wait`]; dropping it (or the
/// `wait` future) kills the child's group and Nix's builders at once.
pub struct RunningBatch {
    driver: Driver,
    run: Option<ChildRun>,
    kill_tx: async_channel::Sender<()>,
    kill_rx: async_channel::Receiver<()>,
}

impl std::fmt::Debug for RunningBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBatch")
            .field("drvs", &self.driver.states.len())
            .field("pid", &self.pid())
            .finish()
    }
}

impl RunningBatch {
    /// The current `nix-build` child's pid (also its process group id), if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.run.as_ref().map(|r| r.child.pid())
    }

    /// A handle to stop the batch while [`RunningBatch::wait`] runs.
    pub fn killer(&self) -> BatchKiller {
        BatchKiller { tx: self.kill_tx.clone() }
    }

    /// Stops the batch (see [`BatchKiller::kill`]); takes effect in [`RunningBatch::wait`].
    pub fn kill(&self) {
        self.killer().kill();
    }

    /// Runs the batch to its end (restarting Nix after a "no builder" abort) and reports every derivation.
    pub async fn wait(mut self) -> BatchSummary {
        let kill_rx = self.kill_rx.clone();
        while let Some(mut run) = self.run.take() {
            let rerun = self.driver.drive(&mut run, &kill_rx).await;
            self.driver.remove_scratch(run.scratch.clone()).await;
            drop(run);
            if rerun.is_empty() || self.driver.stopped.is_some() {
                break;
            }
            match self.driver.spawn(&rerun).await {
                Ok(next) => self.run = Some(next),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot restart the batch");
                    self.driver.error = Some(e.to_string());
                }
            }
        }
        self.driver.finish_rest().await;
        self.driver.summary()
    }
}

/// Starts a batch: checks the paths, reads every `.drv` (outputs and inputs), writes the aggregate
/// expression to a scratch directory in `logs_dir` and spawns `nix-build`. A derivation whose `.drv` cannot
/// be read is reported at once as [`DrvOutcome::Failure`] (its dependents in the batch as
/// [`DrvOutcome::DependencyFailed`]) and not given to Nix.
pub async fn start_batch(
    batch: BuildBatch,
    events: async_channel::Sender<BuildEvent>,
) -> Result<RunningBatch, BuildError> {
    let mut seen = HashSet::new();
    let mut logs = Vec::with_capacity(batch.drvs.len());
    for d in &batch.drvs {
        logs.push(log_path(&batch.logs_dir, d, batch.attempt(d))?);
        if !seen.insert(d.as_str()) {
            return Err(BuildError::Duplicate(d.clone()));
        }
    }
    for (name, value) in &batch.options {
        if name.is_empty() || name.starts_with('-') || name.contains(char::is_whitespace) {
            return Err(BuildError::InvalidOption { name: name.clone(), reason: "not an option name" });
        }
        if name.contains('\0') || value.contains('\0') {
            return Err(BuildError::InvalidOption { name: name.clone(), reason: "contains NUL" });
        }
    }
    if let Some(b) = &batch.builders {
        if b.contains('\0') {
            return Err(BuildError::InvalidOption { name: "builders".into(), reason: "contains NUL" });
        }
    }
    let logs_dir = batch.logs_dir.clone();
    smol::unblock(move || {
        std::fs::create_dir_all(&logs_dir).map_err(|source| BuildError::Io { path: logs_dir, source })
    })
    .await?;

    let paths = batch.drvs.clone();
    let infos: Vec<Result<DrvGraphInfo, String>> = smol::unblock(move || {
        paths
            .iter()
            .map(|p| match std::fs::read(p) {
                Ok(bytes) => parse_graph_info(&bytes).map_err(|e| format!("malformed derivation {p}: {e}")),
                Err(e) => Err(format!("cannot read derivation {p}: {e}")),
            })
            .collect()
    })
    .await;

    let mut driver = Driver::new(batch, logs, infos, events);
    let (unreadable, excluded) = driver.unreadable();
    let to_build: Vec<usize> = (0..driver.states.len()).filter(|i| !excluded.contains(i)).collect();
    let run = if to_build.is_empty() { None } else { Some(driver.spawn(&to_build).await?) };
    for (idx, message) in unreadable {
        driver.finish(idx, DrvOutcome::Failure { message, exit_code: None }, None).await;
    }
    for idx in excluded.iter().copied() {
        if driver.states[idx].finished.is_none() {
            let dependency = driver.failed_input(idx);
            driver.finish(idx, DrvOutcome::DependencyFailed { dependency }, None).await;
        }
    }
    let (kill_tx, kill_rx) = async_channel::unbounded();
    Ok(RunningBatch { driver, run, kill_tx, kill_rx })
}

/// One derivation of the batch.
struct DrvState {
    path: String,
    attempt: u32,
    log: PathBuf,
    /// `None` when the .drv could not be read (the error is in `read_error`).
    info: Option<DrvGraphInfo>,
    read_error: Option<String>,
    inputs: Vec<usize>,
    dependents: Vec<usize>,
    machine: Option<String>,
    /// When the current build activity started.
    started: Option<Instant>,
    ever_started: bool,
    /// The open activity id in the current run.
    activity: Option<u64>,
    log_file: Option<Unblock<File>>,
    /// An outcome from Nix, applied when the activity stops (so the log is complete).
    verdict: Option<DrvOutcome>,
    /// The message to append to the log.
    message: Option<String>,
    /// The outcome if the output turns out invalid after the runner stopped the batch.
    kill_default: Option<DrvOutcome>,
    /// Its activity ended without a confirmation or an error in the current run.
    interrupted: bool,
    finished: Option<(DrvOutcome, Duration, bool)>,
}

impl DrvState {
    /// A batch member that has not started.
    fn new(
        path: String,
        attempt: u32,
        log: PathBuf,
        info: Option<DrvGraphInfo>,
        read_error: Option<String>,
    ) -> DrvState {
        DrvState {
            path,
            attempt,
            log,
            info,
            read_error,
            inputs: Vec::new(),
            dependents: Vec::new(),
            machine: None,
            started: None,
            ever_started: false,
            activity: None,
            log_file: None,
            verdict: None,
            message: None,
            kill_default: None,
            interrupted: false,
            finished: None,
        }
    }
}

/// One `nix-build` child.
struct ChildRun {
    child: SupervisedChild,
    scratch: PathBuf,
    raw_logs: PathBuf,
    stderr: Option<BufReader<ChildStderr>>,
    activities: HashMap<u64, Option<usize>>,
    builds_act: Option<u64>,
    builds_done: u64,
    accounted: u64,
    last_output: Instant,
    stop_at: Option<Instant>,
    hard_killed: bool,
    sessions: HashSet<i32>,
    no_builder: bool,
    /// Batch derivations given to this child.
    members: Vec<usize>,
    reaped: bool,
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        if !self.reaped {
            // Cancelled: Nix cannot be asked nicely any more. Its builders are in sessions of their own.
            self.sessions.extend(builder_sessions(self.child.pid() as i32));
            self.child.kill_group();
            kill_sessions(&self.sessions);
        }
    }
}

struct Driver {
    batch: BuildBatch,
    states: Vec<DrvState>,
    index: HashMap<String, usize>,
    events: async_channel::Sender<BuildEvent>,
    started: Instant,
    deadline: Option<Instant>,
    oom_at_start: Option<u64>,
    nix_runs: u32,
    stopped: Option<StopReason>,
    /// The last signal the runner sent to the group.
    signal_sent: Option<i32>,
    /// The child's own death by a signal nobody here sent.
    child_signal: Option<i32>,
    error: Option<String>,
    batch_log: TailBuffer,
    extra_builds: Vec<String>,
    external_failures: HashSet<String>,
    /// Dependencies outside the batch that no machine of the slot can build.
    external_no_builder: HashSet<String>,
    log_errors: u32,
    line: Vec<u8>,
    /// `DependencyFailed` derivations waiting for an input's activity to stop.
    deferred: Vec<usize>,
}

impl Driver {
    fn new(
        batch: BuildBatch,
        logs: Vec<PathBuf>,
        infos: Vec<Result<DrvGraphInfo, String>>,
        events: async_channel::Sender<BuildEvent>,
    ) -> Driver {
        let index: HashMap<String, usize> =
            batch.drvs.iter().enumerate().map(|(i, d)| (d.clone(), i)).collect();
        let mut states: Vec<DrvState> = batch
            .drvs
            .iter()
            .zip(logs)
            .zip(infos)
            .map(|((path, log), info)| {
                let (info, read_error) = match info {
                    Ok(i) => (Some(i), None),
                    Err(e) => (None, Some(e)),
                };
                DrvState::new(path.clone(), batch.attempt(path), log, info, read_error)
            })
            .collect();
        for i in 0..states.len() {
            let inputs: Vec<usize> = states[i]
                .info
                .as_ref()
                .map(|info| info.input_drvs.iter().filter_map(|(p, _)| index.get(p).copied()).collect())
                .unwrap_or_default();
            for &j in &inputs {
                states[j].dependents.push(i);
            }
            states[i].inputs = inputs;
        }
        let deadline = batch_deadline(&batch, &states);
        Driver {
            batch,
            states,
            index,
            events,
            started: Instant::now(),
            deadline,
            oom_at_start: read_oom_kills(),
            nix_runs: 0,
            stopped: None,
            signal_sent: None,
            child_signal: None,
            error: None,
            batch_log: TailBuffer::new(BATCH_LOG_LIMIT),
            extra_builds: Vec::new(),
            external_failures: HashSet::new(),
            external_no_builder: HashSet::new(),
            log_errors: 0,
            line: Vec::new(),
            deferred: Vec::new(),
        }
    }

    /// Unreadable derivations with their errors, and everything that cannot be built because of them
    /// (themselves and their dependents in the batch).
    fn unreadable(&self) -> (Vec<(usize, String)>, HashSet<usize>) {
        let bad: Vec<(usize, String)> = self
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.read_error.clone().map(|e| (i, e)))
            .collect();
        let excluded = self.dependents_closure(bad.iter().map(|b| b.0));
        (bad, excluded)
    }

    /// `roots` and everything in the batch that depends on them.
    fn dependents_closure(&self, roots: impl Iterator<Item = usize>) -> HashSet<usize> {
        let mut out: HashSet<usize> = HashSet::new();
        let mut stack: Vec<usize> = roots.collect();
        while let Some(i) = stack.pop() {
            if out.insert(i) {
                stack.extend(self.states[i].dependents.iter().copied());
            }
        }
        out
    }

    /// Writes the aggregate for `members` and starts `nix-build`.
    async fn spawn(&mut self, members: &[usize]) -> Result<ChildRun, BuildError> {
        let scratch = self.batch.logs_dir.join(format!("{SCRATCH_PREFIX}{}", unique_nonce()));
        let raw_logs = scratch.join("nixlog");
        let drvs: Vec<&str> = members.iter().map(|&i| self.states[i].path.as_str()).collect();
        let expr = batch_expression(&drvs, &unique_nonce());
        let file = scratch.join("batch.nix");
        {
            let (scratch, raw_logs, file) = (scratch.clone(), raw_logs.clone(), file.clone());
            smol::unblock(move || {
                std::fs::create_dir_all(&raw_logs)
                    .map_err(|source| BuildError::Io { path: raw_logs, source })?;
                std::fs::write(&file, expr).map_err(|source| BuildError::Io { path: scratch, source })
            })
            .await?;
        }
        let b = &self.batch;
        let mut cmd = std::process::Command::new(NIX_BUILD);
        cmd.arg(&file)
            .arg("--no-out-link")
            .arg("--keep-going")
            .arg("--quiet")
            .args(["--log-format", "internal-json"])
            .arg("--max-jobs")
            .arg(b.max_jobs.to_string())
            .arg("--max-silent-time")
            .arg(secs_ceil(b.max_silent).to_string())
            .arg("--timeout")
            .arg(secs_ceil(b.max_duration).to_string())
            .arg("--builders")
            .arg(b.builders.as_deref().unwrap_or(""))
            .args(["--option", "compress-build-log", "false"]);
        for (k, v) in &b.options {
            cmd.arg("--option").arg(k).arg(v);
        }
        cmd.env("NIX_LOG_DIR", &raw_logs);
        count_spawn();
        let mut child = match SupervisedChild::spawn(cmd, Pipe::Null, Pipe::Null, Pipe::Piped) {
            Ok(c) => c,
            Err(e) => {
                self.remove_scratch(scratch).await;
                return Err(e.into());
            }
        };
        self.nix_runs += 1;
        self.child_signal = None;
        let stderr = child.take_stderr().map(BufReader::new);
        for &i in members {
            self.states[i].interrupted = false;
        }
        Ok(ChildRun {
            child,
            scratch,
            raw_logs,
            stderr,
            activities: HashMap::new(),
            builds_act: None,
            builds_done: 0,
            accounted: 0,
            last_output: Instant::now(),
            stop_at: None,
            hard_killed: false,
            sessions: HashSet::new(),
            no_builder: false,
            members: members.to_vec(),
            reaped: false,
        })
    }

    async fn remove_scratch(&self, scratch: PathBuf) {
        let result = smol::unblock(move || std::fs::remove_dir_all(&scratch)).await;
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove a build scratch directory");
            }
        }
    }

    /// Runs one child to its end. Returns the members to run again (after a "no builder" abort).
    async fn drive(&mut self, run: &mut ChildRun, kill_rx: &async_channel::Receiver<()>) -> Vec<usize> {
        enum Wake {
            Line(io::Result<bool>),
            Kill,
            Tick,
        }
        let mut tick = smol::Timer::interval(Duration::from_millis(500));
        let mut overflow = false;
        let mut stderr = run.stderr.take();
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        loop {
            let wake = {
                let read = async {
                    match stderr.as_mut() {
                        Some(r) => Wake::Line(read_line(r, &mut line, &mut overflow, MAX_LINE).await),
                        None => Wake::Line(Ok(false)),
                    }
                };
                let kill = async {
                    match kill_rx.recv().await {
                        Ok(()) => Wake::Kill,
                        Err(_) => future::pending().await,
                    }
                };
                let tick = async {
                    tick.next().await;
                    Wake::Tick
                };
                future::or(read, future::or(kill, tick)).await
            };
            match wake {
                Wake::Line(Ok(true)) => {
                    run.last_output = Instant::now();
                    let parsed = parse_line(&line);
                    line.clear();
                    self.on_line(run, parsed).await;
                }
                Wake::Line(Ok(false)) => break,
                Wake::Line(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read nix-build's output; stopping the batch");
                    self.error = Some(format!("reading nix-build's output failed: {e}"));
                    self.hard_kill(run).await;
                    break;
                }
                Wake::Kill => self.begin_stop(run, StopReason::Killed).await,
                Wake::Tick => self.watchdog(run).await,
            }
        }
        drop(stderr);
        self.line = line;
        self.reap(run).await;
        self.end_of_run(run).await
    }

    async fn reap(&mut self, run: &mut ChildRun) {
        // stderr is closed: Nix is exiting. Keep the SIGKILL escalation going while we wait.
        let status: Option<ExitStatus> = loop {
            let waited = future::or(async { Some(run.child.wait().await) }, async {
                smol::Timer::after(Duration::from_millis(500)).await;
                None
            })
            .await;
            match waited {
                Some(Ok(s)) => break Some(s),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "waiting for nix-build failed");
                    break None;
                }
                None => {
                    if run.stop_at.is_some_and(|t| t.elapsed() > KILL_GRACE) && !run.hard_killed {
                        self.hard_kill(run).await;
                    }
                }
            }
        };
        run.reaped = true;
        if !run.sessions.is_empty() {
            let sessions = run.sessions.clone();
            smol::unblock(move || kill_sessions(&sessions)).await;
        }
        if let Some(status) = status {
            use std::os::unix::process::ExitStatusExt as _;
            if let Some(sig) = status.signal() {
                if self.signal_sent.is_none() {
                    self.child_signal = Some(sig);
                }
            }
        }
    }

    async fn on_line(&mut self, run: &mut ChildRun, line: NixLine) {
        match line {
            NixLine::Text(text) => self.push_batch_log(&text),
            NixLine::Ignored => {}
            NixLine::Start { id, kind: ACT_BUILD, fields } => {
                let drv = field_str(&fields, 0).unwrap_or("");
                let machine = field_str(&fields, 1).filter(|m| !m.is_empty()).map(str::to_string);
                match self.index.get(drv).copied() {
                    Some(idx) if self.states[idx].finished.is_none() => {
                        run.activities.insert(id, Some(idx));
                        self.on_start(idx, id, machine).await;
                    }
                    Some(_) => {
                        run.activities.insert(id, None);
                    }
                    None => {
                        run.activities.insert(id, None);
                        if !drv.is_empty()
                            && !is_aggregate(drv)
                            && !self.extra_builds.iter().any(|d| d == drv)
                        {
                            self.extra_builds.push(drv.to_string());
                        }
                    }
                }
            }
            NixLine::Start { id, kind: ACT_BUILDS, .. } => run.builds_act = Some(id),
            NixLine::Start { .. } => {}
            NixLine::Result { id, kind: RES_BUILD_LOG_LINE | RES_POST_BUILD_LOG_LINE, fields } => {
                if let Some(Some(idx)) = run.activities.get(&id).copied() {
                    if let Some(text) = field_str(&fields, 0) {
                        self.log_line(idx, text).await;
                    }
                }
            }
            NixLine::Result { id, kind: RES_PROGRESS, fields } if Some(id) == run.builds_act => {
                if let Some(done) = fields.first().and_then(Value::as_u64) {
                    run.builds_done = done;
                }
            }
            NixLine::Result { .. } => {}
            NixLine::Stop { id } => {
                if let Some(act) = run.activities.remove(&id) {
                    self.on_stop(run, act).await;
                }
            }
            NixLine::Msg { level: 0, msg } => self.on_error(run, &msg).await,
            NixLine::Msg { level: 1, msg } => self.push_batch_log(&strip_ansi(&msg)),
            NixLine::Msg { .. } => {}
        }
    }

    fn push_batch_log(&mut self, text: &str) {
        self.batch_log.push(text.as_bytes());
        self.batch_log.push(b"\n");
    }

    async fn on_start(&mut self, idx: usize, activity: u64, machine: Option<String>) {
        let path = self.states[idx].log.clone();
        let opened = smol::unblock(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            File::create(&path)
        })
        .await;
        let s = &mut self.states[idx];
        match opened {
            Ok(f) => s.log_file = Some(Unblock::new(f)),
            Err(e) => {
                self.log_errors += 1;
                tracing::warn!(log = %s.log.display(), error = %e, "cannot create a build log");
            }
        }
        s.activity = Some(activity);
        s.started = Some(Instant::now());
        s.ever_started = true;
        s.interrupted = false;
        s.machine = machine.clone();
        let drv = s.path.clone();
        self.emit(BuildEvent::Started { drv, machine }).await;
    }

    async fn log_line(&mut self, idx: usize, text: &str) {
        let s = &mut self.states[idx];
        if let Some(f) = s.log_file.as_mut() {
            let mut bytes = Vec::with_capacity(text.len() + 1);
            bytes.extend_from_slice(text.as_bytes());
            bytes.push(b'\n');
            if let Err(e) = f.write_all(&bytes).await {
                tracing::warn!(log = %s.log.display(), error = %e, "cannot write a build log");
                s.log_file = None;
                self.log_errors += 1;
            }
        }
        if self.batch.live_log {
            let drv = self.states[idx].path.clone();
            self.emit(BuildEvent::Log { drv, line: text.to_string() }).await;
        }
    }

    async fn on_stop(&mut self, run: &mut ChildRun, act: Option<usize>) {
        // A successful build bumps the "done" counter right before its activity stops.
        let confirmed = run.builds_done > run.accounted;
        if confirmed {
            run.accounted += 1;
        }
        let Some(idx) = act else { return };
        self.states[idx].activity = None;
        if let Some(outcome) = self.states[idx].verdict.take() {
            self.finish(idx, outcome, Some(&run.raw_logs)).await;
        } else if confirmed {
            self.finish(idx, DrvOutcome::Success { built: true }, Some(&run.raw_logs)).await;
        } else {
            self.states[idx].interrupted = true;
            self.close_log(idx).await;
        }
        if !self.deferred.is_empty() {
            self.flush_deferred(&run.raw_logs).await;
        }
    }

    async fn on_error(&mut self, run: &mut ChildRun, msg: &str) {
        let text = clean_message(msg);
        let Some((drv, kind)) = classify_message(&text) else {
            self.push_batch_log(&format!("error: {text}"));
            self.error = Some(bound_str(&text, MESSAGE_LIMIT));
            return;
        };
        if kind == MsgKind::Summary {
            return;
        }
        let Some(idx) = self.index.get(&drv).copied() else {
            if is_aggregate(&drv) {
                // "N dependencies of derivation '…-eka-ci-batch.drv' failed": already reported per drv.
                return;
            }
            if kind == MsgKind::NoBuilder {
                // Nix gives up on the whole batch for a dependency outside it, too.
                run.no_builder = true;
                self.error = Some(bound_str(&text, MESSAGE_LIMIT));
                self.external_no_builder.insert(drv.clone());
            }
            self.external_failures.insert(drv);
            self.push_batch_log(&format!("error: {text}"));
            return;
        };
        if self.states[idx].finished.is_some() {
            return;
        }
        let message = bound_str(&text, MESSAGE_LIMIT);
        let outcome = match kind {
            MsgKind::ExitCode(code) => {
                DrvOutcome::Failure { message: message.clone(), exit_code: Some(code) }
            }
            MsgKind::Signal(sig) => {
                let now = smol::unblock(read_oom_kills).await;
                let rose = match (self.oom_at_start, now) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => 0,
                };
                classify_signal(sig, rose)
            }
            MsgKind::Silence => DrvOutcome::TimedOut,
            MsgKind::Duration => DrvOutcome::MaxDuration,
            MsgKind::DependenciesFailed => {
                DrvOutcome::DependencyFailed { dependency: self.failed_input(idx) }
            }
            MsgKind::NoBuilder => {
                run.no_builder = true;
                DrvOutcome::NoBuilder { message: message.clone() }
            }
            MsgKind::Other | MsgKind::Summary => {
                DrvOutcome::Failure { message: message.clone(), exit_code: None }
            }
        };
        self.states[idx].message = Some(format!("error: {message}"));
        if self.states[idx].activity.is_some() {
            self.states[idx].verdict = Some(outcome);
        } else if kind == MsgKind::DependenciesFailed && self.input_pending(idx) {
            // Nix reports the dependent before the failed input's activity stops: keep events in causal
            // order (the input's `Finished` first).
            self.states[idx].verdict = Some(outcome);
            self.deferred.push(idx);
        } else {
            self.finish(idx, outcome, Some(&run.raw_logs)).await;
        }
    }

    /// True while an input of `idx` in the batch has an outcome waiting for its activity to stop.
    fn input_pending(&self, idx: usize) -> bool {
        self.states[idx]
            .inputs
            .iter()
            .any(|&j| self.states[j].finished.is_none() && self.states[j].activity.is_some())
    }

    /// Finishes the deferred `DependencyFailed` derivations whose inputs are all settled.
    async fn flush_deferred(&mut self, raw_logs: &Path) {
        while let Some(pos) = self.deferred.iter().position(|&i| !self.input_pending(i)) {
            let idx = self.deferred.swap_remove(pos);
            if self.states[idx].verdict.take().is_some() {
                let dependency = self.failed_input(idx);
                self.finish(idx, DrvOutcome::DependencyFailed { dependency }, Some(raw_logs)).await;
            }
        }
    }

    /// The root failure among the inputs of `idx`: a failed input in the batch (following
    /// `DependencyFailed` to its cause), else a failed dependency outside the batch that Nix reported.
    fn failed_input(&self, idx: usize) -> Option<String> {
        let s = &self.states[idx];
        for &j in &s.inputs {
            let o = self.states[j].finished.as_ref().map(|f| &f.0).or(self.states[j].verdict.as_ref());
            match o {
                Some(DrvOutcome::DependencyFailed { dependency: Some(d) }) => return Some(d.clone()),
                Some(o) if !o.is_success() => return Some(self.states[j].path.clone()),
                _ => {}
            }
        }
        let info = s.info.as_ref()?;
        info.input_drvs.iter().map(|(p, _)| p).find(|p| self.external_failures.contains(*p)).cloned()
    }

    async fn emit(&self, event: BuildEvent) {
        // A caller that stopped listening does not stop the batch.
        let _ = self.events.send(event).await;
    }

    /// Flushes and closes the streamed log file of `idx`.
    async fn close_log(&mut self, idx: usize) {
        if let Some(f) = self.states[idx].log_file.take() {
            let mut f = f;
            let flushed = f.flush().await;
            let _file = f.into_inner().await;
            if let Err(e) = flushed {
                self.log_errors += 1;
                tracing::warn!(log = %self.states[idx].log.display(), error = %e, "cannot write a build log");
            }
        }
    }

    /// Records the final outcome of `idx`: completes its log (Nix's byte-exact copy when `raw_logs` has
    /// one, then the message) and sends `Finished`.
    async fn finish(&mut self, idx: usize, outcome: DrvOutcome, raw_logs: Option<&Path>) {
        if self.states[idx].finished.is_some() {
            return;
        }
        self.close_log(idx).await;
        let s = &mut self.states[idx];
        s.activity = None;
        s.verdict = None;
        let duration = s.started.map(|t| t.elapsed()).unwrap_or_default();
        let message = s.message.take().or_else(|| runner_message(&outcome));
        let has_log = !matches!(outcome, DrvOutcome::Success { built: false }) || s.ever_started;
        if has_log {
            let raw = raw_logs.and_then(|dir| {
                let base = Path::new(&s.path).file_name()?.to_str()?;
                (base.len() > 2).then(|| dir.join("drvs").join(&base[..2]).join(&base[2..]))
            });
            let log = s.log.clone();
            let started = s.ever_started;
            let written =
                smol::unblock(move || complete_log(&log, raw.as_deref(), message.as_deref(), started)).await;
            if let Err(e) = written {
                self.log_errors += 1;
                tracing::warn!(log = %s.log.display(), error = %e, "cannot complete a build log");
            }
        }
        s.finished = Some((outcome.clone(), duration, has_log));
        let drv = s.path.clone();
        self.emit(BuildEvent::Finished { drv, outcome, duration }).await;
    }

    /// SIGTERM to the group; Nix stops its builders and exits.
    async fn begin_stop(&mut self, run: &mut ChildRun, reason: StopReason) {
        if run.stop_at.is_some() {
            return;
        }
        let running: Vec<usize> = run.activities.values().flatten().copied().collect();
        for &i in &running {
            let default = match &reason {
                StopReason::Killed => None,
                StopReason::SilenceWatchdog => Some(DrvOutcome::TimedOut),
                StopReason::BuildDurationWatchdog { drv } if *drv == self.states[i].path => {
                    Some(DrvOutcome::MaxDuration)
                }
                StopReason::BuildDurationWatchdog { .. } => None,
                StopReason::BatchDeadline => Some(DrvOutcome::MaxDuration),
            };
            self.states[i].kill_default = default;
        }
        tracing::info!(pid = run.child.pid(), ?reason, "stopping a build batch");
        if self.stopped.is_none() {
            self.stopped = Some(reason);
        }
        let leader = run.child.pid() as i32;
        run.sessions.extend(smol::unblock(move || builder_sessions(leader)).await);
        run.stop_at = Some(Instant::now());
        self.signal_sent = Some(Signal::TERM.as_raw());
        if let Err(e) = run.child.signal_group(Signal::TERM) {
            tracing::warn!(error = %e, "cannot signal nix-build");
        }
    }

    async fn hard_kill(&mut self, run: &mut ChildRun) {
        let leader = run.child.pid() as i32;
        run.sessions.extend(smol::unblock(move || builder_sessions(leader)).await);
        run.child.kill_group();
        let sessions = run.sessions.clone();
        smol::unblock(move || kill_sessions(&sessions)).await;
        run.hard_killed = true;
        self.signal_sent = Some(Signal::KILL.as_raw());
    }

    async fn watchdog(&mut self, run: &mut ChildRun) {
        let now = Instant::now();
        if let Some(at) = run.stop_at {
            if !run.hard_killed && now.duration_since(at) > KILL_GRACE {
                self.hard_kill(run).await;
            }
            return;
        }
        let margin = self.batch.watchdog_margin;
        if !self.batch.max_silent.is_zero()
            && now.duration_since(run.last_output) > self.batch.max_silent + margin
        {
            return self.begin_stop(run, StopReason::SilenceWatchdog).await;
        }
        if !self.batch.max_duration.is_zero() {
            let limit = self.batch.max_duration + margin;
            let over = run
                .activities
                .values()
                .flatten()
                .find(|&&i| self.states[i].started.is_some_and(|t| now.duration_since(t) > limit));
            if let Some(&i) = over {
                let drv = self.states[i].path.clone();
                return self.begin_stop(run, StopReason::BuildDurationWatchdog { drv }).await;
            }
        }
        if self.deadline.is_some_and(|d| now > d) {
            self.begin_stop(run, StopReason::BatchDeadline).await;
        }
    }

    /// After a child exited: settles what its events left open. Returns the members to run again.
    async fn end_of_run(&mut self, run: &mut ChildRun) -> Vec<usize> {
        // Activities Nix never stopped (it died) count as interrupted.
        for idx in run.activities.drain().filter_map(|(_, a)| a).collect::<Vec<_>>() {
            self.states[idx].activity = None;
            if let Some(v) = self.states[idx].verdict.take() {
                self.finish(idx, v, Some(&run.raw_logs)).await;
            } else {
                self.states[idx].interrupted = true;
                self.close_log(idx).await;
            }
        }
        self.flush_deferred(&run.raw_logs).await;
        for idx in run.members.clone() {
            if let Some(v) = self.states[idx].verdict.take() {
                self.finish(idx, v, Some(&run.raw_logs)).await;
            }
        }
        let open: Vec<usize> =
            run.members.iter().copied().filter(|&i| self.states[i].finished.is_none()).collect();
        if open.is_empty() {
            return Vec::new();
        }
        // Settle by validity: one nix-store for all of them.
        let mut outputs = Vec::new();
        for &i in &open {
            if let Some(info) = &self.states[i].info {
                outputs.extend(info.outputs.iter().filter(|(_, p)| !p.is_empty()).map(|(_, p)| p.clone()));
            }
        }
        let invalid = if outputs.is_empty() {
            Some(HashSet::new())
        } else {
            match invalid_outputs(&outputs).await {
                Ok(set) => Some(set),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the outputs of a batch");
                    None
                }
            }
        };
        let clean_exit = self.stopped.is_none() && self.child_signal.is_none() && !run.no_builder;
        let mut rest = Vec::new();
        for i in open {
            let valid = match (&invalid, &self.states[i].info) {
                (Some(inv), Some(info)) => {
                    let known = info.outputs.iter().all(|(_, p)| !p.is_empty());
                    let all_valid = info.outputs.iter().all(|(_, p)| !p.is_empty() && !inv.contains(p));
                    // Floating content-addressed outputs cannot be checked: trust a clean exit.
                    (known && all_valid) || (!known && clean_exit)
                }
                _ => false,
            };
            if valid {
                let built = self.states[i].ever_started;
                self.finish(i, DrvOutcome::Success { built }, Some(&run.raw_logs)).await;
            } else {
                rest.push(i);
            }
        }
        if run.no_builder && self.stopped.is_none() {
            // Nix gave up on the whole batch: what depends on a "no builder" derivation cannot be built,
            // everything else runs again.
            let blocked: Vec<usize> = run
                .members
                .iter()
                .copied()
                .filter(|&i| {
                    matches!(self.states[i].finished, Some((DrvOutcome::NoBuilder { .. }, _, _)))
                        || self.states[i].info.as_ref().is_some_and(|info| {
                            info.input_drvs.iter().any(|(p, _)| self.external_no_builder.contains(p))
                        })
                })
                .collect();
            let closure = self.dependents_closure(blocked.into_iter());
            let mut again = Vec::new();
            for i in rest {
                if closure.contains(&i) {
                    let dependency = self.failed_input(i);
                    self.finish(i, DrvOutcome::DependencyFailed { dependency }, Some(&run.raw_logs)).await;
                } else {
                    again.push(i);
                }
            }
            if again.len() < run.members.len() {
                return again;
            }
            // No progress: the abort comes from deeper outside the batch; give up on the rest.
            rest = again;
        }
        for i in rest {
            let s = &self.states[i];
            // Interrupted builds: killed by us, or Nix itself died of a signal; anything else (Nix gave up)
            // means the build never completed for reasons of its own: not built.
            let outcome = if let Some(d) = s.kill_default.clone() {
                d
            } else if s.interrupted && (self.signal_sent.is_some() || self.child_signal.is_some()) {
                match (self.signal_sent, self.child_signal) {
                    (Some(sig), _) => DrvOutcome::Killed { signal: Some(sig) },
                    (None, sig) => {
                        let rose = match (self.oom_at_start, smol::unblock(read_oom_kills).await) {
                            (Some(a), Some(b)) => b.saturating_sub(a),
                            _ => 0,
                        };
                        sig.map(|sig| classify_signal(sig, rose))
                            .unwrap_or(DrvOutcome::Killed { signal: None })
                    }
                }
            } else {
                if !s.interrupted
                    && self.stopped.is_none()
                    && self.child_signal.is_none()
                    && self.error.is_none()
                {
                    tracing::warn!(drv = %s.path, "nix-build ended without building or reporting a derivation");
                }
                DrvOutcome::NotBuilt
            };
            self.finish(i, outcome, Some(&run.raw_logs)).await;
        }
        Vec::new()
    }

    /// Whatever is still open when no child will run any more (a restart failed, nothing was spawned).
    async fn finish_rest(&mut self) {
        for i in 0..self.states.len() {
            if self.states[i].finished.is_none() {
                self.finish(i, DrvOutcome::NotBuilt, None).await;
            }
        }
    }

    fn summary(&mut self) -> BatchSummary {
        let reports = self
            .states
            .iter()
            .map(|s| {
                let (outcome, duration, has_log) =
                    s.finished.clone().unwrap_or((DrvOutcome::NotBuilt, Duration::ZERO, false));
                DrvReport {
                    drv: s.path.clone(),
                    outcome,
                    duration,
                    attempt: s.attempt,
                    log: has_log.then(|| s.log.clone()),
                    machine: s.machine.clone(),
                }
            })
            .collect();
        let (log, _) = std::mem::replace(&mut self.batch_log, TailBuffer::new(0)).into_parts();
        BatchSummary {
            reports,
            nix_runs: self.nix_runs,
            stopped: self.stopped.clone(),
            error: self.error.clone(),
            batch_log: strip_ansi(&String::from_utf8_lossy(&log)),
            extra_builds: std::mem::take(&mut self.extra_builds),
            log_errors: self.log_errors,
            elapsed: self.started.elapsed(),
        }
    }
}

/// What the runner appends to a log for an outcome Nix said nothing about.
fn runner_message(outcome: &DrvOutcome) -> Option<String> {
    match outcome {
        DrvOutcome::Success { .. } => None,
        DrvOutcome::Failure { message, .. } | DrvOutcome::NoBuilder { message } => {
            Some(format!("error: {message}"))
        }
        DrvOutcome::DependencyFailed { dependency: Some(d) } => {
            Some(format!("eka-ci: dependency {d} failed"))
        }
        DrvOutcome::DependencyFailed { dependency: None } => Some("eka-ci: a dependency failed".into()),
        DrvOutcome::TimedOut => Some("eka-ci: stopped by the watchdog: no output for too long".into()),
        DrvOutcome::MaxDuration => Some("eka-ci: stopped by the watchdog: ran for too long".into()),
        DrvOutcome::OutOfMemory => Some("eka-ci: killed by the kernel's out-of-memory killer".into()),
        DrvOutcome::Killed { signal: Some(s) } => Some(format!("eka-ci: killed by signal {s}")),
        DrvOutcome::Killed { signal: None } => Some("eka-ci: killed".into()),
        DrvOutcome::NotBuilt => Some("eka-ci: not built: the batch stopped before it started".into()),
    }
}

/// Completes a log file: Nix's byte-exact copy replaces the streamed one when it exists, then `message`
/// is appended on a line of its own. Blocking.
fn complete_log(log: &Path, raw: Option<&Path>, message: Option<&str>, started: bool) -> io::Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let replaced = match raw {
        Some(raw) if started => match std::fs::rename(raw, log) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        },
        _ => false,
    };
    if !started && !replaced {
        // Never built in this attempt: the log is only the message.
        File::create(log)?;
    }
    let Some(message) = message else { return Ok(()) };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let len = f.metadata()?.len();
    let mut text = Vec::with_capacity(message.len() + 2);
    if len > 0 {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let mut last = [0u8; 1];
        let mut r = File::open(log)?;
        r.seek(SeekFrom::End(-1))?;
        r.read_exact(&mut last)?;
        if last[0] != b'\n' {
            text.push(b'\n');
        }
    }
    text.extend_from_slice(message.as_bytes());
    text.push(b'\n');
    f.write_all(&text)
}

/// The batch deadline (see [`BuildBatch::watchdog_margin`]), or `None` without a duration limit.
fn batch_deadline(batch: &BuildBatch, states: &[DrvState]) -> Option<Instant> {
    if batch.max_duration.is_zero() {
        return None;
    }
    let depth = u32::try_from(batch_depth(states)).unwrap_or(u32::MAX);
    let n = u32::try_from(states.len()).unwrap_or(u32::MAX);
    let waves = n.div_ceil(batch.max_jobs.max(1));
    let bound = batch.max_duration.checked_mul(depth.saturating_add(waves))?;
    Instant::now().checked_add(bound.checked_add(batch.watchdog_margin * 2)?)
}

/// The number of derivations on the longest dependency chain inside the batch (0 for an empty batch).
fn batch_depth(states: &[DrvState]) -> usize {
    let mut depth = vec![0usize; states.len()];
    // Iterative post-order; a cycle (impossible in a store) is cut where it closes.
    let mut state = vec![0u8; states.len()]; // 0 new, 1 open, 2 done
    for root in 0..states.len() {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&child) = states[node].inputs.get(*next) {
                *next += 1;
                if state[child] == 0 {
                    state[child] = 1;
                    stack.push((child, 0));
                }
            } else {
                depth[node] = 1 + states[node].inputs.iter().map(|&c| depth[c]).max().unwrap_or(0);
                state[node] = 2;
                stack.pop();
            }
        }
    }
    depth.into_iter().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRV: &str = "/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv";

    #[test]
    fn store_paths_are_checked() {
        let p =
            parse_store_path("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a-1.0+x_y?z=.drv").expect("valid");
        assert_eq!(p.dir, "/nix/store");
        assert_eq!(p.hash, "sc8gcp1n756q6050jdc7ij7nkpfbrf96");
        for bad in [
            "",
            "relative/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf9-a.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96a.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrfeu-a.drv", // 'e' and 'u' are not base-32
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-.hidden",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a/b.drv",
            "/nix/../etc/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv",
            "/nix//store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv",
            "/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a b.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-é.drv",
        ] {
            assert!(parse_store_path(bad).is_err() || parse_drv_path(bad).is_err(), "{bad:?}");
        }
        assert!(parse_drv_path("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a").is_err());
        assert!(parse_drv_path("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-.drv").is_err());
        let long = format!("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-{}.drv", "a".repeat(208));
        assert!(parse_drv_path(&long).is_err());
    }

    #[test]
    fn log_paths() {
        let p = log_path(Path::new("/logs"), DRV, 2).expect("ok");
        assert_eq!(p, Path::new("/logs/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh/2.log"));
        assert!(matches!(
            log_path(Path::new("/logs"), "/nix/store/../x.drv", 1),
            Err(BuildError::InvalidDrvPath { .. })
        ));
    }

    // Real lines captured from `nix-build --log-format internal-json` (Nix 2.8.0).
    const CAPTURED: &[&str] = &[
        r#"@nix {"action":"start","fields":["/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv","",1,1],"id":59352153063430,"level":3,"text":"building '/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv'","type":105}"#,
        r#"@nix {"action":"result","fields":["failing"],"id":59352153063430,"type":101}"#,
        r#"@nix {"action":"result","fields":[1,3,0,1],"id":59352153063426,"type":105}"#,
        r#"@nix {"action":"stop","id":59352153063430}"#,
        r#"@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,"msg":"\u001b[31;1merror:\u001b[0m builder for '\u001b[35;1m/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv\u001b[0m' failed with exit code 3","raw_msg":"builder for '\u001b[35;1m/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv\u001b[0m' failed with exit code 3"}"#,
        r#"@nix {"action":"start","id":59352153063424,"level":6,"text":"querying info about missing paths","type":0}"#,
        r#"@nix {"action":"setPhase","id":1,"phase":"x"}"#,
    ];

    #[test]
    fn parses_captured_lines() {
        let parsed: Vec<NixLine> = CAPTURED.iter().map(|l| parse_line(l.as_bytes())).collect();
        match &parsed[0] {
            NixLine::Start { id, kind: ACT_BUILD, fields } => {
                assert_eq!(*id, 59352153063430);
                assert_eq!(field_str(fields, 0), Some(DRV));
                assert_eq!(field_str(fields, 1), Some(""));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&parsed[1], NixLine::Result { kind: RES_BUILD_LOG_LINE, fields, .. } if field_str(fields, 0) == Some("failing"))
        );
        assert!(
            matches!(&parsed[2], NixLine::Result { kind: RES_PROGRESS, fields, .. } if fields[0].as_u64() == Some(1))
        );
        assert_eq!(parsed[3], NixLine::Stop { id: 59352153063430 });
        match &parsed[4] {
            NixLine::Msg { level: 0, msg } => {
                let text = clean_message(msg);
                assert_eq!(text, format!("builder for '{DRV}' failed with exit code 3"));
                assert_eq!(classify_message(&text), Some((DRV.to_string(), MsgKind::ExitCode(3))));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parsed[5], NixLine::Start { kind: 0, .. }));
        assert_eq!(parsed[6], NixLine::Ignored);
    }

    #[test]
    fn malformed_lines_are_text() {
        for (line, text) in [
            (&b"warning: something"[..], "warning: something"),
            (b"@nix {not json", "@nix {not json"),
            (b"@nix [1,2]", "@nix [1,2]"),
            (b"@nix {\"id\":1}", "@nix {\"id\":1}"),
            (b"@nix {\"action\":\"stop\",\"id\":\"x\"}", "@nix {\"action\":\"stop\",\"id\":\"x\"}"),
            (b"\xff\xfe raw\r", "\u{fffd}\u{fffd} raw"),
        ] {
            assert_eq!(parse_line(line), NixLine::Text(text.to_string()));
        }
        // Unknown fields are ignored; missing ones default.
        assert_eq!(parse_line(b"@nix {\"action\":\"stop\",\"id\":7,\"new\":true}"), NixLine::Stop { id: 7 });
        assert_eq!(parse_line(b"@nix {\"action\":\"future\"}"), NixLine::Ignored);
    }

    #[test]
    fn classifies_observed_messages() {
        let d = "/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv";
        let cases: &[(&str, MsgKind)] = &[
            ("\u{1b}[31;1merror:\u{1b}[0m builder for '\u{1b}[35;1m/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv\u{1b}[0m' failed due to signal 9 (Killed)", MsgKind::Signal(9)),
            ("error: builder for '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv' failed due to signal 15 (Terminated)", MsgKind::Signal(15)),
            ("error: builder for '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv' failed to produce output path for output 'out' at '/nix/store/q92f920dp8v694lhkhli2bjs0mzxw4pd-noout'", MsgKind::Other),
            ("\u{1b}[31;1merror:\u{1b}[0m \u{1b}[35;1mbuilding of '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv!*' from .drv file\u{1b}[0m timed out after \u{1b}[35;1m2\u{1b}[0m seconds of silence", MsgKind::Silence),
            ("error: building of '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv!*' from .drv file timed out after 3 seconds", MsgKind::Duration),
            ("\u{1b}[31;1merror:\u{1b}[0m \u{1b}[35;1m1\u{1b}[0m dependencies of derivation '\u{1b}[35;1m/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv\u{1b}[0m' failed to build", MsgKind::DependenciesFailed),
            ("error: hash mismatch in fixed-output derivation '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv':\n  specified: sha256-AAAA=\n     got:    sha256-c8s4=", MsgKind::Other),
            ("\u{1b}[31;1merror:\u{1b}[0m a '\u{1b}[35;1maarch64-darwin\u{1b}[0m' with features {\u{1b}[35;1m\u{1b}[0m} is required to build '\u{1b}[35;1m/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv\u{1b}[0m', but I am a '\u{1b}[35;1mx86_64-linux\u{1b}[0m' with features {\u{1b}[35;1mbenchmark, big-parallel, kvm, nixos-test\u{1b}[0m}", MsgKind::NoBuilder),
            ("error: build of '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv', '/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv' failed", MsgKind::Summary),
        ];
        for (msg, kind) in cases {
            let text = clean_message(msg);
            assert_eq!(classify_message(&text), Some((d.to_string(), *kind)), "{text}");
        }
        assert_eq!(classify_message(&clean_message("error: interrupted by the user")), None);
        assert_eq!(classify_message("builder for 'nonsense' failed"), None);
        assert_eq!(
            classify_message(&format!("builder for '{DRV}' failed with exit code x")),
            Some((DRV.to_string(), MsgKind::Other))
        );
    }

    #[test]
    fn signal_classification_uses_the_oom_counter() {
        // Nix's text for an OOM kill is the plain SIGKILL one; the counter decides.
        let text = clean_message(&format!("error: builder for '{DRV}' failed due to signal 9 (Killed)"));
        let Some((_, MsgKind::Signal(sig))) = classify_message(&text) else { panic!("{text}") };
        assert_eq!(classify_signal(sig, 1), DrvOutcome::OutOfMemory);
        assert_eq!(classify_signal(sig, 0), DrvOutcome::Killed { signal: Some(9) });
        assert_eq!(classify_signal(15, 3), DrvOutcome::Killed { signal: Some(15) });
        assert_eq!(parse_oom_kills("pgfault 1\noom_kill 42\nx 1\n"), Some(42));
        assert_eq!(parse_oom_kills("pgfault 1\n"), None);
    }

    #[test]
    fn proc_stat_ids() {
        assert_eq!(stat_ids("26530 (sleep) S 26529 26529 26529 0 -1"), Some((26529, 26529, 26529)));
        assert_eq!(stat_ids("1 (a) b) c) R 0 1 1 0"), Some((0, 1, 1)));
        assert_eq!(stat_ids("garbage"), None);
    }

    #[test]
    fn chunks_stay_under_the_limit() {
        let paths: Vec<String> = (0..100).map(|i| format!("/nix/store/{i:0>32}-x")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let chunks = chunk_paths(&refs, 500);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 100);
        for c in &chunks {
            assert!(c.iter().map(|p| p.len() + 1).sum::<usize>() <= 500);
        }
        assert_eq!(chunk_paths(&refs, VALIDITY_ARGV_BYTES).len(), 1);
        assert!(chunk_paths(&[], 10).is_empty());
    }

    #[test]
    fn expression_lists_every_drv() {
        let e = batch_expression(&[DRV, "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv"], "n1");
        assert!(e.contains(&format!("\"{DRV}\"")));
        assert!(e.contains("nonce = \"n1\""));
        assert!(e.contains("(import p).all"));
        assert!(e.contains("name = \"eka-ci-batch\";"));
        assert!(is_aggregate("/nix/store/zd4dcb657krnwyfdxr473i53zly4s81d-eka-ci-batch.drv"));
        assert!(!is_aggregate("/nix/store/zd4dcb657krnwyfdxr473i53zly4s81d-not-eka-ci-batch2.drv"));
        assert!(!is_aggregate(DRV));
    }

    #[test]
    fn reads_bounded_cancel_safe_lines() {
        smol::block_on(async {
            let data: &[u8] = b"one\ntoo long line\nlast";
            let mut r = BufReader::with_capacity(4, data);
            let (mut buf, mut of) = (Vec::new(), false);
            let mut lines = Vec::new();
            while read_line(&mut r, &mut buf, &mut of, 8).await.expect("read") {
                lines.push(String::from_utf8_lossy(&buf).into_owned());
                buf.clear();
            }
            assert_eq!(lines, ["one", "too long", "last"]);
        });
    }

    fn state(inputs: Vec<usize>) -> DrvState {
        DrvState { inputs, ..DrvState::new(String::new(), 1, PathBuf::new(), None, None) }
    }

    #[test]
    fn depth_of_chains_and_diamonds() {
        assert_eq!(batch_depth(&[]), 0);
        assert_eq!(batch_depth(&[state(vec![]), state(vec![])]), 1);
        // 3 -> 1 -> 0, 3 -> 2 -> 0
        let s = vec![state(vec![]), state(vec![0]), state(vec![0]), state(vec![1, 2])];
        assert_eq!(batch_depth(&s), 3);
        // A cycle does not hang.
        assert!(batch_depth(&[state(vec![1]), state(vec![0])]) <= 2);
    }

    #[test]
    fn deadline_follows_grahams_bound() {
        let mut b = BuildBatch::new(vec![], "/tmp");
        b.max_duration = Duration::from_secs(10);
        b.max_jobs = 2;
        b.watchdog_margin = Duration::from_secs(1);
        let s = vec![state(vec![]), state(vec![0]), state(vec![1]), state(vec![])];
        let before = Instant::now();
        let d = batch_deadline(&b, &s).expect("deadline");
        // depth 3 + ceil(4/2) = 5 durations + 2 margins = 52 s.
        let bound = d.duration_since(before);
        assert!(bound >= Duration::from_secs(52) && bound < Duration::from_secs(53), "{bound:?}");
        b.max_duration = Duration::ZERO;
        assert!(batch_deadline(&b, &s).is_none());
    }

    #[test]
    fn completes_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("h/1.log");
        let raw = dir.path().join("raw");
        std::fs::create_dir_all(dir.path().join("h")).expect("mkdir");
        std::fs::write(&log, "streamed\n").expect("write");
        std::fs::write(&raw, b"a\xff\r\nno-eol").expect("write");
        complete_log(&log, Some(&raw), Some("error: boom"), true).expect("complete");
        assert_eq!(std::fs::read(&log).expect("read"), b"a\xff\r\nno-eol\nerror: boom\n");
        assert!(!raw.exists());
        // No raw copy: the streamed log stays, the message follows.
        std::fs::write(&log, "streamed\n").expect("write");
        complete_log(&log, Some(&raw), Some("error: x"), true).expect("complete");
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "streamed\nerror: x\n");
        // Never started: only the message.
        let log2 = dir.path().join("g/1.log");
        complete_log(&log2, None, Some("eka-ci: not built"), false).expect("complete");
        assert_eq!(std::fs::read_to_string(&log2).expect("read"), "eka-ci: not built\n");
    }
}
