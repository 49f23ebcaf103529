//! The change summary of a pull request: per job, what changed between the base and head jobsets
//! (package changes classified from `meta`), how much must rebuild (nixpkgs' rebuild count, per system and
//! kernel, bucketed like ofborg) and the blast radius of every changed derivation in the head graph.
//!
//! [`summarize_job`] computes one job's [`JobSummary`] (read through the `change_summaries` cache),
//! [`for_commit`] is the read-through lookup behind the HTTP API, [`render`] turns a [`ChangeSummary`] into
//! size-capped markdown, and [`prune_loop`] ages the cache out in the background. `classify.rs` compares
//! metadata, `impact.rs` holds the rebuild counts and the bit-parallel blast-radius traversal over a compact
//! snapshot of the graph, `render.rs` the markdown, `cache.rs` the redb table, `sizes.rs` the size
//! sections (what the jobs' size checks stored after the builds).
//!
//! This module only reads jobsets, the graph and the stored size summaries: it must never evaluate Nix,
//! start builds, write any table but `change_summaries`, or hold a write transaction across an `.await`
//! (every call but [`prune_loop`] is blocking and runs on `smol::unblock` when called from async code).

pub mod cache;
pub mod classify;
pub mod impact;
pub mod render;
pub mod sizes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::graph::{Graph, GraphError};
use crate::jobset::{diff, AttrDrv, AttrOutcome, JobsetId, JobsetKey, JobsetState, Jobsets};
use crate::nix::eval_identity::nix_env_lists_name;
use crate::store::{now_secs, Store, StoreError};

pub use render::render;

/// What to compute and show; from the repository's `package_change_summary` and `rebuild_impact`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Show the package-changes section (`package_change_summary.enabled`).
    pub package_changes: bool,
    /// Rows listed before the rest is summarised as "… and N more" (`max_packages_listed`).
    pub max_packages_listed: usize,
    /// List rebuild-only packages as rows, not only their count (`include_rebuild_only`).
    pub include_rebuild_only: bool,
    /// Compute and show the blast radius (`rebuild_impact.enabled`).
    pub impact: bool,
    /// How many of the largest blast radii are kept and shown (`max_top_blast_radius`).
    pub max_top_blast_radius: usize,
    /// Keep the blast radius of every rebuilt derivation in the summary, not only the top ones
    /// (`compute_full_blast_radius`). The traversal covers every derivation either way.
    pub full_blast_radius: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            package_changes: true,
            max_packages_listed: 100,
            include_rebuild_only: false,
            impact: true,
            max_top_blast_radius: 5,
            full_blast_radius: false,
        }
    }
}

impl Settings {
    /// The settings of a validated repository configuration.
    pub fn from_repo(config: &crate::config::repo::RepoConfig) -> Settings {
        let s = &config.package_change_summary;
        let r = &config.rebuild_impact;
        Settings {
            package_changes: s.enabled,
            max_packages_listed: s.max_packages_listed as usize,
            include_rebuild_only: s.include_rebuild_only,
            impact: r.enabled,
            max_top_blast_radius: r.max_top_blast_radius as usize,
            full_blast_radius: r.compute_full_blast_radius,
        }
    }
}

/// How one attribute changed. A package may have several kinds (a version bump with a new license).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PackageChangeKind {
    Added,
    Removed,
    /// Same `pname`, different `version`.
    VersionBump,
    LicenseChange,
    MaintainerChange,
    /// The derivation changed, none of the metadata above did.
    RebuildOnly,
}

impl PackageChangeKind {
    /// Every kind, in the order summaries list them.
    pub const ALL: [PackageChangeKind; 6] = [
        PackageChangeKind::Added,
        PackageChangeKind::Removed,
        PackageChangeKind::VersionBump,
        PackageChangeKind::LicenseChange,
        PackageChangeKind::MaintainerChange,
        PackageChangeKind::RebuildOnly,
    ];

    /// The lowercase name used in JSON-facing text and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageChangeKind::Added => "added",
            PackageChangeKind::Removed => "removed",
            PackageChangeKind::VersionBump => "version-bump",
            PackageChangeKind::LicenseChange => "license-change",
            PackageChangeKind::MaintainerChange => "maintainer-change",
            PackageChangeKind::RebuildOnly => "rebuild-only",
        }
    }
}

/// One attribute that differs between base and head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    pub attr: String,
    /// The derivation's system (head side, else base side).
    pub system: String,
    /// Never empty; sorted.
    pub kinds: Vec<PackageChangeKind>,
    pub pname: Option<String>,
    pub base_version: Option<String>,
    pub head_version: Option<String>,
    /// Normalised license identifiers (SPDX id, else short name, else full name), sorted.
    pub base_license: Vec<String>,
    pub head_license: Vec<String>,
    /// Normalised maintainer handles (GitHub handle, else name, else e-mail), sorted.
    pub base_maintainers: Vec<String>,
    pub head_maintainers: Vec<String>,
}

impl PackageChange {
    pub fn has(&self, kind: PackageChangeKind) -> bool {
        self.kinds.contains(&kind)
    }
}

/// How many package changes of each kind (a package with two kinds counts in both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    pub added: u64,
    pub removed: u64,
    pub version_bump: u64,
    pub license_change: u64,
    pub maintainer_change: u64,
    pub rebuild_only: u64,
}

impl KindCounts {
    /// The count of `kind`.
    pub fn get(&self, kind: PackageChangeKind) -> u64 {
        match kind {
            PackageChangeKind::Added => self.added,
            PackageChangeKind::Removed => self.removed,
            PackageChangeKind::VersionBump => self.version_bump,
            PackageChangeKind::LicenseChange => self.license_change,
            PackageChangeKind::MaintainerChange => self.maintainer_change,
            PackageChangeKind::RebuildOnly => self.rebuild_only,
        }
    }

    fn bump(&mut self, kind: PackageChangeKind) {
        let c = match kind {
            PackageChangeKind::Added => &mut self.added,
            PackageChangeKind::Removed => &mut self.removed,
            PackageChangeKind::VersionBump => &mut self.version_bump,
            PackageChangeKind::LicenseChange => &mut self.license_change,
            PackageChangeKind::MaintainerChange => &mut self.maintainer_change,
            PackageChangeKind::RebuildOnly => &mut self.rebuild_only,
        };
        *c += 1;
    }

    /// The counts of a list of changes.
    pub fn of(changes: &[PackageChange]) -> KindCounts {
        let mut counts = KindCounts::default();
        for c in changes {
            for k in &c.kinds {
                counts.bump(*k);
            }
        }
        counts
    }
}

/// The head evaluation's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalStatus {
    /// Every attribute evaluated.
    Ok,
    /// The job as a whole could not be evaluated.
    Failed { message: String },
    /// Some attributes failed to evaluate (`allowed`: the job allows evaluation failures).
    AttrErrors { count: u64, allowed: bool },
}

/// ofborg's rebuild buckets (the nixpkgs `10.rebuild-*` labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Bucket {
    /// 0
    None,
    /// 1-10
    UpTo10,
    /// 11-100
    UpTo100,
    /// 101-500
    UpTo500,
    /// 501-1000
    UpTo1000,
    /// 1001-2500
    UpTo2500,
    /// 2501-5000
    UpTo5000,
    /// 5001+
    Over5000,
}

impl Bucket {
    /// The bucket of a rebuild count.
    pub fn of(count: u64) -> Bucket {
        match count {
            0 => Bucket::None,
            1..=10 => Bucket::UpTo10,
            11..=100 => Bucket::UpTo100,
            101..=500 => Bucket::UpTo500,
            501..=1000 => Bucket::UpTo1000,
            1001..=2500 => Bucket::UpTo2500,
            2501..=5000 => Bucket::UpTo5000,
            _ => Bucket::Over5000,
        }
    }

    /// The label text (`0`, `1-10`, … `5001+`).
    pub fn label(self) -> &'static str {
        match self {
            Bucket::None => "0",
            Bucket::UpTo10 => "1-10",
            Bucket::UpTo100 => "11-100",
            Bucket::UpTo500 => "101-500",
            Bucket::UpTo1000 => "501-1000",
            Bucket::UpTo2500 => "1001-2500",
            Bucket::UpTo5000 => "2501-5000",
            Bucket::Over5000 => "5001+",
        }
    }
}

/// Rebuilds of one system (docs/change-summary.md, "Rebuild count").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemRebuilds {
    pub system: String,
    /// nixpkgs' rebuild count: head attributes of this system that nix-env lists (hidden aliases left out,
    /// see `jobset::aliases`) whose out paths differ from the same attribute's on base, or that base does
    /// not list (added).
    pub rebuilds: u64,
    /// ofborg's bucket of [`SystemRebuilds::rebuilds`].
    pub bucket: Bucket,
    /// Rebuilt derivations of this system: distinct head derivations with an output path that no base
    /// attribute has.
    pub rebuilt_drvs: u64,
    /// Derivations of this system that must rebuild: the rebuilt derivations and everything in the head
    /// graph that depends on them (0 when the impact is not computed).
    pub must_rebuild: u64,
}

/// Rebuilds of one kernel (`linux` for `*-linux` systems, `darwin` for `*-darwin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRebuilds {
    pub kernel: String,
    /// The sum of its systems' [`SystemRebuilds::rebuilds`] (attributes).
    pub rebuilds: u64,
    pub bucket: Bucket,
    /// The sum of its systems' [`SystemRebuilds::rebuilt_drvs`].
    pub rebuilt_drvs: u64,
}

/// The blast radius of one rebuilt derivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlastRadius {
    /// The (first, by name) attribute evaluating to this derivation.
    pub attr: String,
    pub drv: String,
    pub system: String,
    /// Derivations in the head graph that depend on it, transitively (itself excluded).
    pub dependents: u64,
}

/// How much a change rebuilds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildImpact {
    /// Every system of the head jobset, sorted.
    pub per_system: Vec<SystemRebuilds>,
    /// `linux` and `darwin`, always both.
    pub per_kernel: Vec<KernelRebuilds>,
    /// Whether the blast radius was computed (`rebuild_impact.enabled`).
    pub blast_radius_computed: bool,
    /// The largest blast radii, largest first (ties by attribute); every rebuilt derivation with
    /// `full_blast_radius`, else at most `max_top_blast_radius`.
    pub top: Vec<BlastRadius>,
    /// nixpkgs' rebuild count over every system (the sum of the per-system rebuilds; attributes).
    pub rebuilds: u64,
    /// Head derivation attributes nix-env does not list (aliases of an attribute listed before).
    pub hidden_aliases: u64,
    /// Whether the identity step ran for both jobsets; if not, every attribute of a jobset without it
    /// counts as listed.
    pub aliases_known: bool,
    /// Distinct rebuilt derivations, all systems (the blast radius seeds; the sum of the per-system
    /// rebuilt derivations).
    pub changed_drvs: u64,
    /// Derivations that must rebuild, all systems (the union of every seed's blast radius and the seeds).
    pub must_rebuild: u64,
}

/// One job's change summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub repo: String,
    pub job: String,
    pub base_sha: String,
    pub head_sha: String,
    /// The head evaluation's state.
    pub eval: EvalStatus,
    /// Attributes failing to evaluate on head that evaluated (or did not exist) on base, sorted.
    pub new_eval_errors: Vec<String>,
    /// Attributes that failed on base and evaluate on head, sorted.
    pub fixed_eval_errors: Vec<String>,
    /// Every changed attribute, sorted by attribute.
    pub changes: Vec<PackageChange>,
    pub counts: KindCounts,
    pub impact: RebuildImpact,
    /// Unix seconds.
    pub computed_at: u64,
    /// What it was computed with (a cached summary is reused only for the same settings).
    pub settings: Settings,
}

/// The change summary of one commit: every job's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSummary {
    pub repo: String,
    pub base_sha: String,
    pub head_sha: String,
    /// Sorted by job, then base.
    pub jobs: Vec<JobSummary>,
    /// What the size checks of its jobs found (jobs with a `size_check`, once their builds were measured),
    /// in job order; see `summary::sizes`.
    pub sizes: Vec<crate::sizes::SizeSummary>,
}

/// How much detail a rendering dropped to fit (in the order detail is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Truncation {
    None,
    /// Maintainer rows dropped.
    Maintainers,
    /// Maintainer and license rows dropped.
    Licenses,
    /// … and the rebuild-only line (and rows).
    RebuildOnlyLine,
    /// Only the headline and counts are left.
    CountsOnly,
    /// Even the counts did not fit: cut at the hard cap, with a footer.
    HardCap,
}

/// A rendered summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub markdown: String,
    pub truncation: Truncation,
}

/// Errors of computing a summary.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("jobset {id} does not exist")]
    MissingJobset { id: JobsetId },
    #[error("jobset {id} ({repo} at {commit}, job {job}) is still evaluating")]
    NotEvaluated { id: JobsetId, repo: String, commit: String, job: String },
    #[error("jobsets {base} and {head} are of different jobs ({base_job} and {head_job})")]
    DifferentJobs { base: JobsetId, head: JobsetId, base_job: String, head_job: String },
    #[error("the change-summary computation failed: {0}")]
    Worker(String),
}

/// Blocking. One job's summary of jobset `head` against jobset `base`: from the cache (key head commit,
/// base commit, job) when computed with the same settings, else computed and stored.
pub fn summarize_job(
    store: &Store,
    jobsets: &Jobsets,
    graph: &Graph,
    base: JobsetId,
    head: JobsetId,
    settings: &Settings,
) -> Result<JobSummary, SummaryError> {
    let started = Instant::now();
    let base_js = jobsets.get(base)?.ok_or(SummaryError::MissingJobset { id: base })?;
    let head_js = jobsets.get(head)?.ok_or(SummaryError::MissingJobset { id: head })?;
    for js in [&base_js, &head_js] {
        if js.state == JobsetState::Evaluating {
            return Err(SummaryError::NotEvaluated {
                id: js.id,
                repo: js.key.repo.clone(),
                commit: js.key.commit.clone(),
                job: js.key.job.clone(),
            });
        }
    }
    if base_js.key.job_name() != head_js.key.job_name() {
        return Err(SummaryError::DifferentJobs {
            base,
            head,
            base_job: base_js.key.job.clone(),
            head_job: head_js.key.job.clone(),
        });
    }
    let m = crate::metrics::global();
    if let Some(hit) = cache::get(store, &head_js.key.commit, &base_js.key.commit, &head_js.key.job)? {
        if hit.settings == *settings && hit.repo == head_js.key.repo {
            m.change_summary_cache_hits.inc();
            m.change_summary_duration
                .with_label_values(&["end_to_end"])
                .observe(started.elapsed().as_secs_f64());
            return Ok(hit);
        }
    }
    m.change_summary_cache_misses.inc();
    let summary = compute(jobsets, graph, base, head, settings)?;
    cache::put_as(store, &head_js.key.job, &summary)?;
    m.change_summary_duration.with_label_values(&["end_to_end"]).observe(started.elapsed().as_secs_f64());
    Ok(summary)
}

/// Computes one job's summary without the cache.
fn compute(
    jobsets: &Jobsets,
    graph: &Graph,
    base: JobsetId,
    head: JobsetId,
    settings: &Settings,
) -> Result<JobSummary, SummaryError> {
    let m = crate::metrics::global();
    let started = Instant::now();
    let d = diff::diff(jobsets, base, head)?;

    // One pass over base: every output path (for the rebuild count) and each attribute's derivation and
    // meta fingerprint (to find metadata-only changes, which leave the derivation as it was).
    // Which attributes nix-env lists on each side (the identity step's result; without it, all).
    let base_aliases = jobsets.aliases(base)?;
    let head_aliases = jobsets.aliases(head)?;
    let aliases_known = base_aliases.is_some() && head_aliases.is_some();
    let (base_aliases, head_aliases) = (base_aliases.unwrap_or_default(), head_aliases.unwrap_or_default());
    let (base_hidden, head_hidden) = (base_aliases.hidden_map(), head_aliases.hidden_map());
    let mut base_outputs: HashSet<String> = HashSet::new();
    // attribute → (derivation, meta fingerprint, out-paths fingerprint when nix-env lists it)
    let mut base_attrs: HashMap<String, (String, u64, Option<u64>)> = HashMap::new();
    jobsets.for_each_attr(base, |attr, o| {
        if let AttrOutcome::Drv(d) = o {
            let listed = (!base_hidden.contains_key(attr) && nix_env_lists_name(attr))
                .then(|| fingerprint(&d.outputs));
            base_attrs.insert(attr.to_string(), (d.drv_path, fingerprint(&d.meta_json), listed));
            base_outputs.extend(d.outputs.into_iter().map(|(_, p)| p).filter(|p| !p.is_empty()));
        }
        Ok(())
    })?;
    // One pass over head: its systems, its roots, the attributes whose metadata alone changed, and
    // nixpkgs' rebuild count (listed attributes whose out paths differ from base's listing, or added).
    let mut systems: BTreeSet<String> = BTreeSet::new();
    let mut roots: BTreeSet<String> = BTreeSet::new();
    let mut meta_only: Vec<String> = Vec::new();
    let mut listed_rebuilds: BTreeMap<String, u64> = BTreeMap::new();
    jobsets.for_each_attr(head, |attr, o| {
        if let AttrOutcome::Drv(d) = o {
            let base_side = base_attrs.get(attr);
            if let Some((drv, meta, _)) = base_side {
                if *drv == d.drv_path && *meta != fingerprint(&d.meta_json) {
                    meta_only.push(attr.to_string());
                }
            }
            if !head_hidden.contains_key(attr)
                && nix_env_lists_name(attr)
                && base_side.and_then(|b| b.2) != Some(fingerprint(&d.outputs))
            {
                *listed_rebuilds.entry(d.system.clone()).or_insert(0) += 1;
            }
            if !systems.contains(&d.system) {
                systems.insert(d.system);
            }
            roots.insert(d.drv_path);
        }
        Ok(())
    })?;
    drop(base_attrs);

    // Classification: fetch both sides of every differing attribute.
    let mut changes = Vec::with_capacity(d.added.len() + d.removed.len() + d.changed.len());
    let mut head_changed: Vec<(String, AttrDrv)> = Vec::with_capacity(d.added.len() + d.changed.len());
    let differing = d.added.iter().chain(d.removed.iter()).chain(d.changed.iter());
    let differing = differing.map(|c| (c.attr.as_str(), c.base_drv.is_some(), c.head_drv.is_some()));
    // Package changes are of the attributes nix-env lists: an alias it does not list on head (on base,
    // for a removed one), and a name it never lists, are left out, as nixpkgs' own tooling leaves them out.
    let differing = differing.filter(|(attr, in_base, in_head)| {
        let hidden = if *in_head {
            head_hidden.contains_key(attr)
        } else {
            *in_base && base_hidden.contains_key(attr)
        };
        !hidden && nix_env_lists_name(attr)
    });
    let meta_only =
        meta_only.iter().filter(|a| !head_hidden.contains_key(a.as_str()) && nix_env_lists_name(a));
    for (attr, in_base, in_head) in differing.chain(meta_only.map(|a| (a.as_str(), true, true))) {
        let b = if in_base { drv_of(jobsets.attr(base, attr)?) } else { None };
        let h = if in_head { drv_of(jobsets.attr(head, attr)?) } else { None };
        if let Some(change) = classify::classify(attr, b.as_ref(), h.as_ref()) {
            // A derivation that changed with the same out paths (a fixed-output one) is no rebuild, and
            // nothing changed in nix-env's listing: not a rebuild-only change either.
            let same_outputs = b.as_ref().zip(h.as_ref()).is_some_and(|(b, h)| b.outputs == h.outputs);
            if !(change.kinds == [PackageChangeKind::RebuildOnly] && same_outputs) {
                changes.push(change);
            }
        }
        if let Some(h) = h {
            if b.as_ref().is_none_or(|b| b.drv_path != h.drv_path) {
                head_changed.push((attr.to_string(), h));
            }
        }
    }
    changes.sort_by(|a, b| a.attr.cmp(&b.attr));
    head_changed.sort_by(|a, b| a.0.cmp(&b.0));
    let counts = KindCounts::of(&changes);
    m.change_summary_duration.with_label_values(&["classify"]).observe(started.elapsed().as_secs_f64());

    let started = Instant::now();
    let rebuilt: Vec<&(String, AttrDrv)> = head_changed
        .iter()
        .filter(|(_, h)| h.outputs.iter().any(|(_, p)| p.is_empty() || !base_outputs.contains(p)))
        .collect();
    drop(base_outputs);

    // Rebuilds are counted in distinct derivations (see docs/change-summary.md, "Rebuild count"): an alias
    // (an attribute whose derivation another rebuilt attribute also has) is counted once, and the seeds of
    // the blast radius are exactly these derivations, so every count below is of the same unit and "must
    // rebuild" (seeds plus dependents) can never be lower than the rebuilds it starts from.
    let mut seeds: BTreeMap<&str, (&str, &str)> = BTreeMap::new(); // drv → (first attr, system)
    for (attr, h) in &rebuilt {
        seeds.entry(h.drv_path.as_str()).or_insert((attr.as_str(), h.system.as_str()));
    }
    let mut per_system_drvs: BTreeMap<&str, u64> = systems.iter().map(|s| (s.as_str(), 0)).collect();
    let mut kernel_drvs: BTreeMap<&'static str, (u64, u64)> =
        impact::KERNELS.iter().map(|k| (*k, (0, 0))).collect();
    for (_, system) in seeds.values() {
        *per_system_drvs.entry(system).or_insert(0) += 1;
        if let Some(k) = impact::kernel_of(system) {
            kernel_drvs.entry(k).or_insert((0, 0)).1 += 1;
        }
    }
    for (system, n) in &listed_rebuilds {
        if let Some(k) = impact::kernel_of(system) {
            kernel_drvs.entry(k).or_insert((0, 0)).0 += n;
        }
    }

    // Blast radius over the head graph.
    let mut must_per_system: BTreeMap<String, u64> = BTreeMap::new();
    let mut top = Vec::new();
    let mut must_rebuild = 0;
    if settings.impact && !seeds.is_empty() {
        let roots: Vec<String> = roots.into_iter().collect();
        let snapshot = impact::Snapshot::from_graph(graph, &roots)?;
        let seed_paths: Vec<&str> = seeds.keys().copied().collect();
        let mut seed_nodes: Vec<Option<u32>> = Vec::with_capacity(seed_paths.len());
        for path in &seed_paths {
            seed_nodes.push(graph.id_of(path)?.and_then(|id| snapshot.index_of(id)));
        }
        // One traversal per system of the seeds (so its time is reported per system); the union is one
        // pass over every seed.
        let mut by_system: BTreeMap<&str, Vec<(&str, u32)>> = BTreeMap::new();
        for (path, node) in seed_paths.iter().zip(&seed_nodes) {
            let (attr, system) = seeds.get(path).copied().unwrap_or(("", ""));
            match node {
                Some(n) => by_system.entry(system).or_default().push((path, *n)),
                None => top.push(BlastRadius {
                    attr: attr.to_string(),
                    drv: path.to_string(),
                    system: system.to_string(),
                    dependents: 0,
                }),
            }
        }
        for (system, group) in &by_system {
            let traversal_started = Instant::now();
            let nodes: Vec<u32> = group.iter().map(|(_, n)| *n).collect();
            let radii = impact::blast_radii(&snapshot.csr, &nodes);
            m.rebuild_impact_traversal_duration
                .with_label_values(&[crate::metrics::system_label(system)])
                .observe(traversal_started.elapsed().as_secs_f64());
            for ((path, _), dependents) in group.iter().zip(radii) {
                let attr = seeds.get(path).map(|s| s.0).unwrap_or("");
                top.push(BlastRadius {
                    attr: attr.to_string(),
                    drv: path.to_string(),
                    system: system.to_string(),
                    dependents,
                });
            }
        }
        let present: Vec<u32> = seed_nodes.iter().flatten().copied().collect();
        let union = impact::union(&snapshot.csr, &present);
        top.sort_by(|a, b| b.dependents.cmp(&a.dependents).then_with(|| a.attr.cmp(&b.attr)));
        if !settings.full_blast_radius {
            top.truncate(settings.max_top_blast_radius);
        }
        for (i, reached) in union.iter().enumerate() {
            if *reached {
                must_rebuild += 1;
                let system = snapshot.system_of(i).to_string();
                *must_per_system.entry(system).or_insert(0) += 1;
            }
        }
        // Seeds outside the graph (not discovered) still rebuild themselves.
        for (path, node) in seed_paths.iter().zip(&seed_nodes) {
            if node.is_none() {
                must_rebuild += 1;
                let system = seeds.get(path).map(|s| s.1).unwrap_or("").to_string();
                *must_per_system.entry(system).or_insert(0) += 1;
            }
        }
    }
    let per_system = per_system_drvs
        .iter()
        .map(|(system, drvs)| {
            let n = listed_rebuilds.get(*system).copied().unwrap_or(0);
            SystemRebuilds {
                system: system.to_string(),
                rebuilds: n,
                bucket: Bucket::of(n),
                rebuilt_drvs: *drvs,
                must_rebuild: must_per_system.get(*system).copied().unwrap_or(0),
            }
        })
        .collect();
    let per_kernel = kernel_drvs
        .iter()
        .map(|(k, (n, drvs))| KernelRebuilds {
            kernel: k.to_string(),
            rebuilds: *n,
            bucket: Bucket::of(*n),
            rebuilt_drvs: *drvs,
        })
        .collect();
    let impact = RebuildImpact {
        per_system,
        per_kernel,
        blast_radius_computed: settings.impact,
        top,
        rebuilds: listed_rebuilds.values().sum(),
        hidden_aliases: head_aliases.hidden.len() as u64,
        aliases_known,
        changed_drvs: seeds.len() as u64,
        must_rebuild,
    };
    m.change_summary_duration.with_label_values(&["impact"]).observe(started.elapsed().as_secs_f64());

    let eval = match &d.head.state {
        JobsetState::Failed { message } => EvalStatus::Failed { message: message.clone() },
        _ if d.head.errors > 0 => {
            EvalStatus::AttrErrors { count: d.head.errors, allowed: d.head.allow_eval_failures }
        }
        _ => EvalStatus::Ok,
    };
    let mut new_eval_errors: Vec<String> =
        d.errors.iter().filter(|e| e.is_new()).map(|e| e.attr.clone()).collect();
    let mut fixed_eval_errors: Vec<String> =
        d.errors.iter().filter(|e| e.is_fixed()).map(|e| e.attr.clone()).collect();
    new_eval_errors.sort();
    fixed_eval_errors.sort();
    Ok(JobSummary {
        repo: d.head.key.repo.clone(),
        job: d.head.key.job_name().to_string(),
        base_sha: d.base.key.commit.clone(),
        head_sha: d.head.key.commit.clone(),
        eval,
        new_eval_errors,
        fixed_eval_errors,
        changes,
        counts,
        impact,
        computed_at: now_secs(),
        settings: settings.clone(),
    })
}

/// A fingerprint of an attribute's meta text or outputs (equal values, equal fingerprints).
fn fingerprint<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn drv_of(o: Option<AttrOutcome>) -> Option<AttrDrv> {
    match o {
        Some(AttrOutcome::Drv(d)) => Some(d),
        _ => None,
    }
}

/// Blocking. Read-through lookup for the HTTP API: every job summary of commit `head_sha` (only against
/// `base_sha` and only `job` when given): the cached ones, and — when `base_sha` is given and finished
/// jobsets of both commits exist for the same repository and job — computed ones. `None` when there is
/// nothing to show.
pub fn for_commit(
    store: &Store,
    jobsets: &Jobsets,
    graph: &Graph,
    head_sha: &str,
    base_sha: Option<&str>,
    job: Option<&str>,
    settings: &Settings,
) -> Result<Option<ChangeSummary>, SummaryError> {
    lookup_commit(store, Some((jobsets, graph, settings)), head_sha, base_sha, job)
}

/// Blocking. [`for_commit`] without computing anything: only the cached job summaries (what the HTTP
/// API serves to a caller without a token, so that such a request never starts expensive work).
pub fn cached_for_commit(
    store: &Store,
    head_sha: &str,
    base_sha: Option<&str>,
    job: Option<&str>,
) -> Result<Option<ChangeSummary>, SummaryError> {
    lookup_commit(store, None, head_sha, base_sha, job)
}

/// The cached summaries of `head_sha`, plus, with `compute`, those computed from stored jobsets.
fn lookup_commit(
    store: &Store,
    compute: Option<(&Jobsets, &Graph, &Settings)>,
    head_sha: &str,
    base_sha: Option<&str>,
    job: Option<&str>,
) -> Result<Option<ChangeSummary>, SummaryError> {
    let mut found: BTreeMap<(String, String, String), JobSummary> = BTreeMap::new();
    for s in cache::for_head(store, head_sha)? {
        if base_sha.is_some_and(|b| b != s.base_sha) || job.is_some_and(|j| j != s.job) {
            continue;
        }
        found.insert((s.repo.clone(), s.job.clone(), s.base_sha.clone()), s);
    }
    if let (Some(base_sha), Some((jobsets, graph, settings))) = (base_sha, compute) {
        for key in jobset_keys_of_commit(store, head_sha)? {
            if job.is_some_and(|j| j != key.job_name()) {
                continue;
            }
            let slot = (key.repo.clone(), key.job_name().to_string(), base_sha.to_string());
            if found.contains_key(&slot) {
                continue;
            }
            let base_key =
                JobsetKey { repo: key.repo.clone(), commit: base_sha.to_string(), job: key.job.clone() };
            let (Some(h), Some(b)) = (jobsets.find(&key)?, jobsets.find(&base_key)?) else { continue };
            if h.state == JobsetState::Evaluating || b.state == JobsetState::Evaluating {
                continue;
            }
            let s = summarize_job(store, jobsets, graph, b.id, h.id, settings)?;
            found.insert(slot, s);
        }
    }
    let Some(repo) = found.keys().next().map(|k| k.0.clone()) else { return Ok(None) };
    let jobs: Vec<JobSummary> = found.into_iter().filter(|(k, _)| k.0 == repo).map(|(_, s)| s).collect();
    let base = match base_sha {
        Some(b) => b.to_string(),
        None => jobs.first().map(|s| s.base_sha.clone()).unwrap_or_default(),
    };
    let mut summary =
        ChangeSummary { repo, base_sha: base, head_sha: head_sha.to_string(), jobs, sizes: Vec::new() };
    sizes::attach(store, &mut summary)?;
    Ok(Some(summary))
}

/// Every jobset key whose commit is `commit` (a scan of `jobset_keys`, which has one row per evaluation).
fn jobset_keys_of_commit(store: &Store, commit: &str) -> Result<Vec<JobsetKey>, StoreError> {
    use redb::ReadableTable;
    let tx = store.db().begin_read()?;
    let table = tx.open_table(crate::store::schema::JOBSET_KEYS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, _) = entry?;
        let mut parts = k.value().splitn(3, '\u{0}');
        if let (Some(repo), Some(c), Some(job)) = (parts.next(), parts.next(), parts.next()) {
            if c == commit {
                out.push(JobsetKey { repo: repo.to_string(), commit: c.to_string(), job: job.to_string() });
            }
        }
    }
    Ok(out)
}

/// The background pruning service the daemon spawns: removes cached summaries older than `max_age` every
/// `interval` (the first time right away) until `shutdown` is closed or receives a message.
pub async fn prune_loop(
    store: Store,
    max_age: Duration,
    interval: Duration,
    shutdown: async_channel::Receiver<()>,
) {
    loop {
        let s = store.clone();
        let max_age_secs = max_age.as_secs();
        match smol::unblock(move || cache::prune(&s, max_age_secs)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned old change summaries"),
            Err(e) => tracing::warn!(error = %e, "pruning change summaries failed"),
        }
        if crate::supervise::sleep_or_shutdown(interval, &shutdown).await {
            return;
        }
    }
}
