//! One home for handling text that reaches people: escaping untrusted text for GitHub-flavoured Markdown
//! ([`markdown`]), cutting text on character boundaries ([`cut`]), removing terminal escape sequences
//! ([`ansi`]) and shortening commit SHAs ([`short_sha`]). Calendar times (RFC 3339) live in
//! [`crate::time`]; store paths in [`crate::nix::store_path`].
//!
//! Everything here is a pure function over `&str`: nothing panics on any input (a webhook's SHA, a
//! repository's job name and a builder's log line are all untrusted), and every function is tested once,
//! here, rather than at each caller.

pub mod ansi;
pub mod cut;
pub mod markdown;

pub use ansi::strip_ansi;
pub use cut::{
    bound_bytes, ellipsis_bytes, ellipsis_chars, ellipsis_tail_chars, floor_char_boundary, prefix_bytes,
    prefix_chars, suffix_chars,
};
pub use markdown::{cell_code_span, code_span, escape_markdown, fence};

/// Marks where [`bounded_str`] and [`bounded_output`] cut.
pub const CUT_MARKER: &str = " […]";

/// `text` cut to at most `max_bytes` bytes on a character boundary, [`CUT_MARKER`] included when cut.
pub fn bounded_str(text: &str, max_bytes: usize) -> String {
    bound_bytes(text, max_bytes, CUT_MARKER)
}

/// Raw child output as displayable text: decoded lossily (invalid UTF-8 becomes U+FFFD), terminal escapes
/// stripped, trimmed, and cut like [`bounded_str`].
pub fn bounded_output(bytes: &[u8], max_bytes: usize) -> String {
    bounded_str(strip_ansi(&String::from_utf8_lossy(bytes)).trim(), max_bytes)
}

/// How many characters of a commit SHA people are shown.
pub const SHORT_SHA_CHARS: usize = 12;

/// The first [`SHORT_SHA_CHARS`] characters of `sha` (all of it when shorter). A SHA from a webhook is
/// untrusted: this cuts on a character boundary, so it never panics.
pub fn short_sha(sha: &str) -> &str {
    prefix_chars(sha, SHORT_SHA_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_output_becomes_bounded_text() {
        let long = "€".repeat(2000);
        let b = bounded_output(long.as_bytes(), 4096);
        assert!(b.len() <= 4096, "{}", b.len());
        assert!(b.ends_with(CUT_MARKER));
        assert_eq!(bounded_output(b"  short \n", 4096), "short");
        assert_eq!(bounded_output(b"\x1b[31merror:\x1b[0m x", 100), "error: x");
        // Invalid UTF-8 is replaced, not an error.
        assert_eq!(bounded_output(b"a\xffb", 100), "a\u{fffd}b");
        assert_eq!(bounded_str("abc", 3), "abc");
    }

    #[test]
    fn short_shas() {
        assert_eq!(short_sha("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(short_sha(""), "");
        // Multi-byte characters never split (a byte slice at 12 would panic here).
        assert_eq!(short_sha("ééééééééééééé"), "éééééééééééé");
        assert_eq!(short_sha("01234567890é"), "01234567890é");
    }
}
