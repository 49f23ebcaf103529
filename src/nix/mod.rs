//! The Nix layer: reading derivations, evaluating jobs, and talking to Nix's own commands.
//!
//! This module owns every interaction with Nix; nothing else in the crate spawns a Nix process or reads
//! the store directly.

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
