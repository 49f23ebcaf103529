//! One push: the commands that copy a batch of store paths to a cache, and running them.
//!
//! | cache_type | commands (argv, no shell; every path its own argument) |
//! | --- | --- |
//! | `nix-copy` | with `secret_key_file`: `nix store sign --key-file KEY --recursive -- PATH…`; then `nix copy --to DESTINATION -- PATH…` |
//! | `cachix` | `cachix push DESTINATION PATH…` |
//! | `attic` | `attic push DESTINATION PATH…` |
//!
//! `nix` commands get `--extra-experimental-features nix-command`. Each command is a supervised child
//! (`nix::process::run_captured`: its own process group, killed as a group when the time is up or the
//! push is cancelled) with a sealed environment (`nix::process::env`: cleared, then `PATH`, `NIX_REMOTE`,
//! `NIX_CONFIG`, `NIX_PATH`, the Nix location variables, the locale, and a private scratch `HOME` and
//! `TMPDIR`), plus `NIX_SSHOPTS` for `nix-copy`, plus the cache's credentials as environment variables.
//! Credentials never reach argv; an error message has every credential value replaced by `[redacted]`.
//! All commands of one push share one deadline, `security.max_hook_timeout_seconds`.

use std::time::{Duration, Instant};

use crate::config::{CacheConfig, CacheType};
use crate::nix::process::{run_captured, RunLimits, Termination};
use crate::secret::Secret;

/// One command of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCommand {
    pub program: String,
    pub args: Vec<String>,
}

fn nix(args: &[&str], tail: &[String]) -> PushCommand {
    let mut all: Vec<String> =
        ["--extra-experimental-features", "nix-command"].iter().map(|s| s.to_string()).collect();
    all.extend(args.iter().map(|s| s.to_string()));
    all.push("--".into());
    all.extend(tail.iter().cloned());
    PushCommand { program: "nix".into(), args: all }
}

/// The commands that push `paths` (store paths, validated by the caller) to `cache`, in order.
pub fn commands(cache: &CacheConfig, paths: &[String]) -> Vec<PushCommand> {
    match cache.cache_type {
        CacheType::NixCopy => {
            let mut out = Vec::new();
            if let Some(key) = &cache.secret_key_file {
                let key = key.display().to_string();
                out.push(nix(&["store", "sign", "--key-file", &key, "--recursive"], paths));
            }
            out.push(nix(&["copy", "--to", &cache.destination], paths));
            out
        }
        CacheType::Cachix | CacheType::Attic => {
            let program = if cache.cache_type == CacheType::Cachix { "cachix" } else { "attic" };
            let mut args = vec!["push".to_string(), cache.destination.clone()];
            args.extend(paths.iter().cloned());
            vec![PushCommand { program: program.into(), args }]
        }
    }
}

/// Why a push failed (the message is free of credential values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PushError(pub String);

/// Replaces every credential value in `text` with `[redacted]`.
fn redact(text: &str, env: &[(String, Secret)]) -> String {
    let mut out = text.to_string();
    for (_, v) in env {
        if !v.is_empty() {
            out = out.replace(v.expose(), "[redacted]");
        }
    }
    out
}

/// Runs the commands that push `paths` to `cache` with `env` (the cache's credentials), all within
/// `timeout`. Returns how long it took.
pub async fn push(
    cache: &CacheConfig,
    env: &[(String, Secret)],
    paths: &[String],
    timeout: Duration,
) -> Result<Duration, PushError> {
    let started = Instant::now();
    for command in commands(cache, paths) {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(PushError(format!("timed out after {} s", timeout.as_secs())));
        }
        let mut cmd = std::process::Command::new(&command.program);
        cmd.args(&command.args);
        if cache.cache_type == CacheType::NixCopy {
            crate::nix::process::env::pass_ssh_vars(&mut cmd);
        }
        for (k, v) in env {
            cmd.env(k, v.expose());
        }
        crate::nix::process::env::seal(&mut cmd);
        let limits = RunLimits {
            timeout: Some(left),
            stdout_limit: 1 << 20,
            stderr_tail: 8 << 10,
            ..RunLimits::default()
        };
        let run = run_captured(cmd, &limits)
            .await
            .map_err(|e| PushError(redact(&format!("{}: {e}", command.program), env)))?;
        match run.termination {
            Termination::Exited(s) if s.success() => {}
            Termination::TimedOut(_) => {
                return Err(PushError(format!(
                "{} timed out after {} s (security.max_hook_timeout_seconds); its process group was killed",
                command.program,
                timeout.as_secs()
            )))
            }
            other => {
                let stderr = crate::text::strip_ansi(&String::from_utf8_lossy(&run.stderr));
                let stderr = redact(stderr.trim(), env);
                let how = match other {
                    Termination::Exited(s) => match s.code() {
                        Some(c) => format!("exited with status {c}"),
                        None => "was killed by a signal".to_string(),
                    },
                    _ => "was stopped (output limit)".to_string(),
                };
                return Err(PushError(format!(
                    "{} {how}: {}",
                    command.program,
                    crate::text::ellipsis_chars(&stderr, 600)
                )));
            }
        }
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CredentialSource, Permissions};

    fn cache(t: CacheType, dest: &str, key: Option<&str>) -> CacheConfig {
        CacheConfig {
            id: "c".into(),
            cache_type: t,
            destination: dest.into(),
            credentials: CredentialSource::None,
            permissions: Permissions::default(),
            push_cached: false,
            allow_forks: false,
            secret_key_file: key.map(Into::into),
        }
    }

    #[test]
    fn every_path_is_its_own_argument() {
        let paths = vec!["/nix/store/aaa-x".to_string(), "/nix/store/bbb-x-dev".to_string()];
        let c = commands(&cache(CacheType::Cachix, "mycache", None), &paths);
        assert_eq!(
            c,
            [PushCommand {
                program: "cachix".into(),
                args: vec!["push".into(), "mycache".into(), paths[0].clone(), paths[1].clone()]
            }]
        );
        let c = commands(&cache(CacheType::Attic, "srv:cache", None), &paths);
        assert_eq!(c[0].program, "attic");
        assert_eq!(c[0].args[..2], ["push".to_string(), "srv:cache".to_string()]);
        let c = commands(&cache(CacheType::NixCopy, "file:///c", Some("/k")), &paths);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0].args,
            [
                "--extra-experimental-features",
                "nix-command",
                "store",
                "sign",
                "--key-file",
                "/k",
                "--recursive",
                "--",
                &paths[0],
                &paths[1]
            ]
        );
        assert_eq!(
            c[1].args,
            [
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--to",
                "file:///c",
                "--",
                &paths[0],
                &paths[1]
            ]
        );
    }

    #[test]
    fn redaction_replaces_every_value() {
        let env = vec![("T".to_string(), Secret::new("s3cr3t"))];
        assert_eq!(redact("bad token s3cr3t (s3cr3t)", &env), "bad token [redacted] ([redacted])");
    }
}
