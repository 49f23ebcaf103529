//! Removing terminal escape sequences from text a child process printed (Nix's coloured errors, a
//! builder's log, git's progress), so that what remains is plain text safe to show anywhere.

use std::iter::Peekable;
use std::str::Chars;

/// Removes terminal escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ESC \`, two- and three-byte
/// `ESC` sequences, the C1 CSI `U+009B`) and control characters other than newline and tab.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']') => skip_osc(&mut chars),
                Some(c) if ('\u{20}'..='\u{2f}').contains(&c) => {
                    // ESC, intermediates, one final byte (e.g. `ESC ( B`).
                    while chars.peek().is_some_and(|c| ('\u{20}'..='\u{2f}').contains(c)) {
                        chars.next();
                    }
                    chars.next();
                }
                _ => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Parameter and intermediate bytes, then one final byte in 0x40..=0x7e.
fn skip_csi(chars: &mut Peekable<Chars<'_>>) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) || !('\u{20}'..='\u{3f}').contains(&c) {
            break;
        }
    }
}

/// An operating-system command: until BEL or ST (`ESC \`).
fn skip_osc(chars: &mut Peekable<Chars<'_>>) {
    while let Some(c) = chars.next() {
        if c == '\u{7}' {
            break;
        }
        if c == '\u{1b}' {
            if chars.peek() == Some(&'\\') {
                chars.next();
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_escapes_and_controls() {
        let s = "\u{1b}[31;1merror:\u{1b}[0m bad\r\n\u{1b}]0;title\u{7}x\u{1b}(By\u{9b}2Kz\tw\u{0}";
        assert_eq!(strip_ansi(s), "error: bad\nxyz\tw");
        assert_eq!(strip_ansi("plain ünïcode"), "plain ünïcode");
        assert_eq!(strip_ansi("\u{1b}"), "");
        assert_eq!(strip_ansi("a\u{1b}[1"), "a");
        assert_eq!(strip_ansi("\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\"), "link");
        assert_eq!(strip_ansi("fatal: \u{1b}[1mrepository\u{1b}[m\r"), "fatal: repository");
    }
}
