//! Build-log text to HTML for the web UI: ANSI SGR colour codes become `<span class="…">`, every other
//! escape sequence and control character is dropped, and everything is HTML-escaped (maud escapes the
//! text; this module only decides the spans). Pure functions.

/// One run of text with the style in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Styled {
    /// Space-separated CSS classes (`b`, `fg1`…`fg7`, `bg1`…`bg7`, bright `fg9`…`fg15`); empty: plain.
    pub classes: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    fg: Option<u8>,
    bg: Option<u8>,
}

impl Style {
    fn classes(&self) -> String {
        let mut c = Vec::new();
        if self.bold {
            c.push("b".to_string());
        }
        if let Some(f) = self.fg {
            c.push(format!("fg{f}"));
        }
        if let Some(b) = self.bg {
            c.push(format!("bg{b}"));
        }
        c.join(" ")
    }

    /// Applies one SGR parameter list (`1;31`).
    fn apply(&mut self, params: &str) {
        let codes: Vec<u16> = params.split(';').map(|p| p.parse().unwrap_or(0)).collect();
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                22 => self.bold = false,
                c @ 30..=37 => self.fg = Some((c - 30) as u8),
                39 => self.fg = None,
                c @ 40..=47 => self.bg = Some((c - 40) as u8),
                49 => self.bg = None,
                c @ 90..=97 => self.fg = Some((c - 90 + 8) as u8),
                c @ 100..=107 => self.bg = Some((c - 100 + 8) as u8),
                // 256-colour and true-colour forms: skip their arguments, keep the rest.
                38 | 48 => {
                    i += match codes.get(i + 1) {
                        Some(5) => 2,
                        Some(2) => 4,
                        _ => 0,
                    };
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// Splits one line into styled runs, carrying `state` (the style at the line's start) to the next line.
fn line_runs(line: &str, style: &mut Style) -> Vec<Styled> {
    let mut runs: Vec<Styled> = Vec::new();
    let mut text = String::new();
    let flush = |runs: &mut Vec<Styled>, text: &mut String, style: &Style| {
        if !text.is_empty() {
            runs.push(Styled { classes: style.classes(), text: std::mem::take(text) });
        }
    };
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    let mut params = String::new();
                    let mut end = None;
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            end = Some(c);
                            break;
                        }
                        params.push(c);
                    }
                    if end == Some('m') {
                        flush(&mut runs, &mut text, style);
                        style.apply(&params);
                    }
                }
                // OSC (`ESC ] … BEL` or `ESC ] … ESC \`): dropped whole.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.peek() == Some(&'\\')) {
                            if c == '\u{1b}' {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                _ => {
                    chars.next();
                }
            }
        } else if c == '\t' || !c.is_control() {
            text.push(c);
        }
    }
    flush(&mut runs, &mut text, style);
    runs
}

/// The styled runs of every line of `log` (split on `\n`; a trailing `\r` and lone `\r`s are dropped).
pub fn lines(log: &str) -> Vec<Vec<Styled>> {
    let mut style = Style::default();
    let mut out: Vec<Vec<Styled>> = log.split('\n').map(|l| line_runs(l, &mut style)).collect();
    if log.ends_with('\n') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(classes: &str, text: &str) -> Styled {
        Styled { classes: classes.into(), text: text.into() }
    }

    #[test]
    fn colours_become_classes() {
        let l = lines("plain \u{1b}[1;31merror:\u{1b}[0m done\n\u{1b}[32mok");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0], vec![run("", "plain "), run("b fg1", "error:"), run("", " done")]);
        assert_eq!(l[1], vec![run("fg2", "ok")]);
    }

    #[test]
    fn style_carries_across_lines_and_resets() {
        let l = lines("\u{1b}[33mone\ntwo\u{1b}[39m three\n");
        assert_eq!(l, vec![vec![run("fg3", "one")], vec![run("fg3", "two"), run("", " three")]]);
    }

    #[test]
    fn other_escapes_and_controls_are_dropped() {
        let l = lines("a\u{1b}[2Kb\u{1b}]8;;http://x\u{7}c\r\u{7}\u{0}\td\u{1b}[38;5;196me");
        assert_eq!(l, vec![vec![run("", "abc\td"), run("", "e")]]);
        // Markup is text here; maud escapes it when rendering.
        assert_eq!(lines("<script>"), vec![vec![run("", "<script>")]]);
        assert_eq!(lines("\u{1b}[91;44mx"), vec![vec![run("fg9 bg4", "x")]]);
    }
}
