//! Repository checks (docs/checks.md): a command from the repository's `checks`, run with the tools of a
//! shell derivation in a bubblewrap sandbox. `checks/mod.rs` runs one check once its shell is built:
//! computes the environment from the `.drv` ([`shell_env`]), makes a writable copy of the checkout
//! (without `.git`, symlinks copied as symlinks, never followed), writes the script, runs the sandbox
//! ([`sandbox`]) and keeps the whole output in a file and its tail for the report. Finding and building
//! the shell is the pipeline's part (`pipeline.rs`, `Pipeline::run_checks`). It never evaluates Nix,
//! talks to a forge or opens the database.

pub mod cgroup;
pub mod results;
pub mod sandbox;
pub mod shell_env;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::repo::CheckConfig;

pub use sandbox::{Ending, Limits};

/// How many lines of a check's output its report shows.
pub const TAIL_LINES: usize = 30;
/// How many bytes of the end of the output are kept for the tail.
const TAIL_BYTES: usize = 16 * 1024;

/// What became of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckOutcome {
    /// The command ran in the sandbox.
    Ran { ending: Ending, duration_ms: u64, output_bytes: u64 },
    /// The shell derivation could not be found, evaluated or built; the command did not run.
    NoShell { message: String },
    /// The sandbox could not run (bubblewrap missing, disk full, …): the host's trouble.
    Error { message: String },
}

/// One check's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    /// The check's `shell` attribute, as configured.
    pub shell: String,
    /// The shell derivation, once found.
    pub shell_drv: Option<String>,
    pub outcome: CheckOutcome,
    /// The last [`TAIL_LINES`] lines of the output (ANSI escapes removed, lossy UTF-8).
    pub tail: String,
    /// The file holding the whole output (up to `[checks] max_output_bytes`).
    pub output_file: Option<String>,
}

impl CheckReport {
    /// Whether the check passed: it ran and exited with status 0.
    pub fn passed(&self) -> bool {
        matches!(&self.outcome, CheckOutcome::Ran { ending, .. } if ending.success())
    }

    /// A one-line summary: how it ended.
    pub fn summary(&self) -> String {
        match &self.outcome {
            CheckOutcome::Ran { ending, duration_ms, .. } => {
                format!("{ending} after {:.1} s", *duration_ms as f64 / 1000.0)
            }
            CheckOutcome::NoShell { message } => format!("the shell is not available: {message}"),
            CheckOutcome::Error { message } => format!("the sandbox could not run: {message}"),
        }
    }
}

/// Why a check could not be run (the report says so; see [`CheckOutcome::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Env(#[from] shell_env::ShellEnvError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("preparing the check's directory {path}: {source}")]
    Prepare { path: String, source: std::io::Error },
    #[error(
        "the directory {dir} is not searchable by uid {uid}, which checks run as: make the checks' \
         directory's parents searchable by it (chmod o+x), or run the server as a user of its own"
    )]
    Unreachable { dir: String, uid: u32 },
}

/// Runs `check` with the built shell `shell_drv` on a copy of `checkout`, in the fresh directory
/// `scratch` (removed afterwards), writing the whole output to `output`.
pub async fn run_check(
    name: &str,
    check: &CheckConfig,
    shell_drv: &str,
    checkout: &Path,
    scratch: &Path,
    output: &Path,
    limits: &Limits,
) -> CheckReport {
    let mut tail = crate::nix::process::TailBuffer::new(TAIL_BYTES);
    // Removes the scratch directory however this ends, cancellation (the future dropped) included.
    let _cleanup = ScratchGuard(scratch.to_path_buf());
    let result = run_inner(check, shell_drv, checkout, scratch, output, limits, &mut tail).await;
    let (bytes, _) = tail.into_parts();
    let text = crate::text::ansi::strip_ansi(&String::from_utf8_lossy(&bytes));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    let outcome = match result {
        Ok(r) => CheckOutcome::Ran {
            ending: r.ending,
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
            output_bytes: r.output_bytes,
        },
        Err(e) => CheckOutcome::Error { message: e.to_string() },
    };
    CheckReport {
        name: name.to_string(),
        shell: check.shell.clone(),
        shell_drv: Some(shell_drv.to_string()),
        outcome,
        tail,
        output_file: Some(output.display().to_string()),
    }
}

async fn run_inner(
    check: &CheckConfig,
    shell_drv: &str,
    checkout: &Path,
    scratch: &Path,
    output: &Path,
    limits: &Limits,
    tail: &mut crate::nix::process::TailBuffer,
) -> Result<sandbox::RunResult, CheckError> {
    let drv = shell_drv.to_string();
    let env = smol::unblock(move || shell_env::shell_env(&drv)).await?;
    let (work, control) = (scratch.join("work"), scratch.join("control"));
    let script = shell_env::run_script(&env, &check.command);
    {
        let (src, work, control, scratch) =
            (checkout.to_path_buf(), work.clone(), control.clone(), scratch.to_path_buf());
        let output = output.to_path_buf();
        let run_as = limits.run_as;
        smol::unblock(move || {
            let prepare = |path: &Path, r: std::io::Result<()>| {
                r.map_err(|source| CheckError::Prepare { path: path.display().to_string(), source })
            };
            prepare(&scratch, std::fs::create_dir_all(&scratch))?;
            if let Some(parent) = output.parent() {
                prepare(parent, std::fs::create_dir_all(parent))?;
            }
            prepare(&work, copy_tree(&src, &work, true))?;
            prepare(&control, std::fs::create_dir(&control))?;
            let run = control.join(sandbox::RUN_SCRIPT);
            prepare(&run, std::fs::write(&run, script))?;
            if let Some((uid, gid)) = run_as {
                // bwrap runs as the check's user: it must reach the directories it binds, and the
                // command must own its working copy; the script is only read.
                use std::os::unix::fs::PermissionsExt as _;
                let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
                prepare(&scratch, mode(&scratch, 0o711))?;
                prepare(&control, mode(&control, 0o755))?;
                prepare(&run, mode(&run, 0o644))?;
                prepare(&work, give_tree(&work, uid, gid))?;
                if let Some(dir) = unsearchable_ancestor(&scratch, uid, gid) {
                    return Err(CheckError::Unreachable { dir: dir.display().to_string(), uid });
                }
            }
            Ok(())
        })
        .await?;
    }
    let spec = sandbox::SandboxSpec {
        work_dir: work,
        control_dir: control,
        interpreter: env.interpreter.clone(),
        host_system_dirs: env.host_builder,
        allow_network: check.allow_network,
        ro_binds: check.ro_bind.clone(),
    };
    Ok(sandbox::run(&spec, limits, output, |chunk| tail.push(chunk)).await?)
}

/// Copies the tree at `src` to the new directory `dst`: directories, regular files (with their mode)
/// and symlinks (as symlinks, never followed); other kinds are skipped. At the top, `.git` is skipped
/// when `skip_git` (a worktree's `.git` names the server's mirror).
fn copy_tree(src: &Path, dst: &Path, skip_git: bool) -> std::io::Result<()> {
    std::fs::create_dir(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        if skip_git && entry.file_name() == ".git" {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&from, &to, false)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_file() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Gives the tree at `dir` (not following symlinks) to `uid`:`gid`.
fn give_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            give_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// The first directory from the root down to `path` (included) that `uid`/`gid` may not search, if any.
fn unsearchable_ancestor(path: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut dirs: Vec<&Path> = path.ancestors().collect();
    dirs.reverse();
    dirs.into_iter().find_map(|dir| {
        let Ok(meta) = std::fs::metadata(dir) else { return Some(dir.to_path_buf()) };
        let bit = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid {
            0o010
        } else {
            0o001
        };
        (meta.mode() & bit == 0).then(|| dir.to_path_buf())
    })
}

/// Removes its directory on the blocking pool when dropped (without waiting for it).
struct ScratchGuard(PathBuf);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.0);
        smol::unblock(move || {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a check's directory failed");
            }
        })
        .detach();
    }
}

/// Removes what earlier processes left in the checks' scratch directory `dir` (a crash or `kill -9`
/// during a check); called once at start-up, before any check runs.
pub async fn clean_scratch(dir: &Path) {
    let dir = dir.to_path_buf();
    let removed = smol::unblock(move || {
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if remove_tree(&entry.path()).is_ok() {
                n += 1;
            }
        }
        n
    })
    .await;
    if removed > 0 {
        tracing::info!(removed, "removed stale check directories");
    }
}

/// Removes `dir` and everything in it; a missing directory is fine.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The end of the output file at `path`: at most its last `max` bytes, and whether more came before.
pub fn read_output(path: &Path, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut out = Vec::new();
    file.take(max).read_to_end(&mut out)?;
    Ok((out, start > 0))
}

/// The hash a stored result is reused under (`results::finished`): SHA-256 of the check's configuration
/// (shell, command, network, read-only binds) and the limits it runs under, in hex. A change to either
/// runs the check again.
pub fn config_hash(check: &CheckConfig, limits: &Limits) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let parts = [
        check.shell.clone(),
        check.command.clone(),
        check.allow_network.to_string(),
        check.ro_bind.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\u{0}"),
        limits.timeout.as_secs().to_string(),
        limits.memory_max_bytes.to_string(),
        limits.max_processes.to_string(),
        limits.max_output_bytes.to_string(),
    ];
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the whole output of check `name` of `repo` at `commit` is kept:
/// `<logs_dir>/checks/<first 16 bytes of SHA-256 of repository, commit and name, in hex>.log`.
pub fn output_path(logs_dir: &Path, repo: &str, commit: &str, name: &str) -> PathBuf {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in [repo, commit, name] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let hex: String = hasher.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    logs_dir.join("checks").join(format!("{hex}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_the_checks_user_cannot_search_is_found() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tmp");
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).expect("mkdir");
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        set(dir.path(), 0o711);
        set(&dir.path().join("a"), 0o700);
        // Owned by the test's user: a stranger (uid/gid 65534) needs the "other" bit.
        let blocked = unsearchable_ancestor(&inner, 65534, 65534);
        assert_eq!(blocked.as_deref(), Some(dir.path().join("a").as_path()));
        set(&dir.path().join("a"), 0o701);
        assert_eq!(unsearchable_ancestor(&inner, 65534, 65534), None);
    }

    #[test]
    fn the_copy_skips_git_and_keeps_symlinks_unresolved() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join(".git"), "gitdir: /secret/mirror").expect("write");
        std::fs::write(src.join("sub/a.txt"), "a").expect("write");
        std::os::unix::fs::symlink("/etc/shadow", src.join("link")).expect("symlink");
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst, true).expect("copy");
        assert!(!dst.join(".git").exists());
        assert_eq!(std::fs::read_to_string(dst.join("sub/a.txt")).expect("read"), "a");
        assert_eq!(std::fs::read_link(dst.join("link")).expect("link"), Path::new("/etc/shadow"));
    }
}
