//! The server seals itself once start-up has read every secret, before any child or service starts:
//! it drops the secret variables from its own environment (and overwrites them in the initial
//! environment block the kernel shows as `/proc/<pid>/environ`), makes itself non-dumpable (no core
//! dumps; other processes of the same user cannot read its `environ` or `mem`), and chooses the private
//! scratch directory every child gets as `HOME` and `TMPDIR` (`nix::process::env`).
//!
//! It must run while the server is still single-threaded in effect (nothing else reads the
//! environment), and it never logs a variable's value.

use std::io;
use std::os::unix::fs::FileExt as _;

use super::DaemonError;
use crate::config::ServerConfig;

/// Seals the server; see the module documentation.
pub(super) fn seal_server(config: &ServerConfig) -> Result<(), DaemonError> {
    let names = crate::config::secret_env_vars(config);
    let mut dropped = 0;
    for var in &names {
        if std::env::var_os(var).is_some() {
            std::env::remove_var(var);
            dropped += 1;
        }
    }
    // `remove_var` only unlinks the variable from `environ`; the kernel's `/proc/<pid>/environ` still
    // shows the bytes the process started with, so they are overwritten in place.
    if let Err(e) = scrub_initial_environment(&names) {
        tracing::warn!(error = %e, "cannot overwrite the secret variables in the initial environment block");
    }
    if dropped > 0 {
        tracing::info!(variables = dropped, "secret environment variables dropped after start-up");
    }
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "cannot make the server non-dumpable (PR_SET_DUMPABLE)");
    }
    let scratch = config.data_dir().join("scratch");
    crate::nix::process::env::set_scratch_root(&scratch)
        .map_err(|source| DaemonError::Scratch { path: scratch, source })
}

/// Overwrites with NUL bytes every `NAME=value` entry of the initial environment block whose name is in
/// `names`. Only call after the variables were removed with `remove_var`: nothing points at them then.
fn scrub_initial_environment(names: &[String]) -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may contain anything, so split after its last `)`); the
    // first is field 3 of proc(5), env_start and env_end are fields 50 and 51.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no field {n} in /proc/self/stat")))
    };
    let (start, end) = (field(50)?, field(51)?);
    let block = std::fs::read("/proc/self/environ")?;
    if block.len() as u64 != end.saturating_sub(start) {
        return Err(io::Error::other("the initial environment block moved"));
    }
    let mem = std::fs::OpenOptions::new().write(true).open("/proc/self/mem")?;
    let mut scrubbed = 0;
    let mut offset = 0u64;
    for entry in block.split(|&b| b == 0) {
        let name = entry.split(|&b| b == b'=').next().unwrap_or_default();
        if !entry.is_empty() && names.iter().any(|n| n.as_bytes() == name) {
            mem.write_all_at(&vec![0u8; entry.len()], start + offset)?;
            scrubbed += 1;
        }
        offset += entry.len() as u64 + 1;
    }
    Ok(scrubbed)
}
