//! Cache pushes of a GitHub run (docs/caches.md): before the builds, which caches each job of the gating
//! configuration may use (the repository, the branch the pull request targets, whether its head comes
//! from a fork, asked of GitHub) and which it names but may not (listed in the Configure check and
//! logged as warnings); while the builds run, one queued push per usable cache of each derivation as soon
//! as its build succeeds (`push_as_built`, watching the committed build states), and after them a final
//! sweep over the review (`queue_pushes`; queueing is idempotent, `cache::queue`). A skipped or failing push never changes a build's or a check's outcome.

use super::run::RunError;
use super::GitHubService;
use crate::cache::{NewPush, Skip, Subject};
use crate::config::repo::RepoConfig;
use crate::forge::github::client::GitHubClient;
use crate::forge::github::runs::{Run, Trigger};
use std::collections::HashMap;

use crate::jobset::{AttrOutcome, JobsetId};
use crate::pipeline::{DiffReport, ReviewReport};
use crate::text::code_span;

/// What a run's jobs may push: the subject, and one Markdown line per cache a job names but may not use.
pub(super) struct PushPlan {
    pub subject: Subject,
    pub skipped: Vec<String>,
}

impl GitHubService {
    /// The push plan of `run` under `config` (the gating configuration). GitHub is asked whether the
    /// pull request comes from a fork only when some job names a cache.
    pub(super) async fn push_plan(
        &self,
        run: &Run,
        client: &GitHubClient,
        installation: u64,
        config: &RepoConfig,
    ) -> Result<PushPlan, RunError> {
        let fork = match &run.trigger {
            Trigger::PullRequest { number, .. } if config.jobs.values().any(|j| !j.caches.is_empty()) => {
                let pr = client.pull_request(installation, &run.repo, *number).await?;
                pr.from_fork()
            }
            // A merge queue entry's head is a branch of the base repository.
            _ => false,
        };
        let subject = Subject { repo: run.repo.clone(), branch: run.base_ref.clone(), fork };
        let mut skipped = Vec::new();
        for (job, j) in &config.jobs {
            for (id, why) in self.caches.plan(&j.caches, &subject).skipped {
                tracing::warn!(repo = %run.repo, job = %job, cache = %id, reason = %why, "cache push skipped");
                skipped.push(format!(
                    "job {}: cache {} skipped: {}",
                    code_span(job),
                    code_span(&id),
                    skip_markdown(&why)
                ));
            }
        }
        Ok(PushPlan { subject, skipped })
    }

    /// Queues a push of every derivation `review` built for a job to each cache the job may use: head
    /// and base sides, state `success`, or `cached` too when the cache sets `push_cached`. After
    /// [`GitHubService::push_as_built`] this is the final sweep: what it already queued is not queued
    /// again.
    pub(super) async fn queue_pushes(
        &self,
        plan: &PushPlan,
        config: &RepoConfig,
        review: &ReviewReport,
    ) -> Result<(), RunError> {
        // (cache ids, drv, jobset, attr) for every built derivation.
        let mut wanted = Vec::new();
        for job in &review.jobs {
            let Some(j) = config.jobs.get(&job.diff.job) else { continue };
            let usable = self.caches.plan(&j.caches, &plan.subject).use_;
            if usable.is_empty() {
                continue;
            }
            for a in &job.attrs {
                let sides = [
                    Some((&a.head_drv, &a.head, job.diff.head.id)),
                    a.base_drv.as_ref().zip(a.base.as_ref()).map(|(d, b)| (d, b, job.diff.base.id)),
                ];
                for (drv, result, jobset) in sides.into_iter().flatten() {
                    let caches = caches_for(&result.state, &usable);
                    if !caches.is_empty() {
                        wanted.push((caches, drv.clone(), jobset, a.attr.clone()));
                    }
                }
            }
        }
        self.enqueue_wanted(&plan.subject.repo, wanted).await
    }

    /// The derivations [`GitHubService::push_as_built`] watches in `diff`: both sides of every attribute
    /// to build, of each job that may use a cache.
    pub(super) fn watched(&self, plan: &PushPlan, config: &RepoConfig, diff: &DiffReport) -> Watched {
        let mut pending = Watched::new();
        for job in &diff.jobs {
            let Some(j) = config.jobs.get(&job.job) else { continue };
            let usable: Vec<(String, bool)> = self
                .caches
                .plan(&j.caches, &plan.subject)
                .use_
                .iter()
                .map(|c| (c.id.clone(), c.push_cached))
                .collect();
            if usable.is_empty() {
                continue;
            }
            for change in job.to_build() {
                let sides = [(&change.head_drv, job.head.id), (&change.base_drv, job.base.id)];
                for (drv, jobset) in sides {
                    let Some(drv) = drv else { continue };
                    // A derivation of several jobs goes to the caches of each.
                    let (_, _, caches) = pending
                        .entry(drv.clone())
                        .or_insert_with(|| (jobset, change.attr.clone(), Vec::new()));
                    for c in &usable {
                        if !caches.contains(c) {
                            caches.push(c.clone());
                        }
                    }
                }
            }
        }
        pending
    }

    /// Queues each derivation's pushes as soon as its build succeeds (or, for caches with
    /// `push_cached`, as soon as its outputs are found already valid), while `diff`'s builds run: every
    /// [`WATCH_INTERVAL`] the committed build states of the derivations not yet final are read. Returns
    /// once every watched derivation is final; the caller drops it when the builds finish (the final
    /// sweep is [`GitHubService::queue_pushes`]). A failure to read states only stops the watching.
    pub(super) async fn push_as_built(&self, plan: &PushPlan, mut pending: Watched) {
        while !pending.is_empty() {
            smol::Timer::after(WATCH_INTERVAL).await;
            let (graph, store) = (self.pipeline.graph().clone(), self.store.clone());
            let drvs: Vec<String> = pending.keys().cloned().collect();
            let states = smol::unblock(move || final_states(&graph, &store, &drvs)).await;
            let states = match states {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(repo = %plan.subject.repo, error = %e, "cannot watch builds for cache pushes");
                    return;
                }
            };
            let mut wanted = Vec::new();
            for (drv, state) in states {
                let Some((jobset, attr, usable)) = pending.remove(&drv) else { continue };
                let caches: Vec<String> = usable
                    .into_iter()
                    .filter(|(_, push_cached)| pushed_in(state, *push_cached))
                    .map(|(id, _)| id)
                    .collect();
                if !caches.is_empty() {
                    wanted.push((caches, drv, jobset, attr));
                }
            }
            if let Err(e) = self.enqueue_wanted(&plan.subject.repo, wanted).await {
                tracing::warn!(repo = %plan.subject.repo, error = %e, "cannot queue cache pushes");
            }
        }
    }

    /// Queues, for each (cache ids, drv, jobset, attr) of `wanted`, a push of the derivation's output paths
    /// (read from the jobset's attribute record, which must still name `drv`) to each cache.
    async fn enqueue_wanted(
        &self,
        repo: &str,
        wanted: Vec<(Vec<String>, String, JobsetId, String)>,
    ) -> Result<(), RunError> {
        if wanted.is_empty() {
            return Ok(());
        }
        let jobsets = self.pipeline.jobsets().clone();
        let owner_repo = repo.to_string();
        let pushes = smol::unblock(move || {
            let mut out = Vec::new();
            for (caches, drv, jobset, attr) in wanted {
                let Some(AttrOutcome::Drv(d)) = jobsets.attr(jobset, &attr)? else { continue };
                if d.drv_path != drv {
                    continue;
                }
                let paths: Vec<String> = d
                    .outputs
                    .iter()
                    .map(|(_, p)| p.clone())
                    .filter(|p| crate::nix::store_path::StorePath::parse(p).is_ok())
                    .collect();
                if paths.is_empty() {
                    continue;
                }
                for cache in caches {
                    out.push(NewPush {
                        cache,
                        drv: drv.clone(),
                        paths: paths.clone(),
                        repo: owner_repo.clone(),
                    });
                }
            }
            Ok::<_, crate::store::StoreError>(out)
        })
        .await?;
        let queued = self.caches.enqueue(&self.store, pushes).await?;
        if queued > 0 {
            tracing::info!(repo = %repo, pushes = queued, "cache pushes queued");
        }
        Ok(())
    }
}

/// drv → (jobset, attribute, the usable caches as (id, `push_cached`)).
pub(super) type Watched = HashMap<String, (JobsetId, String, Vec<(String, bool)>)>;

/// How often [`GitHubService::push_as_built`] reads the build states.
pub(super) const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The derivations of `drvs` whose committed build state is final, with the state's name (`success`,
/// `cached`, `failure`, …). Blocking.
fn final_states(
    graph: &crate::graph::Graph,
    store: &crate::store::Store,
    drvs: &[String],
) -> Result<Vec<(String, &'static str)>, String> {
    let reader = crate::scheduler::state::Reader::new(store).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for drv in drvs {
        let Some(id) = graph.id_of(drv).map_err(|e| e.to_string())? else { continue };
        if let Some(record) = reader.state(id).map_err(|e| e.to_string())? {
            if record.state.is_terminal() {
                out.push((drv.clone(), record.state.name()));
            }
        }
    }
    Ok(out)
}

/// Why a cache is skipped, as Markdown: names from GitHub (repository, branch) in code spans.
fn skip_markdown(skip: &Skip) -> String {
    match skip {
        Skip::Unknown => skip.to_string(),
        Skip::Repo(repo) => {
            format!("the cache does not allow repository {} (allowed_repos)", code_span(repo))
        }
        Skip::Branch(branch) => {
            format!("the cache does not allow branch {} (allowed_branches)", code_span(branch))
        }
        Skip::Fork => skip.to_string(),
    }
}

/// The ids among `usable` a derivation in build state `state` goes to: every one when it was built
/// (`success`), those with `push_cached` when it was substituted or already valid (`cached`), none
/// otherwise.
fn caches_for(state: &str, usable: &[&crate::config::CacheConfig]) -> Vec<String> {
    usable.iter().filter(|c| pushed_in(state, c.push_cached)).map(|c| c.id.clone()).collect()
}

/// Whether a derivation in build state `state` goes to a cache: when built (`success`), or when its
/// outputs were substituted or already valid (`cached`) and the cache sets `push_cached`.
fn pushed_in(state: &str, push_cached: bool) -> bool {
    state == "success" || state == "cached" && push_cached
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheConfig, CacheType, CredentialSource, Permissions};

    fn cache(id: &str, push_cached: bool) -> CacheConfig {
        CacheConfig {
            id: id.into(),
            cache_type: CacheType::NixCopy,
            destination: "file:///c".into(),
            credentials: CredentialSource::None,
            permissions: Permissions::default(),
            push_cached,
            allow_forks: false,
            secret_key_file: None,
        }
    }

    #[test]
    fn only_built_derivations_unless_push_cached() {
        let (built_only, also_cached) = (cache("a", false), cache("b", true));
        let usable = [&built_only, &also_cached];
        assert_eq!(caches_for("success", &usable), ["a", "b"]);
        assert_eq!(caches_for("cached", &usable), ["b"]);
        assert!(caches_for("failure", &usable).is_empty());
        assert!(caches_for("transitive-failure", &usable).is_empty());
    }

    #[test]
    fn skip_reasons_put_github_names_in_code_spans() {
        assert_eq!(
            skip_markdown(&Skip::Branch("a`b".into())),
            format!("the cache does not allow branch {} (allowed_branches)", code_span("a`b"))
        );
        assert_eq!(skip_markdown(&Skip::Fork), Skip::Fork.to_string());
    }
}
