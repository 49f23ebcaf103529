//! The `nix-build` child of a batch: the aggregate root expression it builds, spawning it, reading its
//! stderr until it exits, and stopping it (SIGTERM to its group, SIGKILL to the group and to the
//! builders' sessions after [`KILL_GRACE`], the watchdog behind Nix's own limits). It hands every parsed
//! line to the event handlers and never decides an outcome itself.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::future;
use futures_lite::io::BufReader;
use futures_lite::StreamExt;
use rustix::process::Signal;

use super::{ChildRun, Driver};
use crate::nix::build::protocol::{parse_line, read_line};
use crate::nix::build::validity::count_spawn;
use crate::nix::build::{BuildError, DrvOutcome, StopReason, KILL_GRACE, SCRATCH_PREFIX};
use crate::nix::process::builders::{builder_sessions, kill_sessions};
use crate::nix::process::{Pipe, SupervisedChild};

/// The program that runs a batch.
const NIX_BUILD: &str = "nix-build";
/// A single stderr line longer than this is cut (the byte-exact log still has it all).
const MAX_LINE: usize = 4 << 20;
/// The name of the aggregate derivation (its activity and errors are not reported).
const AGGREGATE_NAME: &str = "eka-ci-batch";

/// The aggregate root: a trivial derivation depending on every output of every derivation of `drvs`.
/// `drvs` must have passed [`DrvPath::parse`](crate::nix::store_path::DrvPath::parse) (their characters
/// need no escaping in a Nix string).
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
pub(super) fn is_aggregate(drv: &str) -> bool {
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

impl Driver {
    /// Writes the aggregate for `members` and starts `nix-build`.
    pub(super) async fn spawn(&mut self, members: &[usize]) -> Result<ChildRun, BuildError> {
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
        if b.builders.is_some() {
            crate::nix::process::env::pass_ssh_vars(&mut cmd);
        }
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

    pub(super) async fn remove_scratch(&self, scratch: PathBuf) {
        let result = smol::unblock(move || std::fs::remove_dir_all(&scratch)).await;
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove a build scratch directory");
            }
        }
    }

    /// Runs one child to its end. Returns the members to run again (after a "no builder" abort).
    pub(super) async fn drive(
        &mut self,
        run: &mut ChildRun,
        kill_rx: &async_channel::Receiver<()>,
    ) -> Vec<usize> {
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

    /// SIGTERM to the group; Nix stops its builders and exits.
    pub(super) async fn begin_stop(&mut self, run: &mut ChildRun, reason: StopReason) {
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

    pub(super) async fn hard_kill(&mut self, run: &mut ChildRun) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRV: &str = "/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv";

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
}
