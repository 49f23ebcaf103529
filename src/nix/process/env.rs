//! Sealed child environments: every Nix and git child starts from an empty environment plus an allow-list,
//! so nothing the server holds in its own environment (the webhook secret, credentials, tokens, anything
//! an operator exported) is visible to code a pull request controls (`builtins.getEnv`, a build hook).
//!
//! What a child gets ([`sealed_vars`]): `PATH`; `HOME` and `TMPDIR` pointing at a private scratch
//! directory (never the server's home); the operator's `NIX_REMOTE`, `NIX_CONFIG`, `NIX_PATH` and Nix
//! location variables (`NIX_STORE_DIR`, `NIX_STATE_DIR`, `NIX_LOG_DIR`, `NIX_CONF_DIR`,
//! `NIX_SSL_CERT_FILE`); and the locale (`LANG`, `LC_ALL`, `LC_CTYPE`, `TZ`). Variables a caller sets
//! explicitly on the command (e.g. the build runner's `NIX_LOG_DIR`, git's token) are kept and win; the
//! children that reach remote builders also get `NIX_SSHOPTS` that way ([`pass_ssh_vars`]).
//!
//! The scratch directory is per server (`<data_dir>/scratch`, set by the daemon with
//! [`set_scratch_root`] before any child starts); a process that never sets one (the library in tests)
//! gets a private per-process directory under the system temporary directory. Both are mode 0700.
//! This module must never pass a variable outside the allow-list implicitly.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The server's variables a child inherits unchanged (when the server has them).
pub const INHERITED_VARS: &[&str] = &[
    "PATH",
    "NIX_REMOTE",
    "NIX_CONFIG",
    "NIX_PATH",
    "NIX_STORE_DIR",
    "NIX_STATE_DIR",
    "NIX_LOG_DIR",
    "NIX_CONF_DIR",
    "NIX_SSL_CERT_FILE",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
];

/// The server's variables only the children that reach remote builders get (the build runner's
/// `nix-build` and the builders' health probe, through [`pass_ssh_vars`]): the options Nix hands to ssh.
/// Evaluation never sees them.
pub const SSH_VARS: &[&str] = &["NIX_SSHOPTS"];

/// Sets [`SSH_VARS`] the server has on `cmd` explicitly (so [`seal`] keeps them).
pub fn pass_ssh_vars(cmd: &mut std::process::Command) {
    for k in SSH_VARS {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
}

/// Used for `HOME` and `TMPDIR` when no private directory could be made: a path that does not exist.
const NO_SCRATCH: &str = "/homeless-shelter";

static SCRATCH_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Makes `dir` (created mode 0700, with `home/` and `tmp/` inside) the scratch directory of every child
/// started from now on. Call once at start-up, before any child; a second call changes nothing and
/// says so.
pub fn set_scratch_root(dir: &Path) -> io::Result<()> {
    make_private_dir(dir, true)?;
    for sub in ["home", "tmp"] {
        make_private_dir(&dir.join(sub), false)?;
    }
    SCRATCH_ROOT
        .set(dir.to_path_buf())
        .map_err(|_| io::Error::other("the child scratch directory was already chosen"))
}

/// The scratch root: the one set at start-up, else a private per-process directory made on first use.
fn scratch_root() -> Option<&'static Path> {
    let root = SCRATCH_ROOT.get_or_init(|| {
        let uid = rustix::process::geteuid().as_raw();
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("eka-ci-scratch-{uid}-{pid}"));
        let made = make_private_dir(&dir, false)
            .and_then(|()| make_private_dir(&dir.join("home"), false))
            .and_then(|()| make_private_dir(&dir.join("tmp"), false));
        match made {
            Ok(()) => dir,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "cannot make a scratch directory for child processes");
                PathBuf::new()
            }
        }
    });
    (!root.as_os_str().is_empty()).then_some(root.as_path())
}

/// Creates `dir` mode 0700, or accepts an existing one only if it is a real directory we own that no one
/// else can read or enter.
fn make_private_dir(dir: &Path, parents: bool) -> io::Result<()> {
    if parents {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(io::Error::other(format!("{} exists and is not a directory of ours", dir.display())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The complete environment of a sealed child (before the caller's explicit variables): the allow-listed
/// variables the server has, plus `HOME` and `TMPDIR` in the scratch directory.
pub fn sealed_vars() -> Vec<(OsString, OsString)> {
    sealed_vars_from(|k| std::env::var_os(k))
}

fn sealed_vars_from(get: impl Fn(&str) -> Option<OsString>) -> Vec<(OsString, OsString)> {
    let mut vars: Vec<(OsString, OsString)> =
        INHERITED_VARS.iter().filter_map(|k| get(k).map(|v| (OsString::from(k), v))).collect();
    let (home, tmp) = match scratch_root() {
        Some(root) => (root.join("home").into_os_string(), root.join("tmp").into_os_string()),
        None => (OsString::from(NO_SCRATCH), OsString::from(NO_SCRATCH)),
    };
    vars.push(("HOME".into(), home));
    vars.push(("TMPDIR".into(), tmp));
    vars
}

/// Seals `cmd`: clears its environment and sets the allow-list, keeping (and preferring) every variable
/// the caller set or removed explicitly on `cmd` before this call.
pub fn seal(cmd: &mut std::process::Command) {
    let explicit: Vec<(OsString, Option<OsString>)> =
        cmd.get_envs().map(|(k, v)| (k.to_os_string(), v.map(OsStr::to_os_string))).collect();
    cmd.env_clear();
    for (k, v) in sealed_vars() {
        cmd.env(k, v);
    }
    for (k, v) in explicit {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
}

/// An empty flake registry (`{"flakes":[],"version":2}`) in the scratch directory, for
/// `--option flake-registry`: with it, an indirect flake reference (`nixpkgs`) never makes Nix download
/// the global registry.
pub fn empty_flake_registry() -> io::Result<PathBuf> {
    let root = scratch_root().ok_or_else(|| io::Error::other("no private scratch directory"))?;
    let path = root.join("flake-registry.json");
    std::fs::write(&path, r#"{"flakes":[],"version":2}"#)?;
    Ok(path)
}

/// Makes the child start in a network namespace of its own, with only a loopback interface that is
/// down: nothing it does can reach another host or a service on this one. As root this is one
/// `unshare(CLONE_NEWNET)`; otherwise a user namespace comes with it, mapping the server's own uid and
/// gid to themselves (so files it creates keep their owner). If the namespace cannot be made, the child
/// does not start (the spawn fails): callers fail closed.
pub fn without_network(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    let (uid, gid) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
    // Prepared before fork: the closure only makes system calls.
    let uid_map = format!("{uid} {uid} 1");
    let gid_map = format!("{gid} {gid} 1");
    // SAFETY: between fork and exec the closure only makes system calls (unshare, open, write, close)
    // on data prepared before the fork; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            use rustix::thread::UnshareFlags;
            if uid == 0 {
                rustix::thread::unshare_unsafe(UnshareFlags::NEWNET)?;
                return Ok(());
            }
            rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNET)?;
            for (file, content) in [
                ("/proc/self/setgroups", "deny"),
                ("/proc/self/uid_map", &uid_map),
                ("/proc/self/gid_map", &gid_map),
            ] {
                let fd = rustix::fs::open(file, rustix::fs::OFlags::WRONLY, rustix::fs::Mode::empty())?;
                rustix::io::write(&fd, content.as_bytes())?;
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allow_list_and_scratch_dirs_reach_a_child() {
        let vars = sealed_vars_from(|k| match k {
            "PATH" => Some("/bin".into()),
            "NIX_CONFIG" => Some("substituters =".into()),
            _ => None,
        });
        let names: Vec<&OsStr> = vars.iter().map(|(k, _)| k.as_os_str()).collect();
        assert_eq!(names, ["PATH", "NIX_CONFIG", "HOME", "TMPDIR"]);
        let home = &vars[2].1;
        assert_ne!(Some(home.clone()), std::env::var_os("HOME"), "never the server's home");
    }

    #[test]
    fn a_sealed_shell_sees_none_of_the_servers_other_variables() {
        // cargo runs tests with CARGO_* variables set: none may reach the child. (No `set_var` here: other
        // tests of this binary read the environment on other threads.)
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some(), "cargo sets it for tests");
        // NUL-separated: a value may span lines (a multi-line NIX_CONFIG, for one).
        let mut cmd = std::process::Command::new("/usr/bin/env");
        cmd.arg("-0").env("EKA_CI_EXPLICIT", "kept");
        seal(&mut cmd);
        let out = cmd.output().expect("run /usr/bin/env");
        let env = String::from_utf8_lossy(&out.stdout);
        let vars: Vec<&str> = env.split('\0').filter(|v| !v.is_empty()).collect();
        assert!(!env.contains("CARGO_MANIFEST_DIR="), "{env}");
        assert!(vars.contains(&"EKA_CI_EXPLICIT=kept"), "{env}");
        for line in &vars {
            let name = line.split('=').next().unwrap_or_default();
            let allowed = INHERITED_VARS.contains(&name)
                || ["HOME", "TMPDIR", "EKA_CI_EXPLICIT", "PWD", "SHLVL", "_", "OLDPWD"].contains(&name);
            assert!(allowed, "unexpected variable in a sealed child: {line}");
        }
        let home = vars.iter().find_map(|l| l.strip_prefix("HOME=")).expect("HOME is set");
        let meta = std::fs::metadata(home).expect("the scratch home exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }
}
