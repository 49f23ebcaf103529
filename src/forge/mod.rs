//! Forges: the code hosts eka-ci receives events from and reports to (GitHub today).
//!
//! Each forge lives in its own submodule; nothing here is shared between forges yet.

pub mod github;
