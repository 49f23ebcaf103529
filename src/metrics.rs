//! Prometheus metrics: one registry for the process, with every `eka_ci_` family registered in one place.
//!
//! Modules record into the families here; the web module only renders the registry. Families that later
//! subsystems fill are registered up front so dashboards see them (at zero) from the first scrape.

use std::sync::OnceLock;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric family of the process.
pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    pub start_time_seconds: IntGauge,
    pub http_requests: IntCounterVec,
    pub control_connections: IntCounter,
    pub control_frames_rejected: IntCounter,
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
    })
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
