//! The redb store on real files: round trips, reopening, schema versions and upgrades, and the
//! agreement between the code's tables and `migrations-free-schema/`.

use std::collections::BTreeMap;

use eka_ci::store::schema::{TableInfo, META, TABLES};
use eka_ci::store::{Store, StoreError, Upgrade, SCHEMA_VERSION};
use redb::TableDefinition;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn runs_round_trip_and_survive_reopen() {
    let dir = tmp();
    let path = dir.path().join("nested/dirs/ekaci.redb");
    {
        let store = Store::open(&path).expect("create");
        assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
        let (id, unclean) = store.begin_run(42).expect("begin");
        assert_eq!((id, unclean), (1, None));
        store.end_run(id).expect("end");
        let (id2, unclean) = store.begin_run(43).expect("begin");
        assert_eq!((id2, unclean), (2, None));
        // run 2 never ends: as if the daemon were killed
    }
    let store = Store::open(&path).expect("reopen");
    let runs = store.runs().expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].1.pid, 42);
    assert!(runs[0].1.stopped_at.is_some());
    assert_eq!(runs[1].1.pid, 43);
    assert_eq!(runs[1].1.stopped_at, None);
    let (id3, unclean) = store.begin_run(44).expect("begin");
    assert_eq!(id3, 3);
    let (unclean_id, unclean_run) = unclean.expect("the killed run is reported");
    assert_eq!((unclean_id, unclean_run.pid), (2, 43));
}

#[test]
fn a_database_open_elsewhere_is_refused_clearly() {
    let dir = tmp();
    let path = dir.path().join("db.redb");
    let _first = Store::open(&path).expect("open");
    let err = Store::open(&path).expect_err("second open must fail");
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err:?}");
    assert!(err.to_string().contains("already open in another process"), "{err}");
}

fn set_raw_version(path: &std::path::Path, v: u32) {
    let db = redb::Database::create(path).expect("raw open");
    let tx = db.begin_write().expect("tx");
    {
        let mut meta = tx.open_table(META).expect("meta");
        meta.insert("schema_version", postcard::to_stdvec(&v).expect("enc").as_slice()).expect("insert");
    }
    tx.commit().expect("commit");
}

fn raw_version(path: &std::path::Path) -> u32 {
    let db = redb::Database::create(path).expect("raw open");
    let tx = db.begin_read().expect("tx");
    let meta = tx.open_table(META).expect("meta");
    let v = meta.get("schema_version").expect("get").expect("present");
    postcard::from_bytes(v.value()).expect("dec")
}

#[test]
fn a_newer_database_is_refused_and_left_untouched() {
    let dir = tmp();
    let path = dir.path().join("db.redb");
    drop(Store::open(&path).expect("create"));
    set_raw_version(&path, SCHEMA_VERSION + 5);
    let err = Store::open(&path).expect_err("must refuse");
    match &err {
        StoreError::TooNew { found, supported, .. } => {
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 5, SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("schema version {}", SCHEMA_VERSION + 5)), "{msg}");
    assert!(msg.contains("run a newer eka-ci-server"), "{msg}");
    assert_eq!(raw_version(&path), SCHEMA_VERSION + 5, "refusal must not modify the database");
}

const WIDGETS: TableDefinition<&str, u64> = TableDefinition::new("widgets_v2");

fn add_widgets(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut t = tx.open_table(WIDGETS)?;
    t.insert("upgraded", 1)?;
    Ok(())
}

#[test]
fn an_older_database_is_upgraded_in_place() {
    let dir = tmp();
    let path = dir.path().join("db.redb");
    {
        let store = Store::open_with(&path, 1, &[]).expect("create at v1");
        store.begin_run(7).expect("data written at v1");
    }
    let upgrades = [Upgrade { from: 1, describe: "add widgets", apply: add_widgets }];
    let store = Store::open_with(&path, 2, &upgrades).expect("upgrade");
    assert_eq!(store.schema_version().expect("v"), 2);
    assert!(store.table_names().expect("names").contains(&"widgets_v2".to_string()));
    assert_eq!(store.runs().expect("runs")[0].1.pid, 7, "old data survives the upgrade");
    drop(store);

    // With no known step from the found version, opening fails and names the version.
    let dir2 = tmp();
    let p2 = dir2.path().join("db.redb");
    drop(Store::open_with(&p2, 1, &[]).expect("create"));
    let err = Store::open_with(&p2, 3, &upgrades[..0]).expect_err("no step");
    assert!(err.to_string().contains("schema version 1 but no upgrade step"), "{err}");
}

#[test]
fn a_corrupt_value_names_its_table_and_key() {
    let dir = tmp();
    let path = dir.path().join("db.redb");
    drop(Store::open(&path).expect("create"));
    {
        let db = redb::Database::create(&path).expect("raw");
        let tx = db.begin_write().expect("tx");
        {
            let mut runs = tx.open_table(eka_ci::store::schema::DAEMON_RUNS).expect("table");
            runs.insert(9, [0xffu8, 0xff, 0xff].as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
    }
    let store = Store::open(&path).expect("open");
    let err = store.runs().expect_err("corrupt");
    let msg = err.to_string();
    assert!(msg.contains("table `daemon_runs`") && msg.contains("key 9"), "{msg}");
}

/// Parses `migrations-free-schema/*.md` (except README.md): each file describes one table with the
/// lines `# Table \`name\``, `- key: \`T\`` and `- value: \`T\``.
fn documented_tables() -> BTreeMap<String, (String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations-free-schema");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("migrations-free-schema/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("md") || path.ends_with("README.md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let grab = |prefix: &str| -> String {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.split('`').nth(1))
                .unwrap_or_else(|| panic!("{}: no line starting with {prefix:?}", path.display()))
                .to_string()
        };
        let name = grab("# Table ");
        assert_eq!(
            path.file_stem().and_then(|s| s.to_str()),
            Some(name.as_str()),
            "file named after its table"
        );
        out.insert(name, (grab("- key: "), grab("- value: ")));
    }
    out
}

#[test]
fn the_documented_schema_matches_the_code() {
    let code: BTreeMap<String, (String, String)> = TABLES
        .iter()
        .map(|TableInfo { name, key, value }| (name.to_string(), (key.to_string(), value.to_string())))
        .collect();
    assert_eq!(documented_tables(), code, "migrations-free-schema/ and store::schema::TABLES disagree");

    // And a new database has exactly those tables.
    let dir = tmp();
    let store = Store::open(&dir.path().join("db.redb")).expect("create");
    let names: Vec<String> = TABLES.iter().map(|t| t.name.to_string()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(store.table_names().expect("names"), sorted);
}
