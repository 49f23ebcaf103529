//! Per-check cgroups (cgroup v2): when the server runs in a cgroup delegated to it (a systemd unit with
//! `Delegate=`), each check gets a cgroup of its own under the server's, with `memory.max`,
//! `memory.swap.max` and `pids.max`; the sandbox is put into it before `bwrap` starts, and killed as a
//! whole with `cgroup.kill`. Otherwise checks fall back to `RLIMIT_AS` and `RLIMIT_NPROC`
//! (`sandbox.rs`; docs/checks.md says on which hosts which applies).
//!
//! Detection ([`detect`]): the cgroup v2 mount (`/proc/self/mountinfo`), the server's cgroup in it
//! (`/proc/self/cgroup`, the `0::` line), and that cgroup directory being writable with the `memory` and
//! `pids` controllers enabled in its `cgroup.subtree_control` — or available in its `cgroup.controllers`,
//! in which case the server first moves its own processes into a leaf `ekaci-server` (cgroup v2 allows
//! no processes in a cgroup whose controllers are enabled for its children) and enables them. Every
//! function here takes the directory it works in, so the tests run against a temporary directory laid
//! out like cgroupfs.

use std::io::Write as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};

/// The leaf the server's own processes move to when it enables the controllers itself.
pub const SERVER_LEAF: &str = "ekaci-server";
/// The name of every check's cgroup starts with this (then the server's pid and a number).
pub const CHECK_PREFIX: &str = "ekaci-check-";
/// The controllers a per-check cgroup needs.
const CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// Why checks do not get cgroups on this host (logged once at start-up).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no cgroup v2 file system is mounted")]
    NotMounted,
    #[error("the server's cgroup v2 path is unknown (/proc/self/cgroup has no `0::` line)")]
    NoCgroup,
    #[error("the server's cgroup {dir} is not writable (not delegated to the server)")]
    NotWritable { dir: PathBuf },
    #[error("the controller `{controller}` is not available in the server's cgroup {dir}")]
    NoController { dir: PathBuf, controller: &'static str },
    #[error("enabling the controllers in {dir} failed: {source}")]
    Enable { dir: PathBuf, source: std::io::Error },
}

/// A per-check cgroup could not be made.
#[derive(Debug, thiserror::Error)]
#[error("setting up the check's cgroup {path}: {source}")]
pub struct CgroupError {
    pub path: String,
    pub source: std::io::Error,
}

/// The cgroup checks' cgroups are made in (the server's own, with the controllers enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupParent {
    pub dir: PathBuf,
}

/// The server's cgroup directory: the mount point of the cgroup2 file system (from `mountinfo`) joined
/// with the `0::` path of `proc_cgroup` (the contents of `/proc/self/cgroup`).
pub fn server_cgroup_dir(mountinfo: &str, proc_cgroup: &str) -> Result<PathBuf, Unavailable> {
    // mountinfo: "id parent major:minor root mount-point options ... - fstype source super-options".
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2")).then(|| left.split_whitespace().nth(4))?
        })
        .ok_or(Unavailable::NotMounted)?;
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).ok_or(Unavailable::NoCgroup)?;
    Ok(Path::new(mount).join(path.trim().trim_start_matches('/')))
}

/// The parent of checks' cgroups on this host, if any (see the module documentation).
pub fn detect() -> Result<CgroupParent, Unavailable> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| Unavailable::NotMounted)?;
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|_| Unavailable::NoCgroup)?;
    usable(&server_cgroup_dir(&mountinfo, &own)?)
}

fn words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().map(str::to_string).collect()
}

/// Whether `dir` (the server's cgroup) can hold checks' cgroups, enabling the controllers when they are
/// only available (moving the processes of `dir` into [`SERVER_LEAF`] first).
pub fn usable(dir: &Path) -> Result<CgroupParent, Unavailable> {
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    if !writable(dir) || !writable(&dir.join("cgroup.subtree_control")) {
        return Err(Unavailable::NotWritable { dir: dir.to_path_buf() });
    }
    let enabled = words(&dir.join("cgroup.subtree_control"));
    if CONTROLLERS.iter().all(|c| enabled.iter().any(|e| e == c)) {
        return Ok(CgroupParent { dir: dir.to_path_buf() });
    }
    let available = words(&dir.join("cgroup.controllers"));
    if let Some(missing) = CONTROLLERS.iter().find(|c| !available.iter().any(|a| a == *c)) {
        return Err(Unavailable::NoController { dir: dir.to_path_buf(), controller: missing });
    }
    let enable = || -> std::io::Result<()> {
        let leaf = dir.join(SERVER_LEAF);
        match std::fs::create_dir(&leaf) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        // Each write moves one process (with all its threads).
        for pid in words(&dir.join("cgroup.procs")) {
            std::fs::write(leaf.join("cgroup.procs"), &pid)?;
        }
        let add: Vec<String> = CONTROLLERS.iter().map(|c| format!("+{c}")).collect();
        std::fs::write(dir.join("cgroup.subtree_control"), add.join(" "))
    };
    enable().map_err(|source| Unavailable::Enable { dir: dir.to_path_buf(), source })?;
    Ok(CgroupParent { dir: dir.to_path_buf() })
}

/// One check's cgroup; dropping it kills what is left in it and removes it.
#[derive(Debug)]
pub struct CheckCgroup {
    pub dir: PathBuf,
    /// `cgroup.procs`, opened for writing before the fork: the child writes `0` to it (itself).
    procs: OwnedFd,
}

impl CgroupParent {
    /// Makes the cgroup `name` under this one with the limits of one check.
    pub fn create(&self, name: &str, memory_max: u64, pids_max: u64) -> Result<CheckCgroup, CgroupError> {
        let dir = self.dir.join(name);
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| CgroupError { path, source }
        };
        std::fs::create_dir(&dir).map_err(err(&dir))?;
        // From here on the directory is removed again if anything fails (the drop of `cg`).
        let procs_path = dir.join("cgroup.procs");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&procs_path)
            .map_err(err(&procs_path))?;
        let cg = CheckCgroup { dir: dir.clone(), procs: procs.into() };
        let set = |file: &str, value: String| {
            let path = dir.join(file);
            std::fs::write(&path, value).map_err(err(&path))
        };
        set("memory.max", memory_max.to_string())?;
        set("pids.max", pids_max.to_string())?;
        // Without swap accounting the file does not exist; then memory.max alone bounds the check.
        if dir.join("memory.swap.max").exists() {
            set("memory.swap.max", "0".to_string())?;
        }
        Ok(cg)
    }
}

impl CheckCgroup {
    /// Moves the calling process into this cgroup (`0` written to `cgroup.procs`). The sandbox's child
    /// does this between fork and exec on a duplicate of the descriptor ([`CheckCgroup::procs_fd`]),
    /// opened by the server, whose credentials the kernel checks.
    pub fn enter(&self) -> std::io::Result<()> {
        rustix::io::write(self.procs.as_fd(), b"0")?;
        Ok(())
    }

    /// A duplicate of the open `cgroup.procs` (close-on-exec).
    pub fn procs_fd(&self) -> std::io::Result<OwnedFd> {
        self.procs.try_clone()
    }

    /// Kills every process in the cgroup (`cgroup.kill`; on kernels without it, each listed process).
    pub fn kill(&self) {
        kill_in(&self.dir);
    }
}

/// Kills every process in the cgroup `dir`.
fn kill_in(dir: &Path) {
    let kill_file = dir.join("cgroup.kill");
    let write_one =
        |path: &Path| std::fs::OpenOptions::new().write(true).open(path).and_then(|mut f| f.write_all(b"1"));
    if kill_file.exists() && write_one(&kill_file).is_ok() {
        return;
    }
    for pid in words(&dir.join("cgroup.procs")) {
        if let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for CheckCgroup {
    fn drop(&mut self) {
        kill_and_remove(&self.dir);
    }
}

/// Kills everything in the cgroup `dir` and removes it, waiting up to a second for the processes to go.
fn kill_and_remove(dir: &Path) {
    kill_in(dir);
    // A cgroup can be removed once its processes are gone (they die asynchronously after the kill).
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            // On a real cgroupfs the interface files vanish with the directory; elsewhere (a plain
            // directory) they are files to remove first.
            Err(_) if !is_cgroupfs(dir) => {
                let _ = std::fs::remove_dir_all(dir);
                return;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    tracing::warn!(cgroup = %dir.display(), "a check's cgroup could not be removed");
}

impl CgroupParent {
    /// Kills and removes the checks' cgroups an earlier process left (it was killed during a check).
    /// Called once at start-up, before any check runs.
    pub fn clean_stale(&self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let is_check = entry.file_name().to_str().is_some_and(|n| n.starts_with(CHECK_PREFIX));
            if is_check && entry.file_type().is_ok_and(|t| t.is_dir()) {
                kill_and_remove(&entry.path());
            }
        }
    }
}

fn is_cgroupfs(dir: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(dir).is_ok_and(|s| s.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_cgroup_is_the_cgroup2_mount_joined_with_its_own_path() {
        let mountinfo = "25 30 0:22 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n";
        let own = "4:memory:/x\n0::/system.slice/eka-ci.service\n";
        assert_eq!(
            server_cgroup_dir(mountinfo, own).expect("found"),
            Path::new("/sys/fs/cgroup/unified/system.slice/eka-ci.service")
        );
        assert!(matches!(
            server_cgroup_dir("1 2 0:1 / / rw - ext4 /dev/sda rw", own),
            Err(Unavailable::NotMounted)
        ));
        assert!(matches!(server_cgroup_dir(mountinfo, "4:memory:/x\n"), Err(Unavailable::NoCgroup)));
    }

    fn cgroupfs(controllers: &str, enabled: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("cgroup.controllers"), controllers).expect("write");
        std::fs::write(dir.path().join("cgroup.subtree_control"), enabled).expect("write");
        std::fs::write(dir.path().join("cgroup.procs"), "").expect("write");
        dir
    }

    #[test]
    fn enabled_controllers_are_used_as_they_are() {
        let dir = cgroupfs("cpu io memory pids", "memory pids");
        assert_eq!(usable(dir.path()).expect("usable").dir, dir.path());
        assert!(!dir.path().join(SERVER_LEAF).exists(), "nothing moved");
    }

    #[test]
    fn available_controllers_are_enabled_after_the_servers_processes_move_to_a_leaf() {
        let dir = cgroupfs("cpu memory pids", "");
        std::fs::write(dir.path().join("cgroup.procs"), "4242\n").expect("write");
        usable(dir.path()).expect("usable");
        let moved = std::fs::read_to_string(dir.path().join(SERVER_LEAF).join("cgroup.procs")).expect("leaf");
        assert_eq!(moved, "4242");
        let enabled = std::fs::read_to_string(dir.path().join("cgroup.subtree_control")).expect("read");
        assert_eq!(enabled, "+memory +pids");
    }

    #[test]
    fn a_missing_controller_or_a_read_only_cgroup_means_the_fallback() {
        let dir = cgroupfs("cpu memory", "memory");
        assert!(matches!(usable(dir.path()), Err(Unavailable::NoController { controller: "pids", .. })));
        assert!(matches!(usable(Path::new("/nonexistent/cgroup")), Err(Unavailable::NotWritable { .. })));
    }

    #[test]
    fn a_checks_cgroup_gets_its_limits_and_is_removed_when_dropped() {
        let dir = cgroupfs("memory pids", "memory pids");
        let parent = usable(dir.path()).expect("usable");
        let cg = parent.create("check-1", 1 << 30, 64).expect("create");
        let read = |f: &str| std::fs::read_to_string(cg.dir.join(f)).expect(f);
        assert_eq!((read("memory.max"), read("pids.max")), ("1073741824".into(), "64".into()));
        assert!(!cg.dir.join("memory.swap.max").exists(), "not created where the kernel has none");
        cg.enter().expect("enter");
        assert_eq!(read("cgroup.procs"), "0", "the child writes itself");
        std::fs::write(cg.dir.join("cgroup.kill"), "").expect("write");
        let path = cg.dir.clone();
        cg.kill();
        assert_eq!(std::fs::read_to_string(path.join("cgroup.kill")).expect("kill"), "1");
        drop(cg);
        assert!(!path.exists());
        assert!(parent.create("check-1", 1, 1).is_ok(), "the name is free again");
    }

    #[test]
    fn cgroups_of_checks_an_earlier_process_left_are_removed_and_nothing_else() {
        let dir = cgroupfs("memory pids", "memory pids");
        let parent = usable(dir.path()).expect("usable");
        for name in [format!("{CHECK_PREFIX}1-0"), SERVER_LEAF.to_string(), "other".to_string()] {
            std::fs::create_dir(dir.path().join(&name)).expect("mkdir");
            std::fs::write(dir.path().join(&name).join("cgroup.procs"), "").expect("write");
        }
        parent.clean_stale();
        assert!(!dir.path().join(format!("{CHECK_PREFIX}1-0")).exists());
        assert!(dir.path().join(SERVER_LEAF).exists() && dir.path().join("other").exists());
    }

    /// Against the real kernel, where this process's cgroup v2 directory is writable (root on a host
    /// with a cgroup2 mount; memory and pids controllers are not needed for this): a process in a
    /// check's cgroup is killed with it and the cgroup removed. Elsewhere it says so and checks nothing.
    #[test]
    fn a_real_cgroup_is_killed_and_removed_with_everything_in_it() {
        let found = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .zip(std::fs::read_to_string("/proc/self/cgroup").ok())
            .and_then(|(m, c)| server_cgroup_dir(&m, &c).ok());
        let Some(own) = found.filter(|d| rustix::fs::access(d, rustix::fs::Access::WRITE_OK).is_ok()) else {
            eprintln!("no writable cgroup v2 directory here: not checked");
            return;
        };
        let dir = own.join(format!("{CHECK_PREFIX}test-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() || !is_cgroupfs(&dir) {
            eprintln!("cannot make a cgroup under {}: not checked", own.display());
            let _ = std::fs::remove_dir(&dir);
            return;
        }
        let mut child = std::process::Command::new("/bin/sleep").arg("1000").spawn().expect("sleep");
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("move into the cgroup");
        kill_and_remove(&dir);
        let status = child.wait().expect("wait");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}");
        assert!(!dir.exists(), "the cgroup was removed");
    }
}
