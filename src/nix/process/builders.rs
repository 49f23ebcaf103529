//! Nix's builders: the processes a supervised child puts outside its process group (Nix's local builders
//! call `setsid`, so a group kill cannot reach them), found by scanning `/proc` and killed by session; and
//! the kernel's `oom_kill` counter, the only evidence of why a builder died of SIGKILL. Blocking `/proc`
//! reads: callers run them through `smol::unblock` (or in `Drop`, where nothing else is possible).

use std::collections::HashSet;

use rustix::process::{Pid, Signal};

/// `(ppid, pgrp, session)` from `/proc/<pid>/stat` (fields after the last `)`).
fn stat_ids(stat: &str) -> Option<(i32, i32, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Every process as `(pid, ppid, pgrp, session)`. Blocking (reads `/proc`).
fn scan_processes() -> Vec<(i32, i32, i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if let Some((ppid, pgrp, sid)) = stat_ids(&stat) {
            out.push((pid, ppid, pgrp, sid));
        }
    }
    out
}

/// The sessions of the leader's children that left its session (Nix's local builders call `setsid`).
/// Blocking.
pub(crate) fn builder_sessions(leader: i32) -> HashSet<i32> {
    let procs = scan_processes();
    let Some(own) = procs.iter().find(|p| p.0 == leader).map(|p| p.3) else { return HashSet::new() };
    procs.iter().filter(|p| p.1 == leader && p.3 != own && p.3 > 1).map(|p| p.3).collect()
}

/// SIGKILL to every process of the given sessions. Blocking.
pub(crate) fn kill_sessions(sessions: &HashSet<i32>) {
    if sessions.is_empty() {
        return;
    }
    for (pid, _, _, sid) in scan_processes() {
        if sessions.contains(&sid) {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// The `oom_kill` counter of `/proc/vmstat` (Linux ≥ 4.13), if readable.
pub(crate) fn read_oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    parse_oom_kills(&text)
}

fn parse_oom_kills(vmstat: &str) -> Option<u64> {
    vmstat.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_ids() {
        assert_eq!(stat_ids("26530 (sleep) S 26529 26529 26529 0 -1"), Some((26529, 26529, 26529)));
        assert_eq!(stat_ids("1 (a) b) c) R 0 1 1 0"), Some((0, 1, 1)));
        assert_eq!(stat_ids("garbage"), None);
    }

    #[test]
    fn oom_counter_is_read_from_vmstat() {
        assert_eq!(parse_oom_kills("pgfault 1\noom_kill 42\nx 1\n"), Some(42));
        assert_eq!(parse_oom_kills("pgfault 1\n"), None);
    }
}
