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
//!
//! Files: `types.rs` (the validated values), `load.rs` (finding and reading the file), `validate/`
//! (the field-by-field validator, one file per section), `paths.rs` (paths inside the checkout),
//! `change_sets.rs` (classifying a diff, and the path globs), `field_error.rs` (errors and their
//! Markdown rendering).

mod change_sets;
mod field_error;
mod load;
mod paths;
mod types;
mod validate;

pub use change_sets::glob_matches;
pub use field_error::FieldError;
pub use load::{load, load_limited, parse, parse_limited, RepoLimits};
pub use types::{
    ChangeClass, ChangeSetKind, ChangeSetRule, ChangeSets, CheckConfig, JobConfig, JobSource,
    PackageChangeSummaryConfig, RebuildImpactConfig, RepoConfig, RepoConfigOutcome, SizeCheck,
};

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
