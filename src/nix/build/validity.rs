//! Output validity: which of many store paths are not valid in the store, asked of Nix with one
//! `nix-store --check-validity` per chunk of arguments (never one process per path), and the count of Nix
//! processes this module's callers started. It never builds anything.

use std::cell::Cell;
use std::collections::HashSet;
use std::time::Duration;

use super::{BuildError, MESSAGE_LIMIT};
use crate::nix::process::{run_captured, RunLimits};
use crate::nix::store_path::StorePath;
use crate::text::bounded_output as bounded_text;

/// The program that checks output validity.
const NIX_STORE: &str = "nix-store";
/// The argv bytes of one `nix-store --check-validity` call (ARG_MAX is 2 MiB here, environment included).
const VALIDITY_ARGV_BYTES: usize = 256 << 10;

thread_local! {
    static NIX_SPAWNS: Cell<u64> = const { Cell::new(0) };
}

/// Nix processes this module started on the current thread (the daemon's executor is single-threaded, so
/// in the daemon this is a process-wide count). For tests and diagnostics.
pub fn nix_processes_spawned() -> u64 {
    NIX_SPAWNS.with(|c| c.get())
}

pub(super) fn count_spawn() {
    NIX_SPAWNS.with(|c| c.set(c.get() + 1));
}

/// Groups paths so that each group's argv stays under `max_bytes` (every path counts its length plus a NUL).
fn chunk_paths<'a>(paths: &[&'a str], max_bytes: usize) -> Vec<Vec<&'a str>> {
    let mut chunks: Vec<Vec<&str>> = Vec::new();
    let mut size = 0usize;
    for p in paths {
        let n = p.len() + 1;
        match chunks.last_mut() {
            Some(c) if size + n <= max_bytes => c.push(p),
            _ => {
                chunks.push(vec![p]);
                size = 0;
            }
        }
        size += n;
    }
    chunks
}

/// The paths among `paths` that are not valid in the store: ONE `nix-store --check-validity
/// --print-invalid` per chunk of at most 256 KiB of arguments, never one process per path. Paths must be
/// well-formed store paths (checked first).
pub async fn invalid_outputs(paths: &[String]) -> Result<HashSet<String>, BuildError> {
    let mut unique: Vec<&str> = Vec::with_capacity(paths.len());
    let mut seen = HashSet::new();
    for p in paths {
        StorePath::parse(p).map_err(|reason| BuildError::InvalidStorePath { path: p.clone(), reason })?;
        if seen.insert(p.as_str()) {
            unique.push(p);
        }
    }
    let mut invalid = HashSet::new();
    for chunk in chunk_paths(&unique, VALIDITY_ARGV_BYTES) {
        let mut cmd = std::process::Command::new(NIX_STORE);
        cmd.arg("--check-validity").arg("--print-invalid").args(&chunk);
        let limits = RunLimits { timeout: Some(Duration::from_secs(300)), ..RunLimits::default() };
        count_spawn();
        let out = run_captured(cmd, &limits).await?;
        if !out.termination.success() {
            return Err(BuildError::Validity {
                termination: format!("{:?}", out.termination),
                message: bounded_text(&out.stderr, MESSAGE_LIMIT),
            });
        }
        let wanted: HashSet<&str> = chunk.iter().copied().collect();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if wanted.contains(line) {
                invalid.insert(line.to_string());
            }
        }
    }
    Ok(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_under_the_limit() {
        let paths: Vec<String> = (0..100).map(|i| format!("/nix/store/{i:0>32}-x")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let chunks = chunk_paths(&refs, 500);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 100);
        for c in &chunks {
            assert!(c.iter().map(|p| p.len() + 1).sum::<usize>() <= 500);
        }
        assert_eq!(chunk_paths(&refs, VALIDITY_ARGV_BYTES).len(), 1);
        assert!(chunk_paths(&[], 10).is_empty());
    }
}
