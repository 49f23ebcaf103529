//! The types of a validated repository configuration: jobs, checks, the change-summary blocks and
//! change sets, and the outcome of looking for the file.
//!
//! Values of these types only come out of the validator, so they always satisfy the documented rules
//! (paths inside the checkout, non-empty names, counts in range). Nothing here reads files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FieldError;

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
    /// [`DEFAULT_FLAKE_ATTR`](super::DEFAULT_FLAKE_ATTR)).
    Flake { attr_path: Vec<String> },
}

/// Output and closure size monitoring for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeCheck {
    /// Warn when a size grows by more than this many percent (finite, ≥ 0).
    pub max_increase_percent: f64,
    /// The branch whose latest successful build is the baseline.
    pub base_branch: String,
    /// An eka-ci extension: the size check run fails (instead of being neutral) when a size grew by more
    /// than the limit. Default false.
    pub fail_on_increase: bool,
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
    /// 1 to [`MAX_PACKAGES_LISTED`](super::MAX_PACKAGES_LISTED).
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
    /// 1 to [`MAX_TOP_BLAST_RADIUS`](super::MAX_TOP_BLAST_RADIUS).
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

    pub(super) fn from_config(s: &str) -> Option<Self> {
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
