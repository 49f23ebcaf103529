//! Supervised service loops, through the real server: a panic injected with the test hook
//! `EKA_CI_TEST_PANIC_WHILE` makes `/healthz` answer 503 naming the loops, they restart once the hook's
//! file is gone (`/healthz` 200 again, the scheduler answering), and the restarts are counted.

use std::time::{Duration, Instant};

use crate::common::{http_get, Home};

/// Polls `/healthz` until `done` accepts its status and JSON body (at most 120 s).
fn health_until(addr: &str, what: &str, done: impl Fn(u16, &serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, _, body) = http_get(addr, "/healthz");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if done(code, &json) {
            return json;
        }
        assert!(Instant::now() < deadline, "/healthz never {what}: last {code} {json}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_panicking_loop_is_reported_unhealthy_restarted_and_counted() {
    let home = Home::new();
    // A fixed port: while the scheduler is down the control requests that ask it would wait.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    std::fs::write(
        home.config_file(),
        format!(
            "[web]\nport = {port}\nmetrics_public = true\n\n[security]\nallow_insecure_webhooks = true\n\
             allow_unsandboxed_builds = true\n"
        ),
    )
    .expect("config");
    let flag = home.path().join("panic-now");
    std::fs::write(&flag, "").expect("flag");
    let hook = format!("scheduler,summary-prune:{}", flag.display());
    let server = home.start_with(&[("EKA_CI_TEST_PANIC_WHILE", hook.as_ref())]);
    let addr = format!("127.0.0.1:{port}");

    let down = health_until(&addr, "named both loops", |code, json| {
        code == 503 && json["down"]["scheduler"] == "panicked" && json["down"]["summary-prune"] == "panicked"
    });
    assert_eq!(down["status"], "degraded", "{down}");

    std::fs::remove_file(&flag).expect("remove flag");
    let up = health_until(&addr, "recovered", |code, _| code == 200);
    assert_eq!(up["status"], "ok", "{up}");
    // The restarted scheduler answers through the same handle.
    let status = server.status();
    assert!(status["http_address"].is_string(), "{status}");

    let (_, _, body) = http_get(&addr, "/metrics");
    let text = String::from_utf8_lossy(&body);
    for service in ["scheduler", "summary-prune"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("eka_ci_service_restarts_total{{service=\"{service}\"}}")))
            .unwrap_or_else(|| panic!("no restart count for {service} in:\n{text}"));
        let n: u64 = line.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("count");
        assert!(n >= 1, "{line}");
    }

    let (exit, log) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("service loop panicked"), "{log}");
    assert!(log.contains("test panic injected by EKA_CI_TEST_PANIC_WHILE into scheduler"), "{log}");
}
