//! The Nix layer: reading derivations, evaluating jobs, and talking to Nix's own commands.
//!
//! This module owns every interaction with Nix; nothing else in the crate spawns a Nix process or reads
//! the store directly.

/// The opening of every Nix wrapper the evaluator runs (`--argstr ekaCiRequest <request.json>`): reads the
/// request (and, for the walk, its random marker `ekaCiNonce`, given on the command line or the repl's
/// input, never in a file the job could read) and imports the job exactly one way (a flake's outputs, or a file called with `{ }` when it is a
/// function), then selects the job's attribute path. Binds `r`, `top`, `root` and `get`; the wrapper
/// continues the `let`.
macro_rules! job_wrapper_prelude {
    () => {
        r#"{ ekaCiRequest, ekaCiNonce ? "" }:
let
  r = builtins.fromJSON (builtins.readFile ekaCiRequest);
  top =
    if r.kind == "flake" then (builtins.getFlake r.ref).outputs
    else
      let raw = import (/. + r.file);
      in if builtins.isFunction raw then raw { } else raw;
  root = builtins.foldl' (v: n: v.${n}) top r.attrPath;
  get = path: builtins.foldl' (v: n: v.${n}) root path;
"#
    };
}

pub mod build;
pub mod drv;
pub mod eval;
pub mod eval_builtin;
pub(crate) mod eval_explain;
pub mod eval_identity;
pub mod flake;
pub mod local;
pub mod process;
pub mod remote;
pub mod store_path;
