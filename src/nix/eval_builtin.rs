//! The built-in evaluator: lists a job's attributes and instantiates its derivations with Nix's own
//! `nix-instantiate` and `nix repl`, in a pool of parallel worker processes, isolating failures per
//! attribute.
//!
//! Used when `nix-eval-jobs` is not installed. Every step evaluates [`WRAPPER`] on a JSON request file
//! (the job, the mode, a list of attribute paths):
//!
//! 1. **root**: import the file (auto-called with `{}` if it is a function) or `getFlake` the checkout,
//!    select the attribute path; a derivation is the single job, an attribute set is walked, anything else
//!    (or a failure) is an [`EvalError`] for the whole job.
//! 2. **walk** (depth-first, see [`Evaluator::walk`]): the top-level attributes are split into
//!    interleaved shares in a queue; each worker walks share after share in one long-lived `nix repl`
//!    session that keeps the job loaded ([`Evaluator::walk_session`]; the sessions share one memory
//!    budget of `workers` × the cap), or, without sessions, each share in a fresh `nix-instantiate`.
//!    A set is entered as soon as it is classified (no level barrier). Each attribute
//!    is forced under `builtins.tryEval` and classified as derivation, set to recurse into
//!    (`recurseForDerivations = true`, or any set with `force_recurse`), something to skip, or failing; a
//!    derivation's name, system, drvPath, outputs, meta and requiredSystemFeatures are computed in the
//!    same pass, also under `tryEval` (read-write store, so that import-from-derivation can build and the
//!    `.drv` files are written). Each result is printed at once as a `builtins.trace` line marked with a
//!    random nonce, so results stream while the process runs. Each attribute is evaluated once.
//! 3. **roots**, every 5,000 derivations and when a walk session or process ends: `nix-instantiate
//!    --add-root` of one stand-in whose "drvPath"
//!    is a store file listing (so referencing) the step's `.drv` paths, written by `builtins.toFile`: one
//!    GC root per 5,000 derivations, no evaluation of the job. If a `.drv` is no longer valid, the step
//!    fails and its derivations go through the full per-batch instantiation instead.
//! 4. **explain**: with [`EvalOptions::defer_error_messages`] (the server), the attributes whose `tryEval`
//!    failed are recorded with [`crate::nix::eval::DEFERRED_ERROR`] and [`explain`] finds their messages
//!    later, for the errors a report shows. Otherwise they get Nix's real message from `nix repl` sessions
//!    ([`crate::nix::eval_explain`]) that evaluate many of them without the guard, one import each.
//!    What the repl cannot explain (it evaluates fine there, or no session starts) goes through the
//!    per-batch steps: **info** (the walk's computation under `tryEval`), **explain** alone in a process,
//!    **instantiate** (`nix-instantiate --add-root` of the real attributes).
//!
//! A walk session survives an error `tryEval` cannot catch (a type error, `abort`): the attribute it was on
//! gets the message and the session carries on. A walk session or process that ends early (such an error
//! in a process, the memory cap, a crash) has reported every attribute before the one it was on: a fresh
//! one continues from there. That attribute gets the process's message, except over the memory cap, where it is retried
//! (memory grows with everything a process has evaluated); only an attribute that is first in a fresh
//! process and still goes over is an error. The other steps work on lists: when Nix printed part of its
//! JSON output before failing (Nix 2.8 does), the complete elements are results and the next attribute is
//! the culprit ([`streamed_prefix`]); otherwise the list is bisected: split in halves and retried until
//! the failing attribute is alone. Either way one bad attribute never costs the rest of the job. The
//! walk's records are kept until it ends (`Listed` comes first), then sent; explanations are sent as each
//! share finishes, `workers` processes at a time.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde::Deserialize;
use serde_json::Value;

use crate::nix::eval::{
    add_restriction_args, attr_display, check_source, meta_with_names, nix_error_message, prepare_roots_dir,
    Emitter, EvalCounts, EvalDrv, EvalError, EvalEvent, EvalOptions, EvalOutcome, EvalRecord, EvalSource,
    Target, DEFERRED_ERROR, WALK_SESSION_SHARES_PER_WORKER,
};
use crate::nix::eval_explain::{self, nix_string, ExplainError, Explained, Session};
use crate::nix::process::builders::read_oom_kills;
use crate::nix::process::host::OomKilled;
use crate::nix::process::{
    run_captured, watch_memory, Pipe, RunLimits, RunOutput, SharedBudget, SupervisedChild, TailBuffer,
    Termination,
};

/// The Nix program every step runs.
const NIX_INSTANTIATE: &str = "nix-instantiate";

/// The Nix program of the explaining repl sessions.
const NIX: &str = "nix";

/// At most this many failed attributes per repl session (a fresh session per share keeps memory bounded
/// and spreads the work over the workers).
const EXPLAIN_SHARE: usize = 1000;

/// The longest line of standard error a walk process may print; a longer one ends the process (the job's
/// code can print anything with `builtins.trace`).
const MAX_LINE: usize = 64 << 20;

/// How often the walk sessions' memory is sampled (one scan of `/proc` for all of them; a session grows
/// by about 15 MB in this time on nixpkgs).
const SESSION_POLL: Duration = Duration::from_millis(100);

/// A walk worker sends progress counts every this many attributes.
const COUNTS_EVERY: u64 = 500;

/// Attribute sets nested deeper than this are not recursed into (protects `force_recurse` from cycles
/// such as `pkgs.pkgs.pkgs…`).
pub const MAX_DEPTH: usize = 32;

/// The Nix side of the evaluator, evaluated by every step with `--argstr ekaCiRequest <request.json>`.
pub const WRAPPER: &str = concat!(
    job_wrapper_prelude!(),
    r#"  isDrv = v: (v.type or null) == "derivation";
  kindOf = v:
    if !(builtins.isAttrs v) then "skip"
    else if isDrv v then "drv"
    else if r.forceRecurse || (v.recurseForDerivations or false) == true then "rec"
    else "skip";
  jsonOk = v:
    let t = builtins.typeOf v;
    in
      if t == "list" then builtins.all jsonOk v
      else if t == "set" then !(v ? outPath) && builtins.all (n: jsonOk v.${n}) (builtins.attrNames v)
      else builtins.elem t [ "int" "bool" "string" "float" "null" ];
  metaOf = d:
    let m = d.meta or { };
    in
      if !(builtins.isAttrs m) then { }
      else builtins.listToAttrs (builtins.concatMap (n:
        let ok = builtins.tryEval (jsonOk m.${n});
        in if ok.success && ok.value then [ { name = n; value = m.${n}; } ] else [ ])
        (builtins.attrNames m));
  strOrNull = v: if builtins.isString v then v else null;
  infoOf = d:
    let
      features = d.requiredSystemFeatures or [ ];
      i = {
        name = d.name;
        system = d.system;
        drvPath = d.drvPath;
        outputs = builtins.listToAttrs
          (map (o: { name = o; value = d.${o}.outPath or null; }) (d.outputs or [ "out" ]));
        features = if builtins.isList features then builtins.filter builtins.isString features else [ ];
        meta = if r.meta then metaOf d else null;
        pname = if r.meta then strOrNull (d.pname or null) else null;
        version = if r.meta then strOrNull (d.version or null) else null;
      };
    in builtins.deepSeq i i;
  info = path:
    let
      res = builtins.tryEval (let v = get path; in if kindOf v == "drv" then infoOf v else throw "not a derivation");
    in if res.success then res.value else null;
  explain = path:
    let v = get path; k = kindOf v;
    in if k == "drv" then infoOf v else { k = k; };
  walk = path:
    let
      v = get path;
      k = builtins.tryEval (kindOf v);
    in
      if !k.success then { k = "err"; }
      else if k.value == "rec" then { k = "rec"; names = builtins.attrNames v; }
      else if k.value == "drv" then
        (let i = builtins.tryEval (infoOf v); in if i.success then { k = "drv"; i = i.value; } else { k = "err"; })
      else { k = "skip"; };
  # Depth-first walk for long-lived walk processes: one line per attribute on stderr ("trace: <nonce>
  # <json>", printed as soon as the attribute is classified, before its children), children of a set to
  # recurse into right after it; the value is the number of lines, a check that the walk ended.
  dfs = path:
    let
      w = walk path;
      children =
        if w.k == "rec" && builtins.length path < r.maxDepth
        then builtins.foldl' (n: c: n + dfs (path ++ [ c ])) 0 w.names
        else 0;
    in builtins.trace "${ekaCiNonce} ${builtins.toJSON w}" (builtins.seq w.k (1 + children));
  # One store file that lists (and so references) up to 5,000 .drv of a walk process: one GC root keeps them all.
  # appendContext fails unless the path is a valid store path.
  rootsFile = builtins.toFile "ekaci-roots" (builtins.concatStringsSep "\n"
    (map (p: let d = builtins.head p; in builtins.appendContext d { ${d} = { path = true; }; }) r.items));
  rootKind =
    if isDrv root then { k = "drv"; }
    else if builtins.isAttrs root then { k = "set"; names = builtins.attrNames root; }
    else { k = "other"; type = builtins.typeOf root; };
in
  if r.mode == "root" then rootKind
  else if r.mode == "dfs" then builtins.foldl' (n: p: n + dfs p) 0 r.items
  else if r.mode == "roots" then [ { type = "derivation"; name = "ekaci-roots"; drvPath = rootsFile; outputName = "out"; } ]
  else if r.mode == "repl" then {
    ex = i: builtins.deepSeq (explain (builtins.elemAt r.items i)) null;
    # A walk session's share: a JSON file listing subtrees, walked depth-first as mode `dfs` does.
    walk = file: builtins.foldl' (n: p: n + dfs p) 0 (builtins.fromJSON (builtins.readFile file));
  }
  else if r.mode == "info" then map info r.items
  else if r.mode == "explain" then map explain r.items
  else builtins.genList (i: get (builtins.elemAt r.items i) // { __ekaCiIndex = i; }) (builtins.length r.items)
"#
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Root,
    Dfs,
    Roots,
    Repl,
    Info,
    Explain,
    Instantiate,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Root => "root",
            Mode::Dfs => "dfs",
            Mode::Roots => "roots",
            Mode::Repl => "repl",
            Mode::Info => "info",
            Mode::Explain => "explain",
            Mode::Instantiate => "instantiate",
        }
    }
}

/// An attribute to instantiate; `error` is set when listing already found it failing.
#[derive(Debug)]
struct Item {
    path: Vec<String>,
    error: Option<String>,
}

/// What the walk found, kept until it ends (records are sent after `Listed`).
#[derive(Default)]
struct Walk {
    /// Finished records: rooted derivations and errors tryEval could not catch.
    records: Vec<EvalRecord>,
    /// Derivations the root step could not handle: instantiated the per-batch way.
    redo: Vec<Item>,
    /// Attributes whose `tryEval` failed: their messages are still to be found.
    unexplained: Vec<Vec<String>>,
}

/// How the standard error of a walk process ended.
enum WalkRead {
    /// End of file: the process exited (or is exiting).
    Eof,
    /// Over the memory cap.
    Memory,
    /// Output that is not what the wrapper prints.
    Bad(String),
}

/// How a walk session ended (see [`Evaluator::walk_session`]).
enum SessionWalk {
    /// The queue is empty and every attribute the session took is reported.
    Done,
    /// No session could start or load the job.
    Unavailable(String),
    /// The session ended at the front of `todo` after reporting `reported` attributes.
    Ended { reported: usize, failure: Failure },
}

/// What the reading side of a walk session saw.
enum SessionRead {
    Done,
    LoadFailed(String),
    /// End of file on standard error, with what the session printed last.
    Eof(TailBuffer),
    Memory,
    Bad(String),
}

/// One line of a child's standard error.
enum LineRead<'b> {
    Line(&'b [u8]),
    Eof,
    /// A line longer than [`MAX_LINE`] (the job's code can print anything with `builtins.trace`).
    TooLong,
}

/// Splits a pipe into lines (without the newline); a last line without a newline is left in
/// [`LineReader::rest`].
#[derive(Default)]
struct LineReader {
    /// Read bytes in `buf[..end]`; the rest is zeroed room for the next read (zeroed once, not per read).
    buf: Vec<u8>,
    end: usize,
    /// Where the unread part of `buf` starts.
    start: usize,
    /// Bytes of `buf` after `start` known to hold no newline.
    scanned: usize,
}

/// The room a [`LineReader`] reads into at least.
const READ_ROOM: usize = 64 << 10;

impl LineReader {
    /// What was read after the last complete line.
    fn rest(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    async fn next(&mut self, pipe: &mut (impl futures_lite::AsyncRead + Unpin)) -> LineRead<'_> {
        loop {
            let from = self.start + self.scanned;
            if let Some(end) = self.buf[from..self.end].iter().position(|b| *b == b'\n') {
                let line_start = self.start;
                let line_end = from + end;
                self.start = line_end + 1;
                self.scanned = 0;
                return LineRead::Line(&self.buf[line_start..line_end]);
            }
            self.scanned = self.end - self.start;
            if self.scanned > MAX_LINE {
                return LineRead::TooLong;
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < READ_ROOM {
                self.buf.resize(self.end + READ_ROOM, 0);
            }
            match pipe.read(&mut self.buf[self.end..]).await {
                Ok(n) if n > 0 => self.end += n,
                _ => return LineRead::Eof,
            }
        }
    }
}

/// Writes `bytes` to `path` off the executor.
async fn write_file(path: &Path, bytes: Vec<u8>) -> Result<(), EvalError> {
    let target = path.to_path_buf();
    smol::unblock(move || std::fs::write(&target, bytes)).await.map_err(|source| EvalError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn too_long() -> String {
    format!("the evaluation printed a line longer than {MAX_LINE} bytes on standard error")
}

/// The walk's results and counters, shared by its workers.
struct Progress<'w> {
    listed: Cell<u64>,
    evaluated: Cell<u64>,
    /// Derivations found (their `.drv` files are written by the walk; the GC root follows).
    derivations: Cell<u64>,
    errors: Cell<u64>,
    found: &'w RefCell<Walk>,
}

impl Progress<'_> {
    /// Takes in one walked attribute: a derivation to root, a failure to explain, children to walk next
    /// (put at the front of `todo`, in order, as the walk process walks them).
    fn accept(
        &self,
        path: Vec<String>,
        walked: Walked,
        todo: &mut VecDeque<Vec<String>>,
        drvs: &mut Vec<(Vec<String>, Info)>,
    ) {
        self.evaluated.set(self.evaluated.get() + 1);
        match (walked.k.as_str(), walked.i) {
            ("drv", Some(info)) => {
                self.derivations.set(self.derivations.get() + 1);
                drvs.push((path, info))
            }
            ("drv" | "err", _) => {
                self.errors.set(self.errors.get() + 1);
                self.found.borrow_mut().unexplained.push(path)
            }
            ("rec", _) if path.len() >= MAX_DEPTH => {
                let message =
                    format!("not recursing into an attribute set nested deeper than {MAX_DEPTH} levels");
                self.errors.set(self.errors.get() + 1);
                self.found.borrow_mut().records.push(error_record(&path, message));
            }
            ("rec", _) => {
                self.listed.set(self.listed.get() + walked.names.len() as u64);
                for name in walked.names.into_iter().rev() {
                    let mut child = path.clone();
                    child.push(name);
                    todo.push_front(child);
                }
            }
            _ => {}
        }
    }

    /// Records `path` as failing with `message` (an error `tryEval` could not catch, or the memory cap).
    fn fail(&self, path: &[String], message: String) {
        self.found.borrow_mut().records.push(error_record(path, message));
        self.evaluated.set(self.evaluated.get() + 1);
        self.errors.set(self.errors.get() + 1);
    }

    fn counts(&self) -> EvalCounts {
        EvalCounts {
            listed: self.listed.get(),
            evaluated: self.evaluated.get(),
            instantiated: self.derivations.get(),
            errors: self.errors.get(),
        }
    }
}

/// Work after the walk.
enum Task<'a> {
    Explain(Vec<Vec<String>>),
    Redo(&'a [Item]),
}

/// Why one step's process failed.
enum Failure {
    Memory,
    Other(String),
}

impl Failure {
    fn message(&self, opts: &EvalOptions) -> String {
        match self {
            Failure::Memory => format!("evaluation exceeded the memory limit of {} MiB", opts.max_memory_mib),
            Failure::Other(m) => m.clone(),
        }
    }
}

#[derive(Deserialize)]
struct RootKind {
    k: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default, rename = "type")]
    type_: String,
}

#[derive(Deserialize)]
struct Walked {
    k: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    i: Option<Info>,
}

#[derive(Deserialize)]
struct Info {
    name: String,
    system: String,
    #[serde(rename = "drvPath")]
    drv_path: String,
    outputs: BTreeMap<String, Option<String>>,
    features: Vec<String>,
    meta: Option<Value>,
    pname: Option<String>,
    version: Option<String>,
}

/// A temporary directory for request files, removed (blocking, it holds a few small files) on drop.
struct WorkDir {
    path: PathBuf,
    token: String,
}

static WORK_DIRS: AtomicU64 = AtomicU64::new(0);

impl WorkDir {
    async fn create() -> Result<WorkDir, EvalError> {
        smol::unblock(|| {
            let base = std::env::temp_dir();
            loop {
                let n = WORK_DIRS.fetch_add(1, Ordering::Relaxed);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let token = format!("ekaci-{}-{n}-{nanos:x}", std::process::id());
                let path = base.join(&token);
                match std::fs::create_dir(&path) {
                    // Canonical: restricted evaluation compares canonical paths with its readable ones.
                    Ok(()) => {
                        return Ok(WorkDir { path: std::fs::canonicalize(&path).unwrap_or(path), token })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(source) => {
                        return Err(EvalError::Io {
                            action: "create a temporary directory in",
                            path: base,
                            source,
                        })
                    }
                }
            }
        })
        .await
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the evaluation's temporary directory");
        }
    }
}

struct Evaluator<'a> {
    checkout: PathBuf,
    target: Target,
    attr_path: Vec<String>,
    what: String,
    opts: &'a EvalOptions,
    roots_dir: PathBuf,
    work: WorkDir,
    seq: Cell<u64>,
    limits: RunLimits,
}

/// Runs the built-in evaluator; see the module documentation.
pub(crate) async fn run(
    checkout: &Path,
    source: &EvalSource,
    opts: &EvalOptions,
    out: &Emitter,
) -> Result<(), EvalError> {
    let ev = Evaluator::new(checkout, source, opts).await?;
    match ev.root().await? {
        None => {
            out.listed(1).await?;
            ev.process_batch(&[Item { path: Vec::new(), error: None }], out).await?;
        }
        Some(names) => {
            let walk = ev.walk(names, out).await?;
            out.listed(walk.records.len() + walk.redo.len() + walk.unexplained.len()).await?;
            ev.finish(walk, out).await?;
        }
    }
    out.progress().await?;
    Ok(())
}

/// Finds Nix's message for each of `attrs` (deferred error records, see
/// [`EvalOptions::defer_error_messages`]): the explaining steps of [`run`] without the walk, in shares
/// over the workers. One message per attribute, in order.
pub(crate) async fn explain(
    checkout: &Path,
    source: &EvalSource,
    opts: &EvalOptions,
    attrs: &[Vec<String>],
) -> Result<Vec<String>, EvalError> {
    let ev = Evaluator::new(checkout, source, opts).await?;
    let (tx, rx) = async_channel::unbounded();
    let out = Emitter::new(tx);
    let per_worker = attrs.len().div_ceil(opts.workers.max(1)).clamp(1, EXPLAIN_SHARE);
    let shares: Vec<&[Vec<String>]> = attrs.chunks(per_worker).collect();
    let next = Cell::new(0usize);
    let worker = || async {
        loop {
            let i = next.get();
            let Some(share) = shares.get(i) else { return Ok::<(), EvalError>(()) };
            next.set(i + 1);
            ev.explain_share(share.to_vec(), &out).await?;
        }
    };
    try_join_all((0..opts.workers.max(1)).map(|_| worker()).collect()).await?;
    drop(out);
    let mut found = std::collections::HashMap::new();
    while let Ok(event) = rx.try_recv() {
        if let EvalEvent::Record(record) = event {
            let message = match record.outcome {
                EvalOutcome::Error { message } => message,
                EvalOutcome::Derivation(d) => format!(
                    "the attribute failed when the job was evaluated but evaluated to {} when its error \
                     was looked up (is the expression impure?)",
                    d.drv_path
                ),
            };
            found.insert(record.attr_path, message);
        }
    }
    Ok(attrs
        .iter()
        .map(|a| {
            found
                .remove(a)
                .unwrap_or_else(|| "evaluation failed; Nix's message could not be found".to_string())
        })
        .collect())
}

impl<'a> Evaluator<'a> {
    /// Checks the source and prepares the GC-roots and request directories.
    async fn new(
        checkout: &Path,
        source: &EvalSource,
        opts: &'a EvalOptions,
    ) -> Result<Evaluator<'a>, EvalError> {
        let (checkout, target) = check_source(checkout, source, opts).await?;
        let roots_dir = prepare_roots_dir(&opts.gc_roots_dir).await?;
        let work = WorkDir::create().await?;
        let (attr_path, what) = match source {
            EvalSource::File { file, attr_path } if attr_path.is_empty() => {
                (attr_path, file.display().to_string())
            }
            EvalSource::File { file, attr_path } => {
                (attr_path, format!("attribute {:?} of {}", attr_display(attr_path), file.display()))
            }
            EvalSource::Flake { attr_path } => {
                (attr_path, format!("the flake output {:?}", attr_display(attr_path)))
            }
        };
        let attr_path = attr_path.clone();
        let limits = RunLimits {
            memory_limit_bytes: (opts.max_memory_mib > 0)
                .then(|| opts.max_memory_mib.saturating_mul(1 << 20)),
            timeout: None,
            poll_interval: Duration::from_millis(50),
            stdout_limit: 256 << 20,
            stderr_tail: 64 << 10,
        };
        Ok(Evaluator { checkout, target, attr_path, what, opts, roots_dir, work, seq: Cell::new(0), limits })
    }
}

impl Evaluator<'_> {
    fn next_seq(&self) -> u64 {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        n
    }

    /// Writes the request file of a step over `items`.
    async fn write_request(&self, mode: Mode, items: &[&[String]]) -> Result<PathBuf, EvalError> {
        let (kind, file, flake) = match &self.target {
            Target::File(f) => ("file", f.to_string_lossy().into_owned(), String::new()),
            Target::Flake(r) => ("flake", String::new(), r.clone()),
        };
        let request = serde_json::json!({
            "mode": mode.as_str(),
            "kind": kind,
            "file": file,
            "ref": flake,
            "attrPath": self.attr_path,
            "items": items,
            "forceRecurse": self.opts.force_recurse,
            "meta": self.opts.meta,
            "maxDepth": MAX_DEPTH,
        });
        self.write_json_file("request", &request).await
    }

    /// Writes `value` as JSON to a new file `<prefix>-<n>.json` of the work directory.
    async fn write_json_file(
        &self,
        prefix: &str,
        value: &impl serde::Serialize,
    ) -> Result<PathBuf, EvalError> {
        let path = self.work.path.join(format!("{prefix}-{}.json", self.next_seq()));
        let bytes = serde_json::to_vec(value).map_err(|e| EvalError::Io {
            action: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_file(&path, bytes).await?;
        Ok(path)
    }

    /// The work directory's copy of [`WRAPPER`] (for `nix repl`, which loads it with `import`), written once.
    async fn wrapper_file(&self) -> Result<PathBuf, EvalError> {
        let wrapper = self.work.path.join("wrapper.nix");
        if !wrapper.exists() {
            write_file(&wrapper, WRAPPER.as_bytes().to_vec()).await?;
        }
        Ok(wrapper)
    }

    /// A `nix repl` in the checkout, restricted like every step.
    fn repl_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(NIX);
        cmd.current_dir(&self.checkout);
        let features = match self.target {
            Target::Flake(_) => "nix-command flakes",
            Target::File(_) => "nix-command",
        };
        cmd.args(["--extra-experimental-features", features]).arg("repl");
        add_restriction_args(&mut cmd, self.opts, &[&self.checkout, &self.work.path]);
        cmd
    }

    /// Runs one `nix-instantiate` step over `items`; `root` makes it an instantiation with GC roots.
    async fn run_nix(
        &self,
        mode: Mode,
        items: &[&[String]],
        root: Option<&Path>,
    ) -> Result<RunOutput, EvalError> {
        let request_path = self.write_request(mode, items).await?;
        let cmd = self.command(mode, &request_path, root, None);
        let oom_before = smol::unblock(read_oom_kills).await;
        let result = run_captured(cmd, &self.limits).await;
        let path = request_path.clone();
        let _ = smol::unblock(move || std::fs::remove_file(path)).await;
        let out = result?;
        // Killed by the kernel for the host's lack of memory (not our own cap, which is
        // `Termination::MemoryLimit`): no verdict on these attributes; the pipeline retries.
        if let Termination::Exited(status) = out.termination {
            oom_check(status, oom_before).await?;
        }
        Ok(out)
    }

    /// The `nix-instantiate` command of a step on the request file `request_path`, with every restriction.
    /// The `nix-instantiate` of one step; `nonce` is the walk's marker (see [`Self::walk_process`]), given
    /// as an argument so that it is in no file the job can read.
    fn command(
        &self,
        mode: Mode,
        request_path: &Path,
        root: Option<&Path>,
        nonce: Option<&str>,
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(NIX_INSTANTIATE);
        cmd.current_dir(&self.checkout);
        if !matches!(mode, Mode::Instantiate | Mode::Roots) {
            // Read-write mode: import-from-derivation must be able to build while evaluating.
            cmd.args(["--eval", "--read-write-mode", "--strict", "--json"]);
        }
        if matches!(self.target, Target::Flake(_)) {
            cmd.args(["--extra-experimental-features", "nix-command flakes"]);
        }
        // The wrapper reads its request file, so the request directory is readable too.
        add_restriction_args(&mut cmd, self.opts, &[&self.checkout, &self.work.path]);
        cmd.arg("--expr").arg(WRAPPER).arg("--argstr").arg("ekaCiRequest").arg(request_path);
        if let Some(nonce) = nonce {
            cmd.arg("--argstr").arg("ekaCiNonce").arg(nonce);
        }
        if let Some(root) = root {
            cmd.arg("--add-root").arg(root);
        }
        cmd
    }

    /// Runs an evaluation step and parses its JSON output, or says why it failed.
    async fn run_json<T: for<'de> Deserialize<'de>>(
        &self,
        mode: Mode,
        items: &[&[String]],
    ) -> Result<Result<T, Failure>, EvalError> {
        let out = self.run_nix(mode, items, None).await?;
        if let Some(f) = failure(&out) {
            return Ok(Err(f));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(serde_json::from_str(&text).map_err(|e| {
            Failure::Other(format!("unexpected output from {NIX_INSTANTIATE} ({mode:?} step): {e}"))
        }))
    }

    /// Runs a step that maps a list of attributes to a list of results; see [`Batch`].
    async fn run_list<T: for<'de> Deserialize<'de>>(
        &self,
        mode: Mode,
        items: &[&[String]],
    ) -> Result<Batch<T>, EvalError> {
        let out = self.run_nix(mode, items, None).await?;
        let unexpected = |detail: String| {
            Batch::Failed(Failure::Other(format!(
                "unexpected output from {NIX_INSTANTIATE} ({mode:?} step): {detail}"
            )))
        };
        match failure(&out) {
            None => match serde_json::from_slice::<Vec<T>>(&out.stdout) {
                Ok(list) if list.len() == items.len() => Ok(Batch::All(list)),
                Ok(list) => Ok(unexpected(format!("{} results for {} attributes", list.len(), items.len()))),
                Err(e) => Ok(unexpected(e.to_string())),
            },
            Some(failure @ Failure::Other(_)) if matches!(out.termination, Termination::Exited(_)) => {
                let done = streamed_prefix(&out.stdout).filter(|values| values.len() < items.len()).and_then(
                    |values| values.into_iter().map(|v| serde_json::from_value::<T>(v).ok()).collect(),
                );
                Ok(match done {
                    Some(done) => Batch::FailedAt { done, failure },
                    None => Batch::Failed(failure),
                })
            }
            Some(Failure::Memory) => {
                // Our cap, not this attribute's fault unless it was the first: keep what was printed.
                let done: Option<Vec<T>> =
                    streamed_prefix(&out.stdout).filter(|values| !values.is_empty()).and_then(|values| {
                        values.into_iter().map(|v| serde_json::from_value::<T>(v).ok()).collect()
                    });
                Ok(match done {
                    Some(done) if done.len() >= items.len() => Batch::All(done),
                    Some(done) => Batch::Partial(done),
                    None => Batch::Failed(Failure::Memory),
                })
            }
            Some(failure) => Ok(Batch::Failed(failure)),
        }
    }

    /// Evaluates the selected value: `None` when it is a derivation, its names when it is a set.
    async fn root(&self) -> Result<Option<Vec<String>>, EvalError> {
        let kind: RootKind = match self.run_json(Mode::Root, &[]).await? {
            Ok(k) => k,
            Err(Failure::Memory) => {
                return Err(EvalError::MemoryLimit {
                    what: self.what.clone(),
                    limit_mib: self.opts.max_memory_mib,
                })
            }
            Err(Failure::Other(message)) => return Err(EvalError::Nix { what: self.what.clone(), message }),
        };
        match kind.k.as_str() {
            "drv" => Ok(None),
            "set" => Ok(Some(kind.names)),
            _ => Err(EvalError::NotAnAttrSet { what: self.what.clone(), actual: describe_type(&kind.type_) }),
        }
    }

    /// Walks the job's attributes over the worker pool: the top-level attributes are split into
    /// interleaved shares ([`interleaved_shares`]) in a queue, and each worker takes the next share when
    /// it is done with one, so no worker idles while shares remain. With [`EvalOptions::walk_sessions`]
    /// a worker walks its shares in one long-lived `nix repl` session that keeps the job loaded
    /// ([`Self::walk_sessions`], `workers` × [`WALK_SESSION_SHARES_PER_WORKER`] shares); otherwise, or
    /// when no session starts, each share in a fresh process ([`Self::walk_worker`], `workers` ×
    /// [`EvalOptions::walk_shares_per_worker`] shares). The derivations found are given GC roots as they
    /// accumulate and when a process ends.
    async fn walk(&self, names: Vec<String>, out: &Emitter) -> Result<Walk, EvalError> {
        let found = RefCell::new(Walk::default());
        let progress = Progress {
            listed: Cell::new(names.len() as u64),
            evaluated: Cell::new(0),
            derivations: Cell::new(0),
            errors: Cell::new(0),
            found: &found,
        };
        let workers = self.opts.workers.max(1);
        let per_worker = if self.opts.walk_sessions {
            WALK_SESSION_SHARES_PER_WORKER
        } else {
            self.opts.walk_shares_per_worker.max(1)
        };
        let shares = RefCell::new(interleaved_shares(names, workers * per_worker));
        let sessions = Cell::new(self.opts.walk_sessions);
        // The sessions share `workers` × the cap: one may grow past its share while another is young.
        let budget =
            self.limits.memory_limit_bytes.map(|cap| SharedBudget::new(cap.saturating_mul(workers as u64)));
        let worker = || async {
            if sessions.get() {
                self.walk_sessions(&shares, &sessions, budget.as_ref(), &progress, out).await?;
            }
            loop {
                // Without sessions: as many shares per process as `walk_shares_per_worker` makes.
                let take = if self.opts.walk_sessions {
                    let left = shares.borrow().len();
                    left.div_ceil(workers).max(1)
                } else {
                    1
                };
                let mut todo = VecDeque::new();
                for _ in 0..take {
                    if let Some(share) = shares.borrow_mut().pop_front() {
                        todo.extend(share);
                    }
                }
                if todo.is_empty() {
                    return Ok::<(), EvalError>(());
                }
                self.walk_worker(todo, &progress, out).await?;
            }
        };
        try_join_all((0..workers).map(|_| worker()).collect()).await?;
        out.walked.set(Some((progress.listed.get(), progress.evaluated.get())));
        out.counts(progress.counts()).await?;
        Ok(found.into_inner())
    }

    /// One worker's walk in `nix repl` sessions: takes shares from `shares` until it is empty, in as few
    /// sessions as possible (a fresh one only after one went over the memory cap or died; see
    /// [`Self::walk_session`]). When a session cannot start or load the job, clears `sessions` and returns
    /// with what it holds put back at the front of the queue: the workers carry on with processes.
    async fn walk_sessions(
        &self,
        shares: &RefCell<VecDeque<VecDeque<Vec<String>>>>,
        sessions: &Cell<bool>,
        budget: Option<&SharedBudget>,
        progress: &Progress<'_>,
        out: &Emitter,
    ) -> Result<(), EvalError> {
        let mut todo = VecDeque::new();
        while sessions.get() {
            let mut drvs = Vec::new();
            let started = std::time::Instant::now();
            let ended = self.walk_session(&mut todo, shares, budget, &mut drvs, progress, out).await?;
            self.root_all(drvs, progress.found).await?;
            match ended {
                SessionWalk::Done => {
                    tracing::info!(
                        seconds = started.elapsed().as_secs_f64(),
                        "a walk session found the queue empty"
                    );
                    return Ok(());
                }
                SessionWalk::Unavailable(message) => {
                    if sessions.replace(false) {
                        tracing::warn!(%message, "cannot walk in nix repl sessions; one process per share instead");
                    }
                }
                SessionWalk::Ended { reported, failure } => {
                    tracing::info!(
                        reported,
                        left = todo.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        over_memory_cap = matches!(failure, Failure::Memory),
                        "a walk session ended early; a fresh one continues"
                    );
                    self.after_early_end(&mut todo, reported, failure, progress);
                }
            }
        }
        // Sessions are unavailable (found by this worker or another): what this one holds goes back to
        // the queue, for the workers' processes.
        if !todo.is_empty() {
            shares.borrow_mut().push_front(todo);
        }
        Ok(())
    }

    /// After a walk process or session ended early at the front of `todo`: over the memory cap that
    /// attribute is retried (memory grows with everything a process evaluated) unless it was the first of
    /// its process; any other failure is that attribute's error record.
    fn after_early_end(
        &self,
        todo: &mut VecDeque<Vec<String>>,
        reported: usize,
        failure: Failure,
        progress: &Progress<'_>,
    ) {
        if matches!(failure, Failure::Memory) && reported > 0 {
            return;
        }
        if let Some(path) = todo.pop_front() {
            progress.fail(&path, failure.message(self.opts));
        }
    }

    /// Runs one `nix repl` session (see [`eval_explain`] for how a repl is driven) that loads the job
    /// once and walks `todo`, then share after share from the queue: each share is written to a file and
    /// walked by a line `ekaCiWalk.walk "<file>"` (mode `dfs` of [`WRAPPER`], the same streamed
    /// results), followed by a line that traces an end marker. An error `tryEval` cannot catch ends only
    /// that line: the attribute it was on gets the message and the session carries on with the rest.
    /// `todo` always holds what the session took and has yet to report.
    async fn walk_session(
        &self,
        todo: &mut VecDeque<Vec<String>>,
        shares: &RefCell<VecDeque<VecDeque<Vec<String>>>>,
        budget: Option<&SharedBudget>,
        drvs: &mut Vec<(Vec<String>, Info)>,
        progress: &Progress<'_>,
        out: &Emitter,
    ) -> Result<SessionWalk, EvalError> {
        let nonce = eval_explain::token();
        let request = self.write_request(Mode::Repl, &[]).await?;
        let wrapper = self.wrapper_file().await?;
        let (Some(w), Some(r)) = (wrapper.to_str(), request.to_str()) else {
            return Ok(SessionWalk::Unavailable("a temporary path is not UTF-8".to_string()));
        };
        let load = format!(
            "ekaCiWalk = import (/. + {}) {{ ekaCiRequest = {}; ekaCiNonce = \"{nonce}\"; }}\n\
             builtins.seq ekaCiWalk null\n\
             builtins.trace \"{nonce}-load\" null\n",
            nix_string(w),
            nix_string(r)
        );
        let oom_before = smol::unblock(read_oom_kills).await;
        let mut child =
            match SupervisedChild::spawn(self.repl_command(), Pipe::Piped, Pipe::Null, Pipe::Piped) {
                Ok(child) => child,
                Err(e) => return Ok(SessionWalk::Unavailable(e.to_string())),
            };
        out.walk_sessions.set(out.walk_sessions.get() + 1);
        let pgid = i32::try_from(child.pid()).unwrap_or(0);
        let (Some(mut stdin), Some(mut stderr)) = (child.take_stdin(), child.take_stderr()) else {
            child.kill_group();
            let _ = child.wait().await;
            return Ok(SessionWalk::Unavailable("nix repl: no pipes".to_string()));
        };
        let reported = Cell::new(0usize);
        let loaded = Cell::new(false);
        let marker = format!("trace: {nonce} ");
        let work = async {
            let mut lines = LineReader::default();
            let mut tail = TailBuffer::new(self.limits.stderr_tail);
            if stdin.write_all(load.as_bytes()).await.is_err() {
                return Ok(SessionRead::Eof(tail));
            }
            let load_marker = format!("trace: {nonce}-load");
            loop {
                match lines.next(&mut stderr).await {
                    LineRead::Line(line) if line == load_marker.as_bytes() => break,
                    LineRead::Line(line) => {
                        tail.push(line);
                        tail.push(b"\n");
                    }
                    LineRead::Eof => {
                        tail.push(lines.rest());
                        return Ok(SessionRead::Eof(tail));
                    }
                    LineRead::TooLong => return Ok(SessionRead::Bad(too_long())),
                }
            }
            let (before, _) =
                std::mem::replace(&mut tail, TailBuffer::new(self.limits.stderr_tail)).into_parts();
            if let Some(message) = eval_explain::repl_message(&before) {
                return Ok(SessionRead::LoadFailed(message));
            }
            loaded.set(true);
            let mut n = 0u64;
            loop {
                if todo.is_empty() {
                    match shares.borrow_mut().pop_front() {
                        Some(share) => *todo = share,
                        None => return Ok(SessionRead::Done),
                    }
                }
                if drvs.len() >= self.opts.walk_root_batch.max(1) {
                    // This future is dropped when the session goes over the memory budget: the batch
                    // stays in `drvs` until rooted, and is rooted after the session if it was dropped.
                    self.root_batch(drvs, progress.found).await?;
                }
                n += 1;
                let share_path = {
                    let items: Vec<&[String]> = todo.iter().map(Vec::as_slice).collect();
                    self.write_json_file("share", &items).await?
                };
                let Some(share) = share_path.to_str() else {
                    return Ok(SessionRead::Bad("a temporary path is not UTF-8".to_string()));
                };
                let line = format!(
                    "builtins.seq (ekaCiWalk.walk {}) null\nbuiltins.trace \"{nonce}-end-{n}\" null\n",
                    nix_string(share)
                );
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    return Ok(SessionRead::Eof(tail));
                }
                let end_marker = format!("trace: {nonce}-end-{n}");
                loop {
                    let line = match lines.next(&mut stderr).await {
                        LineRead::Line(line) => line,
                        LineRead::Eof => {
                            tail.push(lines.rest());
                            return Ok(SessionRead::Eof(tail));
                        }
                        LineRead::TooLong => return Ok(SessionRead::Bad(too_long())),
                    };
                    if line == end_marker.as_bytes() {
                        break;
                    }
                    let Some(json) = line.strip_prefix(marker.as_bytes()) else {
                        tail.push(line);
                        tail.push(b"\n");
                        continue;
                    };
                    match self.take_walked(json, todo, drvs, progress, out).await? {
                        Ok(()) => reported.set(reported.get() + 1),
                        Err(message) => return Ok(SessionRead::Bad(message)),
                    }
                }
                let path = share_path.clone();
                let _ = smol::unblock(move || std::fs::remove_file(path)).await;
                let (text, _) =
                    std::mem::replace(&mut tail, TailBuffer::new(self.limits.stderr_tail)).into_parts();
                if !todo.is_empty() {
                    // An error tryEval cannot catch, at the front of `todo`: the session survives it.
                    let message = eval_explain::repl_message(&text).unwrap_or_else(|| {
                        "unexpected output from nix repl: the walk ended before this attribute".to_string()
                    });
                    if let Some(path) = todo.pop_front() {
                        progress.fail(&path, message);
                    }
                }
            }
        };
        let peak = Cell::new(0u64);
        let watch = budget.filter(|_| pgid > 0).map(|b| b.watch(pgid, SESSION_POLL, &peak));
        let ended = until_over(work, watch, || SessionRead::Memory).await;
        drop(stdin);
        drop(stderr);
        let _ = smol::unblock(move || std::fs::remove_file(request)).await;
        let ended = or_kill(&mut child, ended).await?;
        child.kill_group();
        let status = child.wait().await;
        let reported = reported.get();
        Ok(match ended {
            SessionRead::Done => SessionWalk::Done,
            SessionRead::LoadFailed(message) => SessionWalk::Unavailable(message),
            SessionRead::Memory => SessionWalk::Ended { reported, failure: Failure::Memory },
            SessionRead::Bad(message) => SessionWalk::Ended { reported, failure: Failure::Other(message) },
            SessionRead::Eof(tail) => {
                // Ended by itself: the kernel's out-of-memory killer is the host's trouble.
                if let Ok(status) = status {
                    oom_check(status, oom_before).await?;
                }
                let message = eval_explain::repl_message(&tail.into_parts().0);
                if !loaded.get() {
                    SessionWalk::Unavailable(
                        message.unwrap_or_else(|| "nix repl exited while loading".to_string()),
                    )
                } else {
                    let message = message
                        .unwrap_or_else(|| "nix repl exited while evaluating this attribute".to_string());
                    SessionWalk::Ended { reported, failure: Failure::Other(message) }
                }
            }
        })
    }

    /// Takes in one result line of a walk (the JSON after the marker): `Err` names output that is not
    /// what the wrapper prints.
    async fn take_walked(
        &self,
        json: &[u8],
        todo: &mut VecDeque<Vec<String>>,
        drvs: &mut Vec<(Vec<String>, Info)>,
        progress: &Progress<'_>,
        out: &Emitter,
    ) -> Result<Result<(), String>, EvalError> {
        let walked = match serde_json::from_slice::<Walked>(json) {
            Ok(w) => w,
            Err(e) => return Ok(Err(format!("unexpected output from the walk: {e}"))),
        };
        let Some(path) = todo.pop_front() else {
            return Ok(Err("unexpected output from the walk: more results than attributes".to_string()));
        };
        progress.accept(path, walked, todo, drvs);
        if progress.evaluated.get().is_multiple_of(COUNTS_EVERY) {
            out.counts(progress.counts()).await?;
        }
        Ok(Ok(()))
    }

    /// Walks `todo` (subtrees, in order) depth-first in as few processes as possible: a process that
    /// ends early is followed by a fresh one at the first attribute it did not report. Over the memory
    /// cap that attribute is retried (memory grows with everything a process evaluated) unless it was
    /// the first of its process; any other failure is that attribute's error record.
    async fn walk_worker(
        &self,
        mut todo: VecDeque<Vec<String>>,
        progress: &Progress<'_>,
        out: &Emitter,
    ) -> Result<(), EvalError> {
        while !todo.is_empty() {
            let mut drvs = Vec::new();
            let started = std::time::Instant::now();
            let (reported, failure) = self.walk_process(&mut todo, &mut drvs, progress, out).await?;
            if failure.is_some() {
                tracing::info!(
                    reported,
                    left = todo.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    over_memory_cap = matches!(failure, Some(Failure::Memory)),
                    "a walk process ended early; a fresh one continues"
                );
            }
            self.root_all(drvs, progress.found).await?;
            if let Some(failure) = failure {
                self.after_early_end(&mut todo, reported, failure, progress);
            }
        }
        Ok(())
    }

    /// Runs one walk process over `todo` (mode `dfs` of [`WRAPPER`]). It reports each attribute as one
    /// line `trace: <nonce> <json>` on standard error, in depth-first order: the attribute at the front
    /// of `todo` is taken off and a set's children are put at the front, so `todo` always holds what the
    /// process has yet to report. The nonce is random per process: the job's own `builtins.trace` cannot
    /// forge a result. Returns how many attributes the process reported and why it ended early, if it did.
    async fn walk_process(
        &self,
        todo: &mut VecDeque<Vec<String>>,
        drvs: &mut Vec<(Vec<String>, Info)>,
        progress: &Progress<'_>,
        out: &Emitter,
    ) -> Result<(usize, Option<Failure>), EvalError> {
        let nonce = eval_explain::token();
        let request_path = {
            let items: Vec<&[String]> = todo.iter().map(Vec::as_slice).collect();
            self.write_request(Mode::Dfs, &items).await?
        };
        let oom_before = smol::unblock(read_oom_kills).await;
        let spawned = SupervisedChild::spawn(
            self.command(Mode::Dfs, &request_path, None, Some(&nonce)),
            Pipe::Null,
            Pipe::Null,
            Pipe::Piped,
        );
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = smol::unblock(move || std::fs::remove_file(request_path)).await;
                return Err(e.into());
            }
        };
        out.walk_processes.set(out.walk_processes.get() + 1);
        let pid = child.pid();
        let pgid = i32::try_from(pid).unwrap_or(0);
        let mut stderr = child.take_stderr();
        let marker = format!("trace: {nonce} ");
        let mut tail = TailBuffer::new(self.limits.stderr_tail);
        let mut reported = 0usize;
        let read = async {
            let Some(pipe) = stderr.as_mut() else { return Ok::<_, EvalError>(WalkRead::Eof) };
            let mut lines = LineReader::default();
            loop {
                let line = match lines.next(pipe).await {
                    LineRead::Line(line) => line,
                    LineRead::Eof => {
                        // A last message without a newline still belongs to the tail.
                        tail.push(lines.rest());
                        return Ok(WalkRead::Eof);
                    }
                    LineRead::TooLong => return Ok(WalkRead::Bad(too_long())),
                };
                let Some(json) = line.strip_prefix(marker.as_bytes()) else {
                    tail.push(line);
                    tail.push(b"\n");
                    continue;
                };
                match self.take_walked(json, todo, drvs, progress, out).await? {
                    Ok(()) => reported += 1,
                    Err(message) => return Ok(WalkRead::Bad(message)),
                }
            }
        };
        let peak = Cell::new(0u64);
        let watch = self
            .limits
            .memory_limit_bytes
            .filter(|_| pgid > 0)
            .map(|limit| watch_memory(pgid, limit, self.limits.poll_interval, &peak));
        let ended = until_over(read, watch, || WalkRead::Memory).await;
        drop(stderr);
        let _ = smol::unblock(move || std::fs::remove_file(request_path)).await;
        let ended = or_kill(&mut child, ended).await?;
        let failure = match ended {
            WalkRead::Eof => {
                let status = child.wait().await?;
                oom_check(status, oom_before).await?;
                if !status.success() {
                    let message = nix_error_message(&tail.into_parts().0);
                    Some(Failure::Other(if message.is_empty() {
                        format!("{NIX_INSTANTIATE} failed ({status}) without an error message")
                    } else {
                        message
                    }))
                } else if !todo.is_empty() {
                    Some(Failure::Other(format!(
                        "unexpected output from {NIX_INSTANTIATE}: the walk ended before this attribute"
                    )))
                } else {
                    None
                }
            }
            WalkRead::Memory => Some(Failure::Memory),
            WalkRead::Bad(message) => Some(Failure::Other(message)),
        };
        child.kill_group();
        let _ = child.wait().await;
        Ok((reported, failure))
    }

    /// Gives evaluated derivations a GC root without evaluating them again: `nix-instantiate --add-root`
    /// of a stand-in whose "drvPath" is a store file (`builtins.toFile`) that lists, and so references,
    /// every `.drv` of the batch; one root keeps them all. If a `.drv` is no longer valid (collected
    /// between the walk and the root) the step fails and the batch is instantiated the per-batch way.
    async fn root_all(&self, drvs: Vec<(Vec<String>, Info)>, found: &RefCell<Walk>) -> Result<(), EvalError> {
        let mut drvs = drvs;
        while !drvs.is_empty() {
            self.root_batch(&mut drvs, found).await?;
        }
        Ok(())
    }

    /// Roots the first [`EvalOptions::walk_root_batch`] derivations of `drvs` (see [`Self::root_all`]) and turns them into
    /// records. Safe to drop while it runs (a walk session stopped over the memory cap drops it): the
    /// batch leaves `drvs` only once its root step has ended, so nothing is lost.
    async fn root_batch(
        &self,
        drvs: &mut Vec<(Vec<String>, Info)>,
        found: &RefCell<Walk>,
    ) -> Result<(), EvalError> {
        let n = drvs.len().min(self.opts.walk_root_batch.max(1));
        let base = self.roots_dir.join(format!("{}-{}", self.work.token, self.next_seq()));
        let paths: Vec<[String; 1]> = drvs[..n].iter().map(|(_, info)| [info.drv_path.clone()]).collect();
        let refs: Vec<&[String]> = paths.iter().map(|p| p.as_slice()).collect();
        let run = self.run_nix(Mode::Roots, &refs, Some(&base)).await?;
        let lines = String::from_utf8_lossy(&run.stdout).lines().filter(|l| !l.is_empty()).count();
        let rooted = read_roots(&base, 1).await.into_iter().all(|r| r.is_ok());
        let batch: Vec<_> = drvs.drain(..n).collect();
        let mut found = found.borrow_mut();
        if failure(&run).is_some() || lines != 1 || !rooted {
            found.redo.extend(batch.into_iter().map(|(path, _)| Item { path, error: None }));
            return Ok(());
        }
        for (path, info) in batch {
            let root = Ok(info.drv_path.clone());
            found.records.push(self.drv_record(&Item { path, error: None }, info, root));
        }
        Ok(())
    }

    /// Explains a share of the attributes whose `tryEval` failed in `nix repl` sessions and sends their
    /// error records; those the repl cannot explain go through the per-attribute steps.
    async fn explain_share(&self, share: Vec<Vec<String>>, out: &Emitter) -> Result<(), EvalError> {
        let refs: Vec<&[String]> = share.iter().map(Vec::as_slice).collect();
        let request = self.write_request(Mode::Repl, &refs).await?;
        let wrapper = self.wrapper_file().await?;
        let command = || self.repl_command();
        let load = match (wrapper.to_str(), request.to_str()) {
            (Some(w), Some(r)) => Some(format!(
                "ekaCiExplain = import (/. + {}) {{ ekaCiRequest = {}; }}",
                nix_string(w),
                nix_string(r)
            )),
            _ => None,
        };
        let explained = match load {
            Some(load) => {
                let session = Session {
                    command: &command,
                    load,
                    memory_limit_bytes: self.limits.memory_limit_bytes,
                    memory_message: Failure::Memory.message(self.opts),
                };
                match eval_explain::explain(&session, share.len()).await {
                    Ok(explained) => explained,
                    Err(ExplainError::OomKilled(killed)) => return Err(EvalError::OomKilled(killed)),
                    Err(ExplainError::Unavailable(e)) => {
                        tracing::warn!(error = %e, "cannot explain failed attributes in nix repl; one process each");
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let path = request.clone();
        let _ = smol::unblock(move || std::fs::remove_file(path)).await;
        let mut slow = Vec::new();
        let mut explained = explained.into_iter();
        for path in share {
            match explained.next() {
                Some(Explained::Message(message)) => out.record(error_record(&path, message)).await?,
                Some(Explained::NoError) | None => slow.push(Item { path, error: None }),
            }
        }
        for batch in slow.chunks(self.opts.batch_size.max(1)) {
            self.process_batch(batch, out).await?;
        }
        Ok(())
    }

    /// Sends the walk's records, then explains its failures and redoes what could not be rooted, over the
    /// worker pool.
    async fn finish(&self, walk: Walk, out: &Emitter) -> Result<(), EvalError> {
        let Walk { mut records, redo, mut unexplained } = walk;
        if self.opts.defer_error_messages {
            // Explained later, for the errors a report shows (`explain`).
            records.extend(unexplained.drain(..).map(|path| error_record(&path, DEFERRED_ERROR.to_string())));
        }
        records.sort_by(|a, b| a.attr_path.cmp(&b.attr_path));
        unexplained.sort();
        for record in records {
            out.record(record).await?;
        }
        out.progress().await?;
        let per_worker = unexplained.len().div_ceil(self.opts.workers.max(1)).clamp(1, EXPLAIN_SHARE);
        let mut tasks: Vec<Task> =
            unexplained.chunks(per_worker).map(|c| Task::Explain(c.to_vec())).collect();
        tasks.extend(redo.chunks(self.opts.batch_size.max(1)).map(Task::Redo));
        let next = Cell::new(0usize);
        let worker = || async {
            loop {
                let i = next.get();
                let Some(task) = tasks.get(i) else { return Ok(()) };
                next.set(i + 1);
                match task {
                    Task::Explain(share) => self.explain_share(share.clone(), out).await?,
                    Task::Redo(batch) => self.process_batch(batch, out).await?,
                }
                out.progress().await?;
            }
        };
        try_join_all((0..self.opts.workers).map(|_| worker()).collect()).await
    }

    async fn process_batch(&self, batch: &[Item], out: &Emitter) -> Result<(), EvalError> {
        let mut todo = Vec::new();
        for item in batch {
            match &item.error {
                Some(message) => out.record(error_record(&item.path, message.clone())).await?,
                None => todo.push(item),
            }
        }
        let mut stack = vec![todo];
        while let Some(mut batch) = stack.pop() {
            if batch.is_empty() {
                continue;
            }
            let refs: Vec<&[String]> = batch.iter().map(|i| i.path.as_slice()).collect();
            match self.run_list::<Option<Info>>(Mode::Info, &refs).await? {
                Batch::All(infos) => self.accept_infos(batch, infos, out).await?,
                Batch::Partial(done) => {
                    let rest = batch.split_off(done.len().min(batch.len()));
                    stack.push(rest);
                    self.accept_infos(batch, done, out).await?;
                }
                Batch::FailedAt { done, failure } => {
                    let culprit = split_culprit(&mut batch, done.len(), &mut stack);
                    self.accept_infos(batch, done, out).await?;
                    if let Some(item) = culprit {
                        out.record(error_record(&item.path, failure.message(self.opts))).await?;
                    }
                }
                Batch::Failed(failure) => {
                    let mut failed = Vec::new();
                    bisect(batch, &mut stack, |item| failed.push(item));
                    for item in failed {
                        out.record(error_record(&item.path, failure.message(self.opts))).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Explains the attributes whose `tryEval` failed, then instantiates the others.
    async fn accept_infos(
        &self,
        batch: Vec<&Item>,
        infos: Vec<Option<Info>>,
        out: &Emitter,
    ) -> Result<(), EvalError> {
        let mut good = Vec::new();
        for (item, info) in batch.into_iter().zip(infos) {
            match info {
                Some(info) => good.push((item, info)),
                None => match self.explain(item).await? {
                    Ok(info) => good.push((item, info)),
                    Err(message) => out.record(error_record(&item.path, message)).await?,
                },
            }
        }
        self.instantiate(good, out).await
    }

    /// Re-evaluates one attribute whose `tryEval` failed, without the guard, for Nix's message.
    async fn explain(&self, item: &Item) -> Result<Result<Info, String>, EvalError> {
        let refs = [item.path.as_slice()];
        match self.run_json::<Vec<Value>>(Mode::Explain, &refs).await? {
            Ok(mut v) if v.len() == 1 => {
                let value = v.remove(0);
                if value.get("drvPath").is_some() {
                    Ok(serde_json::from_value::<Info>(value)
                        .map_err(|e| format!("unexpected output from {NIX_INSTANTIATE}: {e}")))
                } else {
                    Ok(Err("the attribute failed under builtins.tryEval but evaluated without it (is the expression \
                            impure?)"
                        .to_string()))
                }
            }
            Ok(v) => Ok(Err(format!(
                "unexpected output from {NIX_INSTANTIATE}: {} results for 1 attribute",
                v.len()
            ))),
            Err(f) => Ok(Err(f.message(self.opts))),
        }
    }

    /// Instantiates evaluated derivations with GC roots (bisecting on failure) and sends their records.
    async fn instantiate(&self, good: Vec<(&Item, Info)>, out: &Emitter) -> Result<(), EvalError> {
        let mut stack = vec![good];
        while let Some(batch) = stack.pop() {
            if batch.is_empty() {
                continue;
            }
            let base = self.roots_dir.join(format!("{}-{}", self.work.token, self.next_seq()));
            let refs: Vec<&[String]> = batch.iter().map(|(i, _)| i.path.as_slice()).collect();
            let run = self.run_nix(Mode::Instantiate, &refs, Some(&base)).await?;
            let failure = match failure(&run) {
                None => {
                    let lines =
                        String::from_utf8_lossy(&run.stdout).lines().filter(|l| !l.is_empty()).count();
                    if lines == batch.len() {
                        let roots = read_roots(&base, batch.len()).await;
                        for ((item, info), root) in batch.into_iter().zip(roots) {
                            out.record(self.drv_record(item, info, root)).await?;
                        }
                        continue;
                    }
                    Failure::Other(format!(
                        "unexpected output from {NIX_INSTANTIATE}: {lines} derivations for {} attributes",
                        batch.len()
                    ))
                }
                Some(f) => f,
            };
            let mut failed = Vec::new();
            bisect(batch, &mut stack, |pair| failed.push(pair));
            for (item, _) in failed {
                out.record(error_record(&item.path, failure.message(self.opts))).await?;
            }
        }
        Ok(())
    }

    fn drv_record(&self, item: &Item, info: Info, root: Result<String, String>) -> EvalRecord {
        let root = match root {
            Ok(r) => r,
            Err(message) => return error_record(&item.path, message),
        };
        if root != info.drv_path {
            return error_record(
                &item.path,
                format!(
                    "the derivation path differs between evaluation ({}) and instantiation ({root}); is the \
                     expression impure?",
                    info.drv_path
                ),
            );
        }
        let meta = if self.opts.meta {
            meta_with_names(
                Some(info.meta.unwrap_or_else(|| Value::Object(Default::default()))),
                info.pname,
                info.version,
            )
        } else {
            None
        };
        let drv = EvalDrv {
            name: info.name,
            system: info.system,
            drv_path: info.drv_path,
            outputs: info.outputs.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect(),
            meta,
            required_system_features: info.features,
        };
        EvalRecord {
            attr: attr_display(&item.path),
            attr_path: item.path.clone(),
            outcome: EvalOutcome::Derivation(drv),
        }
    }
}

fn error_record(path: &[String], message: String) -> EvalRecord {
    EvalRecord { attr: attr_display(path), attr_path: path.to_vec(), outcome: EvalOutcome::Error { message } }
}

/// Runs `work` until it ends or the memory `watch` (if any) resolves, which gives `over()`.
async fn until_over<T>(
    work: impl Future<Output = Result<T, EvalError>>,
    watch: Option<impl Future<Output = u64>>,
    over: impl FnOnce() -> T,
) -> Result<T, EvalError> {
    match watch {
        Some(watch) => {
            futures_lite::future::or(work, async {
                watch.await;
                Ok(over())
            })
            .await
        }
        None => work.await,
    }
}

/// Passes `result` through; on an error, kills `child`'s group and reaps it first.
async fn or_kill<T>(child: &mut SupervisedChild, result: Result<T, EvalError>) -> Result<T, EvalError> {
    if result.is_err() {
        child.kill_group();
        let _ = child.wait().await;
    }
    result
}

/// Fails with [`EvalError::OomKilled`] when the kernel's out-of-memory killer ended the process (the
/// host's lack of memory, not our own cap): no verdict on its attributes; the pipeline retries.
async fn oom_check(status: std::process::ExitStatus, oom_before: Option<u64>) -> Result<(), EvalError> {
    match smol::unblock(move || OomKilled::check(NIX_INSTANTIATE, &status, oom_before)).await {
        Some(killed) => Err(EvalError::OomKilled(killed)),
        None => Ok(()),
    }
}

/// Why a step's process failed, or `None` when it succeeded.
fn failure(out: &RunOutput) -> Option<Failure> {
    match &out.termination {
        Termination::Exited(status) if status.success() => None,
        Termination::Exited(status) => {
            let message = nix_error_message(&out.stderr);
            Some(Failure::Other(if message.is_empty() {
                format!("{NIX_INSTANTIATE} failed ({status}) without an error message")
            } else {
                message
            }))
        }
        Termination::MemoryLimit { .. } => Some(Failure::Memory),
        Termination::TimedOut(d) => Some(Failure::Other(format!("evaluation timed out after {d:?}"))),
        Termination::OutputLimit { limit_bytes } => {
            Some(Failure::Other(format!("the evaluation's output exceeded {limit_bytes} bytes")))
        }
    }
}

/// The outcome of a step over a list of attributes.
enum Batch<T> {
    /// One result per attribute.
    All(Vec<T>),
    /// The first `done.len()` attributes succeeded and the next one failed with `failure`; the rest were not
    /// evaluated. Known from the partial output of Nix versions that print JSON as they evaluate (2.8 does).
    FailedAt { done: Vec<T>, failure: Failure },
    /// The process failed and it is unknown which attribute caused it: bisect.
    Failed(Failure),
    /// The process went over the memory cap after finishing these first attributes: the rest is retried in
    /// a fresh process (memory grows with every attribute a process evaluates, so no one is to blame).
    Partial(Vec<T>),
}

/// After a [`Batch::FailedAt`]: truncates `batch` to its `done` first elements, pushes the attributes after
/// the failing one onto `stack` and returns the failing one.
fn split_culprit<T>(batch: &mut Vec<T>, done: usize, stack: &mut Vec<Vec<T>>) -> Option<T> {
    let mut rest = batch.split_off(done.min(batch.len()));
    if rest.is_empty() {
        return None;
    }
    let culprit = rest.remove(0);
    if !rest.is_empty() {
        stack.push(rest);
    }
    Some(culprit)
}

/// The complete elements of a JSON list whose printing was cut short by an evaluation error. Nix 2.8 prints
/// `--json` output while it evaluates, and on an error closes the list after the elements it finished:
/// `[{"k":"drv"},{"k":"skip"},]`. Every element of our steps is fully evaluated before its first byte is
/// printed, so the elements before the cut are complete results and the next attribute is the one that
/// failed. Returns `None` when the output is not such a list (newer Nix versions print nothing on failure).
fn streamed_prefix(stdout: &[u8]) -> Option<Vec<Value>> {
    let text = std::str::from_utf8(stdout).ok()?;
    let mut rest = text.trim_start().strip_prefix('[')?;
    let mut values = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() || rest.starts_with(']') {
            return Some(values);
        }
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let Some(Ok(value)) = stream.next() else { return Some(values) };
        let after = rest[stream.byte_offset()..].trim_start();
        if let Some(next) = after.strip_prefix(',') {
            values.push(value);
            rest = next;
        } else {
            if after.starts_with(']') {
                values.push(value);
            }
            return Some(values);
        }
    }
}

/// Splits a failed batch in halves onto `stack`, or hands its single element to `fail`.
fn bisect<T>(mut batch: Vec<T>, stack: &mut Vec<Vec<T>>, mut fail: impl FnMut(T)) {
    if batch.len() > 1 {
        let second = batch.split_off(batch.len() / 2);
        // Popped in order: first half first.
        stack.push(second);
        stack.push(batch);
    } else if let Some(single) = batch.pop() {
        fail(single);
    }
}

/// Reads the GC roots `nix-instantiate --add-root <base>` created: `<base>`, `<base>-2`, `<base>-3`, …
async fn read_roots(base: &Path, n: usize) -> Vec<Result<String, String>> {
    let base = base.to_path_buf();
    smol::unblock(move || {
        (0..n)
            .map(|i| {
                let mut name = base.clone().into_os_string();
                if i > 0 {
                    name.push(format!("-{}", i + 1));
                }
                let root = PathBuf::from(name);
                std::fs::read_link(&root)
                    .map(|t| t.to_string_lossy().into_owned())
                    .map_err(|e| format!("cannot read the GC root {}: {e}", root.display()))
            })
            .collect()
    })
    .await
}

/// Splits the top-level attributes into at most `n` interleaved shares, in queue order: share `j` holds
/// attributes `j`, `j + n`, `j + 2n`, … (neighbours in nixpkgs' alphabetical order often share costly
/// parts, and interleaving spreads them; every share costs about the same).
fn interleaved_shares(names: Vec<String>, n: usize) -> VecDeque<VecDeque<Vec<String>>> {
    let n = n.max(1).min(names.len());
    let mut shares: VecDeque<VecDeque<Vec<String>>> = (0..n).map(|_| VecDeque::new()).collect();
    for (i, name) in names.into_iter().enumerate() {
        shares[i % n].push_back(vec![name]);
    }
    shares
}

fn describe_type(nix_type: &str) -> String {
    match nix_type {
        "" => "not an attribute set".to_string(),
        "lambda" => "a function".to_string(),
        "int" => "an integer".to_string(),
        "bool" => "a Boolean".to_string(),
        "null" => "null".to_string(),
        "float" | "string" | "path" | "list" => format!("a {nix_type}"),
        other => format!("a value of type {other}"),
    }
}

/// Polls all futures together; the first error wins (the others are dropped, killing their children).
async fn try_join_all<F, E>(futures: Vec<F>) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    let mut futures: Vec<Option<Pin<Box<F>>>> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in futures.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => *slot = None,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisect_splits_then_fails_singletons() {
        let mut stack = Vec::new();
        let mut failed = Vec::new();
        bisect(vec![1, 2, 3], &mut stack, |x| failed.push(x));
        assert_eq!(stack, vec![vec![2, 3], vec![1]]);
        assert!(failed.is_empty());
        let mut stack = Vec::new();
        bisect(vec![7], &mut stack, |x| failed.push(x));
        assert!(stack.is_empty());
        assert_eq!(failed, vec![7]);
    }

    #[test]
    fn join_reports_the_first_error() {
        let r: Result<(), &str> = smol::block_on(try_join_all(vec![
            Box::pin(async { Ok(()) }) as Pin<Box<dyn Future<Output = Result<(), &str>>>>,
            Box::pin(async { Err("boom") }),
            Box::pin(futures_lite::future::pending()),
        ]));
        assert_eq!(r, Err("boom"));
        let r: Result<(), ()> =
            smol::block_on(try_join_all(Vec::<futures_lite::future::Ready<Result<(), ()>>>::new()));
        assert_eq!(r, Ok(()));
    }

    /// A pipe that hands out at most `chunk` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl futures_lite::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = self.chunk.min(buf.len()).min(self.data.len() - self.at);
            let at = self.at;
            buf[..n].copy_from_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn line_reader_splits_lines_across_reads_and_keeps_an_unfinished_last_line() {
        let long = "x".repeat(3 * READ_ROOM);
        let text = format!("a\n\nbc\n{long}\ntail");
        for chunk in [1, 3, 7, READ_ROOM, 4 * READ_ROOM] {
            let mut pipe = Trickle { data: text.clone().into_bytes(), at: 0, chunk };
            let mut reader = LineReader::default();
            let mut lines = Vec::new();
            smol::block_on(async {
                loop {
                    match reader.next(&mut pipe).await {
                        LineRead::Line(l) => lines.push(String::from_utf8(l.to_vec()).expect("utf-8")),
                        LineRead::Eof => break,
                        LineRead::TooLong => panic!("no line is too long"),
                    }
                }
            });
            assert_eq!(lines, ["a", "", "bc", long.as_str()], "chunk {chunk}");
            assert_eq!(reader.rest(), b"tail", "chunk {chunk}");
        }
    }

    #[test]
    fn reads_the_streamed_prefix_of_a_failed_list() {
        let values = |s: &str| streamed_prefix(s.as_bytes()).map(|v| v.len());
        assert_eq!(values(r#"[{"k":"drv"},{"k":"rec","names":["a","b"]},]"#), Some(2));
        assert_eq!(values(r#"[{"k":1,"n":[1]},{"k":2,"n":[2]},{"k":3,"n":}]"#), Some(2));
        assert_eq!(values("[]"), Some(0));
        assert_eq!(values("[1, 2 ,3]"), Some(3));
        assert_eq!(values("[null,"), Some(1));
        assert_eq!(values(""), None);
        assert_eq!(values("error"), None);
        let mut batch = vec![1, 2, 3, 4, 5];
        let mut stack = Vec::new();
        assert_eq!(split_culprit(&mut batch, 2, &mut stack), Some(3));
        assert_eq!((batch, stack), (vec![1, 2], vec![vec![4, 5]]));
        let mut batch = vec![1];
        let mut stack = Vec::new();
        assert_eq!(split_culprit(&mut batch, 0, &mut stack), Some(1));
        assert!(batch.is_empty() && stack.is_empty());
    }

    #[test]
    fn the_walk_queue_follows_the_depth_first_order_of_the_process() {
        let found = RefCell::new(Walk::default());
        let progress = Progress {
            listed: Cell::new(2),
            evaluated: Cell::new(0),
            derivations: Cell::new(0),
            errors: Cell::new(0),
            found: &found,
        };
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let walked = |json: &str| serde_json::from_str::<Walked>(json).expect("walked");
        let mut todo: VecDeque<Vec<String>> = [path(&["a"]), path(&["b"])].into();
        let mut drvs = Vec::new();
        let front = todo.pop_front().expect("a");
        progress.accept(front, walked(r#"{"k":"rec","names":["x","y"]}"#), &mut todo, &mut drvs);
        assert_eq!(Vec::from(todo.clone()), vec![path(&["a", "x"]), path(&["a", "y"]), path(&["b"])]);
        let front = todo.pop_front().expect("a.x");
        progress.accept(front, walked(r#"{"k":"err"}"#), &mut todo, &mut drvs);
        let front = todo.pop_front().expect("a.y");
        progress.accept(front, walked(r#"{"k":"skip"}"#), &mut todo, &mut drvs);
        let deep: Vec<String> = (0..MAX_DEPTH).map(|i| i.to_string()).collect();
        progress.accept(deep, walked(r#"{"k":"rec","names":["z"]}"#), &mut todo, &mut drvs);
        assert_eq!(Vec::from(todo), vec![path(&["b"])]);
        let counts = progress.counts();
        assert_eq!((counts.listed, counts.evaluated, counts.instantiated, counts.errors), (4, 4, 0, 2));
        let found = found.into_inner();
        assert_eq!(found.unexplained, vec![path(&["a", "x"])]);
        assert_eq!(found.records.len(), 1, "the set nested too deep is an error");
        assert!(drvs.is_empty());
    }

    #[test]
    fn the_share_queue_interleaves_every_attribute_once() {
        let names = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
        let flat = |q: &VecDeque<VecDeque<Vec<String>>>| q.iter().map(|s| s.len()).collect::<Vec<_>>();
        let q = interleaved_shares(names(7), 3);
        let firsts: Vec<Vec<String>> = q.iter().map(|s| s.iter().map(|p| p[0].clone()).collect()).collect();
        assert_eq!(firsts, vec![vec!["0", "3", "6"], vec!["1", "4"], vec!["2", "5"]]);
        assert!(q.iter().flatten().all(|p| p.len() == 1), "shares hold top-level paths");
        assert_eq!(flat(&interleaved_shares(names(2), 4)), vec![1, 1], "no empty share");
        assert_eq!(flat(&interleaved_shares(names(5), 0)), vec![5], "0 shares is one");
        assert!(interleaved_shares(Vec::new(), 4).is_empty());
    }

    #[test]
    fn describes_types() {
        assert_eq!(describe_type("lambda"), "a function");
        assert_eq!(describe_type("int"), "an integer");
        assert_eq!(describe_type("list"), "a list");
    }
}
