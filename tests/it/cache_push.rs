//! Cache pushes for real (docs/caches.md): the real server and the fake GitHub run a pull request whose
//! job names caches; real Nix builds a multi-output derivation and pushes it with `nix copy` to a
//! `file://` binary cache (signed, then substituted into a second, chroot store that trusts the key), to
//! a real sshd on 127.0.0.1 (`ssh-ng://`, the machines of `remote_builders.rs`), and to an HTTP binary
//! cache on loopback that stores Nix's PUT uploads (down at first: the push is retried, survives a
//! server crash, and lands once it is up). Cachix and attic cannot be installed here: stand-in
//! executables named `cachix` and `attic` on the server's PATH record their argv, environment and the
//! process list, and the attic one fails once (exit status 1, echoing its token) to show a failed push
//! is retried and its message redacted. Permission, fork and unknown-id rules are checked on the
//! Configure check run, and no credential appears in the server's log, the audit records, the check
//! runs, `ekaci pushes` or `ps` output. A derivation is pushed as soon as its build succeeds, while a
//! slow one of the same run still builds; one whose outputs were valid before the run goes only to a
//! cache with `push_cached`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::common::{get_json, multi_output_nix, nonce, send_token, GitRepo};
use crate::fake_cloud::FakeCloud;
use crate::github_app::{nix, pull_request, summary, wait_for, Fixture, Setup, LIB, REPO};
use crate::remote_builders::{metric, Farm};

/// A binary cache served over HTTP on loopback: GET and HEAD of stored files, PUT stores one (as Nix
/// uploads, with `Expect: 100-continue` honoured). While down, every request gets a 503.
struct HttpCache {
    port: u16,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    up: Arc<AtomicBool>,
}

impl HttpCache {
    fn start(up: bool) -> HttpCache {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cache = HttpCache { port, files: Arc::default(), up: Arc::new(AtomicBool::new(up)) };
        let (files, up) = (cache.files.clone(), cache.up.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (files, up) = (files.clone(), up.clone());
                std::thread::spawn(move || serve(stream, &files, &up));
            }
        });
        cache
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn has(&self, name: &str) -> bool {
        self.files.lock().expect("files").contains_key(name)
    }
}

fn serve(stream: TcpStream, files: &Mutex<HashMap<String, Vec<u8>>>, up: &AtomicBool) {
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) =
            (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
        let (mut length, mut expect) = (0usize, false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("expect:") && lower.contains("100-continue") {
                expect = true;
            }
        }
        if !up.load(Ordering::SeqCst) {
            let _ = out.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        if expect {
            let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let name = path.trim_start_matches('/').to_string();
        let reply: (u16, Vec<u8>) = match method.as_str() {
            "PUT" => {
                files.lock().expect("files").insert(name, body);
                (200, Vec::new())
            }
            "GET" | "HEAD" => match files.lock().expect("files").get(&name) {
                Some(b) => (200, if method == "GET" { b.clone() } else { Vec::new() }),
                None => (404, Vec::new()),
            },
            _ => (405, Vec::new()),
        };
        let head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\n\r\n", reply.0, reply.1.len());
        if out.write_all(head.as_bytes()).and_then(|()| out.write_all(&reply.1)).is_err() {
            return;
        }
    }
}

/// A stand-in for `cachix` or `attic`: records argv (one argument per line), the environment and the
/// process list of each call in `record`; with `fail_once`, the first call fails as an auth error that
/// echoes its token.
fn stand_in(bin: &Path, name: &str, record: &Path, fail_once: Option<&str>) {
    let fail = match fail_once {
        Some(var) => format!(
            "if [ ! -e '{r}/{name}.failed' ]; then : > '{r}/{name}.failed'; echo \"401 Unauthorized: token ${var} rejected\" >&2; exit 1; fi\n",
            r = record.display()
        ),
        None => String::new(),
    };
    let script = format!(
        "#!/bin/sh\n{fail}i=$(date +%s%N)\nprintf '%s\\n' \"$@\" > '{r}/{name}.argv.'$i\nenv > '{r}/{name}.env.'$i\nps -eo args > '{r}/{name}.ps.'$i\nexit 0\n",
        r = record.display()
    );
    let path = bin.join(name);
    std::fs::write(&path, script).expect("stand-in");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The records of `name`'s successful calls: (argv, env, ps).
fn calls(record: &Path, name: &str) -> Vec<(Vec<String>, String, String)> {
    let mut stamps: Vec<String> = std::fs::read_dir(record)
        .expect("record dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(&format!("{name}.argv.")).map(str::to_string))
        .collect();
    stamps.sort();
    stamps
        .iter()
        .map(|i| {
            let read = |kind: &str| {
                std::fs::read_to_string(record.join(format!("{name}.{kind}.{i}"))).unwrap_or_default()
            };
            (read("argv").lines().map(str::to_string).collect(), read("env"), read("ps"))
        })
        .collect()
}

fn output_paths(drv: &str) -> Vec<String> {
    let out = Command::new("nix-store").args(["-q", "--outputs", drv]).output().expect("nix-store");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    v.sort();
    v
}

fn hash_of(path: &str) -> &str {
    let base = path.trim_start_matches("/nix/store/");
    &base[..32]
}

fn nix_cmd(args: &[&str]) -> std::process::Output {
    Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(args)
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("nix")
}

/// `ekaci pushes --json [--failed]`.
fn pushes(s: &Setup, failed: bool) -> Vec<Value> {
    let mut args = vec!["pushes", "--json"];
    if failed {
        args.push("--failed");
    }
    let out = s.home.ekaci(&args);
    assert!(out.status.success(), "ekaci pushes: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("pushes JSON")
}

fn generate_key(dir: &Path) -> (PathBuf, String) {
    let (sk, pk) = (dir.join("cache.sec"), dir.join("cache.pub"));
    let st = Command::new("nix-store")
        .args(["--generate-binary-cache-key", "eka-ci-test-1"])
        .arg(&sk)
        .arg(&pk)
        .status()
        .expect("generate key");
    assert!(st.success());
    (sk, std::fs::read_to_string(pk).expect("public key").trim().to_string())
}

#[test]
fn built_outputs_reach_every_cache_the_job_may_use_and_credentials_never_leak() {
    let n = nonce();
    let dir = tempfile::tempdir().expect("tempdir");
    let (bin, record) = (dir.path().join("bin"), dir.path().join("record"));
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&record).expect("record");
    stand_in(&bin, "cachix", &record, None);
    stand_in(&bin, "attic", &record, Some("ATTIC_TOKEN"));
    let (cachix_token, attic_token, http_token) =
        (format!("cachix-tok-{n}"), format!("attic-tok-{n}"), format!("http-tok-{n}"));
    // attic's token lives in Vault (KV v2), fetched at start-up and again before each push.
    let vault_token = format!("vault-tok-{n}");
    let cloud = FakeCloud::start();
    cloud.vault_auth(&vault_token, None);
    cloud.vault_put("secret", "eka-ci/attic", json!({ "ATTIC_TOKEN": attic_token }));
    let (key, public_key) = generate_key(dir.path());
    let file_cache = dir.path().join("file-cache");
    let http = HttpCache::start(false);
    let farm = Farm::new();
    let mut machine = farm.machine("cachebox", &[]);
    // The machine trusts the key the pushes are signed with (its store requires signatures).
    let conf = machine.dir.join("etc-nix/nix.conf");
    let mut text = std::fs::read_to_string(&conf).expect("machine nix.conf");
    text.push_str(&format!("trusted-public-keys = {public_key}\n"));
    std::fs::write(&conf, text).expect("machine nix.conf");
    machine.start();
    let ssh_dest = format!(
        "{}?ssh-key={}&base64-ssh-public-host-key={}",
        machine.uri,
        farm.client_key().display(),
        machine.host_key_b64
    );
    let caches = format!(
        r#"
[[caches]]
id = "signed"
cache_type = "nix-copy"
destination = "file://{file}"
credentials = "none"
secret_key_file = "{key}"

[[caches]]
id = "ssh"
cache_type = "nix-copy"
destination = "{ssh_dest}"
credentials = "none"
secret_key_file = "{key}"

[[caches]]
id = "http"
cache_type = "nix-copy"
destination = "{http}"
credentials = {{ env = {{ vars = ["HTTP_CACHE_TOKEN"] }} }}

[[caches]]
id = "cx"
cache_type = "cachix"
destination = "my-cachix"
credentials = {{ cachix-token = {{ env_var = "TEST_CACHIX_TOKEN" }} }}

[[caches]]
id = "at"
cache_type = "attic"
destination = "srv:cache"
credentials = {{ vault = {{ address = "{vault}", secret_path = "eka-ci/attic" }} }}

[[caches]]
id = "denied"
cache_type = "nix-copy"
destination = "file://{file}-denied"
credentials = "none"
permissions = {{ allow_all = false, allowed_repos = ["other-org/*"] }}

[[caches]]
id = "release-only"
cache_type = "nix-copy"
destination = "file://{file}-release"
credentials = "none"
permissions = {{ allow_all = false, allowed_repos = ["octo-org/*"], allowed_branches = ["release/*"] }}
"#,
        file = file_cache.display(),
        key = key.display(),
        http = http.url(),
        vault = cloud.url(),
    );
    let path_var = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let sshopts = farm.sshopts();
    let env: Vec<(&str, &OsStr)> = vec![
        ("PATH", OsStr::new(&path_var)),
        ("NIX_SSHOPTS", OsStr::new(&sshopts)),
        ("TEST_CACHIX_TOKEN", OsStr::new(&cachix_token)),
        ("HTTP_CACHE_TOKEN", OsStr::new(&http_token)),
        ("VAULT_TOKEN", OsStr::new(&vault_token)),
    ];
    let mut s = Setup::with_env(&caches, "", "allow_private_cache_hosts = true", &env);

    let config = r#"{ "jobs": { "main": { "file": "default.nix",
        "caches": ["signed", "ssh", "http", "cx", "at", "denied", "release-only"] } } }"#;
    let repo = GitRepo::new();
    let lib = r#"lib = mk "lib" [ "out" ] "echo lib > $out" [];"#;
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(config)), ("default.nix", Some(&multi_output_nix(&n, lib)))],
    );
    let body =
        format!(r#"{lib} multi = mk "multi" [ "out" "dev" ] "echo out > $out; echo dev > $dev" [ lib ];"#);
    let head = repo.commit("head", &[("default.nix", Some(&multi_output_nix(&n, &body)))]);
    // Not a fork: the head lives in the base repository.
    s.fake.set_pull_request(REPO, 1, json!({ "head": { "repo": { "full_name": REPO } } }));
    s.pr("cp-1", "opened", 1, repo.path(), &head, &base, "octocat");

    let configure = s.wait_completed(&head, "EkaCI: Configure");
    let text = summary(&configure);
    assert!(text.contains("Caches skipped"), "{text}");
    assert!(
        text.contains("job `main`: cache `denied` skipped: the cache does not allow repository `octo-org/widgets` (allowed_repos)"),
        "{text}"
    );
    assert!(
        text.contains(
            "cache `release-only` skipped: the cache does not allow branch `master` (allowed_branches)"
        ),
        "{text}"
    );
    assert!(!text.contains("`signed` skipped") && !text.contains("`http` skipped"), "{text}");
    wait_for("the skipped caches logged as warnings", || {
        let log = s.server().log();
        (log.contains("WARN") && log.contains("cache push skipped") && log.contains("cache=release-only"))
            .then_some(())
    });
    let gate = s.wait_completed(&head, "EkaCI: Evaluate Job (main)");
    assert_eq!(gate["conclusion"], "success", "{gate:#}");

    // The HTTP cache is down: its push fails and waits for a retry, as does attic's first call.
    let failed = wait_for("the HTTP cache's and attic's pushes to fail", || {
        let f = pushes(&s, true);
        let caches: Vec<&str> = f.iter().filter_map(|p| p["cache"].as_str()).collect();
        (caches.contains(&"http") && caches.contains(&"at")).then_some(f)
    });
    for p in &failed {
        assert_eq!(p["state"], "queued", "{p:#}");
        assert!(p["attempts"].as_u64() >= Some(1), "{p:#}");
    }
    let at = failed.iter().find(|p| p["cache"] == "at").expect("attic push");
    let at_error = at["last_error"].as_str().unwrap_or("");
    assert!(
        at_error.contains("attic exited with status 1: 401 Unauthorized: token [redacted] rejected"),
        "{at_error}"
    );
    // A crash now: the queue is in the database, so the pushes resume after the restart.
    s.kill();
    http.up.store(true, Ordering::SeqCst);
    s.restart_with(&env);
    let started = std::time::Instant::now();
    let done = wait_for("every push to land", || {
        let all = pushes(&s, false);
        if started.elapsed() > std::time::Duration::from_secs(170) {
            panic!("pushes: {all:#?}\nlog: {}", s.server().log());
        }
        (all.len() == 5 && all.iter().all(|p| p["state"] == "pushed")).then_some(all)
    });
    let mut ids: Vec<&str> = done.iter().filter_map(|p| p["cache"].as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["at", "cx", "http", "signed", "ssh"]);
    let drv = done[0]["drv"].as_str().expect("drv").to_string();
    assert!(drv.ends_with(&format!("multi-{n}.drv")), "{drv}");
    let outputs = output_paths(&drv);
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    for p in &done {
        assert_eq!(p["paths"].as_array().map(Vec::len), Some(2), "{p:#}");
    }

    // file://: both outputs, signed with the key; a second store substitutes them trusting that key.
    for out in &outputs {
        let narinfo = std::fs::read_to_string(file_cache.join(format!("{}.narinfo", hash_of(out))))
            .expect("narinfo in the file cache");
        assert!(narinfo.contains("Sig: eka-ci-test-1:"), "{narinfo}");
    }
    let second = dir.path().join("second-store");
    let from = format!("file://{}", file_cache.display());
    let mut args = vec!["copy", "--from", &from, "--to"];
    let second_s = second.display().to_string();
    args.push(&second_s);
    args.extend(["--option", "trusted-public-keys", &public_key]);
    args.extend(outputs.iter().map(String::as_str));
    let copied = nix_cmd(&args);
    assert!(copied.status.success(), "substituting: {}", String::from_utf8_lossy(&copied.stderr));
    for out in &outputs {
        let content =
            std::fs::read_to_string(second.join(out.trim_start_matches('/'))).expect("substituted output");
        assert!(content == "out\n" || content == "dev\n", "{content}");
    }
    // ssh-ng://: the machine's own store has both outputs.
    for out in &outputs {
        assert!(machine.has_valid(out), "{out} on the ssh machine");
    }
    // HTTP: Nix uploaded the cache info and both outputs' narinfo.
    assert!(http.has("nix-cache-info"));
    for out in &outputs {
        assert!(http.has(&format!("{}.narinfo", hash_of(out))), "{out} uploaded over HTTP");
    }
    // The stand-ins: argv with every path its own argument, the token only in the environment.
    let cx = calls(&record, "cachix");
    assert_eq!(cx.len(), 1);
    let mut want = vec!["push".to_string(), "my-cachix".to_string()];
    want.extend(outputs.iter().cloned());
    assert_eq!(cx[0].0, want);
    assert!(cx[0].1.lines().any(|l| l == format!("CACHIX_AUTH_TOKEN={cachix_token}")), "{}", cx[0].1);
    assert!(!cx[0].1.contains("TEST_CACHIX_TOKEN") && !cx[0].1.contains(&s.secret), "{}", cx[0].1);
    assert!(!cx[0].1.contains(&attic_token) && !cx[0].1.contains(&http_token), "{}", cx[0].1);
    // A cleared environment: the sealed allow-list, the credentials, and what sh sets itself; not the
    // server's own variables (RUST_LOG, XDG_*, its HOME).
    let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    for line in cx[0].1.lines() {
        let name = line.split_once('=').map_or(line, |(k, _)| k);
        assert!(
            eka_ci::nix::process::env::INHERITED_VARS.contains(&name)
                || ["HOME", "TMPDIR", "NIX_SSHOPTS", "CACHIX_AUTH_TOKEN"].contains(&name)
                || shell_own.contains(&name),
            "{name} in the push command's environment: {}",
            cx[0].1
        );
    }
    assert!(!cx[0].1.contains(&format!("HOME={}\n", s.home.path().display())), "{}", cx[0].1);
    let at_calls = calls(&record, "attic");
    assert_eq!(at_calls.len(), 1, "one successful call after the failed one");
    assert_eq!(at_calls[0].0[..2], ["push".to_string(), "srv:cache".to_string()]);
    assert!(at_calls[0].1.lines().any(|l| l == format!("ATTIC_TOKEN={attic_token}")));
    assert!(!at_calls[0].1.contains(&vault_token), "the Vault token reached the push command");
    // Read at each of the two start-ups and again before each of attic's two push attempts (reading only
    // at start-up would make two).
    let reads = cloud.calls().iter().filter(|c| c.path == "/v1/secret/data/eka-ci/attic").count();
    assert!(reads >= 4, "{reads} reads: {:#?}", cloud.calls());
    for (_, _, ps) in cx.iter().chain(at_calls.iter()) {
        assert!(ps.contains("push"), "ps saw the push: {ps}");
        for secret in [&cachix_token, &attic_token, &http_token, &vault_token] {
            assert!(!ps.contains(secret.as_str()), "a credential in ps output: {ps}");
        }
    }

    // The state per derivation over HTTP, and the metrics.
    let addr = s.server().http_address();
    let token = s.home.token("push-reader", "read");
    send_token(Some(&token));
    let (status, v) = get_json(&addr, &format!("/v1/drvs/{}", drv.trim_start_matches("/nix/store/")));
    send_token(None);
    assert_eq!(status, 200, "{v:#}");
    let states: Vec<(&str, &str)> = v["pushes"]
        .as_array()
        .expect("pushes")
        .iter()
        .map(|p| (p["cache"].as_str().unwrap_or(""), p["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        states,
        [("at", "pushed"), ("cx", "pushed"), ("http", "pushed"), ("signed", "pushed"), ("ssh", "pushed")]
    );
    // Counted since the restart: the HTTP cache's push came after it.
    let counted = metric(&addr, r#"eka_ci_cache_push_total{cache="http",result="pushed"}"#);
    assert_eq!(counted.as_deref().map(|l| l.ends_with(" 1")), Some(true), "{counted:?}");
    assert!(metric(&addr, "eka_ci_cache_push_seconds_count").is_some());
    let listed = s.home.ekaci(&["pushes"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("pushed  signed "), "{listed}");

    // No credential in the check runs, the log or the audit records.
    let runs = serde_json::to_string(&s.fake.check_runs(REPO)).expect("runs");
    let log = s.stop();
    let store = eka_ci::store::Store::open(&s.home.db()).expect("open the database");
    let audit = eka_ci::cache::queue::audit_trail(&store).expect("audit trail");
    let audit_text = format!("{audit:?}");
    for secret in [&cachix_token, &attic_token, &http_token, &vault_token] {
        assert!(!runs.contains(secret.as_str()), "a credential in a check run");
        assert!(!log.contains(secret.as_str()), "a credential in the log");
        assert!(!audit_text.contains(secret.as_str()), "a credential in the audit records");
    }
    for id in ["signed", "ssh", "http", "cx", "at"] {
        assert!(
            audit.iter().any(|a| a.cache == id && a.outcome == "pushed" && a.paths == outputs),
            "{id}: {audit:#?}"
        );
    }
    assert!(
        audit.iter().any(|a| a.cache == "at" && a.outcome.contains("token [redacted] rejected")),
        "{audit:#?}"
    );
    assert!(
        audit.iter().any(|a| a.cache == "http" && a.outcome.starts_with("failed: nix exited")),
        "{audit:#?}"
    );
}

#[test]
fn forks_are_pushed_only_to_caches_that_allow_them() {
    let n = nonce();
    let dir = tempfile::tempdir().expect("tempdir");
    let (open, strict) = (dir.path().join("open"), dir.path().join("strict"));
    let caches = format!(
        "[[caches]]\nid = \"forks-ok\"\ncache_type = \"nix-copy\"\ndestination = \"file://{}\"\ncredentials = \"none\"\nallow_forks = true\n\n\
         [[caches]]\nid = \"no-forks\"\ncache_type = \"nix-copy\"\ndestination = \"file://{}\"\ncredentials = \"none\"\n\n\
         [[caches]]\nid = \"private\"\ncache_type = \"nix-copy\"\ndestination = \"http://127.0.0.1:9/\"\ncredentials = \"none\"\nallow_forks = true\n",
        open.display(),
        strict.display()
    );
    let s = Setup::with_env(&caches, "", "", &[]);
    let config =
        r#"{ "jobs": { "main": { "file": "default.nix", "caches": ["forks-ok", "no-forks", "private"] } } }"#;
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(config)), ("default.nix", Some(&multi_output_nix(&n, "")))],
    );
    let head = repo.commit(
        "head",
        &[("default.nix", Some(&multi_output_nix(&n, r#"x = mk "x" [ "out" ] "echo x > $out" [];"#)))],
    );
    // The fake's pull request keeps GitHub's example head repository: another owner's, a fork.
    s.pr("fork-1", "opened", 7, repo.path(), &head, &base, "stranger");
    let configure = s.wait_completed(&head, "EkaCI: Configure");
    let text = summary(&configure);
    assert!(
        text.contains("cache `no-forks` skipped: the pull request comes from a fork and the cache does not set allow_forks"),
        "{text}"
    );
    assert!(!text.contains("`forks-ok` skipped"), "{text}");
    let done = wait_for("the fork's push to the caches that allow forks", || {
        let all = pushes(&s, false);
        (all.len() == 2 && all.iter().all(|p| p["state"] != "queued")).then_some(all)
    });
    let state = |id: &str| done.iter().find(|p| p["cache"] == id).map(|p| p["state"].clone());
    assert_eq!(state("forks-ok"), Some(json!("pushed")), "{done:#?}");
    // A loopback destination without security.allow_private_cache_hosts: refused at once, not retried.
    assert_eq!(state("private"), Some(json!("failed")), "{done:#?}");
    let private = done.iter().find(|p| p["cache"] == "private").expect("private");
    assert_eq!(private["attempts"], 1);
    let why = private["last_error"].as_str().unwrap_or("");
    assert!(
        why.contains("resolves to the private or loopback address 127.0.0.1")
            && why.contains("allow_private_cache_hosts"),
        "{why}"
    );
    assert!(!strict.exists(), "nothing reached the cache without allow_forks");
}

#[test]
fn an_unknown_cache_id_is_a_configuration_error_naming_it() {
    let s = Setup::new("");
    let repo = GitRepo::new();
    let config = r#"{ "jobs": { "main": { "file": "default.nix", "caches": ["nope"] } } }"#;
    let base = repo.commit("base", &[(".eka-ci/config.json", Some(config)), ("default.nix", Some("{ }"))]);
    let head = repo.commit("head", &[("README", Some("x"))]);
    let body = pull_request("opened", 3, repo.path(), &head, &base, false, "octocat");
    assert_eq!(s.deliver("pull_request", "cp-unknown", &body), 202);
    let configure = s.wait_completed(&head, "EkaCI: Configure");
    assert_eq!(configure["conclusion"], "failure", "{configure:#}");
    let text = summary(&configure);
    assert!(text.contains("no cache \\\"nope\\\" is defined on this server"), "{text}");
}

#[test]
fn a_push_that_outlives_the_timeout_is_killed_and_reported() {
    // A destination that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            h.lock().expect("held").push(s);
        }
    });
    let path = {
        let out = Command::new("nix-build")
            .args(["--no-out-link", "-E"])
            .arg(format!(
                r#"derivation {{ name = "timeout-{}"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo > $out"]; }}"#,
                nonce()
            ))
            .env("NIX_CONFIG", "substituters =")
            .output()
            .expect("nix-build");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let cache = eka_ci::config::CacheConfig {
        id: "hang".into(),
        cache_type: eka_ci::config::CacheType::NixCopy,
        destination: format!("http://127.0.0.1:{port}"),
        credentials: eka_ci::config::CredentialSource::None,
        permissions: eka_ci::config::Permissions::default(),
        push_cached: false,
        allow_forks: false,
        secret_key_file: None,
    };
    let result =
        smol::block_on(eka_ci::cache::push::push(&cache, &[], &[path], std::time::Duration::from_secs(2)));
    let err = result.expect_err("the push cannot succeed");
    assert!(err.0.contains("nix timed out after 2 s"), "{err}");
    assert!(!held.lock().expect("held").is_empty(), "nix reached the destination");
}

#[test]
fn a_cache_that_cannot_be_set_up_stops_the_start_naming_it() {
    let home = crate::common::Home::new();
    let check = |caches: &str, env: &[(&str, &str)]| {
        let cfg = home.write_config(caches);
        home.check_config(&cfg, env)
    };
    let env_cache = "[[caches]]\nid = \"s3\"\ncache_type = \"nix-copy\"\ndestination = \"s3://b/p\"\n\
                     credentials = { env = { vars = [\"PUSH_TEST_KEY\"] } }\n";
    let (code, err) = check(env_cache, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("caches[0] (s3): credentials: environment variable PUSH_TEST_KEY is not set"),
        "{err}"
    );
    let (code, err) = check(env_cache, &[("PUSH_TEST_KEY", "k3y-v4lue")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("k3y-v4lue"), "{err}");
    let (code, err) = check(
        "[[caches]]\nid = \"cx\"\ncache_type = \"cachix\"\ndestination = \"c\"\ncredentials = \"none\"\n\
         secret_key_file = \"/nonexistent\"\n",
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("caches[0] (cx): secret_key_file is only for cache_type = \"nix-copy\""), "{err}");
}

/// `[[caches]]` entries of `nix-copy` caches to `file://<dir>/<id>`, with their `push_cached`.
fn file_caches(dir: &Path, caches: &[(&str, bool)]) -> String {
    caches
        .iter()
        .map(|(id, push_cached)| {
            format!(
                "[[caches]]\nid = \"{id}\"\ncache_type = \"nix-copy\"\ndestination = \"file://{}\"\ncredentials = \"none\"\npush_cached = {push_cached}\n\n",
                dir.join(id).display()
            )
        })
        .collect()
}

/// The push of the derivation whose name is `name` to `cache`, if `ekaci pushes` lists one.
fn push_of(all: &[Value], name: &str, cache: &str) -> Option<Value> {
    let suffix = format!("-{name}.drv");
    all.iter()
        .find(|p| p["cache"] == cache && p["drv"].as_str().is_some_and(|d| d.ends_with(&suffix)))
        .cloned()
}

/// Whether `cache_dir` holds the narinfo of every output of the pushed `push`.
fn in_cache(cache_dir: &Path, push: &Value) -> bool {
    let paths = push["paths"].as_array().cloned().unwrap_or_default();
    !paths.is_empty()
        && paths.iter().all(|p| {
            let hash = hash_of(p.as_str().unwrap_or_default());
            cache_dir.join(format!("{hash}.narinfo")).exists()
        })
}

#[test]
fn a_derivation_is_pushed_as_soon_as_it_builds_while_a_slow_one_still_builds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Setup::with_env(&file_caches(dir.path(), &[("early", false)]), "", "", &[]);
    let config = r#"{ "jobs": { "main": { "file": "default.nix", "caches": ["early"] } } }"#;
    let (repo, n) = (GitRepo::new(), nonce());
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(config)), ("default.nix", Some(&nix(&n, LIB)))]);
    let f = Fixture { repo, nonce: n, base };
    let (slow, gate_file) = f.slow("slow-push", "-push");
    let head = f.head("head", &format!(r#"{LIB} quick = mk "quick-push" "echo quick > $out" []; {slow}"#));
    s.fake.set_pull_request(REPO, 1, json!({ "head": { "repo": { "full_name": REPO } } }));
    s.pr("early-1", "opened", 1, f.path(), &head, &f.base, "octocat");
    let quick = wait_for("the quick derivation pushed", || {
        push_of(&pushes(&s, false), "quick-push", "early").filter(|p| p["state"] == "pushed")
    });
    // The slow build cannot finish before its gate file exists: it is still building now.
    assert!(!gate_file.exists());
    assert!(in_cache(&dir.path().join("early"), &quick), "{quick:#}");
    let all = pushes(&s, false);
    assert!(push_of(&all, "slow-push", "early").is_none(), "{all:#?}");
    let gate = s.run(&head, "EkaCI: Evaluate Job (main)").expect("the gate check run");
    assert_ne!(gate["status"], "completed", "{gate:#}");
    std::fs::write(&gate_file, "").expect("open the gate");
    let gate = s.wait_completed(&head, "EkaCI: Evaluate Job (main)");
    assert_eq!(gate["conclusion"], "success", "{gate:#}");
    let slow_push = wait_for("the slow derivation pushed", || {
        push_of(&pushes(&s, false), "slow-push", "early").filter(|p| p["state"] == "pushed")
    });
    assert!(in_cache(&dir.path().join("early"), &slow_push), "{slow_push:#}");
    // The sweep after the builds queued nothing twice: one push per derivation, the first one's unchanged.
    let all = pushes(&s, false);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(push_of(&all, "quick-push", "early"), Some(quick));
    let _ = std::fs::remove_file(&gate_file);
}

#[test]
fn outputs_valid_before_the_run_go_only_to_caches_with_push_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let caches = file_caches(dir.path(), &[("everything", true), ("built-only", false)]);
    let s = Setup::with_env(&caches, "", "", &[]);
    let config =
        r#"{ "jobs": { "main": { "file": "default.nix", "caches": ["everything", "built-only"] } } }"#;
    let (repo, n) = (GitRepo::new(), nonce());
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(config)), ("default.nix", Some(&nix(&n, LIB)))]);
    let body = format!(
        r#"{LIB} pre = mk "pre-built" "echo pre > $out" []; fresh = mk "fresh-built" "echo fresh > $out" [];"#
    );
    let head = repo.commit("head", &[("default.nix", Some(&nix(&n, &body)))]);
    // `pre` is built before the run (the work tree holds head's default.nix).
    let built = Command::new("nix-build")
        .args(["--no-out-link", "-A", "pre"])
        .arg(repo.path().join("default.nix"))
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("nix-build");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let pre_out = String::from_utf8_lossy(&built.stdout).trim().to_string();
    s.fake.set_pull_request(REPO, 2, json!({ "head": { "repo": { "full_name": REPO } } }));
    s.pr("cached-1", "opened", 2, repo.path(), &head, &base, "octocat");
    let gate = s.wait_completed(&head, "EkaCI: Evaluate Job (main)");
    assert_eq!(gate["conclusion"], "success", "{gate:#}");
    let all = wait_for("the pushes of the run finished", || {
        let all = pushes(&s, false);
        (all.len() == 3 && all.iter().all(|p| p["state"] == "pushed")).then_some(all)
    });
    let pre = push_of(&all, "pre-built", "everything").expect("pre pushed with push_cached");
    assert_eq!(pre["paths"], json!([pre_out]));
    assert!(in_cache(&dir.path().join("everything"), &pre), "{pre:#}");
    assert!(push_of(&all, "pre-built", "built-only").is_none(), "{all:#?}");
    for cache in ["everything", "built-only"] {
        let fresh = push_of(&all, "fresh-built", cache).expect("fresh pushed to both");
        assert!(in_cache(&dir.path().join(cache), &fresh), "{fresh:#}");
    }
    assert!(
        !dir.path().join("built-only").join(format!("{}.narinfo", hash_of(&pre_out))).exists(),
        "the already-valid output never reached the cache without push_cached"
    );
}
