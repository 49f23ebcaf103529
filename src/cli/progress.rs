//! Progress of a long request on stderr: one updating line when stderr is a terminal, plain lines
//! otherwise (when the stage changes, when an evaluation's first counts arrive, then at most one line
//! every [`PLAIN_INTERVAL`]).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::control::Progress;

/// At most one plain progress line per stage this often.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// How progress is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    /// One line redrawn in place (`\r`, erase line).
    Terminal,
    /// Plain lines, rate-limited.
    Plain,
}

pub struct Line {
    mode: Mode,
    drawn: bool,
    /// The stage of the last plain line, whether it had counts, and when it was printed.
    last: Option<(String, bool, Instant)>,
}

/// The text of a progress report, e.g. `evaluating main @ 3f2a1c0: listed 34,312, evaluated 30,100,
/// instantiated 27,900, errors 2,200`.
pub fn describe(p: &Progress) -> String {
    match (&p.counts, p.total) {
        (Some(c), _) => format!(
            "{}: listed {}, evaluated {}, instantiated {}, errors {}",
            p.stage,
            thousands(c.listed),
            thousands(c.evaluated),
            thousands(c.instantiated),
            thousands(c.errors)
        ),
        (None, 0) => format!("{}…", p.stage),
        (None, total) => format!("{}: {}/{} attributes", p.stage, thousands(p.done), thousands(total)),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Line {
    /// A progress line; `wanted = false` (e.g. `--json`) disables it. On a terminal the line updates in
    /// place; otherwise progress goes out as plain lines.
    pub fn new(wanted: bool) -> Line {
        let mode = match (wanted, std::io::stderr().is_terminal()) {
            (false, _) => Mode::Off,
            (true, true) => Mode::Terminal,
            (true, false) => Mode::Plain,
        };
        Line { mode, drawn: false, last: None }
    }

    pub fn update(&mut self, p: &Progress) {
        match self.mode {
            Mode::Off => {}
            Mode::Terminal => {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{}", describe(p));
                let _ = err.flush();
                self.drawn = true;
            }
            Mode::Plain => {
                let due = match &self.last {
                    None => true,
                    Some((stage, had_counts, at)) => {
                        *stage != p.stage
                            || (!had_counts && p.counts.is_some())
                            || at.elapsed() >= PLAIN_INTERVAL
                    }
                };
                if due {
                    self.last = Some((p.stage.clone(), p.counts.is_some(), Instant::now()));
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(err, "{}", describe(p));
                }
            }
        }
    }

    /// Clears the terminal line so that the result prints on a clean terminal.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::eval::EvalCounts;

    #[test]
    fn describes_counts_totals_and_stages() {
        let p =
            |done, total, counts| Progress { stage: "evaluating main @ 3f2a1c0".into(), done, total, counts };
        let counts = EvalCounts { listed: 34_312, evaluated: 1_000, instantiated: 999, errors: 1 };
        assert_eq!(
            describe(&p(0, 0, Some(counts))),
            "evaluating main @ 3f2a1c0: listed 34,312, evaluated 1,000, instantiated 999, errors 1"
        );
        assert_eq!(describe(&p(5, 1_234_567, None)), "evaluating main @ 3f2a1c0: 5/1,234,567 attributes");
        assert_eq!(describe(&p(0, 0, None)), "evaluating main @ 3f2a1c0…");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(1000), "1,000");
    }
}
