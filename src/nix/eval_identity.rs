//! The identity step after an evaluation: which derivation attributes `nix-env -qa` does not list because
//! their value is the very attribute set of a derivation it listed before (an alias such as `foo = bar;`).
//!
//! `nix-env` walks a job depth-first, the names of each level in byte order, and skips a derivation whose
//! attribute set (the `Bindings` in memory) it has listed already (Nix's `get-drvs.cc`). Two attributes
//! can only be the same set when they evaluate to the same `.drv`, so the caller groups a finished job's
//! records by `.drv` path and [`find_hidden`] examines the groups of two or more attributes.
//!
//! The Nix language cannot tell the same set from an equal one in every case (`==` compares contents,
//! and a copy such as nixpkgs' `dontDistribute (dontDistribute drv)` has equal contents and equal
//! attribute positions), so the step asks nix-env itself: one `nix-env -qaP` per share of groups lists
//! [`IDENTITY_WRAPPER`], which imports the job exactly as the built-in evaluator does (restricted
//! evaluation, the same arguments) and puts each group's attributes, in nix-env's order, into a set of its
//! own. Selecting an attribute copies the value, whose attribute set stays the same object, so nix-env
//! lists a member unless it is the set of a member listed before: the test it makes on the whole job. Only
//! names are queried (no `.drv` is computed). A share whose process fails as a whole (an evaluation error
//! nix-env does not skip, the memory cap) is split in halves and retried; a single group that still fails
//! is **undecided**: all its attributes count as listed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::nix::eval::{
    add_restriction_args, attr_display, attr_split, check_source, nix_error_message, prepare_roots_dir,
    EvalError, EvalOptions, EvalSource, Target,
};
use crate::nix::process::{run_captured, RunLimits, Termination};

/// The Nix side, a file `nix-env -qaP` lists (with `--argstr ekaCiRequest <request.json>`): imports the
/// job like the built-in evaluator's wrapper, then makes one set per group (`g00000000`, …, marked
/// `recurseForDerivations`) whose attributes `m00000000`, … are the group's attributes in nix-env's
/// order, as values of the job (the very attribute sets: selecting an attribute copies the value, not
/// the set). nix-env lists a member unless it is the set of one listed before, the same test it makes when
/// it lists the job. A member whose name fails to evaluate is `null` (never listed, never hidden).
pub const IDENTITY_WRAPPER: &str = concat!(
    job_wrapper_prelude!(),
    r#"  pad = i: let s = toString i; in builtins.substring 0 (8 - builtins.stringLength s) "00000000" + s;
  member = p: let v = get p; in if (builtins.tryEval (v.name or null)).success then v else null;
  numbered = prefix: f: l:
    builtins.listToAttrs (builtins.genList (i: { name = prefix + pad i; value = f (builtins.elemAt l i); })
      (builtins.length l));
  group = paths: numbered "m" member paths // { recurseForDerivations = true; };
in numbered "g" group r.groups
"#
);

/// The Nix program of the step.
const NIX_ENV: &str = "nix-env";

/// Groups per process at most (a share is split further only when its process fails).
const SHARE: usize = 2000;

/// What the identity step found for one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Attributes nix-env does not list, each with the first attribute of its `.drv` that nix-env lists
    /// (before it in nix-env's order); sorted by attribute.
    pub hidden: Vec<(String, String)>,
    /// Groups (attributes sharing a `.drv`) examined.
    pub groups: u64,
    /// Groups whose process failed even alone: every attribute of them counts as listed. Their first
    /// attributes, sorted.
    pub undecided: Vec<String>,
}

/// nix-env's order of two attribute paths: depth-first, the names of each level in byte order (so `a.b`
/// comes before `a-c`).
pub fn nix_env_order(a: &[String], b: &[String]) -> std::cmp::Ordering {
    a.iter().map(|s| s.as_bytes()).cmp(b.iter().map(|s| s.as_bytes()))
}

/// Finds the attributes nix-env does not list among `groups` (attribute names as stored, each group the
/// attributes of one `.drv`; groups of one are ignored). See the module documentation.
pub async fn find_hidden(
    checkout: &Path,
    source: &EvalSource,
    opts: &EvalOptions,
    groups: Vec<Vec<String>>,
) -> Result<Identity, EvalError> {
    let mut groups: Vec<Vec<Vec<String>>> = groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|g| {
            let mut paths: Vec<Vec<String>> = g.iter().map(|a| attr_split(a)).collect();
            paths.sort_by(|a, b| nix_env_order(a, b));
            paths
        })
        .collect();
    groups.sort();
    let mut identity = Identity { groups: groups.len() as u64, ..Identity::default() };
    if groups.is_empty() {
        return Ok(identity);
    }
    let (checkout, target) = check_source(checkout, source, opts).await?;
    let attr_path = match source {
        EvalSource::File { attr_path, .. } | EvalSource::Flake { attr_path } => attr_path.clone(),
    };
    // The request files go to a directory of the job's GC roots directory (restricted evaluation must be
    // allowed to read them), removed when the step ends (or with the roots directory).
    let dir = prepare_roots_dir(&opts.gc_roots_dir.join("identity-requests")).await?;
    let step = Step { checkout, target, attr_path, opts, dir: &dir, seq: std::cell::Cell::new(0) };
    let workers = opts.workers.max(1);
    let per_share = groups.len().div_ceil(workers).clamp(1, SHARE);
    let stack = std::cell::RefCell::new(groups.chunks(per_share).map(<[_]>::to_vec).collect::<Vec<_>>());
    let found = std::cell::RefCell::new(Vec::new());
    let undecided = std::cell::RefCell::new(Vec::new());
    let worker = || async {
        loop {
            let Some(share) = stack.borrow_mut().pop() else { return Ok::<(), EvalError>(()) };
            match step.run(&share).await? {
                Ok(answers) => found.borrow_mut().extend(share.into_iter().zip(answers)),
                Err(message) if share.len() > 1 => {
                    tracing::debug!(groups = share.len(), %message, "identity step failed; splitting its share");
                    let mut share = share;
                    let rest = share.split_off(share.len() / 2);
                    let mut stack = stack.borrow_mut();
                    stack.push(share);
                    stack.push(rest);
                }
                Err(message) => {
                    let first = share.first().and_then(|g| g.first()).map(|p| attr_display(p));
                    tracing::warn!(attr = ?first, %message, "identity step cannot decide a group of aliases; all are counted as listed");
                    undecided.borrow_mut().extend(first);
                }
            }
        }
    };
    let workers: Vec<_> = (0..workers).map(|_| Box::pin(worker())).collect();
    let results = join_all(workers).await;
    let removed = dir.clone();
    if let Err(e) = smol::unblock(move || std::fs::remove_dir_all(removed)).await {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove the identity step's request directory");
    }
    for result in results {
        result?;
    }
    for (paths, answer) in found.into_inner() {
        for (i, earlier) in answer.iter().enumerate() {
            let (Some(path), Ok(j)) = (paths.get(i), usize::try_from(*earlier)) else { continue };
            if let Some(listed) = paths.get(j).filter(|_| j < i) {
                identity.hidden.push((attr_display(path), attr_display(listed)));
            }
        }
    }
    identity.hidden.sort();
    identity.undecided = undecided.into_inner();
    identity.undecided.sort();
    Ok(identity)
}

/// Runs every future to completion, concurrently; their results in order.
async fn join_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

struct Step<'a> {
    checkout: PathBuf,
    target: Target,
    attr_path: Vec<String>,
    opts: &'a EvalOptions,
    dir: &'a Path,
    seq: std::cell::Cell<u64>,
}

impl Step<'_> {
    /// One process over `share`: its answers, or why the process failed as a whole.
    async fn run(&self, share: &[Vec<Vec<String>>]) -> Result<Result<Vec<Vec<i64>>, String>, EvalError> {
        let (kind, file, flake) = match &self.target {
            Target::File(f) => ("file", f.to_string_lossy().into_owned(), String::new()),
            Target::Flake(r) => ("flake", String::new(), r.clone()),
        };
        let request = serde_json::json!({
            "kind": kind, "file": file, "ref": flake, "attrPath": self.attr_path, "groups": share,
        });
        self.seq.set(self.seq.get() + 1);
        let path = self.dir.join(format!("identity-{}.json", self.seq.get()));
        let wrapper = self.dir.join("identity.nix");
        let (written, wrapper_written) = (path.clone(), wrapper.clone());
        let bytes = request.to_string().into_bytes();
        smol::unblock(move || {
            std::fs::write(&wrapper_written, IDENTITY_WRAPPER).map_err(|e| (wrapper_written, e))?;
            std::fs::write(&written, bytes).map_err(|e| (written, e))
        })
        .await
        .map_err(|(path, source)| EvalError::Io { action: "write", path, source })?;
        let mut cmd = std::process::Command::new(NIX_ENV);
        cmd.current_dir(&self.checkout);
        cmd.arg("-f").arg(&wrapper).args(["-qaP", "--no-name"]);
        if matches!(self.target, Target::Flake(_)) {
            cmd.args(["--extra-experimental-features", "nix-command flakes"]);
        }
        add_restriction_args(&mut cmd, self.opts, &[&self.checkout, self.dir]);
        cmd.arg("--argstr").arg("ekaCiRequest").arg(&path);
        let limits = RunLimits {
            memory_limit_bytes: (self.opts.max_memory_mib > 0)
                .then(|| self.opts.max_memory_mib.saturating_mul(1 << 20)),
            timeout: Some(self.opts.timeout),
            poll_interval: Duration::from_millis(50),
            stdout_limit: 64 << 20,
            stderr_tail: 64 << 10,
        };
        let result = run_captured(cmd, &limits).await;
        let _ = smol::unblock(move || std::fs::remove_file(path)).await;
        let out = result?;
        match out.termination {
            Termination::Exited(status) if status.success() => {}
            Termination::Exited(_) => return Ok(Err(nix_error_message(&out.stderr))),
            other => return Ok(Err(format!("{other:?}"))),
        }
        let mut listed: Vec<Vec<bool>> = share.iter().map(|g| vec![false; g.len()]).collect();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let parsed = line
                .trim()
                .strip_prefix('g')
                .and_then(|l| l.split_once(".m"))
                .and_then(|(g, m)| Some((g.parse::<usize>().ok()?, m.parse::<usize>().ok()?)));
            let slot = parsed.and_then(|(g, m)| listed.get_mut(g)?.get_mut(m));
            let Some(slot) = slot else {
                return Err(EvalError::Protocol {
                    program: NIX_ENV.to_string(),
                    detail: format!("the identity step listed an attribute it was not given: {line:?}"),
                });
            };
            *slot = true;
        }
        // Per member: -1 when listed, else the index of the first listed member (same .drv, earlier).
        let answers = listed
            .iter()
            .map(|g| {
                let first = g.iter().position(|l| *l).map_or(-1, |i| i as i64);
                g.iter()
                    .enumerate()
                    .map(|(i, l)| if *l || first < 0 || first as usize > i { -1 } else { first })
                    .collect()
            })
            .collect();
        Ok(Ok(answers))
    }
}

/// Whether nix-env lists an attribute of this name at all: it skips every name (at any level) that does
/// not match `[A-Za-z_][A-Za-z0-9_+-]*` (`get-drvs.cc`), such as `rubyPackages."http_parser.rb"`. `attr` is
/// an attribute path as stored (see `nix::eval::attr_display`).
pub fn nix_env_lists_name(attr: &str) -> bool {
    attr_split(attr).iter().all(|name| {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-'))
    })
}

/// Reads the output of `nix-env -qaP --out-path` (attribute, name, out paths per line): attribute → its out
/// paths column. nixpkgs' rebuild count is the head attributes whose column differs from base's, or that
/// base lacks; the benchmark and the tests compare the summary's count with it.
pub fn parse_nix_env_out_paths(stdout: &str) -> std::collections::BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let attr = words.next()?.to_string();
            Some((attr, words.last()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nix_env_lists_only_plain_names() {
        // "": the job itself is one derivation, which nix-env lists.
        for listed in ["", "a", "_x", "A9_", "a+b", "a-b", "pkgs.gtk+3", "a.b-c"] {
            assert!(nix_env_lists_name(listed), "{listed}");
        }
        for skipped in ["1a", "a'b", "a:b", "a@b", "rubyPackages.\"http_parser.rb\"", "x.1y"] {
            assert!(!nix_env_lists_name(skipped), "{skipped}");
        }
    }

    #[test]
    fn nix_env_order_is_depth_first_in_byte_order() {
        let mut paths = vec![p(&["a-c"]), p(&["a", "b"]), p(&["B"]), p(&["a"]), p(&["a", "a"])];
        paths.sort_by(|a, b| nix_env_order(a, b));
        assert_eq!(paths, vec![p(&["B"]), p(&["a"]), p(&["a", "a"]), p(&["a", "b"]), p(&["a-c"])]);
    }
}
