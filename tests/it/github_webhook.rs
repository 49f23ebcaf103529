//! `POST /github/webhook` against the real server: every fixture payload signed with the configured secret,
//! refusals (signature, size, JSON, headers) that persist nothing, redeliveries, and events surviving a
//! kill -9 right after the 202.

use crate::common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::{http_get, http_request, Home, Server};
use eka_ci::forge::github::webhook::{self, DeliveryOutcome, EventSummary};
use rustix::process::Signal;

const FIXTURES: &str = "tests/fixtures/github";

/// A home whose configuration has a webhook secret (made up per test run, never hard-coded).
fn home_with_secret() -> (Home, String) {
    home_with_secret_and_web("")
}

/// [`home_with_secret`] with `web` added to the `[web]` table.
pub(crate) fn home_with_secret_and_web(web: &str) -> (Home, String) {
    let home = Home::new();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let secret = format!("wh-secret-{}-{nanos}", std::process::id());
    std::fs::write(
        home.config_file(),
        format!(
            "[web]\nport = 0\nmetrics_public = true\n{web}\n\n[security]\nwebhook_secret = \"{secret}\"\n"
        ),
    )
    .expect("write config");
    (home, secret)
}

/// Every fixture: (X-GitHub-Event, file name, body).
fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIXTURES);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_string();
        let event = name.split('.').next().expect("event").to_string();
        out.push((event, name, std::fs::read(&path).expect("read fixture")));
    }
    out.sort();
    assert_eq!(out.len(), 14, "every fixture is found");
    out
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIXTURES).join(name)).expect("read fixture")
}

/// POSTs `body` as GitHub would: signed with `secret`, with the given event and delivery id.
fn deliver(addr: &str, secret: &str, event: &str, delivery: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let sig = webhook::sign(secret.as_bytes(), body);
    post(
        addr,
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/test"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &sig),
        ],
        body,
    )
}

fn post(addr: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, serde_json::Value) {
    let (status, _, body) = http_request(addr, "POST", "/github/webhook", headers, body);
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).expect("JSON body")
    };
    (status, json)
}

fn queue_depth(server: &Server) -> u64 {
    server.status()["queues"]["github_events"].as_u64().expect("github_events depth")
}

fn stop(server: Server) -> String {
    server.signal(Signal::TERM);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "{stderr}");
    stderr
}

#[test]
fn every_fixture_is_queued_and_redeliveries_are_duplicates() {
    let (home, secret) = home_with_secret();
    let server = home.start();
    let addr = server.http_address();
    assert_eq!(queue_depth(&server), 0);

    let all = fixtures();
    // GitHub's `closed` example is the newest of its pull request (`updated_at`): delivered before the
    // others, it would make them stale. It goes last, as on GitHub.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| all[i].1 == "pull_request.closed.json");
    for i in order {
        let (event, name, body) = &all[i];
        let (status, json) = deliver(&addr, &secret, event, &format!("delivery-{i}"), body);
        assert_eq!(status, 202, "{name}: {json}");
        assert_eq!(json["status"], "accepted", "{name}");
    }
    assert_eq!(queue_depth(&server), all.len() as u64);

    // ping → 200, an event we do not use → 204; neither is queued.
    let (status, json) =
        deliver(&addr, &secret, "ping", "ping-1", br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#);
    assert_eq!((status, json["status"].as_str()), (200, Some("pong")));
    let (status, json) = deliver(&addr, &secret, "star", "star-1", br#"{"action": "created"}"#);
    assert_eq!((status, json), (204, serde_json::Value::Null));
    assert_eq!(queue_depth(&server), all.len() as u64);

    // A redelivery (same X-GitHub-Delivery) is answered `duplicate` and changes nothing, even with another body.
    let opened = fixture("pull_request.opened.json");
    let index = all.iter().position(|(_, n, _)| n == "pull_request.opened.json").expect("opened fixture");
    let (status, json) = deliver(&addr, &secret, "pull_request", &format!("delivery-{index}"), &opened);
    assert_eq!((status, json["status"].as_str()), (200, Some("duplicate")));
    let other = fixture("pull_request.closed.json");
    let (status, _) = deliver(&addr, &secret, "pull_request", &format!("delivery-{index}"), &other);
    assert_eq!(status, 200);
    let (status, json) = deliver(&addr, &secret, "star", "star-1", br#"{"action": "created"}"#);
    assert_eq!((status, json["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(queue_depth(&server), all.len() as u64);

    // Header names are case-insensitive (real captures arrive as X-Github-Event). (The `closed` example,
    // the newest of its pull request: an older one would now be stale.)
    let body = fixture("pull_request.closed.json");
    let sig = webhook::sign(secret.as_bytes(), &body);
    let (status, json) = post(
        &addr,
        &[
            ("content-type", "application/json"),
            ("x-github-event", "pull_request"),
            ("X-GITHUB-DELIVERY", "case-1"),
            ("x-hub-SIGNATURE-256", &sig),
        ],
        &body,
    );
    assert_eq!(status, 202, "{json}");
    assert_eq!(queue_depth(&server), all.len() as u64 + 1);

    let (status, _, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        "eka_ci_github_webhooks_total{event=\"pull_request\",outcome=\"accepted\"} 5",
        "eka_ci_github_webhooks_total{event=\"pull_request\",outcome=\"duplicate\"} 2",
        "eka_ci_github_webhooks_total{event=\"other\",outcome=\"duplicate\"} 1",
        "eka_ci_github_webhooks_total{event=\"other\",outcome=\"ignored\"} 1",
        "eka_ci_github_webhooks_total{event=\"ping\",outcome=\"ignored\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }

    let stderr = stop(server);
    assert!(!stderr.contains(&secret), "the secret reached the log");

    // The queue holds our summaries, one record per delivery id.
    let store = eka_ci::store::Store::open(&home.db()).expect("reopen");
    let pending = webhook::pending(&store).expect("pending");
    assert_eq!(pending.len(), all.len() + 1);
    let opened: Vec<_> = pending.iter().filter(|(_, r)| r.delivery == format!("delivery-{index}")).collect();
    assert_eq!(opened.len(), 1, "one record per delivery");
    let EventSummary::PullRequest(pr) = &opened[0].1.summary else { panic!("{:?}", opened[0].1.summary) };
    assert_eq!(pr.action, "opened");
    assert_eq!(pr.number, 2);
    assert_eq!(pr.repo.full_name, "Codertocat/Hello-World");
    assert_eq!(pr.repo.clone_url, "https://github.com/Codertocat/Hello-World.git");
    assert_eq!(pr.head_sha, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
    assert_eq!(pr.base_sha, "f95f852bd8fca8fcc58a9a2d6c842781e32a215e");
    assert_eq!(pr.base_ref, "master");
    assert_eq!(pr.author.as_deref(), Some("Codertocat"));
    assert_eq!(pr.installation, Some(1));
    assert!(!pr.draft && !pr.is_fork());
    let events: Vec<&str> = pending.iter().map(|(_, r)| r.event.as_str()).collect();
    for (event, name, _) in &all {
        assert!(events.contains(&event.as_str()), "{name} not queued: {events:?}");
    }
    let merge = pending.iter().find_map(|(_, r)| match &r.summary {
        EventSummary::MergeGroup(m) => Some(m.clone()),
        _ => None,
    });
    let merge = merge.expect("merge_group queued");
    assert_eq!(merge.head_sha, "2ffea6db159f6b6c47a24e778fb9ef40cf6b1c7d");
    assert_eq!(merge.repo.full_name, "octo-org/octo-repo");
    let added = pending.iter().find_map(|(_, r)| match &r.summary {
        EventSummary::InstallationRepositories(s) => Some(s.clone()),
        _ => None,
    });
    let added = added.expect("installation_repositories queued");
    assert_eq!((added.installation, added.added.clone()), (957387, vec!["Codertocat/Space".to_string()]));

    // The consumer's side: retiring an event removes it and records the outcome on its delivery.
    let (seq, record) = pending[0].clone();
    webhook::mark_done(&store, seq, "evaluated").expect("mark done");
    assert_eq!(webhook::pending_count(&store).expect("count"), all.len() as u64);
    let delivery = webhook::delivery(&store, &record.delivery).expect("read").expect("delivery row");
    assert!(
        matches!(delivery.outcome, DeliveryOutcome::Handled { seq: s, ref outcome, .. } if s == seq && outcome == "evaluated")
    );
    assert!(webhook::mark_done(&store, seq, "again").is_err(), "a retired event cannot be retired twice");
    assert!(matches!(
        webhook::delivery(&store, "ping-1").expect("read").map(|d| d.outcome),
        Some(DeliveryOutcome::Ping)
    ));
}

#[test]
fn refused_deliveries_persist_nothing() {
    let (home, secret) = home_with_secret();
    let server = home.start();
    let addr = server.http_address();
    let body = fixture("pull_request.opened.json");

    // Forged: signed with another secret.
    let forged = webhook::sign(b"not-the-secret", &body);
    fn headers(sig: &str) -> [(&str, &str); 3] {
        [("X-GitHub-Event", "pull_request"), ("X-GitHub-Delivery", "refused-1"), ("X-Hub-Signature-256", sig)]
    }
    let (status, json) = post(&addr, &headers(&forged), &body);
    assert_eq!(status, 401, "{json}");
    assert!(json["error"].as_str().is_some_and(|e| e.contains("does not match")), "{json}");
    // Malformed signatures.
    for bad in ["sha256=", "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59", "garbage"] {
        let (status, json) = post(&addr, &headers(bad), &body);
        assert_eq!(status, 401, "{bad}: {json}");
    }
    // Missing signature.
    let (status, json) =
        post(&addr, &[("X-GitHub-Event", "pull_request"), ("X-GitHub-Delivery", "refused-1")], &body);
    assert_eq!(status, 401, "{json}");
    assert!(json["error"].as_str().is_some_and(|e| e.contains("missing")), "{json}");
    // A correct signature over a different body.
    let sig = webhook::sign(secret.as_bytes(), b"{}");
    let (status, _) = post(
        &addr,
        &[
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", "refused-1"),
            ("X-Hub-Signature-256", &sig),
        ],
        &body,
    );
    assert_eq!(status, 401);

    // Malformed JSON, and JSON that does not fit the event: 400 with a reason that echoes nothing.
    let (status, json) = deliver(&addr, &secret, "pull_request", "refused-2", b"{\"action\": \"opened\", ");
    assert_eq!(status, 400, "{json}");
    assert!(json["error"].as_str().is_some_and(|e| e.contains("not valid JSON")), "{json}");
    let (status, json) = deliver(
        &addr,
        &secret,
        "pull_request",
        "refused-3",
        br#"{"action": "opened", "number": "SECRET-42"}"#,
    );
    assert_eq!(status, 400, "{json}");
    let reason = json["error"].as_str().expect("reason");
    assert!(reason.contains("pull_request") && !reason.contains("SECRET-42"), "{reason}");
    // A payload octocrab's model rejects (a field we do not read has an unexpected type) is still
    // processed when the fields we need are there: queued, with a warning and a count.
    let mut odd: serde_json::Value = serde_json::from_slice(&body).expect("fixture");
    odd["sender"] = serde_json::json!("SECRET-sender");
    let odd = serde_json::to_vec(&odd).expect("encode");
    assert!(webhook::check_model(webhook::UsedEvent::PullRequest, &odd).is_err(), "octocrab must reject it");
    let (status, json) = deliver(&addr, &secret, "pull_request", "lenient-5", &odd);
    assert_eq!(status, 202, "{json}");
    // Missing delivery id.
    let sig = webhook::sign(secret.as_bytes(), &body);
    let (status, json) =
        post(&addr, &[("X-GitHub-Event", "pull_request"), ("X-Hub-Signature-256", &sig)], &body);
    assert_eq!(status, 400, "{json}");
    assert!(json["error"].as_str().is_some_and(|e| e.contains("X-GitHub-Delivery")), "{json}");

    // 26 MiB: refused from its Content-Length, and (chunked, no length) while reading.
    let big = vec![b' '; 26 * 1024 * 1024];
    assert_eq!(big_post(&addr, &secret, &big), 413);
    assert_eq!(chunked_post(&addr, &big), 413);
    assert_eq!(http_get(&addr, "/healthz").0, 200, "the server stays up");

    assert_eq!(queue_depth(&server), 1, "only the lenient delivery is queued");
    let (_, _, metrics) = http_get(&addr, "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        "eka_ci_github_webhooks_total{event=\"pull_request\",outcome=\"unauthorized\"} 6",
        "eka_ci_github_webhooks_total{event=\"pull_request\",outcome=\"malformed\"} 3",
        "eka_ci_github_events_lenient_total{event=\"pull_request\"} 1",
        "eka_ci_github_webhooks_total{event=\"pull_request\",outcome=\"too_large\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }

    // The refused delivery ids were not recorded: the real delivery is accepted afterwards.
    let (status, _) = deliver(&addr, &secret, "pull_request", "refused-1", &body);
    assert_eq!(status, 202);
    let stderr = stop(server);
    assert!(!stderr.contains(&secret), "the secret reached the log");

    let store = eka_ci::store::Store::open(&home.db()).expect("reopen");
    assert_eq!(webhook::pending_count(&store).expect("count"), 2);
    assert!(webhook::delivery(&store, "lenient-5").expect("read").is_some());
    for id in ["refused-2", "refused-3", "refused-4"] {
        assert_eq!(webhook::delivery(&store, id).expect("read"), None, "{id} was recorded");
    }
}

/// POSTs a signed `body` with its Content-Length and returns the status, tolerating the server closing
/// the connection before the whole body is sent (a 413 closes it).
fn big_post(addr: &str, secret: &str, body: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let sig = webhook::sign(secret.as_bytes(), body);
    let head = format!(
        "POST /github/webhook HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: pull_request\r\n\
         X-GitHub-Delivery: refused-4\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send head");
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let head = String::from_utf8_lossy(&raw);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status code")
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length), signed with nothing; returns the
/// status. The server must stop reading at its limit.
fn chunked_post(addr: &str, body: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let head = format!(
        "POST /github/webhook HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-GitHub-Event: pull_request\r\n\
         X-GitHub-Delivery: chunked-1\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("send head");
    for chunk in body.chunks(1024 * 1024) {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
            || s.write_all(chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let head = String::from_utf8_lossy(&raw);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status code")
}

#[test]
fn accepted_events_survive_kill_9() {
    let (home, secret) = home_with_secret();
    let server = home.start();
    let addr = server.http_address();
    let names = [
        "pull_request.synchronize.json",
        "merge_group.checks_requested.json",
        "check_suite.rerequested.json",
    ];
    for (i, name) in names.iter().enumerate() {
        let event = name.split('.').next().expect("event");
        let (status, json) = deliver(&addr, &secret, event, &format!("k9-{i}"), &fixture(name));
        assert_eq!(status, 202, "{name}: {json}");
    }
    // Killed right after the last 202: no clean shutdown, no chance to flush anything.
    server.signal(Signal::KILL);
    let (status, _) = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), None, "killed by a signal");

    let server = home.start();
    assert_eq!(queue_depth(&server), names.len() as u64);
    let addr = server.http_address();
    let (status, json) = deliver(&addr, &secret, "merge_group", "k9-1", &fixture(names[1]));
    assert_eq!((status, json["status"].as_str()), (200, Some("duplicate")), "delivery ids survive too");
    assert_eq!(queue_depth(&server), names.len() as u64);
    stop(server);
}

#[test]
fn without_a_secret_unsigned_deliveries_are_accepted_with_one_warning() {
    // `Home::write_config` sets `allow_insecure_webhooks = true` and no secret.
    let home = Home::new();
    home.write_config("");
    let server = home.start();
    let addr = server.http_address();
    for i in 0..2 {
        let (status, json) = post(
            &addr,
            &[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", &format!("insecure-{i}"))],
            &fixture("push.json"),
        );
        assert_eq!(status, 202, "{json}");
    }
    assert_eq!(queue_depth(&server), 2);
    let stderr = stop(server);
    assert_eq!(stderr.matches("accepting unsigned GitHub webhooks").count(), 1, "{stderr}");
}

#[test]
fn a_body_that_never_arrives_times_out_without_blocking_others() {
    let (home, secret) = home_with_secret();
    let server = home.start();
    let addr = server.http_address();
    // Promise 100 bytes, send 10.
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let head = format!(
        "POST /github/webhook HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-GitHub-Event: push\r\n\
         X-GitHub-Delivery: slow-1\r\nContent-Length: 100\r\n\r\n{{\"ref\": \"x"
    );
    slow.write_all(head.as_bytes()).expect("send head");
    let started = std::time::Instant::now();

    // Meanwhile a real delivery is served at once.
    let (status, _) = deliver(&addr, &secret, "push", "fast-1", &fixture("push.json"));
    assert_eq!(status, 202);
    assert!(started.elapsed() < Duration::from_secs(5), "blocked behind the slow body");

    // Read the answer only (the server waits for the promised bytes before closing the connection).
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(9), "timed out too early: {:?}", started.elapsed());
    assert_eq!(queue_depth(&server), 1);
    stop(server);
}
