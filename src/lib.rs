//! eka-ci: a continuous-integration server for Nix repositories.
//!
//! The crate is one library with two thin binaries (`eka-ci-server`, the daemon, and `ekaci`, the admin CLI).
//! Each module owns one boundary; see `docs/ARCHITECTURE.md` for the code map and the invariants.

pub mod cache;
pub mod checkout;
pub mod checks;
pub mod cli;
pub mod config;
pub mod control;
pub mod credentials;
pub mod daemon;
pub mod forge;
pub mod graph;
pub mod jobset;
pub mod live;
pub mod metrics;
pub mod nix;
pub mod paths;
pub mod pipeline;
pub mod retention;
pub mod scheduler;
pub mod secret;
pub mod sizes;
pub mod store;
pub mod summary;
pub mod supervise;
pub mod text;
pub mod time;
pub mod tokens;
pub mod visibility;
pub mod web;

/// The version reported by `ekaci status` and `/healthz`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
