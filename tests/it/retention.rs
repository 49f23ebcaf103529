//! Nothing grows without bound, against real files: the per-attempt log cap (`[builds] max_log_bytes`),
//! `ekaci logs` of a log larger than one read, and `ekaci gc` (`[retention]`) removing old jobsets with
//! their GC roots, old logs and stale worktrees while keeping a live jobset; and `[limits]
//! max_jobs_per_repo` enforced by the running server; and `ekaci gc` removing old measured sizes and size
//! summaries while keeping the sizes of a branch's newest base.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{json, nonce, nonce_prelude as prelude, GitRepo, Home};
use serde_json::Value;

use common::{attr, FILE_JOB as CONFIG};

fn review(home: &Home, repo: &GitRepo, base: &str, head: &str) -> Value {
    let out = home.review(repo, base, head);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    json(&out)
}

fn logs_dir(home: &Home) -> PathBuf {
    home.path().join("data/ekaci/build-logs")
}

/// `logs_dir/<hash>/<attempt>.log` of `drv`.
fn log_file(home: &Home, drv: &str, attempt: u32) -> PathBuf {
    let base = Path::new(drv).file_name().and_then(|n| n.to_str()).expect("drv name");
    logs_dir(home).join(&base[..32]).join(format!("{attempt}.log"))
}

/// A derivation script printing `lines` lines of 100 bytes with shell builtins only (PATH is empty).
fn printer(lines: u32) -> String {
    let pad = "x".repeat(88);
    format!("i=0; while [ $i -lt {lines} ]; do echo \"l $i {pad}\"; i=$((i+1)); done; echo done > $out")
}

/// One review of a head that adds `big = mk … (printer lines)`; returns the built derivation.
fn build_printer(home: &Home, lines: u32) -> String {
    let n = nonce();
    let p = prelude(&n);
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&format!("{p} {{ }}")))],
    );
    let script = printer(lines);
    let head = repo
        .commit("head", &[("default.nix", Some(&format!(r#"{p} {{ big = mk "big" ''{script}'' []; }}"#)))]);
    let report = review(home, &repo, &base, &head);
    let big = attr(&report["jobs"][0], "big");
    assert_eq!(big["head"]["state"], "success", "{report}");
    big["head_drv"].as_str().expect("drv").to_string()
}

#[test]
fn a_log_is_cut_at_max_log_bytes_with_a_marker_and_the_build_goes_on() {
    let home = Home::new();
    home.write_config("[builds]\nmax_log_bytes = 65536\n");
    let _server = home.start();
    // About 300 KiB of output against a 64 KiB cap.
    let drv = build_printer(&home, 3000);
    let log = std::fs::read(log_file(&home, &drv, 1)).expect("the log exists");
    let marker = "\n[eka-ci: log cut at 65536 bytes: [builds] max_log_bytes]\n";
    assert!(
        log.ends_with(marker.as_bytes()),
        "ends with {:?}",
        String::from_utf8_lossy(&log[log.len() - 200..])
    );
    assert!(log.len() <= 65536 + marker.len(), "{} bytes", log.len());
    assert!(log.starts_with(b"l 0 x"), "the beginning is kept");
    // `ekaci logs` prints the stored log, marker included.
    let out = home.ekaci(&["logs", &drv]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, log);
}

#[test]
fn ekaci_logs_prints_a_log_larger_than_one_mebibyte_whole() {
    let home = Home::new();
    let _server = home.start();
    // 30,000 lines of 100 bytes: about 3 MiB.
    let drv = build_printer(&home, 30_000);
    let log = std::fs::read(log_file(&home, &drv, 1)).expect("the log exists");
    assert!(log.len() > 2 * 1024 * 1024, "{} bytes", log.len());
    let out = home.ekaci(&["logs", &drv]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), log.len());
    assert_eq!(out.stdout, log);
    assert!(String::from_utf8_lossy(&out.stdout).contains("l 29999 x"), "the last line arrives");
}

/// The stored jobset record, as `src/jobset/mod.rs` writes it (postcard of a versioned enum).
#[derive(serde::Serialize, serde::Deserialize)]
enum JobsetRecord {
    V1(eka_ci::jobset::Jobset),
}

/// Moves every jobset's `created_at` and `finished_at` `days` into the past (the server is stopped).
fn backdate_jobsets(home: &Home, days: u64) -> Vec<u64> {
    use redb::ReadableTable;
    let store = eka_ci::store::Store::open(&home.db()).expect("open the database");
    let tx = store.db().begin_write().expect("write");
    let mut ids = Vec::new();
    {
        let mut table = tx.open_table(eka_ci::store::schema::JOBSETS).expect("jobsets");
        let rows: Vec<(u64, Vec<u8>)> = table
            .iter()
            .expect("iter")
            .map(|e| {
                let (k, v) = e.expect("row");
                (k.value(), v.value().to_vec())
            })
            .collect();
        for (id, bytes) in rows {
            let JobsetRecord::V1(mut j) = postcard::from_bytes(&bytes).expect("decode");
            j.created_at -= days * 86400;
            j.finished_at = j.finished_at.map(|f| f - days * 86400);
            table
                .insert(id, postcard::to_stdvec(&JobsetRecord::V1(j)).expect("encode").as_slice())
                .expect("put");
            ids.push(id);
        }
    }
    tx.commit().expect("commit");
    ids
}

fn set_mtime(path: &Path, days: u64) {
    let past = SystemTime::now() - Duration::from_secs(days * 86400);
    std::fs::File::open(path).expect("open").set_modified(past).expect("mtime");
}

#[test]
fn ekaci_gc_removes_old_jobsets_gc_roots_logs_and_worktrees_and_keeps_the_live_jobset() {
    let n = nonce();
    let p = prelude(&n);
    let repo = GitRepo::new();
    let a = repo.commit(
        "a",
        &[
            (".eka-ci/config.json", Some(CONFIG)),
            ("default.nix", Some(&format!(r#"{p} {{ x = mk "x-1" "echo 1 > $out" []; }}"#))),
        ],
    );
    let b =
        repo.commit("b", &[("default.nix", Some(&format!(r#"{p} {{ x = mk "x-2" "echo 2 > $out" []; }}"#)))]);
    let c =
        repo.commit("c", &[("default.nix", Some(&format!(r#"{p} {{ x = mk "x-3" "echo 3 > $out" []; }}"#)))]);
    let home = Home::new();
    let server = home.start();
    let report = review(&home, &repo, &a, &b);
    let x = attr(&report["jobs"][0], "x");
    let (base_drv, head_drv) =
        (x["base_drv"].as_str().expect("drv").to_string(), x["head_drv"].as_str().expect("drv").to_string());
    // The newest jobset of the job: evaluated last, so it stays.
    let out = home.ekaci(&["eval", "--repo", &repo.path().display().to_string(), "--rev", &c, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let newest = json(&out)["jobs"][0]["jobset"]["id"].as_u64().expect("id");
    server.stop();

    let data = home.path().join("data/ekaci");
    let ids = backdate_jobsets(&home, 40);
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in &ids {
        assert!(data.join("gcroots").join(id.to_string()).is_dir(), "GC roots of jobset {id}");
    }
    let logs = [log_file(&home, &base_drv, 1), log_file(&home, &head_drv, 1)];
    for log in &logs {
        assert!(log.is_file(), "{}", log.display());
        set_mtime(log, 40);
    }

    let _server = home.start();
    // The control socket answers only once start-up, which removes every worktree no checkout uses, is
    // over: the worktrees are made after that.
    let status = home.ekaci(&["status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let stale = data.join("worktrees/left-by-a-crash");
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join("file"), "12345").expect("write");
    set_mtime(&stale, 2);
    let fresh = data.join("worktrees/just-now");
    std::fs::create_dir_all(&fresh).expect("mkdir");
    // The repository's mirror, unused for long but referred to by the kept jobset; and one nothing
    // refers to.
    let mirrors: Vec<PathBuf> =
        data.join("mirrors").read_dir().expect("mirrors").map(|e| e.expect("entry").path()).collect();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");
    let used_mirror = mirrors[0].clone();
    if used_mirror.join("FETCH_HEAD").exists() {
        set_mtime(&used_mirror.join("FETCH_HEAD"), 40);
    }
    set_mtime(&used_mirror, 40);
    let unused_mirror = data.join("mirrors/example.com-gone-repo-0123456789abcdef.git");
    std::fs::create_dir_all(unused_mirror.join("objects")).expect("mkdir");
    std::fs::write(unused_mirror.join("HEAD"), "ref: refs/heads/main\n").expect("write");
    set_mtime(&unused_mirror.join("HEAD"), 40);
    set_mtime(&unused_mirror, 40);
    let out = home.ekaci(&["gc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("jobsets: 2 removed, 1 kept as live"), "{text}");
    assert!(text.contains("gc roots: 2 removed"), "{text}");
    assert!(text.contains("logs: 2 removed"), "{text}");
    assert!(text.contains("worktrees: 1 removed, 5 bytes freed"), "{text}");
    assert!(text.contains("mirrors: 1 removed, 21 bytes freed"), "{text}");
    assert!(!unused_mirror.exists());
    assert!(used_mirror.join("HEAD").is_file(), "the mirror a kept jobset refers to stays");
    for id in ids.iter().filter(|id| **id != newest) {
        assert!(!data.join("gcroots").join(id.to_string()).exists(), "GC roots of jobset {id} removed");
    }
    assert!(data.join("gcroots").join(newest.to_string()).is_dir(), "the live jobset's GC roots stay");
    for log in &logs {
        assert!(!log.exists(), "{} removed", log.display());
    }
    assert!(!stale.exists() && fresh.exists());

    // The kept jobset is reused; a removed one is evaluated again under a new id, never an old one.
    let eval = |rev: &str| {
        let out = home.ekaci(&["eval", "--repo", &repo.path().display().to_string(), "--rev", rev, "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        json(&out)["jobs"][0].clone()
    };
    let again = eval(&c);
    assert_eq!((again["reused"].as_bool(), again["jobset"]["id"].as_u64()), (Some(true), Some(newest)));
    let redone = eval(&a);
    assert_eq!(redone["reused"], false);
    let id = redone["jobset"]["id"].as_u64().expect("id");
    assert!(ids.iter().all(|old| id > *old), "new id {id} after {ids:?}");
    // The new evaluation of `a` is now the job's newest jobset; the old one of `c` stays live all the same,
    // because it was just reused (a review reusing it may not have asked for its builds yet).
    let out = home.ekaci(&["gc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("jobsets: 0 removed, 1 kept as live") && text.contains("logs: 0 removed"),
        "{text}"
    );
    assert!(data.join("gcroots").join(newest.to_string()).is_dir());
    assert!(data.join("gcroots").join(id.to_string()).is_dir());
}

#[test]
fn the_server_refuses_a_repository_configuration_with_more_jobs_than_its_limit() {
    let repo = GitRepo::new();
    let config = r#"{ "jobs": { "a": { "file": "default.nix" }, "b": { "file": "default.nix" }, "c": { "file": "default.nix" } } }"#;
    let rev =
        repo.commit("three jobs", &[(".eka-ci/config.json", Some(config)), ("default.nix", Some("{ }"))]);
    let home = Home::new();
    home.write_config("[limits]\nmax_jobs_per_repo = 2\n");
    let _server = home.start();
    let out = home.ekaci(&["eval", "--repo", &repo.path().display().to_string(), "--rev", &rev]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 jobs are declared; this server allows at most 2 ([limits] max_jobs_per_repo)"),
        "{err}"
    );
}

#[test]
fn ekaci_gc_removes_old_sizes_and_size_summaries_and_keeps_a_branchs_newest_base() {
    use eka_ci::sizes::{self, AttrSizes, SizeSummary};
    let home = Home::new();
    drop(home.start());
    let day = 86400;
    let now = eka_ci::store::now_secs();
    let at = |commit: &str, recorded_at: u64| AttrSizes {
        drv: "/nix/store/00000000000000000000000000000000-a.drv".into(),
        commit: commit.into(),
        nar_size: 1,
        closure_size: 2,
        references: vec![],
        recorded_at,
    };
    let summary = |computed_at: u64| SizeSummary {
        job: "main".into(),
        base_sha: "b".into(),
        head_sha: "h".into(),
        base_branch: Some("main".into()),
        max_increase_percent: 5.0,
        measured: 1,
        compared: 1,
        no_baseline: 0,
        increases: vec![],
        dependencies: vec![],
        computed_at,
    };
    {
        let store = eka_ci::store::Store::open(&home.db()).expect("open the database");
        // 40 days old ([retention] jobsets_days is 30): `base` is main's newest base and stays.
        sizes::record(&store, "r", "base", Some("main"), "main", &[("a".into(), at("base", now - 40 * day))])
            .expect("record");
        sizes::record(&store, "r", "old", None, "main", &[("a".into(), at("old", now - 40 * day))])
            .expect("record");
        sizes::record(&store, "r", "new", None, "main", &[("a".into(), at("new", now))]).expect("record");
        sizes::record_summary(&store, "r", "old-head", "b", &summary(now - 40 * day)).expect("summary");
        sizes::record_summary(&store, "r", "new-head", "b", &summary(now)).expect("summary");
    }
    let server = home.start();
    let out = home.ekaci(&["gc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("output sizes: 1 removed"), "{text}");
    assert!(text.contains("size summaries: 1 removed"), "{text}");
    assert!(
        text.contains("cache pushes: 0 removed") && text.contains("cache push audit: 0 removed"),
        "{text}"
    );
    drop(server);
    let store = eka_ci::store::Store::open(&home.db()).expect("open the database");
    assert_eq!(
        sizes::at_commit(&store, "r", "base", "main").expect("read").len(),
        1,
        "the newest base stays"
    );
    assert!(sizes::at_commit(&store, "r", "old", "main").expect("read").is_empty());
    assert_eq!(sizes::at_commit(&store, "r", "new", "main").expect("read").len(), 1);
    assert!(sizes::summary_of(&store, "r", "old-head", "b", "main").expect("read").is_none());
    assert!(sizes::summary_of(&store, "r", "new-head", "b", "main").expect("read").is_some());
}
