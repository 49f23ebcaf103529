//! The `@eka-ci` pull request comment commands: the parser, pure and total over any comment text.
//!
//! Rules (docs/merge.md, "Parsing"): a command is a line whose first non-whitespace token is the
//! mention `@eka-ci` (ASCII case-insensitive, the whole token), immediately followed by the verb.
//! `merge` is the one verb: `@eka-ci merge` (no method), `@eka-ci merge merge|squash|rebase` (a method)
//! and `@eka-ci merge cancel`. Verb and method are case-insensitive; an unknown method falls back to a
//! bare `merge`, and tokens after the method are ignored. A line with another verb (`@eka-ci rebuild`)
//! is not a command. The first line that is a command wins; every other line is prose. This module
//! never talks to GitHub or the store: the GitHub service decides what a command does.

use crate::config::MergeMethod;

/// The mention a command line starts with.
pub const MENTION: &str = "@eka-ci";

/// A command found in a comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `@eka-ci merge [method]`: merge once the gate is green, with this method if one was given.
    Merge(Option<MergeMethod>),
    /// `@eka-ci merge cancel`.
    Cancel,
}

/// The first command in `body`, if any line is one.
pub fn parse(body: &str) -> Option<Command> {
    body.lines().find_map(parse_line)
}

fn parse_line(line: &str) -> Option<Command> {
    let mut tokens = line.split_whitespace();
    if !tokens.next()?.eq_ignore_ascii_case(MENTION) {
        return None;
    }
    if !tokens.next()?.eq_ignore_ascii_case("merge") {
        return None;
    }
    let method = match tokens.next() {
        None => None,
        Some(t) if t.eq_ignore_ascii_case("cancel") => return Some(Command::Cancel),
        Some(t) if t.eq_ignore_ascii_case("merge") => Some(MergeMethod::Merge),
        Some(t) if t.eq_ignore_ascii_case("squash") => Some(MergeMethod::Squash),
        Some(t) if t.eq_ignore_ascii_case("rebase") => Some(MergeMethod::Rebase),
        // An unknown method (a typo) still queues a merge, with the default method.
        Some(_) => None,
    };
    Some(Command::Merge(method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Command::{Cancel, Merge};
    use MergeMethod::{Rebase, Squash};

    #[test]
    fn the_documented_parsing_table() {
        let rows: &[(&str, Option<Command>)] = &[
            ("@eka-ci merge", Some(Merge(None))),
            ("@eka-ci merge merge", Some(Merge(Some(MergeMethod::Merge)))),
            ("@eka-ci merge squash", Some(Merge(Some(Squash)))),
            ("@eka-ci merge rebase", Some(Merge(Some(Rebase)))),
            ("@eka-ci merge cancel", Some(Cancel)),
            // The mention, the verb and the method are case-insensitive.
            ("@Eka-CI merge", Some(Merge(None))),
            ("@EKA-CI MERGE SQUASH", Some(Merge(Some(Squash)))),
            ("@eka-ci Merge Cancel", Some(Cancel)),
            // Whitespace before the mention and between tokens.
            ("   \t@eka-ci   merge \t rebase  ", Some(Merge(Some(Rebase)))),
            // Unknown methods fall back to a bare merge; trailing words are ignored.
            ("@eka-ci merge squashh", Some(Merge(None))),
            ("@eka-ci merge squash please thanks", Some(Merge(Some(Squash)))),
            ("@eka-ci merge cancel now", Some(Cancel)),
            // Unknown verbs, a missing verb and mentions in prose are not commands.
            ("@eka-ci rebuild", None),
            ("@eka-ci retry merge", None),
            ("@eka-ci", None),
            ("cc @eka-ci merge", None),
            ("please @eka-ci merge", None),
            ("@eka-ci: merge", None),
            ("@eka-ci-bot merge", None),
            ("@eka-cimerge", None),
            ("`@eka-ci merge`", None),
            ("> @eka-ci merge", None),
            ("", None),
        ];
        for (body, want) in rows {
            assert_eq!(parse(body), *want, "{body:?}");
        }
    }

    #[test]
    fn the_first_command_line_wins_and_other_lines_are_prose() {
        assert_eq!(
            parse("LGTM after the last round.\n@eka-ci merge rebase\nThanks!"),
            Some(Merge(Some(Rebase)))
        );
        assert_eq!(parse("@eka-ci merge squash\n@eka-ci merge cancel"), Some(Merge(Some(Squash))));
        assert_eq!(parse("Hold on.\r\n@eka-ci merge cancel\r\n"), Some(Cancel));
        assert_eq!(parse("@eka-ci rebuild\n@eka-ci merge"), Some(Merge(None)), "unknown verbs are skipped");
        assert_eq!(parse("cc @eka-ci merge\nnothing here"), None);
    }

    #[test]
    fn any_text_parses_without_panicking() {
        for body in
            ["\u{0}@eka-ci merge", "@eka-ci\u{a0}merge", "é@eka-ci merge", &"@eka-ci merge ".repeat(10_000)]
        {
            let _ = parse(body);
        }
        // A non-breaking space is whitespace to Rust's `split_whitespace`.
        assert_eq!(parse("@eka-ci\u{a0}merge"), Some(Merge(None)));
    }
}
