//! Package maintainers for `@eka-ci merge`: who may merge (or cancel a merge of) a pull request without
//! write access, by being a maintainer of every package it changes (docs/merge.md, "Maintainers").
//!
//! The maintainers of an attribute are its `meta.maintainers` on the base commit and, unless the pull
//! request comes from a fork, on the head commit (entries' `githubId` when present, else `github`), plus
//! the rows an administrator added for the repository and attribute (`github_maintainers`, through
//! `ekaci maintainers` and the admin API). The changed attributes are the Added, Removed and Changed
//! ones of the stored diff of the head commit's jobsets against the base's: a commit that was not
//! evaluated yet has no known changes and makes nobody a maintainer. Every function here is blocking;
//! it never talks to GitHub.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::approvals::{self, LoginError, PrRefError};
use crate::jobset::{diff, AttrOutcome, JobsetId, Jobsets};
use crate::store::codec::{decode, encode};
use crate::store::schema::GITHUB_MAINTAINERS;
use crate::store::{now_secs, Store, StoreError};

const NAME: &str = "github_maintainers";
/// The longest attribute path accepted.
const MAX_ATTR: usize = 200;

/// One row of the maintainers table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintainer {
    /// `owner/name`, lower case.
    pub repo: String,
    /// The attribute path, as written (`hello`, `python3Packages.requests`).
    pub attr: String,
    /// The GitHub login, lower case.
    pub login: String,
    /// Unix seconds.
    pub added_at: u64,
    /// Who added it (`cli`, or `api:<token name>`).
    pub added_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    added_at: u64,
    added_by: String,
}

#[derive(Serialize, Deserialize)]
enum MaintainerRecord {
    V1(Entry),
}

/// Why an administrator's maintainer entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaintainerError {
    #[error(transparent)]
    Repo(#[from] PrRefError),
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error(
        "invalid attribute `{0}`: an attribute path has 1 to 200 letters, digits, `.`, `_`, `-`, `+` or `'`"
    )]
    Attr(String),
}

/// Checks what `ekaci maintainers add|remove` and the admin API are given.
pub fn validate(repo: &str, attr: &str, login: &str) -> Result<(), MaintainerError> {
    approvals::validate_repo(repo)?;
    approvals::validate_login(login)?;
    let ok = !attr.is_empty()
        && attr.len() <= MAX_ATTR
        && attr.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'\''));
    if !ok {
        let shown: String = attr.chars().take(100).collect();
        return Err(MaintainerError::Attr(shown));
    }
    Ok(())
}

fn key(repo: &str, attr: &str, login: &str) -> String {
    format!("{}\u{0}{attr}\u{0}{}", repo.to_ascii_lowercase(), login.to_ascii_lowercase())
}

/// Adds `login` as a maintainer of `attr` in `repo`, by `by`. Returns whether it is new.
pub fn add(store: &Store, repo: &str, attr: &str, login: &str, by: &str) -> Result<bool, StoreError> {
    let k = key(repo, attr, login);
    let tx = store.db().begin_write()?;
    let newly = {
        let mut table = tx.open_table(GITHUB_MAINTAINERS)?;
        if table.get(k.as_str())?.is_some() {
            false
        } else {
            let record = MaintainerRecord::V1(Entry { added_at: now_secs(), added_by: by.to_string() });
            table.insert(k.as_str(), encode(NAME, &record)?.as_slice())?;
            true
        }
    };
    tx.commit()?;
    Ok(newly)
}

/// Removes `login` as a maintainer of `attr` in `repo`. Returns whether it was one.
pub fn remove(store: &Store, repo: &str, attr: &str, login: &str) -> Result<bool, StoreError> {
    let k = key(repo, attr, login);
    let tx = store.db().begin_write()?;
    let removed = tx.open_table(GITHUB_MAINTAINERS)?.remove(k.as_str())?.is_some();
    tx.commit()?;
    Ok(removed)
}

/// Every row, or those of `repo` (any case), ordered by repository, attribute and login.
pub fn list(store: &Store, repo: Option<&str>) -> Result<Vec<Maintainer>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_MAINTAINERS)?;
    let want = repo.map(str::to_ascii_lowercase);
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let mut parts = k.value().split('\u{0}');
        let (Some(r), Some(attr), Some(login)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if want.as_deref().is_some_and(|w| w != r) {
            continue;
        }
        let MaintainerRecord::V1(e) = decode(NAME, k.value(), v.value())?;
        out.push(Maintainer {
            repo: r.to_string(),
            attr: attr.to_string(),
            login: login.to_string(),
            added_at: e.added_at,
            added_by: e.added_by,
        });
    }
    Ok(out)
}

/// A GitHub user as a maintainer check needs them.
#[derive(Debug, Clone, Copy)]
pub struct GitHubUser<'a> {
    pub login: &'a str,
    pub id: u64,
}

/// Whether `user` is one of `meta.maintainers` (JSON text of an attribute's `meta`): an entry whose
/// `githubId` is the user's id, or, for entries without `githubId`, whose `github` is the login (any
/// case). Plain strings and entries with neither are nobody's.
pub fn in_meta(meta_json: Option<&str>, user: GitHubUser<'_>) -> bool {
    let Some(meta) = meta_json.and_then(|t| serde_json::from_str::<Value>(t).ok()) else { return false };
    let entries = match meta.get("maintainers") {
        Some(Value::Array(items)) => items.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => return false,
    };
    entries.iter().any(|m| match (m.get("githubId").and_then(Value::as_u64), m.get("github")) {
        (Some(id), _) => id == user.id,
        (None, Some(Value::String(handle))) => handle.eq_ignore_ascii_case(user.login),
        _ => false,
    })
}

/// The commit pair whose changes decide maintainership.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// `owner/name` of the base repository.
    pub repo: &'a str,
    /// The repository's identity in the jobsets (the clone URL).
    pub clone_url: &'a str,
    pub base_sha: &'a str,
    pub head_sha: &'a str,
    /// The head comes from a fork: its `meta` grants nothing.
    pub fork: bool,
}

impl<'a> Change<'a> {
    /// The change a GitHub run checks: its base and head commits (`fork`: the head comes from a fork).
    pub fn of_run(run: &'a super::runs::Run, fork: bool) -> Change<'a> {
        Change {
            repo: &run.repo,
            clone_url: &run.clone_url,
            base_sha: &run.base_sha,
            head_sha: &run.head_sha,
            fork,
        }
    }
}

/// How many attributes the change touches if `user` maintains every one of them (at least one), else
/// `None`: when it maintains one not, when nothing changed, or when the commits were not evaluated.
pub fn maintains_every_change(
    store: &Store,
    jobsets: &Jobsets,
    change: &Change<'_>,
    user: GitHubUser<'_>,
) -> Result<Option<usize>, StoreError> {
    let Some(Unapproved { touched, missing }) = unapproved_changes(store, jobsets, change, &[user])? else {
        return Ok(None);
    };
    Ok((touched > 0 && missing.is_empty()).then_some(touched))
}

/// The changed attributes of a change that none of a set of people maintains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unapproved {
    /// How many attributes the change touches (each job counted apart).
    pub touched: usize,
    /// Those none of the people maintains (`attr`, in the order the diff lists them).
    pub missing: Vec<String>,
}

/// Which changed attributes of `change` none of `people` maintains; `None` when the commits were not
/// evaluated (a head jobset without its base's).
pub fn unapproved_changes(
    store: &Store,
    jobsets: &Jobsets,
    change: &Change<'_>,
    people: &[GitHubUser<'_>],
) -> Result<Option<Unapproved>, StoreError> {
    let all = jobsets.all()?;
    let of = |commit: &str| {
        all.iter()
            .filter(|j| j.key.repo == change.clone_url && j.key.commit.eq_ignore_ascii_case(commit))
            .collect::<Vec<_>>()
    };
    let (heads, bases) = (of(change.head_sha), of(change.base_sha));
    let table: Vec<Maintainer> = list(store, Some(change.repo))?;
    let mut out = Unapproved { touched: 0, missing: Vec::new() };
    for head in &heads {
        let base = bases
            .iter()
            .find(|b| b.key.job == head.key.job)
            .or_else(|| bases.iter().find(|b| b.key.job_name() == head.key.job_name()));
        let Some(base) = base else { return Ok(None) };
        let d = diff::diff(jobsets, base.id, head.id)?;
        for c in d.added.iter().chain(&d.removed).chain(&d.changed) {
            out.touched += 1;
            let mut covered = false;
            for user in people {
                if maintains(jobsets, &table, (base.id, head.id), &c.attr, change.fork, *user)? {
                    covered = true;
                    break;
                }
            }
            if !covered {
                out.missing.push(c.attr.clone());
            }
        }
    }
    Ok(Some(out))
}

fn maintains(
    jobsets: &Jobsets,
    table: &[Maintainer],
    (base, head): (JobsetId, JobsetId),
    attr: &str,
    fork: bool,
    user: GitHubUser<'_>,
) -> Result<bool, StoreError> {
    if table.iter().any(|m| m.attr == attr && m.login.eq_ignore_ascii_case(user.login)) {
        return Ok(true);
    }
    let sides: &[JobsetId] = if fork { &[base] } else { &[base, head] };
    for side in sides {
        if let Some(AttrOutcome::Drv(d)) = jobsets.attr(*side, attr)? {
            if in_meta(d.meta_json.as_deref(), user) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_maintainers_match_by_github_id_first() {
        let alice = GitHubUser { login: "Alice", id: 7 };
        assert!(in_meta(Some(r#"{"maintainers":[{"github":"alice"}]}"#), alice));
        assert!(in_meta(Some(r#"{"maintainers":[{"github":"someone-else","githubId":7}]}"#), alice));
        assert!(
            !in_meta(Some(r#"{"maintainers":[{"github":"alice","githubId":8}]}"#), alice),
            "the id decides"
        );
        assert!(!in_meta(Some(r#"{"maintainers":["alice",{"name":"Alice"}]}"#), alice), "no handle");
        assert!(!in_meta(Some(r#"{"maintainers":"alice"}"#), alice));
        assert!(!in_meta(Some("not json"), alice));
        assert!(!in_meta(None, alice));
    }

    #[test]
    fn the_table_is_per_repository_attribute_and_login() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        assert!(add(&store, "Octo/W", "hello", "Alice", "cli").expect("add"));
        assert!(!add(&store, "octo/w", "hello", "alice", "cli").expect("add"), "already there");
        assert!(add(&store, "octo/other", "hello", "bob", "api:t").expect("add"));
        let rows = list(&store, Some("OCTO/W")).expect("list");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].repo.as_str(), rows[0].attr.as_str(), rows[0].login.as_str()),
            ("octo/w", "hello", "alice")
        );
        assert_eq!(list(&store, None).expect("list").len(), 2);
        assert!(remove(&store, "octo/w", "hello", "ALICE").expect("remove"));
        assert!(!remove(&store, "octo/w", "hello", "alice").expect("remove"));
    }

    #[test]
    fn entries_are_validated() {
        assert!(validate("o/r", "python3Packages.requests", "alice").is_ok());
        assert!(matches!(validate("o", "a", "alice"), Err(MaintainerError::Repo(_))));
        assert!(matches!(validate("o/r", "a", "-x"), Err(MaintainerError::Login(_))));
        for bad in ["", "a b", "a\u{0}b", &"a".repeat(201)] {
            assert!(matches!(validate("o/r", bad, "alice"), Err(MaintainerError::Attr(_))), "{bad:?}");
        }
    }
}
