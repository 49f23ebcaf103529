//! The daemon's lifecycle: start-up checks, opening the store and sockets, running every service on one
//! single-threaded smol executor, and an orderly shutdown on SIGTERM/SIGINT.
//!
//! This module wires the other modules together and owns the order of start and stop. It must never
//! contain the logic of a service itself (HTTP routes, scheduling): those live in their modules and are
//! only started and stopped from here. What each control request does is in [`requests`].

mod requests;
mod seal;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use smol::LocalExecutor;

use crate::checkout::Checkouts;
use crate::config::{EvalBackendSetting, LoadedConfig, ServerConfig};
use crate::control::server::{ControlSocket, Handler, SocketError};

use crate::graph::Graph;
use crate::jobset::Jobsets;
use crate::nix::eval::{EvalBackend, EvalOptions};
use crate::pipeline::Pipeline;
use crate::scheduler::{SchedulerConfig, SchedulerHandle};
use crate::store::{Store, StoreError};

/// How long running work may take to finish after SIGTERM before it is abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("machines_file {path}: {message}")]
    MachinesFile { path: PathBuf, message: String },
    #[error(transparent)]
    GitHubApp(crate::forge::github::app::AppError),
    #[error(
        "no webhook secret is configured: set security.webhook_secret in {origin} or the WEBHOOK_SECRET \
         environment variable, or set security.allow_insecure_webhooks = true for local development"
    )]
    NoWebhookSecret { origin: String },
    #[error(transparent)]
    Cache(crate::cache::CacheSetupError),
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot listen for HTTP on {address}: {source}")]
    Http { address: String, source: std::io::Error },
    #[error("cannot create the build log directory {path}: {source}")]
    LogsDir { path: PathBuf, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error("cannot start the build scheduler: {0}")]
    Scheduler(#[from] crate::scheduler::SchedulerError),
    #[error("GitHub: {0}")]
    GitHub(String),
    #[error("cannot ask Nix about the local machine (is Nix installed?): {0}")]
    DetectNix(crate::scheduler::builders::DetectError),
    #[error("cannot create the scratch directory for child processes {path}: {source}")]
    Scratch { path: PathBuf, source: std::io::Error },
    #[error(
        "refusing to start: a GitHub App is configured, so strangers' pull requests will be built, but Nix's \
         `sandbox` setting is `{setting}`, so their builders would run on this host with the server's \
         access. Set `sandbox = true` in nix.conf (on NixOS: nix.settings.sandbox = true), or, for tests \
         and local demos only, security.allow_unsandboxed_builds = true in {origin}"
    )]
    UnsandboxedBuilds { setting: &'static str, origin: String },
    #[error("cannot make the web UI's session signing secret (reading /dev/urandom): {0}")]
    SessionSecret(std::io::Error),
}

impl DaemonError {
    /// Whether the operator's configuration (rather than the host) is what stopped the start: the
    /// server then exits with status 2, like for a configuration error.
    pub fn is_configuration(&self) -> bool {
        matches!(self, DaemonError::UnsandboxedBuilds { .. })
    }
}

/// What the start-up checks read and validated, handed on to [`run`] so that nothing is loaded twice.
#[derive(Debug)]
pub struct Startup {
    /// Every `[[github_apps]]` entry with its credentials loaded and its key validated, in file order.
    pub apps: Vec<crate::forge::github::app::GitHubApp>,
    /// The remote builders of `machines_file` (empty without one).
    pub machines: Vec<crate::scheduler::builders::BuilderSpec>,
    /// The `[[caches]]` with their credentials resolved.
    pub caches: Arc<crate::cache::Caches>,
}

/// Checks that need the whole configuration before anything is opened, and loads what they check
/// (GitHub App credentials, the machines file) once for [`run`]. Failures are configuration errors
/// (exit status 2).
pub fn check_startup(loaded: &LoadedConfig) -> Result<Startup, StartupError> {
    let security = &loaded.config.security;
    let has_secret = security.webhook_secret.as_ref().is_some_and(|s| !s.is_empty());
    if !has_secret && !security.allow_insecure_webhooks {
        let origin = match &loaded.source {
            Some(p) => p.display().to_string(),
            None => format!("{} (no config file was found)", crate::paths::default_config_file().display()),
        };
        return Err(StartupError::NoWebhookSecret { origin });
    }
    let machines = match &loaded.config.machines_file {
        Some(path) => read_machines(path)?,
        None => Vec::new(),
    };
    // Every GitHub App's credentials are loaded and its key validated now, so a missing file, a bad key
    // or a source that is not supported yet stops the start instead of the first webhook.
    let apps = crate::forge::github::app::load_all(&loaded.config, &|k| std::env::var(k).ok())
        .map_err(StartupError::GitHubApp)?;
    if !apps.is_empty() {
        tracing::info!(apps = apps.len(), "GitHub App credentials loaded");
    }
    // Cache credentials too: the variables they name are dropped from the environment after start-up.
    let caches = crate::cache::Caches::load(&loaded.config, &|k| std::env::var(k).ok())
        .map_err(StartupError::Cache)?;
    if !has_secret {
        tracing::warn!(
            "running without a webhook secret (allow_insecure_webhooks = true): never do this in production"
        );
    }
    Ok(Startup { apps, machines, caches: Arc::new(caches) })
}

/// The remote builders listed in a Nix machines file.
fn read_machines(path: &Path) -> Result<Vec<crate::scheduler::builders::BuilderSpec>, StartupError> {
    let fail = |message: String| StartupError::MachinesFile { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let native = crate::scheduler::builders::native_system();
    crate::scheduler::builders::parse_machines(&text, &native).map_err(|e| fail(e.to_string()))
}

/// Services started by the daemon receive this; it resolves when shutdown begins.
#[derive(Clone)]
pub struct ShutdownSignal(async_channel::Receiver<()>);

impl ShutdownSignal {
    /// Waits until shutdown begins.
    pub async fn wait(&self) {
        let _ = self.0.recv().await;
    }
}

/// Runs the daemon until SIGTERM or SIGINT, with what [`check_startup`] loaded. Blocks the calling
/// thread.
pub fn run(loaded: LoadedConfig, startup: Startup) -> Result<(), DaemonError> {
    seal::seal_server(&loaded.config)?;
    let ex = Rc::new(LocalExecutor::new());
    smol::block_on(ex.run(run_on(ex.clone(), loaded, startup)))
}

async fn run_on(
    ex: Rc<LocalExecutor<'static>>,
    loaded: LoadedConfig,
    startup: Startup,
) -> Result<(), DaemonError> {
    let Startup { apps, machines, caches } = startup;
    crate::supervise::init();
    let started = Instant::now();
    let config = loaded.config.clone();
    match &loaded.source {
        Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
        None => tracing::info!("no configuration file found; running on embedded defaults"),
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    for key in &loaded.not_acted_on {
        tracing::warn!("{}", key.warning());
    }
    // Before anything is opened: the local Nix, and whether its builds are sandboxed.
    let local = crate::scheduler::builders::detect_local().await.map_err(DaemonError::DetectNix)?;
    check_sandbox(&loaded, !apps.is_empty(), local.sandbox)?;
    let sandbox = local.sandbox;

    // Signals first, so a SIGTERM during start-up is not lost.
    let mut signals = async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
        .map_err(DaemonError::Signals)?;

    let logs_dir = config.logs_dir();
    std::fs::create_dir_all(&logs_dir)
        .map_err(|e| DaemonError::LogsDir { path: logs_dir.clone(), source: e })?;

    let db_path = config.db_path();
    let store = {
        let p = db_path.clone();
        smol::unblock(move || Store::open(&p)).await?
    };
    let (run_id, unclean) = {
        let s = store.clone();
        smol::unblock(move || s.begin_run(std::process::id())).await?
    };
    if let Some((id, run)) = unclean {
        tracing::warn!(
            run = id,
            pid = run.pid,
            started_at = run.started_at,
            "the previous server run did not shut down cleanly; recovering"
        );
    }

    let socket = ControlSocket::bind(&config.socket_path())?;
    let address = format!("{}:{}", config.web.address, config.web.port);
    let listener = match smol::net::TcpListener::bind(address.as_str()).await {
        Ok(l) => l,
        Err(e) => {
            socket.remove();
            return Err(DaemonError::Http { address, source: e });
        }
    };
    let http_address = listener.local_addr().map(|a| a.to_string()).unwrap_or(address);
    // The listeners of their own, if configured: bound now, so a taken port stops the start.
    let mut extra_listeners = Vec::new();
    for (kind, address) in
        [("metrics", &config.web.metrics_address), ("webhook", &config.web.webhook_address)]
    {
        let Some(address) = address else { continue };
        match smol::net::TcpListener::bind(address.as_str()).await {
            Ok(l) => {
                let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| address.clone());
                tracing::info!(listener = kind, address = %bound, "HTTP listener of its own");
                extra_listeners.push((kind, l));
            }
            Err(e) => {
                socket.remove();
                return Err(DaemonError::Http { address: address.clone(), source: e });
            }
        }
    }
    crate::metrics::global().start_time_seconds.set(crate::store::now_secs() as i64);
    tracing::info!(http = %http_address, socket = %socket.path().display(), db = %db_path.display(), "eka-ci-server {} ready", crate::VERSION);

    let (shutdown_tx, shutdown_rx) = async_channel::bounded::<()>(1);
    let shutdown = ShutdownSignal(shutdown_rx);

    let (pipeline, scheduler) = match start_pipeline(&ex, &config, &store, local, machines).await {
        Ok(started) => started,
        Err(e) => {
            socket.remove();
            return Err(e);
        }
    };
    let mut services: Vec<smol::Task<()>> = Vec::new();
    // Every long-running loop runs under `supervise`: a panic is logged, `/healthz` names the loop until
    // it runs again, and it restarts after a backoff.
    let (prune_store, prune_shutdown) = (store.clone(), shutdown.0.clone());
    let max_age = Duration::from_secs(config.change_summary.cache_max_age_seconds);
    let prune_every = Duration::from_secs(config.change_summary.prune_interval_seconds);
    services.push(ex.spawn(crate::supervise::supervise("summary-prune", shutdown.0.clone(), move || {
        let run =
            crate::summary::prune_loop(prune_store.clone(), max_age, prune_every, prune_shutdown.clone());
        async move {
            run.await;
            Ok::<(), std::convert::Infallible>(())
        }
    })));
    // The cache push loop: pushes what runs queued (also what a previous run left queued).
    let (push_store, push_caches, push_shutdown) = (store.clone(), caches.clone(), shutdown.0.clone());
    services.push(ex.spawn(crate::supervise::supervise("cache-push", shutdown.0.clone(), move || {
        let (store, caches, shutdown) = (push_store.clone(), push_caches.clone(), push_shutdown.clone());
        async move { caches.run(store, shutdown).await }
    })));
    // The GitHub service, when an App is configured: it consumes the webhook queue.
    let github = if apps.is_empty() {
        tracing::info!("no GitHub App configured: webhook events are queued but not handled");
        None
    } else {
        let service = crate::forge::github::service::GitHubService::new(
            ex.clone(),
            store.clone(),
            pipeline.clone(),
            scheduler.clone(),
            apps,
            caches.clone(),
            config.github.clone(),
            crate::forge::github::service::RunPolicy {
                approval: crate::forge::github::service::ApprovalPolicy {
                    pull_requests: config.require_approval,
                    merge_queue: config.merge_queue_require_approval,
                },
                skip_paths: config.rebuild.skip_paths.clone(),
                default_merge_method: config.default_merge_method,
                max_rebuild_count: Some(config.rebuild.max_rebuild_count),
                // With port 0 the bound address is the only one that works.
                public_url: config.web.public_url.clone().unwrap_or_else(|| format!("http://{http_address}")),
            },
        )
        .map_err(|e| DaemonError::GitHub(e.to_string()))?;
        let (wakers, task) = service.start(shutdown.0.clone());
        services.push(task);
        tracing::info!(api = %config.github.api_url, "GitHub service started");
        Some(wakers)
    };
    let retention = crate::retention::Retention {
        store: store.clone(),
        jobsets: pipeline.jobsets().clone(),
        checkouts: pipeline.checkouts().clone(),
        logs_dir: config.logs_dir(),
        gc_roots_dir: config.data_dir().join("gcroots"),
        config: config.retention.clone(),
    };
    services.push(ex.spawn(crate::retention::daily_loop(retention.clone(), shutdown.0.clone())));
    let status = Arc::new(requests::DaemonHandler {
        started,
        store: store.clone(),
        pipeline: pipeline.clone(),
        scheduler: scheduler.clone(),
        db_path: db_path.display().to_string(),
        socket_path: socket.path().display().to_string(),
        http_address: http_address.clone(),
        logs_dir: config.logs_dir(),
        approvals: github.as_ref().map(|w| w.approvals.clone()),
        github_wake: github.as_ref().map(|w| w.events.clone()),
        sandbox,
        retention,
    });
    let oauth = match (&config.oauth.client_id, &config.oauth.client_secret) {
        (Some(client_id), Some(client_secret)) => Some(crate::web::ui::login::OAuthApp {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            redirect_url: config.oauth_redirect_url(),
            web_url: crate::web::ui::login::oauth_web_url(&config.github.api_url),
            api_url: config.github.api_url.clone(),
        }),
        _ => None,
    };
    let signer = crate::web::ui::session::Signer::new(config.oauth.jwt_secret.as_ref())
        .map_err(DaemonError::SessionSecret)?;
    let web_state = crate::web::AppState {
        started,
        scheduler: scheduler.clone(),
        graph: pipeline.graph().clone(),
        jobsets: pipeline.jobsets().clone(),
        logs_dir: config.logs_dir(),
        webhook_secret: config.security.webhook_secret.clone(),
        store: store.clone(),
        github_wake: github.as_ref().map(|w| w.events.clone()),
        access: crate::web::auth::Access {
            public_read: config.web.public_read,
            metrics_public: config.web.metrics_public,
        },
        approvals: github.as_ref().map(|w| w.approvals.clone()),
        github_api: github.as_ref().map(|_| config.github.api_url.clone()),
        intake: crate::web::IntakeWriter::spawn(&ex, store.clone()),
        github_web: format!("https://{}", config.github.git_host()),
        ui: std::sync::Arc::new(crate::web::ui::login::UiAuth::new(oauth, signer, config.web.admins.clone())),
    };
    let split = crate::web::Split {
        metrics: config.web.metrics_address.is_some(),
        webhook: config.web.webhook_address.is_some(),
    };
    let http_app = crate::web::app(web_state.clone(), split);
    // One connection count for every listener.
    let gate = crate::web::conn::Gate::new(crate::web::conn::Limits::from_config(&config.web));
    // Accept loops: dropped (and so cancelled) when shutdown begins, which stops accepting new work.
    let mut accept_tasks = vec![
        ex.spawn(crate::web::serve(
            ex.clone(),
            listener,
            http_app,
            gate.clone(),
            crate::web::conn::Listener::General,
        )),
        ex.spawn(accept_control(ex.clone(), socket_listener(&socket), status)),
        // `job_stats_update` for WebSocket clients following jobsets.
        ex.spawn(crate::web::ws_stats::run(web_state.clone())),
    ];
    for (kind, l) in extra_listeners {
        let (app, listener_kind) = match kind {
            "metrics" => (crate::web::metrics_app(web_state.clone()), crate::web::conn::Listener::General),
            _ => (crate::web::webhook_app(web_state.clone()), crate::web::conn::Listener::Webhook),
        };
        accept_tasks.push(ex.spawn(crate::web::serve(ex.clone(), l, app, gate.clone(), listener_kind)));
    }
    // Long-running services (the GitHub service and friends) are in `services` and finish within
    // SHUTDOWN_GRACE.

    let signal = signals.next().await;
    tracing::info!(signal = ?signal.and_then(Result::ok), "shutting down: no longer accepting work");
    drop(accept_tasks);
    shutdown_tx.close();
    finish_within(SHUTDOWN_GRACE, services).await;
    // Running builds may finish within the grace period; what still runs then is killed, stays
    // `Building` in the store, and is requeued (or found built) at the next start, as after a crash.
    drain_builds(&scheduler, SHUTDOWN_GRACE).await;
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "stopping the scheduler failed");
    }

    let s = store.clone();
    smol::unblock(move || s.end_run(run_id)).await?;
    socket.remove();
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Opens what the pipeline needs: the derivation graph, the git mirrors (pruning worktrees a previous run
/// left behind), the evaluator's settings, and the scheduler with the builders of the configuration and
/// of the machines file (`machines`, as read at start-up).
async fn start_pipeline(
    ex: &Rc<LocalExecutor<'static>>,
    config: &ServerConfig,
    store: &Store,
    local: crate::scheduler::builders::LocalNix,
    machines: Vec<crate::scheduler::builders::BuilderSpec>,
) -> Result<(Arc<Pipeline>, SchedulerHandle), DaemonError> {
    let data_dir = config.data_dir();
    let graph = {
        let (store, capacity) = (store.clone(), config.graph_lru_capacity);
        smol::unblock(move || Graph::open(store, capacity)).await?
    };
    let checkouts =
        Checkouts::with_timeout(&data_dir, std::time::Duration::from_secs(config.git.timeout_seconds));
    checkouts.set_spare_worktrees(usize::try_from(config.git.spare_worktrees).unwrap_or(0));
    match checkouts.prune_stale().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(worktrees = n, "removed worktrees left by a previous run"),
        Err(e) => tracing::warn!(error = %e, "pruning stale worktrees failed"),
    }
    let e = &config.evaluation;
    let mut eval_options = EvalOptions::new(data_dir.join("gcroots"));
    if e.workers > 0 {
        eval_options.workers = e.workers as usize;
    }
    eval_options.max_memory_mib = e.max_memory_mib;
    eval_options.timeout = Duration::from_secs(e.timeout_seconds);
    eval_options.batch_size = e.batch_size as usize;
    eval_options.force_recurse = e.force_recurse;
    eval_options.restrict_eval = e.restrict_eval;
    eval_options.allowed_uris = e.allowed_uris.clone();
    if !e.restrict_eval {
        tracing::warn!(
            "evaluation is unrestricted ([evaluation] restrict_eval = false): a pull request's Nix code can \
             read any file the server can read; see docs/security.md"
        );
    }
    eval_options.backend = match e.backend {
        EvalBackendSetting::Auto => EvalBackend::Auto,
        EvalBackendSetting::Builtin => EvalBackend::Builtin,
        EvalBackendSetting::NixEvalJobs => EvalBackend::NixEvalJobs,
    };
    let concurrent = e.concurrent as usize;
    tracing::info!(systems = ?local.systems, features = ?local.features, sandbox = local.sandbox.as_str(), "local Nix builder");
    let mut scheduler_config = SchedulerConfig::from_server(config, local);
    if let Some(path) = &config.machines_file {
        tracing::info!(machines = machines.len(), file = %path.display(), "remote builders from the machines file");
        scheduler_config.remote_builders.extend(machines);
    }
    let scheduler = crate::scheduler::start(ex, graph.clone(), scheduler_config).await?;
    let logs_dir = config.logs_dir();
    let pipeline = Pipeline::new(
        Jobsets::new(store.clone()),
        checkouts,
        graph,
        eval_options,
        &data_dir,
        &logs_dir,
        concurrent,
    );
    pipeline.set_repo_limits(crate::config::repo::RepoLimits::from_server(config));
    pipeline.set_check_limits(crate::checks::Limits::from_server(&config.checks).with_cgroups());
    pipeline.clean_check_scratch().await;
    Ok((pipeline, scheduler))
}

/// Refuses to start when a forge is configured (so strangers' pull requests will be built) and Nix's
/// builds are not fully sandboxed, unless the operator set `security.allow_unsandboxed_builds`; then,
/// and without a forge, an unsandboxed Nix is only logged.
fn check_sandbox(
    loaded: &LoadedConfig,
    forge: bool,
    sandbox: crate::nix::local::Sandbox,
) -> Result<(), DaemonError> {
    if sandbox.isolates_every_build() {
        return Ok(());
    }
    let setting = sandbox.as_str();
    if forge && !loaded.config.security.allow_unsandboxed_builds {
        let origin = match &loaded.source {
            Some(p) => p.display().to_string(),
            None => crate::paths::default_config_file().display().to_string(),
        };
        return Err(DaemonError::UnsandboxedBuilds { setting, origin });
    }
    if forge {
        tracing::warn!(
            sandbox = setting,
            "builds are NOT sandboxed and a GitHub App is configured (security.allow_unsandboxed_builds = \
             true): a pull request's builders run on this host; see docs/security.md"
        );
    } else {
        tracing::info!(sandbox = setting, "builds are not sandboxed by Nix (no forge is configured)");
    }
    Ok(())
}

fn socket_listener(socket: &ControlSocket) -> smol::net::unix::UnixListener {
    socket.listener.clone()
}

/// Lets running builds finish, for at most `grace`.
async fn drain_builds(scheduler: &SchedulerHandle, grace: Duration) {
    let deadline = Instant::now() + grace;
    if let Err(e) = scheduler.drain().await {
        tracing::warn!(error = %e, "the scheduler did not stop dispatching");
    }
    loop {
        match scheduler.active().await {
            Ok(active) if active.is_empty() => return,
            Ok(active) if Instant::now() >= deadline => {
                tracing::warn!(
                    builds = active.len(),
                    "builds still running after the grace period are killed"
                );
                return;
            }
            Ok(active) => tracing::info!(builds = active.len(), "waiting for running builds to finish"),
            Err(_) => return,
        }
        smol::Timer::after(Duration::from_millis(250)).await;
    }
}

/// Waits for every task, but no longer than `grace`; tasks still running then are cancelled.
async fn finish_within(grace: Duration, tasks: Vec<smol::Task<()>>) {
    let all = async {
        for t in tasks {
            t.await;
        }
        true
    };
    let timeout = async {
        smol::Timer::after(grace).await;
        false
    };
    if !futures_lite::future::or(all, timeout).await {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "work still running after the grace period was abandoned"
        );
    }
}

async fn accept_control<H: Handler>(
    ex: Rc<LocalExecutor<'static>>,
    listener: smol::net::unix::UnixListener,
    handler: Arc<H>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                crate::metrics::global().control_connections.inc();
                ex.spawn(crate::control::server::serve_connection(stream, handler.clone())).detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a control connection failed");
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The configuration values the daemon derived, for `--check-config`: the resolved paths, the HTTP
/// address, and one `remote_builder = …` line per remote builder (`[[remote_builders]]`, then
/// `machines`, the machines file's), as the scheduler will see it.
pub fn describe(config: &ServerConfig, machines: &[crate::scheduler::builders::BuilderSpec]) -> String {
    let mut out = format!(
        "db_path = {}\nlogs_dir = {}\nsocket_path = {}\nhttp = {}:{}\n",
        config.db_path().display(),
        config.logs_dir().display(),
        config.socket_path().display(),
        config.web.address,
        config.web.port
    );
    let remotes = config.remote_builders.iter().map(crate::scheduler::builders::BuilderSpec::remote);
    for b in remotes.chain(machines.iter().cloned()) {
        let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(",") };
        let key = match &b.kind {
            crate::scheduler::builders::BuilderKind::Remote { ssh_key: Some(k), .. } => {
                k.display().to_string()
            }
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "remote_builder = {} systems={} ssh_key={} max_jobs={} speed_factor={} supported_features={} mandatory_features={}\n",
            b.name,
            list(&b.systems),
            key,
            b.max_jobs,
            b.speed_factor,
            list(&b.supported_features),
            list(&b.mandatory_features)
        ));
    }
    out
}
