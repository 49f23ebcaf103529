//! Output and closure sizes (a job's `size_check`): what Nix says about built outputs, the
//! `output_sizes` and `branch_sizes` tables, and the comparison of a pull request's head with its
//! baseline — sizes that grew by more than `max_increase_percent`, and the runtime dependencies that were
//! added, removed or changed version.
//!
//! Sizes come from one `nix path-info --json --closure-size` call per [`PATH_INFO_CHUNK`] paths; the JSON
//! of Nix 2.8 (an array of objects with `path`) and of later versions (an object keyed by path, `null`
//! for an invalid path) are both read. Per attribute: the NAR size is the sum of its outputs' NAR sizes,
//! the closure size is the closure of its `out` output (else its first output: what a user installs), and
//! the runtime references are those of every output, its own outputs left out.
//!
//! The baseline of an attribute is the newest size recorded for the same repository, job and attribute on
//! the job's `base_branch`: a pull request's base commit is recorded under its base branch as it is
//! measured, so for a pull request against that branch the baseline is its own base commit. This module
//! never builds anything and never decides what a check run says (the GitHub service does).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redb::TableHandle;
use serde::{Deserialize, Serialize};

use crate::nix::process::{run_captured, ProcessError, RunLimits, Termination};
use crate::store::codec::{decode, encode};
use crate::store::schema::{BRANCH_SIZES, OUTPUT_SIZES};
use crate::store::{Store, StoreError};

/// Paths per `nix path-info` call.
pub const PATH_INFO_CHUNK: usize = 500;

/// What Nix knows about one valid store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub nar_size: u64,
    pub closure_size: u64,
    /// Store paths it refers to at run time (itself included when it refers to itself).
    pub references: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("nix path-info failed: {0}")]
    Nix(String),
    #[error("unexpected output from nix path-info: {0}")]
    Output(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInfo {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    valid: Option<bool>,
    #[serde(default)]
    nar_size: Option<u64>,
    #[serde(default)]
    closure_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
}

/// Reads `nix path-info --json --closure-size` output of either shape; invalid paths are left out.
pub fn parse_path_info(json: &[u8]) -> Result<HashMap<String, PathInfo>, String> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| format!("not JSON (line {}, column {})", e.line(), e.column()))?;
    let entries: Vec<(Option<String>, serde_json::Value)> = match value {
        // Nix 2.8 to 2.18: `[{"path": …, "narSize": …, …}, …]`.
        serde_json::Value::Array(items) => items.into_iter().map(|v| (None, v)).collect(),
        // Later versions: `{"/nix/store/…": {…} | null}`.
        serde_json::Value::Object(map) => map.into_iter().map(|(k, v)| (Some(k), v)).collect(),
        _ => return Err("neither an array nor an object".into()),
    };
    let mut out = HashMap::new();
    for (key, v) in entries {
        if v.is_null() {
            continue;
        }
        let raw: RawInfo = serde_json::from_value(v).map_err(|e| format!("unexpected entry: {e}"))?;
        let Some(path) = key.or(raw.path) else { return Err("an entry without a path".into()) };
        if raw.valid == Some(false) {
            continue;
        }
        let (Some(nar_size), Some(closure_size)) = (raw.nar_size, raw.closure_size) else {
            continue;
        };
        // Later versions give references as base names; make them paths like 2.8's.
        let references = raw
            .references
            .into_iter()
            .map(|r| if r.starts_with('/') { r } else { format!("/nix/store/{r}") })
            .collect();
        out.insert(path, PathInfo { nar_size, closure_size, references });
    }
    Ok(out)
}

/// [`PathInfo`] of every valid path among `paths`, one `nix path-info` call per [`PATH_INFO_CHUNK`].
pub async fn path_info(paths: &[String]) -> Result<HashMap<String, PathInfo>, SizeError> {
    let mut out = HashMap::new();
    let unique: BTreeSet<&String> = paths.iter().filter(|p| p.starts_with("/nix/store/")).collect();
    let unique: Vec<&String> = unique.into_iter().collect();
    for chunk in unique.chunks(PATH_INFO_CHUNK) {
        let mut cmd = std::process::Command::new("nix");
        cmd.args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "--closure-size",
            "--",
        ]);
        cmd.args(chunk.iter().map(|p| p.as_str()));
        crate::nix::process::env::seal(&mut cmd);
        let limits = RunLimits { timeout: Some(std::time::Duration::from_secs(300)), ..RunLimits::default() };
        let run = run_captured(cmd, &limits).await?;
        if !matches!(run.termination, Termination::Exited(s) if s.success()) {
            // An invalid path makes Nix 2.8 fail the whole call: measure those paths one by one.
            if chunk.len() > 1 {
                for path in chunk {
                    let one = Box::pin(path_info(std::slice::from_ref(*path))).await?;
                    out.extend(one);
                }
                continue;
            }
            let stderr = crate::text::strip_ansi(&String::from_utf8_lossy(&run.stderr));
            if stderr.contains("is not valid") {
                continue;
            }
            return Err(SizeError::Nix(crate::text::ellipsis_chars(stderr.trim(), 500)));
        }
        out.extend(parse_path_info(&run.stdout).map_err(SizeError::Output)?);
    }
    Ok(out)
}

/// The sizes of one attribute's outputs at one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrSizes {
    pub drv: String,
    /// The commit it was measured at.
    pub commit: String,
    /// The sum of its outputs' NAR sizes, in bytes.
    pub nar_size: u64,
    /// The closure size of its `out` output (else its first), in bytes.
    pub closure_size: u64,
    /// Runtime references of its outputs, its own outputs left out, sorted.
    pub references: Vec<String>,
    pub recorded_at: u64,
}

/// The sizes of an attribute whose `outputs` (name, path) are all valid in `infos`; `None` otherwise.
pub fn measure(
    drv: &str,
    commit: &str,
    outputs: &[(String, String)],
    infos: &HashMap<String, PathInfo>,
) -> Option<AttrSizes> {
    let mut nar_size = 0u64;
    let mut refs = BTreeSet::new();
    for (_, path) in outputs {
        let info = infos.get(path)?;
        nar_size = nar_size.saturating_add(info.nar_size);
        refs.extend(info.references.iter().cloned());
    }
    let main = outputs.iter().find(|(name, _)| name == "out").or(outputs.first())?;
    let closure_size = infos.get(&main.1)?.closure_size;
    for (_, path) in outputs {
        refs.remove(path);
    }
    Some(AttrSizes {
        drv: drv.to_string(),
        commit: commit.to_string(),
        nar_size,
        closure_size,
        references: refs.into_iter().collect(),
        recorded_at: crate::store::now_secs(),
    })
}

#[derive(Serialize, Deserialize)]
enum SizeRecord {
    V1(AttrSizes),
}

fn output_key(repo: &str, commit: &str, job: &str, attr: &str) -> String {
    format!("{repo}\u{0}{commit}\u{0}{job}\u{0}{attr}")
}

fn branch_key(repo: &str, branch: &str, job: &str, attr: &str) -> String {
    format!("{repo}\u{0}{branch}\u{0}{job}\u{0}{attr}")
}

fn decode_sizes(table: &'static str, key: &str, bytes: &[u8]) -> Result<AttrSizes, StoreError> {
    match decode::<SizeRecord>(table, &format!("{key:?}"), bytes)? {
        SizeRecord::V1(s) => Ok(s),
    }
}

/// Records the sizes measured at `commit` of `repo` (a repository identity, as jobsets record it) for
/// `job`, and, when `branch` is given (the commit is that branch's tip: a pull request's base), as the
/// branch's newest sizes too.
pub fn record(
    store: &Store,
    repo: &str,
    commit: &str,
    branch: Option<&str>,
    job: &str,
    sizes: &[(String, AttrSizes)],
) -> Result<(), StoreError> {
    let tx = store.db().begin_write()?;
    {
        let mut outputs = tx.open_table(OUTPUT_SIZES)?;
        let mut branches = tx.open_table(BRANCH_SIZES)?;
        for (attr, s) in sizes {
            let bytes = encode(OUTPUT_SIZES.name(), &SizeRecord::V1(s.clone()))?;
            outputs.insert(output_key(repo, commit, job, attr).as_str(), bytes.as_slice())?;
            if let Some(branch) = branch {
                branches.insert(branch_key(repo, branch, job, attr).as_str(), bytes.as_slice())?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// The newest sizes recorded on `branch` for each of `attrs` that has any.
pub fn baseline(
    store: &Store,
    repo: &str,
    branch: &str,
    job: &str,
    attrs: &[&str],
) -> Result<HashMap<String, AttrSizes>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(BRANCH_SIZES)?;
    let mut out = HashMap::new();
    for attr in attrs {
        let key = branch_key(repo, branch, job, attr);
        if let Some(v) = table.get(key.as_str())? {
            out.insert(attr.to_string(), decode_sizes("branch_sizes", &key, v.value())?);
        }
    }
    Ok(out)
}

/// Every size recorded for `job` at `commit` of `repo`, by attribute.
pub fn at_commit(
    store: &Store,
    repo: &str,
    commit: &str,
    job: &str,
) -> Result<BTreeMap<String, AttrSizes>, StoreError> {
    let prefix = format!("{repo}\u{0}{commit}\u{0}{job}\u{0}");
    let tx = store.db().begin_read()?;
    let table = tx.open_table(OUTPUT_SIZES)?;
    let mut out = BTreeMap::new();
    for row in table.range(prefix.as_str()..)? {
        let (k, v) = row?;
        let Some(attr) = k.value().strip_prefix(prefix.as_str()) else { break };
        out.insert(attr.to_string(), decode_sizes("output_sizes", k.value(), v.value())?);
    }
    Ok(out)
}

/// One attribute measured on both sides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeChange {
    pub attr: String,
    pub base: AttrSizes,
    pub head: AttrSizes,
}

impl SizeChange {
    /// Growth of the NAR size, in percent (`None` when the base was empty).
    pub fn nar_percent(&self) -> Option<f64> {
        percent(self.base.nar_size, self.head.nar_size)
    }
    /// Growth of the closure size, in percent.
    pub fn closure_percent(&self) -> Option<f64> {
        percent(self.base.closure_size, self.head.closure_size)
    }
    /// Whether either size grew by more than `max_percent` (growth from nothing counts as over).
    pub fn over(&self, max_percent: f64) -> bool {
        let over = |base: u64, head: u64, p: Option<f64>| head > base && p.is_none_or(|p| p > max_percent);
        over(self.base.nar_size, self.head.nar_size, self.nar_percent())
            || over(self.base.closure_size, self.head.closure_size, self.closure_percent())
    }
    /// The larger of the two absolute growths, for ordering (largest first).
    fn growth(&self) -> u64 {
        self.head
            .nar_size
            .saturating_sub(self.base.nar_size)
            .max(self.head.closure_size.saturating_sub(self.base.closure_size))
    }
}

fn percent(base: u64, head: u64) -> Option<f64> {
    (base > 0).then(|| (head as f64 - base as f64) * 100.0 / base as f64)
}

/// A runtime dependency that changed between base and head, by package name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DepChange {
    Added { name: String, version: String },
    Removed { name: String, version: String },
    Version { name: String, base: String, head: String },
}

/// The runtime-dependency changes of one attribute, by package name (`pname`, `version` split as
/// `builtins.parseDrvName` does; a name with several store paths is compared by its sorted versions).
pub fn dependency_changes(base: &AttrSizes, head: &AttrSizes) -> Vec<DepChange> {
    let by_name = |refs: &[String]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in refs {
            let (name, version) = parse_name(store_name(r));
            m.entry(name).or_default().insert(version);
        }
        m
    };
    let (b, h) = (by_name(&base.references), by_name(&head.references));
    let joined = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut out = Vec::new();
    for (name, versions) in &h {
        match b.get(name) {
            None => out.push(DepChange::Added { name: name.clone(), version: joined(versions) }),
            Some(old) if old != versions => {
                out.push(DepChange::Version { name: name.clone(), base: joined(old), head: joined(versions) })
            }
            Some(_) => {}
        }
    }
    for (name, versions) in &b {
        if !h.contains_key(name) {
            out.push(DepChange::Removed { name: name.clone(), version: joined(versions) });
        }
    }
    out
}

/// `hash-name` → `name` of a store path.
fn store_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split_once('-').map_or(base, |(_, name)| name)
}

/// `builtins.parseDrvName`: the version starts at the first `-` followed by something that is not a letter.
pub fn parse_name(name: &str) -> (String, String) {
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (name[..i].to_string(), name[i + 1..].to_string());
        }
    }
    (name.to_string(), String::new())
}

/// The size check of one job: what was compared and what grew too much.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeReport {
    pub job: String,
    pub base_branch: String,
    pub max_increase_percent: f64,
    /// Attributes measured on head.
    pub measured: usize,
    /// Attributes with a baseline, and their sizes on both sides.
    pub compared: Vec<SizeChange>,
    /// Attributes measured on head without a baseline (new, or never measured on the branch).
    pub no_baseline: Vec<String>,
}

impl SizeReport {
    /// The compared attributes that grew by more than the limit, largest growth first.
    pub fn over(&self) -> Vec<&SizeChange> {
        let mut over: Vec<&SizeChange> =
            self.compared.iter().filter(|c| c.over(self.max_increase_percent)).collect();
        over.sort_by(|a, b| b.growth().cmp(&a.growth()).then_with(|| a.attr.cmp(&b.attr)));
        over
    }
}

/// Compares `head` sizes with `baseline` (by attribute).
pub fn compare(
    job: &str,
    base_branch: &str,
    max_increase_percent: f64,
    head: &[(String, AttrSizes)],
    baseline: &HashMap<String, AttrSizes>,
) -> SizeReport {
    let mut compared = Vec::new();
    let mut no_baseline = Vec::new();
    for (attr, h) in head {
        match baseline.get(attr) {
            Some(b) => compared.push(SizeChange { attr: attr.clone(), base: b.clone(), head: h.clone() }),
            None => no_baseline.push(attr.clone()),
        }
    }
    SizeReport {
        job: job.to_string(),
        base_branch: base_branch.to_string(),
        max_increase_percent,
        measured: head.len(),
        compared,
        no_baseline,
    }
}

/// `1.2 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn signed_percent(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:+.1} %"),
        None => "new".into(),
    }
}

/// Most rows a rendered report lists; the rest are counted.
const MAX_ROWS: usize = 200;
/// GitHub's limit on a check run's summary, in characters.
const MAX_MARKDOWN: usize = 65_535;

/// The report as Markdown: the sizes over the limit (attribute, old, new, change for NAR and closure,
/// largest first), then the runtime dependencies of each compared attribute that changed. Attribute and
/// package names are escaped; the text stays within GitHub's limit.
pub fn render_markdown(report: &SizeReport) -> String {
    use crate::text::{code_span, escape_markdown};
    let over = report.over();
    let mut md = format!(
        "Sizes of {} built attribute(s) of job {} against the newest sizes on {} ({} compared, {} without a \
         baseline); the limit is +{} %.\n\n",
        report.measured,
        code_span(&report.job),
        code_span(&report.base_branch),
        report.compared.len(),
        report.no_baseline.len(),
        report.max_increase_percent
    );
    if over.is_empty() {
        md.push_str("No size grew by more than the limit.\n");
    } else {
        md.push_str(&format!("**{} attribute(s) grew by more than the limit:**\n\n", over.len()));
        md.push_str("| attribute | NAR before | NAR after | NAR change | closure before | closure after | closure change |\n");
        md.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
        for c in over.iter().take(MAX_ROWS) {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                code_span(&c.attr),
                human_bytes(c.base.nar_size),
                human_bytes(c.head.nar_size),
                signed_percent(c.nar_percent()),
                human_bytes(c.base.closure_size),
                human_bytes(c.head.closure_size),
                signed_percent(c.closure_percent()),
            ));
        }
        if over.len() > MAX_ROWS {
            md.push_str(&format!("\n… and {} more.\n", over.len() - MAX_ROWS));
        }
    }
    let mut deps = String::new();
    let mut listed = 0;
    for c in &report.compared {
        let changes = dependency_changes(&c.base, &c.head);
        if changes.is_empty() {
            continue;
        }
        listed += 1;
        if listed > MAX_ROWS {
            continue;
        }
        let words: Vec<String> = changes
            .iter()
            .map(|d| match d {
                DepChange::Added { name, version } => {
                    format!("+{} {}", escape_markdown(name), escape_markdown(version))
                }
                DepChange::Removed { name, version } => {
                    format!("−{} {}", escape_markdown(name), escape_markdown(version))
                }
                DepChange::Version { name, base, head } => {
                    format!("{} {} → {}", escape_markdown(name), escape_markdown(base), escape_markdown(head))
                }
            })
            .collect();
        deps.push_str(&format!("- {}: {}\n", code_span(&c.attr), words.join("; ")));
    }
    if listed > 0 {
        md.push_str("\n**Runtime dependency changes:**\n\n");
        md.push_str(&deps);
        if listed > MAX_ROWS {
            md.push_str(&format!("\n… and {} more attribute(s).\n", listed - MAX_ROWS));
        }
    }
    if md.chars().count() > MAX_MARKDOWN {
        let cut: String = md.chars().take(MAX_MARKDOWN - 40).collect();
        md = format!("{cut}\n\n… (cut to GitHub's limit)\n");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_path_info_shapes_are_read() {
        let old = br#"[{"path":"/nix/store/aaa-x-1.0","narSize":100,"closureSize":300,"references":["/nix/store/bbb-y-2.0"],"valid":true},
                       {"path":"/nix/store/ccc-z","valid":false}]"#;
        let m = parse_path_info(old).expect("2.8 shape");
        assert_eq!(m.len(), 1);
        let x = &m["/nix/store/aaa-x-1.0"];
        assert_eq!((x.nar_size, x.closure_size), (100, 300));
        assert_eq!(x.references, vec!["/nix/store/bbb-y-2.0".to_string()]);
        let new = br#"{"/nix/store/aaa-x-1.0":{"narSize":100,"closureSize":300,"references":["bbb-y-2.0"]},"/nix/store/ccc-z":null}"#;
        assert_eq!(parse_path_info(new).expect("new shape"), m);
        assert!(parse_path_info(b"42").is_err());
        assert!(parse_path_info(b"[{\"narSize\":1,\"closureSize\":1}]").is_err(), "an entry without a path");
    }

    #[test]
    fn names_split_like_parse_drv_name() {
        assert_eq!(parse_name("hello-2.10"), ("hello".into(), "2.10".into()));
        assert_eq!(parse_name("gtk+-3.24.1-dev"), ("gtk+".into(), "3.24.1-dev".into()));
        assert_eq!(parse_name("perl5.32.0-XML-Parser-2.46"), ("perl5.32.0-XML-Parser".into(), "2.46".into()));
        assert_eq!(parse_name("source"), ("source".into(), String::new()));
        assert_eq!(store_name("/nix/store/abc-glibc-2.31"), "glibc-2.31");
    }

    fn sizes(nar: u64, closure: u64, refs: &[&str]) -> AttrSizes {
        AttrSizes {
            drv: "/nix/store/x.drv".into(),
            commit: "c".into(),
            nar_size: nar,
            closure_size: closure,
            references: refs.iter().map(|r| r.to_string()).collect(),
            recorded_at: 0,
        }
    }

    #[test]
    fn growth_over_the_limit_and_dependency_changes() {
        let c = |b: AttrSizes, h: AttrSizes| SizeChange { attr: "a".into(), base: b, head: h };
        assert!(c(sizes(100, 1000, &[]), sizes(200, 1000, &[])).over(10.0), "NAR doubled");
        assert!(c(sizes(100, 1000, &[]), sizes(100, 1200, &[])).over(10.0), "closure +20 %");
        assert!(!c(sizes(100, 1000, &[]), sizes(105, 1050, &[])).over(10.0), "+5 % is within 10 %");
        assert!(!c(sizes(100, 1000, &[]), sizes(50, 500, &[])).over(0.0), "shrinking is never over");
        assert!(c(sizes(0, 0, &[]), sizes(1, 1, &[])).over(1000.0), "growth from nothing");
        let base =
            sizes(1, 1, &["/nix/store/h1-glibc-2.31", "/nix/store/h2-zlib-1.2.11", "/nix/store/h3-gone-1"]);
        let head =
            sizes(1, 1, &["/nix/store/h4-glibc-2.32", "/nix/store/h2-zlib-1.2.11", "/nix/store/h5-new-0.1"]);
        assert_eq!(
            dependency_changes(&base, &head),
            vec![
                DepChange::Version { name: "glibc".into(), base: "2.31".into(), head: "2.32".into() },
                DepChange::Added { name: "new".into(), version: "0.1".into() },
                DepChange::Removed { name: "gone".into(), version: "1".into() },
            ]
        );
    }

    #[test]
    fn measure_sums_nar_sizes_takes_outs_closure_and_drops_own_outputs() {
        let mut infos = HashMap::new();
        let info = |nar, closure, refs: &[&str]| PathInfo {
            nar_size: nar,
            closure_size: closure,
            references: refs.iter().map(|r| r.to_string()).collect(),
        };
        infos.insert(
            "/nix/store/o-x".to_string(),
            info(10, 100, &["/nix/store/d-x-dev", "/nix/store/l-lib-1"]),
        );
        infos.insert("/nix/store/d-x-dev".to_string(), info(5, 200, &["/nix/store/o-x"]));
        let outputs = vec![
            ("dev".to_string(), "/nix/store/d-x-dev".to_string()),
            ("out".to_string(), "/nix/store/o-x".to_string()),
        ];
        let s = measure("/nix/store/x.drv", "c", &outputs, &infos).expect("valid");
        assert_eq!((s.nar_size, s.closure_size), (15, 100));
        assert_eq!(s.references, vec!["/nix/store/l-lib-1".to_string()]);
        let missing = vec![("out".to_string(), "/nix/store/missing".to_string())];
        assert_eq!(measure("/nix/store/x.drv", "c", &missing, &infos), None);
    }

    #[test]
    fn the_report_renders_largest_first_and_escapes_names() {
        let report = SizeReport {
            job: "main".into(),
            base_branch: "main".into(),
            max_increase_percent: 10.0,
            measured: 3,
            compared: vec![
                SizeChange { attr: "small".into(), base: sizes(100, 100, &[]), head: sizes(150, 150, &[]) },
                SizeChange {
                    attr: "big|x".into(),
                    base: sizes(1 << 20, 1 << 20, &[]),
                    head: sizes(3 << 20, 3 << 20, &[]),
                },
                SizeChange { attr: "same".into(), base: sizes(100, 100, &[]), head: sizes(100, 100, &[]) },
            ],
            no_baseline: vec!["fresh".into()],
        };
        let md = render_markdown(&report);
        let big = md.find("big").expect("big listed");
        let small = md.find("`small`").expect("small listed");
        assert!(big < small, "{md}");
        assert!(!md.contains("`same`"), "{md}");
        assert!(md.contains("1.0 MiB | 3.0 MiB | +200.0 %"), "{md}");
        assert!(md.contains("2 attribute(s) grew"), "{md}");
    }
}
