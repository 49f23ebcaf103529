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

fn hostile_nix(outside_file: &str, port: u16) -> String {
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
}}
"#
    )
}

#[test]
fn a_hostile_repository_reads_nothing_outside_its_checkout() {
    let secret = "eka-ci-sealed-eval-secret-9f3c";
    // Anything that connects here is a leak: restricted evaluation must refuse the URL before fetching.
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

    let outside = tempfile::tempdir().expect("tempdir");
    let outside_file = outside.path().join("evil.nix");
    std::fs::write(&outside_file, r#"throw "outside-file-was-imported""#).expect("write");

    let repo = GitRepo::new();
    repo.commit(
        "hostile",
        &[
            (".eka-ci/config.json", Some(CONFIG)),
            ("default.nix", Some(&hostile_nix(&outside_file.display().to_string(), port))),
            ("data.txt", Some("readable-inside")),
        ],
    );
    std::os::unix::fs::symlink("/etc", repo.path().join("escape")).expect("symlink");
    repo.git(&["add", "escape"]);
    repo.git(&["commit", "-q", "-m", "escape"]);
    let commit = repo.git(&["rev-parse", "HEAD"]).trim().to_string();

    let home = Home::new();
    let _server = home.start_with(&[("WEBHOOK_SECRET", std::ffi::OsStr::new(secret))]);
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
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();

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
    for name in ["passwd", "symlink", "importOutside"] {
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
    assert_eq!(connections.load(Ordering::Relaxed), 0, "the evaluator connected to the listener");

    let everything = report.to_string();
    assert!(!everything.contains(secret), "the secret reached a record");
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines().filter(|l| !l.trim().is_empty()) {
        assert!(!everything.contains(line), "a line of /etc/passwd reached a record: {line}");
    }
}
