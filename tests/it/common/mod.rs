//! Shared test support: a real `eka-ci-server` process in a private temporary home, and helpers to talk
//! to it over its real control socket and HTTP port.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const SERVER: &str = env!("CARGO_BIN_EXE_eka-ci-server");
pub const CLI: &str = env!("CARGO_BIN_EXE_ekaci");

/// A private directory tree standing in for a user's home: XDG dirs, a config file, a socket path.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        // Searchable (not readable) by others: a server running as root starts checks' sandboxes as an
        // unprivileged user, which must reach the checks' directories under the data directory.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .expect("chmod");
        Home { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn socket(&self) -> PathBuf {
        self.path().join("run/ekaci.socket")
    }
    pub fn db(&self) -> PathBuf {
        self.path().join("data/ekaci/ekaci.redb")
    }
    pub fn config_file(&self) -> PathBuf {
        self.path().join("ekaci.toml")
    }
    /// Writes `ekaci.toml` with an ephemeral HTTP port, `/metrics` readable without a token, no webhook
    /// secret requirement, unsandboxed builds allowed (Nix runs with
    /// `sandbox = false` here), and `extra`, which comes first so that its top-level keys stay top-level (it
    /// may end with tables of its own).
    pub fn write_config(&self, extra: &str) -> PathBuf {
        self.write_config_web(extra, "metrics_public = true")
    }
    /// [`Home::write_config`] with `web` as the `[web]` keys besides the ephemeral port.
    pub fn write_config_web(&self, extra: &str, web: &str) -> PathBuf {
        let text =
            format!("{extra}\n\n[web]\nport = 0\n{web}\n\n[security]\nallow_insecure_webhooks = true\nallow_unsandboxed_builds = true\n");
        std::fs::write(self.config_file(), text).expect("write config");
        self.config_file()
    }
    /// Runs `eka-ci-server --check-config --config-file cfg` with `env` added: its exit code and stderr.
    pub fn check_config(&self, cfg: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
        let out = self
            .command(SERVER)
            .arg("--check-config")
            .arg("--config-file")
            .arg(cfg)
            .envs(env.iter().copied())
            .output()
            .expect("run eka-ci-server --check-config");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
    /// Creates API token `name` of `scope` (`read` or `admin`) with `ekaci tokens create` on the running
    /// server and returns it.
    pub fn token(&self, name: &str, scope: &str) -> String {
        let out = self.ekaci(&["tokens", "create", name, "--scope", scope]);
        assert!(out.status.success(), "ekaci tokens create: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).expect("UTF-8 token").trim().to_string();
        assert!(token.starts_with("ekaci_"), "{token}");
        token
    }
    /// A command for one of our binaries with this home's environment.
    pub fn command(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_DATA_HOME", self.path().join("data"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env("NIX_CONFIG", "substituters =")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        c
    }
    /// Starts the server with `--config-file` and waits until it answers on its control socket.
    pub fn start(&self) -> Server {
        self.start_with(&[])
    }
    /// [`Home::start`] with extra environment variables for the server.
    pub fn start_with(&self, env: &[(&str, &std::ffi::OsStr)]) -> Server {
        let cfg = if self.config_file().exists() { self.config_file() } else { self.write_config("") };
        let child = self
            .command(SERVER)
            .envs(env.iter().copied())
            .arg("--config-file")
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn eka-ci-server");
        let mut server = Server::new(child, self.socket());
        server.wait_ready();
        server
    }
    /// Runs `ekaci --socket <this home's socket> ARGS`.
    pub fn ekaci(&self, args: &[&str]) -> Output {
        self.command(CLI).arg("--socket").arg(self.socket()).args(args).output().expect("run ekaci")
    }
}

/// `rec { body }` with `mk name outputs script deps` (outputs a list such as `[ "out" "dev" ]`), every
/// name suffixed with `nonce` so that nothing is already built.
pub fn multi_output_nix(nonce: &str, body: &str) -> String {
    format!(
        r#"let
  mk = name: outputs: script: deps: derivation {{
    name = "${{name}}-{nonce}";
    inherit outputs deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  }};
in rec {{
{body}}}
"#
    )
}

/// The repository configuration most tests use: one job `main` evaluating `default.nix`.
pub const FILE_JOB: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;

/// The attribute `name` of a report's job (`ekaci review --json`).
pub fn attr<'a>(job: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    job["attrs"]
        .as_array()
        .expect("attrs")
        .iter()
        .find(|a| a["attr"] == name)
        .unwrap_or_else(|| panic!("no {name} in {job}"))
}

impl Home {
    /// The `ekaci review` command line of `head` against `base` of `repo`, plus `extra`.
    pub fn review_command(&self, repo: &GitRepo, base: &str, head: &str, extra: &[&str]) -> Command {
        let mut c = self.command(CLI);
        c.arg("--socket")
            .arg(self.socket())
            .args(["review", "--repo", &repo.path().display().to_string(), "--base", base, "--head", head])
            .args(extra);
        c
    }

    /// `ekaci SUB --repo REPO --base BASE --head HEAD EXTRA…` (`diff`, `summary`, …), run to its end.
    pub fn ekaci_change(&self, sub: &str, repo: &GitRepo, base: &str, head: &str, extra: &[&str]) -> Output {
        let repo = repo.path().display().to_string();
        let mut args = vec![sub, "--repo", &repo, "--base", base, "--head", head];
        args.extend_from_slice(extra);
        self.ekaci(&args)
    }

    /// `ekaci review --json` of `head` against `base`, run to its end.
    pub fn review(&self, repo: &GitRepo, base: &str, head: &str) -> Output {
        self.review_command(repo, base, head, &["--json"]).output().expect("run ekaci review")
    }

    /// `ekaci review` started in the background, its output discarded.
    pub fn spawn_review(&self, repo: &GitRepo, base: &str, head: &str) -> std::process::Child {
        let mut c = self.review_command(repo, base, head, &[]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c.spawn().expect("spawn ekaci review")
    }
}

/// Runs `cmd` (a server expected to exit by itself, e.g. refusing to start) and returns its exit status
/// and stderr; fails the test instead of hanging when it is still running after 60 s.
pub fn run_to_exit(mut cmd: Command) -> (ExitStatus, String) {
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let server = Server::new(child, PathBuf::new());
    server.wait(Duration::from_secs(60))
}

/// A running server process; killed (SIGKILL) on drop if the test did not stop it. Its stdout and stderr
/// are drained as it runs (a full pipe would block the server's logging, and with it the server).
pub struct Server {
    pub child: Option<Child>,
    pub socket: PathBuf,
    /// Everything the server wrote to stderr so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    drains: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Wraps a spawned server, draining its piped stdout (discarded) and stderr (kept, see [`Server::log`]).
    pub fn new(mut child: Child, socket: PathBuf) -> Server {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut drains = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            drains.push(std::thread::spawn(move || {
                let _ = std::io::copy(&mut out, &mut std::io::sink());
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            let log = log.clone();
            drains.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend_from_slice(&buf[..n]);
                }
            }));
        }
        Server { child: Some(child), socket, log, drains }
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .into_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    for d in self.drains.drain(..) {
                        let _ = d.join();
                    }
                    panic!("server exited early with {status}: {}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not open {} within 30 s", self.socket.display());
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// Waits for the process to exit (at most `timeout`) and returns its status and stderr.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("server already waited for");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = child.wait().expect("collect the exit status");
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
        (status, self.log())
    }

    /// Stops the server with SIGTERM and returns its exit status and log (stderr).
    pub fn stop(self) -> (ExitStatus, String) {
        self.signal(rustix::process::Signal::TERM);
        self.wait(Duration::from_secs(40))
    }

    /// `ekaci status --json` parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(CLI)
            .arg("--socket")
            .arg(&self.socket)
            .args(["status", "--json"])
            .output()
            .expect("run ekaci status");
        assert!(out.status.success(), "ekaci status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// The HTTP address the server reports.
    pub fn http_address(&self) -> String {
        self.status()["http_address"].as_str().expect("http_address").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

thread_local! {
    /// The token every request of this test's thread carries (see [`send_token`]).
    static TOKEN: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Makes every later request of the calling test (its thread) carry `Authorization: Bearer <token>`,
/// unless the request names its own `Authorization` header; `None` stops it.
pub fn send_token(token: Option<&str>) {
    TOKEN.with(|t| *t.borrow_mut() = token.map(str::to_string));
}

/// A minimal HTTP/1.1 client over a real TCP connection: returns (status code, headers, body).
pub fn http_get(address: &str, path: &str) -> (u16, String, Vec<u8>) {
    http_request(address, "GET", path, &[], b"")
}

pub fn http_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(address).expect("connect HTTP");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
        if let Some(token) = TOKEN.with(|t| t.borrow().clone()) {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).expect("send request");
    s.write_all(body).expect("send body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status code");
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// GET returning (status, parsed JSON body); asserts the body is JSON.
pub fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (code, head, body) = http_get(addr, path);
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{path}: {head}");
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (code, v)
}

/// A real git repository built by a test, one commit per call to [`GitRepo::commit`].
pub struct GitRepo {
    pub dir: tempfile::TempDir,
}

impl GitRepo {
    pub fn new() -> GitRepo {
        let repo = GitRepo { dir: tempfile::tempdir().expect("tempdir") };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn git(&self, args: &[&str]) -> String {
        git_in(self.path(), args)
    }
    /// Writes `files` (path, content), removes files whose content is `None`, commits, returns the SHA.
    pub fn commit(&self, message: &str, files: &[(&str, Option<&str>)]) -> String {
        for (path, content) in files {
            let full = self.path().join(path);
            match content {
                Some(c) => {
                    if let Some(parent) = full.parent() {
                        std::fs::create_dir_all(parent).expect("mkdir");
                    }
                    std::fs::write(&full, c).expect("write");
                }
                None => {
                    let _ = std::fs::remove_file(&full);
                }
            }
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// Nix helpers every fixture expression starts with: `mk name script` is a trivial derivation built by
/// /bin/sh (PATH is empty inside builds).
pub const NIX_PRELUDE: &str = r#"
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
in
"#;

/// A string unique to this call in this process and across test runs: put it into derivations so that
/// nothing is already built.
pub fn nonce() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}x{n}x{nanos:x}", std::process::id())
}

/// Like [`NIX_PRELUDE`], with `nonce` in every derivation and dependencies: `mk name script deps`.
pub fn nonce_prelude(nonce: &str) -> String {
    format!(
        r#"
let
  nonce = "{nonce}";
  mk = name: script: deps: derivation {{
    inherit name nonce deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  }};
in
"#
    )
}

/// Runs git in `dir` without any user or system configuration and returns its trimmed stdout.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=eka-ci tests",
            "-c",
            "user.email=tests@eka-ci.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A command's stdout parsed as JSON, with stdout and stderr in the panic message when it is not.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An in-process pipeline over a fresh store in `dir` (one evaluation slot): the store and the pipeline.
pub fn pipeline_in(dir: &Path) -> (eka_ci::store::Store, std::sync::Arc<eka_ci::pipeline::Pipeline>) {
    let store = eka_ci::store::Store::open(&dir.join("db.redb")).expect("store");
    let graph = eka_ci::graph::Graph::open(store.clone(), 10_000).expect("graph");
    let data = dir.join("data");
    let pipeline = eka_ci::pipeline::Pipeline::new(
        eka_ci::jobset::Jobsets::new(store.clone()),
        eka_ci::checkout::Checkouts::new(&data),
        graph,
        eka_ci::nix::eval::EvalOptions::new(data.join("gcroots-eval")),
        &data,
        &dir.join("logs"),
        1,
    );
    (store, pipeline)
}

/// A review running in the background whose derivation `slow-<nonce>` is building now.
pub struct RunningBuild {
    pub review: Child,
    pub repo: GitRepo,
    /// The `.drv` path of the building derivation.
    pub drv: String,
    /// The reviewed base and head commits.
    pub base: String,
    pub head: String,
}

/// Reviews a new repository whose head's `default.nix` is `nix` (a job with a derivation named
/// `slow-<nonce>` that keeps building) on `home`'s server at `addr`, and waits until
/// `/v1/builds/active` shows that derivation building (requests carry this thread's [`send_token`]).
pub fn start_slow_build(home: &Home, addr: &str, nonce: &str, nix: &str) -> RunningBuild {
    let repo = GitRepo::new();
    let base = repo.commit("base", &[(".eka-ci/config.json", Some(FILE_JOB)), ("default.nix", Some("{}"))]);
    let head = repo.commit("head", &[("default.nix", Some(nix))]);
    let review = home.spawn_review(&repo, &base, &head);
    let suffix = format!("-slow-{nonce}.drv");
    let deadline = Instant::now() + Duration::from_secs(180);
    let drv = loop {
        assert!(Instant::now() < deadline, "the slow build never showed up in /v1/builds/active");
        let (code, v) = get_json(addr, "/v1/builds/active");
        assert_eq!(code, 200, "{v}");
        let found = v["builds"].as_array().and_then(|b| {
            b.iter().find_map(|b| b["drv"].as_str().filter(|d| d.ends_with(&suffix)).map(str::to_string))
        });
        if let Some(d) = found {
            break d;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    RunningBuild { review, repo, drv, base, head }
}
