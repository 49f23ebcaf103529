//! The identity step after an evaluation: which derivation attributes `nix-env -qa` does not list because
//! their value is the very attribute set of a derivation it listed before (an alias such as `foo = bar;`).
//!
//! `nix-env` walks a job depth-first, the names of each level in byte order, and skips a derivation whose
//! attribute set (the `Bindings` in memory) it has listed already (Nix's `get-drvs.cc`). Two attributes
//! can only be the same set when they evaluate to the same `.drv`, so the caller groups a finished job's
//! records by `.drv` path and [`find_hidden`] examines the groups of two or more attributes, in one
//! `nix-instantiate` process per share of groups, importing the job exactly as the built-in evaluator does
//! (restricted evaluation, the same argument builders).
//!
//! Identity is observed in the Nix language with `builtins.attrValues`: it puts the very value objects of
//! a set's attributes into a list, and `==` on two lists calls two elements equal at once when they are
//! the same object (after forcing them; functions are otherwise never equal). So `attrValues a ==
//! attrValues b` holds for the same set, and fails for two sets built alike (each `callPackage` makes its
//! own `override` functions) and for `drv // { meta = … }` (a new `meta`, as nixpkgs' `aliases.nix`
//! makes), unless the new `meta` is deeply equal to the old one (a package whose `meta` already had
//! `hydraPlatforms = [ ]`): so the positions where the attributes were defined
//! (`builtins.unsafeGetAttrPos`) must be equal too, and a copy's new attributes were defined elsewhere.
//! Forcing an attribute may fail: the comparison is then made attribute by attribute, each under
//! `builtins.tryEval`, and an attribute that fails on both sides does not decide. What the comparison
//! still calls "the same" wrongly: a copy made at the same place as the original's attributes with deeply
//! equal values (`dontDistribute (dontDistribute drv)`), and two sets built alike by the same code that hold
//! no function (plain `derivation` calls; every nixpkgs package carries `override` functions). A share whose process fails as a whole (an error
//! `tryEval` cannot catch, the memory cap) is split in halves and retried; a single group that still
//! fails is **undecided**: all its attributes count as listed, as before this step existed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::nix::eval::{
    add_restriction_args, attr_display, attr_split, check_source, nix_error_message, EvalError, EvalOptions,
    EvalSource, Target,
};
use crate::nix::process::{run_captured, RunLimits, Termination};

/// The Nix side: imports the job like the built-in evaluator's wrapper, then answers, per group (attribute
/// paths in nix-env's order), for each member the index of the earlier listed member whose attribute set
/// it is, or -1 when it is listed itself.
pub const IDENTITY_WRAPPER: &str = r#"{ ekaCiRequest }:
let
  r = builtins.fromJSON (builtins.readFile ekaCiRequest);
  top =
    if r.kind == "flake" then (builtins.getFlake r.ref).outputs
    else
      let raw = import (/. + r.file);
      in if builtins.isFunction raw then raw { } else raw;
  root = builtins.foldl' (v: n: v.${n}) top r.attrPath;
  get = path: builtins.foldl' (v: n: v.${n}) root path;
  # The value objects of attribute n of s (a one-element list; empty when s lacks n).
  one = n: s: builtins.attrValues (builtins.intersectAttrs { ${n} = null; } s);
  # true / false / null (cannot tell: forcing failed)
  attrSame = a: b: n:
    let t = builtins.tryEval (one n a == one n b); in if t.success then t.value else null;
  quick = [ "override" "overrideAttrs" "overrideDerivation" ];
  # Where each attribute was defined: the same set has the same positions; a copy `s // { meta = …; }`
  # has its new attributes' positions.
  positions = s: names: map (n: builtins.unsafeGetAttrPos n s) names;
  same = a: b:
    let
      names = builtins.attrNames a;
      fns = builtins.filter (n: a ? ${n} && b ? ${n}) quick;
      all = builtins.tryEval (builtins.attrValues a == builtins.attrValues b);
    in
      names == builtins.attrNames b
      && positions a names == positions b names
      && !(builtins.any (n: attrSame a b n == false) fns)
      && (if all.success then all.value else !(builtins.any (n: attrSame a b n == false) names));
  valueOf = p:
    let t = builtins.tryEval (get p);
    in if t.success && builtins.isAttrs t.value then { ok = true; v = t.value; } else { ok = false; };
  group = paths:
    let
      vals = map valueOf paths;
      at = i: builtins.elemAt vals i;
      step = acc: i:
        let
          x = at i;
          hits = if x.ok then builtins.filter (j: same (at j).v x.v) acc.reps else [ ];
        in
          if hits == [ ] then { reps = acc.reps ++ (if x.ok then [ i ] else [ ]); out = acc.out ++ [ (-1) ]; }
          else { reps = acc.reps; out = acc.out ++ [ (builtins.head hits) ]; };
    in (builtins.foldl' step { reps = [ ]; out = [ ]; } (builtins.genList (i: i) (builtins.length paths))).out;
in map group r.groups
"#;

/// The Nix program of the step.
const NIX_INSTANTIATE: &str = "nix-instantiate";

/// Groups per process at most (a share is split further only when its process fails).
const SHARE: usize = 2000;

/// What the identity step found for one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Attributes nix-env does not list, each with the attribute (listed earlier) whose value it is;
    /// sorted by attribute.
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
    let dir = RequestDir::create().await?;
    let step = Step { checkout, target, attr_path, opts, dir: &dir };
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
    for result in join_all(workers).await {
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
    dir: &'a RequestDir,
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
        let path = self.dir.next_path();
        let written = path.clone();
        let bytes = request.to_string().into_bytes();
        smol::unblock(move || std::fs::write(&written, bytes)).await.map_err(|source| EvalError::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
        let mut cmd = std::process::Command::new(NIX_INSTANTIATE);
        cmd.current_dir(&self.checkout);
        cmd.args(["--eval", "--read-write-mode", "--strict", "--json"]);
        if matches!(self.target, Target::Flake(_)) {
            cmd.args(["--extra-experimental-features", "nix-command flakes"]);
        }
        add_restriction_args(&mut cmd, self.opts, &[&self.checkout, &self.dir.path]);
        cmd.arg("--expr").arg(IDENTITY_WRAPPER).arg("--argstr").arg("ekaCiRequest").arg(&path);
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
        let answers: Vec<Vec<i64>> =
            serde_json::from_slice(&out.stdout).map_err(|e| EvalError::Protocol {
                program: NIX_INSTANTIATE.to_string(),
                detail: format!("the identity step's answer is not a list of lists of numbers: {e}"),
            })?;
        if answers.len() != share.len() || answers.iter().zip(share).any(|(a, g)| a.len() != g.len()) {
            return Err(EvalError::Protocol {
                program: NIX_INSTANTIATE.to_string(),
                detail: "the identity step answered for other groups than it was asked".to_string(),
            });
        }
        Ok(Ok(answers))
    }
}

/// A private temporary directory for request files (restricted evaluation must be allowed to read it),
/// removed on drop.
struct RequestDir {
    path: PathBuf,
    seq: std::cell::Cell<u64>,
}

impl RequestDir {
    async fn create() -> Result<RequestDir, EvalError> {
        smol::unblock(|| {
            let base = std::env::temp_dir();
            let mut n = 0u32;
            loop {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let path = base.join(format!("ekaci-identity-{}-{nanos:x}-{n}", std::process::id()));
                match std::fs::create_dir(&path) {
                    Ok(()) => {
                        let path = std::fs::canonicalize(&path).unwrap_or(path);
                        return Ok(RequestDir { path, seq: std::cell::Cell::new(0) });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                    Err(source) => {
                        return Err(EvalError::Io {
                            action: "create a temporary directory in",
                            path: base,
                            source,
                        })
                    }
                }
            }
        })
        .await
    }

    fn next_path(&self) -> PathBuf {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        self.path.join(format!("identity-{n}.json"))
    }
}

impl Drop for RequestDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the identity step's temporary directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nix_env_order_is_depth_first_in_byte_order() {
        let mut paths = vec![p(&["a-c"]), p(&["a", "b"]), p(&["B"]), p(&["a"]), p(&["a", "a"])];
        paths.sort_by(|a, b| nix_env_order(a, b));
        assert_eq!(paths, vec![p(&["B"]), p(&["a"]), p(&["a", "a"]), p(&["a", "b"]), p(&["a-c"])]);
    }
}
