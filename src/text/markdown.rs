//! Escaping untrusted text (job and attribute names, Nix error messages, configuration paths, log
//! tails) for GitHub-flavoured Markdown: check-run summaries and the change summary. One
//! implementation, so every surface defuses the same things.

/// Escapes `text` so that it renders literally, on one line, inside GitHub-flavoured Markdown: every
/// ASCII punctuation character is backslash-escaped (no emphasis, links, tables, HTML or headings),
/// `@` and `#` get a zero-width space (no mentions, no issue references), line breaks and tabs become
/// spaces, and other control characters and the Unicode bidirectional overrides become U+FFFD.
pub fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for c in text.chars() {
        match c {
            // A zero-width space after `@`/`#` stops mentions and issue references.
            '@' => out.push_str("\\@&#8203;"),
            '#' => out.push_str("\\#&#8203;"),
            c if c.is_ascii_punctuation() => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if is_forbidden_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Control characters and the Unicode bidirectional overrides and isolates: never shown as they are
/// (and refused in names a repository configuration declares).
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` as one inline code span that shows it literally: the span's backtick fence is longer than any
/// run of backticks inside (so nothing inside can close it), line breaks and tabs become spaces, and
/// control characters and bidirectional overrides become U+FFFD. Inside a code span GitHub formats
/// nothing and links no mention, so no backslash escapes are needed (they would show).
pub fn code_span(text: &str) -> String {
    let mut content = String::with_capacity(text.len());
    let (mut run, mut longest) = (0usize, 0usize);
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
        match c {
            '\n' | '\r' | '\t' => content.push(' '),
            c if is_forbidden_char(c) => content.push('\u{FFFD}'),
            c => content.push(c),
        }
    }
    let fence = "`".repeat(longest + 1);
    // CommonMark strips one space from each end when both are present: pad a leading or trailing
    // backtick (or an all-space content) so it is shown as it is.
    let pad = content.starts_with('`') || content.ends_with('`') || content.trim().is_empty();
    let space = if pad { " " } else { "" };
    format!("{fence}{space}{content}{space}{fence}")
}

/// [`code_span`] for a table cell: GitHub splits a table row at every unescaped `|`, even inside a code
/// span, and shows an escaped one (`\|`) as `|`.
pub fn cell_code_span(text: &str) -> String {
    code_span(text).replace('|', "\\|")
}

/// Text for the inside of a fenced code block (three backticks): a run of backticks inside would close
/// it, so a zero-width space breaks every such run. Bidirectional overrides become U+FFFD; newlines stay.
pub fn fence(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut backticks = 0;
    for c in text.chars() {
        if c == '`' {
            backticks += 1;
            if backticks == 3 {
                out.push('\u{200b}');
                backticks = 1;
            }
            out.push(c);
            continue;
        }
        backticks = 0;
        match c {
            '\n' | '\t' => out.push(c),
            c if is_forbidden_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_renders_literally_on_one_line() {
        let md = escape_markdown("@everyone `x` <img src=x> [l](https://e) #1\n# H | *b* _i_ ~s~ \\");
        assert!(!md.contains('\n'));
        assert!(md.contains("\\@&#8203;everyone"));
        assert!(md.contains("\\#&#8203;1"));
        assert!(md.contains("\\`x\\`"));
        assert!(md.contains("\\<img src\\=x\\>"));
        assert!(md.contains("\\[l\\]\\(https\\:\\/\\/e\\)"));
        assert!(md.contains("\\| \\*b\\* \\_i\\_ \\~s\\~ \\\\"));
        // Apart from the zero-width-space entities, every ASCII punctuation character is escaped.
        let plain = md.replace("&#8203;", "").replace("\\\\", "");
        let bytes = plain.as_bytes();
        for (i, c) in plain.char_indices() {
            if c.is_ascii_punctuation() && c != '\\' {
                assert_eq!(bytes[i - 1], b'\\', "unescaped {c:?} at {i} in {plain}");
            }
        }
    }

    #[test]
    fn controls_and_bidi_overrides_are_replaced() {
        assert_eq!(escape_markdown("a\u{0}b\u{1b}c"), "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(escape_markdown("evil\u{202E}txt.exe"), "evil\u{FFFD}txt\\.exe");
        assert_eq!(escape_markdown("x\u{2066}y\u{2069}"), "x\u{FFFD}y\u{FFFD}");
        assert_eq!(escape_markdown("line\r\nnext\tcol"), "line  next col");
        assert_eq!(escape_markdown("plain ünïcode 漢字"), "plain ünïcode 漢字");
    }

    #[test]
    fn code_spans_show_their_text_literally() {
        assert_eq!(code_span("python3Packages.foo_bar"), "`python3Packages.foo_bar`");
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(code_span("``x"), "``` ``x ```");
        assert_eq!(code_span("x\ny"), "`x y`");
        assert_eq!(code_span("rtl\u{202E}"), "`rtl\u{FFFD}`");
        assert_eq!(code_span(""), "`  `");
        // Nothing inside closes the span early: the fence is longer than every run inside.
        let hostile = "``` `` ` @team <b>";
        let span = code_span(hostile);
        let fence_len = span.chars().take_while(|&c| c == '`').count();
        assert!(hostile.split(|c| c != '`').all(|run| run.len() < fence_len), "{span}");
    }

    #[test]
    fn cell_code_spans_keep_the_row_together() {
        assert_eq!(cell_code_span("big|x"), "`big\\|x`");
        assert_eq!(cell_code_span("a`|"), "``a`\\|``");
    }

    #[test]
    fn fences_cannot_be_closed_from_inside() {
        assert_eq!(fence("a```b"), "a``\u{200b}`b");
        assert_eq!(fence("``````"), "``\u{200b}``\u{200b}``");
        assert!(!fence(&"`".repeat(100)).contains("```"));
        assert_eq!(fence("two `` ok\nnext"), "two `` ok\nnext");
        assert_eq!(fence("rtl\u{202E}"), "rtl\u{FFFD}");
    }
}
