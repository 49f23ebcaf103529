//! Validation of `change_sets`: each rule's glob (see [`crate::config::repo::change_sets`]) and kind,
//! and the number of rules.

use serde_json::Value;

use super::{key_path, Validator};
use crate::config::repo::change_sets::validate_glob;
use crate::config::repo::{ChangeSetKind, ChangeSetRule, ChangeSets, MAX_CHANGE_SET_RULES};

impl Validator {
    pub(super) fn change_sets(&mut self, v: &Value) -> ChangeSets {
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
