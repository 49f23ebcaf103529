//! Sealed evaluation against a hostile repository, through the real server (`ekaci eval`: git checkout,
//! evaluation, the jobset store): every attribute tries to reach something outside the checkout — the
//! server's environment, `/etc/passwd` directly and through a symlink, an absolute import, a URL on a
//! loopback listener — and each must get an error record naming the forbidden access, with nothing of
//! what it tried to read.

use crate::common;

use std::io::Read as _;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{json, GitRepo, Home, NIX_PRELUDE};

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix", "allow_eval_failures": true } } }"#;

fn hostile_nix(outside_file: &str, port: u16, server_pid: i32) -> String {
    format!(
        r#"{NIX_PRELUDE}
{{
  good = mk "sealed-good" "echo > $out";
  inside = throw "inside=${{builtins.readFile ./data.txt}}";
  getenv = throw "secret=${{builtins.getEnv "WEBHOOK_SECRET"}}=end";
  passwd = throw (builtins.readFile "/etc/passwd");
  symlink = throw (builtins.readFile ./escape/passwd);
  importOutside = import {outside_file};
  fetch = throw (builtins.readFile (builtins.fetchurl "http://127.0.0.1:{port}/x"));
  procEnviron = throw (builtins.readFile "/proc/{server_pid}/environ");
}}
"#
    )
}

/// A loopback listener that counts every connection: anything that connects is a leak.
struct Tripwire {
    port: u16,
    connections: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    fn new() -> Tripwire {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (connections, stop) = (connections.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut s, _)) = listener.accept() {
                        connections.fetch_add(1, Ordering::Relaxed);
                        let _ = s.read(&mut [0u8; 512]);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            })
        };
        Tripwire { port, connections, stop, watcher: Some(watcher) }
    }

    /// Stops listening and returns how many connections were made.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        self.connections.load(Ordering::Relaxed)
    }
}

#[test]
fn a_hostile_repository_reads_nothing_outside_its_checkout() {
    let secret = "eka-ci-sealed-eval-secret-9f3c";
    // Restricted evaluation must refuse the URL before fetching.
    let tripwire = Tripwire::new();
    let port = tripwire.port;

    let outside = tempfile::tempdir().expect("tempdir");
    let outside_file = outside.path().join("evil.nix");
    std::fs::write(&outside_file, r#"throw "outside-file-was-imported""#).expect("write");

    let home = Home::new();
    let server = home.start_with(&[("WEBHOOK_SECRET", std::ffi::OsStr::new(secret))]);
    let repo = GitRepo::new();
    repo.commit(
        "hostile",
        &[
            (".eka-ci/config.json", Some(CONFIG)),
            ("default.nix", Some(&hostile_nix(&outside_file.display().to_string(), port, server.pid()))),
            ("data.txt", Some("readable-inside")),
        ],
    );
    std::os::unix::fs::symlink("/etc", repo.path().join("escape")).expect("symlink");
    repo.git(&["add", "escape"]);
    repo.git(&["commit", "-q", "-m", "escape"]);
    let commit = repo.git(&["rev-parse", "HEAD"]).trim().to_string();

    let out = home.ekaci(&[
        "eval",
        "--repo",
        &repo.path().display().to_string(),
        "--rev",
        &commit,
        "--job",
        "main",
        "--json",
    ]);
    let report = json(&out);
    let connections = tripwire.finish();

    let attrs: Vec<(String, serde_json::Value)> = report["jobs"][0]["attrs"]
        .as_array()
        .unwrap_or_else(|| panic!("attrs in {report}"))
        .iter()
        .map(|p| (p[0].as_str().expect("name").to_string(), p[1].clone()))
        .collect();
    let err = |name: &str| -> String {
        let value = &attrs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} in {attrs:?}")).1;
        value["Error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: not an error: {value}"))
            .to_string()
    };
    assert!(attrs.iter().any(|(n, v)| n == "good" && v.get("Drv").is_some()), "{attrs:?}");
    // The checkout itself stays readable.
    assert!(err("inside").contains("inside=readable-inside"), "{}", err("inside"));

    let getenv = err("getenv");
    assert!(getenv.contains("secret==end"), "getEnv must yield nothing: {getenv}");
    for name in ["passwd", "symlink", "importOutside", "procEnviron"] {
        let message = err(name);
        assert!(
            message.contains("is forbidden in restricted mode") && message.contains("access to"),
            "{name}: {message}"
        );
    }
    assert!(err("passwd").contains("'/etc/passwd'"), "{}", err("passwd"));
    assert!(err("symlink").contains("/etc/passwd"), "{}", err("symlink"));
    assert!(!err("importOutside").contains("outside-file-was-imported"), "{}", err("importOutside"));
    let fetch = err("fetch");
    assert!(fetch.contains("access to URI") && fetch.contains("is forbidden"), "{fetch}");
    assert_eq!(connections, 0, "the evaluator connected to the listener");

    assert!(
        err("procEnviron").contains(&format!("'/proc/{}/environ'", server.pid())),
        "{}",
        err("procEnviron")
    );

    // Nothing of the secret or of /etc/passwd is in the report, the server's log or its database.
    let report_text = report.to_string();
    let (_, log) = server.stop();
    let db = std::fs::read(home.db()).expect("read the database");
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for (place, text) in [("report", report_text.as_bytes()), ("log", log.as_bytes()), ("database", &db[..])]
    {
        let text = String::from_utf8_lossy(text);
        assert!(!text.contains(secret), "the secret reached the {place}");
        for line in passwd.lines().filter(|l| l.len() > 8) {
            assert!(!text.contains(line), "a line of /etc/passwd reached the {place}: {line}");
        }
    }
}

/// A flake job: an input missing from flake.lock is an error, not a fetch (the lock file is never
/// updated), and a lock file that pins an input to a path on the server's disk is refused before Nix
/// runs, naming the input and the path, with nothing of the file's content anywhere.
#[test]
fn a_hostile_flake_reads_nothing_outside_its_checkout() {
    let config = r#"{ "jobs": { "main": { "flake": "packages" } } }"#;
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = "flake-outside-secret-7d1e";
    std::fs::write(outside.path().join("s.txt"), secret).expect("write");

    // An input flake.lock lacks: Nix would fetch it to re-lock; here it must not even connect.
    let tripwire = Tripwire::new();
    let unlocked = format!(
        r#"{{
  inputs.fetched = {{ url = "http://127.0.0.1:{}/source.tar.gz"; flake = false; }};
  outputs = {{ self, fetched }}: {{ packages = {{ x = fetched; }}; }};
}}
"#,
        tripwire.port
    );
    let repo = GitRepo::new();
    repo.commit("unlocked", &[(".eka-ci/config.json", Some(config)), ("flake.nix", Some(&unlocked))]);
    let unlocked_commit = repo.git(&["rev-parse", "HEAD"]).trim().to_string();

    let local = format!(
        r#"{{
  inputs.evil = {{ url = "path:{0}"; flake = false; }};
  outputs = {{ self, evil }}: {{ packages = {{ x = throw (builtins.readFile "${{evil}}/s.txt"); }}; }};
}}
"#,
        outside.path().display()
    );
    // A lock file as `nix flake lock` would write it, with the real narHash of the outside directory.
    let hashed = std::process::Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "hash",
            "path",
            "--type",
            "sha256",
            "--base64",
        ])
        .arg(outside.path())
        .output()
        .expect("run nix hash path");
    assert!(hashed.status.success(), "{}", String::from_utf8_lossy(&hashed.stderr));
    let nar_hash = String::from_utf8_lossy(&hashed.stdout).into_owned();
    let lock = serde_json::json!({
        "nodes": {
            "evil": {
                "flake": false,
                "locked": { "lastModified": 1, "narHash": format!("sha256-{}", nar_hash.trim()), "path": outside.path(), "type": "path" },
                "original": { "path": outside.path(), "type": "path" }
            },
            "root": { "inputs": { "evil": "evil" } }
        },
        "root": "root",
        "version": 7
    });
    repo.commit("local", &[("flake.nix", Some(&local)), ("flake.lock", Some(&lock.to_string()))]);
    let local_commit = repo.git(&["rev-parse", "HEAD"]).trim().to_string();

    // A complete lock of a tarball input on a URL the operator did not allow: restricted mode refuses it.
    let tarball_url = format!("http://127.0.0.1:{}/locked.tar.gz", tripwire.port);
    let locked_remote = format!(
        r#"{{
  inputs.fetched = {{ url = "{tarball_url}"; flake = false; }};
  outputs = {{ self, fetched }}: {{ packages = {{ x = fetched; }}; }};
}}
"#
    );
    let remote_lock = serde_json::json!({
        "nodes": {
            "fetched": {
                "flake": false,
                "locked": { "narHash": "sha256-N3q+dxpipBwRrU4smejjrbJYFVA+EzKHt0glufaqF18=", "type": "tarball", "url": tarball_url },
                "original": { "type": "tarball", "url": tarball_url }
            },
            "root": { "inputs": { "fetched": "fetched" } }
        },
        "root": "root",
        "version": 7
    });
    repo.commit(
        "locked remote",
        &[("flake.nix", Some(&locked_remote)), ("flake.lock", Some(&remote_lock.to_string()))],
    );
    let remote_commit = repo.git(&["rev-parse", "HEAD"]).trim().to_string();

    let home = Home::new();
    let server = home.start();
    let eval = |commit: &str| {
        let out =
            home.ekaci(&["eval", "--repo", &repo.path().display().to_string(), "--rev", commit, "--json"]);
        json(&out)
    };
    let unlocked_report = eval(&unlocked_commit);
    let message = unlocked_report["jobs"][0]["jobset"]["state"]["Failed"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("a job error: {unlocked_report}"));
    assert!(
        message.contains("flake.lock does not lock every input") && message.contains("nix flake lock"),
        "{message}"
    );
    let remote_report = eval(&remote_commit);
    // The input is fetched lazily: the attribute that uses it gets the error record.
    let message = remote_report["jobs"][0]["attrs"][0][1]["Error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("an error record: {remote_report}"));
    assert!(message.contains(&format!("access to URI '{tarball_url}' is forbidden")), "{message}");
    assert_eq!(tripwire.finish(), 0, "Nix connected to an input's URL");

    let local_report = eval(&local_commit);
    let message = local_report["jobs"][0]["jobset"]["state"]["Failed"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("a job error: {local_report}"));
    assert!(
        message.contains("locks the input `evil` to the local path")
            && message.contains(&outside.path().display().to_string()),
        "{message}"
    );
    let (_, log) = server.stop();
    let db = std::fs::read(home.db()).expect("read the database");
    for (place, text) in [
        ("report", local_report.to_string()),
        ("log", log),
        ("database", String::from_utf8_lossy(&db).into_owned()),
    ] {
        assert!(!text.contains(secret), "the outside file reached the {place}");
    }
}

/// The same attempts in a pull request, through signed webhooks, the fake GitHub and the real server:
/// the server's own configuration file (it holds the webhook secret), `/etc/passwd`, the environment.
/// Each is an evaluation error naming the refused access; neither the secret nor the file's content is
/// in any check run, API response, log line or database value.
#[test]
fn a_hostile_pull_request_leaks_nothing_into_check_runs_the_api_or_the_log() {
    use crate::github_app::{Fixture, Setup, GATE, LIB};
    let mut s = Setup::new("");
    let config_file = s.home.config_file();
    let f = Fixture::new();
    let head = f.head(
        "hostile",
        &format!(
            r#"{LIB} config = throw (builtins.readFile "{}"); passwd = throw (builtins.readFile "/etc/passwd"); env = throw "secret=${{builtins.getEnv "WEBHOOK_SECRET"}}=end";"#,
            config_file.display()
        ),
    );
    s.pr("d-hostile", "opened", 7, f.path(), &head, &f.base, "outsider");
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "failure", "new evaluation errors fail the gate: {gate}");
    let runs = serde_json::to_string(&s.runs(&head)).expect("encode");
    assert!(runs.contains("is forbidden in restricted mode"), "the refused access is named: {runs}");
    let text = crate::github_app::summary(&gate);
    assert!(text.contains(r"`env`: error\: secret\=\=end"), "getEnv yields nothing: {text}");
    assert!(
        text.contains(r"`passwd`: error\: access to absolute path \'\/etc\/passwd\' is forbidden"),
        "{text}"
    );

    let token = s.home.token("reader", "read");
    common::send_token(Some(&token));
    let addr = s.server().http_address();
    let mut api = String::new();
    for id in 1..=4 {
        let (code, _, body) = common::http_get(&addr, &format!("/v1/jobsets/{id}?limit=100"));
        if code == 200 {
            api.push_str(&String::from_utf8_lossy(&body));
        }
    }
    common::send_token(None);
    assert!(api.contains("is forbidden in restricted mode"), "the API has the error records: {api}");

    let log = s.stop();
    let db = std::fs::read(s.home.db()).expect("read the database");
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let db = String::from_utf8_lossy(&db);
    for (place, text) in
        [("check runs", runs.as_str()), ("API", api.as_str()), ("log", log.as_str()), ("database", &db)]
    {
        assert!(!text.contains(&s.secret), "the webhook secret reached the {place}");
        for line in passwd.lines().filter(|l| l.len() > 8) {
            assert!(!text.contains(line), "a line of /etc/passwd reached the {place}: {line}");
        }
    }
}
