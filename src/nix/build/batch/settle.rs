//! Settling a batch: completing each derivation's log and sending its one `Finished` event, deciding what
//! Nix left open when its child exited (one validity check for all of them, restarts after a "no
//! builder" abort, killed or not built), and the final [`BatchSummary`].

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use futures_lite::io::AsyncWriteExt;

use super::{ChildRun, Driver};
use crate::nix::build::validity::invalid_outputs;
use crate::nix::build::{classify_signal, BatchSummary, BuildEvent, DrvOutcome, DrvReport};
use crate::nix::process::builders::read_oom_kills;
use crate::nix::process::TailBuffer;
use crate::text::strip_ansi;

impl Driver {
    /// Flushes and closes the streamed log file of `idx`.
    pub(super) async fn close_log(&mut self, idx: usize) {
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
    pub(super) async fn finish(&mut self, idx: usize, outcome: DrvOutcome, raw_logs: Option<&Path>) {
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
            let cap = LogCap { max_bytes: self.batch.max_log_bytes, cut: s.log_cut };
            let written =
                smol::unblock(move || complete_log(&log, raw.as_deref(), message.as_deref(), started, cap))
                    .await;
            if let Err(e) = written {
                self.log_errors += 1;
                tracing::warn!(log = %s.log.display(), error = %e, "cannot complete a build log");
            }
        }
        s.finished = Some((outcome.clone(), duration, has_log));
        let drv = s.path.clone();
        self.emit(BuildEvent::Finished { drv, outcome, duration }).await;
    }

    /// After a child exited: settles what its events left open. Returns the members to run again.
    pub(super) async fn end_of_run(&mut self, run: &mut ChildRun) -> Vec<usize> {
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
                        // Nix itself (not a builder) died: killed by the OOM killer, that is the host's
                        // trouble, not the derivation's.
                        match sig.map(|sig| classify_signal(sig, rose)) {
                            Some(DrvOutcome::OutOfMemory) => DrvOutcome::HostTrouble {
                                reason:
                                    "the Nix build process was killed by the kernel's out-of-memory killer"
                                        .into(),
                            },
                            Some(outcome) => outcome,
                            None => DrvOutcome::Killed { signal: None },
                        }
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
    pub(super) async fn finish_rest(&mut self) {
        for i in 0..self.states.len() {
            if self.states[i].finished.is_none() {
                self.finish(i, DrvOutcome::NotBuilt, None).await;
            }
        }
    }

    pub(super) fn summary(&mut self) -> BatchSummary {
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
            builder_lost: self.builder_lost.clone(),
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
        DrvOutcome::HostTrouble { reason } => Some(format!("eka-ci: transient host error: {reason}")),
        DrvOutcome::BuilderLost { reason } => {
            Some(format!("eka-ci: the remote builder was lost: {reason}; the build is tried again"))
        }
    }
}

/// The log cap of one attempt.
#[derive(Debug, Clone, Copy)]
struct LogCap {
    /// `[builds] max_log_bytes`.
    max_bytes: u64,
    /// The streamed log was already cut (and ends with the marker).
    cut: bool,
}

/// Completes a log file: Nix's byte-exact copy replaces the streamed one when it exists (cut at the cap,
/// with the marker, when longer; never used when the streamed log was cut: that one is kept and Nix's copy
/// removed), then `message` is appended on a line of its own. Blocking.
fn complete_log(
    log: &Path,
    raw: Option<&Path>,
    message: Option<&str>,
    started: bool,
    cap: LogCap,
) -> io::Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let replaced = match raw {
        Some(raw) if cap.cut => {
            match std::fs::remove_file(raw) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            false
        }
        Some(raw) if started => match std::fs::rename(raw, log) {
            Ok(()) => {
                let f = std::fs::OpenOptions::new().write(true).open(log)?;
                if f.metadata()?.len() > cap.max_bytes {
                    f.set_len(cap.max_bytes)?;
                    drop(f);
                    let mut f = std::fs::OpenOptions::new().append(true).open(log)?;
                    f.write_all(crate::nix::build::log_cut_marker(cap.max_bytes).as_bytes())?;
                }
                true
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("h/1.log");
        let raw = dir.path().join("raw");
        std::fs::create_dir_all(dir.path().join("h")).expect("mkdir");
        std::fs::write(&log, "streamed\n").expect("write");
        std::fs::write(&raw, b"a\xff\r\nno-eol").expect("write");
        complete_log(&log, Some(&raw), Some("error: boom"), true, NO_CAP).expect("complete");
        assert_eq!(std::fs::read(&log).expect("read"), b"a\xff\r\nno-eol\nerror: boom\n");
        assert!(!raw.exists());
        // No raw copy: the streamed log stays, the message follows.
        std::fs::write(&log, "streamed\n").expect("write");
        complete_log(&log, Some(&raw), Some("error: x"), true, NO_CAP).expect("complete");
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "streamed\nerror: x\n");
        // Never started: only the message.
        let log2 = dir.path().join("g/1.log");
        complete_log(&log2, None, Some("eka-ci: not built"), false, NO_CAP).expect("complete");
        assert_eq!(std::fs::read_to_string(&log2).expect("read"), "eka-ci: not built\n");
    }

    const NO_CAP: LogCap = LogCap { max_bytes: u64::MAX, cut: false };

    #[test]
    fn caps_nix_copy_and_keeps_a_cut_streamed_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("h/1.log");
        let raw = dir.path().join("raw");
        std::fs::create_dir_all(dir.path().join("h")).expect("mkdir");
        std::fs::write(&raw, "0123456789abcdef").expect("write");
        complete_log(&log, Some(&raw), None, true, LogCap { max_bytes: 10, cut: false }).expect("complete");
        let want = format!("0123456789{}", crate::nix::build::log_cut_marker(10));
        assert_eq!(std::fs::read_to_string(&log).expect("read"), want);
        // The streamed log was cut: it stays, Nix's copy goes.
        std::fs::write(&raw, "much longer than the cap").expect("write");
        std::fs::write(&log, "streamed, cut").expect("write");
        complete_log(&log, Some(&raw), Some("error: x"), true, LogCap { max_bytes: 10, cut: true })
            .expect("complete");
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "streamed, cut\nerror: x\n");
        assert!(!raw.exists());
    }
}
