//! The webhook intake benchmark's load generator (`scripts/bench/intake`, docs/benchmarks.md): posts
//! signed `pull_request` deliveries over keep-alive connections, each from its own thread, and prints
//! the deliveries per second and the p50/p99 answer times. A compiled client leaves the cores to the
//! server (a Python client took up to one of the two).
//!
//! Usage: `intake_load PORT SECRET_FILE BODY_FILE DELIVERIES WORKERS PREFIX`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Mac, NewMac};

fn request(body: &[u8], signature: &str, delivery: &str) -> Vec<u8> {
    let head = format!(
        "POST /github/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {signature}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut r = head.into_bytes();
    r.extend_from_slice(body);
    r
}

/// Reads one response from `stream`; returns its status. `buf` keeps bytes read past it.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + length);
    Ok(status)
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(s)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, secret_file, body_file, deliveries, workers, prefix] = args.as_slice() else {
        return Err("usage: intake_load PORT SECRET_FILE BODY_FILE DELIVERIES WORKERS PREFIX".into());
    };
    let port: u16 = port.parse()?;
    let secret = std::fs::read_to_string(secret_file)?;
    let body = std::fs::read(body_file)?;
    let (n, workers): (usize, usize) = (deliveries.parse()?, workers.parse()?);
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_varkey(secret.trim().as_bytes()).map_err(|_| "bad secret")?;
    mac.update(&body);
    let signature: String =
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>();
    let signature = format!("sha256={signature}");
    // Built before the clock starts: the client's cost per delivery is a write and a read.
    let requests: Arc<Vec<Vec<u8>>> =
        Arc::new((0..n).map(|i| request(&body, &signature, &format!("{prefix}-{i}"))).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new((Vec::with_capacity(n), 0usize)));
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (requests, next, results) = (requests.clone(), next.clone(), results.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut stream = connect(port)?;
                let mut buf = Vec::new();
                let (mut times, mut failed) = (Vec::new(), 0usize);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = requests.get(i) else { break };
                    let t = Instant::now();
                    let status = stream.write_all(req).and_then(|()| read_response(&mut stream, &mut buf));
                    times.push(t.elapsed());
                    match status {
                        Ok(202) => {}
                        Ok(_) => failed += 1,
                        Err(_) => {
                            failed += 1;
                            stream = connect(port)?;
                            buf.clear();
                        }
                    }
                }
                let mut r = results.lock().map_err(|_| std::io::Error::other("poisoned"))?;
                r.0.extend(times);
                r.1 += failed;
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a worker panicked")??;
    }
    let wall = started.elapsed().as_secs_f64();
    let mut r = results.lock().map_err(|_| "poisoned")?;
    r.0.sort();
    let pct = |p: f64| {
        let i = ((r.0.len() as f64 * p) as usize).min(r.0.len().saturating_sub(1));
        r.0.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{n} deliveries in {wall:.2} s = {:.0}/s; p50 {:.1} ms, p99 {:.1} ms; non-202: {}",
        n as f64 / wall,
        pct(0.5),
        pct(0.99),
        r.1
    );
    Ok(())
}
