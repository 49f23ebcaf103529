//! Web UI jobset page benchmark, driven by `scripts/bench/ui` (docs/benchmarks.md, "Web UI jobset
//! page").
//!
//! ```text
//! ui_jobset_bench [N]
//! ```
//!
//! Builds a store with one finished jobset of N attributes (default 30,000, about a nixpkgs jobset), each
//! a real derivation discovered from a .drv file into the graph, every tenth one failed and the rest
//! built (states committed as the scheduler commits them). Then times, in release mode, the reader every
//! `/ui/jobsets/{id}` page (and `GET /v1/jobsets/{id}`) goes through, `eka_ci::web::read_page_blocking`,
//! for pages of 200: the first filtered page since the server started (with the jobset's scan index
//! stored, as the pipeline leaves it, and without, which builds it), the first page, a page in the middle, the first page of failures, a state no
//! attribute has (a full scan), and a name search matching a few attributes (a full scan). Each is run
//! 21 times; the median and the slowest are printed. Last, the same for counting the whole jobset's
//! attributes by state, as each `job_stats_update` of `/v1/ws/builds` does.

use std::process::ExitCode;
use std::time::Instant;

use eka_ci::jobset::{AttrDrv, AttrOutcome, Begin, JobsetKey, JobsetState, Jobsets};
use eka_ci::scheduler::state::{DrvRecord, Writes};
use eka_ci::scheduler::{Completion, DrvState};
use eka_ci::web::{read_page_blocking, AttrFilter};

const PAGE: usize = 200;
const RUNS: usize = 21;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn run(n: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = |v: usize| format!("{}/{:032}-pkg-{v}.drv", dir.path().display(), v);
    let out = |v: usize| format!("/nix/store/{:032}-pkg-{v}", v);
    let t = Instant::now();
    for v in 0..n {
        let text = format!(
            "Derive([(\"out\",\"{o}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[(\"name\",\"pkg-{v}\"),(\"out\",\"{o}\")])",
            o = out(v)
        );
        std::fs::write(path(v), text).map_err(|e| e.to_string())?;
    }
    let store = eka_ci::store::Store::open(&dir.path().join("db.redb")).map_err(|e| e.to_string())?;
    let graph = eka_ci::graph::Graph::open(store.clone(), n + 1).map_err(|e| e.to_string())?;
    let roots: Vec<String> = (0..n).map(path).collect();
    graph.discover_blocking(&roots).map_err(|e| e.to_string())?;
    let jobsets = Jobsets::new(store.clone());
    let key = JobsetKey {
        repo: "https://github.com/NixOS/nixpkgs".into(),
        commit: "a".repeat(40),
        job: "nixpkgs".into(),
    };
    let Begin::New(id) = jobsets.begin(&key, true).map_err(|e| e.to_string())? else {
        return Err("the fresh store already had the jobset".into());
    };
    let mut writer = jobsets.writer(id);
    for v in 0..n {
        let drv = AttrDrv {
            drv_path: path(v),
            name: format!("pkg-{v}"),
            system: "x86_64-linux".into(),
            outputs: vec![("out".into(), out(v))],
            meta_json: None,
            required_system_features: vec![],
        };
        writer.push(format!("pkg{v:05}"), AttrOutcome::Drv(drv)).map_err(|e| e.to_string())?;
    }
    writer.flush().map_err(|e| e.to_string())?;
    let header = jobsets.finish(id, JobsetState::Evaluated).map_err(|e| e.to_string())?;
    let ids = graph.ids_of(&roots).map_err(|e| e.to_string())?;
    let mut writes = Writes::default();
    for (v, drv_id) in ids.into_iter().enumerate() {
        let drv_id = drv_id.ok_or("a derivation was not discovered")?;
        let mut rec = DrvRecord::new();
        rec.state = if v % 10 == 0 {
            DrvState::Completed(Completion::Failure { message: "exit 1".into(), exit_code: Some(1) })
        } else {
            DrvState::Completed(Completion::Success)
        };
        writes.states.insert(drv_id, rec);
    }
    writes.commit(&store).map_err(|e| e.to_string())?;
    eprintln!("setup: {n} attributes, {} derivations, states committed in {:.0} ms", graph.len(), ms(t));

    let filter = |name: Option<&str>, state: Option<&str>| AttrFilter {
        name: name.map(str::to_string),
        state: state.map(str::to_string),
    };
    let middle = format!("pkg{:05}", n / 2);
    // A filtered page of a finished jobset scans the jobset's scan index: kept in memory by `Jobsets`,
    // else read from its `jobset_scans` row (written when the pipeline stored the jobset's graph), else
    // built from the attribute records. The "first filter" cases use a fresh `Jobsets` on every run (a
    // server just started); "no stored index" also deletes the row before each run (untimed).
    let cases: Vec<(&str, Option<String>, AttrFilter)> = vec![
        (
            "state=building, first filter since start, no stored index (builds it)",
            None,
            filter(None, Some("building")),
        ),
        ("state=building, first filter since start (stored index)", None, filter(None, Some("building"))),
        ("q=pkg2999, first filter since start (stored index)", None, filter(Some("pkg2999"), None)),
        ("first page", None, AttrFilter::default()),
        ("a page in the middle", Some(middle), AttrFilter::default()),
        ("first page of state=failure", None, filter(None, Some("failure"))),
        ("state=building (no match: full scan)", None, filter(None, Some("building"))),
        ("q=pkg2999 (few matches: full scan)", None, filter(Some("pkg2999"), None)),
    ];
    println!("| page (of {PAGE}) | attributes listed | median | slowest |");
    println!("| --- | --- | --- | --- |");
    for (what, after, f) in cases {
        let mut times = Vec::with_capacity(RUNS);
        let mut listed = 0;
        for _ in 0..RUNS {
            if what.contains("no stored index") {
                forget_stored_scan(&store, header.id)?;
            }
            let fresh;
            let jobsets = if what.contains("first filter") {
                fresh = Jobsets::new(store.clone());
                &fresh
            } else {
                &jobsets
            };
            let t = Instant::now();
            let page = read_page_blocking(jobsets, &graph, &store, &header, after.clone(), PAGE, &f)
                .map_err(|e| e.to_string())?;
            times.push(ms(t));
            listed = page.items.len();
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!("| {what} | {listed} | {:.1} ms | {:.1} ms |", times[RUNS / 2], times[RUNS - 1]);
    }
    // What one `job_stats_update` of this jobset costs (`/v1/ws/builds`; the scan index is kept).
    let mut times = Vec::with_capacity(RUNS);
    let mut counted = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let counts = eka_ci::web::ws_stats::counts_blocking(&jobsets, &graph, &store, &header)
            .map_err(|e| e.to_string())?;
        times.push(ms(t));
        counted = counts.values().sum::<u64>();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "\njob_stats_update counts ({counted} attributes): median {:.1} ms, slowest {:.1} ms",
        times[RUNS / 2],
        times[RUNS - 1]
    );
    Ok(())
}

/// Deletes the stored scan index of jobset `id`, so that the next cold filter builds it.
fn forget_stored_scan(store: &eka_ci::store::Store, id: eka_ci::jobset::JobsetId) -> Result<(), String> {
    let tx = store.db().begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = tx.open_table(eka_ci::store::schema::JOBSET_SCANS).map_err(|e| e.to_string())?;
        table.remove(id.0).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let n = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(30_000);
    match run(n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ui_jobset_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
