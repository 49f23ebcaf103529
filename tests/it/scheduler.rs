//! The build scheduler (`eka_ci::scheduler`) against real Nix and a real redb file: dependency order,
//! parallelism, failures and their propagation, the automatic retry, time limits (with the builders' processes
//! really gone), cancellation, rebuilds, already-valid outputs, derivations no builder can take, and recovery
//! after the scheduler is dropped mid-build. Every fixture carries a random nonce so its outputs are new.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use eka_ci::graph::Graph;
use eka_ci::jobset::JobsetId;
use eka_ci::scheduler::builders::native_system;
use eka_ci::scheduler::{
    self, Completion, DrvState, DrvStatus, InterruptKind, OwnerStatus, SchedulerConfig, SchedulerError,
    SchedulerHandle,
};
use eka_ci::store::{Store, StoreError};
use smol::LocalExecutor;

const NIX_CONFIG: &str = "substituters =";

struct Fixture {
    dir: tempfile::TempDir,
    nonce: String,
}

impl Fixture {
    fn new() -> Fixture {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        // Builders may run as Nix build users: they reach `rw/` (markers, pid files) and nothing else.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::create_dir(dir.path().join("rw")).expect("rw dir");
        std::fs::set_permissions(dir.path().join("rw"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        Fixture { dir, nonce: format!("{:x}{:x}", t, std::process::id()) }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn db(&self) -> PathBuf {
        self.path().join("db/ekaci.redb")
    }

    /// A file path in the fixture's directory (markers, pid files), as builders see it.
    fn file(&self, name: &str) -> String {
        self.path().join("rw").join(name).display().to_string()
    }

    /// Instantiates `names` of a `let` block (`bindings`, with `mk name script attrs` in scope) and returns
    /// their .drv paths in order.
    fn drvs(&self, bindings: &str, names: &[&str]) -> Vec<String> {
        let expr = format!(
            r#"let
  nonce = "{nonce}";
  mk = name: script: attrs: derivation ({{
    name = "${{name}}-${{nonce}}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  }} // attrs);
{bindings}
in [ {list} ]
"#,
            nonce = self.nonce,
            list = names.join(" ")
        );
        let file = self.path().join(format!("e{}.nix", names.join("-")));
        std::fs::write(&file, expr).expect("write expression");
        let roots = self.path().join("gcroots");
        std::fs::create_dir_all(&roots).expect("roots dir");
        let out = std::process::Command::new("nix-instantiate")
            .env("NIX_CONFIG", NIX_CONFIG)
            .arg("--add-root")
            .arg(roots.join(names.join("-")))
            .arg(&file)
            .output()
            .expect("run nix-instantiate");
        assert!(out.status.success(), "nix-instantiate: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| std::fs::read_link(l).expect("root symlink").display().to_string())
            .collect()
    }

    fn config(&self) -> SchedulerConfig {
        let mut c = SchedulerConfig::local(
            vec![native_system()],
            vec!["benchmark".into(), "big-parallel".into()],
            self.path().join("logs"),
        );
        c.local_max_jobs = 2;
        c.retry_backoff = Duration::from_millis(200);
        c
    }

    /// Opens the store (retrying while a dropped scheduler's last blocking task still holds it).
    fn graph(&self) -> Graph {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Store::open(&self.db()) {
                Ok(store) => return Graph::open(store, 10_000).expect("open graph"),
                Err(StoreError::AlreadyOpen { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("open store: {e}"),
            }
        }
    }
}

fn with_executor<F, Fut, T>(f: F) -> T
where
    F: FnOnce(Rc<LocalExecutor<'static>>) -> Fut,
    Fut: Future<Output = T>,
{
    let ex = Rc::new(LocalExecutor::new());
    smol::block_on(ex.run(f(ex.clone())))
}

async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    futures_lite::future::or(f, async {
        smol::Timer::after(Duration::from_secs(secs)).await;
        panic!("timed out after {secs} s: {what}")
    })
    .await
}

async fn start(
    ex: &Rc<LocalExecutor<'static>>,
    graph: &Graph,
    cfg: SchedulerConfig,
    roots: &[String],
) -> SchedulerHandle {
    let stats = graph.discover(roots).await.expect("discover");
    assert!(stats.failed.is_empty(), "discovery failed: {:?}", stats.failed);
    scheduler::start(ex, graph.clone(), cfg).await.expect("start scheduler")
}

async fn status(h: &SchedulerHandle, drv: &str) -> DrvStatus {
    h.state(drv).await.expect("state").unwrap_or_else(|| panic!("{drv} has no state"))
}

async fn state(h: &SchedulerHandle, drv: &str) -> DrvState {
    status(h, drv).await.state
}

/// Polls until `drv` is in a state matching `pred`.
async fn until(h: &SchedulerHandle, drv: &str, secs: u64, pred: impl Fn(&DrvState) -> bool) -> DrvStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = h.state(drv).await.expect("state") {
            if pred(&s.state) {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "{drv} did not reach the expected state in {secs} s");
        smol::Timer::after(Duration::from_millis(50)).await;
    }
}

/// When `drv` first entered a state matching `pred` (history, ms).
fn entered(s: &DrvStatus, pred: impl Fn(&DrvState) -> bool) -> u64 {
    s.history
        .iter()
        .find(|e| pred(&e.state))
        .map(|e| e.at_ms)
        .unwrap_or_else(|| panic!("never entered: {s:#?}"))
}

fn is_success(s: &DrvState) -> bool {
    *s == DrvState::Completed(Completion::Success)
}

fn is_building(s: &DrvState) -> bool {
    *s == DrvState::Building
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pidfile: &str) {
    let pid: u32 = std::fs::read_to_string(pidfile).expect("pid file").trim().parse().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "builder process {pid} is still running");
        smol::Timer::after(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_chain_builds_bottom_up_and_records_its_history() {
    let fx = Fixture::new();
    let d = fx.drvs(
        r#"  a = mk "chain-a" "echo a > $out" { };
  b = mk "chain-b" "echo b > $out" { inherit a; };
  c = mk "chain-c" "echo c > $out" { inherit b fod; };
  fod = derivation {
    name = "chain-fod-${nonce}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo -n hi > $out" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4";
  };"#,
        &["a", "b", "c", "fod"],
    );
    let graph = fx.graph();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, fx.config(), &d[2..]).await;
        h.request(JobsetId(1), vec![d[2].clone()]).await.expect("request");
        let outcome = within(60, "chain", h.wait(JobsetId(1))).await.expect("wait");
        assert_eq!(outcome.status, OwnerStatus::Completed);
        assert_eq!(outcome.roots.len(), 1);
        assert_eq!(outcome.roots[0].state, Some(DrvState::Completed(Completion::Success)));
        let fod = status(&h, &d[3]).await;
        assert!(is_success(&fod.state), "{fod:#?}");
        assert_eq!(fod.attempts[0].builder, "fixed-output", "fixed-output derivations have their own pool");
        let mut previous_success = 0;
        for drv in &d[..3] {
            let s = status(&h, drv).await;
            assert!(is_success(&s.state), "{drv}: {:?}", s.state);
            assert_eq!(s.attempt, 1);
            assert_eq!(s.attempts.len(), 1);
            assert_eq!(s.attempts[0].builder, "local");
            assert!(s.attempts[0].ended_at_ms.is_some());
            let queued = entered(&s, |x| *x == DrvState::Queued);
            let building = entered(&s, is_building);
            let success = entered(&s, is_success);
            assert!(queued <= building && building <= success, "{s:#?}");
            assert!(previous_success <= building, "{drv} started before its input finished");
            previous_success = success;
            // The log file the runner wrote for the attempt is recorded.
            let log = s.attempts[0].log.clone().expect("log path");
            assert!(log.ends_with("/1.log"), "{log}");
        }
        assert!(h.active().await.expect("active").is_empty());
        let depths = h.depths().await.expect("depths");
        assert!(depths.iter().all(|q| q.queued + q.buildable + q.building == 0), "{depths:?}");
        let metrics = eka_ci::metrics::render();
        assert!(metrics.contains("eka_ci_build_outcome_total{outcome=\"success\"}"), "{metrics}");
        assert!(metrics.contains("eka_ci_build_duration_seconds_count"), "{metrics}");
        assert!(metrics.contains("eka_ci_build_queue_depth{platform="), "{metrics}");
        assert!(metrics.contains("eka_ci_active_builds{platform="), "{metrics}");
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn independent_builds_overlap() {
    let fx = Fixture::new();
    let d = fx.drvs(
        r#"  p = mk "par-p" "/bin/sleep 1; echo p > $out" { };
  q = mk "par-q" "/bin/sleep 1; echo q > $out" { };"#,
        &["p", "q"],
    );
    let graph = fx.graph();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, fx.config(), &d).await;
        h.request(JobsetId(1), d.clone()).await.expect("request");
        within(60, "parallel builds", h.wait(JobsetId(1))).await.expect("wait");
        let p = status(&h, &d[0]).await;
        let q = status(&h, &d[1]).await;
        let (p0, p1) = (entered(&p, is_building), entered(&p, is_success));
        let (q0, q1) = (entered(&q, is_building), entered(&q, is_success));
        assert!(p1 - p0 >= 900 && q1 - q0 >= 900, "each build takes a second: {p0}..{p1}, {q0}..{q1}");
        assert!(p0.max(q0) < p1.min(q1), "the Building intervals must overlap: {p0}..{p1}, {q0}..{q1}");
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn the_longest_chain_is_built_first() {
    let fx = Fixture::new();
    let d = fx.drvs(
        r#"  l1 = mk "prio-l1" "echo > $out" { };
  l2 = mk "prio-l2" "echo > $out" { };
  l3 = mk "prio-l3" "echo > $out" { };
  c1 = mk "prio-c1" "echo > $out" { };
  c2 = mk "prio-c2" "echo > $out" { inherit c1; };
  c3 = mk "prio-c3" "echo > $out" { inherit c2; };
  c4 = mk "prio-c4" "echo > $out" { inherit c3; };
  late = mk "prio-late" "echo > $out" { };"#,
        &["l1", "l2", "l3", "c1", "c2", "c3", "c4", "late"],
    );
    let graph = fx.graph();
    let mut cfg = fx.config();
    cfg.local_max_jobs = 1;
    cfg.seed_cap = 1;
    with_executor(|ex| async move {
        let h = start(&ex, &graph, cfg, &d).await;
        h.request(JobsetId(1), vec![d[0].clone(), d[1].clone(), d[2].clone(), d[6].clone()])
            .await
            .expect("request");
        within(60, "priority", h.wait(JobsetId(1))).await.expect("wait");
        let chain_done = entered(&status(&h, &d[6]).await, is_success);
        for leaf in &d[..3] {
            let started = entered(&status(&h, leaf).await, is_building);
            assert!(chain_done <= started, "{leaf} started before the critical chain was done");
        }
        // Drained: requests are persisted but nothing new starts.
        h.drain().await.expect("drain");
        h.request(JobsetId(2), vec![d[7].clone()]).await.expect("request while drained");
        smol::Timer::after(Duration::from_millis(700)).await;
        assert_eq!(state(&h, &d[7]).await, DrvState::Buildable);
        assert!(h.active().await.expect("active").is_empty());
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_failure_is_retried_once_then_fails_its_dependents_transitively() {
    let fx = Fixture::new();
    let d = fx.drvs(
        r#"  f = mk "fail-f" "echo broken >&2; exit 3" { };
  d1 = mk "fail-d1" "echo > $out" { inherit f; };
  d2 = mk "fail-d2" "echo > $out" { inherit d1; };
  ok = mk "fail-ok" "echo > $out" { };"#,
        &["f", "d1", "d2", "ok"],
    );
    let graph = fx.graph();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, fx.config(), &d).await;
        h.request(JobsetId(1), vec![d[2].clone(), d[3].clone()]).await.expect("request");
        let outcome = within(60, "failure", h.wait(JobsetId(1))).await.expect("wait");
        let f = status(&h, &d[0]).await;
        match &f.state {
            DrvState::Completed(Completion::Failure { message, exit_code }) => {
                assert_eq!(*exit_code, Some(3), "{message}");
                assert!(message.contains("exit code 3"), "{message}");
            }
            other => panic!("f: {other:?}"),
        }
        assert_eq!(f.attempt, 2, "one automatic retry");
        assert!(f.history.iter().any(|e| matches!(e.state, DrvState::FailedRetry { .. })), "{f:#?}");
        let failed_at = entered(&f, |s| matches!(s, DrvState::FailedRetry { .. }));
        let retried_at = f.attempts[1].started_at_ms;
        assert!(retried_at >= failed_at + 200, "the retry waits for the backoff");
        for dep in &d[1..3] {
            assert_eq!(
                state(&h, dep).await,
                DrvState::TransitiveFailure { dependency: d[0].clone() },
                "{dep}"
            );
            assert_eq!(status(&h, dep).await.attempt, 0, "never built");
        }
        assert!(is_success(&state(&h, &d[3]).await));
        assert_eq!(outcome.roots[0].state, Some(DrvState::TransitiveFailure { dependency: d[0].clone() }));
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_build_failing_only_once_succeeds_on_retry() {
    let fx = Fixture::new();
    let marker = fx.file("retry-marker");
    let d = fx.drvs(
        &format!(
            r#"  r = mk "retry-r" "if [ -e \"$marker\" ]; then echo ok > $out; else echo > \"$marker\"; exit 1; fi" {{ marker = "{marker}"; }};
  top = mk "retry-top" "echo > $out" {{ inherit r; }};"#
        ),
        &["r", "top"],
    );
    let graph = fx.graph();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, fx.config(), &d).await;
        h.request(JobsetId(1), vec![d[1].clone()]).await.expect("request");
        within(60, "retry", h.wait(JobsetId(1))).await.expect("wait");
        let r = status(&h, &d[0]).await;
        assert!(is_success(&r.state), "{r:#?}");
        assert_eq!(r.attempt, 2);
        assert_eq!(r.attempts[0].outcome.as_deref(), Some("failed-retry"));
        assert_eq!(r.attempts[1].outcome.as_deref(), Some("success"));
        assert!(is_success(&state(&h, &d[1]).await));
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn silent_and_overlong_builds_are_killed() {
    let fx = Fixture::new();
    let (silent_pid, long_pid) = (fx.file("silent.pid"), fx.file("long.pid"));
    let d = fx.drvs(
        &format!(
            r#"  silent = mk "limit-silent" "echo $$ > {silent_pid}; exec /bin/sleep 60" {{ }};
  long = mk "limit-long" "echo $$ > {long_pid}; while :; do echo tick; /bin/sleep 0.3; done" {{ }};
  after = mk "limit-after" "echo > $out" {{ inherit silent; }};"#
        ),
        &["silent", "long", "after"],
    );
    let graph = fx.graph();
    let mut cfg = fx.config();
    cfg.max_silent = Duration::from_secs(2);
    cfg.max_duration = Duration::from_secs(4);
    with_executor(|ex| async move {
        let h = start(&ex, &graph, cfg, &d).await;
        h.request(JobsetId(1), vec![d[1].clone(), d[2].clone()]).await.expect("request");
        until(&h, &d[1], 30, is_building).await;
        let active = h.active().await.expect("active");
        assert!(active.iter().any(|a| a.drv == d[1] && a.builder == "local" && a.attempt == 1), "{active:?}");
        let depths = h.depths().await.expect("depths");
        assert!(depths.iter().any(|q| q.building >= 1), "{depths:?}");
        within(60, "time limits", h.wait(JobsetId(1))).await.expect("wait");
        match state(&h, &d[0]).await {
            DrvState::Interrupted { kind: InterruptKind::Timeout, reason } => {
                assert!(reason.contains("2 s"), "{reason}")
            }
            other => panic!("silent: {other:?}"),
        }
        match state(&h, &d[1]).await {
            DrvState::Interrupted { kind: InterruptKind::MaxDuration, reason } => {
                assert!(reason.contains("4 s"), "{reason}")
            }
            other => panic!("long: {other:?}"),
        }
        assert_eq!(state(&h, &d[2]).await, DrvState::Blocked { dependency: d[0].clone() });
        wait_gone(&silent_pid).await;
        wait_gone(&long_pid).await;
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn cancel_drops_pending_work_keeps_shared_builds_and_kills_unneeded_batches() {
    let fx = Fixture::new();
    let slow_pid = fx.file("slow.pid");
    let d = fx.drvs(
        &format!(
            r#"  shared = mk "cancel-shared" "/bin/sleep 2; echo > $out" {{ }};
  btop = mk "cancel-btop" "echo > $out" {{ inherit shared; }};
  aleaf = mk "cancel-aleaf" "echo > $out" {{ }};
  atop = mk "cancel-atop" "echo > $out" {{ inherit shared aleaf; }};
  slow = mk "cancel-slow" "echo $$ > {slow_pid}; exec /bin/sleep 60" {{ }};"#
        ),
        &["shared", "btop", "aleaf", "atop", "slow"],
    );
    let graph = fx.graph();
    let mut cfg = fx.config();
    cfg.local_max_jobs = 1; // one build at a time: A's work stays pending while `shared` builds
    with_executor(|ex| async move {
        let h = start(&ex, &graph, cfg, &d).await;
        let (shared, btop, aleaf, atop, slow) = (&d[0], &d[1], &d[2], &d[3], &d[4]);
        h.request(JobsetId(2), vec![btop.clone()]).await.expect("request B");
        until(&h, shared, 30, is_building).await;
        h.request(JobsetId(1), vec![atop.clone()]).await.expect("request A");
        assert_eq!(state(&h, aleaf).await, DrvState::Buildable);
        h.cancel(JobsetId(1)).await.expect("cancel A");
        let a = within(10, "cancelled owner", h.wait(JobsetId(1))).await.expect("wait A");
        assert_eq!(a.status, OwnerStatus::Cancelled);
        for drv in [aleaf, atop] {
            let s = status(&h, drv).await;
            assert!(
                matches!(&s.state, DrvState::Interrupted { kind: InterruptKind::Cancelled, .. }),
                "{drv}: {:?}",
                s.state
            );
            assert!(s.attempts.is_empty(), "{drv} was never built");
        }
        let b = within(60, "owner B", h.wait(JobsetId(2))).await.expect("wait B");
        assert_eq!(b.status, OwnerStatus::Completed);
        assert!(is_success(&state(&h, shared).await), "the shared derivation kept building");
        assert!(is_success(&state(&h, btop).await));

        // A batch that only a cancelled owner needs is killed, its builder with it.
        h.request(JobsetId(3), vec![slow.clone()]).await.expect("request C");
        until(&h, slow, 30, is_building).await;
        let t0 = Instant::now();
        h.cancel(JobsetId(3)).await.expect("cancel C");
        let s = until(&h, slow, 30, |s| s.is_terminal()).await;
        assert!(
            matches!(&s.state, DrvState::Interrupted { kind: InterruptKind::Cancelled, .. }),
            "{:?}",
            s.state
        );
        assert!(t0.elapsed() < Duration::from_secs(15), "the kill took {:?}", t0.elapsed());
        wait_gone(&slow_pid).await;
        // A new request starts a cancelled derivation over.
        h.request(JobsetId(4), vec![aleaf.clone()]).await.expect("request again");
        within(60, "again", h.wait(JobsetId(4))).await.expect("wait");
        assert!(is_success(&state(&h, aleaf).await));
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_rebuild_after_a_fix_requeues_the_transitive_failures() {
    let fx = Fixture::new();
    let marker = fx.file("fixed");
    let d = fx.drvs(
        &format!(
            r#"  f = mk "fix-f" "if [ -e \"$marker\" ]; then echo > $out; else echo missing >&2; exit 1; fi" {{ marker = "{marker}"; }};
  g = mk "fix-g" "echo > $out" {{ inherit f; }};
  h = mk "fix-h" "echo > $out" {{ inherit g; }};"#
        ),
        &["f", "g", "h"],
    );
    let graph = fx.graph();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, fx.config(), &d).await;
        h.request(JobsetId(1), vec![d[2].clone()]).await.expect("request");
        within(60, "failure", h.wait(JobsetId(1))).await.expect("wait");
        assert!(matches!(state(&h, &d[0]).await, DrvState::Completed(Completion::Failure { .. })));
        assert_eq!(state(&h, &d[2]).await, DrvState::TransitiveFailure { dependency: d[0].clone() });
        // Only final derivations can be rebuilt; unknown ones are refused with their path.
        let err =
            h.rebuild("/nix/store/00000000000000000000000000000000-nope.drv").await.expect_err("unknown");
        assert!(matches!(err, SchedulerError::UnknownDerivation { .. }), "{err}");

        std::fs::write(&marker, "").expect("fix");
        let owner = h.rebuild(&d[0]).await.expect("rebuild");
        let outcome = within(60, "rebuild", h.wait(owner)).await.expect("wait rebuild");
        assert_eq!(outcome.status, OwnerStatus::Completed);
        let f = status(&h, &d[0]).await;
        assert!(is_success(&f.state), "{f:#?}");
        assert_eq!(f.attempt, 3, "attempt numbering continues");
        for drv in &d[1..] {
            let s = status(&h, drv).await;
            assert!(is_success(&s.state), "{drv}: {s:#?}");
            let failed = entered(&s, |x| matches!(x, DrvState::TransitiveFailure { .. }));
            let requeued = s
                .history
                .iter()
                .find(|e| e.state == DrvState::Queued && e.at_ms >= failed && e.note.contains("rebuilt"))
                .expect("requeued after the rebuild");
            assert!(requeued.at_ms >= entered(&f, is_success));
        }
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn valid_outputs_are_cached_without_building_their_closure() {
    let fx = Fixture::new();
    let d = fx.drvs(
        r#"  x = mk "cached-x" "echo > $out" { };
  y = mk "cached-y" "echo > $out" { inherit x; };
  z = mk "cached-z" "echo > $out" { inherit y; };"#,
        &["x", "y", "z"],
    );
    // Build y (and x) outside the scheduler.
    let out = std::process::Command::new("nix-store")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--realise", &d[1]])
        .output()
        .expect("nix-store");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let graph = fx.graph();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, fx.config(), &d).await;
        let spawned = eka_ci::nix::build::nix_processes_spawned();
        h.request(JobsetId(1), vec![d[1].clone()]).await.expect("request");
        assert_eq!(
            eka_ci::nix::build::nix_processes_spawned() - spawned,
            1,
            "one validity check for the whole request, no build"
        );
        let o = within(10, "cached", h.wait(JobsetId(1))).await.expect("wait");
        assert_eq!(o.roots[0].state, Some(DrvState::Cached));
        let y = status(&h, &d[1]).await;
        assert!(y.attempts.is_empty());
        assert_eq!(
            h.state(&d[0]).await.expect("state"),
            None,
            "the closure of a valid derivation is not looked at"
        );
        // A new owner asking for more: z builds, y stays cached.
        h.request(JobsetId(2), vec![d[2].clone(), d[1].clone()]).await.expect("request 2");
        within(60, "z", h.wait(JobsetId(2))).await.expect("wait 2");
        assert!(is_success(&state(&h, &d[2]).await));
        assert_eq!(state(&h, &d[1]).await, DrvState::Cached);
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_derivation_no_builder_can_take_is_interrupted_and_blocks_its_dependents() {
    let fx = Fixture::new();
    let d = fx.drvs(
        r#"  kvm = mk "nobuilder-kvm" "echo > $out" { requiredSystemFeatures = [ "eka-ci-test-feature" ]; };
  arm = mk "nobuilder-arm" "echo > $out" { system = "aarch64-linux"; };
  top = mk "nobuilder-top" "echo > $out" { inherit kvm; };
  fine = mk "nobuilder-fine" "echo > $out" { };"#,
        &["kvm", "arm", "top", "fine"],
    );
    let graph = fx.graph();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, fx.config(), &d).await;
        h.request(JobsetId(1), vec![d[1].clone(), d[2].clone(), d[3].clone()]).await.expect("request");
        within(60, "no builder", h.wait(JobsetId(1))).await.expect("wait");
        let system = native_system();
        assert_eq!(
            state(&h, &d[0]).await,
            DrvState::Interrupted {
                kind: InterruptKind::NoBuilder,
                reason: format!(
                    "requires system {system} and features eka-ci-test-feature; no builder offers them"
                ),
            }
        );
        assert_eq!(
            state(&h, &d[1]).await,
            DrvState::Interrupted {
                kind: InterruptKind::NoBuilder,
                reason: "requires system aarch64-linux; no builder offers it".into(),
            }
        );
        assert_eq!(state(&h, &d[2]).await, DrvState::Blocked { dependency: d[0].clone() });
        assert!(is_success(&state(&h, &d[3]).await));
        h.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_scheduler_dropped_mid_build_resumes_to_the_same_final_states() {
    let fx = Fixture::new();
    let pid = fx.file("b.pid");
    let d = fx.drvs(
        &format!(
            r#"  a = mk "crash-a" "echo > $out" {{ }};
  b = mk "crash-b" "echo $$ > {pid}; /bin/sleep 3; echo > $out" {{ inherit a; }};
  c = mk "crash-c" "echo > $out" {{ inherit b; }};
  e = mk "crash-e" "echo > $out" {{ }};"#
        ),
        &["a", "b", "c", "e"],
    );
    let roots = vec![d[2].clone(), d[3].clone()];
    {
        let graph = fx.graph();
        let ex = Rc::new(LocalExecutor::new());
        let (d2, roots2, cfg) = (d.clone(), roots.clone(), fx.config());
        smol::block_on(ex.run({
            let ex = ex.clone();
            async move {
                let h = start(&ex, &graph, cfg, &roots2).await;
                h.request(JobsetId(7), roots2).await.expect("request");
                until(&h, &d2[1], 30, is_building).await;
                // Dropped here, with `b` building: no shutdown, no more writes.
            }
        }));
        drop(ex); // drops the loop and the batch: the Nix child and its builder are killed
    }
    with_executor(|ex| async move {
        wait_gone(&pid).await;
        let graph = fx.graph();
        let h = start(&ex, &graph, fx.config(), &roots).await;
        let outcome = within(60, "resumed owner", h.wait(JobsetId(7))).await.expect("wait");
        assert_eq!(outcome.status, OwnerStatus::Completed);
        for drv in &d {
            assert!(is_success(&state(&h, drv).await), "{drv}");
        }
        let b = status(&h, &d[1]).await;
        assert_eq!(b.attempt, 2, "{b:#?}");
        assert_eq!(b.attempts[0].outcome.as_deref(), Some("abandoned (server restarted)"));
        assert!(b.history.iter().any(|e| e.note == "server restarted during the build"), "{b:#?}");
        assert_eq!(status(&h, &d[0]).await.attempt, 1, "finished work is not redone");
        h.shutdown().await.expect("shutdown");
    });
}

/// Run in a process of its own by [`a_transient_host_error_is_retried_and_never_recorded_as_a_failure`]:
/// it fills its own file-descriptor table, so it must not share a process with other tests.
#[test]
#[ignore = "run in a process of its own by a_transient_host_error_is_retried_and_never_recorded_as_a_failure"]
fn transient_host_error_child() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // A small table, so filling it is quick.
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(512), maximum: limit.maximum }).expect("setrlimit");
    let fx = Fixture::new();
    let d = fx.drvs(r#"  t = mk "transient-t" "echo t > $out" { };"#, &["t"]);
    let graph = fx.graph();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, fx.config(), &d).await;
        // async-process sets its child reaper up at the first spawn and panics if it cannot; the server
        // has spawned Nix at start-up (asking it about the local machine) long before, and so does this.
        let spawned = smol::process::Command::new("true").status().await.expect("spawn true");
        assert!(spawned.success());
        // Out of file descriptors for real: the batch cannot start (EMFILE).
        let mut held = Vec::new();
        let emfile = loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => held.push(f),
                Err(e) => break e,
            }
        };
        assert_eq!(emfile.raw_os_error(), Some(rustix::io::Errno::MFILE.raw_os_error()), "{emfile}");
        h.request(JobsetId(1), vec![d[0].clone()]).await.expect("request");
        let waiting = until(&h, &d[0], 60, |s| matches!(s, DrvState::FailedRetry { .. })).await;
        let DrvState::FailedRetry { message } = &waiting.state else { unreachable!() };
        assert!(message.starts_with("transient: too many open files (EMFILE)"), "{message}");
        // The host recovers: the same derivation builds, and nothing recorded it as failed.
        drop(held);
        let outcome = within(120, "after the host recovered", h.wait(JobsetId(1))).await.expect("wait");
        assert_eq!(outcome.status, OwnerStatus::Completed);
        let s = status(&h, &d[0]).await;
        assert!(is_success(&s.state), "{s:#?}");
        assert!(
            s.history.iter().all(|e| !matches!(e.state, DrvState::Completed(Completion::Failure { .. }))),
            "{s:#?}"
        );
        assert!(
            s.history.iter().any(|e| matches!(&e.state, DrvState::FailedRetry { message } if message.starts_with("transient: "))
                && e.note == "transient host error, not a build failure"),
            "the history says it was the host: {s:#?}"
        );
        assert_eq!(s.attempt, 1, "only the real build counts as an attempt: {s:#?}");
        h.shutdown().await.expect("shutdown");
    });
    println!("transient host error child: done");
}

#[test]
fn a_transient_host_error_is_retried_and_never_recorded_as_a_failure() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "scheduler::transient_host_error_child",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("transient host error child: done"), "the child test did not run:\n{stdout}");
}

#[test]
fn cancelling_one_derivation_kills_its_build_and_blocks_its_dependents() {
    let fx = Fixture::new();
    let slow_pid = fx.file("one-slow.pid");
    let d = fx.drvs(
        &format!(
            r#"  slow = mk "one-slow" "echo $$ > {slow_pid}; exec /bin/sleep 60" {{ }};
  top = mk "one-top" "echo > $out" {{ inherit slow; }};
  mid = mk "one-mid" "echo > $out" {{ inherit slow; }};
  topmid = mk "one-topmid" "echo > $out" {{ inherit mid; }};"#
        ),
        &["slow", "top", "mid", "topmid"],
    );
    let graph = fx.graph();
    let cfg = fx.config();
    with_executor(|ex| async move {
        let h = start(&ex, &graph, cfg, &d).await;
        let (slow, top, mid, topmid) = (&d[0], &d[1], &d[2], &d[3]);
        h.request(JobsetId(1), vec![top.clone(), topmid.clone()]).await.expect("request");
        until(&h, slow, 30, is_building).await;
        assert_eq!(state(&h, mid).await, DrvState::Queued);

        // A queued derivation: cancelled, and what depends on it is blocked on it.
        h.cancel_drv(mid, "cancelled by test").await.expect("cancel the queued one");
        let cancelled = |s: &DrvState| matches!(s, DrvState::Interrupted { kind: InterruptKind::Cancelled, reason } if reason == "cancelled by test");
        assert!(cancelled(&state(&h, mid).await), "{:?}", state(&h, mid).await);
        let s = until(&h, topmid, 10, |s| s.is_terminal()).await;
        assert_eq!(s.state, DrvState::Blocked { dependency: mid.clone() });
        assert!(is_building(&state(&h, slow).await), "the other branch keeps building");

        // The running build: its process is killed, its attempt closed as cancelled, its dependent blocked.
        h.cancel_drv(slow, "cancelled by test").await.expect("cancel the running one");
        let s = status(&h, slow).await;
        assert!(cancelled(&s.state), "{:?}", s.state);
        assert_eq!(s.attempts.last().and_then(|a| a.outcome.as_deref()), Some("cancelled"));
        wait_gone(&slow_pid).await;
        let s = until(&h, top, 10, |s| s.is_terminal()).await;
        assert_eq!(s.state, DrvState::Blocked { dependency: slow.clone() });
        let o = within(10, "the owner", h.wait(JobsetId(1))).await.expect("wait");
        assert_eq!(o.status, OwnerStatus::Completed);

        // A final derivation cannot be cancelled; an unknown one is unknown.
        let e = h.cancel_drv(slow, "again").await.expect_err("already final");
        assert!(e.to_string().contains("only a queued or running derivation"), "{e}");
        let e = h
            .cancel_drv("/nix/store/00000000000000000000000000000000-nope.drv", "x")
            .await
            .expect_err("unknown");
        assert!(e.to_string().contains("not in the derivation graph"), "{e}");
        h.shutdown().await.expect("shutdown");
    });
}
