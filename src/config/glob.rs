//! Repository and branch permissions of a `[[github_apps]]` or `[[caches]]` entry, and the small glob
//! language their `allowed_repos` / `allowed_branches` lists are written in.
//!
//! Glob syntax (matching is case-sensitive and always covers the whole name):
//!
//! * `*` matches any run of characters **within one path segment**: it never matches `/`. So
//!   `release/*` matches `release/v1` but neither `release-x` nor `release/a/b`, and `myorg/*` matches
//!   `myorg/repo` but not `other/repo`.
//! * `**` matches any run of characters, `/` included (`release/**` matches `release/a/b`).
//! * `?` matches exactly one character other than `/`.
//! * A pattern that is exactly `*` matches every name, `/` included (the documented "match all").
//! * Every other character matches itself; a pattern without `*` or `?` is an exact match.
//!
//! These globs are deliberately not the change-set globs of the repository configuration
//! (`config/repo/change_sets.rs`): those match repository *paths* segment by segment, with `**` only
//! as a whole segment, a trailing `/` for directories and a pattern matching a directory matching
//! everything below it. Permission globs match whole *names* (`owner/repo`, branch names) and grant
//! access, so a name must match completely: under a directory-prefix rule the branch pattern
//! `release` would also allow `release/anything`.

use serde::Deserialize;

/// Who may use a GitHub App or a cache. The default allows everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Permissions {
    /// When true (the default), `allowed_repos` and `allowed_branches` are ignored and everything is allowed.
    pub allow_all: bool,
    /// Globs over `owner/repo`. With `allow_all = false`, an empty list allows no repository.
    pub allowed_repos: Vec<String>,
    /// Globs over branch names. An empty list allows every branch of an allowed repository.
    pub allowed_branches: Vec<String>,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions { allow_all: true, allowed_repos: Vec::new(), allowed_branches: Vec::new() }
    }
}

impl Permissions {
    /// Whether `repo` (`owner/name`) may use the entry, on `branch` when one is known.
    ///
    /// With `allow_all` this is always true. Otherwise `repo` must match one of `allowed_repos`; then, if
    /// `allowed_branches` is non-empty, `branch` must be given and match one of them (an event without a
    /// branch is refused by a branch restriction rather than let through).
    pub fn allows(&self, repo: &str, branch: Option<&str>) -> bool {
        if self.allow_all {
            return true;
        }
        if !self.allowed_repos.iter().any(|p| glob_match(p, repo)) {
            return false;
        }
        if self.allowed_branches.is_empty() {
            return true;
        }
        match branch {
            Some(b) => self.allowed_branches.iter().any(|p| glob_match(p, b)),
            None => false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: one character, not `/`.
    One,
    /// `*`: any run of characters without `/`.
    Segment,
    /// `**`: any run of characters.
    Any,
}

fn tokenize(pattern: &str) -> Vec<Tok> {
    let mut toks = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                let mut double = false;
                while chars.peek() == Some(&'*') {
                    chars.next();
                    double = true;
                }
                toks.push(if double { Tok::Any } else { Tok::Segment });
            }
            '?' => toks.push(Tok::One),
            c => toks.push(Tok::Lit(c)),
        }
    }
    toks
}

/// Whether `name` matches `pattern` in the syntax described in the module documentation.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let toks = tokenize(pattern);
    let text: Vec<char> = name.chars().collect();
    // reach[j]: the tokens consumed so far can match exactly text[..j].
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for tok in toks {
        let mut next = vec![false; text.len() + 1];
        match tok {
            Tok::Lit(c) => {
                for j in 0..text.len() {
                    next[j + 1] = reach[j] && text[j] == c;
                }
            }
            Tok::One => {
                for j in 0..text.len() {
                    next[j + 1] = reach[j] && text[j] != '/';
                }
            }
            Tok::Segment => {
                next[0] = reach[0];
                for j in 0..text.len() {
                    next[j + 1] = reach[j + 1] || (next[j] && text[j] != '/');
                }
            }
            Tok::Any => {
                next[0] = reach[0];
                for j in 0..text.len() {
                    next[j + 1] = reach[j + 1] || next[j];
                }
            }
        }
        reach = next;
    }
    reach[text.len()]
}

/// Whether `pattern` uses any glob character (otherwise it is an exact name).
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_within_a_segment() {
        assert!(glob_match("release/*", "release/v1.0"));
        assert!(!glob_match("release/*", "release-x"));
        assert!(!glob_match("release/*", "release/a/b"));
        assert!(glob_match("release/**", "release/a/b"));
        assert!(glob_match("*/staging", "team/staging"));
        assert!(!glob_match("*/staging", "a/b/staging"));
        assert!(glob_match("company/production-*", "company/production-api"));
        assert!(!glob_match("company/production-*", "company/staging-api"));
    }

    #[test]
    fn star_alone_question_mark_and_exact() {
        assert!(glob_match("*", "feature/x"));
        assert!(glob_match("*", ""));
        assert!(glob_match("v?", "v1"));
        assert!(!glob_match("v?", "v10"));
        assert!(!glob_match("a?b", "a/b"));
        assert!(glob_match("main", "main"));
        assert!(!glob_match("main", "main2"));
        assert!(!glob_match("main", "Main"));
        assert!(!is_glob("main") && is_glob("r*") && is_glob("v?"));
    }

    #[test]
    fn star_backtracks() {
        assert!(glob_match("*a*b", "xxaxxab"));
        assert!(!glob_match("*a*b", "xxaxxa"));
        assert!(glob_match("a**", "a"));
    }
}
