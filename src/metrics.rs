//! Prometheus metrics: one registry for the process, with every `eka_ci_` family registered in one place.
//!
//! Modules record into the families here; the web module only renders the registry. Families that later
//! subsystems fill are registered up front so dashboards see them (at zero) from the first scrape.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric family of the process.
pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    pub start_time_seconds: IntGauge,
    pub http_requests: IntCounterVec,
    pub control_connections: IntCounter,
    pub control_frames_rejected: IntCounter,
    /// Derivation graph (`graph`): nodes known (stored), whatever is resident.
    pub graph_nodes: IntGauge,
    /// Derivation graph: resident nodes / LRU capacity (above 1 only when pinned nodes exceed capacity).
    pub graph_cache_utilization: Gauge,
    /// Derivation graph: nodes loaded from the database on a cache miss.
    pub graph_cache_reloads: IntCounter,
    /// Derivation graph: nodes currently pinned (never evicted).
    pub graph_pinned_nodes: IntGauge,
    /// Derivation graph: time to load one node from the database on a cache miss.
    pub graph_cache_reload_duration: Histogram,
    /// Build scheduler (`scheduler`): derivations waiting (queued or buildable, not building), by platform.
    pub build_queue_depth: IntGaugeVec,
    /// Build scheduler: derivations building now, by platform.
    pub active_builds: IntGaugeVec,
    /// Build scheduler: wall time of one derivation's build, from Nix's start to its end.
    pub build_duration: Histogram,
    /// Build scheduler: final (and retried) build states, by state name.
    pub build_outcome: IntCounterVec,
    /// Broken invariants of the scheduler's engine (bugs, logged as errors), by operation.
    pub scheduler_invariant_violations: IntCounterVec,
    /// GitHub webhook deliveries (`web::github`), by event and outcome.
    pub github_webhooks: IntCounterVec,
    /// GitHub run attempts (`forge::github::service`), by how they ended.
    pub github_runs: IntCounterVec,
    /// GitHub runs whose builds (or evaluation) the `[rebuild]` policy or the repository's change sets
    /// skipped, by reason: skip_paths, change_sets, wide.
    pub github_rebuild_skips: IntCounterVec,
    /// Change summaries (`summary`): time of each phase (classify, impact, render, end_to_end).
    pub change_summary_duration: HistogramVec,
    /// Change summaries served from the `change_summaries` cache.
    pub change_summary_cache_hits: IntCounter,
    /// Change summaries computed because none was cached (for the same settings).
    pub change_summary_cache_misses: IntCounter,
    /// Renderings that dropped detail, by level: columns (rows or lines dropped), summary (counts only).
    pub change_summary_truncated: IntCounterVec,
    /// Package comparisons where neither side had usable `meta` (pname/version from the name only).
    pub change_summary_metadata_unavailable: IntCounter,
    /// Rebuild impact: time of the blast-radius traversal, by system of the changed derivations.
    pub rebuild_impact_traversal_duration: HistogramVec,
    /// Supervised service loops (`supervise`) restarted after a panic or a failed start, by service.
    pub service_restarts: IntCounterVec,
    /// Whether each builder answers (1) or not (0), by builder name (`local`, `fixed-output`, the remote
    /// URI); a remote builder is probed with `nix store ping` (`scheduler::health`).
    pub builder_up: IntGaugeVec,
    /// HTTP connections open now, over every listener (`web::conn`).
    pub http_connections_open: IntGauge,
    /// `/v1/ws/builds` clients connected now.
    pub ws_clients: IntGauge,
    /// `/v1/ws/builds` clients dropped because their event buffer was full (they did not read).
    pub ws_clients_dropped: IntCounter,
    /// HTTP connections closed by the server's limits, by reason: cap, reserved, header_timeout,
    /// head_too_large.
    pub http_connections_refused: IntCounterVec,
    /// GitHub deliveries octocrab's model rejected but that were read leniently, by event.
    pub github_events_lenient: IntCounterVec,
    /// Pipeline steps retried after host trouble (EMFILE, ENOSPC, a failed fork), by stage: checkout,
    /// evaluation, graph.
    pub host_trouble_retries: IntCounterVec,
    /// Cache pushes (`cache`), one per batch command, by cache id and result: pushed, retry, failed.
    pub cache_push_total: IntCounterVec,
    /// Cache pushes: wall time of one push command (signing included).
    pub cache_push_seconds: Histogram,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

    let build_info = IntGaugeVec::new(
        Opts::new("eka_ci_build_info", "eka-ci-server build information (value is always 1)"),
        &["version"],
    )?;
    build_info.with_label_values(&[crate::VERSION]).set(1);
    let start_time_seconds =
        IntGauge::new("eka_ci_start_time_seconds", "Unix time at which the server started")?;
    let http_requests = IntCounterVec::new(
        Opts::new("eka_ci_http_requests_total", "HTTP requests served, by route group and status class"),
        &["route", "status"],
    )?;
    let control_connections =
        IntCounter::new("eka_ci_control_connections_total", "Connections accepted on the control socket")?;
    let control_frames_rejected = IntCounter::new(
        "eka_ci_control_frames_rejected_total",
        "Control frames rejected (oversized, wrong version or malformed)",
    )?;
    let graph_nodes = IntGauge::new("eka_ci_graph_nodes_total", "Derivations known to the derivation graph")?;
    let graph_cache_utilization = Gauge::new(
        "eka_ci_graph_cache_utilization",
        "Resident derivation-graph nodes divided by the LRU capacity (graph_lru_capacity)",
    )?;
    let graph_cache_reloads = IntCounter::new(
        "eka_ci_graph_cache_reloads_total",
        "Derivation-graph nodes loaded from the database because they were not resident",
    )?;
    let graph_pinned_nodes = IntGauge::new(
        "eka_ci_graph_pinned_nodes_total",
        "Derivation-graph nodes pinned in memory (pending work)",
    )?;
    let graph_cache_reload_duration = Histogram::with_opts(
        HistogramOpts::new(
            "eka_ci_graph_cache_reload_duration_seconds",
            "Time to load one derivation-graph node from the database",
        )
        .buckets(vec![1e-6, 4e-6, 16e-6, 64e-6, 256e-6, 1e-3, 4e-3, 16e-3]),
    )?;
    registry.register(Box::new(graph_nodes.clone()))?;
    registry.register(Box::new(graph_cache_utilization.clone()))?;
    registry.register(Box::new(graph_cache_reloads.clone()))?;
    registry.register(Box::new(graph_pinned_nodes.clone()))?;
    registry.register(Box::new(graph_cache_reload_duration.clone()))?;
    let build_queue_depth = IntGaugeVec::new(
        Opts::new(
            "eka_ci_build_queue_depth",
            "Derivations waiting to be built (queued or buildable), by platform (`other`: no builder has it)",
        ),
        &["platform"],
    )?;
    let active_builds = IntGaugeVec::new(
        Opts::new(
            "eka_ci_active_builds",
            "Derivations building now, by platform (`other`: no builder has it)",
        ),
        &["platform"],
    )?;
    let build_duration = Histogram::with_opts(
        HistogramOpts::new("eka_ci_build_duration_seconds", "Wall time of one derivation's build")
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0]),
    )?;
    let build_outcome = IntCounterVec::new(
        Opts::new(
            "eka_ci_build_outcome_total",
            "Derivations reaching a final state (or a retry), by state: success, failure, cached, \
             transitive-failure, blocked, failed-retry, interrupted-<kind>",
        ),
        &["outcome"],
    )?;
    registry.register(Box::new(build_queue_depth.clone()))?;
    registry.register(Box::new(active_builds.clone()))?;
    registry.register(Box::new(build_duration.clone()))?;
    let scheduler_invariant_violations = IntCounterVec::new(
        Opts::new(
            "eka_ci_scheduler_invariant_violations_total",
            "Broken invariants of the scheduler (a lookup that must succeed did not; each is logged as an \
             error and the operation skipped), by operation",
        ),
        &["operation"],
    )?;
    registry.register(Box::new(build_outcome.clone()))?;
    registry.register(Box::new(scheduler_invariant_violations.clone()))?;
    let service_restarts = IntCounterVec::new(
        Opts::new(
            "eka_ci_service_restarts_total",
            "Restarts of a supervised service loop after it panicked or failed to start, by service",
        ),
        &["service"],
    )?;
    registry.register(Box::new(service_restarts.clone()))?;
    let builder_up = IntGaugeVec::new(
        Opts::new(
            "eka_ci_builder_up",
            "Whether a builder answers its health probe (1) or is down or not checked yet (0), by builder \
             (local, fixed-output, or the remote machine's store URI)",
        ),
        &["builder"],
    )?;
    registry.register(Box::new(builder_up.clone()))?;
    let github_webhooks = IntCounterVec::new(
        Opts::new(
            "eka_ci_github_webhooks_total",
            "GitHub webhook deliveries, by event (known names, else other) and outcome: accepted, duplicate, \
             ignored, stale, unauthorized, too_large, busy, malformed, error",
        ),
        &["event", "outcome"],
    )?;
    registry.register(Box::new(github_webhooks.clone()))?;
    let github_runs = IntCounterVec::new(
        Opts::new(
            "eka_ci_github_runs_total",
            "GitHub run attempts (one pull request or merge group head), by result: passed, failed, \
             held (waiting for approval), cancelled, retry (GitHub failed; retried later), skipped \
             (no configuration, no App for the repository), error (configuration or checkout error)",
        ),
        &["result"],
    )?;
    registry.register(Box::new(github_runs.clone()))?;
    let github_rebuild_skips = IntCounterVec::new(
        Opts::new(
            "eka_ci_github_rebuild_skips_total",
            "GitHub run attempts that skipped work, by reason: skip_paths (only [rebuild] skip_paths \
             changed: not evaluated), change_sets (only docs-only or no-op paths changed: not evaluated), \
             wide (more rebuilds than [rebuild] max_rebuild_count: evaluated, not built)",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(github_rebuild_skips.clone()))?;
    let summary_buckets = vec![1e-4, 1e-3, 5e-3, 0.025, 0.1, 0.25, 1.0, 5.0, 30.0];
    let change_summary_duration = HistogramVec::new(
        HistogramOpts::new(
            "eka_ci_change_summary_total_duration_seconds",
            "Time to compute a change summary, by phase: classify, impact, render, end_to_end",
        )
        .buckets(summary_buckets.clone()),
        &["phase"],
    )?;
    let change_summary_cache_hits = IntCounter::new(
        "eka_ci_change_summary_cache_hits_total",
        "Change summaries served from the change_summaries cache",
    )?;
    let change_summary_cache_misses = IntCounter::new(
        "eka_ci_change_summary_cache_misses_total",
        "Change summaries computed because none was cached",
    )?;
    let change_summary_truncated = IntCounterVec::new(
        Opts::new(
            "eka_ci_change_summary_truncated_total",
            "Rendered change summaries that dropped detail to fit, by level: columns (maintainer or license \
             rows, or the rebuild-only line), summary (counts only)",
        ),
        &["level"],
    )?;
    let change_summary_metadata_unavailable = IntCounter::new(
        "eka_ci_change_summary_metadata_unavailable_total",
        "Changed packages compared without meta on either side (pname and version from the name only)",
    )?;
    let rebuild_impact_traversal_duration = HistogramVec::new(
        HistogramOpts::new(
            "eka_ci_rebuild_impact_traversal_duration_seconds",
            "Time of the blast-radius traversal of the head graph, by system of the changed derivations",
        )
        .buckets(summary_buckets),
        &["system"],
    )?;
    // Known label values exist from the first scrape.
    for phase in ["classify", "impact", "render", "end_to_end"] {
        change_summary_duration.with_label_values(&[phase]);
    }
    for level in ["columns", "summary"] {
        change_summary_truncated.with_label_values(&[level]);
    }
    registry.register(Box::new(change_summary_duration.clone()))?;
    registry.register(Box::new(change_summary_cache_hits.clone()))?;
    registry.register(Box::new(change_summary_cache_misses.clone()))?;
    registry.register(Box::new(change_summary_truncated.clone()))?;
    registry.register(Box::new(change_summary_metadata_unavailable.clone()))?;
    registry.register(Box::new(rebuild_impact_traversal_duration.clone()))?;
    let http_connections_open =
        IntGauge::new("eka_ci_http_connections_open", "HTTP connections open now, over every listener")?;
    let ws_clients = IntGauge::new("eka_ci_ws_clients", "Clients of /v1/ws/builds connected now")?;
    let ws_clients_dropped = IntCounter::new(
        "eka_ci_ws_clients_dropped_total",
        "Clients of /v1/ws/builds dropped because they did not read their events in time",
    )?;
    let http_connections_refused = IntCounterVec::new(
        Opts::new(
            "eka_ci_http_connections_refused_total",
            "HTTP connections closed by the server's limits, by reason: cap (max_connections reached), \
             reserved (only webhook deliveries may use the rest), header_timeout, head_too_large",
        ),
        &["reason"],
    )?;
    for reason in ["cap", "reserved", "header_timeout", "head_too_large"] {
        http_connections_refused.with_label_values(&[reason]);
    }
    let github_events_lenient = IntCounterVec::new(
        Opts::new(
            "eka_ci_github_events_lenient_total",
            "GitHub deliveries that octocrab's model rejected but whose needed fields were present, so they \
             were processed anyway, by event",
        ),
        &["event"],
    )?;
    let host_trouble_retries = IntCounterVec::new(
        Opts::new(
            "eka_ci_host_trouble_retries_total",
            "Pipeline steps retried after host trouble (out of file descriptors, processes or disk space), \
             by stage: checkout, evaluation, graph, identity",
        ),
        &["stage"],
    )?;
    for stage in ["checkout", "evaluation", "graph", "identity"] {
        host_trouble_retries.with_label_values(&[stage]);
    }
    registry.register(Box::new(host_trouble_retries.clone()))?;
    let cache_push_total = IntCounterVec::new(
        Opts::new(
            "eka_ci_cache_push_total",
            "Cache push commands, by cache id and result: pushed, retry (failed, will be retried), failed \
             (given up or refused)",
        ),
        &["cache", "result"],
    )?;
    let cache_push_seconds = Histogram::with_opts(
        HistogramOpts::new("eka_ci_cache_push_seconds", "Wall time of one cache push command")
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
    )?;
    registry.register(Box::new(cache_push_total.clone()))?;
    registry.register(Box::new(cache_push_seconds.clone()))?;
    registry.register(Box::new(http_connections_open.clone()))?;
    registry.register(Box::new(ws_clients.clone()))?;
    registry.register(Box::new(ws_clients_dropped.clone()))?;
    registry.register(Box::new(http_connections_refused.clone()))?;
    registry.register(Box::new(github_events_lenient.clone()))?;
    registry.register(Box::new(build_info.clone()))?;
    registry.register(Box::new(start_time_seconds.clone()))?;
    registry.register(Box::new(http_requests.clone()))?;
    registry.register(Box::new(control_connections.clone()))?;
    registry.register(Box::new(control_frames_rejected.clone()))?;
    Ok(Metrics {
        registry,
        build_info,
        start_time_seconds,
        http_requests,
        control_connections,
        control_frames_rejected,
        graph_nodes,
        graph_cache_utilization,
        graph_cache_reloads,
        graph_pinned_nodes,
        graph_cache_reload_duration,
        build_queue_depth,
        active_builds,
        build_duration,
        build_outcome,
        scheduler_invariant_violations,
        github_webhooks,
        github_runs,
        github_rebuild_skips,
        change_summary_duration,
        change_summary_cache_hits,
        change_summary_cache_misses,
        change_summary_truncated,
        change_summary_metadata_unavailable,
        rebuild_impact_traversal_duration,
        service_restarts,
        builder_up,
        http_connections_open,
        ws_clients,
        ws_clients_dropped,
        http_connections_refused,
        github_events_lenient,
        cache_push_total,
        cache_push_seconds,
        host_trouble_retries,
    })
}

/// The label value every system outside the known ones is counted under.
pub const OTHER_SYSTEM: &str = "other";

/// The systems metric labels may name (set at start-up by the scheduler: the local machine's and the
/// remote builders' systems, plus Nix's `builtin`).
static KNOWN_SYSTEMS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Adds to the systems [`system_label`] lets through; every other system is counted as [`OTHER_SYSTEM`].
pub fn set_known_systems(systems: impl IntoIterator<Item = String>) {
    let mut known = match KNOWN_SYSTEMS.write() {
        Ok(known) => known,
        Err(poisoned) => poisoned.into_inner(),
    };
    // Added to, never replaced: a label once exported stays valid, and every scheduler of the process
    // (a restarted one, or several in the library's tests) has its builders counted.
    known.extend(systems);
    known.push("builtin".to_string());
    known.sort_unstable();
    known.dedup();
}

/// The label value for a derivation's `system` (which a repository chooses, so it is unbounded): the
/// system itself when a builder builds it, else [`OTHER_SYSTEM`].
pub fn system_label(system: &str) -> &str {
    let known = match KNOWN_SYSTEMS.read() {
        Ok(k) => k,
        Err(poisoned) => poisoned.into_inner(),
    };
    bounded_system(system, &known)
}

/// `system` when it is in `known`, else [`OTHER_SYSTEM`].
pub fn bounded_system<'a>(system: &'a str, known: &[String]) -> &'a str {
    if known.iter().any(|k| k == system) {
        system
    } else {
        OTHER_SYSTEM
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    // Names and labels are constants: registration fails only on a programming error (a duplicate
    // name), never on input, and `metrics_render_every_family` in the test suite catches that.
    METRICS.get_or_init(|| build().expect("metric families have unique, valid names"))
}

/// The registry in Prometheus' text exposition format.
pub fn render() -> String {
    let families = global().registry.gather();
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_systems_are_other() {
        let known = vec!["x86_64-linux".to_string(), "aarch64-linux".to_string()];
        assert_eq!(bounded_system("x86_64-linux", &known), "x86_64-linux");
        assert_eq!(bounded_system("aarch64-linux", &known), "aarch64-linux");
        assert_eq!(bounded_system("made-up-by-a-pull-request-1", &known), OTHER_SYSTEM);
        assert_eq!(bounded_system("", &known), OTHER_SYSTEM);
        assert_eq!(bounded_system("x86_64-linux", &[]), OTHER_SYSTEM);
        set_known_systems(["riscv64-linux".to_string()]);
        assert_eq!(system_label("riscv64-linux"), "riscv64-linux");
        assert_eq!(system_label("builtin"), "builtin");
        assert_eq!(system_label("x86_64-darwin-but-not-here"), OTHER_SYSTEM);
    }
}
