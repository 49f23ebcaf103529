//! Approvals for `require_approval`: commits of pull requests approved by an administrator (`ekaci
//! approve OWNER/REPO#N`) and the list of GitHub users whose pull requests need no approval (`ekaci
//! approved-users add|remove|list`).
//!
//! An approval is bound to one commit: [`approve`] looks up the head commit of the pull request's
//! held run (the runs in `github_runs`) and approves (repository, number, that SHA), so a later push
//! to the pull request is held again, as GitHub Actions' "approve and run" does. An approved user stays
//! approved across pushes. [`approve`] is the one entry point every surface (control socket, HTTP)
//! calls.
//!
//! Both live in redb (`github_approved_prs`, `github_approved_users`; see `migrations-free-schema/`).
//! Repository names, logins and SHAs are compared case-insensitively: keys are lowercased. Every
//! function here is blocking (run it through `smol::unblock` from async code). This module also
//! validates what an administrator types ([`parse_pr_ref`], [`validate_repo`], [`validate_login`]) with
//! GitHub's naming rules, so a typo is refused instead of approving nothing. It never talks to GitHub:
//! the GitHub service decides whether a pull request needs approval and resumes it when an
//! [`ApprovalNotice`] arrives.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::runs;
use crate::store::codec::{decode, encode};
use crate::store::schema::{GITHUB_APPROVED_PRS, GITHUB_APPROVED_USERS};
use crate::store::{now_secs, Store, StoreError};

const PRS_NAME: &str = "github_approved_prs";
const USERS_NAME: &str = "github_approved_users";

/// How much of an administrator's input an error message echoes.
const ECHO_LIMIT: usize = 100;

/// Sent by the control handler after [`approve`] stored a new approval, so the GitHub service
/// resumes the held pull request. `repo` is `owner/repo` lowercased; `sha` the approved commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalNotice {
    pub repo: String,
    pub number: u64,
    pub sha: String,
}

/// What [`approve`] did: the commit it approved (full SHA, lowercase) and whether the approval is new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    pub sha: String,
    pub newly: bool,
}

/// Why [`approve`] approved nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    #[error(transparent)]
    PullRequest(#[from] PrRefError),
    #[error("invalid pull request `{repo}#0`: pull request numbers start at 1")]
    ZeroNumber { repo: String },
    #[error("invalid commit `{given}`: expected 7 to 40 hexadecimal digits")]
    Sha { given: String },
    #[error("no held run of {pr} is known")]
    NoHeldRun { pr: String },
    #[error("commit `{given}` is not the held head of {pr}, which is {head}")]
    NotHeldHead { pr: String, given: String, head: String },
    #[error("cannot record the approval of {pr}: {source}")]
    Store { pr: String, source: StoreError },
}

/// One entry of the approved-users list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedUser {
    /// The GitHub login, lowercased.
    pub login: String,
    /// Unix seconds.
    pub added_at: u64,
    /// Who added it (`cli` for the control socket).
    pub added_by: String,
}

/// One approved commit of a pull request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrApproval {
    /// Who ran the approval (`cli` for the control socket).
    pub approved_by: String,
    /// Unix seconds.
    pub approved_at: u64,
}

/// Versioned on-disk form of a [`PrApproval`].
#[derive(Serialize, Deserialize)]
enum ApprovedPrRecord {
    V1(PrApproval),
}

/// The stored part of an [`ApprovedUser`] (the login is the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct UserEntry {
    added_at: u64,
    added_by: String,
}

/// Versioned on-disk form of an approved user.
#[derive(Serialize, Deserialize)]
enum ApprovedUserRecord {
    V1(UserEntry),
}

/// Why an `OWNER/REPO#N` reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrRefError {
    #[error("invalid pull request `{input}`: expected OWNER/REPO#NUMBER, e.g. octo-org/hello-world#42")]
    Format { input: String },
    #[error(
        "invalid pull request `{input}`: owner `{owner}` is not a GitHub account name (1 to 39 letters, \
         digits or hyphens)"
    )]
    Owner { input: String, owner: String },
    #[error(
        "invalid pull request `{input}`: repository `{repo}` is not a GitHub repository name (1 to 100 \
         letters, digits, `.`, `_` or `-`, and not `.` or `..`)"
    )]
    Repo { input: String, repo: String },
    #[error(
        "invalid pull request `{input}`: `{number}` is not a pull request number (a whole number from 1)"
    )]
    Number { input: String, number: String },
}

/// Why a GitHub login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid GitHub login `{input}`: {reason}")]
pub struct LoginError {
    pub input: String,
    pub reason: &'static str,
}

/// At most [`ECHO_LIMIT`] characters of `s`, marked when cut.
fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

fn valid_owner(owner: &str) -> bool {
    (1..=39).contains(&owner.len()) && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn valid_repo_name(repo: &str) -> bool {
    (1..=100).contains(&repo.len())
        && repo != "."
        && repo != ".."
        && repo.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks an `OWNER/REPO` name against GitHub's naming rules. `input` is what the error echoes.
fn check_repo(repo: &str, input: &str) -> Result<(), PrRefError> {
    let Some((owner, name)) = repo.split_once('/') else {
        return Err(PrRefError::Format { input: echo(input) });
    };
    if !valid_owner(owner) {
        return Err(PrRefError::Owner { input: echo(input), owner: echo(owner) });
    }
    if !valid_repo_name(name) {
        return Err(PrRefError::Repo { input: echo(input), repo: echo(name) });
    }
    Ok(())
}

/// Checks `OWNER/REPO` (no pull request number) against GitHub's naming rules.
pub fn validate_repo(repo: &str) -> Result<(), PrRefError> {
    check_repo(repo, repo)
}

/// Reads `OWNER/REPO#N` into (`OWNER/REPO` as written, `N`). The owner is 1 to 39 letters, digits or
/// hyphens; the repository 1 to 100 letters, digits, `.`, `_` or `-` and neither `.` nor `..`; `N` ≥ 1.
pub fn parse_pr_ref(input: &str) -> Result<(String, u64), PrRefError> {
    let Some((repo, number)) = input.rsplit_once('#') else {
        return Err(PrRefError::Format { input: echo(input) });
    };
    check_repo(repo, input)?;
    let bad_number = || PrRefError::Number { input: echo(input), number: echo(number) };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_number());
    }
    match number.parse::<u64>() {
        Ok(n) if n >= 1 => Ok((repo.to_string(), n)),
        _ => Err(bad_number()),
    }
}

/// Checks a GitHub login: 1 to 39 characters, letters, digits and single hyphens, not starting or
/// ending with a hyphen.
pub fn validate_login(login: &str) -> Result<(), LoginError> {
    let bad = |reason| Err(LoginError { input: echo(login), reason });
    if login.is_empty() || login.chars().count() > 39 {
        return bad("a login has 1 to 39 characters");
    }
    if !login.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return bad("a login has only letters, digits and hyphens");
    }
    if login.starts_with('-') || login.ends_with('-') {
        return bad("a login does not start or end with a hyphen");
    }
    if login.contains("--") {
        return bad("a login has no two hyphens in a row");
    }
    Ok(())
}

/// The `github_approved_prs` key of commit `sha` of pull request `number` of `repo` (`owner/repo`),
/// any case: `owner/repo#N@sha`, lowercased. Keys written before approvals were bound to commits
/// (`owner/repo#N`) match no commit and so approve nothing.
pub fn commit_key(repo: &str, number: u64, sha: &str) -> String {
    format!("{}#{number}@{}", repo.to_ascii_lowercase(), sha.to_ascii_lowercase())
}

/// Approves the held head commit of pull request `number` of `repo` (`owner/repo`), by `by`: the head
/// of the pull request's run held for approval (else its newest live or finished run; never a
/// superseded one). With `sha` (7 to 40 hex digits, a prefix is enough), that commit must be that
/// head. Returns the approved commit and whether the approval is new (an existing one is kept).
pub fn approve(
    store: &Store,
    repo: &str,
    number: u64,
    sha: Option<&str>,
    by: &str,
) -> Result<Approved, ApproveError> {
    validate_repo(repo)?;
    if number == 0 {
        return Err(ApproveError::ZeroNumber { repo: echo(repo) });
    }
    if let Some(given) = sha {
        if !(7..=40).contains(&given.len()) || !given.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApproveError::Sha { given: echo(given) });
        }
    }
    let pr = format!("{}#{number}", repo.to_ascii_lowercase());
    let store_error = |source| ApproveError::Store { pr: pr.clone(), source };
    let head = runs::pull_request_head(store, repo, number)
        .map_err(store_error)?
        .ok_or_else(|| ApproveError::NoHeldRun { pr: pr.clone() })?;
    if let Some(given) = sha {
        if !head.starts_with(&given.to_ascii_lowercase()) {
            return Err(ApproveError::NotHeldHead { pr: pr.clone(), given: echo(given), head });
        }
    }
    let newly = approve_commit(store, repo, number, &head, by).map_err(store_error)?;
    Ok(Approved { sha: head, newly })
}

impl ApproveError {
    /// Whether the request was wrong (rather than the store failing).
    pub fn is_invalid(&self) -> bool {
        !matches!(self, ApproveError::Store { .. })
    }
}

/// [`approve`], then tells the GitHub service through `notify` (when there is one) to resume the pull
/// request. What `ekaci approve` and `POST /v1/github/approve` both do. Blocking.
pub fn approve_and_notify(
    store: &Store,
    notify: Option<&async_channel::Sender<ApprovalNotice>>,
    repo: &str,
    number: u64,
    sha: Option<&str>,
    by: &str,
) -> Result<Approved, ApproveError> {
    let approved = approve(store, repo, number, sha, by)?;
    if let Some(tx) = notify {
        let repo = repo.to_ascii_lowercase();
        // A full or closed channel is fine: the GitHub service re-checks held pull requests at start.
        let notice = ApprovalNotice { repo: repo.clone(), number, sha: approved.sha.clone() };
        if let Err(e) = tx.try_send(notice) {
            tracing::debug!(%repo, number, error = %e, "approval notice not delivered");
        }
    }
    Ok(approved)
}

/// Records that commit `sha` of pull request `number` of `repo` is approved, by `by`. Returns whether
/// it was newly approved (an existing approval is kept as it was). [`approve`] is the entry point for
/// people; this one is for callers that know the commit.
pub fn approve_commit(
    store: &Store,
    repo: &str,
    number: u64,
    sha: &str,
    by: &str,
) -> Result<bool, StoreError> {
    let key = commit_key(repo, number, sha);
    let tx = store.db().begin_write()?;
    let newly = {
        let mut table = tx.open_table(GITHUB_APPROVED_PRS)?;
        if table.get(key.as_str())?.is_some() {
            false
        } else {
            let record =
                ApprovedPrRecord::V1(PrApproval { approved_by: by.to_string(), approved_at: now_secs() });
            table.insert(key.as_str(), encode(PRS_NAME, &record)?.as_slice())?;
            true
        }
    };
    tx.commit()?;
    Ok(newly)
}

/// The approval of commit `sha` of pull request `number` of `repo`, if any.
pub fn commit_approval(
    store: &Store,
    repo: &str,
    number: u64,
    sha: &str,
) -> Result<Option<PrApproval>, StoreError> {
    let key = commit_key(repo, number, sha);
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_APPROVED_PRS)?;
    let Some(value) = table.get(key.as_str())? else { return Ok(None) };
    let ApprovedPrRecord::V1(approval) = decode(PRS_NAME, &key, value.value())?;
    Ok(Some(approval))
}

/// Whether commit `sha` of pull request `number` of `repo` has been approved.
pub fn is_commit_approved(store: &Store, repo: &str, number: u64, sha: &str) -> Result<bool, StoreError> {
    Ok(commit_approval(store, repo, number, sha)?.is_some())
}

/// Adds `login` to the approved users, by `by`. Returns whether it was newly added.
pub fn add_user(store: &Store, login: &str, by: &str) -> Result<bool, StoreError> {
    let key = login.to_ascii_lowercase();
    let tx = store.db().begin_write()?;
    let newly = {
        let mut table = tx.open_table(GITHUB_APPROVED_USERS)?;
        if table.get(key.as_str())?.is_some() {
            false
        } else {
            let record = ApprovedUserRecord::V1(UserEntry { added_at: now_secs(), added_by: by.to_string() });
            table.insert(key.as_str(), encode(USERS_NAME, &record)?.as_slice())?;
            true
        }
    };
    tx.commit()?;
    Ok(newly)
}

/// Removes `login` from the approved users. Returns whether it was there.
pub fn remove_user(store: &Store, login: &str) -> Result<bool, StoreError> {
    let key = login.to_ascii_lowercase();
    let tx = store.db().begin_write()?;
    let removed = tx.open_table(GITHUB_APPROVED_USERS)?.remove(key.as_str())?.is_some();
    tx.commit()?;
    Ok(removed)
}

/// Every approved user, by login.
pub fn list_users(store: &Store) -> Result<Vec<ApprovedUser>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_APPROVED_USERS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let ApprovedUserRecord::V1(e) = decode(USERS_NAME, k.value(), v.value())?;
        out.push(ApprovedUser { login: k.value().to_string(), added_at: e.added_at, added_by: e.added_by });
    }
    Ok(out)
}

/// Whether `login` is an approved user.
pub fn is_user_approved(store: &Store, login: &str) -> Result<bool, StoreError> {
    let key = login.to_ascii_lowercase();
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_APPROVED_USERS)?;
    Ok(table.get(key.as_str())?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_refs() {
        assert_eq!(parse_pr_ref("Octo-Org/hello.world_2#42"), Ok(("Octo-Org/hello.world_2".into(), 42)));
        assert_eq!(parse_pr_ref("a/b#1"), Ok(("a/b".into(), 1)));
        assert!(matches!(parse_pr_ref("foo"), Err(PrRefError::Format { .. })));
        assert!(matches!(parse_pr_ref("foo#1"), Err(PrRefError::Format { .. })));
        assert!(matches!(parse_pr_ref("o/r#0"), Err(PrRefError::Number { .. })));
        assert!(matches!(parse_pr_ref("o/r#"), Err(PrRefError::Number { .. })));
        assert!(matches!(parse_pr_ref("o/r#+1"), Err(PrRefError::Number { .. })));
        assert!(matches!(parse_pr_ref("o/r#99999999999999999999999"), Err(PrRefError::Number { .. })));
        assert!(matches!(parse_pr_ref("o_x/r#1"), Err(PrRefError::Owner { .. })));
        assert!(matches!(parse_pr_ref("/r#1"), Err(PrRefError::Owner { .. })));
        assert!(matches!(parse_pr_ref(&format!("{}/r#1", "a".repeat(40))), Err(PrRefError::Owner { .. })));
        assert!(matches!(parse_pr_ref("o/..#1"), Err(PrRefError::Repo { .. })));
        assert!(matches!(parse_pr_ref("o/a/b#1"), Err(PrRefError::Repo { .. })));
        assert!(matches!(parse_pr_ref(&format!("o/{}#1", "r".repeat(101))), Err(PrRefError::Repo { .. })));
    }

    #[test]
    fn logins() {
        for good in ["a", "octocat", "Octo-Cat", "a1-b2-c3", &"x".repeat(39)] {
            assert_eq!(validate_login(good), Ok(()), "{good}");
        }
        for bad in ["", "-bad", "bad-", "a--b", "a_b", "a.b", "ä", &"x".repeat(40)] {
            assert!(validate_login(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn approvals_are_for_one_commit_and_old_pull_request_approvals_approve_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        // A record of the form written before approvals were bound to commits.
        let tx = store.db().begin_write().expect("tx");
        {
            let mut table = tx.open_table(GITHUB_APPROVED_PRS).expect("table");
            let old = ApprovedPrRecord::V1(PrApproval { approved_by: "cli".into(), approved_at: 1 });
            table.insert("octo/w#7", encode(PRS_NAME, &old).expect("encode").as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
        assert!(
            !is_commit_approved(&store, "octo/w", 7, &a).expect("read"),
            "an old approval approves no commit"
        );
        assert!(approve_commit(&store, "Octo/W", 7, &a.to_ascii_uppercase(), "cli").expect("approve"));
        assert!(!approve_commit(&store, "octo/w", 7, &a, "cli").expect("approve"), "kept as it was");
        assert!(is_commit_approved(&store, "octo/w", 7, &a).expect("read"));
        assert!(!is_commit_approved(&store, "octo/w", 7, &b).expect("read"), "a later push is not approved");
        assert!(!is_commit_approved(&store, "octo/w", 8, &a).expect("read"));
        assert!(matches!(approve(&store, "octo/w", 7, None, "cli"), Err(ApproveError::NoHeldRun { .. })));
    }

    #[test]
    fn echo_cuts_on_characters() {
        let long = "é".repeat(150);
        let cut = echo(&long);
        assert_eq!(cut.chars().count(), ECHO_LIMIT + 1);
        assert!(cut.ends_with('…'));
    }
}
