//! Tidiness checks over the source tree: every source file says its job in an opening doc comment,
//! docs/ARCHITECTURE.md's code map names every source file and no file that does not exist, and no
//! document or comment points at a document that does not exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to `dir`, with `/` separators, sorted.
fn rust_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(dir).expect("under dir");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_source_file_opens_with_a_doc_comment() {
    let mut missing = Vec::new();
    for dir in ["src", "tests/it", "examples"] {
        for rel in rust_files(&root().join(dir)) {
            let text = std::fs::read_to_string(root().join(dir).join(&rel)).expect("read");
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            if !first.starts_with("//!") {
                missing.push(format!("{dir}/{rel}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` comment saying their job: {missing:#?}"
    );
}

/// The backticked tokens of `text` (`` `like/this.rs` ``).
fn backticked(text: &str) -> BTreeSet<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn the_code_map_names_every_source_file_and_only_real_ones() {
    let arch = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let named = backticked(&arch);
    let files = rust_files(&root().join("src"));
    let mut unmapped = Vec::new();
    for rel in &files {
        // `dir/mod.rs` may be named as `dir/`.
        let dir_form = rel.strip_suffix("mod.rs").filter(|d| !d.is_empty());
        if !named.contains(rel.as_str()) && !dir_form.is_some_and(|d| named.contains(d)) {
            unmapped.push(rel.clone());
        }
    }
    assert!(unmapped.is_empty(), "docs/ARCHITECTURE.md's code map does not name: {unmapped:#?}");

    // Every source path the map names exists (relative to src/).
    let mut stale = Vec::new();
    for token in &named {
        let looks_like_src = (token.ends_with(".rs") || token.ends_with('/'))
            && !token.contains(' ')
            && *token != "src/"
            && !token.starts_with("docs/")
            && !token.starts_with("tests/")
            && !token.starts_with("migrations-free-schema/")
            && !token.contains("<")
            && !token.starts_with('/');
        if looks_like_src && !root().join("src").join(token).exists() {
            stale.push(token.to_string());
        }
    }
    assert!(stale.is_empty(), "docs/ARCHITECTURE.md names source paths that do not exist: {stale:#?}");
}

#[test]
fn every_referenced_document_exists() {
    let mut texts: Vec<(String, String)> = Vec::new();
    for rel in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(root().join("src").join(&rel)).expect("read");
        texts.push((format!("src/{rel}"), text));
    }
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.push(root().join("README.md"));
    for path in docs {
        let text = std::fs::read_to_string(&path).expect("read");
        texts.push((path.strip_prefix(root()).expect("in repo").display().to_string(), text));
    }
    let mut dangling = Vec::new();
    for (file, text) in &texts {
        for (at, _) in text.match_indices("docs/") {
            // Only references written as a path, not the tail of a longer path or URL.
            if at > 0 && text.as_bytes()[at - 1].is_ascii_alphanumeric() {
                continue;
            }
            let tail = &text[at..];
            let end =
                tail.find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c))).unwrap_or(tail.len());
            let reference = tail[..end].trim_end_matches('.');
            if reference.ends_with(".md") && !root().join(reference).exists() {
                dangling.push(format!("{file}: {reference}"));
            }
        }
    }
    assert!(dangling.is_empty(), "references to documents that do not exist: {dangling:#?}");
}
