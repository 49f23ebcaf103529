//! Repository configuration (`.eka-ci/config.json`): untrusted input from the repository under test.
//!
//! This module finds a checkout's configuration file (falling back to the deprecated
//! `.ekaci/config.json`), reads it under a size cap, and validates it field by field into a
//! [`RepoConfig`]. The file arrives with pull requests, so everything in it is treated as hostile:
//!
//! * the file itself may not be larger than [`MAX_CONFIG_BYTES`] nor resolve outside the checkout;
//! * job files must be relative paths that stay inside the checkout, even after following symlinks,
//!   and symlinks that leave the checkout are never followed outside it (so the answer cannot be
//!   used to probe the server's filesystem);
//! * names, attribute paths, cache ids, bind mounts and change-set globs are checked for shape;
//! * unknown fields are reported as warnings with their field path instead of being ignored.
//!
//! Every problem is collected into a list of [`FieldError`]s (path + message) rather than stopping at
//! the first, and [`FieldError::to_markdown_list`] renders such a list for a GitHub check run with all
//! user-provided text escaped. Nothing reachable from the input panics.
//!
//! The module only reads files; it never evaluates Nix, talks to the network or opens the database.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where the configuration lives, relative to the repository root.
pub const CONFIG_FILE: &str = ".eka-ci/config.json";
/// The deprecated location, read only when [`CONFIG_FILE`] does not exist.
pub const LEGACY_CONFIG_FILE: &str = ".ekaci/config.json";
/// The largest configuration file accepted, in bytes (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// The longest job or check name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// The flake output attribute evaluated by `"flake": true` when no `attr_path` is given.
pub const DEFAULT_FLAKE_ATTR: &str = "hydraJobs";
/// The largest `package_change_summary.max_packages_listed` accepted.
pub const MAX_PACKAGES_LISTED: u32 = 10_000;
/// The largest `rebuild_impact.max_top_blast_radius` accepted.
pub const MAX_TOP_BLAST_RADIUS: u32 = 1000;
/// The largest number of `change_sets` rules accepted.
pub const MAX_CHANGE_SET_RULES: usize = 1000;

const MAX_ATTR_PATH_BYTES: usize = 1024;
const MAX_REL_PATH_BYTES: usize = 4096;
const MAX_GLOB_BYTES: usize = 1024;
const MAX_CACHE_ID_CHARS: usize = 256;
const MAX_BRANCH_BYTES: usize = 255;
const MAX_SYMLINK_HOPS: usize = 40;
const MARKDOWN_MAX_ITEMS: usize = 100;
const PATH_KEY_SHOWN_CHARS: usize = 64;

const TOP_FIELDS: &[&str] = &["jobs", "checks", "package_change_summary", "rebuild_impact", "change_sets"];
const JOB_FIELDS: &[&str] = &["file", "attr_path", "flake", "allow_eval_failures", "caches", "size_check"];
const SIZE_CHECK_FIELDS: &[&str] = &["max_increase_percent", "base_branch"];
const CHECK_FIELDS: &[&str] = &["shell", "command", "allow_network", "ro_bind"];
const SUMMARY_FIELDS: &[&str] = &["enabled", "max_packages_listed", "include_rebuild_only"];
const IMPACT_FIELDS: &[&str] = &["enabled", "max_top_blast_radius", "compute_full_blast_radius"];

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// The result of looking for and reading a checkout's configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum RepoConfigOutcome {
    /// A valid configuration. `file` is relative to the checkout (e.g. `.eka-ci/config.json`).
    Loaded { config: RepoConfig, file: PathBuf, warnings: Vec<FieldError> },
    /// Neither `.eka-ci/config.json` nor `.ekaci/config.json` exists: the repository has not opted in.
    NotFound,
    /// A configuration file exists but cannot be used; `errors` is never empty.
    Invalid { file: PathBuf, errors: Vec<FieldError>, warnings: Vec<FieldError> },
}

/// One problem found in the configuration: where (`jobs.hello.file`; empty for the whole file) and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// A validated repository configuration, with every default applied.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RepoConfig {
    pub jobs: BTreeMap<String, JobConfig>,
    pub checks: BTreeMap<String, CheckConfig>,
    pub package_change_summary: PackageChangeSummaryConfig,
    pub rebuild_impact: RebuildImpactConfig,
    pub change_sets: ChangeSets,
}

/// A Nix expression to evaluate, and what to do with the derivations it yields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobConfig {
    pub source: JobSource,
    /// When true, evaluation errors do not fail the job's check.
    pub allow_eval_failures: bool,
    /// Cache ids from the server configuration, in the order given (duplicates removed).
    pub caches: Vec<String>,
    pub size_check: Option<SizeCheck>,
}

/// What a job evaluates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobSource {
    /// A Nix file inside the repository; `file` is relative to the repository root, normalised (no
    /// `.` components) and known to stay inside it. `attr_path` is empty for the whole file.
    File { file: PathBuf, attr_path: Vec<String> },
    /// The repository's `flake.nix`; `attr_path` is the output attribute (never empty; by default
    /// [`DEFAULT_FLAKE_ATTR`]).
    Flake { attr_path: Vec<String> },
}

/// Output and closure size monitoring for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeCheck {
    /// Warn when a size grows by more than this many percent (finite, ≥ 0).
    pub max_increase_percent: f64,
    /// The branch whose latest successful build is the baseline.
    pub base_branch: String,
}

/// A sandboxed command run in a shell derivation from the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckConfig {
    /// Dotted attribute path of the shell derivation that provides the tools.
    pub shell: String,
    /// The command line run inside the sandbox (never empty).
    pub command: String,
    pub allow_network: bool,
    /// Extra read-only bind mounts: absolute paths without `..`.
    pub ro_bind: Vec<PathBuf>,
}

/// The `package_change_summary` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChangeSummaryConfig {
    pub enabled: bool,
    /// 1 to [`MAX_PACKAGES_LISTED`].
    pub max_packages_listed: u32,
    pub include_rebuild_only: bool,
}

impl Default for PackageChangeSummaryConfig {
    fn default() -> Self {
        PackageChangeSummaryConfig { enabled: true, max_packages_listed: 100, include_rebuild_only: false }
    }
}

/// The `rebuild_impact` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildImpactConfig {
    pub enabled: bool,
    /// 1 to [`MAX_TOP_BLAST_RADIUS`].
    pub max_top_blast_radius: u32,
    pub compute_full_blast_radius: bool,
}

impl Default for RebuildImpactConfig {
    fn default() -> Self {
        RebuildImpactConfig { enabled: true, max_top_blast_radius: 5, compute_full_blast_radius: false }
    }
}

/// What a change-set rule says about the files it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChangeSetKind {
    /// Documentation: no rebuild needed.
    DocsOnly,
    /// Irrelevant to the build (e.g. CI metadata): no rebuild needed.
    NoOp,
    /// Forces every job to be re-evaluated and rebuilt.
    FullRebuild,
}

impl ChangeSetKind {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSetKind::DocsOnly => "docs-only",
            ChangeSetKind::NoOp => "no-op",
            ChangeSetKind::FullRebuild => "full-rebuild",
        }
    }

    fn from_config(s: &str) -> Option<Self> {
        match s {
            "docs-only" => Some(ChangeSetKind::DocsOnly),
            "no-op" => Some(ChangeSetKind::NoOp),
            "full-rebuild" => Some(ChangeSetKind::FullRebuild),
            _ => None,
        }
    }
}

/// One `change_sets` entry: a path glob and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSetRule {
    pub pattern: String,
    pub kind: ChangeSetKind,
}

/// The `change_sets` rules, sorted by pattern.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChangeSets {
    pub rules: Vec<ChangeSetRule>,
}

/// The verdict of [`ChangeSets::classify`] on a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeClass {
    /// Every changed path matched a `docs-only` or `no-op` rule: nothing needs evaluating.
    NoRebuild,
    /// No rule decides the diff: evaluate and diff the jobsets as usual.
    Normal,
    /// At least one changed path matched a `full-rebuild` rule.
    FullRebuild,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Finds, reads and validates the configuration of the checkout at `checkout`.
///
/// Looks at [`CONFIG_FILE`] first and, only when it does not exist, at [`LEGACY_CONFIG_FILE`] (adding a
/// deprecation warning). The file must be a regular file inside the checkout (after resolving
/// symlinks) and at most [`MAX_CONFIG_BYTES`] long.
pub fn load(checkout: &Path) -> RepoConfigOutcome {
    let current = PathBuf::from(CONFIG_FILE);
    let root = match fs::canonicalize(checkout) {
        Ok(root) => root,
        Err(e) => {
            return RepoConfigOutcome::Invalid {
                file: current,
                errors: vec![FieldError::new(
                    "",
                    format!("the repository checkout cannot be accessed ({})", e.kind()),
                )],
                warnings: vec![],
            }
        }
    };

    let mut warnings = Vec::new();
    let (file, path, meta) = match resolve_in_repo(&root, Path::new(CONFIG_FILE)) {
        Ok((path, meta)) => {
            if resolve_in_repo(&root, Path::new(LEGACY_CONFIG_FILE)).is_ok() {
                warnings.push(FieldError::new(
                    "",
                    format!("{LEGACY_CONFIG_FILE} is ignored because {CONFIG_FILE} exists; delete it"),
                ));
            }
            (current, path, meta)
        }
        Err(ResolveError::NotFound) => match resolve_in_repo(&root, Path::new(LEGACY_CONFIG_FILE)) {
            Ok((path, meta)) => {
                warnings.push(FieldError::new(
                    "",
                    format!("{LEGACY_CONFIG_FILE} is deprecated; move it to {CONFIG_FILE}"),
                ));
                (PathBuf::from(LEGACY_CONFIG_FILE), path, meta)
            }
            Err(ResolveError::NotFound) => return RepoConfigOutcome::NotFound,
            Err(e) => return invalid_file(PathBuf::from(LEGACY_CONFIG_FILE), e.message(), warnings),
        },
        Err(e) => return invalid_file(current, e.message(), warnings),
    };

    if !meta.is_file() {
        return invalid_file(file, "the configuration must be a regular file".into(), warnings);
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return invalid_file(file, too_large_message(), warnings);
    }
    let bytes = match read_capped(&path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return invalid_file(file, too_large_message(), warnings),
        Err(e) => {
            return invalid_file(
                file,
                format!("the configuration file cannot be read ({})", e.kind()),
                warnings,
            )
        }
    };

    match parse_collect(&bytes, &root) {
        Ok((config, more)) => {
            warnings.extend(more);
            RepoConfigOutcome::Loaded { config, file, warnings }
        }
        Err((errors, more)) => {
            warnings.extend(more);
            RepoConfigOutcome::Invalid { file, errors, warnings }
        }
    }
}

/// Validates the bytes of a configuration file against the checkout at `checkout` (used to check
/// that job files exist inside it). Returns the configuration and its warnings, or every error.
pub fn parse(bytes: &[u8], checkout: &Path) -> Result<(RepoConfig, Vec<FieldError>), Vec<FieldError>> {
    parse_collect(bytes, checkout).map_err(|(errors, _warnings)| errors)
}

fn invalid_file(file: PathBuf, message: String, warnings: Vec<FieldError>) -> RepoConfigOutcome {
    RepoConfigOutcome::Invalid { file, errors: vec![FieldError::new("", message)], warnings }
}

fn too_large_message() -> String {
    format!("the configuration file is larger than the 1 MiB limit ({MAX_CONFIG_BYTES} bytes)")
}

/// Reads at most [`MAX_CONFIG_BYTES`]; `None` when the file turns out to be longer.
fn read_capped(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Ok(None);
    }
    Ok(Some(bytes))
}

type Collected = Result<(RepoConfig, Vec<FieldError>), (Vec<FieldError>, Vec<FieldError>)>;

fn parse_collect(bytes: &[u8], checkout: &Path) -> Collected {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err((vec![FieldError::new("", too_large_message())], vec![]));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return Err((vec![json_error(&e)], vec![])),
    };
    let mut v = Validator { root: fs::canonicalize(checkout).ok(), errors: Vec::new(), warnings: Vec::new() };
    let config = v.config(&value);
    match config {
        Some(config) if v.errors.is_empty() => Ok((config, v.warnings)),
        _ => {
            if v.errors.is_empty() {
                v.errors.push(FieldError::new("", "the configuration is invalid"));
            }
            Err((v.errors, v.warnings))
        }
    }
}

fn json_error(e: &serde_json::Error) -> FieldError {
    let full = e.to_string();
    let what = match full.rsplit_once(" at line ") {
        Some((what, _)) => what.to_string(),
        None => full,
    };
    FieldError::new("", format!("invalid JSON at line {}, column {}: {what}", e.line(), e.column()))
}

// ---------------------------------------------------------------------------------------------
// Field errors and their Markdown rendering
// ---------------------------------------------------------------------------------------------

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into() }
    }

    /// Renders `errors` as a Markdown bullet list (one line per error, at most 100 of them followed by a
    /// count of the rest) for a GitHub check-run summary. Paths and messages may contain text from the
    /// repository, so every Markdown-significant character is escaped, `@` and `#` are broken up so they
    /// cannot mention users or reference issues, and control characters are replaced.
    pub fn to_markdown_list(errors: &[FieldError]) -> String {
        let mut out = String::new();
        for e in errors.iter().take(MARKDOWN_MAX_ITEMS) {
            out.push_str("- ");
            if !e.path.is_empty() {
                out.push_str("**");
                out.push_str(&escape_markdown(&e.path));
                out.push_str("**: ");
            }
            out.push_str(&escape_markdown(&e.message));
            out.push('\n');
        }
        if errors.len() > MARKDOWN_MAX_ITEMS {
            out.push_str(&format!("- … and {} more\n", errors.len() - MARKDOWN_MAX_ITEMS));
        }
        out
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Escapes `text` so that it renders literally, on one line, inside GitHub-flavoured Markdown.
pub fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for c in text.chars() {
        match c {
            // A zero-width space after `@`/`#` stops mentions and issue references.
            '@' => out.push_str("\\@&#8203;"),
            '#' => out.push_str("\\#&#8203;"),
            c if c.is_ascii_punctuation() => {
                out.push('\\');
                out.push(c);
            }
            c if is_forbidden_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Control characters and the Unicode bidirectional overrides.
fn is_forbidden_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `parent.key`, or `parent["key"]` (JSON-quoted, shortened) when the key is not a plain identifier.
fn key_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= PATH_KEY_SHOWN_CHARS
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        if parent.is_empty() {
            key.to_string()
        } else {
            format!("{parent}.{key}")
        }
    } else {
        let shown: String = if key.chars().count() > PATH_KEY_SHOWN_CHARS {
            key.chars().take(PATH_KEY_SHOWN_CHARS).chain(std::iter::once('…')).collect()
        } else {
            key.to_string()
        };
        let quoted = serde_json::to_string(&shown).unwrap_or_else(|_| String::from("\"?\""));
        format!("{parent}[{quoted}]")
    }
}

fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

struct Validator {
    /// The canonical checkout, or `None` when it cannot be resolved.
    root: Option<PathBuf>,
    errors: Vec<FieldError>,
    warnings: Vec<FieldError>,
}

impl Validator {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(FieldError::new(path, message));
    }

    fn type_error(&mut self, path: &str, expected: &str, found: &Value) {
        self.error(path, format!("expected {expected}, found {}", describe(found)));
    }

    fn object<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(map) => Some(map),
            other => {
                self.type_error(path, "an object", other);
                None
            }
        }
    }

    fn unknown_fields(&mut self, obj: &Map<String, Value>, path: &str, known: &[&str]) {
        for key in obj.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let message = match suggest(key, known) {
                Some(s) => format!("unknown field (did you mean \"{s}\"?)"),
                None => "unknown field".to_string(),
            };
            self.warn(&key_path(path, key), message);
        }
    }

    fn opt_bool(&mut self, obj: &Map<String, Value>, parent: &str, key: &str, default: bool) -> bool {
        match obj.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.type_error(&key_path(parent, key), "a boolean", other);
                default
            }
        }
    }

    /// A whole number ≥ 1 that fits in `u32`.
    /// An optional whole number in `1..=max`.
    fn opt_count(
        &mut self,
        obj: &Map<String, Value>,
        parent: &str,
        key: &str,
        default: u32,
        max: u32,
    ) -> u32 {
        let path = key_path(parent, key);
        let n = match obj.get(key) {
            None => return default,
            Some(Value::Number(n)) => n,
            Some(other) => {
                self.type_error(&path, "a whole number", other);
                return default;
            }
        };
        match (n.as_u64(), n.as_i64()) {
            (Some(0), _) => self.error(&path, "must be at least 1"),
            (Some(u), _) if u <= u64::from(max) => return u32::try_from(u).unwrap_or(max),
            (Some(_), _) => self.error(&path, format!("must be at most {max}")),
            (None, Some(_)) => self.error(&path, "must be at least 1"),
            (None, None) => self.error(&path, "expected a whole number, found a fractional number"),
        }
        default
    }

    /// A required field that must be a string.
    fn required_str<'v>(&mut self, obj: &'v Map<String, Value>, parent: &str, key: &str) -> Option<&'v str> {
        let path = key_path(parent, key);
        match obj.get(key) {
            None => {
                self.error(&path, "missing required field");
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.type_error(&path, "a string", other);
                None
            }
        }
    }

    fn name(&mut self, name: &str, path: &str) -> bool {
        let problem = if name.is_empty() {
            Some(String::from("name must not be empty"))
        } else if name.chars().count() > MAX_NAME_CHARS {
            Some(format!("name must be at most {MAX_NAME_CHARS} characters long"))
        } else if name.chars().any(is_forbidden_char) {
            Some(String::from("name must not contain control characters"))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error(path, message);
                false
            }
            None => true,
        }
    }

    fn config(&mut self, value: &Value) -> Option<RepoConfig> {
        let top = match value {
            Value::Object(top) => top,
            other => {
                self.error("", format!("the configuration must be a JSON object, found {}", describe(other)));
                return None;
            }
        };
        self.unknown_fields(top, "", TOP_FIELDS);
        let jobs = top.get("jobs").map(|v| self.jobs(v)).unwrap_or_default();
        let checks = top.get("checks").map(|v| self.checks(v)).unwrap_or_default();
        let package_change_summary =
            top.get("package_change_summary").map(|v| self.package_change_summary(v)).unwrap_or_default();
        let rebuild_impact = top.get("rebuild_impact").map(|v| self.rebuild_impact(v)).unwrap_or_default();
        let change_sets = top.get("change_sets").map(|v| self.change_sets(v)).unwrap_or_default();
        Some(RepoConfig { jobs, checks, package_change_summary, rebuild_impact, change_sets })
    }

    // --- jobs ---------------------------------------------------------------------------------

    fn jobs(&mut self, v: &Value) -> BTreeMap<String, JobConfig> {
        let mut out = BTreeMap::new();
        let Some(map) = self.object(v, "jobs") else { return out };
        for (name, body) in map {
            let path = key_path("jobs", name);
            let name_ok = self.name(name, &path);
            if let Some(job) = self.job(body, &path) {
                if name_ok {
                    out.insert(name.clone(), job);
                }
            }
        }
        out
    }

    fn job(&mut self, v: &Value, path: &str) -> Option<JobConfig> {
        let obj = self.object(v, path)?;
        self.unknown_fields(obj, path, JOB_FIELDS);
        let source = self.job_source(obj, path);
        let allow_eval_failures = self.opt_bool(obj, path, "allow_eval_failures", false);
        let caches = self.caches(obj, path);
        let size_check = match obj.get("size_check") {
            None => Some(None),
            Some(v) => self.size_check(v, &key_path(path, "size_check")).map(Some),
        };
        Some(JobConfig { source: source?, allow_eval_failures, caches, size_check: size_check? })
    }

    fn job_source(&mut self, obj: &Map<String, Value>, path: &str) -> Option<JobSource> {
        enum Flake {
            No,
            Default,
            Named(Vec<String>),
            Invalid,
        }
        let flake_path = key_path(path, "flake");
        let file_path = key_path(path, "file");
        let attr_path_path = key_path(path, "attr_path");

        let flake = match obj.get("flake") {
            None | Some(Value::Bool(false)) => Flake::No,
            Some(Value::Bool(true)) => Flake::Default,
            Some(Value::String(s)) => match self.attr_path(s, &flake_path) {
                Some(p) => Flake::Named(p),
                None => Flake::Invalid,
            },
            Some(other) => {
                self.type_error(
                    &flake_path,
                    "a boolean or a string naming the flake output attribute",
                    other,
                );
                Flake::Invalid
            }
        };
        // None: absent; Some(None): present but invalid.
        let attr_path = obj.get("attr_path").map(|v| match v {
            Value::String(s) => self.attr_path(s, &attr_path_path),
            other => {
                self.type_error(&attr_path_path, "a string (a dot-separated attribute path)", other);
                None
            }
        });

        if let Flake::No = flake {
            let file = match obj.get("file") {
                None => {
                    self.error(
                        &file_path,
                        "missing required field (a job needs \"file\", or \"flake\": true to evaluate the \
                         repository's flake)",
                    );
                    None
                }
                Some(Value::String(s)) => self.job_file(s, &file_path),
                Some(other) => {
                    self.type_error(&file_path, "a string (a path relative to the repository root)", other);
                    None
                }
            };
            let attr_path = attr_path.unwrap_or(Some(Vec::new()));
            return Some(JobSource::File { file: file?, attr_path: attr_path? });
        }

        if obj.contains_key("file") {
            self.error(&file_path, "must not be set on a flake job (remove \"file\" or \"flake\")");
        }
        match flake {
            Flake::Default => {
                self.require_flake_nix(&flake_path);
                let attr_path = attr_path.unwrap_or_else(|| Some(vec![DEFAULT_FLAKE_ATTR.to_string()]));
                Some(JobSource::Flake { attr_path: attr_path? })
            }
            Flake::Named(p) => {
                self.require_flake_nix(&flake_path);
                if attr_path.is_some() {
                    self.error(
                        &attr_path_path,
                        "must not be set when \"flake\" names the output attribute; put the whole \
                         attribute path in \"flake\", or use \"flake\": true with \"attr_path\"",
                    );
                    return None;
                }
                Some(JobSource::Flake { attr_path: p })
            }
            Flake::No | Flake::Invalid => None,
        }
    }

    fn require_flake_nix(&mut self, path: &str) {
        let Some(root) = self.root.clone() else {
            self.error(path, "cannot be checked: the repository checkout is not accessible");
            return;
        };
        match resolve_in_repo(&root, Path::new("flake.nix")) {
            Ok((_, meta)) if meta.is_file() => {}
            Ok(_) => self.error(path, "the repository's flake.nix is not a regular file"),
            Err(ResolveError::NotFound) => self.error(path, "the repository has no flake.nix"),
            Err(e) => self.error(path, format!("flake.nix {}", e.message_for_file())),
        }
    }

    /// A dot-separated attribute path such as `packages.x86_64-linux.hello`.
    fn attr_path(&mut self, s: &str, path: &str) -> Option<Vec<String>> {
        if s.is_empty() {
            self.error(path, "attribute path must not be empty");
            return None;
        }
        if s.len() > MAX_ATTR_PATH_BYTES {
            self.error(path, format!("attribute path must be at most {MAX_ATTR_PATH_BYTES} bytes long"));
            return None;
        }
        let mut segments = Vec::new();
        for segment in s.split('.') {
            if segment.is_empty() {
                self.error(path, "attribute path must be dot-separated names without empty parts");
                return None;
            }
            let chars_ok =
                segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'));
            if !chars_ok || segment.starts_with('-') {
                self.error(
                    path,
                    "attribute names may only contain ASCII letters, digits, \"_\", \"-\" and \"+\", and \
                     must not start with \"-\"",
                );
                return None;
            }
            segments.push(segment.to_string());
        }
        Some(segments)
    }

    fn job_file(&mut self, s: &str, path: &str) -> Option<PathBuf> {
        let rel = match relative_repo_path(s) {
            Ok(rel) => rel,
            Err(message) => {
                self.error(path, message);
                return None;
            }
        };
        let Some(root) = self.root.clone() else {
            self.error(path, "cannot be checked: the repository checkout is not accessible");
            return None;
        };
        match resolve_in_repo(&root, &rel) {
            Ok((_, meta)) if meta.is_dir() => {
                self.error(path, "names a directory; it must name a Nix file");
                None
            }
            Ok((_, meta)) if !meta.is_file() => {
                self.error(path, "is not a regular file");
                None
            }
            Ok(_) => Some(rel),
            Err(e) => {
                self.error(path, format!("{} {}", rel.display(), e.message_for_file()));
                None
            }
        }
    }

    fn caches(&mut self, obj: &Map<String, Value>, parent: &str) -> Vec<String> {
        let path = key_path(parent, "caches");
        let mut out: Vec<String> = Vec::new();
        let items = match obj.get("caches") {
            None => return out,
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.type_error(&path, "an array of cache ids", other);
                return out;
            }
        };
        for (i, item) in items.iter().enumerate() {
            let item_path = index_path(&path, i);
            let Value::String(id) = item else {
                self.type_error(&item_path, "a string (a cache id)", item);
                continue;
            };
            if id.is_empty() {
                self.error(&item_path, "cache id must not be empty");
            } else if id.chars().count() > MAX_CACHE_ID_CHARS {
                self.error(
                    &item_path,
                    format!("cache id must be at most {MAX_CACHE_ID_CHARS} characters long"),
                );
            } else if id.chars().any(is_forbidden_char) {
                self.error(&item_path, "cache id must not contain control characters");
            } else if out.contains(id) {
                self.warn(&item_path, "duplicate cache id (listed once)");
            } else {
                out.push(id.clone());
            }
        }
        out
    }

    fn size_check(&mut self, v: &Value, path: &str) -> Option<SizeCheck> {
        let obj = self.object(v, path)?;
        self.unknown_fields(obj, path, SIZE_CHECK_FIELDS);

        let percent_path = key_path(path, "max_increase_percent");
        let percent = match obj.get("max_increase_percent") {
            None => {
                self.error(&percent_path, "missing required field");
                None
            }
            Some(Value::Number(n)) => match n.as_f64() {
                Some(p) if p.is_finite() && p >= 0.0 => Some(p),
                _ => {
                    self.error(&percent_path, "must be a number greater than or equal to 0");
                    None
                }
            },
            Some(other) => {
                self.type_error(&percent_path, "a number", other);
                None
            }
        };

        let branch_path = key_path(path, "base_branch");
        let branch = match self.required_str(obj, path, "base_branch") {
            Some("") => {
                self.error(&branch_path, "must not be empty");
                None
            }
            Some(b) if b.len() > MAX_BRANCH_BYTES => {
                self.error(&branch_path, format!("must be at most {MAX_BRANCH_BYTES} bytes long"));
                None
            }
            Some(b) if b.chars().any(is_forbidden_char) => {
                self.error(&branch_path, "must not contain control characters");
                None
            }
            Some(b) => Some(b.to_string()),
            None => None,
        };
        Some(SizeCheck { max_increase_percent: percent?, base_branch: branch? })
    }

    // --- checks -------------------------------------------------------------------------------

    fn checks(&mut self, v: &Value) -> BTreeMap<String, CheckConfig> {
        let mut out = BTreeMap::new();
        let Some(map) = self.object(v, "checks") else { return out };
        for (name, body) in map {
            let path = key_path("checks", name);
            let name_ok = self.name(name, &path);
            if let Some(check) = self.check(body, &path) {
                if name_ok {
                    out.insert(name.clone(), check);
                }
            }
        }
        out
    }

    fn check(&mut self, v: &Value, path: &str) -> Option<CheckConfig> {
        let obj = self.object(v, path)?;
        self.unknown_fields(obj, path, CHECK_FIELDS);

        let shell_path = key_path(path, "shell");
        let shell = self
            .required_str(obj, path, "shell")
            .and_then(|s| self.attr_path(s, &shell_path).map(|_| s.to_string()));

        let command_path = key_path(path, "command");
        let command = match self.required_str(obj, path, "command") {
            Some(c) if c.trim().is_empty() => {
                self.error(&command_path, "must not be empty");
                None
            }
            Some(c) if c.contains('\0') => {
                self.error(&command_path, "must not contain NUL characters");
                None
            }
            Some(c) => Some(c.to_string()),
            None => None,
        };

        let allow_network = self.opt_bool(obj, path, "allow_network", false);
        let ro_bind = self.ro_bind(obj, path);
        Some(CheckConfig { shell: shell?, command: command?, allow_network, ro_bind: ro_bind? })
    }

    fn ro_bind(&mut self, obj: &Map<String, Value>, parent: &str) -> Option<Vec<PathBuf>> {
        let path = key_path(parent, "ro_bind");
        let items = match obj.get("ro_bind") {
            None => return Some(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.type_error(&path, "an array of absolute paths", other);
                return None;
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = index_path(&path, i);
            let Value::String(s) = item else {
                self.type_error(&item_path, "a string (an absolute path)", item);
                ok = false;
                continue;
            };
            let problem = if s.is_empty() {
                Some("must not be empty")
            } else if s.len() > MAX_REL_PATH_BYTES {
                Some("path is too long")
            } else if s.contains('\0') {
                Some("must not contain NUL characters")
            } else if !s.starts_with('/') {
                Some("must be an absolute path")
            } else if Path::new(s).components().any(|c| c == Component::ParentDir) {
                Some("must not contain \"..\" components")
            } else {
                None
            };
            match problem {
                Some(message) => {
                    self.error(&item_path, message);
                    ok = false;
                }
                None => out.push(PathBuf::from(s)),
            }
        }
        ok.then_some(out)
    }

    // --- change summary blocks ----------------------------------------------------------------

    fn package_change_summary(&mut self, v: &Value) -> PackageChangeSummaryConfig {
        let path = "package_change_summary";
        let d = PackageChangeSummaryConfig::default();
        let Some(obj) = self.object(v, path) else { return d };
        self.unknown_fields(obj, path, SUMMARY_FIELDS);
        PackageChangeSummaryConfig {
            enabled: self.opt_bool(obj, path, "enabled", d.enabled),
            max_packages_listed: self.opt_count(
                obj,
                path,
                "max_packages_listed",
                d.max_packages_listed,
                MAX_PACKAGES_LISTED,
            ),
            include_rebuild_only: self.opt_bool(obj, path, "include_rebuild_only", d.include_rebuild_only),
        }
    }

    fn rebuild_impact(&mut self, v: &Value) -> RebuildImpactConfig {
        let path = "rebuild_impact";
        let d = RebuildImpactConfig::default();
        let Some(obj) = self.object(v, path) else { return d };
        self.unknown_fields(obj, path, IMPACT_FIELDS);
        RebuildImpactConfig {
            enabled: self.opt_bool(obj, path, "enabled", d.enabled),
            max_top_blast_radius: self.opt_count(
                obj,
                path,
                "max_top_blast_radius",
                d.max_top_blast_radius,
                MAX_TOP_BLAST_RADIUS,
            ),
            compute_full_blast_radius: self.opt_bool(
                obj,
                path,
                "compute_full_blast_radius",
                d.compute_full_blast_radius,
            ),
        }
    }

    // --- change sets --------------------------------------------------------------------------

    fn change_sets(&mut self, v: &Value) -> ChangeSets {
        let mut rules = Vec::new();
        let Some(map) = self.object(v, "change_sets") else { return ChangeSets { rules } };
        if map.len() > MAX_CHANGE_SET_RULES {
            self.error("change_sets", format!("at most {MAX_CHANGE_SET_RULES} rules are allowed"));
            return ChangeSets { rules };
        }
        for (pattern, kind) in map {
            let path = key_path("change_sets", pattern);
            let pattern_ok = match validate_glob(pattern) {
                Ok(()) => true,
                Err(message) => {
                    self.error(&path, message);
                    false
                }
            };
            let kind = match kind {
                Value::String(s) => ChangeSetKind::from_config(s),
                _ => None,
            };
            match kind {
                Some(kind) if pattern_ok => rules.push(ChangeSetRule { pattern: pattern.clone(), kind }),
                Some(_) => {}
                None => self.error(&path, "expected one of \"docs-only\", \"no-op\", \"full-rebuild\""),
            }
        }
        rules.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        ChangeSets { rules }
    }
}

/// Suggests the known field closest to `key` (edit distance at most 2).
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    if key.chars().count() > 64 {
        return None;
    }
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Paths inside the checkout
// ---------------------------------------------------------------------------------------------

/// Checks the shape of a repository-relative path and normalises away `.` components.
fn relative_repo_path(s: &str) -> Result<PathBuf, &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > MAX_REL_PATH_BYTES {
        return Err("path is too long");
    }
    if s.contains('\0') {
        return Err("must not contain NUL characters");
    }
    let mut rel = PathBuf::new();
    for component in Path::new(s).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("must not contain \"..\" components"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be a path relative to the repository root, not an absolute path")
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err("must name a file inside the repository");
    }
    Ok(rel)
}

#[derive(Debug)]
enum ResolveError {
    NotFound,
    Escapes,
    TooManyLinks,
    Io(io::ErrorKind),
}

impl ResolveError {
    fn message_for_file(&self) -> String {
        match self {
            ResolveError::NotFound => "does not exist in the repository".into(),
            ResolveError::Escapes => {
                "resolves (through a symbolic link) to a location outside the repository".into()
            }
            ResolveError::TooManyLinks => "has too many levels of symbolic links".into(),
            ResolveError::Io(kind) => format!("cannot be read ({kind})"),
        }
    }

    fn message(&self) -> String {
        format!("the configuration file {}", self.message_for_file())
    }
}

fn io_error(e: io::Error) -> ResolveError {
    const ENOTDIR: i32 = 20;
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENOTDIR) {
        ResolveError::NotFound
    } else {
        ResolveError::Io(e.kind())
    }
}

enum Step {
    Parent,
    Name(OsString),
}

fn push_steps(pending: &mut Vec<Step>, path: &Path) {
    // `pending` is a stack: push in reverse so the first component is popped first.
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => pending.push(Step::Name(name.to_os_string())),
            Component::ParentDir => pending.push(Step::Parent),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

/// Resolves `rel` inside the canonical directory `root`, following symlinks one component at a time
/// and refusing (without looking at it) any target outside `root`. Returns the resolved path, which
/// contains no symlinks, and its metadata.
fn resolve_in_repo(root: &Path, rel: &Path) -> Result<(PathBuf, fs::Metadata), ResolveError> {
    if rel.components().any(|c| matches!(c, Component::RootDir | Component::Prefix(_))) {
        return Err(ResolveError::Escapes);
    }
    let mut pending = Vec::new();
    push_steps(&mut pending, rel);
    let mut current = root.to_path_buf();
    let mut depth = 0usize;
    let mut hops = 0usize;
    let mut last: Option<fs::Metadata> = None;

    while let Some(step) = pending.pop() {
        match step {
            Step::Parent => {
                if depth == 0 {
                    return Err(ResolveError::Escapes);
                }
                current.pop();
                depth -= 1;
                last = None;
            }
            Step::Name(name) => {
                let candidate = current.join(&name);
                let meta = fs::symlink_metadata(&candidate).map_err(io_error)?;
                if meta.file_type().is_symlink() {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ResolveError::TooManyLinks);
                    }
                    let target = fs::read_link(&candidate).map_err(io_error)?;
                    if target.is_absolute() {
                        let Ok(inside) = target.strip_prefix(root) else {
                            return Err(ResolveError::Escapes);
                        };
                        current = root.to_path_buf();
                        depth = 0;
                        push_steps(&mut pending, inside);
                    } else {
                        push_steps(&mut pending, &target);
                    }
                    last = None;
                } else {
                    if !pending.is_empty() && !meta.is_dir() {
                        return Err(ResolveError::NotFound);
                    }
                    current.push(&name);
                    depth += 1;
                    last = Some(meta);
                }
            }
        }
    }

    let meta = match last {
        Some(meta) => meta,
        None => fs::metadata(&current).map_err(io_error)?,
    };
    // Belt and braces: the kernel's view of the resolved path must agree.
    match fs::canonicalize(&current) {
        Ok(canonical) if canonical.starts_with(root) => Ok((current, meta)),
        Ok(_) => Err(ResolveError::Escapes),
        Err(e) => Err(io_error(e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Change sets
// ---------------------------------------------------------------------------------------------

impl ChangeSets {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The strongest kind among the rules matching `path` (`full-rebuild` > `no-op` > `docs-only`).
    pub fn kind_of(&self, path: &str) -> Option<ChangeSetKind> {
        let globs = self.compiled();
        strongest(&globs, path)
    }

    /// Classifies a diff given the repository-relative paths it touches (for renames, pass both the
    /// old and the new path). In order of precedence:
    ///
    /// 1. any path matched by a `full-rebuild` rule → [`ChangeClass::FullRebuild`];
    /// 2. a non-empty diff whose every path is matched by a `docs-only` or `no-op` rule →
    ///    [`ChangeClass::NoRebuild`];
    /// 3. anything else, including an empty diff → [`ChangeClass::Normal`].
    pub fn classify(&self, changed_paths: &[&str]) -> ChangeClass {
        if changed_paths.is_empty() || self.rules.is_empty() {
            return ChangeClass::Normal;
        }
        let globs = self.compiled();
        let mut all_covered = true;
        for path in changed_paths {
            match strongest(&globs, path) {
                Some(ChangeSetKind::FullRebuild) => return ChangeClass::FullRebuild,
                Some(_) => {}
                None => all_covered = false,
            }
        }
        if all_covered {
            ChangeClass::NoRebuild
        } else {
            ChangeClass::Normal
        }
    }

    fn compiled(&self) -> Vec<(Glob, ChangeSetKind)> {
        self.rules.iter().map(|r| (Glob::new(&r.pattern), r.kind)).collect()
    }
}

fn strongest(globs: &[(Glob, ChangeSetKind)], path: &str) -> Option<ChangeSetKind> {
    globs.iter().filter(|(g, _)| g.matches(path)).map(|(_, k)| *k).max()
}

/// Whether the change-set glob `pattern` matches the repository-relative `path`: `*` and `?` match
/// within one path segment, `**` matches any number of segments, patterns are anchored at the
/// repository root, and a pattern matching a directory matches everything below it.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    Glob::new(pattern).matches(path)
}

fn validate_glob(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("pattern must not be empty".into());
    }
    if pattern.len() > MAX_GLOB_BYTES {
        return Err(format!("pattern must be at most {MAX_GLOB_BYTES} bytes long"));
    }
    if pattern.chars().any(is_forbidden_char) {
        return Err("pattern must not contain control characters".into());
    }
    if pattern.starts_with('!') {
        return Err("negated patterns (\"!\") are not supported".into());
    }
    if pattern.contains(['[', ']', '{', '}', '\\']) {
        return Err(
            "character classes, braces and backslash escapes are not supported; use *, ** and ?".into()
        );
    }
    let mut segments = pattern.split('/').filter(|s| !s.is_empty()).peekable();
    if segments.peek().is_none() {
        return Err("pattern must name at least one path segment".into());
    }
    if segments.any(|s| s == "." || s == "..") {
        return Err("pattern must not contain \".\" or \"..\" segments".into());
    }
    Ok(())
}

enum GlobSegment {
    /// `**`: any number (including zero) of segments.
    Any,
    Pattern(Vec<char>),
}

struct Glob {
    segments: Vec<GlobSegment>,
    /// The pattern ended with `/`: it only matches directories (so only what is below them).
    dir_only: bool,
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        let pattern = pattern.strip_prefix('/').unwrap_or(pattern);
        let dir_only = pattern.ends_with('/');
        let mut segments = Vec::new();
        for part in pattern.split('/').filter(|s| !s.is_empty()) {
            if part == "**" {
                if !matches!(segments.last(), Some(GlobSegment::Any)) {
                    segments.push(GlobSegment::Any);
                }
            } else {
                segments.push(GlobSegment::Pattern(part.chars().collect()));
            }
        }
        Glob { segments, dir_only }
    }

    /// Matches `path` or one of its parent directories against the whole pattern.
    fn matches(&self, path: &str) -> bool {
        let parts: Vec<Vec<char>> =
            path.split('/').filter(|s| !s.is_empty() && *s != ".").map(|s| s.chars().collect()).collect();
        let n = parts.len();
        if n == 0 || self.segments.is_empty() {
            return false;
        }
        // row[j]: the pattern so far matches the first j path segments.
        let mut row = vec![false; n + 1];
        row[0] = true;
        for segment in &self.segments {
            let mut next = vec![false; n + 1];
            for j in 0..=n {
                next[j] = match segment {
                    GlobSegment::Any => row[j] || (j > 0 && next[j - 1]),
                    GlobSegment::Pattern(p) => j > 0 && row[j - 1] && wildcard(p, &parts[j - 1]),
                };
            }
            row = next;
        }
        let last = if self.dir_only { n - 1 } else { n };
        (1..=last).any(|j| row[j])
    }
}

/// `*` (any run of characters) and `?` (one character) within a single segment.
fn wildcard(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
