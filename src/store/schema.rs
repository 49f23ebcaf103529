//! Every redb table of eka-ci, in one place.
//!
//! The human-readable description of each table (key, value, meaning, upgrade policy) is in
//! `migrations-free-schema/`; a test fails when [`TABLES`] and that directory disagree. A table is added
//! here, described there, and created by [`create_all`] for new and upgraded databases alike.

use redb::{TableDefinition, WriteTransaction};

/// Server metadata: `schema_version` (u32), `created_at` (u64 seconds). Values are postcard scalars.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// One row per daemon start: run id → `DaemonRunRecord`.
pub const DAEMON_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("daemon_runs");

/// Jobset headers: jobset id → `JobsetRecord`.
pub const JOBSETS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobsets");

/// Jobset lookup: `repo \0 commit \0 job` → jobset id.
pub const JOBSET_KEYS: TableDefinition<&str, u64> = TableDefinition::new("jobset_keys");

/// Jobset contents: (jobset id, attribute) → `AttrRecord`.
pub const JOBSET_ATTRS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("jobset_attrs");

/// Nix's messages for deferred evaluation errors, found when a report showed them (`jobset`):
/// (jobset id, attribute) → `ErrorMessageRecord`.
pub const JOBSET_ERROR_MESSAGES: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("jobset_error_messages");

/// A finished jobset's scan index for filtered pages (`jobset::Jobsets::scan_index`): jobset id →
/// `ScanRecord`.
pub const JOBSET_SCANS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobset_scans");
/// What the identity step after an evaluation found (`jobset::aliases`): jobset id → `AliasesRecord`.
pub const JOBSET_ALIASES: TableDefinition<u64, &[u8]> = TableDefinition::new("jobset_aliases");

/// The derivation graph's path interning: .drv store path → `DrvIdRecord` (see `graph::record`).
pub const GRAPH_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("graph_ids");

/// The derivation graph's nodes: derivation id → `NodeRecord`.
pub const GRAPH_NODES: TableDefinition<u32, &[u8]> = TableDefinition::new("graph_nodes");

/// The derivation graph's reverse edges: `(input id, first dependent id)` → `DependentsRecord` (a group).
pub const GRAPH_DEPENDENTS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("graph_dependents");

/// Build states (`scheduler::state`): derivation id → `BuildStateRecord` (current state and counters).
pub const BUILD_STATES: TableDefinition<u32, &[u8]> = TableDefinition::new("build_states");

/// Build history: `(derivation id, seq)` → `BuildHistoryRecord` (one row per state transition).
pub const BUILD_HISTORY: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("build_history");

/// Build attempts: `(derivation id, attempt)` → `BuildAttemptRecord` (start, end, builder).
pub const BUILD_ATTEMPTS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("build_attempts");

/// Build owners: `scheduler::Owner::key` (a jobset id, or 2^63 | drv id for a rebuild) → `BuildOwnerRecord`.
pub const BUILD_OWNERS: TableDefinition<u64, &[u8]> = TableDefinition::new("build_owners");

/// GitHub webhook deliveries seen (`forge::github::webhook`): `X-GitHub-Delivery` id → `DeliveryRecord`.
pub const GITHUB_DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("github_deliveries");

/// GitHub events waiting to be handled (`forge::github::webhook`): sequence number → `StoredEvent`.
pub const GITHUB_EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("github_events");

/// Pull requests approved for `require_approval` (`forge::github::approvals`): `owner/repo#N` (lowercased)
/// → `ApprovedPrRecord`.
pub const GITHUB_APPROVED_PRS: TableDefinition<&str, &[u8]> = TableDefinition::new("github_approved_prs");

/// GitHub users whose pull requests need no approval (`forge::github::approvals`): login (lowercased) →
/// `ApprovedUserRecord`.
pub const GITHUB_APPROVED_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("github_approved_users");

/// Change summaries (`summary::cache`): `head_sha \0 base_sha \0 job` → `SummaryRecord`.
pub const CHANGE_SUMMARIES: TableDefinition<&str, &[u8]> = TableDefinition::new("change_summaries");

/// GitHub runs (`forge::github::runs`): `owner/name \0 head sha` (lower case) → `RunRecord`.
pub const GITHUB_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("github_runs");

/// Which GitHub App installation serves a repository: `owner/name` (lower case) → `InstallationRecord`.
pub const GITHUB_INSTALLATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("github_installations");

/// The newest `pull_request.updated_at` seen per pull request (`forge::github::webhook`):
/// `owner/name#number` (lower case) → `PrHeadRecord`.
pub const GITHUB_PR_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("github_pr_heads");

/// Pending `@eka-ci merge` requests (`forge::github::merges`): `owner/name#number` (lower case) →
/// `MergeRequestRecord`.
pub const GITHUB_MERGE_REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("github_merge_requests");

/// Auto-merges enabled through the API (`forge::github::auto_merges`): `owner/name#number` (lower case) →
/// `AutoMergeRecord`.
pub const GITHUB_AUTO_MERGES: TableDefinition<&str, &[u8]> = TableDefinition::new("github_auto_merges");

/// Package maintainers added by administrators (`forge::github::maintainers`):
/// `owner/name \0 attribute \0 login` (repository and login lower case) → `MaintainerRecord`.
pub const GITHUB_MAINTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("github_maintainers");

/// HTTP API tokens (`tokens`): token name → `ApiTokenRecord` (scope, SHA-256 of the token, times).
pub const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");

/// Web UI sessions (`web::ui::session`): SHA-256 of the session id (hex) → `WebSessionRecord` (GitHub
/// login, the user's OAuth token, times).
pub const WEB_SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("web_sessions");

/// Repository visibility (`visibility`): repository identity as jobsets record it (the clone URL) →
/// `RepoVisibilityRecord` (whether GitHub says it is private).
pub const REPO_VISIBILITY: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_visibility");

/// Derivations reachable from a public repository's jobset (`visibility`): derivation id → Unix seconds
/// when it was marked.
pub const PUBLIC_DRVS: TableDefinition<u32, u64> = TableDefinition::new("public_drvs");

/// Repository check results (`checks::results`): `commit \0 repository \0 check name` → `CheckResultRecord`.
pub const CHECK_RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("check_results");
/// Output and closure sizes of built attributes (`sizes`): `repo \0 commit \0 job \0 attr` →
/// `SizeRecord`.
pub const OUTPUT_SIZES: TableDefinition<&str, &[u8]> = TableDefinition::new("output_sizes");

/// The newest sizes measured on a branch (`sizes`): `repo \0 branch \0 job \0 attr` → `SizeRecord`.
pub const BRANCH_SIZES: TableDefinition<&str, &[u8]> = TableDefinition::new("branch_sizes");

/// What one job's size check found (`sizes::SizeSummary`): `repo \0 head \0 base \0 job` →
/// `SizeSummaryRecord`.
pub const SIZE_SUMMARIES: TableDefinition<&str, &[u8]> = TableDefinition::new("size_summaries");
/// Cache pushes (`cache::queue`): `drv \0 cache id` → `PushRecord`.
pub const CACHE_PUSHES: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_pushes");

/// Pending cache pushes (`cache::queue`): `cache id \0 drv` → Unix seconds of the next attempt.
pub const CACHE_PUSH_QUEUE: TableDefinition<&str, u64> = TableDefinition::new("cache_push_queue");

/// Cache push audit records (`security.audit_hooks`): sequence number → `AuditRecord`.
pub const CACHE_PUSH_AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("cache_push_audit");

/// A table as described in `migrations-free-schema/`: its name and its key and value types as Rust
/// spells them in the definitions above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: &'static str,
    pub key: &'static str,
    pub value: &'static str,
}

/// Every table this build uses, with its key and value types.
pub const TABLES: &[TableInfo] = &[
    TableInfo { name: "meta", key: "&str", value: "&[u8]" },
    TableInfo { name: "daemon_runs", key: "u64", value: "&[u8]" },
    TableInfo { name: "graph_ids", key: "&str", value: "&[u8]" },
    TableInfo { name: "graph_nodes", key: "u32", value: "&[u8]" },
    TableInfo { name: "graph_dependents", key: "(u32, u32)", value: "&[u8]" },
    TableInfo { name: "jobsets", key: "u64", value: "&[u8]" },
    TableInfo { name: "jobset_keys", key: "&str", value: "u64" },
    TableInfo { name: "jobset_attrs", key: "(u64, &str)", value: "&[u8]" },
    TableInfo { name: "jobset_error_messages", key: "(u64, &str)", value: "&[u8]" },
    TableInfo { name: "build_states", key: "u32", value: "&[u8]" },
    TableInfo { name: "build_history", key: "(u32, u32)", value: "&[u8]" },
    TableInfo { name: "build_attempts", key: "(u32, u32)", value: "&[u8]" },
    TableInfo { name: "build_owners", key: "u64", value: "&[u8]" },
    TableInfo { name: "github_deliveries", key: "&str", value: "&[u8]" },
    TableInfo { name: "github_events", key: "u64", value: "&[u8]" },
    TableInfo { name: "github_runs", key: "&str", value: "&[u8]" },
    TableInfo { name: "github_installations", key: "&str", value: "&[u8]" },
    TableInfo { name: "github_pr_heads", key: "&str", value: "&[u8]" },
    TableInfo { name: "github_merge_requests", key: "&str", value: "&[u8]" },
    TableInfo { name: "github_maintainers", key: "&str", value: "&[u8]" },
    TableInfo { name: "github_auto_merges", key: "&str", value: "&[u8]" },
    TableInfo { name: "change_summaries", key: "&str", value: "&[u8]" },
    TableInfo { name: "github_approved_prs", key: "&str", value: "&[u8]" },
    TableInfo { name: "github_approved_users", key: "&str", value: "&[u8]" },
    TableInfo { name: "api_tokens", key: "&str", value: "&[u8]" },
    TableInfo { name: "web_sessions", key: "&str", value: "&[u8]" },
    TableInfo { name: "repo_visibility", key: "&str", value: "&[u8]" },
    TableInfo { name: "public_drvs", key: "u32", value: "u64" },
    TableInfo { name: "check_results", key: "&str", value: "&[u8]" },
    TableInfo { name: "output_sizes", key: "&str", value: "&[u8]" },
    TableInfo { name: "branch_sizes", key: "&str", value: "&[u8]" },
    TableInfo { name: "size_summaries", key: "&str", value: "&[u8]" },
    TableInfo { name: "cache_pushes", key: "&str", value: "&[u8]" },
    TableInfo { name: "cache_push_queue", key: "&str", value: "u64" },
    TableInfo { name: "cache_push_audit", key: "u64", value: "&[u8]" },
    TableInfo { name: "jobset_scans", key: "u64", value: "&[u8]" },
    TableInfo { name: "jobset_aliases", key: "u64", value: "&[u8]" },
];

/// Creates every table that does not exist yet.
pub fn create_all(tx: &WriteTransaction) -> Result<(), super::StoreError> {
    tx.open_table(META)?;
    tx.open_table(DAEMON_RUNS)?;
    tx.open_table(GRAPH_IDS)?;
    tx.open_table(GRAPH_NODES)?;
    tx.open_table(GRAPH_DEPENDENTS)?;
    tx.open_table(JOBSETS)?;
    tx.open_table(JOBSET_KEYS)?;
    tx.open_table(JOBSET_ATTRS)?;
    tx.open_table(JOBSET_ERROR_MESSAGES)?;
    tx.open_table(JOBSET_SCANS)?;
    tx.open_table(BUILD_STATES)?;
    tx.open_table(BUILD_HISTORY)?;
    tx.open_table(BUILD_ATTEMPTS)?;
    tx.open_table(BUILD_OWNERS)?;
    tx.open_table(GITHUB_DELIVERIES)?;
    tx.open_table(GITHUB_EVENTS)?;
    tx.open_table(GITHUB_RUNS)?;
    tx.open_table(GITHUB_INSTALLATIONS)?;
    tx.open_table(GITHUB_PR_HEADS)?;
    tx.open_table(GITHUB_MERGE_REQUESTS)?;
    tx.open_table(GITHUB_MAINTAINERS)?;
    tx.open_table(GITHUB_AUTO_MERGES)?;
    tx.open_table(CHANGE_SUMMARIES)?;
    tx.open_table(GITHUB_APPROVED_PRS)?;
    tx.open_table(GITHUB_APPROVED_USERS)?;
    tx.open_table(API_TOKENS)?;
    tx.open_table(WEB_SESSIONS)?;
    tx.open_table(REPO_VISIBILITY)?;
    tx.open_table(PUBLIC_DRVS)?;
    tx.open_table(CHECK_RESULTS)?;
    tx.open_table(OUTPUT_SIZES)?;
    tx.open_table(BRANCH_SIZES)?;
    tx.open_table(SIZE_SUMMARIES)?;
    tx.open_table(CACHE_PUSHES)?;
    tx.open_table(CACHE_PUSH_QUEUE)?;
    tx.open_table(CACHE_PUSH_AUDIT)?;
    tx.open_table(JOBSET_ALIASES)?;
    Ok(())
}
