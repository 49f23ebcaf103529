//! Host trouble: whether an error is the host's (out of file descriptors or disk space, unable to fork),
//! which is transient and retried with backoff, rather than a verdict on what was being built or
//! evaluated. The decision is made from the `errno` of an `io::Error` found in the error's source chain,
//! or from an [`OomKilled`] there (a child that died of SIGKILL while the kernel's `oom_kill` counter
//! rose), never from text a child printed (a builder can print anything). It decides nothing else.

use std::io;

use rustix::io::Errno;

/// A child process (an evaluator, git) that died of SIGKILL while the kernel's out-of-memory killer was
/// at work: the host ran out of memory, which is no verdict on what the child was doing.
#[derive(Debug, thiserror::Error)]
#[error("{program} was killed by the kernel's out-of-memory killer")]
pub struct OomKilled {
    pub program: String,
}

impl OomKilled {
    /// `Some` when a child of `program` that ended with `status` was killed by the out-of-memory
    /// killer: SIGKILL, and the `oom_kill` counter read `before` it ran is lower now. Blocking (reads
    /// `/proc/vmstat`).
    pub fn check(program: &str, status: &std::process::ExitStatus, before: Option<u64>) -> Option<OomKilled> {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() != Some(rustix::process::Signal::KILL.as_raw()) {
            return None;
        }
        let now = super::builders::read_oom_kills()?;
        (now > before?).then(|| OomKilled { program: program.to_string() })
    }
}

/// Why `error` (or an error in its source chain) is a transient host error, in words for the history
/// (`too many open files (EMFILE)`); `None` when it is not one.
pub fn transient_reason(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(reason) = e.downcast_ref::<io::Error>().and_then(io_reason) {
            return Some(reason);
        }
        if e.downcast_ref::<OomKilled>().is_some() {
            return Some("killed by the out-of-memory killer (OOM)");
        }
        next = e.source();
    }
    None
}

/// [`transient_reason`] for one `io::Error`.
pub fn io_reason(error: &io::Error) -> Option<&'static str> {
    let errno = Errno::from_raw_os_error(error.raw_os_error()?);
    Some(match errno {
        Errno::MFILE => "too many open files (EMFILE)",
        Errno::NFILE => "too many open files in the system (ENFILE)",
        Errno::NOSPC => "no space left on device (ENOSPC)",
        Errno::AGAIN => "cannot fork: resource temporarily unavailable (EAGAIN)",
        Errno::NOMEM => "cannot fork: out of memory (ENOMEM)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::build::BuildError;
    use crate::nix::process::ProcessError;

    #[test]
    fn host_errors_are_found_through_the_error_chain() {
        let spawn = |errno: Errno| {
            BuildError::Process(ProcessError::Spawn {
                program: "nix-build".into(),
                source: io::Error::from_raw_os_error(errno.raw_os_error()),
            })
        };
        assert_eq!(transient_reason(&spawn(Errno::MFILE)), Some("too many open files (EMFILE)"));
        assert_eq!(
            transient_reason(&spawn(Errno::AGAIN)),
            Some("cannot fork: resource temporarily unavailable (EAGAIN)")
        );
        let io = BuildError::Io {
            path: "/logs/x".into(),
            source: io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error()),
        };
        assert_eq!(transient_reason(&io), Some("no space left on device (ENOSPC)"));
        // The builder's or the configuration's own trouble is not the host's.
        assert_eq!(transient_reason(&spawn(Errno::NOENT)), None);
        assert_eq!(transient_reason(&spawn(Errno::ACCESS)), None);
        assert_eq!(transient_reason(&BuildError::Duplicate("/nix/store/x.drv".into())), None);
        // A child the out-of-memory killer took, wrapped as a source the way callers wrap it.
        let oom = crate::nix::eval::EvalError::OomKilled(OomKilled { program: "nix-instantiate".into() });
        assert_eq!(transient_reason(&oom), Some("killed by the out-of-memory killer (OOM)"));
        // Text is never trusted: an error merely saying so is not a host error.
        let said = io::Error::other("Too many open files");
        assert_eq!(io_reason(&said), None);
    }
}
