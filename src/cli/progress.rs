//! One updating progress line on stderr, drawn only when stderr is a terminal.

use std::io::{IsTerminal, Write};

use crate::control::Progress;

pub struct Line {
    enabled: bool,
    drawn: bool,
}

impl Line {
    /// A progress line; `wanted = false` (e.g. `--json`) or a non-terminal stderr disables it.
    pub fn new(wanted: bool) -> Line {
        Line { enabled: wanted && std::io::stderr().is_terminal(), drawn: false }
    }

    pub fn update(&mut self, p: &Progress) {
        if !self.enabled {
            return;
        }
        let text = if p.total > 0 {
            format!("{}: {}/{} attributes", p.stage, p.done, p.total)
        } else {
            format!("{}…", p.stage)
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears the line so that the result prints on a clean terminal.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}
