//! Evaluation: turning a checkout and a job's source (a Nix file or a flake output) into a stream of
//! per-attribute records, one per derivation or per failing attribute.
//!
//! [`evaluate`] is the entry point. It picks a backend ([`EvalBackend`]): `nix-eval-jobs` when it is on
//! `PATH`, otherwise the built-in evaluator of [`crate::nix::eval_builtin`], which drives Nix's own
//! `nix-instantiate`. Both produce the same [`EvalRecord`]s and send them through the caller's channel as
//! they are produced; nothing here keeps the records of a job in memory. See `docs/evaluation.md` for how
//! each backend works and what is bounded.
//!
//! This module also owns what both backends share: the record types, [`EvalError`], the parser of
//! `nix-eval-jobs` JSON lines ([`parse_nix_eval_jobs_line`]), attribute-name formatting ([`attr_display`])
//! and the extraction of Nix's error message from a process's stderr ([`nix_error_message`]).
//!
//! # Storage representation
//!
//! The record types are stored with postcard, which cannot deserialize `serde_json::Value` (it needs a
//! self-describing format). [`EvalDrv::meta`] is therefore serialized as *JSON text* (`Option<String>`) by
//! non-human-readable serializers such as postcard, and as the JSON value itself by human-readable ones such
//! as serde_json; no `untagged` or `flatten` is used anywhere.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncBufReadExt, BufReader};
use futures_lite::StreamExt;
use serde::{Deserialize, Serialize};

use crate::nix::process::{Pipe, ProcessError, SupervisedChild, TailBuffer};

/// Maximum length in bytes of an error message in a record or an [`EvalError`].
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// What to evaluate in a checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalSource {
    /// A Nix file relative to the checkout, imported (and called with `{}` if it is a function, like
    /// `nix-build` does), then `attr_path` is selected from it.
    File { file: PathBuf, attr_path: Vec<String> },
    /// The checkout's flake; `attr_path` is selected from its outputs, e.g. `["hydraJobs"]` or
    /// `["checks", "x86_64-linux"]`.
    Flake { attr_path: Vec<String> },
}

/// Which evaluator to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EvalBackend {
    /// `nix-eval-jobs` when it is on `PATH`, the built-in evaluator otherwise.
    #[default]
    Auto,
    /// The built-in evaluator over `nix-instantiate` ([`crate::nix::eval_builtin`]).
    Builtin,
    /// `nix-eval-jobs` (an error if it is not installed).
    NixEvalJobs,
}

/// Bounds and switches of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalOptions {
    /// Parallel evaluator processes. Default: the number of cores.
    pub workers: usize,
    /// Memory cap of each evaluator process (its whole process group), in MiB; 0 disables it. Default 4096.
    pub max_memory_mib: u64,
    /// Bound on the whole evaluation. Default one hour.
    pub timeout: Duration,
    /// Where GC roots for the instantiated derivations are created (created if missing). The caller
    /// removes it once the derivations are built or no longer needed.
    pub gc_roots_dir: PathBuf,
    /// Recurse into every attribute set, not only those with `recurseForDerivations = true`.
    pub force_recurse: bool,
    /// Collect each derivation's `meta`. Default true.
    pub meta: bool,
    /// The batch size of the built-in backend's fallback steps (its walk runs one process per worker, see
    /// `eval_builtin`). Default 100.
    pub batch_size: usize,
    /// The built-in backend's walk splits the top-level attributes into `workers` × this many interleaved
    /// shares, taken from a queue by the workers, a fresh `nix-instantiate` per share (see
    /// `eval_builtin`). Default [`WALK_SHARES_PER_WORKER`]; 0 is taken as 1.
    pub walk_shares_per_worker: usize,
    /// The built-in backend walks in long-lived `nix repl` sessions, one per worker, that take share
    /// after share ([`WALK_SESSION_SHARES_PER_WORKER`] per worker) from the queue and keep the job loaded;
    /// a session is replaced only when it goes over the memory cap or dies. Default true. False (or when
    /// no session starts): a fresh `nix-instantiate` per share of [`Self::walk_shares_per_worker`].
    pub walk_sessions: bool,
    /// Derivations per GC root of the built-in walk (one `nix-instantiate` roots that many). Default
    /// [`WALK_ROOT_BATCH`]; 0 is taken as 1. Smaller values only make more root steps (tests use 1).
    pub walk_root_batch: usize,
    /// Which evaluator to use. Default [`EvalBackend::Auto`].
    pub backend: EvalBackend,
    /// Evaluate under Nix's `restrict-eval`: only the checkout, the search path and the store are
    /// readable, `builtins.getEnv` yields "", only `allowed_uris` may be fetched. Default true.
    pub restrict_eval: bool,
    /// URI prefixes evaluation may fetch under `restrict_eval` (Nix's `allowed-uris`). Default none.
    pub allowed_uris: Vec<String>,
    /// The built-in backend records an attribute whose `builtins.tryEval` failed with
    /// [`DEFERRED_ERROR`] instead of finding Nix's message (which costs a `nix repl` evaluation per
    /// failure); [`explain`] finds the message later for the errors a report shows. Default false.
    pub defer_error_messages: bool,
}

/// The message of an error record whose explanation was deferred ([`EvalOptions::defer_error_messages`]):
/// all `builtins.tryEval` tells is that a `throw` or an `assert` failed (it catches nothing else). Nix's
/// own messages start with `error:`, so an evaluated expression cannot produce this text.
pub const DEFERRED_ERROR: &str =
    "a throw or an assertion failed while evaluating this attribute (Nix's message is computed only for \
     errors a report shows)";

/// Whether `message` is [`DEFERRED_ERROR`]: Nix's message for it is still to be found with [`explain`].
pub fn is_deferred(message: &str) -> bool {
    message == DEFERRED_ERROR
}

/// The default of [`EvalOptions::walk_shares_per_worker`], chosen by measurement on nixpkgs
/// (docs/benchmarks.md, "nixpkgs evaluation").
pub const WALK_SHARES_PER_WORKER: usize = 3;

/// Shares per worker when the walk runs in sessions ([`EvalOptions::walk_sessions`]): a share costs a
/// line to the session, so many small ones keep the workers busy until the end.
pub const WALK_SESSION_SHARES_PER_WORKER: usize = 32;

/// The default of [`EvalOptions::walk_root_batch`].
pub const WALK_ROOT_BATCH: usize = 5000;

impl EvalOptions {
    /// The defaults, with GC roots in `gc_roots_dir`.
    pub fn new(gc_roots_dir: impl Into<PathBuf>) -> EvalOptions {
        EvalOptions {
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            max_memory_mib: 4096,
            timeout: Duration::from_secs(3600),
            gc_roots_dir: gc_roots_dir.into(),
            force_recurse: false,
            meta: true,
            batch_size: 100,
            walk_shares_per_worker: WALK_SHARES_PER_WORKER,
            walk_sessions: true,
            walk_root_batch: WALK_ROOT_BATCH,
            backend: EvalBackend::Auto,
            restrict_eval: true,
            allowed_uris: Vec::new(),
            defer_error_messages: false,
        }
    }
}

/// The search-path prefix under which the checkout (and the built-in evaluator's request directory) is
/// made readable in restricted evaluation: `-I eka-ci-checkout=<path>`. A named entry, so a path
/// containing `=` is not misread.
const CHECKOUT_SEARCH_PREFIX: &str = "eka-ci-checkout";

/// Adds the restricted-evaluation options of `opts` to an evaluator's command line: `restrict-eval`, the
/// operator's `allowed-uris` (replacing any from Nix's own configuration), and every directory of
/// `readable` (the checkout first) as a search-path entry, the only non-store paths restricted mode
/// lets Nix read. With `restrict_eval` off, nothing is added.
pub(crate) fn add_restriction_args(cmd: &mut std::process::Command, opts: &EvalOptions, readable: &[&Path]) {
    if !opts.restrict_eval {
        return;
    }
    cmd.args(["--option", "restrict-eval", "true"]);
    cmd.args(["--option", "allowed-uris"]).arg(opts.allowed_uris.join(" "));
    for (i, dir) in readable.iter().enumerate() {
        let mut entry = std::ffi::OsString::from(format!("{CHECKOUT_SEARCH_PREFIX}-{i}="));
        entry.push(dir.as_os_str());
        cmd.arg("-I").arg(entry);
    }
}

/// The result of evaluating one attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The attribute path joined with dots, a name containing a dot in double quotes (as nix-eval-jobs
    /// writes it); empty when the selected value itself is the derivation.
    pub attr: String,
    pub attr_path: Vec<String>,
    pub outcome: EvalOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EvalOutcome {
    Derivation(EvalDrv),
    /// Evaluating the attribute failed; `message` is Nix's error (escapes stripped, at most
    /// [`MAX_MESSAGE_BYTES`] bytes).
    Error {
        message: String,
    },
}

/// An instantiated derivation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalDrv {
    /// The derivation's `name`, e.g. `hello-2.12`.
    pub name: String,
    pub system: String,
    /// The `.drv` store path; a GC root for it exists in [`EvalOptions::gc_roots_dir`].
    pub drv_path: String,
    /// Output name → store path (empty for floating content-addressed outputs).
    pub outputs: BTreeMap<String, String>,
    /// The JSON-serialisable attributes of `meta` (others are left out), plus the derivation's `pname`
    /// and `version` when `meta` lacks them; `None` when [`EvalOptions::meta`] is off. See the module
    /// documentation for how it is stored.
    #[serde(with = "meta_serde")]
    pub meta: Option<serde_json::Value>,
    pub required_system_features: Vec<String>,
}

/// What [`evaluate`] sends while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EvalEvent {
    /// The number of records the evaluation will produce. The built-in backend sends it once, before the
    /// first record; `nix-eval-jobs` cannot know it in advance, so it comes after the last record there.
    Listed {
        total: usize,
    },
    Record(EvalRecord),
    /// `done` records have been sent. `total == 0` with `done > 0` means the total is not known yet
    /// (`nix-eval-jobs`). The last progress event has `done == total`.
    Progress {
        done: usize,
        total: usize,
    },
    /// Where the evaluation stands, for progress lines; sent during the walk (before `Listed`) and before
    /// each `Progress`.
    Counts(EvalCounts),
}

/// How far an evaluation got: attributes found (listed), attributes whose evaluation finished
/// (evaluated), derivations instantiated with a GC root, and failing attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalCounts {
    pub listed: u64,
    pub evaluated: u64,
    pub instantiated: u64,
    pub errors: u64,
}

/// What a finished evaluation reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The backend that ran (never `Auto`).
    pub backend: EvalBackend,
    pub total: usize,
    pub derivations: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// `nix repl` sessions the built-in walk started (see `eval_builtin`); 0 for `nix-eval-jobs`.
    #[serde(default)]
    pub walk_sessions: u64,
    /// `nix-instantiate` walk processes the built-in walk started (without sessions, or when none starts).
    #[serde(default)]
    pub walk_processes: u64,
}

/// A failure of the whole evaluation (failures of single attributes are [`EvalOutcome::Error`] records).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("invalid evaluation options: {field} {problem}")]
    InvalidOptions { field: &'static str, problem: &'static str },
    #[error("{program} was not found on PATH: Nix must be installed to evaluate jobs")]
    NixNotFound { program: String },
    #[error(transparent)]
    Process(ProcessError),
    #[error("the job file {} must be a relative path inside the checkout", file.display())]
    FileOutsideCheckout { file: PathBuf },
    #[error("the job file {} does not exist", path.display())]
    FileNotFound { path: PathBuf },
    #[error("the checkout {} has no flake.nix", path.display())]
    NoFlake { path: PathBuf },
    #[error("flake.lock cannot be used: {problem}")]
    FlakeLock { problem: String },
    #[error(
        "flake.lock locks the input `{input}` to the local path `{path}`, outside the checkout: evaluation \
         never reads the server's disk; fetch the input by URL instead (github:, git+https:, a tarball)"
    )]
    FlakeLocalInput { input: String, path: String },
    #[error(
        "flake.lock does not lock every input of flake.nix as flake.nix declares it, and evaluation never \
         updates or fetches to complete the lock file: run `nix flake lock` and commit flake.lock. Nix \
         said: {message}"
    )]
    FlakeUnlocked { message: String },
    #[error("evaluating {what} failed: {message}")]
    Nix { what: String, message: String },
    #[error("{what} is {actual}, not an attribute set or a derivation")]
    NotAnAttrSet { what: String, actual: String },
    #[error("evaluating {what} exceeded the memory limit of {limit_mib} MiB")]
    MemoryLimit { what: String, limit_mib: u64 },
    #[error("the evaluation did not finish within its time limit of {}", DisplayDuration(*limit))]
    Timeout { limit: Duration },
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("unexpected output from {program}: {detail}")]
    Protocol { program: String, detail: String },
    #[error("the receiver of the evaluation events was dropped")]
    Cancelled,
    /// Host trouble, retried by the pipeline: the evaluator died of the host's lack of memory.
    #[error("{0}")]
    OomKilled(#[source] crate::nix::process::host::OomKilled),
}

impl From<ProcessError> for EvalError {
    fn from(e: ProcessError) -> EvalError {
        if e.is_not_found() {
            if let ProcessError::Spawn { program, .. } = &e {
                return EvalError::NixNotFound { program: program.clone() };
            }
        }
        EvalError::Process(e)
    }
}

/// A duration as `1h`, `90s`, `1.5s` or `250ms`.
struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            if s > 0 && s.is_multiple_of(3600) {
                write!(f, "{}h", s / 3600)
            } else if s > 0 && s.is_multiple_of(60) {
                write!(f, "{}min", s / 60)
            } else {
                write!(f, "{s}s")
            }
        } else if d < Duration::from_secs(1) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{:.3}s", d.as_secs_f64())
        }
    }
}

/// Evaluates `source` in `checkout`, sending [`EvalEvent`]s to `events` as it goes, and returns the
/// totals. Per-attribute failures are records; the error is for failures of the whole job. The future is
/// cancel-safe in the sense that dropping it kills every evaluator process it started.
pub async fn evaluate(
    checkout: &Path,
    source: &EvalSource,
    opts: &EvalOptions,
    events: async_channel::Sender<EvalEvent>,
) -> Result<EvalSummary, EvalError> {
    let started = Instant::now();
    if opts.workers == 0 {
        return Err(EvalError::InvalidOptions { field: "workers", problem: "must be at least 1" });
    }
    if opts.batch_size == 0 {
        return Err(EvalError::InvalidOptions { field: "batch_size", problem: "must be at least 1" });
    }
    let backend = match opts.backend {
        EvalBackend::Auto => {
            if smol::unblock(|| find_on_path("nix-eval-jobs")).await.is_some() {
                EvalBackend::NixEvalJobs
            } else {
                EvalBackend::Builtin
            }
        }
        b => b,
    };
    let emitter = Emitter::new(events);
    let work = async {
        match backend {
            EvalBackend::NixEvalJobs => run_nix_eval_jobs(checkout, source, opts, &emitter).await,
            _ => crate::nix::eval_builtin::run(checkout, source, opts, &emitter).await,
        }
    };
    within(started, opts.timeout, work).await?;
    Ok(EvalSummary {
        backend,
        total: emitter.done.get(),
        derivations: emitter.derivations.get(),
        errors: emitter.errors.get(),
        elapsed: started.elapsed(),
        walk_sessions: emitter.walk_sessions.get(),
        walk_processes: emitter.walk_processes.get(),
    })
}

/// Finds Nix's own message for attributes of `source` whose error records were deferred
/// ([`DEFERRED_ERROR`]): `nix repl` sessions import the job once per share of the workers and evaluate
/// each attribute without `tryEval` (see [`crate::nix::eval_explain`]). Returns one message per
/// attribute of `attrs`, in order. An attribute that evaluates without error this time gets a message
/// saying so (the expression is impure). Bounded by `opts.timeout`, like [`evaluate`].
pub async fn explain(
    checkout: &Path,
    source: &EvalSource,
    opts: &EvalOptions,
    attrs: &[Vec<String>],
) -> Result<Vec<String>, EvalError> {
    if attrs.is_empty() {
        return Ok(Vec::new());
    }
    within(Instant::now(), opts.timeout, crate::nix::eval_builtin::explain(checkout, source, opts, attrs))
        .await
}

/// Runs `work` until `limit` after `started`, then gives up with [`EvalError::Timeout`] (dropping `work`
/// kills its processes).
async fn within<T>(
    started: Instant,
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, EvalError>>,
) -> Result<T, EvalError> {
    match started.checked_add(limit) {
        Some(deadline) => {
            futures_lite::future::or(work, async {
                smol::Timer::at(deadline).await;
                Err(EvalError::Timeout { limit })
            })
            .await
        }
        None => work.await,
    }
}

/// Sends events and counts records; shared by the workers of one evaluation (single-threaded).
pub(crate) struct Emitter {
    tx: async_channel::Sender<EvalEvent>,
    pub(crate) done: Cell<usize>,
    pub(crate) total: Cell<usize>,
    pub(crate) derivations: Cell<usize>,
    pub(crate) errors: Cell<usize>,
    /// Attributes the built-in walk found and evaluated (it finds more than it makes records of: sets
    /// it recursed into, values it skipped); `None` before the walk ends, and for `nix-eval-jobs`.
    pub(crate) walked: Cell<Option<(u64, u64)>>,
    /// Walk sessions and walk processes started (for [`EvalSummary`]).
    pub(crate) walk_sessions: Cell<u64>,
    pub(crate) walk_processes: Cell<u64>,
}

impl Emitter {
    pub(crate) fn new(tx: async_channel::Sender<EvalEvent>) -> Emitter {
        Emitter {
            tx,
            done: Cell::new(0),
            total: Cell::new(0),
            derivations: Cell::new(0),
            errors: Cell::new(0),
            walked: Cell::new(None),
            walk_sessions: Cell::new(0),
            walk_processes: Cell::new(0),
        }
    }

    async fn send(&self, event: EvalEvent) -> Result<(), EvalError> {
        self.tx.send(event).await.map_err(|_| EvalError::Cancelled)
    }

    pub(crate) async fn listed(&self, total: usize) -> Result<(), EvalError> {
        self.total.set(total);
        self.send(EvalEvent::Listed { total }).await
    }

    pub(crate) async fn record(&self, record: EvalRecord) -> Result<(), EvalError> {
        match record.outcome {
            EvalOutcome::Derivation(_) => self.derivations.set(self.derivations.get() + 1),
            EvalOutcome::Error { .. } => self.errors.set(self.errors.get() + 1),
        }
        self.done.set(self.done.get() + 1);
        self.send(EvalEvent::Record(record)).await
    }

    /// Sends where the evaluation stands (see [`EvalEvent::Counts`]).
    pub(crate) async fn counts(&self, counts: EvalCounts) -> Result<(), EvalError> {
        self.send(EvalEvent::Counts(counts)).await
    }

    pub(crate) async fn progress(&self) -> Result<(), EvalError> {
        let done = self.done.get() as u64;
        let (listed, evaluated) = self.walked.get().unwrap_or((done.max(self.total.get() as u64), done));
        self.counts(EvalCounts {
            listed,
            evaluated,
            instantiated: self.derivations.get() as u64,
            errors: self.errors.get() as u64,
        })
        .await?;
        self.send(EvalEvent::Progress { done: self.done.get(), total: self.total.get() }).await
    }
}

/// The first executable file called `name` in `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Joins an attribute path with dots, quoting names that contain a dot (nix-eval-jobs' format).
pub fn attr_display(path: &[String]) -> String {
    let mut out = String::new();
    for (i, name) in path.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if name.contains('.') {
            out.push('"');
            out.push_str(name);
            out.push('"');
        } else {
            out.push_str(name);
        }
    }
    out
}

/// Splits an attribute path written by [`attr_display`] (or nix-eval-jobs) back into names.
pub fn attr_split(attr: &str) -> Vec<String> {
    let mut names = Vec::new();
    if attr.is_empty() {
        return names;
    }
    let mut current = String::new();
    let mut quoted = false;
    for c in attr.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => names.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    names.push(current);
    names
}

/// Nix's error message from a process's stderr: escapes stripped, everything before the first line
/// starting with `error:` (traces, warnings) and the `--show-trace` hint dropped, at most
/// [`MAX_MESSAGE_BYTES`] bytes cut on a character boundary.
pub fn nix_error_message(stderr: &[u8]) -> String {
    let text = crate::text::strip_ansi(&String::from_utf8_lossy(stderr));
    let start = text.lines().scan(0usize, |offset, line| {
        let at = *offset;
        *offset += line.len() + 1;
        Some((at, line))
    });
    let mut from = 0;
    for (at, line) in start {
        if line.starts_with("error:") {
            from = at;
            break;
        }
    }
    let kept: Vec<&str> = text[from.min(text.len())..]
        .lines()
        .filter(|l| !l.trim_start().starts_with("(use '--show-trace' to show detailed location information)"))
        .collect();
    crate::text::bounded_str(kept.join("\n").trim(), MAX_MESSAGE_BYTES)
}

/// (De)serializes `Option<serde_json::Value>` as the value for human-readable formats and as JSON text
/// for binary formats (postcard cannot deserialize a `Value`).
mod meta_serde {
    use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(meta: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            meta.serialize(s)
        } else {
            meta.as_ref().map(|v| v.to_string()).serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        if d.is_human_readable() {
            Option::<Value>::deserialize(d)
        } else {
            match Option::<String>::deserialize(d)? {
                Some(text) => serde_json::from_str(&text).map(Some).map_err(D::Error::custom),
                None => Ok(None),
            }
        }
    }
}

/// A line of nix-eval-jobs output that is not a record.
#[derive(Debug, thiserror::Error)]
pub enum NixEvalJobsLineError {
    #[error("not a JSON object: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the record for {attr:?} has neither `error` nor `{field}`")]
    Missing { attr: String, field: &'static str },
}

#[derive(Deserialize)]
struct NejLine {
    #[serde(default)]
    attr: Option<String>,
    #[serde(default, rename = "attrPath")]
    attr_path: Option<Vec<String>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default, rename = "drvPath")]
    drv_path: Option<String>,
    #[serde(default)]
    outputs: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    meta: Option<serde_json::Value>,
    #[serde(default, rename = "requiredSystemFeatures")]
    required_system_features: Option<Vec<String>>,
}

/// Parses one line of `nix-eval-jobs` output (`{"attr":…,"attrPath":[…],"drvPath":…,…}` or
/// `{"attr":…,"error":…}`). Fields nix-eval-jobs adds that we do not use (`inputDrvs`, `cacheStatus`,
/// `isCached`, `neededBuilds`, `constituents`, …) are ignored; `attrPath` is derived from `attr` for
/// versions that do not write it.
pub fn parse_nix_eval_jobs_line(line: &str) -> Result<EvalRecord, NixEvalJobsLineError> {
    let l: NejLine = serde_json::from_str(line)?;
    let attr_path = match (&l.attr_path, &l.attr) {
        (Some(p), _) => p.clone(),
        (None, Some(a)) => attr_split(a),
        (None, None) => Vec::new(),
    };
    let attr = attr_display(&attr_path);
    if let Some(error) = l.error {
        let message = crate::text::bounded_str(crate::text::strip_ansi(&error).trim(), MAX_MESSAGE_BYTES);
        return Ok(EvalRecord { attr, attr_path, outcome: EvalOutcome::Error { message } });
    }
    let missing = |field| NixEvalJobsLineError::Missing { attr: attr.clone(), field };
    let drv_path = l.drv_path.ok_or_else(|| missing("drvPath"))?;
    let name = l.name.ok_or_else(|| missing("name"))?;
    let system = l.system.ok_or_else(|| missing("system"))?;
    let outputs =
        l.outputs.unwrap_or_default().into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
    let drv = EvalDrv {
        name,
        system,
        drv_path,
        outputs,
        meta: l.meta,
        required_system_features: l.required_system_features.unwrap_or_default(),
    };
    Ok(EvalRecord { attr, attr_path, outcome: EvalOutcome::Derivation(drv) })
}

/// Adds `pname` and `version` to a meta object when it lacks them.
pub(crate) fn meta_with_names(
    meta: Option<serde_json::Value>,
    pname: Option<String>,
    version: Option<String>,
) -> Option<serde_json::Value> {
    let mut meta = meta?;
    if let serde_json::Value::Object(map) = &mut meta {
        if let Some(p) = pname {
            map.entry("pname").or_insert(serde_json::Value::String(p));
        }
        if let Some(v) = version {
            map.entry("version").or_insert(serde_json::Value::String(v));
        }
    }
    Some(meta)
}

/// Percent-encodes everything but unreserved characters and `/` (for flake URLs).
pub(crate) fn percent_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The flake reference Nix should use for a checkout: `git+file://` for a Git work tree (only tracked
/// files are copied to the store), `path:` otherwise.
pub(crate) fn flake_ref(checkout: &Path, git: bool) -> String {
    let encoded = percent_encode_path(&checkout.to_string_lossy());
    if git {
        format!("git+file://{encoded}")
    } else {
        format!("path:{encoded}")
    }
}

/// What a checked job evaluates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The absolute path of the file to import.
    File(PathBuf),
    /// The flake reference of the checkout.
    Flake(String),
}

/// Resolves and checks the checkout and the job's file or flake; returns the canonical checkout and the
/// target.
pub(crate) async fn check_source(
    checkout: &Path,
    source: &EvalSource,
    opts: &EvalOptions,
) -> Result<(PathBuf, Target), EvalError> {
    let checkout = checkout.to_path_buf();
    let source = source.clone();
    let checked = smol::unblock(move || {
        let canonical = std::fs::canonicalize(&checkout).map_err(|source| EvalError::Io {
            action: "open the checkout",
            path: checkout.clone(),
            source,
        })?;
        match &source {
            EvalSource::File { file, .. } => {
                if file.is_absolute()
                    || file.components().any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(EvalError::FileOutsideCheckout { file: file.clone() });
                }
                let path = canonical.join(file);
                if !path.exists() {
                    return Err(EvalError::FileNotFound { path });
                }
                Ok((canonical, Target::File(path)))
            }
            EvalSource::Flake { .. } => {
                if !canonical.join("flake.nix").is_file() {
                    return Err(EvalError::NoFlake { path: canonical });
                }
                super::flake::check_lock_file(&canonical)?;
                let git = canonical.join(".git").exists();
                let reference = flake_ref(&canonical, git);
                Ok((canonical, Target::Flake(reference)))
            }
        }
    })
    .await?;
    if let Target::Flake(reference) = &checked.1 {
        super::flake::check_locked_offline(reference, &checked.0, opts, FLAKE_LOCK_CHECK_TIMEOUT).await?;
    }
    Ok(checked)
}

/// How long the offline lock check of a flake job may take.
const FLAKE_LOCK_CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// Creates the GC roots directory and returns its absolute path.
pub(crate) async fn prepare_roots_dir(dir: &Path) -> Result<PathBuf, EvalError> {
    let dir = dir.to_path_buf();
    smol::unblock(move || {
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::canonicalize(&dir))
            .map_err(|source| EvalError::Io { action: "create the GC roots directory", path: dir, source })
    })
    .await
}

/// The Nix expression nix-eval-jobs evaluates for a file job: import, auto-call, select the attribute path.
const NEJ_FILE_EXPR: &str = r#"{ ekaCiFile, ekaCiAttrPath }:
let
  raw = import (/. + ekaCiFile);
  top = if builtins.isFunction raw then raw { } else raw;
in builtins.foldl' (v: n: v.${n}) top (builtins.fromJSON ekaCiAttrPath)"#;

/// Builds the `nix-eval-jobs` command line for a job.
pub(crate) fn nix_eval_jobs_command(
    program: &Path,
    checkout: &Path,
    target: &Target,
    attr_path: &[String],
    opts: &EvalOptions,
    roots_dir: &Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.current_dir(checkout);
    cmd.arg("--workers").arg(opts.workers.to_string());
    if opts.max_memory_mib > 0 {
        cmd.arg("--max-memory-size").arg(opts.max_memory_mib.to_string());
    }
    cmd.arg("--gc-roots-dir").arg(roots_dir);
    if opts.meta {
        cmd.arg("--meta");
    }
    if opts.force_recurse {
        cmd.arg("--force-recurse");
    }
    add_restriction_args(&mut cmd, opts, &[checkout]);
    match target {
        Target::File(file) => {
            let path_json = serde_json::to_string(attr_path).unwrap_or_else(|_| "[]".to_string());
            cmd.arg("--expr").arg(NEJ_FILE_EXPR);
            cmd.arg("--argstr").arg("ekaCiFile").arg(file);
            cmd.arg("--argstr").arg("ekaCiAttrPath").arg(path_json);
        }
        Target::Flake(reference) => {
            cmd.args(["--extra-experimental-features", "nix-command flakes"]);
            cmd.arg("--flake").arg(format!("{reference}#{}", flake_fragment(attr_path)));
        }
    }
    cmd
}

/// A flake URL fragment selecting `attr_path`: names quoted where needed, then percent-encoded.
pub(crate) fn flake_fragment(attr_path: &[String]) -> String {
    let joined: Vec<String> = attr_path
        .iter()
        .map(|n| {
            if !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'\''))
            {
                n.clone()
            } else {
                format!("\"{n}\"")
            }
        })
        .collect();
    percent_encode_path(&joined.join("."))
}

/// Runs `nix-eval-jobs` and streams its records.
async fn run_nix_eval_jobs(
    checkout: &Path,
    source: &EvalSource,
    opts: &EvalOptions,
    out: &Emitter,
) -> Result<(), EvalError> {
    let program = smol::unblock(|| find_on_path("nix-eval-jobs"))
        .await
        .ok_or_else(|| EvalError::NixNotFound { program: "nix-eval-jobs".to_string() })?;
    let (checkout, target) = check_source(checkout, source, opts).await?;
    let roots_dir = prepare_roots_dir(&opts.gc_roots_dir).await?;
    let attr_path = match source {
        EvalSource::File { attr_path, .. } | EvalSource::Flake { attr_path } => attr_path,
    };
    let cmd = nix_eval_jobs_command(&program, &checkout, &target, attr_path, opts, &roots_dir);
    let mut child = SupervisedChild::spawn(cmd, Pipe::Null, Pipe::Piped, Pipe::Piped)?;
    let program_name = child.program().to_string();
    let stdout = child.take_stdout();
    let stderr = child.take_stderr();
    let mut tail = TailBuffer::new(64 << 10);

    let read_stdout = async {
        let Some(stdout) = stdout else { return Ok(()) };
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next().await {
            let line = line
                .map_err(|e| EvalError::Protocol { program: program_name.clone(), detail: e.to_string() })?;
            if line.trim().is_empty() {
                continue;
            }
            let mut record = parse_nix_eval_jobs_line(&line)
                .map_err(|e| EvalError::Protocol { program: program_name.clone(), detail: e.to_string() })?;
            if let EvalOutcome::Derivation(drv) = &mut record.outcome {
                complete_from_drv_file(drv, opts.meta).await;
            }
            out.record(record).await?;
            if out.done.get().is_multiple_of(opts.batch_size) {
                out.progress().await?;
            }
        }
        Ok::<(), EvalError>(())
    };
    let read_stderr = async {
        if let Some(mut stderr) = stderr {
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = futures_lite::io::AsyncReadExt::read(&mut stderr, &mut buf).await {
                if n == 0 {
                    break;
                }
                tail.push(&buf[..n]);
            }
        }
    };
    // On a bad line, kill the group so that stderr reaches its end too.
    let read_stdout = async {
        let r = read_stdout.await;
        if r.is_err() {
            child.kill_group();
        }
        r
    };
    let (read, ()) = futures_lite::future::zip(read_stdout, read_stderr).await;
    read?;
    let status = child.wait().await?;
    if !status.success() {
        let (stderr, _) = tail.into_parts();
        let what = match source {
            EvalSource::File { file, attr_path } => {
                format!("{} (attribute {:?})", file.display(), attr_display(attr_path))
            }
            EvalSource::Flake { attr_path } => format!("the flake output {:?}", attr_display(attr_path)),
        };
        let mut message = nix_error_message(&stderr);
        if message.is_empty() {
            message = format!("nix-eval-jobs failed with {status}");
        }
        return Err(EvalError::Nix { what, message });
    }
    let total = out.done.get();
    out.listed(total).await?;
    out.progress().await
}

/// nix-eval-jobs does not report `requiredSystemFeatures`, `pname` or `version`: read them from the .drv.
async fn complete_from_drv_file(drv: &mut EvalDrv, meta: bool) {
    let path = PathBuf::from(&drv.drv_path);
    let parsed = smol::unblock(move || crate::nix::drv::read_derivation(&path)).await;
    match parsed {
        Ok(d) => {
            if drv.required_system_features.is_empty() {
                drv.required_system_features = d.required_system_features();
            }
            if meta {
                let (pname, version) = match d.pname_version() {
                    Some((p, v)) => (Some(p), Some(v)),
                    None => (None, None),
                };
                drv.meta = meta_with_names(drv.meta.take().or(Some(serde_json::json!({}))), pname, version);
            }
        }
        Err(e) => {
            tracing::warn!(drv = %drv.drv_path, error = %e, "cannot read a derivation nix-eval-jobs reported")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_successful_line_with_meta() {
        let line = r#"{"attr":"hello","attrPath":["hello"],"drvPath":"/nix/store/0lq4h2ym5bd7ra4ihclb1kwqsq4cc3qa-hello-2.12.1.drv","inputDrvs":{"/nix/store/5bjmjy2lzhvvkysgrqcm3jlxqpxdkfyd-bash-5.2-p15.drv":["out"]},"isCached":false,"meta":{"available":true,"broken":false,"description":"A program that produces a familiar, friendly greeting","homepage":"https://www.gnu.org/software/hello/manual/","license":{"deprecated":false,"free":true,"fullName":"GNU General Public License v3.0 or later","redistributable":true,"shortName":"gpl3Plus","spdxId":"GPL-3.0-or-later","url":"https://spdx.org/licenses/GPL-3.0-or-later.html"},"maintainers":[{"email":"edolstra+nixpkgs@gmail.com","github":"edolstra","githubId":1148549,"name":"Eelco Dolstra"}],"name":"hello-2.12.1","outputsToInstall":["out"],"platforms":["x86_64-linux","aarch64-linux"],"position":"/nix/store/abc-source/pkgs/by-name/he/hello/package.nix:34","unfree":false,"unsupported":false},"name":"hello-2.12.1","outputs":{"out":"/nix/store/2g2pzq3wnd0l1clwwawqcwc0lm5hdhw7-hello-2.12.1"},"system":"x86_64-linux"}"#;
        let r = parse_nix_eval_jobs_line(line).expect("parse");
        assert_eq!(r.attr, "hello");
        assert_eq!(r.attr_path, vec!["hello"]);
        let EvalOutcome::Derivation(d) = r.outcome else { panic!("not a derivation") };
        assert_eq!(d.name, "hello-2.12.1");
        assert_eq!(d.system, "x86_64-linux");
        assert_eq!(d.drv_path, "/nix/store/0lq4h2ym5bd7ra4ihclb1kwqsq4cc3qa-hello-2.12.1.drv");
        assert_eq!(d.outputs["out"], "/nix/store/2g2pzq3wnd0l1clwwawqcwc0lm5hdhw7-hello-2.12.1");
        let meta = d.meta.expect("meta");
        assert_eq!(meta["license"]["spdxId"], "GPL-3.0-or-later");
        assert_eq!(meta["maintainers"][0]["github"], "edolstra");
        assert!(d.required_system_features.is_empty());
    }

    #[test]
    fn parses_an_error_line() {
        let line = "{\"attr\":\"broken\",\"attrPath\":[\"broken\"],\"error\":\"\\u001b[31;1merror:\\u001b[0m\\n       … while evaluating the attribute 'broken'\\n\\n       error: assertion '(1 == 2)' failed\"}";
        let r = parse_nix_eval_jobs_line(line).expect("parse");
        assert_eq!(r.attr, "broken");
        let EvalOutcome::Error { message } = r.outcome else { panic!("not an error") };
        assert!(message.starts_with("error:\n"), "{message}");
        assert!(message.contains("assertion '(1 == 2)' failed"));
        assert!(!message.contains('\u{1b}'));
    }

    #[test]
    fn parses_nested_quoted_and_old_format_lines() {
        let line = r#"{"attr":"python3Packages.\"foo.bar\"","attrPath":["python3Packages","foo.bar"],"drvPath":"/nix/store/aaa-foo.drv","name":"foo","outputs":{"dev":"/nix/store/bbb-foo-dev","out":"/nix/store/ccc-foo"},"system":"aarch64-linux","requiredSystemFeatures":["kvm","big-parallel"]}"#;
        let r = parse_nix_eval_jobs_line(line).expect("parse");
        assert_eq!(r.attr_path, vec!["python3Packages", "foo.bar"]);
        assert_eq!(r.attr, "python3Packages.\"foo.bar\"");
        let EvalOutcome::Derivation(d) = r.outcome else { panic!("not a derivation") };
        assert_eq!(d.outputs.len(), 2);
        assert_eq!(d.required_system_features, vec!["kvm", "big-parallel"]);
        assert_eq!(d.meta, None);

        // Old nix-eval-jobs: no attrPath, outputs may be null for floating CA outputs.
        let old = r#"{"attr":"a.\"b.c\".d","drvPath":"/nix/store/x.drv","name":"x","outputs":{"out":null},"system":"x86_64-linux"}"#;
        let r = parse_nix_eval_jobs_line(old).expect("parse");
        assert_eq!(r.attr_path, vec!["a", "b.c", "d"]);
        let EvalOutcome::Derivation(d) = r.outcome else { panic!("not a derivation") };
        assert_eq!(d.outputs["out"], "");

        assert!(matches!(parse_nix_eval_jobs_line("not json"), Err(NixEvalJobsLineError::Json(_))));
        assert!(matches!(
            parse_nix_eval_jobs_line(r#"{"attr":"x","attrPath":["x"],"name":"x"}"#),
            Err(NixEvalJobsLineError::Missing { field: "drvPath", .. })
        ));
    }

    #[test]
    fn attr_names_round_trip() {
        for path in [vec![], vec!["a"], vec!["a", "b.c", "d"], vec!["x-1", "y_2"]] {
            let path: Vec<String> = path.into_iter().map(String::from).collect();
            assert_eq!(attr_split(&attr_display(&path)), path);
        }
        assert_eq!(attr_display(&["a".into(), "1.2".into()]), "a.\"1.2\"");
    }

    #[test]
    fn extracts_nix_error_messages() {
        let stderr = b"trace: hello\nwarning: something\n\x1b[31;1merror:\x1b[0m assertion '(1 == 2)' failed\n\n       at /tmp/a.nix:2:73:\n\n(use '--show-trace' to show detailed location information)\n";
        let m = nix_error_message(stderr);
        assert_eq!(m, "error: assertion '(1 == 2)' failed\n\n       at /tmp/a.nix:2:73:");
        let long = format!("error: {}", "é".repeat(10_000));
        let m = nix_error_message(long.as_bytes());
        assert!(m.len() <= MAX_MESSAGE_BYTES && m.starts_with("error: é"));
        assert_eq!(nix_error_message(b"no error prefix"), "no error prefix");
        assert_eq!(nix_error_message(b"\xff\xfe error: x"), "\u{fffd}\u{fffd} error: x");
    }

    fn sample_record(meta: Option<serde_json::Value>) -> EvalRecord {
        EvalRecord {
            attr: "a.b".into(),
            attr_path: vec!["a".into(), "b".into()],
            outcome: EvalOutcome::Derivation(EvalDrv {
                name: "b-1.0".into(),
                system: "x86_64-linux".into(),
                drv_path: "/nix/store/x-b-1.0.drv".into(),
                outputs: BTreeMap::from([("out".into(), "/nix/store/y-b-1.0".into())]),
                meta,
                required_system_features: vec!["kvm".into()],
            }),
        }
    }

    #[test]
    fn records_round_trip_through_postcard_and_json() {
        let meta = serde_json::json!({"license": {"spdxId": "MIT", "free": true}, "maintainers": [{"name": "A"}], "priority": 5, "f": 1.5, "n": null});
        for record in [
            sample_record(Some(meta.clone())),
            sample_record(None),
            EvalRecord {
                attr: "e".into(),
                attr_path: vec!["e".into()],
                outcome: EvalOutcome::Error { message: "error: x".into() },
            },
        ] {
            let bytes = postcard::to_allocvec(&record).expect("postcard");
            let back: EvalRecord = postcard::from_bytes(&bytes).expect("postcard back");
            assert_eq!(back, record);
            let json = serde_json::to_string(&record).expect("json");
            let back: EvalRecord = serde_json::from_str(&json).expect("json back");
            assert_eq!(back, record);
        }
        // JSON shows meta as a value, not as a string.
        let json = serde_json::to_value(sample_record(Some(meta))).expect("json");
        assert_eq!(json["outcome"]["Derivation"]["meta"]["license"]["spdxId"], "MIT");
        let ev = EvalEvent::Progress { done: 1, total: 2 };
        assert_eq!(
            postcard::from_bytes::<EvalEvent>(&postcard::to_allocvec(&ev).expect("ser")).expect("de"),
            ev
        );
    }

    #[test]
    fn builds_flake_refs_and_fragments() {
        assert_eq!(percent_encode_path("/tmp/a b/c#d"), "/tmp/a%20b/c%23d");
        assert_eq!(flake_ref(Path::new("/tmp/a b"), false), "path:/tmp/a%20b");
        assert_eq!(flake_ref(Path::new("/src"), true), "git+file:///src");
        assert_eq!(flake_fragment(&["checks".into(), "x86_64-linux".into()]), "checks.x86_64-linux");
        assert_eq!(flake_fragment(&["a.b".into()]), "%22a.b%22");
        assert_eq!(format!("{}", DisplayDuration(Duration::from_secs(3600))), "1h");
        assert_eq!(format!("{}", DisplayDuration(Duration::from_millis(1500))), "1.500s");
        assert_eq!(format!("{}", DisplayDuration(Duration::from_millis(200))), "200ms");
        assert_eq!(format!("{}", DisplayDuration(Duration::from_secs(90))), "90s");
    }

    #[test]
    fn nix_eval_jobs_command_line() {
        let mut opts = EvalOptions::new("/roots");
        opts.workers = 3;
        opts.max_memory_mib = 2048;
        opts.force_recurse = true;
        let cmd = nix_eval_jobs_command(
            Path::new("nix-eval-jobs"),
            Path::new("/co"),
            &Target::File("/co/release.nix".into()),
            &["jobs".to_string()],
            &opts,
            Path::new("/roots"),
        );
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with(
                "--workers 3 --max-memory-size 2048 --gc-roots-dir /roots --meta --force-recurse \
                 --option restrict-eval true --option allowed-uris  -I eka-ci-checkout-0=/co --expr"
            ),
            "{joined}"
        );
        assert!(
            joined.ends_with("--argstr ekaCiFile /co/release.nix --argstr ekaCiAttrPath [\"jobs\"]"),
            "{joined}"
        );
        opts.meta = false;
        let cmd = nix_eval_jobs_command(
            Path::new("nix-eval-jobs"),
            Path::new("/co"),
            &Target::Flake(flake_ref(Path::new("/co"), true)),
            &["hydraJobs".to_string()],
            &opts,
            Path::new("/r"),
        );
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args.last().map(String::as_str), Some("git+file:///co#hydraJobs"));
        assert!(args.windows(2).any(|w| w == ["--extra-experimental-features", "nix-command flakes"]));
        assert!(!args.iter().any(|a| a == "--meta"));
        assert!(args.windows(3).any(|w| w == ["--option", "restrict-eval", "true"]), "flakes too: {args:?}");

        let file_job_args = |opts: &EvalOptions| -> Vec<String> {
            let target = Target::File("/co/release.nix".into());
            let cmd = nix_eval_jobs_command(
                Path::new("nix-eval-jobs"),
                Path::new("/co"),
                &target,
                &[],
                opts,
                Path::new("/r"),
            );
            cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
        };
        opts.allowed_uris = vec!["https://a/".into(), "github:NixOS/".into()];
        let args = file_job_args(&opts);
        assert!(
            args.windows(3).any(|w| w == ["--option", "allowed-uris", "https://a/ github:NixOS/"]),
            "{args:?}"
        );
        opts.restrict_eval = false;
        let args = file_job_args(&opts);
        assert!(!args.iter().any(|a| a == "restrict-eval" || a == "-I"), "{args:?}");
    }
}
