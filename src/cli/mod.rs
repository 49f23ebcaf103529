//! The `ekaci` admin CLI: argument parsing and printing. It talks to the server only through the control
//! socket ([`crate::control::client`]) and must never open the database or run Nix itself.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;

mod progress;
pub mod render;

use crate::control::client::Client;
use crate::control::{ApprovedUsersOp, Request, Response, StatusInfo, TokensOp};
use crate::forge::github::approvals;

/// Administer a running eka-ci-server over its control socket.
#[derive(FromArgs, Debug)]
pub struct Cli {
    /// the server's control socket (default: $XDG_RUNTIME_DIR/ekaci.socket)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Status(StatusCmd),
    Eval(EvalCmd),
    Diff(DiffCmd),
    Review(ReviewCmd),
    Builds(BuildsCmd),
    Checks(ChecksCmd),
    Pushes(PushesCmd),
    Logs(LogsCmd),
    Rebuild(RebuildCmd),
    Cancel(CancelCmd),
    Approve(ApproveCmd),
    ApprovedUsers(ApprovedUsersCmd),
    Summary(SummaryCmd),
    Tokens(TokensCmd),
    Gc(GcCmd),
    Maintainers(MaintainersCmd),
    AutoMerge(AutoMergeCmd),
}

/// Enable or disable auto-merge of a pull request: it merges once its head's gate is green and a
/// maintainer of every changed package approved that head (docs/merge.md).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "auto-merge")]
pub struct AutoMergeCmd {
    #[argh(subcommand)]
    pub op: AutoMergeSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum AutoMergeSub {
    Enable(AutoMergeEnable),
    Disable(AutoMergeDisable),
    List(AutoMergeList),
}

/// Enable auto-merge of a pull request.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "enable")]
pub struct AutoMergeEnable {
    /// the repository, OWNER/REPO
    #[argh(positional)]
    pub repo: String,
    /// the pull request number
    #[argh(positional)]
    pub number: u64,
    /// merge, squash or rebase (default: the server's default_merge_method)
    #[argh(option)]
    pub method: Option<String>,
}

/// Disable auto-merge of a pull request.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "disable")]
pub struct AutoMergeDisable {
    /// the repository, OWNER/REPO
    #[argh(positional)]
    pub repo: String,
    /// the pull request number
    #[argh(positional)]
    pub number: u64,
}

/// List the pull requests with auto-merge on.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct AutoMergeList {
    /// print machine-readable JSON
    #[argh(switch)]
    pub json: bool,
}

/// Manage the package maintainers who may `@eka-ci merge` without write access (docs/merge.md).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "maintainers")]
pub struct MaintainersCmd {
    #[argh(subcommand)]
    pub op: MaintainersSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum MaintainersSub {
    Add(MaintainersAdd),
    Remove(MaintainersRemove),
    List(MaintainersList),
}

/// Make a GitHub login a maintainer of an attribute (package) of a repository.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct MaintainersAdd {
    /// the repository, OWNER/REPO
    #[argh(positional)]
    pub repo: String,
    /// the attribute path, e.g. hello or python3Packages.requests
    #[argh(positional)]
    pub attr: String,
    /// the GitHub login
    #[argh(positional)]
    pub login: String,
}

/// Remove a maintainer added with `ekaci maintainers add`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "remove")]
pub struct MaintainersRemove {
    /// the repository, OWNER/REPO
    #[argh(positional)]
    pub repo: String,
    /// the attribute path
    #[argh(positional)]
    pub attr: String,
    /// the GitHub login
    #[argh(positional)]
    pub login: String,
}

/// List the maintainers added by administrators (of every repository, or of one).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct MaintainersList {
    /// only this repository, OWNER/REPO
    #[argh(positional)]
    pub repo: Option<String>,
    /// print machine-readable JSON
    #[argh(switch)]
    pub json: bool,
}

/// Remove finished work older than the `[retention]` ages now (jobsets and their GC roots, build logs,
/// stale worktrees, unused git mirrors) and print what was freed.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "gc")]
pub struct GcCmd {}

/// Manage the tokens of the HTTP API (`Authorization: Bearer <token>`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tokens")]
pub struct TokensCmd {
    #[argh(subcommand)]
    pub op: TokensSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum TokensSub {
    Create(TokensCreate),
    List(TokensList),
    Revoke(TokensRevoke),
}

/// Create a token and print it, once (it is stored only as a hash): read reads every route, private
/// repositories and /metrics included; admin also rebuilds, cancels and approves.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "create")]
pub struct TokensCreate {
    /// a name for the token: letters, digits, `.`, `_`, `-` (at most 64)
    #[argh(positional)]
    pub name: String,
    /// read or admin
    #[argh(option)]
    pub scope: String,
}

/// List the tokens: name, scope, when created and last used (never the tokens themselves).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct TokensList {
    /// print machine-readable JSON
    #[argh(switch)]
    pub json: bool,
}

/// Revoke a token: requests carrying it are refused from now on.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "revoke")]
pub struct TokensRevoke {
    /// the token's name
    #[argh(positional)]
    pub name: String,
}

/// Evaluate two revisions of a local repository and print the change summary: package changes, rebuild
/// counts per system, the largest blast radii, and the size increases and runtime dependency changes a
/// review of the change measured, as markdown (default) or JSON.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "summary")]
pub struct SummaryCmd {
    /// path to a local git repository
    #[argh(option)]
    pub repo: PathBuf,
    /// the base revision
    #[argh(option)]
    pub base: String,
    /// the head revision
    #[argh(option)]
    pub head: String,
    /// only this job
    #[argh(option)]
    pub job: Option<String>,
    /// md (default) or json
    #[argh(option, default = "String::from(\"md\")")]
    pub format: String,
}

/// Approve the current head commit of a pull request held by require_approval (its author lacks write
/// permission), so that it is evaluated and built. The approval is for that commit only: a later push
/// is held again. Prints the approved commit.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "approve")]
pub struct ApproveCmd {
    /// the pull request, OWNER/REPO#NUMBER (e.g. octo-org/hello-world#42)
    #[argh(positional)]
    pub pr: String,
    /// approve only if this commit (full SHA or a prefix of at least 7 digits) is the held head
    #[argh(option)]
    pub sha: Option<String>,
}

/// Manage the GitHub users whose pull requests need no approval under require_approval.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "approved-users")]
pub struct ApprovedUsersCmd {
    #[argh(subcommand)]
    pub op: ApprovedUsersSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum ApprovedUsersSub {
    Add(ApprovedUsersAdd),
    Remove(ApprovedUsersRemove),
    List(ApprovedUsersList),
}

/// Add a GitHub login to the approved users.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct ApprovedUsersAdd {
    /// the GitHub login
    #[argh(positional)]
    pub login: String,
}

/// Remove a GitHub login from the approved users.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "remove")]
pub struct ApprovedUsersRemove {
    /// the GitHub login
    #[argh(positional)]
    pub login: String,
}

/// List the approved users.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct ApprovedUsersList {
    /// print machine-readable JSON
    #[argh(switch)]
    pub json: bool,
}

/// List derivations with a build state.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "builds")]
pub struct BuildsCmd {
    /// only this state: queued, buildable, building, success, failure, failed-retry, transitive-failure,
    /// blocked, interrupted, cached
    #[argh(option)]
    pub state: Option<String>,
    /// at most this many (default 1000)
    #[argh(option, default = "1000")]
    pub limit: u32,
    /// print machine-readable JSON
    #[argh(switch)]
    pub json: bool,
}

/// List stored results of repository checks (docs/checks.md), or print one check's whole output.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "checks")]
pub struct ChecksCmd {
    /// only the checks of this commit (full SHA)
    #[argh(option)]
    pub commit: Option<String>,
    /// print the whole output of this check (needs --commit)
    #[argh(option)]
    pub output: Option<String>,
    /// without --commit, at most this many, newest first (default 100)
    #[argh(option, default = "100")]
    pub limit: u32,
    /// print machine-readable JSON
    #[argh(switch)]
    pub json: bool,
}

/// List cache pushes (docs/caches.md), most recently changed first.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "pushes")]
pub struct PushesCmd {
    /// only pushes given up or whose last attempt failed
    #[argh(switch)]
    pub failed: bool,
    /// at most this many (default 100)
    #[argh(option, default = "100")]
    pub limit: u32,
    /// print machine-readable JSON
    #[argh(switch)]
    pub json: bool,
}

/// Print a derivation's build log (the latest attempt unless --attempt).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "logs")]
pub struct LogsCmd {
    /// the derivation (/nix/store/...drv)
    #[argh(positional)]
    pub drv: String,
    /// which attempt (numbered from 1)
    #[argh(option)]
    pub attempt: Option<u32>,
    /// keep printing while the build runs
    #[argh(switch, short = 'f')]
    pub follow: bool,
}

/// Requeue a derivation in a final state, wait, and print how it ended. Exits 1 unless it succeeds.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "rebuild")]
pub struct RebuildCmd {
    /// the derivation (/nix/store/...drv)
    #[argh(positional)]
    pub drv: String,
}

/// Cancel a jobset's builds (work no other jobset needs is dropped, running builds of it are killed), or
/// with --drv one queued or running derivation (its dependents become blocked).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cancel")]
pub struct CancelCmd {
    /// the jobset id (as `ekaci eval --json` reports it)
    #[argh(positional)]
    pub jobset: Option<u64>,
    /// cancel this one derivation (/nix/store/...drv) instead of a jobset
    #[argh(option)]
    pub drv: Option<String>,
}

/// Review head against base of a local repository: evaluate both, diff them, build what is added or
/// changed, and report per job. Exits 0 when no added or changed attribute fails, 1 otherwise. With
/// --no-build nothing is built (nor are checks run): exits 1 when head has evaluation errors new in head
/// or a job's evaluation fails, 0 otherwise.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "review")]
pub struct ReviewCmd {
    /// path to a local git repository
    #[argh(option)]
    pub repo: PathBuf,
    /// the base revision
    #[argh(option)]
    pub base: String,
    /// the head revision
    #[argh(option)]
    pub head: String,
    /// print machine-readable JSON (no progress output)
    #[argh(switch)]
    pub json: bool,
    /// evaluate, diff and summarise only: build nothing and run no checks
    #[argh(switch)]
    pub no_build: bool,
}

/// Evaluate a local repository at a revision, per its .eka-ci/config.json, and print every attribute's
/// derivation or evaluation error. Exits 1 when a job's evaluation fails.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "eval")]
pub struct EvalCmd {
    /// path to a local git repository
    #[argh(option)]
    pub repo: PathBuf,
    /// revision to evaluate (a commit, branch, tag, HEAD~1, ...)
    #[argh(option)]
    pub rev: String,
    /// only this job
    #[argh(option)]
    pub job: Option<String>,
    /// print machine-readable JSON (no progress output)
    #[argh(switch)]
    pub json: bool,
}

/// Evaluate two revisions of a local repository and print, per job, which attributes were added, removed
/// or changed, and the evaluation errors on either side.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "diff")]
pub struct DiffCmd {
    /// path to a local git repository
    #[argh(option)]
    pub repo: PathBuf,
    /// the base revision
    #[argh(option)]
    pub base: String,
    /// the head revision
    #[argh(option)]
    pub head: String,
    /// only this job
    #[argh(option)]
    pub job: Option<String>,
    /// print machine-readable JSON (no progress output)
    #[argh(switch)]
    pub json: bool,
}

/// Show the server's version, uptime, paths, queue depths and active builds.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusCmd {
    /// print machine-readable JSON
    #[argh(switch)]
    pub json: bool,
}

/// Runs the CLI and returns its exit status: 0 on success, 1 when the server cannot be reached or
/// answers with an error.
pub fn main(cli: Cli) -> ExitCode {
    let socket = cli.socket.clone().unwrap_or_else(crate::paths::default_socket_path);
    smol::block_on(async {
        let result = match &cli.command {
            Command::Status(cmd) => status(&socket, cmd).await,
            Command::Eval(cmd) => eval(&socket, cmd).await,
            Command::Diff(cmd) => diff(&socket, cmd).await,
            Command::Review(cmd) => review(&socket, cmd).await,
            Command::Builds(cmd) => builds(&socket, cmd).await,
            Command::Checks(cmd) => checks(&socket, cmd).await,
            Command::Pushes(cmd) => pushes(&socket, cmd).await,
            Command::Logs(cmd) => logs(&socket, cmd).await,
            Command::Rebuild(cmd) => rebuild(&socket, cmd).await,
            Command::Cancel(cmd) => cancel(&socket, cmd).await,
            Command::Approve(cmd) => approve(&socket, cmd).await,
            Command::ApprovedUsers(cmd) => approved_users(&socket, cmd).await,
            Command::Summary(cmd) => summary(&socket, cmd).await,
            Command::Tokens(cmd) => tokens(&socket, cmd).await,
            Command::Gc(_) => gc(&socket).await,
            Command::Maintainers(cmd) => maintainers(&socket, cmd).await,
            Command::AutoMerge(cmd) => auto_merge(&socket, cmd).await,
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("ekaci: {message}");
                ExitCode::from(1)
            }
        }
    })
}

async fn call(socket: &std::path::Path, request: Request) -> Result<Response, String> {
    call_with_progress(socket, request, false).await
}

/// Sends a request; with `show_progress` and a terminal on stderr, draws one updating progress line.
async fn call_with_progress(
    socket: &std::path::Path,
    request: Request,
    show_progress: bool,
) -> Result<Response, String> {
    let mut client = Client::connect(socket).await.map_err(|e| e.to_string())?;
    let mut line = progress::Line::new(show_progress);
    let response = client.call_with_progress(&request, |p| line.update(p)).await;
    line.finish();
    match response.map_err(|e| e.to_string())? {
        Response::Error { message } => Err(message),
        other => Ok(other),
    }
}

/// The repository path as the server must see it: absolute, symlinks resolved.
fn repo_path(repo: &std::path::Path) -> Result<String, String> {
    std::fs::canonicalize(repo)
        .map(|p| p.display().to_string())
        .map_err(|e| format!("cannot use repository {}: {e}", repo.display()))
}

async fn eval(socket: &std::path::Path, cmd: &EvalCmd) -> Result<(), String> {
    let request = Request::Eval { repo: repo_path(&cmd.repo)?, rev: cmd.rev.clone(), job: cmd.job.clone() };
    match call_with_progress(socket, request, !cmd.json).await? {
        Response::Eval(report) => {
            if cmd.json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
            } else {
                print!("{}", render::eval_report(&report));
            }
            if report.jobs.iter().any(|j| j.jobset.eval_failed()) {
                return Err("evaluation failed (see above)".into());
            }
            Ok(())
        }
        other => Err(format!("unexpected response to eval: {other:?}")),
    }
}

async fn diff(socket: &std::path::Path, cmd: &DiffCmd) -> Result<(), String> {
    let request = Request::Diff {
        repo: repo_path(&cmd.repo)?,
        base: cmd.base.clone(),
        head: cmd.head.clone(),
        job: cmd.job.clone(),
    };
    match call_with_progress(socket, request, !cmd.json).await? {
        Response::Diff(report) => {
            if cmd.json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
            } else {
                print!("{}", render::diff_report(&report));
            }
            Ok(())
        }
        other => Err(format!("unexpected response to diff: {other:?}")),
    }
}

async fn status(socket: &std::path::Path, cmd: &StatusCmd) -> Result<(), String> {
    match call(socket, Request::Status).await? {
        Response::Status(info) => {
            if cmd.json {
                println!("{}", serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?);
            } else {
                print!("{}", render_status(&info));
            }
            Ok(())
        }
        other => Err(format!("unexpected response to status: {other:?}")),
    }
}

async fn review(socket: &std::path::Path, cmd: &ReviewCmd) -> Result<(), String> {
    let (repo, base, head) = (repo_path(&cmd.repo)?, cmd.base.clone(), cmd.head.clone());
    // A plain review keeps the request every server version understands.
    let request = if cmd.no_build {
        Request::ReviewWith { repo, base, head, no_build: true }
    } else {
        Request::Review { repo, base, head }
    };
    match call_with_progress(socket, request, !cmd.json).await? {
        Response::Review(report) => {
            if cmd.json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
            } else {
                print!("{}", render::review_report(&report));
            }
            if report.failed && report.builds_skipped {
                return Err(
                    "review failed: head has new evaluation errors or its evaluation failed (see above)"
                        .into(),
                );
            }
            if report.failed {
                return Err("review failed: an added or changed attribute fails (see above)".into());
            }
            Ok(())
        }
        other => Err(format!("unexpected response to review: {other:?}")),
    }
}

async fn builds(socket: &std::path::Path, cmd: &BuildsCmd) -> Result<(), String> {
    let request = Request::Builds { state: cmd.state.clone(), limit: cmd.limit };
    match call(socket, request).await? {
        Response::Builds(list) => {
            if cmd.json {
                println!("{}", serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?);
            } else {
                for b in &list {
                    let detail = b.detail.as_deref().map(|d| format!("  ({d})")).unwrap_or_default();
                    println!("{:<20} {}  attempt {}{detail}", b.state, b.drv, b.attempt);
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected response to builds: {other:?}")),
    }
}

async fn checks(socket: &std::path::Path, cmd: &ChecksCmd) -> Result<(), String> {
    use std::io::Write;
    if let Some(name) = &cmd.output {
        let Some(commit) = cmd.commit.clone() else { return Err("--output needs --commit".into()) };
        return match call(socket, Request::CheckOutput { commit, name: name.clone() }).await? {
            Response::CheckOutput { output, truncated } => {
                if truncated {
                    eprintln!("ekaci: the output is long; only its end is shown");
                }
                std::io::stdout().lock().write_all(&output).map_err(|e| e.to_string())
            }
            Response::Error { message } => Err(message),
            other => Err(format!("unexpected response to checks: {other:?}")),
        };
    }
    match call(socket, Request::Checks { commit: cmd.commit.clone(), limit: cmd.limit }).await? {
        Response::Checks(rows) => {
            if cmd.json {
                println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else {
                for r in &rows {
                    let verdict = if r.report.passed() { "ok" } else { "FAIL" };
                    println!(
                        "{verdict:<4} {} {} {}: {}",
                        crate::text::short_sha(&r.commit),
                        r.repo,
                        r.report.name,
                        r.report.summary()
                    );
                }
            }
            Ok(())
        }
        Response::Error { message } => Err(message),
        other => Err(format!("unexpected response to checks: {other:?}")),
    }
}

async fn pushes(socket: &std::path::Path, cmd: &PushesCmd) -> Result<(), String> {
    match call(socket, Request::Pushes { failed: cmd.failed, limit: cmd.limit }).await? {
        Response::Pushes(rows) => {
            if cmd.json {
                println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else {
                for p in &rows {
                    let error = p.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
                    println!("{:<7} {} {} attempts={}{error}", p.state.as_str(), p.cache, p.drv, p.attempts);
                }
            }
            Ok(())
        }
        Response::Error { message } => Err(message),
        other => Err(format!("unexpected response to pushes: {other:?}")),
    }
}

async fn logs(socket: &std::path::Path, cmd: &LogsCmd) -> Result<(), String> {
    use std::io::Write;
    let request = Request::Log { drv: cmd.drv.clone(), attempt: cmd.attempt, follow: cmd.follow };
    let mut client = Client::connect(socket).await.map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    let mut write_failed = None;
    let response = client
        .call_streaming(&request, |frame| {
            if let Response::LogData(bytes) = frame {
                // Bytes as the build printed them: never transcoded.
                if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
                    write_failed.get_or_insert(e);
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = write_failed {
        return Err(format!("cannot write the log: {e}"));
    }
    match response {
        Response::LogEnd { .. } => Ok(()),
        Response::Error { message } => Err(message),
        other => Err(format!("unexpected response to logs: {other:?}")),
    }
}

async fn rebuild(socket: &std::path::Path, cmd: &RebuildCmd) -> Result<(), String> {
    match call_with_progress(socket, Request::Rebuild { drv: cmd.drv.clone() }, true).await? {
        Response::Rebuilt { drv, state, detail, ok } => {
            let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
            println!("{drv}: {state}{detail}");
            if ok {
                Ok(())
            } else {
                Err("the rebuild did not succeed".into())
            }
        }
        other => Err(format!("unexpected response to rebuild: {other:?}")),
    }
}

async fn cancel(socket: &std::path::Path, cmd: &CancelCmd) -> Result<(), String> {
    let request = match (cmd.jobset, &cmd.drv) {
        (Some(jobset), None) => Request::Cancel { jobset },
        (None, Some(drv)) => Request::CancelDrv { drv: drv.clone() },
        _ => return Err("cancel takes a jobset id or --drv /nix/store/...drv (one of them)".into()),
    };
    match call(socket, request).await? {
        Response::Cancelled { jobset } => {
            println!("cancelled the builds of jobset {jobset}");
            Ok(())
        }
        Response::CancelledDrv { drv } => {
            println!("cancelled {drv}");
            Ok(())
        }
        other => Err(format!("unexpected response to cancel: {other:?}")),
    }
}

async fn gc(socket: &std::path::Path) -> Result<(), String> {
    match call(socket, Request::Gc).await? {
        Response::Gc(report) => {
            print!("{}", crate::retention::render(&report));
            Ok(())
        }
        other => Err(format!("unexpected response to gc: {other:?}")),
    }
}

async fn summary(socket: &std::path::Path, cmd: &SummaryCmd) -> Result<(), String> {
    let json = match cmd.format.as_str() {
        "md" => false,
        "json" => true,
        other => return Err(format!("invalid --format `{other}`: expected md or json")),
    };
    let request = Request::Summary {
        repo: repo_path(&cmd.repo)?,
        base: cmd.base.clone(),
        head: cmd.head.clone(),
        job: cmd.job.clone(),
    };
    match call_with_progress(socket, request, !json).await? {
        Response::Summary { summary, markdown } => {
            if json {
                let mut value = serde_json::to_value(&summary).map_err(|e| e.to_string())?;
                if let Some(obj) = value.as_object_mut() {
                    obj.insert("markdown".into(), serde_json::Value::String(markdown));
                }
                println!("{}", serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?);
            } else {
                print!("{markdown}");
                if !markdown.ends_with('\n') {
                    println!();
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected response to summary: {other:?}")),
    }
}

async fn approve(socket: &std::path::Path, cmd: &ApproveCmd) -> Result<(), String> {
    let (repo, number) = approvals::parse_pr_ref(&cmd.pr).map_err(|e| e.to_string())?;
    match call(socket, Request::Approve { repo, number, sha: cmd.sha.clone() }).await? {
        Response::Approved { repo, number, sha, newly } => {
            if newly {
                println!("approved {repo}#{number} at {sha}");
            } else {
                println!("{repo}#{number} was already approved at {sha}");
            }
            Ok(())
        }
        other => Err(format!("unexpected response to approve: {other:?}")),
    }
}

async fn approved_users(socket: &std::path::Path, cmd: &ApprovedUsersCmd) -> Result<(), String> {
    let (op, json) = match &cmd.op {
        ApprovedUsersSub::Add(a) => (ApprovedUsersOp::Add(a.login.clone()), false),
        ApprovedUsersSub::Remove(r) => (ApprovedUsersOp::Remove(r.login.clone()), false),
        ApprovedUsersSub::List(l) => (ApprovedUsersOp::List, l.json),
    };
    if let ApprovedUsersOp::Add(login) | ApprovedUsersOp::Remove(login) = &op {
        approvals::validate_login(login).map_err(|e| e.to_string())?;
    }
    let adding = matches!(op, ApprovedUsersOp::Add(_));
    match call(socket, Request::ApprovedUsers(op)).await? {
        Response::ApprovedUserChanged { login, changed } => {
            match (adding, changed) {
                (true, true) => println!("added {login} to the approved users"),
                (true, false) => println!("{login} already is an approved user"),
                (false, true) => println!("removed {login} from the approved users"),
                (false, false) => println!("{login} was not an approved user"),
            }
            Ok(())
        }
        Response::ApprovedUsers(users) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&users).map_err(|e| e.to_string())?);
            } else if users.is_empty() {
                println!("no approved users");
            } else {
                let width = users.iter().map(|u| u.login.len()).max().unwrap_or(0);
                for u in &users {
                    println!("{:width$}  added {} by {}", u.login, render::utc_time(u.added_at), u.added_by);
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected response to approved-users: {other:?}")),
    }
}

async fn maintainers(socket: &std::path::Path, cmd: &MaintainersCmd) -> Result<(), String> {
    use crate::control::MaintainersOp;
    use crate::forge::github::maintainers::validate;
    let (op, json) = match &cmd.op {
        MaintainersSub::Add(a) => {
            validate(&a.repo, &a.attr, &a.login).map_err(|e| e.to_string())?;
            (MaintainersOp::Add { repo: a.repo.clone(), attr: a.attr.clone(), login: a.login.clone() }, false)
        }
        MaintainersSub::Remove(r) => {
            validate(&r.repo, &r.attr, &r.login).map_err(|e| e.to_string())?;
            (
                MaintainersOp::Remove { repo: r.repo.clone(), attr: r.attr.clone(), login: r.login.clone() },
                false,
            )
        }
        MaintainersSub::List(l) => {
            if let Some(repo) = &l.repo {
                approvals::validate_repo(repo).map_err(|e| e.to_string())?;
            }
            (MaintainersOp::List { repo: l.repo.clone() }, l.json)
        }
    };
    let adding = matches!(op, MaintainersOp::Add { .. });
    match call(socket, Request::Maintainers(op)).await? {
        Response::MaintainerChanged { repo, attr, login, changed } => {
            match (adding, changed) {
                (true, true) => println!("{login} now maintains {attr} in {repo}"),
                (true, false) => println!("{login} already maintains {attr} in {repo}"),
                (false, true) => println!("{login} no longer maintains {attr} in {repo}"),
                (false, false) => println!("{login} was not a maintainer of {attr} in {repo}"),
            }
            Ok(())
        }
        Response::Maintainers(rows) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else if rows.is_empty() {
                println!("no maintainers");
            } else {
                for m in &rows {
                    println!(
                        "{} {} {}  added {} by {}",
                        m.repo,
                        m.attr,
                        m.login,
                        render::utc_time(m.added_at),
                        m.added_by
                    );
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected response to maintainers: {other:?}")),
    }
}

async fn auto_merge(socket: &std::path::Path, cmd: &AutoMergeCmd) -> Result<(), String> {
    use crate::control::AutoMergeOp;
    let (op, json) = match &cmd.op {
        AutoMergeSub::Enable(e) => {
            approvals::validate_repo(&e.repo).map_err(|e| e.to_string())?;
            (AutoMergeOp::Enable { repo: e.repo.clone(), number: e.number, method: e.method.clone() }, false)
        }
        AutoMergeSub::Disable(d) => {
            approvals::validate_repo(&d.repo).map_err(|e| e.to_string())?;
            (AutoMergeOp::Disable { repo: d.repo.clone(), number: d.number }, false)
        }
        AutoMergeSub::List(l) => (AutoMergeOp::List, l.json),
    };
    match call(socket, Request::AutoMerge(op)).await? {
        Response::AutoMergeChanged { repo, number, enabled, changed } => {
            match (enabled, changed) {
                (true, true) => println!("auto-merge enabled for {repo}#{number}"),
                (true, false) => {
                    println!("auto-merge was already enabled for {repo}#{number} (method updated)")
                }
                (false, true) => println!("auto-merge disabled for {repo}#{number}"),
                (false, false) => println!("auto-merge was not enabled for {repo}#{number}"),
            }
            Ok(())
        }
        Response::AutoMerges(rows) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else if rows.is_empty() {
                println!("no pull request has auto-merge enabled");
            } else {
                for r in &rows {
                    println!(
                        "{}#{} method {}  enabled {} by {}",
                        r.repo,
                        r.number,
                        r.method.as_deref().unwrap_or("default"),
                        render::utc_time(r.enabled_at),
                        r.enabled_by
                    );
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected response to auto-merge: {other:?}")),
    }
}

async fn tokens(socket: &std::path::Path, cmd: &TokensCmd) -> Result<(), String> {
    let (op, json) = match &cmd.op {
        TokensSub::Create(c) => {
            crate::tokens::validate_name(&c.name).map_err(|e| e.to_string())?;
            let scope = c.scope.parse().map_err(|e: crate::tokens::TokenError| e.to_string())?;
            (TokensOp::Create { name: c.name.clone(), scope }, false)
        }
        TokensSub::List(l) => (TokensOp::List, l.json),
        TokensSub::Revoke(r) => {
            crate::tokens::validate_name(&r.name).map_err(|e| e.to_string())?;
            (TokensOp::Revoke(r.name.clone()), false)
        }
    };
    match call(socket, Request::Tokens(op)).await? {
        Response::TokenCreated { name, scope, token } => {
            // The token alone on stdout, so that `TOKEN=$(ekaci tokens create …)` works.
            eprintln!("created token `{name}` (scope {scope}); it is shown only this once:");
            println!("{}", token.expose());
            Ok(())
        }
        Response::TokenRevoked { name } => {
            println!("revoked token `{name}`");
            Ok(())
        }
        Response::Tokens(list) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?);
            } else if list.is_empty() {
                println!("no API tokens");
            } else {
                let width = list.iter().map(|t| t.name.len()).max().unwrap_or(0);
                for t in &list {
                    let used = t.last_used_at.map_or_else(
                        || "never used".to_string(),
                        |at| format!("last used {}", render::utc_time(at)),
                    );
                    println!(
                        "{:width$}  {:5}  created {}  {used}",
                        t.name,
                        t.scope.name(),
                        render::utc_time(t.created_at)
                    );
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected response to tokens: {other:?}")),
    }
}

/// The human-readable form of `ekaci status`.
pub fn render_status(info: &StatusInfo) -> String {
    let mut out = render_status_head(info);
    if info.builders.iter().any(|b| b.kind == "remote") {
        out.push_str("builders:\n");
        for b in &info.builders {
            let health = match &b.health {
                crate::scheduler::Health::Down { reason } => format!("DOWN ({reason})"),
                other => other.name().to_string(),
            };
            out.push_str(&format!(
                "  {:<40} {health}, {} of {} slots busy, {}\n",
                b.name,
                b.building,
                b.max_jobs,
                b.systems.join(",")
            ));
        }
    }
    out
}

fn render_status_head(info: &StatusInfo) -> String {
    format!(
        "eka-ci-server {version} (pid {pid})\n\
         uptime:          {uptime}\n\
         database:        {db} (schema v{schema})\n\
         control socket:  {socket}\n\
         http:            http://{http}\n\
         queued:          {evals} evaluations, {builds} builds, {events} GitHub events\n\
         GitHub runs:     {runs} queued or running, {held} held for approval\n\
         active builds:   {active}\n\
         evaluation:      {restriction}\n\
         builds:          {sandbox}\n",
        version = info.version,
        pid = info.pid,
        uptime = human_duration(info.uptime_seconds),
        db = info.db_path,
        schema = info.schema_version,
        socket = info.socket_path,
        http = info.http_address,
        evals = info.queues.evaluations,
        builds = info.queues.builds,
        events = info.queues.github_events,
        runs = info.queues.github_runs,
        held = info.queues.github_held,
        active = info.active_builds,
        restriction = if info.restrict_eval {
            "restricted (restrict-eval)"
        } else {
            "UNRESTRICTED (restrict_eval = false)"
        },
        sandbox = match info.sandbox.as_str() {
            "true" => "sandboxed (Nix sandbox = true)".to_string(),
            other => format!("NOT SANDBOXED (Nix sandbox = {other})"),
        },
    )
}

/// `3725` → `1h 2m 5s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m 1s");
        assert_eq!(human_duration(3725), "1h 2m 5s");
        assert_eq!(human_duration(90061), "1d 1h 1m");
    }
}
