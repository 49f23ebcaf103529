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

use redb::{ReadableTable as _, TableHandle};
use serde::{Deserialize, Serialize};

use crate::nix::process::{run_captured, ProcessError, RunLimits, Termination};
use crate::store::codec::{decode, encode};
use crate::store::schema::{BRANCH_SIZES, OUTPUT_SIZES, SIZE_SUMMARIES};
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
    /// A package only head refers to (one entry per version).
    Added { name: String, version: String },
    /// A package only base refers to (one entry per version).
    Removed { name: String, version: String },
    /// A package both refer to, in other versions (several versions of one name are joined by `, `).
    Version { name: String, base: String, head: String },
}

impl DepChange {
    /// The change as people read it: `+ zlib-1.2.11`, `- libfoo-1.0`, `openssl 1.1.1g → 1.1.1h`
    /// (unescaped: it comes from store path names).
    pub fn describe(&self) -> String {
        let full = |name: &str, version: &str| {
            if version.is_empty() {
                name.to_string()
            } else {
                format!("{name}-{version}")
            }
        };
        match self {
            DepChange::Added { name, version } => format!("+ {}", full(name, version)),
            DepChange::Removed { name, version } => format!("- {}", full(name, version)),
            DepChange::Version { name, base, head } => format!("{name} {base} → {head}"),
        }
    }
}

/// The runtime-dependency changes of one attribute, by package name (name and version split as
/// `builtins.parseDrvName` does, see `summary::classify::parse_drv_name`; a name with several store paths
/// is compared by its sorted versions). Version changes come first, then additions, then removals, each
/// by name; a dependency that was rebuilt under the same name and version is no change.
pub fn dependency_changes(base: &AttrSizes, head: &AttrSizes) -> Vec<DepChange> {
    let by_name = |refs: &[String]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in refs {
            let (name, version) = crate::summary::classify::parse_drv_name(store_name(r));
            m.entry(name.to_string()).or_default().insert(version.to_string());
        }
        m
    };
    let (b, h) = (by_name(&base.references), by_name(&head.references));
    let joined = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut versions = Vec::new();
    let mut added = Vec::new();
    for (name, vs) in &h {
        match b.get(name) {
            None => {
                added.extend(vs.iter().map(|v| DepChange::Added { name: name.clone(), version: v.clone() }))
            }
            Some(old) if old != vs => {
                versions.push(DepChange::Version { name: name.clone(), base: joined(old), head: joined(vs) })
            }
            Some(_) => {}
        }
    }
    let mut out = versions;
    out.extend(added);
    for (name, vs) in &b {
        if !h.contains_key(name) {
            out.extend(vs.iter().map(|v| DepChange::Removed { name: name.clone(), version: v.clone() }));
        }
    }
    out
}

/// `hash-name` → `name` of a store path.
fn store_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split_once('-').map_or(base, |(_, name)| name)
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

pub fn signed_percent(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:+.1} %"),
        None => "new".into(),
    }
}

/// One attribute whose NAR or closure size grew by more than the limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeIncrease {
    pub attr: String,
    /// NAR sizes (sum over its outputs) before and after, in bytes.
    pub nar_before: u64,
    pub nar_after: u64,
    /// Change in percent (`None`: the size before was 0).
    pub nar_change_percent: Option<f64>,
    /// Closure sizes before and after, in bytes.
    pub closure_before: u64,
    pub closure_after: u64,
    pub closure_change_percent: Option<f64>,
}

/// The runtime-dependency changes of one changed attribute that built on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyChanges {
    pub attr: String,
    /// Never empty.
    pub changes: Vec<DepChange>,
}

/// What one job's size check found, as the change summary and the size check run show it: stored in
/// `size_summaries` so that the summary of an old commit still shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeSummary {
    pub job: String,
    /// The commits compared (the change, not the baseline: that is `base_branch`'s newest sizes).
    pub base_sha: String,
    pub head_sha: String,
    /// The branch whose newest sizes were the baseline; `None`: the base commit itself (`ekaci review`).
    pub base_branch: Option<String>,
    pub max_increase_percent: f64,
    /// Attributes measured on head.
    pub measured: u64,
    /// Of those, attributes with a baseline.
    pub compared: u64,
    /// Of those, attributes without a baseline (new, or never measured there).
    pub no_baseline: u64,
    /// The compared attributes whose NAR or closure size grew by more than `max_increase_percent`, largest
    /// growth (in bytes, the larger of the two) first, then by attribute.
    pub increases: Vec<SizeIncrease>,
    /// Every Changed attribute that built on both sides (base commit and head) whose runtime references
    /// differ by package name or version, by attribute.
    pub dependencies: Vec<DependencyChanges>,
    /// Unix seconds.
    pub computed_at: u64,
}

// `max_increase_percent` is finite (the repository configuration's validator) and the percentages are
// computed from sizes, so no field is ever NaN.
impl Eq for SizeIncrease {}
impl Eq for SizeSummary {}

impl SizeSummary {
    /// The summary of `report` and the dependency changes between `base` (measured at the base commit)
    /// and `head` (`base_sha` and `head_sha` are left empty for the caller).
    pub fn of(
        report: &SizeReport,
        base_branch: Option<&str>,
        base: &[(String, AttrSizes)],
        head: &[(String, AttrSizes)],
    ) -> SizeSummary {
        let increases = report
            .over()
            .into_iter()
            .map(|c| SizeIncrease {
                attr: c.attr.clone(),
                nar_before: c.base.nar_size,
                nar_after: c.head.nar_size,
                nar_change_percent: c.nar_percent(),
                closure_before: c.base.closure_size,
                closure_after: c.head.closure_size,
                closure_change_percent: c.closure_percent(),
            })
            .collect();
        let base: HashMap<&str, &AttrSizes> = base.iter().map(|(a, s)| (a.as_str(), s)).collect();
        let mut dependencies: Vec<DependencyChanges> = head
            .iter()
            .filter_map(|(attr, h)| {
                let changes = dependency_changes(base.get(attr.as_str())?, h);
                (!changes.is_empty()).then(|| DependencyChanges { attr: attr.clone(), changes })
            })
            .collect();
        dependencies.sort_by(|a, b| a.attr.cmp(&b.attr));
        SizeSummary {
            job: report.job.clone(),
            base_sha: String::new(),
            head_sha: String::new(),
            base_branch: base_branch.map(str::to_string),
            max_increase_percent: report.max_increase_percent,
            measured: report.measured as u64,
            compared: report.compared.len() as u64,
            no_baseline: report.no_baseline.len() as u64,
            increases,
            dependencies,
            computed_at: crate::store::now_secs(),
        }
    }

    /// What the baseline was, as Markdown: `` the newest sizes on `main` `` or `the base commit`.
    pub fn baseline_markdown(&self) -> String {
        match &self.base_branch {
            Some(b) => format!("the newest sizes on {}", crate::text::code_span(b)),
            None => "the base commit".to_string(),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum SizeSummaryRecord {
    V1(SizeSummary),
}

fn summary_key(repo: &str, head: &str, base: &str, job: &str) -> String {
    format!("{repo}\u{0}{head}\u{0}{base}\u{0}{job}")
}

/// Stores (or replaces) the size summary of `summary.job` at `head` against `base` of `repo`.
pub fn record_summary(
    store: &Store,
    repo: &str,
    head: &str,
    base: &str,
    summary: &SizeSummary,
) -> Result<(), StoreError> {
    let bytes = encode(SIZE_SUMMARIES.name(), &SizeSummaryRecord::V1(summary.clone()))?;
    let tx = store.db().begin_write()?;
    {
        let mut table = tx.open_table(SIZE_SUMMARIES)?;
        table.insert(summary_key(repo, head, base, &summary.job).as_str(), bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// The stored size summary of `job` at `head` against `base` of `repo`, if any.
pub fn summary_of(
    store: &Store,
    repo: &str,
    head: &str,
    base: &str,
    job: &str,
) -> Result<Option<SizeSummary>, StoreError> {
    let key = summary_key(repo, head, base, job);
    let tx = store.db().begin_read()?;
    let table = tx.open_table(SIZE_SUMMARIES)?;
    let Some(v) = table.get(key.as_str())? else { return Ok(None) };
    match decode::<SizeSummaryRecord>(SIZE_SUMMARIES.name(), &format!("{key:?}"), v.value())? {
        SizeSummaryRecord::V1(s) => Ok(Some(s)),
    }
}

/// Removes the `output_sizes` rows recorded before `cutoff` (Unix seconds) and the `size_summaries` rows
/// computed before it. The sizes of a commit that is some branch's newest base (a `branch_sizes` row of
/// the same repository and job names that commit) are kept whatever their age: the next pull request
/// against that branch compares its dependencies with them. `branch_sizes` itself is never pruned (one
/// row per branch, job and attribute, replaced as the branch moves). Returns (sizes, summaries) removed.
pub fn remove_older_than(store: &Store, cutoff: u64) -> Result<(u64, u64), StoreError> {
    let tx = store.db().begin_write()?;
    let (mut old_sizes, mut old_summaries) = (Vec::new(), Vec::new());
    {
        let mut bases: BTreeSet<(String, String, String)> = BTreeSet::new();
        let branches = tx.open_table(BRANCH_SIZES)?;
        for row in branches.iter()? {
            let (k, v) = row?;
            let mut parts = k.value().split('\u{0}');
            let (Some(repo), Some(_branch), Some(job)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let s = decode_sizes("branch_sizes", k.value(), v.value())?;
            bases.insert((repo.to_string(), s.commit, job.to_string()));
        }
        let mut outputs = tx.open_table(OUTPUT_SIZES)?;
        for row in outputs.iter()? {
            let (k, v) = row?;
            let s = decode_sizes("output_sizes", k.value(), v.value())?;
            if s.recorded_at >= cutoff {
                continue;
            }
            let mut parts = k.value().split('\u{0}');
            if let (Some(repo), Some(commit), Some(job)) = (parts.next(), parts.next(), parts.next()) {
                if bases.contains(&(repo.to_string(), commit.to_string(), job.to_string())) {
                    continue;
                }
            }
            old_sizes.push(k.value().to_string());
        }
        for k in &old_sizes {
            outputs.remove(k.as_str())?;
        }
        let mut summaries = tx.open_table(SIZE_SUMMARIES)?;
        for row in summaries.iter()? {
            let (k, v) = row?;
            let SizeSummaryRecord::V1(s) =
                decode::<SizeSummaryRecord>(SIZE_SUMMARIES.name(), &format!("{:?}", k.value()), v.value())?;
            if s.computed_at < cutoff {
                old_summaries.push(k.value().to_string());
            }
        }
        for k in &old_summaries {
            summaries.remove(k.as_str())?;
        }
    }
    tx.commit()?;
    Ok((old_sizes.len() as u64, old_summaries.len() as u64))
}

/// Where one job's sizes come from and go to.
#[derive(Debug, Clone)]
pub struct JobSizing<'a> {
    /// The repository identity, as jobsets record it.
    pub repo: &'a str,
    pub base_commit: &'a str,
    pub head_commit: &'a str,
    /// The branch the base commit is the tip of (a pull request's base): its sizes become that branch's
    /// newest.
    pub base_is_tip_of: Option<&'a str>,
    /// The branch whose newest sizes are the baseline; `None`: the base commit's sizes.
    pub baseline_branch: Option<&'a str>,
    pub max_increase_percent: f64,
}

/// Measures `job`'s built attributes on both sides (the Added and Changed attributes whose head built or
/// was valid, and the base side of the Changed ones that built), records them, compares head with the
/// baseline, and records and returns the job's [`SizeSummary`].
pub async fn measure_job(
    jobsets: &crate::jobset::Jobsets,
    job: &crate::pipeline::JobReview,
    sizing: &JobSizing<'_>,
) -> Result<SizeSummary, SizeError> {
    use crate::jobset::{AttrOutcome, JobsetId};
    // (attribute, .drv, jobset) of each side's successfully built (or already valid) derivations.
    let head_side: Vec<(String, String, JobsetId)> = job
        .attrs
        .iter()
        .filter(|a| a.head.ok)
        .map(|a| (a.attr.clone(), a.head_drv.clone(), job.diff.head.id))
        .collect();
    let base_side: Vec<(String, String, JobsetId)> = job
        .attrs
        .iter()
        .filter_map(|a| match (&a.base, &a.base_drv) {
            (Some(b), Some(drv)) if b.ok => Some((a.attr.clone(), drv.clone(), job.diff.base.id)),
            _ => None,
        })
        .collect();
    let js = jobsets.clone();
    let (head_outputs, base_outputs) = smol::unblock(move || {
        let outputs = |side: &[(String, String, JobsetId)]| {
            let mut out = Vec::new();
            for (attr, drv, id) in side {
                if let Some(AttrOutcome::Drv(d)) = js.attr(*id, attr)? {
                    if &d.drv_path == drv {
                        out.push((attr.clone(), drv.clone(), d.outputs));
                    }
                }
            }
            Ok::<_, StoreError>(out)
        };
        Ok::<_, StoreError>((outputs(&head_side)?, outputs(&base_side)?))
    })
    .await?;
    let paths: Vec<String> = head_outputs
        .iter()
        .chain(base_outputs.iter())
        .flat_map(|(_, _, outs)| outs.iter().map(|(_, p)| p.clone()))
        .collect();
    let infos = path_info(&paths).await?;
    type Built = (String, String, Vec<(String, String)>);
    let measure = |side: &[Built], commit: &str| -> Vec<(String, AttrSizes)> {
        side.iter()
            .filter_map(|(attr, drv, outs)| measure(drv, commit, outs, &infos).map(|s| (attr.clone(), s)))
            .collect()
    };
    let head = measure(&head_outputs, sizing.head_commit);
    let base = measure(&base_outputs, sizing.base_commit);

    let store = jobsets.store().clone();
    let (repo, job_name) = (sizing.repo.to_string(), job.diff.job.clone());
    let (head_commit, base_commit) = (sizing.head_commit.to_string(), sizing.base_commit.to_string());
    let tip_of = sizing.base_is_tip_of.map(str::to_string);
    let branch = sizing.baseline_branch.map(str::to_string);
    let max = sizing.max_increase_percent;
    smol::unblock(move || {
        record(&store, &repo, &base_commit, tip_of.as_deref(), &job_name, &base)?;
        record(&store, &repo, &head_commit, None, &job_name, &head)?;
        let baseline = match &branch {
            Some(branch) => {
                let attrs: Vec<&str> = head.iter().map(|(a, _)| a.as_str()).collect();
                baseline(&store, &repo, branch, &job_name, &attrs)?
            }
            None => base.iter().cloned().collect(),
        };
        let shown_branch = branch.clone().unwrap_or_else(|| "the base commit".to_string());
        let report = compare(&job_name, &shown_branch, max, &head, &baseline);
        let mut summary = SizeSummary::of(&report, branch.as_deref(), &base, &head);
        (summary.base_sha, summary.head_sha) = (base_commit.clone(), head_commit.clone());
        record_summary(&store, &repo, &head_commit, &base_commit, &summary)?;
        Ok(summary)
    })
    .await
}

/// Most rows a rendered size check lists per section; the rest are counted.
const MAX_ROWS: usize = 200;
/// Most dependency changes listed per attribute; the rest are counted.
pub const MAX_DEPS_PER_ATTR: usize = 20;
/// GitHub's limit on a check run's summary, in bytes.
const MAX_MARKDOWN: usize = 65_535;

/// One row of the size-increase table (attribute, NAR before, after, change, closure before, after,
/// change).
pub fn increase_row(i: &SizeIncrease) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} |\n",
        crate::text::cell_code_span(&i.attr),
        human_bytes(i.nar_before),
        human_bytes(i.nar_after),
        signed_percent(i.nar_change_percent),
        human_bytes(i.closure_before),
        human_bytes(i.closure_after),
        signed_percent(i.closure_change_percent),
    )
}

/// The header of the size-increase table.
pub const INCREASE_HEADER: &str = "| attribute | NAR before | NAR after | NAR change | closure before | \
                                   closure after | closure change |\n| --- | --- | --- | --- | --- | --- | --- |\n";

/// One attribute's dependency changes as a list item: `` - `attr`: `+ zlib-1.2.11`, `- libfoo-1.0` ``,
/// at most [`MAX_DEPS_PER_ATTR`] of them.
pub fn dependency_line(d: &DependencyChanges) -> String {
    use crate::text::code_span;
    let mut words: Vec<String> =
        d.changes.iter().take(MAX_DEPS_PER_ATTR).map(|c| code_span(&c.describe())).collect();
    if d.changes.len() > MAX_DEPS_PER_ATTR {
        words.push(format!("… and {} more", d.changes.len() - MAX_DEPS_PER_ATTR));
    }
    format!("- {}: {}\n", code_span(&d.attr), words.join(", "))
}

/// The size check run's Markdown: the sizes over the limit (attribute, old, new, change for NAR and
/// closure, largest first), then the runtime dependencies of each Changed attribute that changed.
/// Attribute and package names are code spans; the text stays within GitHub's limit.
pub fn render_markdown(s: &SizeSummary) -> String {
    use crate::text::code_span;
    let mut md = format!(
        "Sizes of {} built attribute(s) of job {} against {} ({} compared, {} without a baseline); the \
         limit is +{} %.\n\n",
        s.measured,
        code_span(&s.job),
        s.baseline_markdown(),
        s.compared,
        s.no_baseline,
        s.max_increase_percent
    );
    if s.increases.is_empty() {
        md.push_str("No size grew by more than the limit.\n");
    } else {
        md.push_str(&format!("**{} attribute(s) grew by more than the limit:**\n\n", s.increases.len()));
        md.push_str(INCREASE_HEADER);
        for i in s.increases.iter().take(MAX_ROWS) {
            md.push_str(&increase_row(i));
        }
        if s.increases.len() > MAX_ROWS {
            md.push_str(&format!("\n… and {} more\n", s.increases.len() - MAX_ROWS));
        }
    }
    if !s.dependencies.is_empty() {
        md.push_str(&format!("\n**Runtime dependency changes ({}):**\n\n", s.dependencies.len()));
        for d in s.dependencies.iter().take(MAX_ROWS) {
            md.push_str(&dependency_line(d));
        }
        if s.dependencies.len() > MAX_ROWS {
            md.push_str(&format!("\n… and {} more\n", s.dependencies.len() - MAX_ROWS));
        }
    }
    if md.len() > MAX_MARKDOWN {
        const FOOTER: &str = "\n\n… (cut to GitHub's limit)\n";
        md.truncate(crate::text::floor_char_boundary(&md, MAX_MARKDOWN - FOOTER.len()));
        md.push_str(FOOTER);
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
        let parse = crate::summary::classify::parse_drv_name;
        assert_eq!(parse("perl5.32.0-XML-Parser-2.46"), ("perl5.32.0-XML-Parser", "2.46"));
        assert_eq!(parse(store_name("/nix/store/abc-gtk+-3.24.1-dev")), ("gtk+", "3.24.1-dev"));
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
        let base = vec![("same".to_string(), sizes(100, 100, &["/nix/store/h1-openssl-1.1.1g"]))];
        let head = vec![("same".to_string(), sizes(100, 100, &["/nix/store/h2-openssl-1.1.1h"]))];
        let md = render_markdown(&SizeSummary::of(&report, Some("main"), &base, &head));
        let big = md.find("big").expect("big listed");
        let small = md.find("`small`").expect("small listed");
        assert!(big < small, "{md}");
        assert!(!md.contains("| `same`"), "{md}");
        assert!(md.contains("| `big\\|x` | 1.0 MiB | 3.0 MiB | +200.0 % |"), "{md}");
        assert!(md.contains("2 attribute(s) grew"), "{md}");
        assert!(md.contains("- `same`: `openssl 1.1.1g → 1.1.1h`\n"), "{md}");
    }

    #[test]
    fn dependency_changes_read_like_the_brief() {
        let base =
            sizes(1, 1, &["/nix/store/a-libfoo-1.0", "/nix/store/b-source", "/nix/store/c-bash-5.1-p16"]);
        let head =
            sizes(1, 1, &["/nix/store/d-zlib-1.2.11", "/nix/store/c-bash-5.1-p16", "/nix/store/e-source"]);
        let words: Vec<String> = dependency_changes(&base, &head).iter().map(DepChange::describe).collect();
        // `source` was rebuilt (another hash), same name and version: no change.
        assert_eq!(words, ["+ zlib-1.2.11", "- libfoo-1.0"]);
    }

    #[test]
    fn a_huge_size_check_stays_within_githubs_limit() {
        let refs: Vec<String> = (0..40).map(|i| format!("/nix/store/h{i}-dep{i}-1.0")).collect();
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let compared: Vec<SizeChange> = (0..5000)
            .map(|i| SizeChange {
                attr: format!("package-with-a-rather-long-attribute-name-{i:05}"),
                base: sizes(1000, 1000, &[]),
                head: sizes(5000 + i, 5000 + i, &refs),
            })
            .collect();
        let head: Vec<(String, AttrSizes)> =
            compared.iter().map(|c| (c.attr.clone(), c.head.clone())).collect();
        let base: Vec<(String, AttrSizes)> =
            compared.iter().map(|c| (c.attr.clone(), c.base.clone())).collect();
        let report = SizeReport {
            job: "main".into(),
            base_branch: "main".into(),
            max_increase_percent: 10.0,
            measured: 5000,
            compared,
            no_baseline: vec![],
        };
        let summary = SizeSummary::of(&report, Some("main"), &base, &head);
        assert_eq!((summary.increases.len(), summary.dependencies.len()), (5000, 5000));
        assert_eq!(
            summary.increases[0].attr, "package-with-a-rather-long-attribute-name-04999",
            "largest first"
        );
        let md = render_markdown(&summary);
        assert!(md.len() <= 65_535, "{}", md.len());
        assert!(md.contains("\n… and 4800 more\n"), "rows past 200 are counted");
        assert!(md.contains(", … and 20 more\n"), "changes past 20 per attribute are counted");
    }

    #[test]
    fn retention_keeps_new_sizes_and_the_newest_base_of_a_branch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb")).expect("open");
        let at = |commit: &str, age: u64| AttrSizes {
            commit: commit.into(),
            recorded_at: crate::store::now_secs() - age,
            ..sizes(10, 20, &[])
        };
        let day = 86400;
        // `base1` is main's newest base (kept although old); `old` is old and no branch's base; `new` is new.
        record(&store, "r", "base1", Some("main"), "j", &[("a".into(), at("base1", 40 * day))]).expect("rec");
        record(&store, "r", "old", None, "j", &[("a".into(), at("old", 40 * day))]).expect("rec");
        record(&store, "r", "new", None, "j", &[("a".into(), at("new", 0))]).expect("rec");
        // The same commit under another job is not that job's base: removed.
        record(&store, "r", "base1", None, "k", &[("a".into(), at("base1", 40 * day))]).expect("rec");
        let summary = |computed_at: u64| SizeSummary {
            job: "j".into(),
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
        record_summary(&store, "r", "old-head", "b", &summary(crate::store::now_secs() - 40 * day))
            .expect("sum");
        record_summary(&store, "r", "new-head", "b", &summary(crate::store::now_secs())).expect("sum");
        let cutoff = crate::store::now_secs() - 30 * day;
        assert_eq!(remove_older_than(&store, cutoff).expect("gc"), (2, 1));
        assert_eq!(at_commit(&store, "r", "base1", "j").expect("read").len(), 1, "newest base kept");
        assert!(at_commit(&store, "r", "base1", "k").expect("read").is_empty());
        assert!(at_commit(&store, "r", "old", "j").expect("read").is_empty());
        assert_eq!(at_commit(&store, "r", "new", "j").expect("read").len(), 1);
        assert_eq!(
            baseline(&store, "r", "main", "j", &["a"]).expect("read").len(),
            1,
            "branch_sizes untouched"
        );
        assert!(summary_of(&store, "r", "old-head", "b", "j").expect("read").is_none());
        assert!(summary_of(&store, "r", "new-head", "b", "j").expect("read").is_some());
        assert_eq!(remove_older_than(&store, cutoff).expect("gc"), (0, 0), "nothing more");
    }
}
