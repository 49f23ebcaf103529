//! GitHub: webhook intake (`webhook`), and the GitHub App's authentication and API client.
//!
//! `webhook` verifies, parses and persists incoming deliveries; it never talks to GitHub.

pub mod app;
pub mod client;
pub mod jwt;
pub mod webhook;
