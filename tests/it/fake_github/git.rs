//! The fake GitHub's git host: git's smart HTTP protocol over TLS on 127.0.0.1, served by the real
//! `git http-backend` (as CGI), with GitHub's rules for private repositories: every request must carry
//! `Authorization: Basic base64(x-access-token:TOKEN)` with an installation token the fake GitHub issued
//! and that has not expired, otherwise 401 with a `WWW-Authenticate: Basic` challenge.
//!
//! The certificate is generated per host (rcgen) for `127.0.0.1` and `localhost`; [`GitHost::ca_file`]
//! is its PEM, to hand to git as `GIT_SSL_CAINFO`. Repositories are published under `owner/name.git`,
//! and like GitHub's, any reachable commit can be fetched by id.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{accept_loop, read_http_request, token_valid, FakeGitHub, State};

/// One request the git host answered.
#[derive(Debug, Clone)]
pub struct GitRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The decoded Basic credentials (`user:password`), if any were sent.
    pub credentials: Option<String>,
    pub status: u16,
}

/// A running git host; stops when dropped.
pub struct GitHost {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    requests: Arc<Mutex<Vec<GitRequest>>>,
    stop: Arc<AtomicBool>,
}

impl FakeGitHub {
    /// Serves `repos` (`("owner/name", path to a git repository)`) over HTTPS, with this fake's
    /// installation tokens as the only accepted credentials.
    pub fn git_host(&self, repos: &[(&str, &Path)]) -> GitHost {
        let dir = tempfile::tempdir().expect("git host directory");
        for (name, path) in repos {
            let link = dir.path().join("repos").join(format!("{name}.git"));
            std::fs::create_dir_all(link.parent().expect("parent")).expect("owner directory");
            std::os::unix::fs::symlink(path, &link).expect("publish repository");
        }
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("generate a certificate");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write the certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key)
            .expect("TLS configuration");
        let tls = Arc::new(tls);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the git host");
        let addr = listener.local_addr().expect("local address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (state, root, reqs) = (self.server.state.clone(), dir.path().join("repos"), requests.clone());
        accept_loop(listener, stop.clone(), move |conn| {
            let (tls, state, root, reqs) = (tls.clone(), state.clone(), root.clone(), reqs.clone());
            move || serve(conn, tls, &state, &root, &reqs)
        });
        GitHost { addr, dir, requests, stop }
    }
}

impl GitHost {
    /// `https://127.0.0.1:PORT/owner/name.git`.
    pub fn clone_url(&self, name: &str) -> String {
        format!("https://{}/{name}.git", self.addr)
    }

    /// The same repository under the name `localhost`: same server, a different host name.
    pub fn clone_url_as_localhost(&self, name: &str) -> String {
        format!("https://localhost:{}/{name}.git", self.addr.port())
    }

    /// The certificate to trust (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<GitRequest> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for GitHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    conn: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    state: &Mutex<State>,
    root: &Path,
    requests: &Mutex<Vec<GitRequest>>,
) {
    let Ok(session) = rustls::ServerConnection::new(tls) else { return };
    let mut reader = BufReader::new(rustls::StreamOwned::new(session, conn));
    let Some((method, target, headers, body)) = read_http_request(&mut reader) else { return };
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let credentials = header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64_decode(b.trim()))
        .and_then(|b| String::from_utf8(b).ok());
    let authorized =
        credentials.as_deref().and_then(|c| c.strip_prefix("x-access-token:")).is_some_and(|t| {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            token_valid(&st, t)
        });
    let (status, response_headers, response_body) = if authorized {
        http_backend(root, &method, &target, &headers, &body)
    } else {
        let body = br#"{"message":"Requires authentication"}"#.to_vec();
        (401, vec![("WWW-Authenticate".to_string(), "Basic realm=\"GitHub\"".to_string())], body)
    };
    requests.lock().unwrap_or_else(|p| p.into_inner()).push(GitRequest {
        method,
        target,
        credentials,
        status,
    });
    let stream = reader.get_mut();
    let mut head = format!("HTTP/1.1 {status} {}\r\n", if status < 400 { "OK" } else { "Error" });
    for (k, v) in &response_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", response_body.len()));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&response_body);
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

/// Runs `git http-backend` for one request (CGI/1.1); returns status, headers and body.
fn http_backend(
    root: &Path,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        // GitHub lets any reachable commit be fetched by id.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "uploadpack.allowReachableSHA1InWant")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in headers {
        match k.as_str() {
            "content-type" => cmd.env("CONTENT_TYPE", v),
            "content-length" | "transfer-encoding" | "authorization" => continue,
            other => cmd.env(format!("HTTP_{}", other.to_ascii_uppercase().replace('-', "_")), v),
        };
    }
    let Ok(mut child) = cmd.spawn() else { return (500, Vec::new(), b"cannot run git".to_vec()) };
    let mut stdin = child.stdin.take().expect("stdin");
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut out = Vec::new();
    let _ = child.stdout.take().expect("stdout").read_to_end(&mut out);
    let _ = writer.join();
    let _ = child.wait();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else { return (500, Vec::new(), out) };
    let mut status = 200;
    let mut response_headers = Vec::new();
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        if k.eq_ignore_ascii_case("status") {
            status = v.trim().split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
        } else {
            response_headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, response_headers, out[end + sep..].to_vec())
}

/// Standard base64 (with or without padding); `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
