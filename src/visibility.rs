//! Which data the HTTP API may serve without a token: the repositories GitHub says are public, and the
//! derivations reachable from their jobsets.
//!
//! Two tables (see `migrations-free-schema/`): `repo_visibility` records, per repository identity as
//! jobsets record it (the clone URL), whether the latest webhook payload said `repository.private`;
//! `public_drvs` marks every derivation reachable from a jobset of a public repository. Marks are only
//! ever added: a derivation that a public repository's evaluation reached stays public (its store path
//! and build log are what anyone evaluating that public commit gets). The rules, conservative on purpose:
//!
//! - a repository is public only when a webhook said so; one never heard of, and so every local
//!   repository (`file://…`, from `ekaci eval`/`review`), is private;
//! - a derivation is public only when it is marked; one reached only from private or local jobsets is
//!   private.
//!
//! Every function is blocking (run it through `smol::unblock`). This module decides nothing about
//! tokens, never writes anything but its two tables, and holds no write transaction while it walks the
//! graph.

use std::collections::HashSet;

use redb::WriteTransaction;
use serde::{Deserialize, Serialize};

use crate::graph::{DrvId, Graph, GraphError};
use crate::jobset::{AttrOutcome, JobsetId, Jobsets};
use crate::store::codec::{decode, encode};
use crate::store::schema::{PUBLIC_DRVS, REPO_VISIBILITY};
use crate::store::{now_secs, Store, StoreError};

const REPOS_NAME: &str = "repo_visibility";

/// What the latest webhook payload said about a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoVisibility {
    /// `owner/name`.
    pub full_name: String,
    /// `repository.private`.
    pub private: bool,
    /// Unix seconds.
    pub updated_at: u64,
}

/// Versioned on-disk form of [`RepoVisibility`].
#[derive(Serialize, Deserialize)]
enum RepoVisibilityRecord {
    V1(RepoVisibility),
}

/// Records what a webhook payload said about repository `repo` (its clone URL), inside the caller's
/// transaction (the one that records the delivery).
pub fn record_repo(
    tx: &WriteTransaction,
    repo: &str,
    full_name: &str,
    private: bool,
) -> Result<(), StoreError> {
    let mut table = tx.open_table(REPO_VISIBILITY)?;
    let record = RepoVisibilityRecord::V1(RepoVisibility {
        full_name: full_name.to_string(),
        private,
        updated_at: now_secs(),
    });
    table.insert(repo, encode(REPOS_NAME, &record)?.as_slice())?;
    Ok(())
}

/// What is recorded about repository `repo`, if anything.
pub fn repo(store: &Store, repo: &str) -> Result<Option<RepoVisibility>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(REPO_VISIBILITY)?;
    let found = table.get(repo)?;
    found
        .map(|v| {
            decode::<RepoVisibilityRecord>(REPOS_NAME, repo, v.value()).map(|RepoVisibilityRecord::V1(r)| r)
        })
        .transpose()
}

/// Whether repository `repo` (as jobsets record it) is known to be public: only when a webhook said so.
/// Local repositories (`file://…`, which no webhook describes) and repositories never heard of are not.
pub fn repo_is_public(store: &Store, repo: &str) -> Result<bool, StoreError> {
    Ok(self::repo(store, repo)?.is_some_and(|r| !r.private))
}

#[derive(Debug, thiserror::Error)]
pub enum VisibilityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Whether derivation `drv` (a store path) is marked public. Unknown derivations are not.
pub fn drv_is_public(store: &Store, graph: &Graph, drv: &str) -> Result<bool, VisibilityError> {
    let Some(id) = graph.id_of(drv)? else { return Ok(false) };
    let tx = store.db().begin_read().map_err(StoreError::from)?;
    let table = tx.open_table(PUBLIC_DRVS).map_err(StoreError::from)?;
    Ok(table.get(id.0).map_err(StoreError::from)?.is_some())
}

/// The repositories (identities as jobsets record them) whose builds need derivation `drv`: those of the
/// jobsets owning builds (`build_owners`) with a root that is `drv` or depends on it, sorted. What a
/// signed-in user's right to read a private derivation (and its logs) is checked against.
pub fn repos_of_drv(
    store: &Store,
    graph: &Graph,
    jobsets: &Jobsets,
    drv: &str,
) -> Result<Vec<String>, VisibilityError> {
    let Some(id) = graph.id_of(drv)? else { return Ok(Vec::new()) };
    // `drv` and everything that depends on it, transitively.
    let mut above: HashSet<u32> = HashSet::new();
    let mut stack = vec![id];
    while let Some(d) = stack.pop() {
        if above.insert(d.0) {
            stack.extend(graph.dependents(d)?);
        }
    }
    let owners = crate::scheduler::state::Reader::new(store)?.owners()?;
    let mut repos = Vec::new();
    for (owner, rec) in owners {
        let crate::scheduler::Owner::Jobset(jobset) = owner else { continue };
        if !graph.ids_of(&rec.roots)?.into_iter().flatten().any(|r| above.contains(&r.0)) {
            continue;
        }
        if let Some(j) = jobsets.get(jobset)? {
            repos.push(j.key.repo);
        }
    }
    repos.sort();
    repos.dedup();
    Ok(repos)
}

/// Marks every derivation reachable from the attributes of `jobsets` public; returns how many were newly
/// marked. The walk stops at derivations already marked, so marking the next commit of the same public
/// repository costs what changed. Call it only for jobsets of a public repository.
pub fn mark_jobsets_public(
    store: &Store,
    jobsets: &Jobsets,
    graph: &Graph,
    ids: &[JobsetId],
) -> Result<u64, VisibilityError> {
    let mut roots = Vec::new();
    for id in ids {
        jobsets.for_each_attr(*id, |_, outcome| {
            if let AttrOutcome::Drv(d) = outcome {
                roots.push(d.drv_path);
            }
            Ok(())
        })?;
    }
    let roots: Vec<DrvId> = graph.ids_of(&roots)?.into_iter().flatten().collect();
    let new = {
        let tx = store.db().begin_read().map_err(StoreError::from)?;
        let marked = tx.open_table(PUBLIC_DRVS).map_err(StoreError::from)?;
        let mut seen: HashSet<u32> = HashSet::new();
        let mut stack = roots;
        let mut new = Vec::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.0) || marked.get(id.0).map_err(StoreError::from)?.is_some() {
                continue;
            }
            new.push(id.0);
            stack.extend(graph.dependencies(id)?);
        }
        new
    };
    if new.is_empty() {
        return Ok(0);
    }
    let now = now_secs();
    let tx = store.db().begin_write().map_err(StoreError::from)?;
    {
        let mut table = tx.open_table(PUBLIC_DRVS).map_err(StoreError::from)?;
        for id in &new {
            table.insert(*id, now).map_err(StoreError::from)?;
        }
    }
    tx.commit().map_err(StoreError::from)?;
    Ok(new.len() as u64)
}
