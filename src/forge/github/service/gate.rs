//! Which repository configuration gates a run, and what a pull request's configuration would change.
//!
//! The jobs that gate a pull request come from the trusted side: the base commit's configuration. A pull
//! request that changes `.eka-ci/config.json` gets its head configuration validated and its changes
//! listed ([`changes`]), and the head configuration is used only when [`choose`] is told its author has
//! write access; a merge queue entry is always gated by its base. See docs/security.md, "What gates a
//! pull request". Pure functions over validated configurations: this module never checks anything out,
//! asks GitHub, or formats check-run text (`report` does).

use crate::config::repo::{FieldError, JobConfig, JobSource, RepoConfig};

/// A commit's repository configuration, as found.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Found {
    /// Valid; `file` is relative to the repository, `warnings` are the validator's.
    Valid { config: RepoConfig, file: String, warnings: Vec<String> },
    /// Neither `.eka-ci/config.json` nor the legacy `.ekaci/config.json`.
    Missing,
    /// Present but unusable; `errors` is never empty.
    Invalid { file: String, errors: Vec<FieldError> },
}

impl Found {
    pub(super) fn config(&self) -> Option<&RepoConfig> {
        match self {
            Found::Valid { config, .. } => Some(config),
            _ => None,
        }
    }
}

/// One difference between the base's and the head's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// The head adds a configuration the base does not have.
    ConfigAdded,
    /// The head removes the base's configuration.
    ConfigRemoved,
    /// The base's configuration is invalid and the head's is valid.
    ConfigRepaired,
    JobAdded(String),
    JobRemoved(String),
    /// A job both define differently; `fields` names what differs (`file`, `flake`, `attr_path`,
    /// `allow_eval_failures`, `caches`, `size_check`).
    JobChanged {
        job: String,
        fields: Vec<&'static str>,
    },
    /// A top-level section other than `jobs` differs (`checks`, `package_change_summary`,
    /// `rebuild_impact`, `change_sets`).
    Section(&'static str),
}

/// What the head's configuration changes against the base's, in a stable order. Empty when the two are
/// the same (both missing, or equal values wherever they live). An invalid head is not compared (its
/// errors are reported instead): the result is then empty.
pub(super) fn changes(base: &Found, head: &Found) -> Vec<Change> {
    let mut out = Vec::new();
    match (base, head) {
        (_, Found::Invalid { .. }) | (Found::Missing, Found::Missing) => {}
        (Found::Valid { config, .. }, Found::Missing) => {
            out.push(Change::ConfigRemoved);
            out.extend(config.jobs.keys().map(|j| Change::JobRemoved(j.clone())));
        }
        (Found::Invalid { .. }, Found::Missing) => out.push(Change::ConfigRemoved),
        (Found::Missing | Found::Invalid { .. }, Found::Valid { config, .. }) => {
            let first =
                if matches!(base, Found::Missing) { Change::ConfigAdded } else { Change::ConfigRepaired };
            out.push(first);
            out.extend(config.jobs.keys().map(|j| Change::JobAdded(j.clone())));
        }
        (Found::Valid { config: b, .. }, Found::Valid { config: h, .. }) => {
            for (name, job) in &b.jobs {
                match h.jobs.get(name) {
                    None => out.push(Change::JobRemoved(name.clone())),
                    Some(other) => {
                        let fields = job_fields(job, other);
                        if !fields.is_empty() {
                            out.push(Change::JobChanged { job: name.clone(), fields });
                        }
                    }
                }
            }
            out.extend(
                h.jobs.keys().filter(|n| !b.jobs.contains_key(*n)).map(|n| Change::JobAdded(n.clone())),
            );
            if b.checks != h.checks {
                out.push(Change::Section("checks"));
            }
            if b.package_change_summary != h.package_change_summary {
                out.push(Change::Section("package_change_summary"));
            }
            if b.rebuild_impact != h.rebuild_impact {
                out.push(Change::Section("rebuild_impact"));
            }
            if b.change_sets != h.change_sets {
                out.push(Change::Section("change_sets"));
            }
        }
    }
    out
}

/// The fields in which two definitions of one job differ.
fn job_fields(base: &JobConfig, head: &JobConfig) -> Vec<&'static str> {
    let mut fields = Vec::new();
    match (&base.source, &head.source) {
        (JobSource::File { file: bf, attr_path: ba }, JobSource::File { file: hf, attr_path: ha }) => {
            if bf != hf {
                fields.push("file");
            }
            if ba != ha {
                fields.push("attr_path");
            }
        }
        (JobSource::Flake { attr_path: ba }, JobSource::Flake { attr_path: ha }) => {
            if ba != ha {
                fields.push("attr_path");
            }
        }
        // From a file to the flake or back.
        _ => fields.extend(["file", "flake", "attr_path"]),
    }
    if base.allow_eval_failures != head.allow_eval_failures {
        fields.push("allow_eval_failures");
    }
    if base.caches != head.caches {
        fields.push("caches");
    }
    if base.size_check != head.size_check {
        fields.push("size_check");
    }
    fields
}

/// Which configuration gates a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Base,
    Head,
}

/// The side whose configuration gates a run. `may_change` says whether the head's configuration may
/// decide: true only for a pull request whose author has write access to the repository (not for
/// approved users, and never for a merge queue entry). Without changes both sides are the same and the
/// base is named; an invalid head cannot gate, so the base does.
pub(super) fn choose(base: &Found, head: &Found, may_change: bool) -> Side {
    if matches!(head, Found::Invalid { .. }) || changes(base, head).is_empty() || !may_change {
        Side::Base
    } else {
        Side::Head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(json: &str) -> Found {
        let dir = tempfile::tempdir().expect("tempdir");
        for file in ["default.nix", "a.nix", "b.nix", "other.nix", "flake.nix"] {
            std::fs::write(dir.path().join(file), "{}").expect("write");
        }
        match crate::config::repo::parse(json.as_bytes(), dir.path()) {
            Ok((config, warnings)) => Found::Valid {
                config,
                file: ".eka-ci/config.json".into(),
                warnings: warnings.iter().map(|w| w.to_string()).collect(),
            },
            Err(errors) => Found::Invalid { file: ".eka-ci/config.json".into(), errors },
        }
    }

    #[test]
    fn job_changes_name_their_fields_and_sections() {
        let valid = |f: &Found| assert!(matches!(f, Found::Valid { .. }), "{f:?}");
        let base = found(
            r#"{ "jobs": { "main": { "file": "default.nix" }, "gone": { "file": "a.nix" },
                 "flaky": { "flake": true } } }"#,
        );
        let head = found(
            r#"{ "jobs": { "main": { "file": "other.nix", "attr_path": "x", "allow_eval_failures": true },
                 "flaky": { "flake": true }, "new": { "file": "b.nix" } },
                 "package_change_summary": { "enabled": false } }"#,
        );
        valid(&base);
        valid(&head);
        assert_eq!(
            changes(&base, &head),
            [
                Change::JobRemoved("gone".into()),
                Change::JobChanged {
                    job: "main".into(),
                    fields: vec!["file", "attr_path", "allow_eval_failures"]
                },
                Change::JobAdded("new".into()),
                Change::Section("package_change_summary"),
            ]
        );
        assert!(changes(&base, &base).is_empty());
        assert_eq!(choose(&base, &head, false), Side::Base);
        assert_eq!(choose(&base, &head, true), Side::Head);
        assert_eq!(choose(&base, &base, true), Side::Base, "nothing changed: the base's");
    }

    #[test]
    fn added_removed_repaired_and_invalid_configurations() {
        let valid = found(r#"{ "jobs": { "main": { "file": "default.nix" } } }"#);
        let invalid = found(r#"{ "jobs": { "main": { "file": 5 } } }"#);
        assert!(matches!(invalid, Found::Invalid { .. }));
        assert_eq!(changes(&Found::Missing, &valid), [Change::ConfigAdded, Change::JobAdded("main".into())]);
        assert_eq!(
            changes(&valid, &Found::Missing),
            [Change::ConfigRemoved, Change::JobRemoved("main".into())]
        );
        assert_eq!(changes(&invalid, &valid), [Change::ConfigRepaired, Change::JobAdded("main".into())]);
        assert!(changes(&valid, &invalid).is_empty(), "an invalid head reports its errors instead");
        assert!(changes(&Found::Missing, &Found::Missing).is_empty());
        assert_eq!(choose(&Found::Missing, &valid, false), Side::Base);
        assert_eq!(choose(&Found::Missing, &valid, true), Side::Head);
        assert_eq!(choose(&valid, &invalid, true), Side::Base, "an invalid head never gates");
    }
}
