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
pub use markdown::{escape_markdown, fence};

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
    fn short_shas() {
        assert_eq!(short_sha("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(short_sha(""), "");
        // Multi-byte characters never split (a byte slice at 12 would panic here).
        assert_eq!(short_sha("ééééééééééééé"), "éééééééééééé");
        assert_eq!(short_sha("01234567890é"), "01234567890é");
    }
}
