//! The repository configuration's validator: walks the JSON value field by field, collecting every
//! error and warning with its field path instead of stopping at the first, and builds the
//! [`RepoConfig`] with its defaults.
//!
//! The shared checks (types, booleans, counts, names, attribute paths, unknown fields with a
//! suggestion) live here; each section has its own file: [`jobs`], [`checks`], [`summary`] (the
//! change-summary blocks) and [`change_sets`]. It reads nothing but the checkout (through
//! [`super::paths`]) and never panics on any input.

mod change_sets;
mod checks;
mod jobs;
mod summary;

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{FieldError, RepoConfig, MAX_NAME_CHARS};
use crate::config::not_acted_on::RepoKey;
use crate::text::markdown::is_forbidden_char;

const MAX_ATTR_PATH_BYTES: usize = 1024;
const PATH_KEY_SHOWN_CHARS: usize = 64;

const TOP_FIELDS: &[&str] = &["jobs", "checks", "package_change_summary", "rebuild_impact", "change_sets"];

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
        let shown = crate::text::ellipsis_chars(key, PATH_KEY_SHOWN_CHARS);
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

pub(super) struct Validator {
    /// The canonical checkout, or `None` when it cannot be resolved.
    root: Option<PathBuf>,
    pub(super) errors: Vec<FieldError>,
    pub(super) warnings: Vec<FieldError>,
    /// Jobs a configuration may declare (`[limits] max_jobs_per_repo`).
    pub(in crate::config::repo) max_jobs: usize,
    /// The paths a check's `ro_bind` may name (`[checks] allowed_ro_binds`).
    pub(in crate::config::repo) allowed_ro_binds: Vec<std::path::PathBuf>,
    /// The cache ids `caches` may name (`[[caches]]`); `None`: not checked.
    pub(in crate::config::repo) known_caches: Option<Vec<String>>,
}

impl Validator {
    /// A validator for the checkout whose canonical path is `root` (`None`: not accessible).
    pub(super) fn new(root: Option<PathBuf>) -> Validator {
        Validator {
            root,
            errors: Vec::new(),
            warnings: Vec::new(),
            max_jobs: 16,
            allowed_ro_binds: Vec::new(),
            known_caches: None,
        }
    }

    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(FieldError::new(path, message));
    }

    /// The field at `path` is accepted but not acted on yet (see [`crate::config::not_acted_on`]).
    // Used while `not_acted_on::REPO` lists a field (it is empty today).
    #[allow(dead_code)]
    fn not_acted_on(&mut self, path: &str, key: &RepoKey) {
        self.warn(path, key.message());
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

    pub(super) fn config(&mut self, value: &Value) -> Option<RepoConfig> {
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
