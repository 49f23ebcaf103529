//! Supervised child processes: each child runs in its own process group, the whole group is killed on
//! cancellation, its resident memory can be capped, and its output is captured within fixed bounds.
//!
//! The evaluator runs every `nix-instantiate` through [`run_captured`]; the build engine can use the
//! lower-level [`SupervisedChild`] to stream a child's output itself. The rules this module enforces:
//!
//! * A child is the leader of a new process group (`setpgid(0, 0)` at spawn), so everything it forks stays
//!   in that group unless it calls `setsid`/`setpgid` itself (Nix's local builders do: they are outside the
//!   reach of a group kill, but Nix kills them itself on SIGTERM; see [`SupervisedChild::terminate`]).
//! * Dropping a [`SupervisedChild`] that has not been reaped sends SIGKILL to the whole group, so a cancelled
//!   future (a timeout, a shutdown) never leaves evaluators or builders running. async-process reaps the
//!   zombie in the background.
//! * After the leader exits, the group is sent SIGKILL once to take stragglers with it. The group id is the
//!   leader's pid; Linux does not reuse a pid while any process still carries it as its group id, so this
//!   can only reach a stranger if the whole group vanished *and* the pid was recycled as a new group leader
//!   in the microseconds in between.
//! * Memory is the sum of `VmRSS` over every process of the group, read from `/proc` every
//!   [`RunLimits::poll_interval`]. Shared pages are counted once per process, so the sum over-estimates a
//!   group of forked processes; for a single evaluator it is exact. Polling means a child can overshoot the
//!   limit by whatever it allocates within one interval.
//! * Captured output is bounded: stdout up to [`RunLimits::stdout_limit`] (exceeding it kills the group),
//!   stderr keeps only its last [`RunLimits::stderr_tail`] bytes (errors come last).
//!
//! Raw child output becomes text safe to store and show through [`crate::text::bounded_output`]: valid
//! UTF-8, no terminal escapes, a bounded length cut on a character boundary.
//!
//! Nix's local builders leave the group (`setsid`): `builders.rs` finds them in `/proc` and kills them by
//! session, and reads the kernel's OOM-kill counter.
//!
//! Every child is sealed at spawn (`env.rs`): an empty environment plus an allow-list, with a private
//! scratch `HOME` and `TMPDIR`, so no secret of the server's environment reaches code a pull request
//! controls.

pub(crate) mod builders;
pub mod env;
pub mod host;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt};
use rustix::process::{kill_process_group, Pid, Signal};
use smol::process::{Child, ChildStderr, ChildStdin, ChildStdout};

/// Failures to run a child at all (as opposed to the child failing, which is a [`Termination`]).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("waiting for {program} (pid {pid}) failed: {source}")]
    Wait { program: String, pid: u32, source: io::Error },
    #[error("reading the output of {program} (pid {pid}) failed: {source}")]
    Read { program: String, pid: u32, source: io::Error },
}

impl ProcessError {
    /// True when the program itself could not be found (`ENOENT` at spawn).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProcessError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// What to connect a child's standard stream to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Null,
    Piped,
    Inherit,
}

impl Pipe {
    fn stdio(self) -> Stdio {
        match self {
            Pipe::Null => Stdio::null(),
            Pipe::Piped => Stdio::piped(),
            Pipe::Inherit => Stdio::inherit(),
        }
    }
}

/// A child process that leads its own process group; see the module documentation.
#[derive(Debug)]
pub struct SupervisedChild {
    child: Child,
    program: String,
    pid: u32,
    pgid: Option<Pid>,
    reaped: bool,
}

impl SupervisedChild {
    /// Starts `cmd` as the leader of a new process group, with the given standard streams.
    pub fn spawn(
        mut cmd: std::process::Command,
        stdin: Pipe,
        stdout: Pipe,
        stderr: Pipe,
    ) -> Result<SupervisedChild, ProcessError> {
        let program = program_name(cmd.get_program());
        // Every child starts from the allow-listed environment only: see `env`.
        env::seal(&mut cmd);
        cmd.process_group(0);
        // If the server dies (even by SIGKILL), the kernel sends SIGTERM to the child, so Nix stops its
        // builders cleanly instead of building on unsupervised; recovery requeues the work at the next
        // start. The signal follows the *thread* that spawned the child: children are spawned on the
        // executor's thread, which lives as long as the server.
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs between fork and exec and only makes two async-signal-safe system
        // calls (prctl, getppid); it allocates nothing and touches no locks.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
                // The parent may have died before the prctl: then nobody will ever send the signal.
                if rustix::process::getppid() != Some(parent) {
                    return Err(std::io::Error::other("the server exited while starting this process"));
                }
                Ok(())
            });
        }
        let mut cmd = smol::process::Command::from(cmd);
        cmd.stdin(stdin.stdio()).stdout(stdout.stdio()).stderr(stderr.stdio());
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn { program: program.clone(), source })?;
        let pid = child.id();
        // The child called setpgid(0, 0) before exec, so its group id is its pid.
        let pgid = i32::try_from(pid).ok().and_then(Pid::from_raw);
        Ok(SupervisedChild { child, program, pid, pgid, reaped: false })
    }

    /// The leader's pid (also the process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The program name, for messages.
    pub fn program(&self) -> &str {
        &self.program
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Sends `signal` to every process of the group. A group that no longer exists is not an error.
    pub fn signal_group(&self, signal: Signal) -> io::Result<()> {
        let Some(pgid) = self.pgid else { return Ok(()) };
        match kill_process_group(pgid, signal) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends SIGKILL to the whole group (best effort).
    pub fn kill_group(&self) {
        if let Err(e) = self.signal_group(Signal::KILL) {
            tracing::warn!(pid = self.pid, program = %self.program, error = %e, "cannot kill a process group");
        }
    }

    /// The group's resident memory in bytes (blocking: reads `/proc`).
    pub fn group_rss_bytes(&self) -> u64 {
        self.pgid.map(|p| group_rss_bytes(p.as_raw_nonzero().get())).unwrap_or(0)
    }

    /// Waits for the leader to exit, then kills whatever is left of its group.
    pub async fn wait(&mut self) -> Result<ExitStatus, ProcessError> {
        let status = self.child.status().await.map_err(|source| ProcessError::Wait {
            program: self.program.clone(),
            pid: self.pid,
            source,
        })?;
        self.reaped = true;
        self.kill_group();
        Ok(status)
    }

    /// Stops the group gracefully: SIGTERM to the group, up to `grace` to exit, then SIGKILL. Nix handles
    /// SIGTERM by killing its own builders (which live in groups of their own), so prefer this over a bare
    /// kill when the child may be building.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, ProcessError> {
        if let Err(e) = self.signal_group(Signal::TERM) {
            tracing::warn!(pid = self.pid, program = %self.program, error = %e, "cannot signal a process group");
        }
        let waited = future::or(async { Some(self.wait().await) }, async {
            smol::Timer::after(grace).await;
            None
        })
        .await;
        match waited {
            Some(r) => r,
            None => {
                self.kill_group();
                self.wait().await
            }
        }
    }
}

impl Drop for SupervisedChild {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_group();
        }
    }
}

fn program_name(program: &OsStr) -> String {
    program.to_string_lossy().into_owned()
}

/// The sum of `VmRSS` (bytes) of every process whose process group is `pgid`. Blocking.
pub fn group_rss_bytes(pgid: i32) -> u64 {
    groups_rss_bytes(&[pgid]).get(&pgid).copied().unwrap_or(0)
}

/// [`group_rss_bytes`] of several groups in one scan of `/proc` (a group without processes is absent).
pub fn groups_rss_bytes(pgids: &[i32]) -> BTreeMap<i32, u64> {
    let mut totals = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return totals };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else { continue };
        // Processes come and go while we scan: every read failure just means "not there any more".
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(group) = stat_pgrp(&stat).filter(|g| pgids.contains(g)) else { continue };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        *totals.entry(group).or_insert(0) += status_rss_bytes(&status).unwrap_or(0);
    }
    totals
}

/// The process group field of `/proc/<pid>/stat` (the 5th; the command name in parentheses may contain
/// spaces and parentheses, so fields are counted after the last `)`).
fn stat_pgrp(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state, ppid, pgrp
    rest.split_ascii_whitespace().nth(2)?.parse().ok()
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes (absent for zombies and kernel threads).
fn status_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Polls the group's memory every `interval` and resolves with the observed RSS once it exceeds
/// `limit_bytes`. `peak` records the highest value seen. Never resolves while the group stays under.
pub async fn watch_memory(pgid: i32, limit_bytes: u64, interval: Duration, peak: &Cell<u64>) -> u64 {
    loop {
        smol::Timer::after(interval).await;
        let rss = smol::unblock(move || group_rss_bytes(pgid)).await;
        peak.set(peak.get().max(rss));
        if rss > limit_bytes {
            return rss;
        }
    }
}

/// A memory budget shared by several process groups (the built-in evaluator's walk sessions), so that
/// one may grow past an even share while the others are small: [`SharedBudget::watch`] resolves for a
/// group when it alone exceeds the budget, or when the groups together exceed it and it is the largest
/// (then it is above an even share). Single-threaded, like the executor.
pub struct SharedBudget {
    limit_bytes: u64,
    rss: RefCell<BTreeMap<i32, u64>>,
    /// When `/proc` was last scanned for every group (one scan serves all watchers of a tick).
    scanned: Cell<Option<Instant>>,
}

impl SharedBudget {
    pub fn new(limit_bytes: u64) -> SharedBudget {
        SharedBudget { limit_bytes, rss: RefCell::new(BTreeMap::new()), scanned: Cell::new(None) }
    }

    /// Polls the group's memory every `interval` like [`watch_memory`] and resolves with its RSS when it
    /// must stop (see the type). The group counts towards the budget until this future ends or is dropped.
    pub async fn watch(&self, pgid: i32, interval: Duration, peak: &Cell<u64>) -> u64 {
        struct Registered<'b>(&'b SharedBudget, i32);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                self.0.rss.borrow_mut().remove(&self.1);
            }
        }
        self.rss.borrow_mut().insert(pgid, 0);
        let _registered = Registered(self, pgid);
        loop {
            smol::Timer::after(interval).await;
            // Another watcher scanned within this tick: its figures serve this group too.
            let fresh = self.scanned.get().is_some_and(|at| at.elapsed() < interval / 2);
            if !fresh {
                self.scanned.set(Some(Instant::now()));
                let groups: Vec<i32> = self.rss.borrow().keys().copied().collect();
                let found = smol::unblock(move || groups_rss_bytes(&groups)).await;
                let mut all = self.rss.borrow_mut();
                for (group, bytes) in all.iter_mut() {
                    *bytes = found.get(group).copied().unwrap_or(0);
                }
            }
            let all = self.rss.borrow();
            let rss = all.get(&pgid).copied().unwrap_or(0);
            peak.set(peak.get().max(rss));
            if over_shared_budget(&all, pgid, self.limit_bytes) {
                return rss;
            }
        }
    }
}

/// Whether group `pgid` of `all` (resident bytes by group) must stop under a shared budget of
/// `limit_bytes`: it alone is over, or all together are over and it is the largest (ties: the lowest id).
fn over_shared_budget(all: &BTreeMap<i32, u64>, pgid: i32, limit_bytes: u64) -> bool {
    let own = all.get(&pgid).copied().unwrap_or(0);
    let total: u64 = all.values().sum();
    let largest = all.iter().rev().max_by_key(|(_, bytes)| **bytes).map(|(group, _)| *group);
    own > limit_bytes || (total > limit_bytes && largest == Some(pgid))
}

/// Bounds for [`run_captured`].
#[derive(Debug, Clone)]
pub struct RunLimits {
    /// Kill the group when its resident memory exceeds this many bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Kill the group when it has run this long.
    pub timeout: Option<Duration>,
    /// How often memory is sampled.
    pub poll_interval: Duration,
    /// Kill the group when its stdout exceeds this many bytes.
    pub stdout_limit: usize,
    /// Keep only this many bytes from the end of stderr.
    pub stderr_tail: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            memory_limit_bytes: None,
            timeout: None,
            poll_interval: Duration::from_millis(100),
            stdout_limit: 64 << 20,
            stderr_tail: 64 << 10,
        }
    }
}

/// How a child run by [`run_captured`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// The leader exited by itself.
    Exited(ExitStatus),
    /// Killed because the group's RSS exceeded the limit.
    MemoryLimit { rss_bytes: u64, limit_bytes: u64 },
    /// Killed because it ran longer than the timeout.
    TimedOut(Duration),
    /// Killed because stdout exceeded its limit.
    OutputLimit { limit_bytes: usize },
}

impl Termination {
    /// True for an exit with status 0.
    pub fn success(&self) -> bool {
        matches!(self, Termination::Exited(s) if s.success())
    }
}

/// The result of [`run_captured`].
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub termination: Termination,
    pub stdout: Vec<u8>,
    /// The last [`RunLimits::stderr_tail`] bytes of stderr.
    pub stderr: Vec<u8>,
    /// True when the beginning of stderr was dropped.
    pub stderr_truncated: bool,
    /// The highest group RSS sampled (0 when memory was not watched).
    pub peak_rss_bytes: u64,
    pub elapsed: Duration,
}

enum Stage<T> {
    Done(T),
    Memory(u64),
    Timeout,
    OutputLimit,
}

/// Runs `cmd` (stdin closed) in its own process group under `limits` and returns its captured output.
/// Cancelling the returned future kills the group.
pub async fn run_captured(cmd: std::process::Command, limits: &RunLimits) -> Result<RunOutput, ProcessError> {
    let started = Instant::now();
    let mut child = SupervisedChild::spawn(cmd, Pipe::Null, Pipe::Piped, Pipe::Piped)?;
    let pid = child.pid();
    let pgid = i32::try_from(pid).unwrap_or(0);
    let program = child.program().to_string();
    let peak = Cell::new(0u64);
    let deadline = limits.timeout.map(|t| started + t);

    let mut stdout_pipe = child.take_stdout();
    let mut stderr_pipe = child.take_stderr();
    let mut stdout = Vec::new();
    let mut stderr = TailBuffer::new(limits.stderr_tail);

    // Stage 1: read both pipes to the end. Stage 2: wait for the leader. Either can be cut short.
    let read_result = {
        let io = async {
            let read_stdout = async {
                let r = read_bounded(stdout_pipe.as_mut(), &mut stdout, limits.stdout_limit).await;
                if !matches!(r, Ok(true)) {
                    // Over the limit (or unreadable): kill the group now, so that stderr ends too.
                    child.kill_group();
                }
                r
            };
            let (a, b) = future::zip(read_stdout, read_tail(stderr_pipe.as_mut(), &mut stderr)).await;
            match (a, b) {
                (Ok(true), Ok(())) => Stage::Done(Ok(())),
                (Ok(false), Ok(())) => Stage::OutputLimit,
                (Err(e), _) | (_, Err(e)) => Stage::Done(Err(e)),
            }
        };
        race_limits(io, pgid, limits, deadline, &peak).await
    };
    drop(stdout_pipe);
    drop(stderr_pipe);

    let killed = match read_result {
        Stage::Done(Ok(())) => None,
        Stage::Done(Err(source)) => {
            child.kill_group();
            let _ = child.wait().await;
            return Err(ProcessError::Read { program, pid, source });
        }
        Stage::Memory(rss) => Some(Termination::MemoryLimit {
            rss_bytes: rss,
            limit_bytes: limits.memory_limit_bytes.unwrap_or(0),
        }),
        Stage::Timeout => Some(Termination::TimedOut(limits.timeout.unwrap_or_default())),
        Stage::OutputLimit => Some(Termination::OutputLimit { limit_bytes: limits.stdout_limit }),
    };

    let termination = match killed {
        Some(t) => {
            child.kill_group();
            child.wait().await?;
            t
        }
        None => {
            let waited =
                race_limits(async { Stage::Done(child.wait().await) }, pgid, limits, deadline, &peak).await;
            match waited {
                Stage::Done(status) => Termination::Exited(status?),
                other => {
                    child.kill_group();
                    child.wait().await?;
                    match other {
                        Stage::Memory(rss) => Termination::MemoryLimit {
                            rss_bytes: rss,
                            limit_bytes: limits.memory_limit_bytes.unwrap_or(0),
                        },
                        _ => Termination::TimedOut(limits.timeout.unwrap_or_default()),
                    }
                }
            }
        }
    };

    let (stderr, stderr_truncated) = stderr.into_parts();
    Ok(RunOutput {
        termination,
        stdout,
        stderr,
        stderr_truncated,
        peak_rss_bytes: peak.get(),
        elapsed: started.elapsed(),
    })
}

/// Runs `work` until it finishes, the group exceeds its memory limit, or the deadline passes.
async fn race_limits<T>(
    work: impl std::future::Future<Output = Stage<T>>,
    pgid: i32,
    limits: &RunLimits,
    deadline: Option<Instant>,
    peak: &Cell<u64>,
) -> Stage<T> {
    let memory = async {
        match limits.memory_limit_bytes {
            Some(limit) if pgid > 0 => {
                Stage::Memory(watch_memory(pgid, limit, limits.poll_interval, peak).await)
            }
            _ => future::pending().await,
        }
    };
    let timeout = async {
        match deadline {
            Some(d) => {
                smol::Timer::at(d).await;
                Stage::Timeout
            }
            None => future::pending().await,
        }
    };
    future::or(work, future::or(memory, timeout)).await
}

/// Appends everything from `pipe` to `out`; returns `Ok(false)` as soon as `out` would exceed `limit`.
async fn read_bounded<R: AsyncRead + Unpin>(
    pipe: Option<&mut R>,
    out: &mut Vec<u8>,
    limit: usize,
) -> io::Result<bool> {
    let Some(pipe) = pipe else { return Ok(true) };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok(true);
        }
        if out.len() + n > limit {
            return Ok(false);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

async fn read_tail<R: AsyncRead + Unpin>(pipe: Option<&mut R>, out: &mut TailBuffer) -> io::Result<()> {
    let Some(pipe) = pipe else { return Ok(()) };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        out.push(&buf[..n]);
    }
}

/// Keeps the last `limit` bytes written to it.
#[derive(Debug, Clone)]
pub struct TailBuffer {
    buf: Vec<u8>,
    limit: usize,
    dropped: bool,
}

impl TailBuffer {
    pub fn new(limit: usize) -> TailBuffer {
        TailBuffer { buf: Vec::new(), limit, dropped: false }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        // Trim only once the buffer is twice the limit, so appends stay amortised O(1).
        if self.buf.len() > self.limit.saturating_mul(2).max(1) {
            let cut = self.buf.len() - self.limit;
            self.buf.drain(..cut);
            self.dropped = true;
        }
    }

    /// The kept bytes (at most `limit`) and whether anything was dropped from the front.
    pub fn into_parts(mut self) -> (Vec<u8>, bool) {
        if self.buf.len() > self.limit {
            let cut = self.buf.len() - self.limit;
            self.buf.drain(..cut);
            self.dropped = true;
        }
        (self.buf, self.dropped)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_shared_budget_stops_only_the_largest_group_and_only_when_all_are_over() {
        let all: BTreeMap<i32, u64> = [(10, 300), (11, 500)].into_iter().collect();
        // Together under the budget: nobody stops, though 11 is above an even share.
        assert!(!over_shared_budget(&all, 11, 1000));
        // Together over: the largest stops, the other goes on.
        assert!(over_shared_budget(&all, 11, 700));
        assert!(!over_shared_budget(&all, 10, 700));
        // Alone over the whole budget: stops even when another group is larger.
        let all: BTreeMap<i32, u64> = [(10, 800), (11, 900)].into_iter().collect();
        assert!(over_shared_budget(&all, 10, 700));
        // Equal sizes: exactly one of them (the lowest id) stops.
        let all: BTreeMap<i32, u64> = [(10, 400), (11, 400)].into_iter().collect();
        assert!(over_shared_budget(&all, 10, 700));
        assert!(!over_shared_budget(&all, 11, 700));
    }

    use super::*;

    #[test]
    fn tail_buffer_keeps_the_end() {
        let mut t = TailBuffer::new(4);
        for chunk in [&b"abc"[..], b"defgh", b"ij"] {
            t.push(chunk);
        }
        assert_eq!(t.into_parts(), (b"ghij".to_vec(), true));
        let mut t = TailBuffer::new(10);
        t.push(b"abc");
        assert_eq!(t.into_parts(), (b"abc".to_vec(), false));
    }

    #[test]
    fn parses_proc_fields() {
        let stat = "1234 (we ird) (name) S 1 4321 4321 0 -1 4194560 120 0 0 0";
        assert_eq!(stat_pgrp(stat), Some(4321));
        assert_eq!(stat_pgrp("garbage"), None);
        let status = "Name:\tnix\nVmPeak:\t  100 kB\nVmRSS:\t   2048 kB\nThreads: 1\n";
        assert_eq!(status_rss_bytes(status), Some(2048 * 1024));
        assert_eq!(status_rss_bytes("Name:\tzombie\n"), None);
    }

    fn sh(script: &str) -> std::process::Command {
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn captures_output_and_status() {
        let out = smol::block_on(run_captured(sh("echo out; echo err >&2; exit 3"), &RunLimits::default()))
            .expect("run");
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        match out.termination {
            Termination::Exited(s) => assert_eq!(s.code(), Some(3)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_program_is_not_found() {
        let cmd = std::process::Command::new("/nonexistent/eka-ci-test-program");
        let err = smol::block_on(run_captured(cmd, &RunLimits::default())).expect_err("must fail");
        assert!(err.is_not_found(), "{err}");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        // A grandchild holding the pipes open must die with the group, or this would hang for 30 s.
        let limits = RunLimits { timeout: Some(Duration::from_millis(300)), ..RunLimits::default() };
        let started = Instant::now();
        let out = smol::block_on(run_captured(sh("sleep 30 & sleep 30; echo never"), &limits)).expect("run");
        assert_eq!(out.termination, Termination::TimedOut(Duration::from_millis(300)));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(out.stdout.is_empty());
    }

    #[test]
    fn output_limit_kills() {
        let limits = RunLimits { stdout_limit: 1000, ..RunLimits::default() };
        let out =
            smol::block_on(run_captured(sh("while :; do echo yyyyyyyyyyyy; done"), &limits)).expect("run");
        assert_eq!(out.termination, Termination::OutputLimit { limit_bytes: 1000 });
    }

    #[test]
    fn memory_limit_kills() {
        // The shell builds an ever longer string: its RSS grows without bound until killed.
        let limits = RunLimits {
            memory_limit_bytes: Some(30 << 20),
            poll_interval: Duration::from_millis(20),
            timeout: Some(Duration::from_secs(30)),
            ..RunLimits::default()
        };
        let script = "x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; while :; do x=\"$x$x\"; done";
        let out = smol::block_on(run_captured(sh(script), &limits)).expect("run");
        match out.termination {
            Termination::MemoryLimit { rss_bytes, limit_bytes } => {
                assert_eq!(limit_bytes, 30 << 20);
                assert!(rss_bytes > limit_bytes);
            }
            other => panic!("expected a memory kill, got {other:?}"),
        }
    }
}
