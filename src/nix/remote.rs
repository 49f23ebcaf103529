//! Remote builders as Nix reaches them: the store URI of a machine with its SSH key and host key as
//! store parameters ([`probe_uri`]), and the health probe, one `nix store ping --store …` child under a
//! time limit ([`ping`]). It never reads the key (only its path is passed, as Nix's machines file does)
//! and its errors carry Nix's and ssh's own words, bounded, never anything of the key.

use std::path::Path;
use std::time::Duration;

use crate::nix::process::{run_captured, ProcessError, RunLimits, Termination};

/// Why a probe found a builder unreachable.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("cannot run nix store ping: {0}")]
    Spawn(#[from] ProcessError),
    #[error("no answer within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("{0}")]
    Unreachable(String),
}

/// The longest part of Nix's error kept in a [`PingError`].
const MESSAGE_LIMIT: usize = 400;

/// `uri` with `ssh-key` and `base64-ssh-public-host-key` added as store parameters (for `ssh://` and
/// `ssh-ng://` stores; other stores take neither), as Nix's build hook opens a machine of the machines file.
pub fn probe_uri(uri: &str, ssh_key: Option<&Path>, host_key: Option<&str>) -> String {
    let ssh = uri.starts_with("ssh://") || uri.starts_with("ssh-ng://");
    let mut out = uri.to_string();
    let mut add = |name: &str, value: &str| {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    };
    if ssh {
        if let Some(key) = ssh_key {
            add("ssh-key", &key.display().to_string());
        }
        if let Some(host_key) = host_key {
            add("base64-ssh-public-host-key", host_key);
        }
    }
    out
}

/// Asks the machine at `store_uri` (see [`probe_uri`]) whether it answers: `nix store ping` in its own
/// process group with a sealed environment, killed after `timeout`.
pub async fn ping(store_uri: &str, timeout: Duration) -> Result<(), PingError> {
    let mut cmd = std::process::Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command", "store", "ping", "--store", store_uri]);
    crate::nix::process::env::pass_ssh_vars(&mut cmd);
    let limits = RunLimits { timeout: Some(timeout), stderr_tail: 16 << 10, ..Default::default() };
    let out = run_captured(cmd, &limits).await?;
    match out.termination {
        Termination::TimedOut(_) => Err(PingError::TimedOut(timeout)),
        t if t.success() => Ok(()),
        _ => {
            let text = crate::text::strip_ansi(&String::from_utf8_lossy(&out.stderr));
            // Nix's last error line says why (ssh's own lines come before it).
            let line = text
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with("error:"))
                .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("nix store ping failed without a message");
            let line = line.trim().strip_prefix("error:").map(str::trim).unwrap_or(line.trim());
            Err(PingError::Unreachable(crate::text::bounded_str(line, MESSAGE_LIMIT)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_uris_carry_the_machine_parameters() {
        let key = Path::new("/keys/id");
        assert_eq!(
            probe_uri("ssh-ng://b1", Some(key), Some("QUJD")),
            "ssh-ng://b1?ssh-key=/keys/id&base64-ssh-public-host-key=QUJD"
        );
        assert_eq!(
            probe_uri("ssh://root@h?remote-store=/s", Some(key), None),
            "ssh://root@h?remote-store=/s&ssh-key=/keys/id"
        );
        assert_eq!(probe_uri("ssh-ng://b1", None, None), "ssh-ng://b1");
        assert_eq!(probe_uri("daemon", Some(key), Some("QUJD")), "daemon");
    }

    #[test]
    fn an_unreachable_store_is_an_error_with_nix_words() {
        smol::block_on(async {
            // A local store whose root cannot be created: Nix answers with an error, quickly.
            let e = ping("local?root=/proc/eka-ci-no-such-root", Duration::from_secs(30))
                .await
                .expect_err("unreachable");
            assert!(matches!(e, PingError::Unreachable(_)), "{e:?}");
            assert!(!e.to_string().is_empty());
        });
    }
}
