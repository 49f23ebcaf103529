//! The HTTP server's limits against the real server: slow clients holding connections do not block a
//! signed webhook delivery (the webhook reserve), a huge body gets 413 and the connection is closed, an
//! oversized head gets 431, and a head that never finishes is closed after `[web] header_timeout_seconds`.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{http_get, Home, Server};
use eka_ci::forge::github::webhook;

fn start(web: &str) -> (Home, Server, String) {
    let (home, secret) = crate::github_webhook::home_with_secret_and_web(web);
    let server = home.start();
    (home, server, secret)
}

fn metrics_text(addr: &str) -> String {
    String::from_utf8_lossy(&http_get(addr, "/metrics").2).into_owned()
}

fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// Reads until the server closes the connection (a reset after its answer counts as closed too).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return raw,
            Err(e) => panic!("the server did not close the connection: {e} (read {raw:?})"),
        }
    }
}

/// Whether the server has neither answered nor closed `s` (a non-blocking read would block).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 1];
    let open = matches!((&*s).read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).expect("blocking");
    open
}

fn signed_delivery(addr: &str, secret: &str, delivery: &str) -> u16 {
    let body = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github/pull_request.opened.json"),
    )
    .expect("fixture");
    let sig = webhook::sign(secret.as_bytes(), &body);
    let mut s = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST /github/webhook HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {sig}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&body).expect("body");
    status_of(&read_until_closed(&mut s))
}

#[test]
fn slow_clients_do_not_block_a_signed_delivery() {
    let (home, server, secret) = start(
        "max_connections = 40\nwebhook_reserved_connections = 10\nheader_timeout_seconds = 300\n\
         body_idle_timeout_seconds = 300",
    );
    let addr = server.http_address();
    // 25 clients that never finish their head, and 10 on the webhook route that send their headers and
    // one body byte of a large body, then stall: 35 of the 40 connections.
    let mut slow = Vec::new();
    for _ in 0..25 {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("partial head");
        slow.push(s);
    }
    // Connections are counted when accepted: wait until the server holds these 25 (and the scrape).
    while !metrics_text(&addr).contains("eka_ci_http_connections_open 26") {
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..10 {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let head = format!(
            "POST /github/webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: pull_request\r\n\
             X-GitHub-Delivery: slow-{i}\r\nContent-Length: 100000\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).expect("head and one byte");
        slow.push(s);
    }
    // Once more than 30 are open, ordinary requests are refused: only webhook deliveries may use the
    // reserve.
    while http_get(&addr, "/healthz").0 != 503 {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Outside the reserve, an ordinary request is refused; a signed delivery is still answered, while
    // every slow client still holds its connection.
    assert_eq!(signed_delivery(&addr, &secret, "fast-1"), 202);
    for (i, s) in slow.iter().enumerate() {
        assert!(still_open(s), "slow client {i} was answered or closed before the delivery was");
    }
    drop(slow);
    let _ = server.stop();
    let store = eka_ci::store::Store::open(&home.db()).expect("reopen");
    assert!(webhook::delivery(&store, "fast-1").expect("read").is_some(), "the delivery was persisted");
}

#[test]
fn oversized_requests_are_refused_and_closed() {
    let (_home, server, _secret) = start("");
    let addr = server.http_address();

    // A declared body of 100 MB: 413, and the connection is closed without reading the body.
    for path in ["/github/webhook", "/v1/github/approve"] {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: pull_request\r\nX-GitHub-Delivery: big\r\n\
             Content-Length: 100000000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("head");
        let _ = s.write_all(&vec![b' '; 64 * 1024]);
        let raw = read_until_closed(&mut s);
        assert_eq!(status_of(&raw), 413, "{path}: {}", String::from_utf8_lossy(&raw));
    }

    // A header line of 20 KiB, and 200 header lines: 431, closed.
    let mut s = TcpStream::connect(&addr).expect("connect");
    let long = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n", "a".repeat(20 * 1024));
    let _ = s.write_all(long.as_bytes());
    assert_eq!(status_of(&read_until_closed(&mut s)), 431);
    let mut s = TcpStream::connect(&addr).expect("connect");
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let _ = s.write_all(many.as_bytes());
    assert_eq!(status_of(&read_until_closed(&mut s)), 431);

    // The server is fine, and keep-alive still works for ordinary requests.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("two requests");
    let raw = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let _ = server.stop();
}

#[test]
fn an_unfinished_head_is_closed_after_the_header_timeout() {
    let (_home, server, _secret) = start("header_timeout_seconds = 1");
    let addr = server.http_address();
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("partial head");
    let raw = read_until_closed(&mut s);
    assert_eq!(status_of(&raw), 408, "{}", String::from_utf8_lossy(&raw));
    assert!(
        metrics_text(&addr).contains("eka_ci_http_connections_refused_total{reason=\"header_timeout\"} 1"),
        "the timeout is counted"
    );
    let _ = server.stop();
}
