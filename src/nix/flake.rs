//! Flake jobs' lock files, checked before any evaluation: a pull request controls `flake.nix` and
//! `flake.lock`, and Nix, even under `restrict-eval`, will (a) read a locked `path` input from anywhere on
//! the server's disk and (b) fetch from the network to re-lock an input that `flake.lock` lacks or pins
//! differently than `flake.nix` declares (before refusing to write the lock file).
//!
//! [`check_lock_file`] refuses (a) statically. [`check_locked_offline`] rules out (b): it runs
//! `nix flake metadata --no-update-lock-file` with an empty flake registry in a new network namespace, so
//! that a lock that needs updating fails there, where no connection can leave the host, and the real
//! evaluation never has anything to re-lock. This module never evaluates the flake's outputs.

use std::path::Path;

use super::eval::EvalError;
use super::process::{run_captured, RunLimits};

/// The largest `flake.lock` read (nixpkgs-sized flakes lock a few KiB).
const MAX_FLAKE_LOCK_BYTES: u64 = 4 << 20;

/// Refuses a `flake.lock` that would make Nix read the server's disk. Restricted evaluation already
/// refuses inputs fetched from URIs the operator did not allow (including `git+file:`), but Nix fetches a
/// locked `path` input (one with a `narHash`) from anywhere on the disk even in restricted mode, so every
/// locked input of type `path` must stay inside the checkout, and none may use a `file:` URL. The lock
/// file must be a regular file (not a symlink to something else). Its content is never echoed.
pub(crate) fn check_lock_file(checkout: &Path) -> Result<(), EvalError> {
    use std::io::Read as _;
    let path = checkout.join("flake.lock");
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        // No lock file: Nix may not create one (`getFlake` never writes it), so an input is a clear error.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(EvalError::Io { action: "read", path, source }),
    };
    let problem = |p: &str| EvalError::FlakeLock { problem: p.to_string() };
    if !meta.file_type().is_file() {
        return Err(problem("it is not a regular file (a symlink or a directory)"));
    }
    if meta.len() > MAX_FLAKE_LOCK_BYTES {
        return Err(problem(&format!("it is larger than {} MiB", MAX_FLAKE_LOCK_BYTES >> 20)));
    }
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_FLAKE_LOCK_BYTES).read_to_string(&mut text))
        .map_err(|source| EvalError::Io { action: "read", path: path.clone(), source })?;
    let lock: serde_json::Value = serde_json::from_str(&text).map_err(|e| EvalError::FlakeLock {
        problem: format!("it is not JSON (line {}, column {})", e.line(), e.column()),
    })?;
    let Some(nodes) = lock.get("nodes").and_then(|n| n.as_object()) else {
        return Err(problem("it has no `nodes` object"));
    };
    for (input, node) in nodes {
        let Some(locked) = node.get("locked") else { continue };
        let field = |name: &str| locked.get(name).and_then(|v| v.as_str()).unwrap_or("");
        let local = match field("type") {
            "path" => {
                let p = Path::new(field("path"));
                p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir))
            }
            _ => false,
        };
        let url = field("url");
        if local || url.starts_with("file:") || url.contains("+file:") {
            let shown = if local { field("path") } else { url };
            return Err(EvalError::FlakeLocalInput {
                input: crate::text::bounded_str(input, 100),
                path: crate::text::bounded_str(shown, 300),
            });
        }
    }
    Ok(())
}

/// Checks that the flake at `reference` (the checkout `checkout`) is completely locked, without any
/// network: `nix flake metadata --no-update-lock-file` in a network namespace of its own, with an empty
/// flake registry and the evaluation's restrictions (`opts`). Fails closed:
/// when the namespace cannot be made, the flake is not evaluated.
pub(crate) async fn check_locked_offline(
    reference: &str,
    checkout: &Path,
    opts: &super::eval::EvalOptions,
    timeout: std::time::Duration,
) -> Result<(), EvalError> {
    let registry = super::process::env::empty_flake_registry().map_err(|source| EvalError::Io {
        action: "write",
        path: "flake-registry.json".into(),
        source,
    })?;
    let mut cmd = std::process::Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command flakes", "flake", "metadata", "--json"])
        .arg("--no-update-lock-file")
        .arg("--option")
        .arg("flake-registry")
        .arg(&registry)
        .arg(reference);
    // `flake.nix` is evaluated here too (its `inputs`): under the same restrictions as the real evaluation.
    super::eval::add_restriction_args(&mut cmd, opts, &[checkout]);
    super::process::env::without_network(&mut cmd);
    let limits = RunLimits { timeout: Some(timeout), ..RunLimits::default() };
    let out = run_captured(cmd, &limits).await?;
    if out.termination.success() {
        return Ok(());
    }
    let message = super::eval::nix_error_message(&out.stderr);
    Err(EvalError::FlakeUnlocked { message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flake_locks_that_read_the_servers_disk_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = |nodes: &str| {
            std::fs::write(
                dir.path().join("flake.lock"),
                format!(r#"{{"nodes":{nodes},"root":"root","version":7}}"#),
            )
            .expect("write");
            check_lock_file(dir.path())
        };
        assert!(check_lock_file(dir.path()).is_ok(), "no lock file is fine");
        let fetched = r#"{"root":{"inputs":{"n":"n"}},"n":{"locked":{"type":"github","owner":"NixOS","repo":"nixpkgs","rev":"0000000000000000000000000000000000000000","narHash":"sha256-x"}}}"#;
        assert!(lock(fetched).is_ok());
        assert!(lock(r#"{"root":{},"sub":{"locked":{"type":"path","path":"./sub","narHash":"sha256-x"}}}"#)
            .is_ok());
        let refused = [
            (
                r#"{"evil":{"locked":{"type":"path","path":"/var/lib/eka-ci","narHash":"sha256-x"}}}"#,
                "/var/lib/eka-ci",
            ),
            (r#"{"evil":{"locked":{"type":"path","path":"../outside","narHash":"sha256-x"}}}"#, "../outside"),
            (
                r#"{"evil":{"locked":{"type":"git","url":"file:///srv/other","rev":"00"}}}"#,
                "file:///srv/other",
            ),
            (r#"{"evil":{"locked":{"type":"tarball","url":"git+file:///srv/x"}}}"#, "git+file:///srv/x"),
        ];
        for (nodes, shown) in refused {
            match lock(nodes) {
                Err(EvalError::FlakeLocalInput { input, path }) => {
                    assert_eq!((input.as_str(), path.as_str()), ("evil", shown))
                }
                other => panic!("{nodes}: {other:?}"),
            }
        }
        std::fs::write(dir.path().join("flake.lock"), "SECRET-CONTENT not json").expect("write");
        let err = check_lock_file(dir.path()).expect_err("not JSON").to_string();
        assert!(err.contains("not JSON") && !err.contains("SECRET"), "{err}");
        std::fs::remove_file(dir.path().join("flake.lock")).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("flake.lock")).expect("symlink");
        let err = check_lock_file(dir.path()).expect_err("symlink").to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
