//! Validation of `jobs`: each job's source (a file inside the checkout, or the repository's flake and
//! an output attribute), `allow_eval_failures`, `caches` and `size_check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{index_path, key_path, Validator};
use crate::config::repo::paths::{relative_repo_path, resolve_in_repo, ResolveError};
use crate::config::repo::{JobConfig, JobSource, SizeCheck, DEFAULT_FLAKE_ATTR};
use crate::text::markdown::is_forbidden_char;

const MAX_CACHE_ID_CHARS: usize = 256;
const MAX_BRANCH_BYTES: usize = 255;

const JOB_FIELDS: &[&str] = &["file", "attr_path", "flake", "allow_eval_failures", "caches", "size_check"];
const SIZE_CHECK_FIELDS: &[&str] = &["max_increase_percent", "base_branch", "fail_on_increase"];

impl Validator {
    pub(super) fn jobs(&mut self, v: &Value) -> BTreeMap<String, JobConfig> {
        let mut out = BTreeMap::new();
        let Some(map) = self.object(v, "jobs") else { return out };
        if map.len() > self.max_jobs {
            self.error(
                "jobs",
                format!(
                    "{} jobs are declared; this server allows at most {} ([limits] max_jobs_per_repo)",
                    map.len(),
                    self.max_jobs
                ),
            );
            return out;
        }
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

    pub(super) fn job(&mut self, v: &Value, path: &str) -> Option<JobConfig> {
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

    pub(super) fn job_source(&mut self, obj: &Map<String, Value>, path: &str) -> Option<JobSource> {
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

    pub(super) fn require_flake_nix(&mut self, path: &str) {
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

    pub(super) fn job_file(&mut self, s: &str, path: &str) -> Option<PathBuf> {
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

    pub(super) fn caches(&mut self, obj: &Map<String, Value>, parent: &str) -> Vec<String> {
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
            } else if self.known_caches.as_ref().is_some_and(|known| !known.contains(id)) {
                self.error(
                    &item_path,
                    format!("no cache {id:?} is defined on this server ([[caches]] of ekaci.toml)"),
                );
            } else if out.contains(id) {
                self.warn(&item_path, "duplicate cache id (listed once)");
            } else {
                out.push(id.clone());
            }
        }
        out
    }

    pub(super) fn size_check(&mut self, v: &Value, path: &str) -> Option<SizeCheck> {
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
        let fail_path = key_path(path, "fail_on_increase");
        let fail_on_increase = match obj.get("fail_on_increase") {
            None => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.type_error(&fail_path, "a boolean", other);
                None
            }
        };
        Some(SizeCheck {
            max_increase_percent: percent?,
            base_branch: branch?,
            fail_on_increase: fail_on_increase?,
        })
    }
}
