//! The daemon as a real process: start-up rules, `ekaci status` over the real socket, signals, stale and
//! busy sockets, bad control frames, and HTTP.

use crate::common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{http_get, Home};
use rustix::process::Signal;

#[test]
fn status_over_the_real_socket() {
    let home = Home::new();
    let server = home.start();
    let status = server.status();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["pid"], server.pid());
    assert_eq!(status["db_path"], home.db().display().to_string());
    assert_eq!(status["socket_path"], home.socket().display().to_string());
    assert_eq!(status["schema_version"], 1);
    assert_eq!(status["queues"]["evaluations"], 0);
    assert_eq!(status["queues"]["builds"], 0);
    assert_eq!(status["queues"]["github_runs"], 0);
    assert_eq!(status["queues"]["github_held"], 0);
    assert_eq!(status["active_builds"], 0);
    assert_eq!(status["restrict_eval"], true, "evaluation is restricted by default");

    let out = home.ekaci(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("eka-ci-server {}", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains(&format!("database:        {}", home.db().display())), "{text}");
    assert!(text.contains("active builds:   0"), "{text}");
    assert!(text.contains("evaluation:      restricted (restrict-eval)"), "{text}");
    let sandbox = status["sandbox"].as_str().expect("sandbox setting in status").to_string();
    assert!(["true", "relaxed", "false"].contains(&sandbox.as_str()), "{sandbox}");
    assert!(text.contains("builds:          "), "{text}");
    assert!(text.contains("GitHub runs:     0 queued or running, 0 held for approval"), "{text}");

    let mode = std::fs::metadata(home.socket()).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket must be private");
}

#[test]
fn status_without_a_server_is_one_line_and_exit_1() {
    let home = Home::new();
    let out = home.ekaci(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot connect to eka-ci-server at") && err.contains("is the server running?"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn sigterm_commits_removes_the_socket_and_exits_0() {
    let home = Home::new();
    let server = home.start();
    server.signal(Signal::TERM);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    assert!(!home.socket().exists(), "socket must be removed");
    // The store recorded a clean stop.
    let store = eka_ci::store::Store::open(&home.db()).expect("reopen");
    let runs = store.runs().expect("runs");
    assert_eq!(runs.len(), 1);
    assert!(runs[0].1.stopped_at.is_some(), "{runs:?}");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let home = Home::new();
    let server = home.start();
    server.signal(Signal::INT);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!home.socket().exists());
}

#[test]
fn a_second_server_on_the_same_socket_is_refused() {
    let home = Home::new();
    let first = home.start();
    // Same socket, different database: the socket lock must refuse it (not the database lock).
    let other = tempfile::tempdir().expect("tempdir");
    let cfg = other.path().join("ekaci.toml");
    std::fs::write(
        &cfg,
        format!(
            "db_path = \"{}\"\n[web]\nport = 0\n[unix]\nsocket_path = \"{}\"\n[security]\nallow_insecure_webhooks = true\n",
            other.path().join("db.redb").display(),
            home.socket().display()
        ),
    )
    .expect("write");
    let out = run_until_exit(&home, &cfg, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another eka-ci-server is already serving the control socket"), "{err}");
    // The first server is unharmed.
    assert_eq!(first.status()["pid"], first.pid());
}

#[test]
fn a_stale_socket_from_a_killed_server_is_replaced() {
    let home = Home::new();
    let server = home.start();
    let first_pid = server.pid();
    server.signal(Signal::KILL);
    let (status, _) = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), None, "killed by a signal");
    assert!(home.socket().exists(), "kill -9 leaves the socket file behind");

    let server = home.start();
    assert_ne!(server.pid(), first_pid);
    assert_eq!(server.status()["pid"], server.pid());
    server.signal(Signal::TERM);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0));
    assert!(stderr.contains("replacing stale control socket"), "{stderr}");
    assert!(stderr.contains("did not shut down cleanly"), "{stderr}");
}

/// Runs the server with `--config-file cfg` and `env` until it exits by itself (start-up refusals).
fn run_until_exit(home: &Home, cfg: &std::path::Path, env: &[(&str, &str)]) -> Exited {
    let mut c = home.command(common::SERVER);
    c.arg("--config-file").arg(cfg).envs(env.iter().copied());
    Exited::from(common::run_to_exit(c))
}

/// A finished server run, shaped like `std::process::Output` for the assertions.
struct Exited {
    status: std::process::ExitStatus,
    stderr: Vec<u8>,
}

impl From<(std::process::ExitStatus, String)> for Exited {
    fn from((status, stderr): (std::process::ExitStatus, String)) -> Self {
        Exited { status, stderr: stderr.into_bytes() }
    }
}

fn frame(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(version);
    f.extend_from_slice(payload);
    f
}

/// Reads one response frame and returns its payload as lossy text (error messages are postcard strings).
fn read_response(s: &mut UnixStream) -> String {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("response length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("response body");
    assert_eq!(body[0], eka_ci::control::PROTOCOL_VERSION, "protocol version");
    let resp: eka_ci::control::Response = postcard::from_bytes(&body[1..]).expect("decode response");
    match resp {
        eka_ci::control::Response::Error { message } => message,
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).expect("read after error"), 0, "server must close the connection");
}

#[test]
fn bad_control_frames_close_only_their_connection() {
    let home = Home::new();
    let server = home.start();

    // Oversized: the length alone is enough to refuse; the body is never sent.
    let mut s = UnixStream::connect(home.socket()).expect("connect");
    s.write_all(&(64u32 << 20).to_be_bytes()).expect("send length");
    let msg = read_response(&mut s);
    assert!(msg.contains("exceeds the limit of 1048576 bytes"), "{msg}");
    assert_closed(&mut s);

    // Wrong protocol version.
    let mut s = UnixStream::connect(home.socket()).expect("connect");
    s.write_all(&frame(9, &[0])).expect("send");
    let msg = read_response(&mut s);
    assert!(msg.contains("protocol version 9 not supported"), "{msg}");
    assert_closed(&mut s);

    // Right version, garbage payload (an enum tag no request has).
    let mut s = UnixStream::connect(home.socket()).expect("connect");
    s.write_all(&frame(eka_ci::control::PROTOCOL_VERSION, &[0x7f, 1, 2, 3])).expect("send");
    let msg = read_response(&mut s);
    assert!(msg.contains("malformed message"), "{msg}");
    assert_closed(&mut s);

    // Empty frame.
    let mut s = UnixStream::connect(home.socket()).expect("connect");
    s.write_all(&0u32.to_be_bytes()).expect("send");
    let msg = read_response(&mut s);
    assert!(msg.contains("empty frame"), "{msg}");

    // A client that hangs up mid-frame.
    let mut s = UnixStream::connect(home.socket()).expect("connect");
    s.write_all(&100u32.to_be_bytes()).expect("send");
    s.write_all(&[1, 0]).expect("send");
    drop(s);

    // The server keeps serving, and counted the rejects.
    assert_eq!(server.status()["pid"], server.pid());
    let (code, _, body) = http_get(&server.http_address(), "/metrics");
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("eka_ci_control_frames_rejected_total 4"), "{text}");
}

#[test]
fn metrics_health_and_unknown_routes_over_http() {
    let home = Home::new();
    let server = home.start();
    let addr = server.http_address();

    let (code, head, body) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/plain") && head.contains("version=0.0.4"), "{head}");
    let text = String::from_utf8_lossy(&body);
    for family in [
        "eka_ci_build_info{version=\"",
        "eka_ci_start_time_seconds",
        "eka_ci_control_connections_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(text.contains(family), "missing {family} in:\n{text}");
    }
    let (code, _, body2) = http_get(&addr, "/v1/metrics");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body2).contains("eka_ci_build_info"));

    let (code, _, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_slice(&body).expect("health JSON");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    let (code, head, body) = http_get(&addr, "/no/such/route");
    assert_eq!(code, 404);
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let err: serde_json::Value = serde_json::from_slice(&body).expect("error JSON");
    assert_eq!(err["error"], "no such route");
    assert_eq!(err["status"], 404);

    // Requests were counted by status class.
    let (_, _, body) = http_get(&addr, "/metrics");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("eka_ci_http_requests_total{route=\"all\",status=\"4xx\"} 1"), "{text}");
}

#[test]
fn no_webhook_secret_is_refused_with_exit_2_before_binding() {
    let home = Home::new();
    let cfg = home.config_file();
    std::fs::write(&cfg, "[web]\nport = 0\n").expect("write");
    let out = run_until_exit(&home, &cfg, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no webhook secret is configured"), "{err}");
    assert!(err.contains("WEBHOOK_SECRET") && err.contains("allow_insecure_webhooks"), "{err}");
    assert!(!home.socket().exists() && !home.db().exists(), "nothing may be created");

    // The environment variable is enough.
    let mut cmd = home.command(common::SERVER);
    cmd.arg("--config-file").arg(&cfg).env("WEBHOOK_SECRET", "not-logged-7d1e");
    let child = cmd.stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let server = common::Server::new(child, home.socket());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !home.socket().exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    server.signal(Signal::TERM);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("not-logged-7d1e"), "the secret must never be logged");
}

#[test]
fn a_config_error_exits_2_and_binds_nothing() {
    let home = Home::new();
    let cfg = home.config_file();
    std::fs::write(&cfg, "[security]\nallow_insecure_webhooks = true\n[web]\nport = \"eighty\"\n")
        .expect("write");
    let out = run_until_exit(&home, &cfg, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cfg.display().to_string()) && err.contains("web.port"), "{err}");
    assert!(!home.socket().exists() && !home.db().exists());

    let missing = home.path().join("nope.toml");
    let out = run_until_exit(&home, &missing, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&missing.display().to_string()));
}

#[test]
fn embedded_defaults_with_no_config_file_and_xdg_paths() {
    let home = Home::new();
    // No --config-file and no $XDG_CONFIG_HOME/ekaci/ekaci.toml: defaults, with the secret from the env.
    // Port 3030 may be taken on a shared machine, so check the resolved paths with --check-config.
    let out =
        home.command(common::SERVER).arg("--check-config").env("WEBHOOK_SECRET", "x").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("db_path = {}", home.path().join("data/ekaci/ekaci.redb").display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("logs_dir = {}", home.path().join("data/ekaci/build-logs").display())),
        "{text}"
    );
    assert!(text.contains(&format!("socket_path = {}", home.socket().display())), "{text}");
    assert!(text.contains("http = 127.0.0.1:3030"), "{text}");

    // The XDG config file is picked up when present.
    let dir = home.path().join("config/ekaci");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("ekaci.toml"), "[web]\nport = 4123\n").expect("write");
    let out =
        home.command(common::SERVER).arg("--check-config").env("WEBHOOK_SECRET", "x").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("http = 127.0.0.1:4123"));
}

#[test]
fn check_config_warns_about_keys_accepted_but_not_acted_on() {
    let home = Home::new();
    let check = |config: &str, web: &str| {
        let cfg = home.write_config_web(config, web);
        home.check_config(&cfg, &[])
    };
    // `[web] bundle_path` is accepted but not acted on; `[[caches]]` and `[oauth]` are acted on and warn
    // nothing. No value (one a secret) is shown.
    let (code, err) = check(
        "[[caches]]\nid = \"c\"\ncache_type = \"cachix\"\ndestination = \"my-cache\"\ncredentials = \"none\"\n\n\
         [oauth]\nclient_secret = \"oauth-secret-5b2c\"\n",
        "bundle_path = \"/srv/ekaci-ui-7d1e\"",
    );
    assert_eq!(code, Some(0), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(
        warnings,
        ["warning: web.bundle_path: accepted, not yet acted on: no web UI bundle is served yet"],
        "{err}"
    );
    assert!(
        !err.contains("oauth-secret-5b2c") && !err.contains("my-cache") && !err.contains("ekaci-ui-7d1e"),
        "{err}"
    );

    // A configuration using none of those keys gets no such warning.
    let (code, err) = check("graph_lru_capacity = 5000", "");
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("warning: "), "{err}");
    assert!(!err.contains("not yet acted on"), "{err}");
}

#[test]
fn an_http_port_in_use_fails_start_up_and_cleans_the_socket() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let home = Home::new();
    let cfg = home.write_config("");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).expect("read").replace("port = 0", &format!("port = {port}")),
    )
    .expect("write");
    let out = run_until_exit(&home, &cfg, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen for HTTP on 127.0.0.1:{port}")), "{err}");
    assert!(!home.socket().exists());
}

#[test]
fn a_machines_file_is_validated_at_start_up() {
    let home = Home::new();
    let machines = home.path().join("machines");
    std::fs::write(&machines, "# builders\nssh://builder@builder.eka-ci-test.invalid x86_64-linux - 4 2 kvm,big-parallel\nssh://b2.eka-ci-test.invalid x86_64-linux - many\n")
        .expect("write");
    let cfg = home.write_config(&format!("machines_file = \"{}\"", machines.display()));
    let out = run_until_exit(&home, &cfg, &[]);
    assert_eq!(out.status.code(), Some(2), "a bad machines file is a configuration error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&machines.display().to_string()) && err.contains("line 3"), "{err}");
    assert!(!home.socket().exists());

    std::fs::write(
        &machines,
        "ssh://builder@builder.eka-ci-test.invalid x86_64-linux - 4 2 kvm,big-parallel\n",
    )
    .expect("write");
    let server = home.start();
    server.signal(Signal::TERM);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("remote builders from the machines file") && stderr.contains("machines=1"),
        "{stderr}"
    );
}

#[test]
fn github_app_credentials_are_checked_at_start_up() {
    let home = Home::new();
    let vault = "[[github_apps]]\nid = \"main\"\ncredentials = { vault = { address = \"https://vault.example.invalid\", secret_path = \"x\" } }\n";
    let cfg = home.write_config(vault);
    let out = run_until_exit(&home, &cfg, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("main") && err.contains("no Vault token: environment variable VAULT_TOKEN"),
        "{err}"
    );
    assert!(!home.socket().exists());

    // A key file that is not a private key is refused without echoing it.
    let bad_key = home.path().join("bad.pem");
    std::fs::write(
        &bad_key,
        "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWJ1dC1ub3QtYS1rZXk=\n-----END RSA PRIVATE KEY-----\n",
    )
    .expect("write");
    let keyfile = format!(
        "[[github_apps]]\nid = \"main\"\ncredentials = {{ github-app-key-file = {{ app_id_env = \"EKA_TEST_APP_ID\", key_file = \"{}\" }} }}\n",
        bad_key.display()
    );
    let cfg = home.write_config(&keyfile);
    let out = run_until_exit(&home, &cfg, &[("EKA_TEST_APP_ID", "12345")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("main"), "{err}");
    assert!(!err.contains("c2VjcmV0"), "key material must not be echoed: {err}");

    // A real key starts the server.
    let good = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github/keys/test-app-key.pkcs1.pem");
    let keyfile = keyfile.replace(&bad_key.display().to_string(), &good.display().to_string());
    let cfg = home.write_config(&keyfile);
    let mut c = home.command(common::SERVER);
    c.arg("--config-file").arg(&cfg).env("EKA_TEST_APP_ID", "12345").stderr(std::process::Stdio::piped());
    let child = c.spawn().expect("spawn");
    let server = common::Server::new(child, home.socket());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(home.socket()).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal(Signal::TERM);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("GitHub App credentials loaded"), "{stderr}");
}

#[test]
fn the_server_drops_its_secrets_from_its_environment_and_is_not_dumpable() {
    let home = Home::new();
    let secret = "eka-ci-test-webhook-secret-4b1d";
    let server = home.start_with(&[
        ("WEBHOOK_SECRET", std::ffi::OsStr::new(secret)),
        ("EKA_CI_HARMLESS_MARKER", std::ffi::OsStr::new("still-here")),
    ]);
    // As root the non-dumpable server's environ is still readable: then its content must be clean.
    match std::fs::read(format!("/proc/{}/environ", server.pid())) {
        Ok(environ) => {
            let environ = String::from_utf8_lossy(&environ);
            assert!(!environ.contains(secret), "the secret is still in /proc/<pid>/environ");
            assert!(!environ.contains("WEBHOOK_SECRET"), "the variable is still in /proc/<pid>/environ");
            assert!(environ.contains("EKA_CI_HARMLESS_MARKER=still-here"), "only secrets are dropped");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
    }
    // The server keeps working on what it read at start-up.
    assert_eq!(server.status()["pid"], server.pid());
}

#[test]
fn unrestricted_evaluation_is_warned_about_and_shown_in_status() {
    let home = Home::new();
    home.write_config("[evaluation]\nrestrict_eval = false\nallowed_uris = [\"https://example.invalid/\"]");
    let server = home.start();
    assert_eq!(server.status()["restrict_eval"], false);
    let text = String::from_utf8_lossy(&home.ekaci(&["status"]).stdout).to_string();
    assert!(text.contains("evaluation:      UNRESTRICTED (restrict_eval = false)"), "{text}");
    server.signal(Signal::TERM);
    let (status, log) = server.wait(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(log.contains("evaluation is unrestricted"), "{log}");
}

/// A config with the test GitHub App (a real key, app id from `EKA_TEST_APP_ID`) and no
/// `allow_unsandboxed_builds`, unless `allow` adds it.
fn forge_config(home: &Home, allow: bool) -> std::path::PathBuf {
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/github/keys/test-app-key.pkcs1.pem");
    let text = format!(
        "[web]\nport = 0\n[security]\nallow_insecure_webhooks = true\n{}\n[[github_apps]]\nid = \"main\"\n\
         credentials = {{ github-app-key-file = {{ app_id_env = \"EKA_TEST_APP_ID\", key_file = \"{}\" }} }}\n",
        if allow { "allow_unsandboxed_builds = true" } else { "" },
        key.display()
    );
    std::fs::write(home.config_file(), text).expect("write config");
    home.config_file()
}

#[test]
fn a_forge_with_unsandboxed_nix_builds_is_refused_at_start_up() {
    let home = Home::new();
    let cfg = forge_config(&home, false);
    for setting in ["false", "relaxed"] {
        let nix_config = format!("substituters =\nsandbox = {setting}");
        let out = run_until_exit(&home, &cfg, &[("EKA_TEST_APP_ID", "12345"), ("NIX_CONFIG", &nix_config)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "sandbox = {setting}: {err}");
        assert!(
            err.contains(&format!("`sandbox` setting is `{setting}`"))
                && err.contains("security.allow_unsandboxed_builds = true")
                && err.contains(&cfg.display().to_string()),
            "{err}"
        );
        assert!(!home.socket().exists(), "nothing was opened");
    }

    // Nix's sandbox on: the same configuration starts, and status says so.
    let mut c = home.command(common::SERVER);
    c.arg("--config-file")
        .arg(&cfg)
        .env("EKA_TEST_APP_ID", "12345")
        .env("NIX_CONFIG", "substituters =\nsandbox = true")
        .stderr(std::process::Stdio::piped());
    let mut server = common::Server::new(c.spawn().expect("spawn"), home.socket());
    server.wait_ready();
    assert_eq!(server.status()["sandbox"], "true");
    let text = String::from_utf8_lossy(&home.ekaci(&["status"]).stdout).to_string();
    assert!(text.contains("builds:          sandboxed (Nix sandbox = true)"), "{text}");
    server.signal(Signal::TERM);
    let (status, _) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn allow_unsandboxed_builds_starts_with_a_warning_and_status_shows_it() {
    let home = Home::new();
    let cfg = forge_config(&home, true);
    let mut c = home.command(common::SERVER);
    c.arg("--config-file")
        .arg(&cfg)
        .env("EKA_TEST_APP_ID", "12345")
        .env("NIX_CONFIG", "substituters =\nsandbox = false")
        .stderr(std::process::Stdio::piped());
    let mut server = common::Server::new(c.spawn().expect("spawn"), home.socket());
    server.wait_ready();
    assert_eq!(server.status()["sandbox"], "false");
    let text = String::from_utf8_lossy(&home.ekaci(&["status"]).stdout).to_string();
    assert!(text.contains("builds:          NOT SANDBOXED (Nix sandbox = false)"), "{text}");
    server.signal(Signal::TERM);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("builds are NOT sandboxed and a GitHub App is configured"), "{stderr}");
}
