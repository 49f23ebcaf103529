//! What each control request does: the daemon's [`Handler`], answering from the pipeline, the
//! scheduler and the store. Requests that take long stream non-final frames (progress, log data) before
//! their one final response.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::server::Handler;
use crate::control::{
    ApprovedUsersOp, AutoMergeOp, BuildSummary, MaintainersOp, QueueDepths, Request, Response, StatusInfo,
    TokensOp,
};
use crate::forge::github::approvals::{self, ApprovalNotice};
use crate::jobset::JobsetId;
use crate::pipeline::{Pipeline, Progress, ProgressSink};
use crate::scheduler::{Owner, SchedulerHandle};
use crate::store::Store;

/// Answers control requests from the daemon's state.
pub(super) struct DaemonHandler {
    pub(super) started: Instant,
    pub(super) store: Store,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) scheduler: SchedulerHandle,
    pub(super) db_path: String,
    pub(super) socket_path: String,
    pub(super) http_address: String,
    pub(super) logs_dir: std::path::PathBuf,
    /// Where approvals of held pull requests are announced (the GitHub service); `None` without one.
    pub(super) approvals: Option<async_channel::Sender<ApprovalNotice>>,
    /// Wakes the GitHub service (an auto-merge enabled from the CLI is looked at at once); `None` without one.
    pub(super) github_wake: Option<async_channel::Sender<()>>,
    /// The local Nix's `sandbox` setting, as detected at start-up.
    pub(super) sandbox: crate::nix::local::Sandbox,
    /// Retention, for `ekaci gc`.
    pub(super) retention: crate::retention::Retention,
}

impl Handler for DaemonHandler {
    async fn handle(&self, request: Request, frames: async_channel::Sender<Response>) -> Response {
        let progress = progress_frames(&frames);
        match request {
            Request::Status => self.status().await,
            Request::Eval { repo, rev, job } => {
                match self.pipeline.evaluate_local(Path::new(&repo), &rev, job.as_deref(), &progress).await {
                    Ok((report, _)) => Response::Eval(report),
                    Err(e) => Response::Error { message: e.to_string() },
                }
            }
            Request::Review { repo, base, head } => self.review(&repo, &base, &head, false, &progress).await,
            Request::ReviewWith { repo, base, head, no_build } => {
                self.review(&repo, &base, &head, no_build, &progress).await
            }
            Request::Builds { state, limit } => self.builds(state, limit).await,
            Request::Log { drv, attempt, follow } => self.log(&drv, attempt, follow, &frames).await,
            Request::Rebuild { drv } => self.rebuild(&drv, &progress).await,
            // The control protocol carries the bare jobset id (its wire format is unchanged).
            Request::Cancel { jobset } => {
                match self.scheduler.cancel(Owner::Jobset(JobsetId(jobset))).await {
                    Ok(()) => Response::Cancelled { jobset },
                    Err(e) => Response::Error { message: e.to_string() },
                }
            }
            Request::CancelDrv { drv } => {
                match self.scheduler.cancel_drv(&drv, "cancelled with ekaci cancel --drv").await {
                    Ok(()) => Response::CancelledDrv { drv },
                    Err(e) => Response::Error { message: e.to_string() },
                }
            }
            Request::Approve { repo, number, sha } => self.approve(&repo, number, sha).await,
            Request::ApprovedUsers(op) => self.approved_users(op).await,
            Request::Tokens(op) => self.tokens(op).await,
            Request::Maintainers(op) => self.maintainers(op).await,
            Request::AutoMerge(op) => self.auto_merge(op).await,
            Request::Checks { commit, limit } => self.checks(commit, limit).await,
            Request::CheckOutput { commit, name } => self.check_output(commit, name).await,
            Request::Pushes { failed, limit } => {
                let store = self.store.clone();
                match smol::unblock(move || crate::cache::queue::list(&store, failed, limit as usize)).await {
                    Ok(rows) => Response::Pushes(rows),
                    Err(e) => error(e.to_string()),
                }
            }
            Request::Gc => match self.retention.run().await {
                Ok(report) => Response::Gc(report),
                Err(e) => error(e.to_string()),
            },
            Request::Summary { repo, base, head, job } => {
                self.summary(Path::new(&repo), &base, &head, job.as_deref(), &progress).await
            }
            Request::Diff { repo, base, head, job } => {
                match self
                    .pipeline
                    .diff_local(Path::new(&repo), &base, &head, job.as_deref(), &progress)
                    .await
                {
                    Ok(report) => Response::Diff(report),
                    Err(e) => Response::Error { message: e.to_string() },
                }
            }
        }
    }
}

fn error(e: impl std::fmt::Display) -> Response {
    Response::Error { message: e.to_string() }
}

/// The pipeline's progress reports, sent to the connection as non-final frames.
fn progress_frames(frames: &async_channel::Sender<Response>) -> ProgressSink {
    let frames = frames.clone();
    Some(Arc::new(move |progress: Progress| {
        // Progress is advisory: when the client reads slowly, drop it.
        let _ = frames.try_send(Response::Progress(progress));
    }))
}

/// Who approvals and approved users made through the control socket are recorded as.
const APPROVED_BY: &str = "cli";

/// How often a followed log is polled for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

impl DaemonHandler {
    /// `ekaci review`, with or without builds.
    async fn review(
        &self,
        repo: &str,
        base: &str,
        head: &str,
        no_build: bool,
        progress: &ProgressSink,
    ) -> Response {
        match self
            .pipeline
            .review_local(&self.scheduler, Path::new(repo), base, head, no_build, progress)
            .await
        {
            Ok(report) => Response::Review(report),
            Err(e) => error(e),
        }
    }

    /// Stored check results: of one commit, or the newest.
    async fn checks(&self, commit: Option<String>, limit: u32) -> Response {
        let store = self.store.clone();
        let found = smol::unblock(move || match commit {
            Some(c) => crate::checks::results::for_commit(&store, &c.to_ascii_lowercase()),
            None => crate::checks::results::recent(&store, limit as usize),
        })
        .await;
        match found {
            Ok(rows) => Response::Checks(rows),
            Err(e) => error(e.to_string()),
        }
    }

    /// The output file of check `name` at `commit` (its last [`crate::control::MAX_CHECK_OUTPUT`] bytes).
    async fn check_output(&self, commit: String, name: String) -> Response {
        let store = self.store.clone();
        let c = commit.to_ascii_lowercase();
        let rows = match smol::unblock(move || crate::checks::results::for_commit(&store, &c)).await {
            Ok(rows) => rows,
            Err(e) => return error(e.to_string()),
        };
        let Some(file) = rows.into_iter().find(|r| r.report.name == name).and_then(|r| r.report.output_file)
        else {
            return error(format!("no stored output of check `{name}` at commit {commit}"));
        };
        let read = smol::unblock(move || {
            crate::checks::read_output(std::path::Path::new(&file), crate::control::MAX_CHECK_OUTPUT)
        })
        .await;
        match read {
            Ok((output, truncated)) => Response::CheckOutput { output, truncated },
            Err(e) => error(format!("reading the output of check `{name}`: {e}")),
        }
    }

    /// Every derivation with a build state (optionally only in `state`), in graph order, at most `limit`.
    async fn builds(&self, state: Option<String>, limit: u32) -> Response {
        // Derivations waiting because every builder that may take them is down say so.
        let waiting: std::collections::HashMap<String, String> =
            self.scheduler.waiting().await.unwrap_or_default().into_iter().collect();
        let graph = self.pipeline.graph().clone();
        let store = self.store.clone();
        let listed = smol::unblock(move || -> Result<Vec<BuildSummary>, String> {
            let reader = crate::scheduler::state::Reader::new(&store).map_err(|e| e.to_string())?;
            let ids = (0..u32::try_from(graph.len()).unwrap_or(u32::MAX)).map(crate::graph::DrvId);
            let mut out = Vec::new();
            for (id, record) in reader.states(ids).map_err(|e| e.to_string())? {
                if state.as_deref().is_some_and(|s| s != record.state.name()) {
                    continue;
                }
                let drv = graph.path_of(id).map_err(|e| e.to_string())?;
                let full = record.state.to_string();
                let detail = match waiting.get(&drv) {
                    Some(reason) => Some(reason.clone()),
                    None => (full != record.state.name()).then_some(full),
                };
                out.push(BuildSummary {
                    drv,
                    state: record.state.name().to_string(),
                    detail,
                    attempt: record.attempt,
                });
                if out.len() >= limit as usize {
                    break;
                }
            }
            Ok(out)
        })
        .await;
        match listed {
            Ok(list) => Response::Builds(list),
            Err(e) => error(e),
        }
    }

    /// Streams a build log as `LogData` frames; with `follow`, keeps reading while the build runs.
    async fn log(
        &self,
        drv: &str,
        attempt: Option<u32>,
        follow: bool,
        frames: &async_channel::Sender<Response>,
    ) -> Response {
        let status = match self.scheduler.state(drv).await {
            Ok(Some(s)) => s,
            Ok(None) => return error(format!("{drv} has never been scheduled")),
            Err(e) => return error(e),
        };
        let attempt = match attempt {
            Some(0) => return error("attempts are numbered from 1"),
            Some(n) if n > status.attempt => {
                return error(format!("{drv} has {} attempt(s); there is no attempt {n}", status.attempt))
            }
            Some(n) => n,
            None if status.attempt == 0 && !follow => return error(format!("{drv} has not been built yet")),
            None => status.attempt.max(1),
        };
        let path = match crate::nix::build::log_path(&self.logs_dir, drv, attempt) {
            Ok(p) => p,
            Err(e) => return error(e),
        };
        let mut offset = 0u64;
        let mut state = status.state;
        // The state is refreshed before each read, so the read after the build became final (or moved
        // on to a retry, which has its own log) still gets every byte written before that.
        let mut last_pass = !follow || state.is_terminal();
        loop {
            // Everything there is now, 1 MiB per blocking read (the frames channel paces the reads).
            let read = loop {
                match read_from(&path, offset).await {
                    Ok((chunks, more)) => {
                        for chunk in chunks {
                            offset += chunk.len() as u64;
                            if frames.send(Response::LogData(chunk)).await.is_err() {
                                return error("client went away");
                            }
                        }
                        if !more {
                            break Ok(());
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            match read {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !last_pass => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return error(format!("no log for attempt {attempt} of {drv}"))
                }
                Err(e) => return error(format!("cannot read the log of {drv}: {}", e.kind())),
            }
            if last_pass {
                return Response::LogEnd { attempt, state: state.name().to_string() };
            }
            smol::Timer::after(FOLLOW_POLL).await;
            match self.scheduler.state(drv).await {
                Ok(Some(s)) => {
                    last_pass = s.state.is_terminal() || s.attempt > attempt;
                    state = s.state;
                }
                Ok(None) => return error(format!("{drv} has never been scheduled")),
                Err(e) => return error(e),
            }
        }
    }

    /// Requeues `drv` and waits for it (and the dependents its success requeues).
    async fn rebuild(&self, drv: &str, progress: &ProgressSink) -> Response {
        let owner = match self.scheduler.rebuild(drv).await {
            Ok(o) => o,
            Err(e) => return error(e),
        };
        if let Err(e) = self.pipeline.wait_with_progress(&self.scheduler, owner, progress).await {
            return error(e);
        }
        match self.scheduler.state(drv).await {
            Ok(Some(s)) => {
                let full = s.state.to_string();
                let detail = (full != s.state.name()).then_some(full);
                Response::Rebuilt {
                    drv: drv.to_string(),
                    state: s.state.name().into(),
                    detail,
                    ok: s.state.is_done(),
                }
            }
            Ok(None) => error(format!("{drv} has no state after its rebuild")),
            Err(e) => error(e),
        }
    }

    /// Approves the held head commit of a pull request for `require_approval` (`sha`, when given, must be
    /// that commit) and tells the GitHub service (if any) to resume it.
    async fn approve(&self, repo: &str, number: u64, sha: Option<String>) -> Response {
        let (store, notify, r) = (self.store.clone(), self.approvals.clone(), repo.to_string());
        let approved = smol::unblock(move || {
            approvals::approve_and_notify(&store, notify.as_ref(), &r, number, sha.as_deref(), APPROVED_BY)
        })
        .await;
        match approved {
            Ok(a) => {
                Response::Approved { repo: repo.to_ascii_lowercase(), number, sha: a.sha, newly: a.newly }
            }
            Err(e) => error(e),
        }
    }

    /// Creates, lists or revokes HTTP API tokens. The created token is in the answer and nowhere else.
    async fn tokens(&self, op: TokensOp) -> Response {
        let store = self.store.clone();
        match op {
            TokensOp::Create { name, scope } => {
                let key = name.clone();
                match smol::unblock(move || crate::tokens::create(&store, &key, scope)).await {
                    Ok(token) => {
                        tracing::info!(token = %name, %scope, "API token created");
                        Response::TokenCreated { name, scope, token }
                    }
                    Err(e) => error(e),
                }
            }
            TokensOp::List => match smol::unblock(move || crate::tokens::list(&store)).await {
                Ok(list) => Response::Tokens(list),
                Err(e) => error(format!("cannot list the API tokens: {e}")),
            },
            TokensOp::Revoke(name) => {
                let key = name.clone();
                match smol::unblock(move || crate::tokens::revoke(&store, &key)).await {
                    Ok(()) => {
                        tracing::info!(token = %name, "API token revoked");
                        Response::TokenRevoked { name }
                    }
                    Err(e) => error(e),
                }
            }
        }
    }

    /// Adds, removes or lists the package maintainers of `@eka-ci merge`.
    async fn maintainers(&self, op: MaintainersOp) -> Response {
        use crate::forge::github::maintainers;
        let store = self.store.clone();
        let (repo, attr, login, adding) = match op {
            MaintainersOp::List { repo } => {
                return match smol::unblock(move || maintainers::list(&store, repo.as_deref())).await {
                    Ok(rows) => Response::Maintainers(rows),
                    Err(e) => error(format!("cannot list the maintainers: {e}")),
                };
            }
            MaintainersOp::Add { repo, attr, login } => (repo, attr, login, true),
            MaintainersOp::Remove { repo, attr, login } => (repo, attr, login, false),
        };
        if let Err(e) = maintainers::validate(&repo, &attr, &login) {
            return error(e);
        }
        let (repo, login) = (repo.to_ascii_lowercase(), login.to_ascii_lowercase());
        let (r, a, l) = (repo.clone(), attr.clone(), login.clone());
        let changed = smol::unblock(move || {
            if adding {
                maintainers::add(&store, &r, &a, &l, APPROVED_BY)
            } else {
                maintainers::remove(&store, &r, &a, &l)
            }
        })
        .await;
        match changed {
            Ok(changed) => Response::MaintainerChanged { repo, attr, login, changed },
            Err(e) => error(format!("cannot change the maintainers of {repo}: {e}")),
        }
    }

    /// Enables, disables or lists auto-merge (docs/merge.md, "Auto-merge").
    async fn auto_merge(&self, op: AutoMergeOp) -> Response {
        use crate::forge::github::auto_merges;
        let store = self.store.clone();
        let (repo, number, method, enabling) = match op {
            AutoMergeOp::List => {
                return match smol::unblock(move || auto_merges::all(&store)).await {
                    Ok(rows) => Response::AutoMerges(rows),
                    Err(e) => error(format!("cannot list the auto-merges: {e}")),
                };
            }
            AutoMergeOp::Enable { repo, number, method } => (repo, number, method, true),
            AutoMergeOp::Disable { repo, number } => (repo, number, None, false),
        };
        if let Err(e) = approvals::validate_repo(&repo) {
            return error(e);
        }
        if let Some(m) = method.as_deref().filter(|m| !matches!(*m, "merge" | "squash" | "rebase")) {
            return error(format!(
                "invalid merge method `{}`: expected merge, squash or rebase",
                crate::text::ellipsis_bytes(m, 40)
            ));
        }
        let r = repo.clone();
        let changed = smol::unblock(move || {
            if enabling {
                auto_merges::enable(&store, &r, number, method.as_deref(), APPROVED_BY)
            } else {
                auto_merges::disable(&store, &r, number)
            }
        })
        .await;
        if enabling {
            if let Some(wake) = &self.github_wake {
                let _ = wake.try_send(());
            }
        }
        match changed {
            Ok(changed) => Response::AutoMergeChanged { repo, number, enabled: enabling, changed },
            Err(e) => error(format!("cannot change auto-merge of {repo}#{number}: {e}")),
        }
    }

    /// Adds, removes or lists the users whose pull requests need no approval.
    async fn approved_users(&self, op: ApprovedUsersOp) -> Response {
        if let ApprovedUsersOp::Add(login) | ApprovedUsersOp::Remove(login) = &op {
            if let Err(e) = approvals::validate_login(login) {
                return error(e);
            }
        }
        let store = self.store.clone();
        match op {
            ApprovedUsersOp::List => match smol::unblock(move || approvals::list_users(&store)).await {
                Ok(users) => Response::ApprovedUsers(users),
                Err(e) => error(format!("cannot list the approved users: {e}")),
            },
            ApprovedUsersOp::Add(login) => {
                let login = login.to_ascii_lowercase();
                let key = login.clone();
                match smol::unblock(move || approvals::add_user(&store, &key, APPROVED_BY)).await {
                    Ok(changed) => Response::ApprovedUserChanged { login, changed },
                    Err(e) => error(format!("cannot add {login} to the approved users: {e}")),
                }
            }
            ApprovedUsersOp::Remove(login) => {
                let login = login.to_ascii_lowercase();
                let key = login.clone();
                match smol::unblock(move || approvals::remove_user(&store, &key)).await {
                    Ok(changed) => Response::ApprovedUserChanged { login, changed },
                    Err(e) => error(format!("cannot remove {login} from the approved users: {e}")),
                }
            }
        }
    }

    /// Evaluates and diffs `base` and `head` of a local repository, then summarises every job's change
    /// with the head commit's `package_change_summary` and `rebuild_impact` settings.
    async fn summary(
        &self,
        repo: &Path,
        base: &str,
        head: &str,
        job: Option<&str>,
        progress: &ProgressSink,
    ) -> Response {
        let report = match self.pipeline.diff_local(repo, base, head, job, progress).await {
            Ok(r) => r,
            Err(e) => return error(e),
        };
        // With the head configuration's `package_change_summary` and `rebuild_impact`, as the diff read them.
        if let Some(sink) = progress {
            let stage = format!("summarising {} job(s)", report.jobs.len());
            sink(Progress { stage, done: 0, total: 0, counts: None });
        }
        match self.pipeline.change_summary(&report).await {
            Ok((summary, rendered)) => Response::Summary { summary, markdown: rendered.markdown },
            Err(e) => error(format!("summarising {}: {e}", report.head_commit)),
        }
    }

    async fn status(&self) -> Response {
        let store = self.store.clone();
        let schema_version = match smol::unblock(move || store.schema_version()).await {
            Ok(v) => v,
            Err(e) => return Response::Error { message: e.to_string() },
        };
        let store = self.store.clone();
        let github = smol::unblock(move || {
            let events = crate::forge::github::webhook::pending_count(&store)?;
            crate::forge::github::runs::live_counts(&store).map(|(runs, held)| (events, runs, held))
        })
        .await;
        let (github_events, github_runs, github_held) = match github {
            Ok(counts) => counts,
            Err(e) => return Response::Error { message: e.to_string() },
        };
        let (waiting, _running) = self.pipeline.depths();
        let depths = self.scheduler.depths().await.unwrap_or_default();
        let builds = depths.iter().map(|d| (d.queued + d.buildable) as u64).sum();
        let active_builds = depths.iter().map(|d| d.building as u64).sum();
        let builders = self.scheduler.builders().await.unwrap_or_default();
        Response::Status(StatusInfo {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            db_path: self.db_path.clone(),
            socket_path: self.socket_path.clone(),
            http_address: self.http_address.clone(),
            schema_version,
            queues: QueueDepths { evaluations: waiting, builds, github_events, github_runs, github_held },
            active_builds,
            restrict_eval: self.pipeline.restrict_eval(),
            sandbox: self.sandbox.as_str().to_string(),
            builders,
        })
    }
}

/// Reads `path` from `offset` to its current end, in chunks of at most 64 KiB.
/// Reads at most 1 MiB of `path` from `offset`, in 64 KiB chunks; `true` when it stopped at that bound
/// rather than at the end of the file (the caller reads on).
async fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<Vec<u8>>, bool)> {
    let path = path.to_path_buf();
    smol::unblock(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut chunks = Vec::new();
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok((chunks, false));
            }
            buf.truncate(n);
            chunks.push(buf);
            if chunks.len() >= 16 {
                // Hand over at most 1 MiB per call; the caller loops.
                return Ok((chunks, true));
            }
        }
    })
    .await
}
