//! The integration tests, in one binary: each module is one area (the file names say which), all sharing
//! one link of the crate and its dependencies. Twenty binaries each linking every dependency cost most of
//! CI's build time and disk (docs/benchmarks.md, "The test build on disk").
//!
//! `common` starts a real `eka-ci-server` in a private home and talks to it over its real socket and HTTP
//! port; `fake_github` is a loopback GitHub (REST: App, installation, check-run, pull request, merge, reaction
//! and issue-comment endpoints; git over HTTPS).

mod common;
mod fake_cloud;
mod fake_github;

mod api_auth;
mod approvals;
mod auto_merge;
mod cache_push;
mod checkout;
mod checks;
mod cli_eval;
mod cli_review;
mod config;
mod crash_recovery;
mod credentials;
mod daemon;
mod drv_parser;
mod eval;
mod eval_sharing;
mod eval_walk;
mod github_app;
mod github_client;
mod github_webhook;
mod graph;
mod host_trouble;
mod http_api;
mod http_api_summary;
mod http_limits;
mod jobset;
mod merge_commands;
mod nix_build;
mod nixenv_count;
mod nixos_module;
mod pr_trust;
mod rebuild_policy;
mod remote_builders;
mod repo_config;
mod retention;
mod review_no_build;
mod review_reuse;
mod scheduler;
mod sealed_eval;
mod size_check;
mod soak;
mod store;
mod summary;
mod supervise;
mod tidy;
mod ui;
mod ws;
