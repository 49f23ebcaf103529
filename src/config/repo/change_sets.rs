//! Change sets: classifying a diff by the `change_sets` rules, and the path globs they are written in.
//!
//! These globs match *repository paths*, segment by segment: `*` and `?` stay within one segment,
//! `**` is a whole segment matching any number of segments, patterns are anchored at the repository
//! root, a trailing `/` matches directories only, and a pattern matching a directory matches
//! everything below it. They differ on purpose from the permission globs of the server
//! configuration ([`crate::config::glob`]), which match whole repository and branch *names*
//! character by character (`**` may appear inside a segment there, `*` alone matches everything, and
//! there is no directory-prefix rule).

use super::{ChangeClass, ChangeSetKind, ChangeSets};
use crate::text::markdown::is_forbidden_char;

const MAX_GLOB_BYTES: usize = 1024;

impl ChangeSets {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The strongest kind among the rules matching `path` (`full-rebuild` > `no-op` > `docs-only`).
    pub fn kind_of(&self, path: &str) -> Option<ChangeSetKind> {
        let globs = self.compiled();
        strongest(&globs, path)
    }

    /// Classifies a diff given the repository-relative paths it touches (for renames, pass both the
    /// old and the new path). In order of precedence:
    ///
    /// 1. any path matched by a `full-rebuild` rule → [`ChangeClass::FullRebuild`];
    /// 2. a non-empty diff whose every path is matched by a `docs-only` or `no-op` rule →
    ///    [`ChangeClass::NoRebuild`];
    /// 3. anything else, including an empty diff → [`ChangeClass::Normal`].
    pub fn classify(&self, changed_paths: &[&str]) -> ChangeClass {
        if changed_paths.is_empty() || self.rules.is_empty() {
            return ChangeClass::Normal;
        }
        let globs = self.compiled();
        let mut all_covered = true;
        for path in changed_paths {
            match strongest(&globs, path) {
                Some(ChangeSetKind::FullRebuild) => return ChangeClass::FullRebuild,
                Some(_) => {}
                None => all_covered = false,
            }
        }
        if all_covered {
            ChangeClass::NoRebuild
        } else {
            ChangeClass::Normal
        }
    }

    fn compiled(&self) -> Vec<(Glob, ChangeSetKind)> {
        self.rules.iter().map(|r| (Glob::new(&r.pattern), r.kind)).collect()
    }
}

fn strongest(globs: &[(Glob, ChangeSetKind)], path: &str) -> Option<ChangeSetKind> {
    globs.iter().filter(|(g, _)| g.matches(path)).map(|(_, k)| *k).max()
}

/// Whether the change-set glob `pattern` matches the repository-relative `path`: `*` and `?` match
/// within one path segment, `**` matches any number of segments, patterns are anchored at the
/// repository root, and a pattern matching a directory matches everything below it.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    Glob::new(pattern).matches(path)
}

pub(super) fn validate_glob(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("pattern must not be empty".into());
    }
    if pattern.len() > MAX_GLOB_BYTES {
        return Err(format!("pattern must be at most {MAX_GLOB_BYTES} bytes long"));
    }
    if pattern.chars().any(is_forbidden_char) {
        return Err("pattern must not contain control characters".into());
    }
    if pattern.starts_with('!') {
        return Err("negated patterns (\"!\") are not supported".into());
    }
    if pattern.contains(['[', ']', '{', '}', '\\']) {
        return Err(
            "character classes, braces and backslash escapes are not supported; use *, ** and ?".into()
        );
    }
    let mut segments = pattern.split('/').filter(|s| !s.is_empty()).peekable();
    if segments.peek().is_none() {
        return Err("pattern must name at least one path segment".into());
    }
    if segments.any(|s| s == "." || s == "..") {
        return Err("pattern must not contain \".\" or \"..\" segments".into());
    }
    Ok(())
}

enum GlobSegment {
    /// `**`: any number (including zero) of segments.
    Any,
    Pattern(Vec<char>),
}

struct Glob {
    segments: Vec<GlobSegment>,
    /// The pattern ended with `/`: it only matches directories (so only what is below them).
    dir_only: bool,
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        let pattern = pattern.strip_prefix('/').unwrap_or(pattern);
        let dir_only = pattern.ends_with('/');
        let mut segments = Vec::new();
        for part in pattern.split('/').filter(|s| !s.is_empty()) {
            if part == "**" {
                if !matches!(segments.last(), Some(GlobSegment::Any)) {
                    segments.push(GlobSegment::Any);
                }
            } else {
                segments.push(GlobSegment::Pattern(part.chars().collect()));
            }
        }
        Glob { segments, dir_only }
    }

    /// Matches `path` or one of its parent directories against the whole pattern.
    fn matches(&self, path: &str) -> bool {
        let parts: Vec<Vec<char>> =
            path.split('/').filter(|s| !s.is_empty() && *s != ".").map(|s| s.chars().collect()).collect();
        let n = parts.len();
        if n == 0 || self.segments.is_empty() {
            return false;
        }
        // row[j]: the pattern so far matches the first j path segments.
        let mut row = vec![false; n + 1];
        row[0] = true;
        for segment in &self.segments {
            let mut next = vec![false; n + 1];
            for j in 0..=n {
                next[j] = match segment {
                    GlobSegment::Any => row[j] || (j > 0 && next[j - 1]),
                    GlobSegment::Pattern(p) => j > 0 && row[j - 1] && wildcard(p, &parts[j - 1]),
                };
            }
            row = next;
        }
        let last = if self.dir_only { n - 1 } else { n };
        (1..=last).any(|j| row[j])
    }
}

/// `*` (any run of characters) and `?` (one character) within a single segment.
fn wildcard(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
