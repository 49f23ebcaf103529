//! What the batch driver does with each line Nix prints: build activities starting and stopping, log
//! lines streamed to each derivation's log file, the "builds" progress counter that confirms a success,
//! and error messages turned into outcomes. It never touches the child process (see `child.rs`).

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use futures_lite::io::AsyncWriteExt;
use serde_json::Value;
use smol::Unblock;

use super::child::is_aggregate;
use super::{ChildRun, Driver};
use crate::nix::build::protocol::{
    classify_message, clean_message, connection_error, field_str, MsgKind, NixLine, ACT_BUILD, ACT_BUILDS,
    RES_BUILD_LOG_LINE, RES_POST_BUILD_LOG_LINE, RES_PROGRESS,
};
use crate::nix::build::{classify_signal, BuildEvent, DrvOutcome, MESSAGE_LIMIT};
use crate::nix::process::builders::read_oom_kills;
use crate::text::{bounded_str as bound_str, strip_ansi};

impl Driver {
    pub(super) async fn on_line(&mut self, run: &mut ChildRun, line: NixLine) {
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
        s.log_bytes = 0;
        s.log_cut = false;
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
        let cap = self.batch.max_log_bytes;
        let s = &mut self.states[idx];
        if let Some(f) = s.log_file.as_mut().filter(|_| !s.log_cut) {
            let mut bytes = Vec::with_capacity(text.len() + 1);
            bytes.extend_from_slice(text.as_bytes());
            bytes.push(b'\n');
            let room = usize::try_from(cap.saturating_sub(s.log_bytes)).unwrap_or(usize::MAX);
            if bytes.len() > room {
                // The cap: keep what fits, say where the log was cut, write nothing more. The build goes on.
                bytes.truncate(room);
                bytes.extend_from_slice(crate::nix::build::log_cut_marker(cap).as_bytes());
                s.log_cut = true;
                s.log_bytes = cap;
            } else {
                s.log_bytes += bytes.len() as u64;
            }
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
            if self.batch.builders.is_some() {
                if let Some(running) = connection_error(&text) {
                    if running {
                        self.lost_pending += 1;
                    }
                    self.builder_lost.get_or_insert_with(|| bound_str(&text, MESSAGE_LIMIT));
                }
            }
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
        let lost = matches!(kind, MsgKind::ExitCode(_) | MsgKind::Other) && self.lost_pending > 0;
        let outcome = match kind {
            _ if lost => {
                // The connection broke under this build (see `connection_error`): not its own failure.
                self.lost_pending -= 1;
                let reason = self.builder_lost.clone().unwrap_or_else(|| message.clone());
                DrvOutcome::BuilderLost { reason }
            }
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
    pub(super) async fn flush_deferred(&mut self, raw_logs: &Path) {
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
    pub(super) fn failed_input(&self, idx: usize) -> Option<String> {
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

    pub(super) async fn emit(&self, event: BuildEvent) {
        // A caller that stopped listening does not stop the batch.
        let _ = self.events.send(event).await;
    }
}
