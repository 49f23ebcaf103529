//! GitHub: webhook intake (`webhook`), and the GitHub App's authentication and API client.
//!
//! `webhook` verifies, parses and persists incoming deliveries; it never talks to GitHub. `service`
//! turns the persisted events into runs (`runs`) and runs into evaluations, builds and check runs.
//! `approvals` stores the administrators' approvals for `require_approval`. `commands` parses the
//! `@eka-ci` comment commands; `merges` stores the pending merge requests they make;
//! `maintainers` says who maintains the packages a pull request changes; `auto_merges` stores the
//! auto-merges enabled through the API.

pub mod app;
pub mod approvals;
pub mod auto_merges;
pub mod client;
pub mod commands;
pub mod jwt;
pub mod maintainers;
pub mod merges;
pub mod runs;
pub mod service;
pub mod webhook;
