//! `GET /v1/ws/builds` end to end: a real server building a real derivation that prints lines until a
//! gate file exists, and WebSocket clients written here over raw TCP (masking their frames themselves):
//! a subscriber gets `build_state_change` and `log_line` events of its derivation, a client subscribed to
//! another derivation gets none, a client that never reads is dropped and counted while the others go on,
//! malformed and oversized frames close only their own connection, and an anonymous client cannot
//! subscribe to a private derivation or to everything. Clients following a commit or a jobset (`job`)
//! get the current `job_stats_update` when subscribing, then `build_state_change` of the jobset's builds
//! and coalesced `job_stats_update`s; unsubscribing stops them; an anonymous client cannot follow a
//! private repository's commit or jobset.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{http_get, Home, NIX_PRELUDE};
use serde_json::{json, Value};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455's example: the accept value for [`KEY`].
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

struct Ws {
    s: TcpStream,
}

/// Connects with a receive buffer of `rcvbuf` bytes when given (set before connecting, so the window
/// stays small).
fn tcp(addr: &str, rcvbuf: Option<usize>) -> TcpStream {
    let sock: std::net::SocketAddr = addr.parse().expect("socket address");
    let Some(size) = rcvbuf else { return TcpStream::connect(sock).expect("connect") };
    let fd = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::STREAM, None)
        .expect("socket");
    rustix::net::sockopt::set_socket_recv_buffer_size(&fd, size).expect("SO_RCVBUF");
    rustix::net::connect(&fd, &sock).expect("connect");
    TcpStream::from(fd)
}

/// The handshake; `Err((status, head and body))` when the server refuses.
fn connect_with(addr: &str, token: Option<&str>, rcvbuf: Option<usize>) -> Result<Ws, (u16, String)> {
    let mut s = tcp(addr, rcvbuf);
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "GET /v1/ws/builds HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).expect("send handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("read handshake"), 1, "closed during the handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("UTF-8 head");
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    if status != 101 {
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        return Err((status, format!("{head}{body}")));
    }
    assert!(head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")), "{head}");
    Ok(Ws { s })
}

fn connect(addr: &str, token: Option<&str>) -> Ws {
    connect_with(addr, token, None).unwrap_or_else(|(code, text)| panic!("refused with {code}: {text}"))
}

impl Ws {
    /// Sends one frame, masked (`mask: false` sends it unmasked, which the server must refuse).
    fn send_frame(&mut self, opcode: u8, payload: &[u8], mask: bool) {
        let mut out = vec![0x80 | opcode];
        let bit = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(bit | n as u8),
            n if n <= 0xffff => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if mask {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.s.write_all(&out).expect("send frame");
    }

    fn send(&mut self, v: Value) {
        self.send_frame(0x1, v.to_string().as_bytes(), true);
    }

    /// The next frame; `None` at end of stream.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are never masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).ok()?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).ok()?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).expect("length")];
        self.s.read_exact(&mut payload).ok()?;
        Some((h[0] & 0x0f, payload))
    }

    /// The next text message.
    fn recv(&mut self) -> Value {
        loop {
            let (op, payload) = self.frame().expect("connection closed");
            match op {
                0x1 => return serde_json::from_slice(&payload).expect("JSON event"),
                0x9 | 0xA => continue,
                other => panic!("unexpected frame {other:#x}: {}", String::from_utf8_lossy(&payload)),
            }
        }
    }

    /// Reads until the answer of type `kind`, returning it and the events before it.
    fn until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let v = self.recv();
            if v["type"] == kind {
                return (v, before);
            }
            before.push(v);
        }
    }

    /// Reads to the close frame (skipping messages) and returns its code, then expects the end of stream.
    fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.frame() {
                Some((0x8, p)) => {
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    let mut rest = Vec::new();
                    let _ = self.s.read_to_end(&mut rest);
                    return code;
                }
                Some(_) => continue,
                None => return None,
            }
        }
    }
}

fn metric(addr: &str, name: &str) -> f64 {
    let (code, _, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    let text = String::from_utf8(body).expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn live_build_events_over_a_websocket() {
    let nonce = common::nonce();
    let home = Home::new();
    let server = home.start();
    let addr = server.http_address();
    let token = home.token("ws-test", "read");
    common::send_token(Some(&token));

    // Refused before any upgrade: a wrong token, and a request that is not an upgrade.
    let (code, text) = connect_with(&addr, Some("not-a-token"), None).err().expect("a bad token is refused");
    assert_eq!(code, 401, "{text}");
    let (code, _, _) = http_get(&addr, "/v1/ws/builds");
    assert_eq!(code, 400);

    let gate = std::env::temp_dir().join(format!("ekaci-ws-gate-{nonce}"));
    let burst = "x".repeat(150);
    let nix = format!(
        r#"{NIX_PRELUDE}
{{
  slow = mk "slow-{nonce}" "i=0; while [ ! -e {gate} ]; do j=0; while [ $j -lt 40 ]; do echo \"tick $i $j {burst}\"; j=$((j+1)); done; i=$((i+1)); /bin/sleep 0.1; done; echo gate-open; echo slow > $out";
}}
"#,
        gate = gate.display()
    );
    let mut running = common::start_slow_build(&home, &addr, &nonce, &nix);
    let slow = running.drv.clone();

    // An anonymous client (public_read is on by default) may connect, but not read a local (private)
    // jobset's derivation nor everything.
    let mut anon = connect(&addr, None);
    anon.send(json!({ "type": "subscribe", "drv": slow }));
    let (e, _) = anon.until("error");
    assert_eq!(e["drv"], slow.as_str(), "{e}");
    anon.send(json!({ "type": "subscribe", "all": true }));
    let (e, before) = anon.until("error");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("all")), "{e}");
    assert!(before.is_empty(), "an anonymous client got events: {before:?}");

    // The subscriber, read by a thread of its own so that it never falls behind.
    let mut sub = connect(&addr, Some(&token));
    sub.send(json!({ "type": "subscribe", "drv": slow }));
    let (ack, _) = sub.until("subscribed");
    assert_eq!(ack["drv"], slow.as_str());
    let (tx, events) = mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        while let Some((op, payload)) = sub.frame() {
            if op == 0x1 && tx.send(serde_json::from_slice(&payload).expect("JSON")).is_err() {
                break;
            }
        }
    });
    let next_tick = |what: &str| loop {
        let v =
            events.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("no log line {what}"));
        assert_eq!(v["drv"], slow.as_str(), "{v}");
        if v["type"] == "log_line" && v["line"].as_str().is_some_and(|l| l.starts_with("tick ")) {
            assert_eq!(v["attempt"], 1, "{v}");
            return v;
        }
    };
    next_tick("after subscribing");

    // A client subscribed to another derivation.
    let other = format!("/nix/store/{}-other-{nonce}.drv", "a".repeat(32));
    let mut bystander = connect(&addr, Some(&token));
    bystander.send(json!({ "type": "subscribe", "drv": other }));
    bystander.until("subscribed");

    // A client that stops reading after its subscription is dropped and counted; the subscriber goes on.
    let dropped_before = metric(&addr, "eka_ci_ws_clients_dropped_total");
    let mut idle = connect_with(&addr, Some(&token), Some(4096)).expect("idle client");
    idle.send(json!({ "type": "subscribe", "drv": slow }));
    idle.until("subscribed");
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&addr, "eka_ci_ws_clients_dropped_total") <= dropped_before {
        assert!(Instant::now() < deadline, "the client that does not read was never dropped");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its connection ends (after what the buffers held).
    idle.close_code();
    next_tick("after a client was dropped");

    // A malformed frame (unmasked) and an oversized one close only their own connection.
    let mut bad = connect(&addr, Some(&token));
    bad.send_frame(0x1, br#"{"type":"ping"}"#, false);
    assert_eq!(bad.close_code(), Some(1002));
    let mut big = connect(&addr, Some(&token));
    big.send_frame(0x1, &vec![b' '; 5000], true);
    assert_eq!(big.close_code(), Some(1009));
    let mut frag = connect(&addr, Some(&token));
    frag.s.write_all(&[0x01, 0x80, 1, 2, 3, 4]).expect("send a first fragment");
    assert_eq!(frag.close_code(), Some(1003));
    next_tick("after bad frames on other connections");

    // The build finishes: its last line and its state change reach the subscriber.
    std::fs::write(&gate, b"").expect("open the gate");
    let mut saw_last_line = false;
    let mut tail = Vec::new();
    let done = loop {
        let v = events.recv_timeout(Duration::from_secs(120)).expect("no state change after the gate");
        assert_eq!(v["drv"], slow.as_str(), "{v}");
        if v["type"] == "log_line" && v["line"] == "gate-open" {
            saw_last_line = true;
        }
        // `building` may be committed after /v1/builds/active showed the build.
        if v["type"] == "build_state_change" && v["state"] != "building" {
            break v;
        }
        tail.push(v);
    };
    assert!(saw_last_line, "the last log line came after the state change {done}: {:?}", tail.last());
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["attempt"], 1, "{done}");
    assert!(done["time_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "{done}");

    // The bystander got nothing of it: its answer to a ping comes first (answers queue behind events).
    bystander.send(json!({ "type": "ping" }));
    let first = bystander.recv();
    assert_eq!(first, json!({ "type": "pong" }));
    bystander.send(json!({ "type": "unsubscribe", "drv": other }));
    assert_eq!(bystander.recv(), json!({ "type": "unsubscribed", "drv": other }));

    // A WebSocket ping is answered with a pong carrying its payload.
    bystander.send_frame(0x9, b"are you there", true);
    let pong = loop {
        match bystander.frame().expect("a pong") {
            (0x9, _) => continue,
            other => break other,
        }
    };
    assert_eq!(pong, (0xA, b"are you there".to_vec()));

    // A close frame is answered with a close frame.
    bystander.send_frame(0x8, &1000u16.to_be_bytes(), true);
    assert_eq!(bystander.close_code(), Some(1000));

    let _ = std::fs::remove_file(&gate);
    let _ = running.review.wait();
    drop(events);
    drop(server);
    let _ = reader.join();
}

/// Reads `ws` on a thread of its own, forwarding text messages.
fn forward(mut ws: Ws) -> (mpsc::Receiver<Value>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Value>();
    let handle = std::thread::spawn(move || {
        while let Some((op, payload)) = ws.frame() {
            if op == 0x1 && tx.send(serde_json::from_slice(&payload).expect("JSON")).is_err() {
                break;
            }
        }
    });
    (rx, handle)
}

#[test]
fn commit_and_job_subscriptions_over_a_websocket() {
    let nonce = common::nonce();
    let home = Home::new();
    let server = home.start();
    let addr = server.http_address();
    let token = home.token("ws-follow", "read");
    common::send_token(Some(&token));

    // `slow` builds until the gate exists; the quick ones need it, so they all build in a burst after.
    let gate = std::env::temp_dir().join(format!("ekaci-ws-follow-gate-{nonce}"));
    const QUICK: usize = 30;
    let quick: String = (0..QUICK)
        .map(|i| format!("  quick{i} = mk \"quick{i}-{nonce}\" \"echo ${{slow}} > $out\";\n"))
        .collect();
    let nix = format!(
        "{NIX_PRELUDE}let slow = mk \"slow-{nonce}\" \"while [ ! -e {gate} ]; do /bin/sleep 0.1; done; echo slow > $out\"; in\n\
         {{\n  inherit slow;\n{quick}}}\n",
        gate = gate.display()
    );
    let mut running = common::start_slow_build(&home, &addr, &nonce, &nix);
    let (slow, head) = (running.drv.clone(), running.head.clone());

    // A local repository is private: an anonymous client may not follow its commit, nor a made-up one.
    let mut anon = connect(&addr, None);
    anon.send(json!({ "type": "subscribe", "commit": head }));
    let (e, before) = anon.until("error");
    assert_eq!(e["commit"], head.as_str(), "{e}");
    assert!(before.is_empty(), "{before:?}");
    anon.send(json!({ "type": "subscribe", "commit": "0".repeat(40) }));
    let (e, _) = anon.until("error");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("not known")), "{e}");
    anon.send(json!({ "type": "subscribe", "commit": "not-a-sha" }));
    anon.until("error");

    // Following the commit: the answer, then the current counts of its jobset (the head's job).
    let mut by_commit = connect(&addr, Some(&token));
    by_commit.send(json!({ "type": "subscribe", "commit": head.to_uppercase() }));
    let (ack, _) = by_commit.until("subscribed");
    assert_eq!(ack, json!({ "type": "subscribed", "commit": head }));
    let (first, _) = by_commit.until("job_stats_update");
    assert_eq!(first["commit"], head.as_str(), "{first}");
    assert_eq!(first["job"], "main", "{first}");
    assert_eq!(first["evaluation"], "evaluated", "{first}");
    assert_eq!(first["attributes"], QUICK as u64 + 1, "{first}");
    // The quick builds wait for the slow one, whose `building` may be committed after
    // /v1/builds/active showed it.
    assert_eq!(first["counts"]["queued"], QUICK as u64, "{first}");
    let slow_state = |c: &Value| c["building"].as_u64().unwrap_or(0) + c["buildable"].as_u64().unwrap_or(0);
    assert_eq!(slow_state(&first["counts"]), 1, "the slow build: {first}");
    let jobset = first["jobset"].as_u64().expect("jobset id");

    // The anonymous client may not follow that jobset either; unknown jobsets are named.
    anon.send(json!({ "type": "subscribe", "job": jobset }));
    let (e, _) = anon.until("error");
    assert_eq!(e["job"], jobset, "{e}");
    let mut by_job = connect(&addr, Some(&token));
    by_job.send(json!({ "type": "subscribe", "job": u64::MAX }));
    let (e, _) = by_job.until("error");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("no jobset")), "{e}");
    by_job.send(json!({ "type": "subscribe", "job": jobset }));
    by_job.until("subscribed");
    let (snapshot, _) = by_job.until("job_stats_update");
    assert_eq!(snapshot["counts"], first["counts"], "{snapshot}");

    // A client that follows the commit, then stops.
    let mut stopped = connect(&addr, Some(&token));
    stopped.send(json!({ "type": "subscribe", "commit": head }));
    stopped.until("subscribed");
    stopped.send(json!({ "type": "unsubscribe", "commit": head }));
    let (ack, _) = stopped.until("unsubscribed");
    assert_eq!(ack["commit"], head.as_str(), "{ack}");

    let (commit_events, commit_reader) = forward(by_commit);
    let (job_events, job_reader) = forward(by_job);
    std::fs::write(&gate, b"").expect("open the gate");

    // Both followers see every build finish, and counts that end with all of them built.
    let watch = |events: &mpsc::Receiver<Value>, who: &str| {
        let (mut changes, mut updates, mut succeeded) = (0usize, 0usize, 0usize);
        let mut slow_done = false;
        loop {
            let v = events
                .recv_timeout(Duration::from_secs(180))
                .unwrap_or_else(|_| panic!("{who}: the builds never all finished ({succeeded} built)"));
            match v["type"].as_str() {
                Some("build_state_change") => {
                    changes += 1;
                    slow_done |= v["drv"] == slow.as_str() && v["state"] == "success";
                }
                Some("job_stats_update") => {
                    updates += 1;
                    assert_eq!(v["jobset"], jobset, "{who}: {v}");
                    succeeded = v["counts"]["success"].as_u64().unwrap_or(0) as usize;
                    if succeeded == QUICK + 1 {
                        assert_eq!(v["counts"].as_object().map(|c| c.len()), Some(1), "{who}: {v}");
                        return (changes, updates, slow_done);
                    }
                }
                _ => panic!("{who}: unexpected {v}"),
            }
        }
    };
    let (changes, updates, slow_done) = watch(&commit_events, "commit follower");
    assert!(slow_done, "the commit follower saw the slow build succeed");
    // 31 builds made at least 31 state changes; the counts came in fewer, coalesced messages.
    assert!(changes > QUICK, "{changes} state changes");
    assert!(updates < changes, "{updates} job_stats_update for {changes} state changes");
    let (_, _, slow_done) = watch(&job_events, "job follower");
    assert!(slow_done, "the job follower saw the slow build succeed");

    // The client that unsubscribed got nothing: its answer to a ping comes first.
    stopped.send(json!({ "type": "ping" }));
    assert_eq!(stopped.recv(), json!({ "type": "pong" }));
    eprintln!("commit follower: {changes} build_state_change, {updates} job_stats_update");

    let _ = std::fs::remove_file(&gate);
    let _ = running.review.wait();
    drop((commit_events, job_events));
    drop(server);
    let _ = (commit_reader.join(), job_reader.join());
}
