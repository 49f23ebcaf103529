//! Explains attributes whose `builtins.tryEval` failed, many per process: a long-lived `nix repl` session
//! evaluates each one without the guard and prints Nix's own error message, then carries on.
//!
//! `tryEval` loses the message of a `throw` or `assert`, and a `nix-instantiate` process ends at its first
//! error, so explaining one failure used to cost one process that imported the job again (on nixpkgs,
//! thousands of broken, unfree and unsupported packages). `nix repl` survives evaluation errors: one
//! session imports the job once and explains every attribute of its share, each followed by a marker
//! (`builtins.trace "<random token>-<n>"`) on standard error that ends the attribute's output. The token is
//! random per session, so the evaluated (untrusted) code cannot forge a marker. Everything Nix printed on
//! standard error between two markers is the attribute's output; its message starts at the first line
//! that begins with `error:`. Standard output (values, prompts) is discarded.
//!
//! A session that dies (our memory cap, a crash, an error the repl cannot survive such as a stack
//! overflow) is restarted after the attribute it was on, if that attribute was the first of the session
//! (then it gets the failure as its message), and *at* that attribute otherwise (memory grows with every
//! attribute a session evaluates, so the culprit may be the accumulated total, not the attribute).

use std::cell::Cell;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::nix::eval::nix_error_message;
use crate::nix::process::builders::read_oom_kills;
use crate::nix::process::host::OomKilled;
use crate::nix::process::{watch_memory, Pipe, ProcessError, SupervisedChild};

/// Why no explanation came out of the repl.
#[derive(Debug)]
pub(crate) enum ExplainError {
    /// No session could be started or load the job: the caller explains the slow way.
    Unavailable(ProcessError),
    /// The kernel's out-of-memory killer ended a session: the host's trouble, not the attribute's.
    OomKilled(OomKilled),
}

/// How one attribute fared in the repl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Explained {
    /// Nix's error message for the attribute.
    Message(String),
    /// The attribute evaluated without error outside `tryEval` (or no message could be found): the caller
    /// evaluates it the slow way, which decides.
    NoError,
}

/// The bytes of standard error kept per attribute: the message is at the end, just before the marker.
const TAIL: usize = 64 << 10;

/// A session: how to start `nix repl`, the line that loads the explainer, and the memory cap.
pub(crate) struct Session<'a> {
    /// Builds the `nix repl` command (restriction options, working directory).
    pub command: &'a dyn Fn() -> std::process::Command,
    /// The Nix line that binds `ekaCiExplain` to a set whose `ex n` evaluates item `n` of the share.
    pub load: String,
    /// Kill the session's process group above this many bytes of resident memory.
    pub memory_limit_bytes: Option<u64>,
    /// The message for an attribute that alone makes a fresh session exceed the cap.
    pub memory_message: String,
}

/// Explains items `0..count` of the share loaded by `session.load`; `Err` only when no session could be
/// started (the caller then explains the slow way).
pub(crate) async fn explain(session: &Session<'_>, count: usize) -> Result<Vec<Explained>, ExplainError> {
    let mut results = Vec::with_capacity(count);
    while results.len() < count {
        let start = results.len();
        let ended =
            run_session(session, start, count, &mut results).await.map_err(ExplainError::Unavailable)?;
        match ended {
            SessionEnd::Done => {}
            SessionEnd::OomKilled(killed) => return Err(ExplainError::OomKilled(killed)),
            SessionEnd::Died { at, message } => {
                if at == start {
                    results.push(Explained::Message(message));
                }
                // Otherwise the next session starts at `at` again.
            }
            SessionEnd::LoadFailed(message) => {
                tracing::debug!(%message, "the explaining repl could not load the job");
                return Err(ExplainError::Unavailable(ProcessError::Spawn {
                    program: "nix".to_string(),
                    source: std::io::Error::other(message),
                }));
            }
        }
    }
    Ok(results)
}

enum SessionEnd {
    Done,
    /// The process ended (or was killed) while on item `at`.
    Died {
        at: usize,
        message: String,
    },
    LoadFailed(String),
    OomKilled(OomKilled),
}

/// A random marker token, unguessable by the evaluated code (also the built-in evaluator's walk marker).
pub(crate) fn token() -> String {
    let mut bytes = [0u8; 16];
    let random =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&nanos.to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("ekaci-explained-{hex}")
}

async fn run_session(
    session: &Session<'_>,
    start: usize,
    count: usize,
    results: &mut Vec<Explained>,
) -> Result<SessionEnd, ProcessError> {
    let oom_before = smol::unblock(read_oom_kills).await;
    let mut child = SupervisedChild::spawn((session.command)(), Pipe::Piped, Pipe::Null, Pipe::Piped)?;
    let pgid = i32::try_from(child.pid()).unwrap_or(0);
    let (Some(mut stdin), Some(mut stderr)) = (child.take_stdin(), child.take_stderr()) else {
        child.kill_group();
        let _ = child.wait().await;
        return Ok(SessionEnd::LoadFailed("nix repl: no pipes".to_string()));
    };
    let token = token();
    let peak = Cell::new(0u64);
    let mut reader = MarkerReader { buf: Vec::new() };

    let work = async {
        // An assignment is lazy: force the binding so that a broken load shows here, not at every item.
        let load = format!(
            "{}\nbuiltins.seq ekaCiExplain null\nbuiltins.trace \"{token}-load\" null\n",
            session.load
        );
        if stdin.write_all(load.as_bytes()).await.is_err() {
            return Ok(SessionEnd::Died { at: start, message: "nix repl exited while starting".to_string() });
        }
        match reader.until(&mut stderr, &format!("{token}-load")).await {
            Some(out) => {
                if let Some(message) = repl_message(&out) {
                    return Ok(SessionEnd::LoadFailed(message));
                }
            }
            None => {
                let message = repl_message(&reader.buf).unwrap_or_else(|| "nix repl exited".to_string());
                return Ok(SessionEnd::LoadFailed(message));
            }
        }
        for n in start..count {
            let line =
                format!("builtins.seq (ekaCiExplain.ex {n}) null\nbuiltins.trace \"{token}-{n}\" null\n");
            if stdin.write_all(line.as_bytes()).await.is_err() {
                return Ok(died(n, &reader.buf));
            }
            match reader.until(&mut stderr, &format!("{token}-{n}")).await {
                Some(out) => results.push(match repl_message(&out) {
                    Some(message) => Explained::Message(message),
                    None => Explained::NoError,
                }),
                None => return Ok(died(n, &reader.buf)),
            }
        }
        Ok::<_, ProcessError>(SessionEnd::Done)
    };
    let ended = match session.memory_limit_bytes {
        Some(limit) => {
            futures_lite::future::or(work, async {
                watch_memory(pgid, limit, Duration::from_millis(50), &peak).await;
                Ok(SessionEnd::Died { at: usize::MAX, message: session.memory_message.clone() })
            })
            .await?
        }
        None => work.await?,
    };
    child.kill_group();
    let status = child.wait().await;
    // The memory watcher does not know which item was running: it is the next one without a result.
    Ok(match ended {
        SessionEnd::Died { at: usize::MAX, message } => SessionEnd::Died { at: results.len(), message },
        SessionEnd::Died { at, message } => {
            // Ended by itself (end of file on standard error): the kernel's OOM killer is host trouble.
            let killed = match status {
                Ok(status) => smol::unblock(move || OomKilled::check("nix", &status, oom_before)).await,
                Err(_) => None,
            };
            match killed {
                Some(killed) => SessionEnd::OomKilled(killed),
                None => SessionEnd::Died { at, message },
            }
        }
        other => other,
    })
}

fn died(n: usize, buf: &[u8]) -> SessionEnd {
    let message =
        repl_message(buf).unwrap_or_else(|| "nix repl exited while evaluating this attribute".to_string());
    SessionEnd::Died { at: n, message }
}

/// Nix's error message in an attribute's output, if it has a line starting with `error:` (the repl's
/// banner and `trace:` lines are not errors).
pub(crate) fn repl_message(out: &[u8]) -> Option<String> {
    let text = crate::text::strip_ansi(&String::from_utf8_lossy(out));
    text.lines().any(|l| l.starts_with("error:")).then(|| nix_error_message(out))
}

/// Reads standard error up to a marker line, keeping at most [`TAIL`] bytes of what came before it.
struct MarkerReader {
    buf: Vec<u8>,
}

impl MarkerReader {
    /// The output before the line `trace: <marker>`, or `None` at end of file (`buf` then holds the tail).
    async fn until(
        &mut self,
        stderr: &mut (impl futures_lite::AsyncRead + Unpin),
        marker: &str,
    ) -> Option<Vec<u8>> {
        let needle = format!("trace: {marker}\n");
        let mut chunk = [0u8; 8192];
        loop {
            // The marker must be a whole line.
            if let Some(pos) = find_line(&self.buf, needle.as_bytes()) {
                let rest = self.buf.split_off(pos + needle.len());
                let mut before = std::mem::replace(&mut self.buf, rest);
                before.truncate(pos);
                return Some(before);
            }
            let n = match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.len() > 2 * TAIL {
                let cut = self.buf.len() - TAIL;
                self.buf.drain(..cut);
            }
        }
    }
}

/// The first position of `needle` in `haystack` at the start of a line.
fn find_line(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .position(|(i, w)| w == needle && (i == 0 || haystack[i - 1] == b'\n'))
}

/// A Nix string literal for `s` (paths we created; never user data).
pub(crate) fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_markers_at_line_starts() {
        let input: &[u8] = b"Welcome\nerror: boom\n  at x\ntrace: M-1\nfake trace: M-2\ntrace: M-2\n";
        let mut stream = futures_lite::io::Cursor::new(input.to_vec());
        let mut reader = MarkerReader { buf: Vec::new() };
        let first = smol::block_on(reader.until(&mut stream, "M-1")).expect("marker");
        assert_eq!(first, b"Welcome\nerror: boom\n  at x\n");
        let second = smol::block_on(reader.until(&mut stream, "M-2")).expect("marker");
        assert_eq!(second, b"fake trace: M-2\n");
        assert_eq!(smol::block_on(reader.until(&mut stream, "M-3")), None);
    }

    #[test]
    fn quotes_nix_strings() {
        assert_eq!(nix_string("/tmp/a\"b${c}\\"), "\"/tmp/a\\\"b\\${c}\\\\\"");
    }

    /// A real `nix repl`: messages for throw and assert, none for a good value, a restart after a crash
    /// (stack overflow ends the repl), and the crash's message for the attribute that caused it.
    #[test]
    fn explains_many_attributes_in_one_session_and_survives_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("items.nix");
        std::fs::write(
            &file,
            "{ ex = i: builtins.elemAt [ (throw \"eka-ci: first\") 2 (assert 1 == 2; 3) \
             (let f = x: 1 + f x; in f 0) (throw \"eka-ci: after the crash\") ] i; }\n",
        )
        .expect("write");
        let path = file.to_str().expect("utf-8 path").to_string();
        let command = || {
            let mut cmd = std::process::Command::new("nix");
            cmd.args(["--extra-experimental-features", "nix-command", "repl"]);
            cmd
        };
        let session = Session {
            command: &command,
            load: format!("ekaCiExplain = import (/. + {})", nix_string(&path)),
            memory_limit_bytes: Some(1 << 30),
            memory_message: "over".to_string(),
        };
        let results = smol::block_on(explain(&session, 5)).expect("a session");
        let message = |i: usize| match &results[i] {
            Explained::Message(m) => m.clone(),
            other => panic!("{i}: {other:?}"),
        };
        assert!(message(0).starts_with("error: eka-ci: first"), "{}", message(0));
        assert_eq!(results[1], Explained::NoError);
        assert!(message(2).contains("assertion"), "{}", message(2));
        assert!(message(3).contains("stack overflow"), "{}", message(3));
        assert!(message(4).starts_with("error: eka-ci: after the crash"), "{}", message(4));

        let broken = Session { load: "ekaCiExplain = import /no/such/file.nix".to_string(), ..session };
        assert!(smol::block_on(explain(&broken, 1)).is_err());
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token(), token());
    }
}
