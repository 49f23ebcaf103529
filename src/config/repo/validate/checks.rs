//! Validation of `checks`: each check's shell attribute, command, network switch and read-only bind
//! mounts (absolute paths without `..`, each one the server lists in `[checks] allowed_ro_binds`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::{index_path, key_path, Validator};
use crate::config::repo::paths::MAX_REL_PATH_BYTES;
use crate::config::repo::CheckConfig;

const CHECK_FIELDS: &[&str] = &["shell", "command", "allow_network", "ro_bind"];

impl Validator {
    pub(super) fn checks(&mut self, v: &Value) -> BTreeMap<String, CheckConfig> {
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

    pub(super) fn check(&mut self, v: &Value, path: &str) -> Option<CheckConfig> {
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

    pub(super) fn ro_bind(&mut self, obj: &Map<String, Value>, parent: &str) -> Option<Vec<PathBuf>> {
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
            } else if !self.allowed_ro_binds.iter().any(|a| a == Path::new(s)) {
                Some("this server does not allow binding this path into checks ([checks] allowed_ro_binds)")
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
}
