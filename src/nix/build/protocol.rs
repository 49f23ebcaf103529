//! Nix's `internal-json` log protocol, as `nix-build --log-format internal-json` writes it on stderr:
//! reading bounded lines from the child, parsing each line into a [`NixLine`], and classifying Nix's error
//! messages by the derivation they name ([`classify_message`]). Pure parsing: it never decides an outcome,
//! never writes a log and never touches the child (the batch driver does all of that).
//!
//! The observed forms are listed in the documentation of the parent module.

use futures_lite::io::AsyncBufReadExt;
use serde::Deserialize;
use serde_json::Value;
use std::io;

use crate::text::strip_ansi;

// Nix's activity and result types (`src/libutil/logging.hh`).
pub(super) const ACT_BUILDS: u64 = 104;
pub(super) const ACT_BUILD: u64 = 105;
pub(super) const RES_BUILD_LOG_LINE: u64 = 101;
pub(super) const RES_PROGRESS: u64 = 105;
pub(super) const RES_POST_BUILD_LOG_LINE: u64 = 107;

/// One stderr line of `nix-build --log-format internal-json`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum NixLine {
    Start {
        id: u64,
        kind: u64,
        fields: Vec<Value>,
    },
    Stop {
        id: u64,
    },
    Result {
        id: u64,
        kind: u64,
        fields: Vec<Value>,
    },
    Msg {
        level: u64,
        msg: String,
    },
    /// A well-formed JSON line with an action we do not use (`setPhase`, future actions, …).
    Ignored,
    /// Anything else: kept as text of the batch log.
    Text(String),
}

#[derive(Deserialize)]
struct RawLine {
    action: String,
    #[serde(default)]
    id: u64,
    #[serde(default, rename = "type")]
    kind: u64,
    #[serde(default)]
    level: u64,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    fields: Vec<Value>,
}

/// Parses one line (without its newline). Lines without the `@nix ` prefix, and prefixed lines that are
/// not a JSON object of the expected shape, are [`NixLine::Text`]; unknown actions are ignored.
pub(super) fn parse_line(line: &[u8]) -> NixLine {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(json) = line.strip_prefix(b"@nix ") else {
        return NixLine::Text(String::from_utf8_lossy(line).into_owned());
    };
    let raw: RawLine = match serde_json::from_slice(json) {
        Ok(r) => r,
        Err(_) => return NixLine::Text(String::from_utf8_lossy(line).into_owned()),
    };
    match raw.action.as_str() {
        "start" => NixLine::Start { id: raw.id, kind: raw.kind, fields: raw.fields },
        "stop" => NixLine::Stop { id: raw.id },
        "result" => NixLine::Result { id: raw.id, kind: raw.kind, fields: raw.fields },
        "msg" => NixLine::Msg { level: raw.level, msg: raw.msg.unwrap_or_default() },
        _ => NixLine::Ignored,
    }
}

pub(super) fn field_str(fields: &[Value], i: usize) -> Option<&str> {
    fields.get(i).and_then(Value::as_str)
}

// ---------------------------------------------------------------------------------------------------------
// Message classification
// ---------------------------------------------------------------------------------------------------------

/// What an error message says about the derivation it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MsgKind {
    /// `builder for '…' failed with exit code N`
    ExitCode(i32),
    /// `builder for '…' failed due to signal N (Name)`
    Signal(i32),
    /// `building of '…!*' from .drv file timed out after N seconds of silence`
    Silence,
    /// `building of '…!*' from .drv file timed out after N seconds`
    Duration,
    /// `N dependencies of derivation '…' failed to build`
    DependenciesFailed,
    /// `a 'system' with features {…} is required to build '…', but I am a '…' with features {…}`
    NoBuilder,
    /// `build of '…', '…' failed`: the final summary, ignored.
    Summary,
    /// Any other error naming a derivation (missing output, hash mismatch, …).
    Other,
}

/// Removes ANSI escapes, surrounding blanks and a leading `error: `.
pub(super) fn clean_message(msg: &str) -> String {
    let text = strip_ansi(msg);
    let text = text.trim();
    text.strip_prefix("error:").map(str::trim_start).unwrap_or(text).to_string()
}

/// The quoted segments `'…'` of a message, in order.
fn quoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('\'').skip(1).step_by(2)
}

/// A quoted `.drv` path, without a `!outputs` suffix.
fn as_drv(segment: &str) -> Option<&str> {
    let path = segment.split('!').next().unwrap_or(segment);
    (path.starts_with('/') && path.ends_with(".drv")).then_some(path)
}

/// Classifies a cleaned error message (see [`clean_message`]) and returns the derivation it is about.
pub(super) fn classify_message(text: &str) -> Option<(String, MsgKind)> {
    if text.starts_with("build of ") && text.ends_with(" failed") {
        let drv = quoted(text).find_map(as_drv)?;
        return Some((drv.to_string(), MsgKind::Summary));
    }
    if let Some(rest) = text.strip_prefix("builder for '") {
        let (drv, tail) = rest.split_once('\'')?;
        let drv = as_drv(drv)?.to_string();
        let tail = tail.trim_start();
        if let Some(code) = tail.strip_prefix("failed with exit code ") {
            let code = code.split(|c: char| !c.is_ascii_digit() && c != '-').next().unwrap_or("");
            return Some((drv, code.parse().map(MsgKind::ExitCode).unwrap_or(MsgKind::Other)));
        }
        if let Some(sig) = tail.strip_prefix("failed due to signal ") {
            let sig = sig.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
            return Some((drv, sig.parse().map(MsgKind::Signal).unwrap_or(MsgKind::Other)));
        }
        return Some((drv, MsgKind::Other));
    }
    if text.starts_with("building of '") && text.contains(" timed out after ") {
        let drv = quoted(text).find_map(as_drv)?.to_string();
        let kind = if text.trim_end().ends_with("seconds of silence") {
            MsgKind::Silence
        } else {
            MsgKind::Duration
        };
        return Some((drv, kind));
    }
    if text.contains(" dependencies of derivation '") && text.ends_with("failed to build") {
        let drv = quoted(text).find_map(as_drv)?.to_string();
        return Some((drv, MsgKind::DependenciesFailed));
    }
    if text.starts_with("a '") {
        if let Some((_, rest)) = text.split_once(" is required to build '") {
            let drv = rest.split('\'').next().and_then(as_drv)?.to_string();
            return Some((drv, MsgKind::NoBuilder));
        }
    }
    let drv = quoted(text).find_map(as_drv)?.to_string();
    Some((drv, MsgKind::Other))
}

/// What an unattributed error of a batch on a remote machine says about the connection to it: `Some(true)`
/// when it was lost with a build running (the hook's connection broke: that build's failure follows),
/// `Some(false)` when the machine could not be reached at all (`cannot build on '…': …`), `None` for
/// anything else. Only Nix's own `msg` lines reach this, never a builder's output.
pub(super) fn connection_error(text: &str) -> Option<bool> {
    if text.starts_with("cannot build on '") {
        return Some(false);
    }
    const LOST: &[&str] = &[
        "unexpected end-of-file",
        "Broken pipe",
        "Connection reset by peer",
        "Connection closed",
        "cannot open connection to remote store",
    ];
    LOST.iter().any(|m| text.contains(m)).then_some(true)
}

/// Reads one line into `buf` (without its newline), keeping at most `max` bytes of it. Returns `false` at
/// the end of input. Cancel-safe: a partial line stays in `buf` (and `overflow`) for the next call.
pub(super) async fn read_line<R: futures_lite::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    overflow: &mut bool,
    max: usize,
) -> io::Result<bool> {
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(!buf.is_empty() || std::mem::take(overflow));
        }
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        if chunk.len() > room {
            *overflow = true;
        }
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        r.consume(used);
        if done {
            *overflow = false;
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::io::BufReader;

    use super::*;

    const DRV: &str = "/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv";

    // Real lines captured from `nix-build --log-format internal-json` (Nix 2.8.0).
    const CAPTURED: &[&str] = &[
        r#"@nix {"action":"start","fields":["/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv","",1,1],"id":59352153063430,"level":3,"text":"building '/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv'","type":105}"#,
        r#"@nix {"action":"result","fields":["failing"],"id":59352153063430,"type":101}"#,
        r#"@nix {"action":"result","fields":[1,3,0,1],"id":59352153063426,"type":105}"#,
        r#"@nix {"action":"stop","id":59352153063430}"#,
        r#"@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,"msg":"\u001b[31;1merror:\u001b[0m builder for '\u001b[35;1m/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv\u001b[0m' failed with exit code 3","raw_msg":"builder for '\u001b[35;1m/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv\u001b[0m' failed with exit code 3"}"#,
        r#"@nix {"action":"start","id":59352153063424,"level":6,"text":"querying info about missing paths","type":0}"#,
        r#"@nix {"action":"setPhase","id":1,"phase":"x"}"#,
    ];

    #[test]
    fn parses_captured_lines() {
        let parsed: Vec<NixLine> = CAPTURED.iter().map(|l| parse_line(l.as_bytes())).collect();
        match &parsed[0] {
            NixLine::Start { id, kind: ACT_BUILD, fields } => {
                assert_eq!(*id, 59352153063430);
                assert_eq!(field_str(fields, 0), Some(DRV));
                assert_eq!(field_str(fields, 1), Some(""));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&parsed[1], NixLine::Result { kind: RES_BUILD_LOG_LINE, fields, .. } if field_str(fields, 0) == Some("failing"))
        );
        assert!(
            matches!(&parsed[2], NixLine::Result { kind: RES_PROGRESS, fields, .. } if fields[0].as_u64() == Some(1))
        );
        assert_eq!(parsed[3], NixLine::Stop { id: 59352153063430 });
        match &parsed[4] {
            NixLine::Msg { level: 0, msg } => {
                let text = clean_message(msg);
                assert_eq!(text, format!("builder for '{DRV}' failed with exit code 3"));
                assert_eq!(classify_message(&text), Some((DRV.to_string(), MsgKind::ExitCode(3))));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parsed[5], NixLine::Start { kind: 0, .. }));
        assert_eq!(parsed[6], NixLine::Ignored);
    }

    #[test]
    fn malformed_lines_are_text() {
        for (line, text) in [
            (&b"warning: something"[..], "warning: something"),
            (b"@nix {not json", "@nix {not json"),
            (b"@nix [1,2]", "@nix [1,2]"),
            (b"@nix {\"id\":1}", "@nix {\"id\":1}"),
            (b"@nix {\"action\":\"stop\",\"id\":\"x\"}", "@nix {\"action\":\"stop\",\"id\":\"x\"}"),
            (b"\xff\xfe raw\r", "\u{fffd}\u{fffd} raw"),
        ] {
            assert_eq!(parse_line(line), NixLine::Text(text.to_string()));
        }
        // Unknown fields are ignored; missing ones default.
        assert_eq!(parse_line(b"@nix {\"action\":\"stop\",\"id\":7,\"new\":true}"), NixLine::Stop { id: 7 });
        assert_eq!(parse_line(b"@nix {\"action\":\"future\"}"), NixLine::Ignored);
    }

    #[test]
    fn classifies_observed_messages() {
        let d = "/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv";
        let cases: &[(&str, MsgKind)] = &[
            ("\u{1b}[31;1merror:\u{1b}[0m builder for '\u{1b}[35;1m/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv\u{1b}[0m' failed due to signal 9 (Killed)", MsgKind::Signal(9)),
            ("error: builder for '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv' failed due to signal 15 (Terminated)", MsgKind::Signal(15)),
            ("error: builder for '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv' failed to produce output path for output 'out' at '/nix/store/q92f920dp8v694lhkhli2bjs0mzxw4pd-noout'", MsgKind::Other),
            ("\u{1b}[31;1merror:\u{1b}[0m \u{1b}[35;1mbuilding of '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv!*' from .drv file\u{1b}[0m timed out after \u{1b}[35;1m2\u{1b}[0m seconds of silence", MsgKind::Silence),
            ("error: building of '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv!*' from .drv file timed out after 3 seconds", MsgKind::Duration),
            ("\u{1b}[31;1merror:\u{1b}[0m \u{1b}[35;1m1\u{1b}[0m dependencies of derivation '\u{1b}[35;1m/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv\u{1b}[0m' failed to build", MsgKind::DependenciesFailed),
            ("error: hash mismatch in fixed-output derivation '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv':\n  specified: sha256-AAAA=\n     got:    sha256-c8s4=", MsgKind::Other),
            ("\u{1b}[31;1merror:\u{1b}[0m a '\u{1b}[35;1maarch64-darwin\u{1b}[0m' with features {\u{1b}[35;1m\u{1b}[0m} is required to build '\u{1b}[35;1m/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv\u{1b}[0m', but I am a '\u{1b}[35;1mx86_64-linux\u{1b}[0m' with features {\u{1b}[35;1mbenchmark, big-parallel, kvm, nixos-test\u{1b}[0m}", MsgKind::NoBuilder),
            ("error: build of '/nix/store/91wjvlzmgakll6yvz9ij4dr2d6q42shf-s.drv', '/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-f.drv' failed", MsgKind::Summary),
        ];
        for (msg, kind) in cases {
            let text = clean_message(msg);
            assert_eq!(classify_message(&text), Some((d.to_string(), *kind)), "{text}");
        }
        assert_eq!(classify_message(&clean_message("error: interrupted by the user")), None);
        assert_eq!(classify_message("builder for 'nonsense' failed"), None);
        assert_eq!(
            classify_message(&format!("builder for '{DRV}' failed with exit code x")),
            Some((DRV.to_string(), MsgKind::Other))
        );
    }

    #[test]
    fn tells_a_lost_connection_from_a_build_failure() {
        // Observed with Debian's Nix 2.8 and an ssh-ng:// machine killed during a build, and unreachable.
        let lost = clean_message("\u{1b}[31;1merror:\u{1b}[0m unexpected end-of-file");
        assert_eq!(connection_error(&lost), Some(true));
        assert_eq!(classify_message(&lost), None, "names no derivation");
        let unreachable = clean_message(
            "cannot build on 'ssh-ng://b1': \u{1b}[31;1merror:\u{1b}[0m cannot open connection to remote \
             store 'ssh-ng://b1': error: unexpected end-of-file",
        );
        assert_eq!(connection_error(&unreachable), Some(false));
        assert_eq!(classify_message(&unreachable), None);
        // The failure that follows a lost build looks like any remote failure: only the order tells.
        let failed = clean_message(&format!("error: builder for '{DRV}' failed with exit code 1"));
        assert_eq!(connection_error(&failed), None);
        assert_eq!(
            connection_error(
                "unable to start any build; remote machines may not have all required system features."
            ),
            None
        );
    }

    #[test]
    fn reads_bounded_cancel_safe_lines() {
        smol::block_on(async {
            let data: &[u8] = b"one\ntoo long line\nlast";
            let mut r = BufReader::with_capacity(4, data);
            let (mut buf, mut of) = (Vec::new(), false);
            let mut lines = Vec::new();
            while read_line(&mut r, &mut buf, &mut of, 8).await.expect("read") {
                lines.push(String::from_utf8_lossy(&buf).into_owned());
                buf.clear();
            }
            assert_eq!(lines, ["one", "too long", "last"]);
        });
    }
}
