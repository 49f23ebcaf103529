//! Pushing build outputs to binary caches (docs/caches.md): the server's `[[caches]]` with their
//! credentials resolved once at start-up ([`Caches`]), which caches a job may use ([`Caches::plan`]),
//! the persisted push queue (`queue.rs`), the push commands (`push.rs`), permissions and the SSRF check
//! (`permissions.rs`) and credential sources as environment variables (`credentials.rs`).
//!
//! Flow: after a GitHub run's builds, the service queues one push per (derivation, cache) for every
//! derivation of a job that was really built (state `success`; also `cached` when the cache sets
//! `push_cached`) and whose job names a cache it may use. The push loop ([`Caches::run`]) takes what is
//! due, up to [`BATCH`] derivations per cache, runs one push (one `nix copy` or client call with every
//! output path) under `security.max_hook_timeout_seconds`, records the outcome (retried with backoff, a
//! cache being down is never a build failure), counts `eka_ci_cache_push_total{cache,result}` and
//! `eka_ci_cache_push_seconds`, and with `security.audit_hooks` writes an audit record and a log line.
//! It never builds, never decides a check run's conclusion, and never logs a credential.

pub mod credentials;
pub mod permissions;
pub mod push;
pub mod queue;

use std::collections::HashMap;
use std::time::Duration;

use crate::config::{CacheConfig, ServerConfig};
use crate::secret::Secret;
use crate::store::{now_secs, Store};

pub use permissions::{Skip, Subject};
pub use queue::{NewPush, PushEntry, PushState};

/// Derivations pushed per command (per cache and pass).
pub const BATCH: usize = 200;

/// A cache that cannot be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum CacheSetupError {
    #[error("caches[{index}] ({id}): credentials: {source}")]
    Credentials { index: usize, id: String, source: credentials::CredentialError },
    #[error("caches[{index}] ({id}): secret_key_file is only for cache_type = \"nix-copy\"")]
    KeyNotNixCopy { index: usize, id: String },
    #[error("caches[{index}] ({id}): secret_key_file {path}: {source}")]
    KeyFile { index: usize, id: String, path: std::path::PathBuf, source: std::io::Error },
}

/// The server's caches, ready to push.
pub struct Caches {
    caches: Vec<CacheConfig>,
    env: HashMap<String, Vec<(String, Secret)>>,
    /// Caches whose credentials come from a remote source: fetched again before each push.
    remote: HashMap<String, credentials::RemoteCredentials>,
    timeout: Duration,
    audit: bool,
    allow_private: bool,
    wake_tx: async_channel::Sender<()>,
    wake_rx: async_channel::Receiver<()>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.caches.iter().map(|c| c.id.as_str()).collect();
        f.debug_struct("Caches").field("caches", &ids).finish_non_exhaustive()
    }
}

/// Which of a job's caches are used, and which are skipped and why.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub use_: Vec<&'a CacheConfig>,
    pub skipped: Vec<(String, Skip)>,
}

impl Caches {
    /// Resolves every cache's credentials through `env` (call before the server seals its environment)
    /// and checks each `secret_key_file` is readable.
    pub fn load(
        config: &ServerConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Caches, CacheSetupError> {
        let (mut resolved, mut remote) = (HashMap::new(), HashMap::new());
        for (index, c) in config.caches.iter().enumerate() {
            if let Some(r) = credentials::RemoteCredentials::of(&c.credentials, env) {
                remote.insert(c.id.clone(), r);
            }
            let vars = credentials::cache_env(&c.credentials, env)
                .map_err(|source| CacheSetupError::Credentials { index, id: c.id.clone(), source })?;
            if let Some(path) = &c.secret_key_file {
                if c.cache_type != crate::config::CacheType::NixCopy {
                    return Err(CacheSetupError::KeyNotNixCopy { index, id: c.id.clone() });
                }
                std::fs::File::open(path).map_err(|source| CacheSetupError::KeyFile {
                    index,
                    id: c.id.clone(),
                    path: path.clone(),
                    source,
                })?;
            }
            resolved.insert(c.id.clone(), vars);
        }
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        Ok(Caches {
            caches: config.caches.clone(),
            env: resolved,
            remote,
            timeout: Duration::from_secs(config.security.max_hook_timeout_seconds),
            audit: config.security.audit_hooks,
            allow_private: config.security.allow_private_cache_hosts,
            wake_tx,
            wake_rx,
        })
    }

    /// The cache with this id.
    pub fn get(&self, id: &str) -> Option<&CacheConfig> {
        self.caches.iter().find(|c| c.id == id)
    }

    /// Which of `ids` (a job's `caches`) `subject` may push to.
    pub fn plan(&self, ids: &[String], subject: &Subject) -> Plan<'_> {
        let mut plan = Plan::default();
        for id in ids {
            match self.get(id) {
                None => plan.skipped.push((id.clone(), Skip::Unknown)),
                Some(c) => match permissions::decide(c, subject) {
                    Ok(()) => plan.use_.push(c),
                    Err(skip) => plan.skipped.push((id.clone(), skip)),
                },
            }
        }
        plan
    }

    /// Queues `pushes` and wakes the push loop.
    pub async fn enqueue(
        &self,
        store: &Store,
        pushes: Vec<NewPush>,
    ) -> Result<usize, crate::store::StoreError> {
        if pushes.is_empty() {
            return Ok(0);
        }
        let s = store.clone();
        let n = smol::unblock(move || queue::enqueue(&s, &pushes)).await?;
        let _ = self.wake_tx.try_send(());
        Ok(n)
    }

    /// The push loop: runs until `shutdown` closes. A push cut short by shutdown stays queued.
    pub async fn run(
        &self,
        store: Store,
        shutdown: async_channel::Receiver<()>,
    ) -> Result<(), crate::store::StoreError> {
        loop {
            let s = store.clone();
            let now = now_secs();
            let (due, next) = smol::unblock(move || queue::due(&s, now, BATCH)).await?;
            if !due.is_empty() {
                for (id, batch) in due {
                    self.attempt(&store, &id, batch).await?;
                }
                // Read the queue again: the attempts moved their entries' next attempts.
                continue;
            }
            let wait = match next {
                Some(at) => Duration::from_secs(at.saturating_sub(now_secs()).clamp(1, 60)),
                None => Duration::from_secs(60),
            };
            let stop = async {
                let _ = shutdown.recv().await;
                true
            };
            let woken = async {
                futures_lite::future::or(
                    async {
                        let _ = self.wake_rx.recv().await;
                    },
                    async {
                        smol::Timer::after(wait).await;
                    },
                )
                .await;
                false
            };
            if futures_lite::future::or(stop, woken).await {
                return Ok(());
            }
        }
    }

    /// The environment variables of cache `id`'s push command: fetched now for a remote source (so rotated
    /// or expiring credentials are current), else those resolved at start-up.
    async fn credentials(&self, id: &str) -> Result<Vec<(String, Secret)>, credentials::CredentialError> {
        match self.remote.get(id) {
            Some(r) => {
                let r = r.clone();
                smol::unblock(move || r.fetch()).await
            }
            None => Ok(self.env.get(id).cloned().unwrap_or_default()),
        }
    }

    /// One push of `batch` (entries of cache `id`).
    async fn attempt(
        &self,
        store: &Store,
        id: &str,
        batch: Vec<PushEntry>,
    ) -> Result<(), crate::store::StoreError> {
        let paths: Vec<String> = {
            let mut p: Vec<String> = batch.iter().flat_map(|e| e.paths.iter().cloned()).collect();
            p.sort();
            p.dedup();
            p
        };
        let started = std::time::Instant::now();
        let attempt = match self.get(id) {
            None => queue::Attempt::Refused(format!("cache {id} is no longer configured")),
            Some(cache) => {
                let (c, allow) = (cache.clone(), self.allow_private);
                match smol::unblock(move || permissions::check_destination(&c, allow)).await {
                    Err(msg) => queue::Attempt::Refused(msg),
                    Ok(()) => match self.credentials(id).await {
                        Err(e) => queue::Attempt::Failed(format!("credentials: {e}")),
                        Ok(env) => match push::push(cache, &env, &paths, self.timeout).await {
                            Ok(_) => queue::Attempt::Pushed,
                            Err(e) => queue::Attempt::Failed(e.0),
                        },
                    },
                }
            }
        };
        let elapsed = started.elapsed();
        let metrics = crate::metrics::global();
        metrics.cache_push_seconds.observe(elapsed.as_secs_f64());
        let (s, b, p, a, audit) = (store.clone(), batch.clone(), paths.clone(), attempt.clone(), self.audit);
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let label = smol::unblock(move || queue::finish(&s, &b, &p, &a, ms, audit)).await?;
        metrics.cache_push_total.with_label_values(&[id, label]).inc();
        let outcome = match &attempt {
            queue::Attempt::Pushed => "pushed".to_string(),
            queue::Attempt::Failed(m) | queue::Attempt::Refused(m) => format!("failed: {m}"),
        };
        if self.audit {
            tracing::info!(target: "eka_ci::audit", cache = %id, paths = ?paths, outcome = %outcome, duration_ms = ms, "cache push");
        } else if label != "pushed" {
            tracing::warn!(cache = %id, derivations = batch.len(), result = label, outcome = %outcome, "cache push failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CacheType, CredentialSource, Permissions};

    #[test]
    fn plan_names_unknown_and_refused_caches() {
        let mut config = ServerConfig::default();
        config.caches.push(CacheConfig {
            id: "org".into(),
            cache_type: CacheType::Cachix,
            destination: "org".into(),
            credentials: CredentialSource::None,
            permissions: Permissions {
                allow_all: false,
                allowed_repos: vec!["myorg/*".into()],
                allowed_branches: vec![],
            },
            push_cached: false,
            allow_forks: false,
            secret_key_file: None,
        });
        let caches = Caches::load(&config, &|_| None).unwrap();
        let subject = Subject { repo: "other/x".into(), branch: "main".into(), fork: false };
        let plan = caches.plan(&["org".into(), "nope".into()], &subject);
        assert!(plan.use_.is_empty());
        assert_eq!(
            plan.skipped,
            [("org".to_string(), Skip::Repo("other/x".into())), ("nope".to_string(), Skip::Unknown)]
        );
        let ok = Subject { repo: "myorg/x".into(), ..subject };
        assert_eq!(caches.plan(&["org".into()], &ok).use_.len(), 1);
    }
}
