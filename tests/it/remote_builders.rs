//! Remote builders for real: each "machine" is a real OpenSSH server (`/usr/sbin/sshd`) on 127.0.0.1 with
//! its own host key and an authorized key, in a mount and PID namespace of its own where a directory of
//! the test is bind-mounted on `/nix` (so the machine has a second, empty Nix store and database, the same
//! store paths, and a `nix.conf` of its own declaring its system features). Stopping a machine kills the
//! namespace's first process and with it every process of the machine (sshd, its sessions, the remote
//! `nix-daemon` and its builds), as a machine that dies would. The machines build without build users
//! (`build-users-group =`): they share this host's kernel and uids, and Nix kills every process of a
//! build user before and after a build, so machines with user pools of their own would kill each other's
//! builds.
//!
//! The server reaches the machines through a Nix machines file (`machines_file`), the syntax users already
//! have, with each machine's key and base64 host key in it; `NIX_SSHOPTS=-F <ssh_config>` gives ssh the
//! host alias, port and user of each machine (ports are not part of Nix 2.8's store URIs). The machines log
//! in as root (the tests run as root, and a single-user Nix store belongs to root): the authorized key
//! lives in the test's directory (`AuthorizedKeysFile`), never in `/root/.ssh`, and nothing of the host's
//! own SSH configuration is read or changed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{get_json, http_get, nonce_prelude, send_token, GitRepo, Home, FILE_JOB};
use crate::github_app::wait_for;

const SSHD: &str = "/usr/sbin/sshd";

/// Machines of one test, sharing a client key and an ssh configuration file.
pub(crate) struct Farm {
    dir: tempfile::TempDir,
}

impl Farm {
    pub(crate) fn new() -> Farm {
        assert!(Path::new(SSHD).exists(), "{SSHD} is missing: install openssh-server (.ci/run does)");
        // sshd's privilege separation directory (Debian's package makes it at boot).
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let farm = Farm { dir: tempfile::tempdir().expect("tempdir") };
        keygen(&farm.client_key());
        std::fs::write(farm.ssh_config(), "").expect("ssh_config");
        farm
    }

    pub(crate) fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// `NIX_SSHOPTS` for the server (and for our own checks).
    pub(crate) fn sshopts(&self) -> String {
        format!("-F {}", self.ssh_config().display())
    }

    /// A machine reached as `ssh-ng://<alias>`, offering `features`; not started.
    pub(crate) fn machine(&self, alias: &str, features: &[&str]) -> Machine {
        let dir = self.dir.path().join(alias);
        for sub in ["nix", "etc-nix"] {
            std::fs::create_dir_all(dir.join(sub)).expect("machine dirs");
        }
        let host_key = dir.join("host_key");
        keygen(&host_key);
        let port = free_port();
        std::fs::copy(self.client_key().with_extension("pub"), dir.join("authorized_keys"))
            .expect("authorize");
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {hk}\nAuthorizedKeysFile {dir}/authorized_keys\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPidFile {dir}/sshd.pid\nLogLevel ERROR\n",
                hk = host_key.display(),
                dir = dir.display()
            ),
        )
        .expect("sshd_config");
        std::fs::write(
            dir.join("etc-nix/nix.conf"),
            // No build users: the machines share this host's kernel and uids, and Nix kills every process
            // of a build user before and after using it, so a machine with its own user pool would kill
            // the builds of the others (and the host's) running under the same nixbld uid.
            format!(
                "sandbox = false\nbuild-users-group =\nsubstituters =\nsystem-features = {}\n",
                features.join(" ")
            ),
        )
        .expect("machine nix.conf");
        let mut cfg = std::fs::read_to_string(self.ssh_config()).expect("read ssh_config");
        cfg.push_str(&format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  HostKeyAlias {alias}\n  \
             BatchMode yes\n  StrictHostKeyChecking yes\n  ConnectTimeout 5\n"
        ));
        std::fs::write(self.ssh_config(), cfg).expect("write ssh_config");
        let pub_line = std::fs::read(host_key.with_extension("pub")).expect("host key");
        Machine { uri: format!("ssh-ng://{alias}"), dir, port, host_key_b64: base64(&pub_line), child: None }
    }

    /// A machines-file line for `m`: its URI, systems, our key, slots, speed, features, its host key.
    fn line(&self, m: &Machine, max_jobs: u32, speed: u32, features: &[&str]) -> String {
        format!(
            "{} {} {} {max_jobs} {speed} {} - {}\n",
            m.uri,
            system(),
            self.client_key().display(),
            if features.is_empty() { "-".to_string() } else { features.join(",") },
            m.host_key_b64
        )
    }
}

/// One sshd "machine" with its own `/nix`.
pub(crate) struct Machine {
    pub(crate) uri: String,
    pub(crate) dir: PathBuf,
    port: u16,
    pub(crate) host_key_b64: String,
    child: Option<Child>,
}

impl Machine {
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.uri);
        let d = self.dir.display();
        let script = format!(
            "mount --bind {d}/nix /nix && mount --bind {d}/etc-nix /etc/nix && exec {SSHD} -D -e -f {d}/sshd_config"
        );
        let child = Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn unshare sshd");
        self.child = Some(child);
        let port = self.port;
        wait_for("sshd to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()));
    }

    /// Kills the machine: every process in its namespace dies with sshd.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let port = self.port;
        wait_for("sshd to stop listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err().then_some(())
        });
    }

    /// Whether `path` is valid in the machine's own store (read from its database on disk).
    pub(crate) fn has_valid(&self, path: &str) -> bool {
        let store = format!("local?root={}", self.dir.display());
        Command::new("nix-store")
            .args(["--store", &store, "--check-validity", path])
            .env("NIX_CONFIG", "substituters =")
            .stderr(Stdio::null())
            .status()
            .expect("nix-store --check-validity")
            .success()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "eka-ci-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A free port for a builder's sshd, below Linux's ephemeral range (32768–60999). Every other listener
/// of the tests binds port 0 and gets an ephemeral port, so a builder's port that `stop` frees cannot be
/// taken by another test before `start` binds it again (which once left a restarted builder "down" for
/// good: its port answered, but not as its sshd). Ports are handed out once per test process.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Test processes running at once start at different places in 20000..32000.
    let start = 20_000 + (std::process::id() % 240) * 50;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = u16::try_from(20_000 + (start - 20_000 + n) % 12_000).expect("a port");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
        assert!(n < 12_000, "no free port in 20000..32000");
    }
}

fn system() -> String {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--expr", "builtins.currentSystem", "--json"])
        .output()
        .expect("nix-instantiate");
    serde_json::from_slice::<String>(&out.stdout).expect("system")
}

/// Writes the machines file and the configuration, and starts the server with `NIX_SSHOPTS`.
fn start_server(home: &Home, farm: &Farm, machines: &str) -> crate::common::Server {
    let file = home.path().join("machines");
    std::fs::write(&file, machines).expect("machines file");
    home.write_config(&format!(
        "machines_file = \"{}\"\n\n[builders]\nlocal_max_jobs = 2\nhealth_check_interval_seconds = 2\n\
         health_check_timeout_seconds = 10\n",
        file.display()
    ));
    home.start_with(&[("NIX_SSHOPTS", std::ffi::OsStr::new(&farm.sshopts()))])
}

/// The repository: `default.nix` holding `body` (with `mk name script deps` and `remote name script`, a
/// derivation requiring the feature `feature`).
fn repo_with(nonce: &str, head_body: &str) -> (GitRepo, String, String) {
    let p = nonce_prelude(nonce);
    let lib = r#"
  withFeature = feature: name: script: deps: derivation {
    inherit name nonce deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    requiredSystemFeatures = [ feature ];
  };"#;
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(FILE_JOB)), ("default.nix", Some(&format!("{p} {{ }}")))],
    );
    let head_nix = format!("{p} let {lib}\n in rec {{\n{head_body}\n}}");
    let head = repo.commit("head", &[("default.nix", Some(&head_nix))]);
    (repo, base, head)
}

/// The derivation path of `attr` of the repository's `default.nix` (the same expression the server
/// evaluates gives the same path).
fn drv_of(repo: &GitRepo, attr: &str) -> String {
    let out = Command::new("nix-instantiate")
        .arg(repo.path().join("default.nix"))
        .args(["-A", attr])
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("nix-instantiate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().expect("drv").trim().to_string()
}

fn output_of(drv: &str) -> String {
    let out = Command::new("nix-store").args(["-q", "--outputs", drv]).output().expect("nix-store -q");
    String::from_utf8_lossy(&out.stdout).lines().next().expect("output").trim().to_string()
}

fn locally_valid(path: &str) -> bool {
    Command::new("nix-store")
        .args(["--check-validity", path])
        .stderr(Stdio::null())
        .status()
        .expect("nix-store")
        .success()
}

fn drv_json(addr: &str, drv: &str) -> Value {
    try_drv_json(addr, drv).unwrap_or_else(|| panic!("{drv} is not known to the server"))
}

/// `/v1/drvs/{drv}`, or `None` while the review has not evaluated it yet.
fn try_drv_json(addr: &str, drv: &str) -> Option<Value> {
    let (code, v) = get_json(addr, &format!("/v1/drvs/{}", drv.trim_start_matches("/nix/store/")));
    match code {
        200 => Some(v),
        404 => None,
        _ => panic!("{drv}: {code} {v}"),
    }
}

/// Waits until `drv`'s state is `state` (the last answer in the panic message otherwise).
fn wait_state(addr: &str, drv: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = try_drv_json(addr, drv);
        if let Some(v) = v.as_ref().filter(|v| v["state"]["name"] == state) {
            return v.clone();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {drv} to be {state}; last: {v:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn builder<'a>(builders: &'a Value, name: &str) -> &'a Value {
    builders["builders"]
        .as_array()
        .expect("builders")
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no builder {name} in {builders}"))
}

pub(crate) fn metric(addr: &str, line_start: &str) -> Option<String> {
    let (_, _, body) = http_get(addr, "/metrics");
    String::from_utf8_lossy(&body).lines().find(|l| l.starts_with(line_start)).map(str::to_string)
}

#[test]
fn builds_run_on_the_remote_store_logs_come_back_and_failures_are_failures() {
    let farm = Farm::new();
    let mut b1 = farm.machine("b1", &["eka-remote"]);
    b1.start();
    let n = crate::common::nonce();
    let (repo, base, head) = repo_with(
        &n,
        r#"  dep = mk "dep" "echo built-here > $out" [];
  ok = withFeature "eka-remote" "ok" "echo hello-from-the-machine; read x < ${dep}; echo $x > $out" [ dep ];
  bad = withFeature "eka-remote" "bad" "echo about-to-fail >&2; exit 3" [];"#,
    );
    let home = Home::new();
    let machines = format!("# the build farm\n{}", farm.line(&b1, 2, 1, &["eka-remote"]));
    let server = start_server(&home, &farm, &machines);
    let addr = server.http_address();
    send_token(Some(&home.token("reader", "read")));

    let out = home.review(&repo, &base, &head);
    let report = crate::common::json(&out);
    let job = &report["jobs"][0];
    assert_eq!(crate::common::attr(job, "ok")["head"]["state"], "success", "{report}");
    assert_eq!(crate::common::attr(job, "bad")["head"]["state"], "failure", "{report}");
    assert_eq!(out.status.code(), Some(1), "a failure on the machine fails the review");

    // Built on the machine: the output is valid in its store (with the dependency copied to it), and
    // copied back here.
    let ok = drv_of(&repo, "ok");
    let ok_out = output_of(&ok);
    assert!(b1.has_valid(&ok_out), "{ok_out} is not valid on the machine");
    assert!(b1.has_valid(&output_of(&drv_of(&repo, "dep"))), "the input was copied to the machine");
    assert!(locally_valid(&ok_out), "{ok_out} was not copied back");
    let v = drv_json(&addr, &ok);
    assert_eq!(v["attempts"][0]["builder"], "ssh-ng://b1", "{v}");
    assert_eq!(v["attempts"][0]["outcome"], "success", "{v}");
    // Its log came back from the machine.
    let (code, _, log) = http_get(&addr, &format!("/v1/logs/{}", ok.trim_start_matches("/nix/store/")));
    assert_eq!(code, 200);
    assert!(
        String::from_utf8_lossy(&log).contains("hello-from-the-machine"),
        "{}",
        String::from_utf8_lossy(&log)
    );

    // A failure there is a failure here: retried once, then final, with the machine's log.
    let bad = drv_of(&repo, "bad");
    let v = drv_json(&addr, &bad);
    assert_eq!(v["state"]["name"], "failure", "{v}");
    assert_eq!(v["attempts"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["attempts"].as_array().expect("attempts").iter().all(|a| a["builder"] == "ssh-ng://b1"), "{v}");
    let (_, _, log) = http_get(&addr, &format!("/v1/logs/{}", bad.trim_start_matches("/nix/store/")));
    assert!(String::from_utf8_lossy(&log).contains("about-to-fail"), "{}", String::from_utf8_lossy(&log));

    // The builder is up everywhere it is shown.
    let (code, builders) = get_json(&addr, "/v1/builders");
    assert_eq!(code, 200, "{builders}");
    let b = builder(&builders, "ssh-ng://b1");
    assert_eq!(
        (b["health"].as_str(), b["max_jobs"].as_u64(), b["kind"].as_str()),
        (Some("up"), Some(2), Some("remote"))
    );
    assert_eq!(builder(&builders, "local")["health"], "up");
    assert_eq!(
        metric(&addr, "eka_ci_builder_up{builder=\"ssh-ng://b1\"}").as_deref(),
        Some("eka_ci_builder_up{builder=\"ssh-ng://b1\"} 1")
    );
    // Builders name the infrastructure: never shown without a token.
    send_token(None);
    assert_eq!(http_get(&addr, "/v1/builders").0, 401);
    // The key is never shown: its path is configuration, its contents appear nowhere.
    let key = std::fs::read_to_string(farm.client_key()).expect("key");
    let secret_line = key.lines().nth(1).expect("key body");
    let (_, stderr) = server.stop();
    assert!(!stderr.contains(secret_line), "the SSH key leaked into the server's log");
}

#[test]
fn a_down_builder_gets_no_work_its_work_goes_elsewhere_or_waits_and_it_comes_back() {
    let farm = Farm::new();
    let mut up = farm.machine("up1", &["eka-shared"]);
    let mut down = farm.machine("down1", &["eka-shared", "eka-only-down"]);
    up.start();
    let n = crate::common::nonce();
    let (repo, base, head) = repo_with(
        &n,
        r#"  shared = withFeature "eka-shared" "shared" "echo shared > $out" [];
  only = withFeature "eka-only-down" "only" "echo only > $out" [];"#,
    );
    let home = Home::new();
    // The down machine is preferred (speed 10) for what both can build.
    let machines = format!(
        "{}{}",
        farm.line(&down, 1, 10, &["eka-shared", "eka-only-down"]),
        farm.line(&up, 1, 1, &["eka-shared"])
    );
    let server = start_server(&home, &farm, &machines);
    let addr = server.http_address();
    send_token(Some(&home.token("reader", "read")));

    // Probed at start-up: shown down in ekaci status, /v1/builders and the metrics.
    let builders = wait_for("the down builder to be probed", || {
        let (_, b) = get_json(&addr, "/v1/builders");
        (builder(&b, "ssh-ng://down1")["health"] == "down" && builder(&b, "ssh-ng://up1")["health"] == "up")
            .then_some(b)
    });
    let d = builder(&builders, "ssh-ng://down1");
    assert!(!d["reason"].as_str().unwrap_or("").is_empty(), "{d}");
    assert!(d["failed_probes"].as_u64().unwrap_or(0) >= 1, "{d}");
    let status = server.status();
    let shown = status["builders"].as_array().expect("status builders");
    assert!(
        shown.iter().any(|b| b["name"] == "ssh-ng://down1" && b["health"].get("Down").is_some()),
        "{status}"
    );
    let text = home.ekaci(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("ssh-ng://down1") && text.contains("DOWN ("), "{text}");
    assert_eq!(
        metric(&addr, "eka_ci_builder_up{builder=\"ssh-ng://down1\"}").as_deref(),
        Some("eka_ci_builder_up{builder=\"ssh-ng://down1\"} 0")
    );

    let mut review = home.spawn_review(&repo, &base, &head);
    // What the up machine can build goes there; what only the down one can build waits, saying why.
    let shared = drv_of(&repo, "shared");
    let only = drv_of(&repo, "only");
    wait_state(&addr, &shared, "success");
    assert_eq!(drv_json(&addr, &shared)["attempts"][0]["builder"], "ssh-ng://up1");
    assert!(up.has_valid(&output_of(&shared)));
    let v = wait_for("only to wait with a reason", || {
        try_drv_json(&addr, &only).filter(|v| v["waiting"].is_string())
    });
    assert_eq!(v["state"]["name"], "buildable", "{v}");
    assert_eq!(v["waiting"], "no builder available: ssh-ng://down1 down", "{v}");
    assert_eq!(v["attempts"].as_array().map(Vec::len), Some(0), "{v}");
    let listed = home.ekaci(&["builds", "--state", "buildable"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&only) && listed.contains("no builder available: ssh-ng://down1 down"),
        "{listed}"
    );

    // It comes back: the next probe (backoff of at most the 2 s interval) finds it, and the work runs there.
    down.start();
    wait_state(&addr, &only, "success");
    let v = drv_json(&addr, &only);
    assert_eq!(v["attempts"][0]["builder"], "ssh-ng://down1", "{v}");
    assert!(v["waiting"].is_null(), "{v}");
    assert!(down.has_valid(&output_of(&only)));
    let (_, b) = get_json(&addr, "/v1/builders");
    assert_eq!(builder(&b, "ssh-ng://down1")["health"], "up");
    let status = review.wait().expect("review");
    assert!(status.success(), "the review passes once everything is built");
}

#[test]
fn a_builder_lost_mid_build_requeues_the_build_which_finishes_elsewhere() {
    let farm = Farm::new();
    let mut fast = farm.machine("fast", &["eka-shared"]);
    let mut slow = farm.machine("slow", &["eka-shared"]);
    fast.start();
    slow.start();
    let n = crate::common::nonce();
    let (repo, base, head) = repo_with(
        &n,
        r#"  long = withFeature "eka-shared" "long" "i=0; while [ $i -lt 6 ]; do echo tick $i; i=$((i+1)); /bin/sleep 0.5; done; echo done > $out" [];"#,
    );
    let home = Home::new();
    let machines =
        format!("{}{}", farm.line(&fast, 1, 10, &["eka-shared"]), farm.line(&slow, 1, 1, &["eka-shared"]));
    let server = start_server(&home, &farm, &machines);
    let addr = server.http_address();
    send_token(Some(&home.token("reader", "read")));
    wait_for("both builders up", || {
        let (_, b) = get_json(&addr, "/v1/builders");
        (builder(&b, "ssh-ng://fast")["health"] == "up" && builder(&b, "ssh-ng://slow")["health"] == "up")
            .then_some(())
    });

    let mut review = home.spawn_review(&repo, &base, &head);
    let long = drv_of(&repo, "long");
    let log_path = format!("/v1/logs/{}", long.trim_start_matches("/nix/store/"));
    // The log streams back while the build runs on `fast`; then the machine dies under it.
    wait_for("the build's first lines from fast", || {
        let v = try_drv_json(&addr, &long)?;
        let building = v["state"]["name"] == "building" && v["attempts"][0]["builder"] == "ssh-ng://fast";
        let (code, _, log) = http_get(&addr, &log_path);
        (building && code == 200 && String::from_utf8_lossy(&log).contains("tick 0")).then_some(())
    });
    let lost_at = Instant::now();
    fast.stop();

    // Requeued, not failed: it finishes on the other machine.
    wait_state(&addr, &long, "success");
    assert!(lost_at.elapsed() < Duration::from_secs(60));
    let v = drv_json(&addr, &long);
    let attempts = v["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{v}");
    assert_eq!(
        (attempts[0]["builder"].as_str(), attempts[0]["outcome"].as_str()),
        (Some("ssh-ng://fast"), Some("builder-lost")),
        "{v}"
    );
    assert_eq!(
        (attempts[1]["builder"].as_str(), attempts[1]["outcome"].as_str()),
        (Some("ssh-ng://slow"), Some("success")),
        "{v}"
    );
    // The history shows the lost attempt, and no failure.
    let history = v["history"].as_array().expect("history");
    let lost = history
        .iter()
        .find(|h| h["state"]["name"] == "failed-retry")
        .unwrap_or_else(|| panic!("no lost attempt in {v}"));
    assert!(
        lost["state"]["message"].as_str().unwrap_or("").starts_with("builder lost: ssh-ng://fast: "),
        "{lost}"
    );
    assert!(lost["note"].as_str().unwrap_or("").contains("not a build failure"), "{lost}");
    assert!(history.iter().all(|h| h["state"]["name"] != "failure"), "{v}");
    assert!(slow.has_valid(&output_of(&long)) && locally_valid(&output_of(&long)));

    // The lost machine is down until it answers again, then up.
    let (_, b) = get_json(&addr, "/v1/builders");
    let f = builder(&b, "ssh-ng://fast");
    assert_eq!(f["health"], "down", "{f}");
    fast.start();
    wait_for("fast to be up again", || {
        let (_, b) = get_json(&addr, "/v1/builders");
        (builder(&b, "ssh-ng://fast")["health"] == "up").then_some(())
    });
    assert!(review.wait().expect("review").success());
}
