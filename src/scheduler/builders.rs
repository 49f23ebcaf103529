//! The builder pool: which machines can build what, and which one a derivation should go to.
//!
//! Three kinds of builder: the pool for fixed-output derivations (downloads; built locally with their own
//! `max_jobs`, default 10), the local machine (systems and `system-features` from `nix show-config` or the
//! configuration, `max_jobs` default = cores), and remote builders (`[[remote_builders]]` of the server
//! configuration, or a Nix machines file in the standard format, parsed by [`parse_machines`]).
//!
//! Routing follows Nix's rules: a builder takes a derivation when it offers the derivation's system, it
//! supports every required feature (its mandatory features count as supported), and the derivation requires
//! every one of the builder's mandatory features. Fixed-output derivations go to the fixed-output pool when it
//! can take them. `preferLocalBuild` derivations go only to the local machine when it can take them. Other
//! derivations may go to any builder that can take them, faster ones (higher `speed_factor`) first. A
//! derivation no builder can take gets a reason naming what it requires.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::RemoteBuilderConfig;

/// What kind of machine a builder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuilderKind {
    /// The local machine, for everything but fixed-output derivations.
    Local,
    /// The local machine, for fixed-output derivations (their own slots: they mostly wait on the network).
    FixedOutput,
    /// A remote machine Nix reaches over SSH. `ssh_key` is the path of its private key (never read here);
    /// `host_key` its base64-encoded public host key (the machines file's eighth field).
    Remote { uri: String, ssh_key: Option<PathBuf>, host_key: Option<String> },
}

/// One builder of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderSpec {
    /// `local`, `fixed-output`, or the remote URI; recorded with each attempt.
    pub name: String,
    pub kind: BuilderKind,
    pub systems: Vec<String>,
    /// Builds at once (the `-j` of a batch on this builder; for a remote, its machine entry's max jobs).
    pub max_jobs: u32,
    pub speed_factor: u32,
    pub supported_features: Vec<String>,
    pub mandatory_features: Vec<String>,
}

impl BuilderSpec {
    /// The local machine.
    pub fn local(systems: Vec<String>, features: Vec<String>, max_jobs: u32) -> BuilderSpec {
        BuilderSpec {
            name: "local".into(),
            kind: BuilderKind::Local,
            systems,
            max_jobs: max_jobs.max(1),
            speed_factor: 1,
            supported_features: features,
            mandatory_features: Vec::new(),
        }
    }

    /// The fixed-output pool on the local machine.
    pub fn fixed_output(systems: Vec<String>, features: Vec<String>, max_jobs: u32) -> BuilderSpec {
        BuilderSpec {
            name: "fixed-output".into(),
            kind: BuilderKind::FixedOutput,
            ..BuilderSpec::local(systems, features, max_jobs)
        }
    }

    /// A remote builder from `[[remote_builders]]`.
    pub fn remote(c: &RemoteBuilderConfig) -> BuilderSpec {
        BuilderSpec {
            name: c.uri.clone(),
            kind: BuilderKind::Remote {
                uri: c.uri.clone(),
                ssh_key: c.ssh_key.clone(),
                host_key: c.public_host_key.clone(),
            },
            systems: c.systems.clone(),
            max_jobs: c.max_jobs.max(1),
            speed_factor: c.speed_factor.max(1),
            supported_features: c.supported_features.clone(),
            mandatory_features: c.mandatory_features.clone(),
        }
    }

    /// Whether this builder can build a derivation with these requirements (Nix's rules).
    pub fn can_take(&self, system: &str, required: &[String]) -> bool {
        self.systems.iter().any(|s| s == system)
            && required
                .iter()
                .all(|f| self.supported_features.contains(f) || self.mandatory_features.contains(f))
            && self.mandatory_features.iter().all(|f| required.contains(f))
    }

    /// The `--builders` value for a batch on this builder: `None` for the local machine (the runner passes
    /// `''`, so Nix never offloads behind our back, whatever `/etc/nix/machines` says), one machine line for
    /// a remote.
    pub fn nix_builders(&self) -> Option<String> {
        match &self.kind {
            BuilderKind::Local | BuilderKind::FixedOutput => None,
            BuilderKind::Remote { uri, ssh_key, host_key } => Some({
                let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(",") };
                format!(
                    "{uri} {} {} {} {} {} {} {}",
                    list(&self.systems),
                    ssh_key.as_ref().map_or("-".into(), |p| p.display().to_string()),
                    self.max_jobs,
                    self.speed_factor,
                    list(&self.supported_features),
                    list(&self.mandatory_features),
                    host_key.as_deref().unwrap_or("-"),
                )
            }),
        }
    }

    /// Whether this is a remote machine (probed for health; see `scheduler::health`).
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, BuilderKind::Remote { .. })
    }

    /// The `-j` of a batch on this builder: a remote batch builds nothing locally.
    pub fn local_jobs(&self) -> u32 {
        match self.kind {
            BuilderKind::Remote { .. } => 0,
            _ => self.max_jobs,
        }
    }
}

/// What a derivation needs from a builder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirements {
    pub system: String,
    /// Sorted and deduplicated.
    pub features: Vec<String>,
    pub prefer_local: bool,
    pub fixed_output: bool,
}

impl Requirements {
    pub fn new(system: &str, features: &[String], prefer_local: bool, fixed_output: bool) -> Requirements {
        let mut features = features.to_vec();
        features.sort();
        features.dedup();
        Requirements { system: system.to_string(), features, prefer_local, fixed_output }
    }

    /// The reason given when no builder can take such a derivation.
    pub fn no_builder_reason(&self) -> String {
        if self.features.is_empty() {
            format!("requires system {}; no builder offers it", self.system)
        } else {
            format!(
                "requires system {} and features {}; no builder offers them",
                self.system,
                self.features.join(", ")
            )
        }
    }
}

/// The builders, and the routes already computed for each kind of derivation.
#[derive(Debug)]
pub struct BuilderPool {
    builders: Vec<BuilderSpec>,
    routes: HashMap<Requirements, Result<Vec<usize>, String>>,
}

impl BuilderPool {
    /// A pool of `builders`; the order is kept (builder indexes are positions in it).
    pub fn new(builders: Vec<BuilderSpec>) -> BuilderPool {
        BuilderPool { builders, routes: HashMap::new() }
    }

    pub fn builders(&self) -> &[BuilderSpec] {
        &self.builders
    }

    pub fn get(&self, i: usize) -> Option<&BuilderSpec> {
        self.builders.get(i)
    }

    /// The builders that may take a derivation with `req`, most preferred first, or why none can.
    pub fn route(&mut self, req: &Requirements) -> Result<Vec<usize>, String> {
        if let Some(r) = self.routes.get(req) {
            return r.clone();
        }
        let r = compute_route(&self.builders, req);
        self.routes.insert(req.clone(), r.clone());
        r
    }
}

fn compute_route(builders: &[BuilderSpec], req: &Requirements) -> Result<Vec<usize>, String> {
    let able = |kind: &dyn Fn(&BuilderKind) -> bool| -> Vec<usize> {
        builders
            .iter()
            .enumerate()
            .filter(|(_, b)| kind(&b.kind) && b.can_take(&req.system, &req.features))
            .map(|(i, _)| i)
            .collect()
    };
    if req.fixed_output {
        let fod = able(&|k| matches!(k, BuilderKind::FixedOutput));
        if !fod.is_empty() {
            return Ok(fod);
        }
    }
    let local = able(&|k| matches!(k, BuilderKind::Local));
    if req.prefer_local && !local.is_empty() {
        return Ok(local);
    }
    let mut all = able(&|k| !matches!(k, BuilderKind::FixedOutput));
    // Faster builders first; among equals the local machine (no copying), then configuration order.
    all.sort_by_key(|&i| {
        let (speed, remote) =
            builders.get(i).map_or((0, true), |b| (b.speed_factor, !matches!(b.kind, BuilderKind::Local)));
        (std::cmp::Reverse(speed), remote, i)
    });
    if all.is_empty() {
        Err(req.no_builder_reason())
    } else {
        Ok(all)
    }
}

/// A malformed line of a Nix machines file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("machines file line {line}: {message}")]
pub struct MachinesError {
    pub line: usize,
    pub message: String,
}

/// Parses a Nix machines file (`/etc/nix/machines`, the `builders` setting): one machine per line (or per
/// `;`-separated entry), fields separated by whitespace: URI, systems (comma-separated), SSH key, max jobs,
/// speed factor, supported features, mandatory features, public host key. `-` or a missing field means the
/// default; `#` starts a comment. A machine without systems builds for `default_system`.
pub fn parse_machines(text: &str, default_system: &str) -> Result<Vec<BuilderSpec>, MachinesError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        for entry in line.split(';') {
            let fields: Vec<&str> = entry.split_whitespace().collect();
            let Some(&uri) = fields.first() else { continue };
            let field = |i: usize| fields.get(i).copied().filter(|f| *f != "-" && !f.is_empty());
            let list = |i: usize| -> Vec<String> {
                field(i)
                    .map(|f| f.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
                    .unwrap_or_default()
            };
            let number = |i: usize, what: &str| -> Result<u32, MachinesError> {
                match field(i) {
                    None => Ok(1),
                    Some(f) => f.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| MachinesError {
                        line: n + 1,
                        message: format!("{what} of {uri} must be a positive integer, not {f:?}"),
                    }),
                }
            };
            let mut systems = list(1);
            if systems.is_empty() {
                systems.push(default_system.to_string());
            }
            out.push(BuilderSpec {
                name: uri.to_string(),
                kind: BuilderKind::Remote {
                    uri: uri.to_string(),
                    ssh_key: field(2).map(PathBuf::from),
                    host_key: field(7).map(String::from),
                },
                systems,
                max_jobs: number(3, "max jobs")?,
                speed_factor: number(4, "speed factor")?,
                supported_features: list(5),
                mandatory_features: list(6),
            });
        }
    }
    Ok(out)
}

pub use crate::nix::local::{detect_local, parse_show_config, DetectError, LocalNix};

/// The system this binary was built for, in Nix's spelling (`x86_64-linux`), as a fallback.
pub fn native_system() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    format!("{}-{os}", std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn pool() -> BuilderPool {
        let local = BuilderSpec::local(s(&["x86_64-linux"]), s(&["big-parallel"]), 2);
        let fod = BuilderSpec::fixed_output(s(&["x86_64-linux"]), s(&["big-parallel"]), 10);
        let mut remotes = parse_machines(
            "# comment\nssh://fast x86_64-linux,aarch64-linux - 4 3 kvm,big-parallel\n\
             ssh://vm aarch64-linux /k 1 1 kvm kvm ; ssh://slow x86_64-linux",
            "x86_64-linux",
        )
        .expect("parse");
        let mut all = vec![fod, local];
        all.append(&mut remotes);
        BuilderPool::new(all)
    }

    #[test]
    fn machines_file() {
        let m = parse_machines("ssh://a x86_64-linux /key 4 2 kvm,nixos-test big-parallel AAAA", "x")
            .expect("ok");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].max_jobs, 4);
        assert_eq!(m[0].speed_factor, 2);
        assert_eq!(m[0].supported_features, s(&["kvm", "nixos-test"]));
        assert_eq!(m[0].mandatory_features, s(&["big-parallel"]));
        assert_eq!(
            m[0].nix_builders().as_deref(),
            Some("ssh://a x86_64-linux /key 4 2 kvm,nixos-test big-parallel AAAA")
        );
        let err = parse_machines("\n\nssh://b x86_64-linux - zero", "x").expect_err("bad number");
        assert_eq!(err.line, 3);
        assert!(err.to_string().contains("max jobs of ssh://b"), "{err}");
        let d = parse_machines("ssh://c", "riscv64-linux").expect("defaults");
        assert_eq!((d[0].systems.clone(), d[0].max_jobs, d[0].speed_factor), (s(&["riscv64-linux"]), 1, 1));
    }

    #[test]
    fn routing_follows_nix_rules() {
        let mut p = pool();
        // plain x86_64: the faster remote first, then local, then the slow remote
        let r = p.route(&Requirements::new("x86_64-linux", &[], false, false)).expect("route");
        assert_eq!(r, vec![2, 1, 4]);
        // prefer local
        assert_eq!(p.route(&Requirements::new("x86_64-linux", &[], true, false)), Ok(vec![1]));
        // fixed output
        assert_eq!(p.route(&Requirements::new("x86_64-linux", &[], false, true)), Ok(vec![0]));
        // kvm only on remotes; the mandatory-kvm machine takes only kvm derivations of aarch64
        assert_eq!(p.route(&Requirements::new("x86_64-linux", &s(&["kvm"]), false, false)), Ok(vec![2]));
        assert_eq!(p.route(&Requirements::new("aarch64-linux", &s(&["kvm"]), false, false)), Ok(vec![2, 3]));
        assert_eq!(p.route(&Requirements::new("aarch64-linux", &[], false, false)), Ok(vec![2]));
        let e = p.route(&Requirements::new("aarch64-darwin", &s(&["kvm", "apple"]), false, false));
        assert_eq!(
            e,
            Err("requires system aarch64-darwin and features apple, kvm; no builder offers them".into())
        );
    }

    #[test]
    fn show_config() {
        let j = r#"{"system":{"value":"x86_64-linux"},"extra-platforms":{"value":["i686-linux"]},
                   "system-features":{"value":["kvm","benchmark"]}}"#;
        let l = parse_show_config(j).expect("parse");
        assert_eq!(l.systems, s(&["x86_64-linux", "i686-linux"]));
        assert_eq!(l.features, s(&["kvm", "benchmark"]));
        assert!(parse_show_config("{}").is_err());
    }
}
