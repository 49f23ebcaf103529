//! The bubblewrap sandbox a check's command runs in, and the supervision of that run: the `bwrap`
//! argument list (pure, tested here), the user it runs as and the resource limits set before `bwrap`
//! starts, the wall-clock limit, the output limit, and killing the whole sandbox.
//!
//! Limits that bind (docs/checks.md, "Limits"): a server running as root starts `bwrap` as the
//! unprivileged `[checks] uid`/`gid` (so the kernel applies `RLIMIT_NPROC`, which it never applies to
//! root, and `bwrap` runs unprivileged in a user namespace of that user). Memory and processes are then
//! bounded by a cgroup of the check's own ([`super::cgroup`]) when the server's cgroup v2 is delegated to
//! it, else by `RLIMIT_AS` and `RLIMIT_NPROC`.
//!
//! What the sandbox sees (docs/checks.md, docs/security.md): an empty read-only root; `/nix/store`
//! read-only; the writable copy of the checkout at [`WORK_DIR`] (the working directory); the generated
//! script at [`CONTROL_DIR`] read-only; a private `/tmp`, `/proc` and minimal `/dev`; the host's
//! `/bin`, `/usr`, `/lib`, `/lib64` and `/sbin` read-only only when the shell's builder is a host program
//! (a `/bin/sh` derivation, as Nix's unsandboxed builds use); each server-allowed `ro_bind` read-only. No
//! `/etc`, no home directory, no data directory. Every namespace is new (user, IPC, PID, network, UTS,
//! cgroup); `allow_network` shares only the network namespace. The environment is cleared; the script
//! sets it. `bwrap` runs in a process group of its own with `--die-with-parent`, so killing that group
//! (timeout, output limit, cancellation, or the future being dropped) ends the sandbox's PID namespace
//! and everything in it; when the command exits, bwrap's init exits and the kernel kills what is left.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_lite::future;
use rustix::process::{kill_process_group, Pid, Signal};

use super::cgroup::{CgroupParent, CheckCgroup};

/// Where the writable copy of the checkout appears inside the sandbox.
pub const WORK_DIR: &str = "/work";
/// Where the generated scripts appear inside the sandbox (read-only).
pub const CONTROL_DIR: &str = "/.eka-ci";
/// The script run inside the sandbox, in [`CONTROL_DIR`].
pub const RUN_SCRIPT: &str = "run.sh";

/// Host directories bound read-only when the shell's builder is a host program (`/bin/sh`).
const HOST_SYSTEM_DIRS: &[&str] = &["/bin", "/usr", "/lib", "/lib64", "/sbin"];

/// What one sandboxed run is.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The host directory holding the writable copy of the checkout.
    pub work_dir: PathBuf,
    /// The host directory holding [`RUN_SCRIPT`].
    pub control_dir: PathBuf,
    /// The program running the script: the shell derivation's builder.
    pub interpreter: String,
    /// Bind the host's system directories read-only (the builder is not in the Nix store).
    pub host_system_dirs: bool,
    pub allow_network: bool,
    /// Extra read-only binds, each already allowed by the server's `[checks] allowed_ro_binds`.
    pub ro_binds: Vec<PathBuf>,
}

/// The limits of one run.
#[derive(Debug, Clone)]
pub struct Limits {
    pub bwrap: PathBuf,
    pub timeout: Duration,
    pub memory_max_bytes: u64,
    pub max_processes: u64,
    pub max_output_bytes: u64,
    /// The (uid, gid) `bwrap` starts as: `[checks] uid`/`gid` when the server runs as root, else none
    /// (the server's own user).
    pub run_as: Option<(u32, u32)>,
    /// Where per-check cgroups are made, when the host has a usable cgroup v2 ([`Limits::with_cgroups`]).
    pub cgroups: Option<CgroupParent>,
}

impl Limits {
    /// The limits `[checks]` sets (without cgroups).
    pub fn from_server(c: &crate::config::ChecksConfig) -> Limits {
        Limits {
            bwrap: c.bwrap_path.clone(),
            timeout: Duration::from_secs(c.timeout_seconds),
            memory_max_bytes: c.memory_max_bytes,
            max_processes: c.max_processes,
            max_output_bytes: c.max_output_bytes,
            run_as: rustix::process::geteuid().is_root().then_some((c.uid, c.gid)),
            cgroups: None,
        }
    }

    /// These limits with per-check cgroups when the host allows them ([`super::cgroup::detect`]);
    /// logs which bounds apply. Called once at start-up.
    pub fn with_cgroups(mut self) -> Limits {
        let user = match self.run_as {
            Some((uid, gid)) => format!("uid {uid}, gid {gid}"),
            None => "the server's own user".to_string(),
        };
        match super::cgroup::detect() {
            Ok(parent) => {
                tracing::info!(cgroup = %parent.dir.display(), %user, "checks: memory.max and pids.max of a cgroup per check");
                parent.clean_stale();
                self.cgroups = Some(parent);
            }
            Err(why) => {
                tracing::info!(reason = %why, %user, "checks: no cgroup v2 for checks; RLIMIT_AS and RLIMIT_NPROC bound them");
            }
        }
        self
    }
}

/// How a sandboxed run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ending {
    /// The command exited with this status (the script's exit status).
    Exited(i32),
    /// The command (or the sandbox) was killed by this signal.
    Signalled(i32),
    /// Killed at the wall-clock limit.
    TimedOut { seconds: u64 },
    /// Killed because it printed more than the limit.
    OutputLimit { bytes: u64 },
}

impl Ending {
    pub fn success(&self) -> bool {
        matches!(self, Ending::Exited(0))
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exited(code) => write!(f, "exited with status {code}"),
            Ending::Signalled(sig) => write!(f, "killed by signal {sig}"),
            Ending::TimedOut { seconds } => {
                write!(f, "timed out after {seconds} s; the whole sandbox was killed")
            }
            Ending::OutputLimit { bytes } => {
                write!(f, "printed more than {bytes} bytes of output; the whole sandbox was killed")
            }
        }
    }
}

/// The result of a run: how it ended, how long it took, and how much output it printed.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub ending: Ending,
    pub duration: Duration,
    pub output_bytes: u64,
}

/// Why a sandbox could not run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("starting bubblewrap ({bwrap}) failed: {source}")]
    Spawn { bwrap: String, source: std::io::Error },
    #[error("the check's output pipe failed: {0}")]
    Pipe(std::io::Error),
    #[error("writing the check's output to {path} failed: {source}")]
    Output { path: String, source: std::io::Error },
    #[error("waiting for bubblewrap failed: {0}")]
    Wait(String),
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::CgroupError),
}

/// The `bwrap` arguments for `spec` (everything after the program name).
pub fn bwrap_args(spec: &SandboxSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["--unshare-all"]);
    if spec.allow_network {
        push(&["--share-net"]);
    }
    push(&["--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL"]);
    // Mounts are made in order: the fresh file systems first, so no bind below is hidden by them.
    push(&["--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]);
    push(&["--ro-bind", "/nix/store", "/nix/store"]);
    if spec.host_system_dirs {
        for dir in HOST_SYSTEM_DIRS {
            push(&["--ro-bind-try", dir, dir]);
        }
    }
    for path in &spec.ro_binds {
        let p = path.display().to_string();
        push(&["--ro-bind-try", &p, &p]);
    }
    let work = spec.work_dir.display().to_string();
    let control = spec.control_dir.display().to_string();
    push(&["--bind", &work, WORK_DIR, "--ro-bind", &control, CONTROL_DIR]);
    push(&["--chdir", WORK_DIR, "--remount-ro", "/"]);
    let script = format!("{CONTROL_DIR}/{RUN_SCRIPT}");
    push(&["--", &spec.interpreter, &script]);
    a
}

/// Kills the sandbox's process group, and everything in its cgroup, when dropped (the run ended, failed
/// or was cancelled); then removes the cgroup.
struct GroupGuard(Option<Pid>, Option<CheckCgroup>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = kill_process_group(pgid, Signal::KILL);
        }
        if let Some(cgroup) = self.1.take() {
            cgroup.kill();
            // Removing it waits for the killed processes to be gone: not on the executor's thread.
            smol::unblock(move || drop(cgroup)).detach();
        }
    }
}

/// Numbers the cgroups of this process's checks.
static CGROUP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

enum Stop {
    Finished(Result<std::process::ExitStatus, String>),
    Timeout,
    OutputLimit,
    OutputError(SandboxError),
}

/// Runs `spec` under `limits`, writing everything the command prints (stdout and stderr, interleaved)
/// to `output` (at most `max_output_bytes`) and calling `tail` with each chunk. Dropping the future
/// kills the sandbox.
pub async fn run(
    spec: &SandboxSpec,
    limits: &Limits,
    output: &Path,
    mut tail: impl FnMut(&[u8]),
) -> Result<RunResult, SandboxError> {
    let started = Instant::now();
    let bwrap = limits.bwrap.display().to_string();
    let (reader, writer) = std::io::pipe().map_err(SandboxError::Pipe)?;
    let mut out_file = std::fs::File::create(output)
        .map_err(|source| SandboxError::Output { path: output.display().to_string(), source })?;
    let mut cmd = std::process::Command::new(&limits.bwrap);
    cmd.args(bwrap_args(spec))
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(writer.try_clone().map_err(SandboxError::Pipe)?)
        .stderr(writer)
        .process_group(0);
    if let Some((uid, gid)) = limits.run_as {
        // std drops the supplementary groups, then sets the gid and the uid, before `pre_exec` runs.
        cmd.uid(uid).gid(gid);
    }
    let (mem, nproc) = (limits.memory_max_bytes, limits.max_processes);
    let cgroup = match &limits.cgroups {
        Some(parent) => {
            let seq = CGROUP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("{}{}-{seq}", super::cgroup::CHECK_PREFIX, std::process::id());
            Some(parent.create(&name, mem, nproc)?)
        }
        None => None,
    };
    let enter = match &cgroup {
        Some(cg) => Some(cg.procs_fd().map_err(SandboxError::Pipe)?),
        None => None,
    };
    let parent = rustix::process::getpid();
    // SAFETY: between fork and exec the closure only makes system calls (prctl, getppid, write,
    // setrlimit) on values computed before the fork; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("the server exited while starting the sandbox"));
            }
            if let Some(procs) = &enter {
                // The cgroup bounds memory and processes.
                rustix::io::write(procs, b"0")?;
                return Ok(());
            }
            use rustix::process::{setrlimit, Resource, Rlimit};
            setrlimit(Resource::As, Rlimit { current: Some(mem), maximum: Some(mem) })?;
            setrlimit(Resource::Nproc, Rlimit { current: Some(nproc), maximum: Some(nproc) })?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn { bwrap: bwrap.clone(), source })?;
    // The command holds the pipe's write ends: drop it so the reader sees the end of the output.
    drop(cmd);
    let pgid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    let guard = GroupGuard(pgid, cgroup);
    let reader = smol::Async::new(reader).map_err(SandboxError::Pipe)?;

    let max = limits.max_output_bytes;
    let mut written = 0u64;
    let read_all = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match reader.read_with(|r| (&*r).read(&mut buf)).await {
                Ok(0) => return None,
                Ok(n) => n,
                Err(e) => return Some(Stop::OutputError(SandboxError::Pipe(e))),
            };
            let chunk = &buf[..n];
            let room = usize::try_from(max.saturating_sub(written)).unwrap_or(usize::MAX);
            let keep = &chunk[..chunk.len().min(room)];
            if let Err(source) = std::io::Write::write_all(&mut out_file, keep) {
                return Some(Stop::OutputError(SandboxError::Output {
                    path: output.display().to_string(),
                    source,
                }));
            }
            tail(keep);
            written += keep.len() as u64;
            if keep.len() < chunk.len() {
                return Some(Stop::OutputLimit);
            }
        }
    };
    // The leader is reaped on the blocking pool; killing the group (the guard) makes that return.
    let waiter = smol::unblock(move || child.wait().map_err(|e| e.to_string()));
    let finished = async {
        // Output first (to its end, or to a limit), then the exit status.
        if let Some(stop) = read_all.await {
            return stop;
        }
        Stop::Finished(waiter.await)
    };
    let timeout = async {
        smol::Timer::after(limits.timeout).await;
        Stop::Timeout
    };
    let stop = future::or(finished, timeout).await;
    let ending = match stop {
        Stop::Finished(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                (Some(code), _) => Ending::Exited(code),
                (None, Some(sig)) => Ending::Signalled(sig),
                (None, None) => Ending::Signalled(0),
            }
        }
        Stop::Finished(Err(e)) => return Err(SandboxError::Wait(e)),
        Stop::Timeout => Ending::TimedOut { seconds: limits.timeout.as_secs() },
        Stop::OutputLimit => Ending::OutputLimit { bytes: max },
        Stop::OutputError(e) => return Err(e),
    };
    // Whatever is left of the sandbox (nothing, after a normal exit) dies with its group.
    drop(guard);
    Ok(RunResult { ending, duration: started.elapsed(), output_bytes: written })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(network: bool, host: bool) -> SandboxSpec {
        SandboxSpec {
            work_dir: "/data/checks/1/work".into(),
            control_dir: "/data/checks/1/ctl".into(),
            interpreter: "/nix/store/abc-bash/bin/bash".into(),
            host_system_dirs: host,
            allow_network: network,
            ro_binds: vec!["/etc/ssl/certs".into()],
        }
    }

    fn pos(args: &[String], item: &str) -> Option<usize> {
        args.iter().position(|a| a == item)
    }

    #[test]
    fn the_sandbox_shares_nothing_but_what_the_check_may_see() {
        let args = bwrap_args(&spec(false, false));
        for flag in ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--remount-ro"] {
            assert!(pos(&args, flag).is_some(), "{flag} missing: {args:?}");
        }
        assert!(pos(&args, "--share-net").is_none(), "no network without allow_network");
        assert!(pos(&args, "/usr").is_none(), "no host system directories for a store builder");
        let joined = args.join(" ");
        assert!(joined.contains("--ro-bind /nix/store /nix/store"), "{joined}");
        assert!(joined.contains("--bind /data/checks/1/work /work"), "{joined}");
        assert!(joined.contains("--ro-bind /data/checks/1/ctl /.eka-ci"), "{joined}");
        assert!(joined.contains("--ro-bind-try /etc/ssl/certs /etc/ssl/certs"), "{joined}");
        assert!(joined.ends_with("-- /nix/store/abc-bash/bin/bash /.eka-ci/run.sh"), "{joined}");
        assert!(!joined.contains("--bind / "), "{joined}");
    }

    #[test]
    fn allow_network_shares_only_the_network_and_host_builders_see_system_dirs() {
        let args = bwrap_args(&spec(true, true));
        let share = pos(&args, "--share-net").expect("--share-net");
        assert!(pos(&args, "--unshare-all").is_some_and(|u| u < share));
        let joined = args.join(" ");
        assert!(joined.contains("--ro-bind-try /usr /usr"), "{joined}");
        assert!(!joined.contains("/etc "), "no /etc: {joined}");
    }
}
