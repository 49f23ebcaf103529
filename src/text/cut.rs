//! Cutting text to a size without splitting a character: by bytes (storage and protocol limits) or by
//! characters (GitHub's limits count characters), keeping the beginning or the end (log tails).

/// The largest index `<= at` that is a character boundary of `s` (`s.len()` when `at` is past the end).
pub fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    let mut i = at;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a character boundary.
pub fn prefix_bytes(s: &str, max_bytes: usize) -> &str {
    &s[..floor_char_boundary(s, max_bytes)]
}

/// The first `max_chars` characters of `s` (all of it when shorter).
pub fn prefix_chars(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// The last `max_chars` characters of `s` (all of it when shorter).
pub fn suffix_chars(s: &str, max_chars: usize) -> &str {
    if max_chars == 0 {
        return &s[s.len()..];
    }
    match s.char_indices().nth_back(max_chars - 1) {
        Some((cut, _)) => &s[cut..],
        None => s,
    }
}

/// Marks where [`ellipsis_chars`], [`ellipsis_bytes`] and [`ellipsis_tail_chars`] cut.
pub const ELLIPSIS: char = '…';

/// `s` when it has at most `max_chars` characters, else its first `max_chars` characters and `…`.
pub fn ellipsis_chars(s: &str, max_chars: usize) -> String {
    let kept = prefix_chars(s, max_chars);
    if kept.len() == s.len() {
        return s.to_string();
    }
    let mut out = String::with_capacity(kept.len() + ELLIPSIS.len_utf8());
    out.push_str(kept);
    out.push(ELLIPSIS);
    out
}

/// `s` when it has at most `max_bytes` bytes, else its longest prefix within `max_bytes` and `…`.
pub fn ellipsis_bytes(s: &str, max_bytes: usize) -> String {
    let kept = prefix_bytes(s, max_bytes);
    if kept.len() == s.len() {
        return s.to_string();
    }
    format!("{kept}{ELLIPSIS}")
}

/// `s` when it has at most `max_chars` characters, else `…` and its last `max_chars` characters (for
/// messages and logs, whose end says most).
pub fn ellipsis_tail_chars(s: &str, max_chars: usize) -> String {
    let kept = suffix_chars(s, max_chars);
    if kept.len() == s.len() {
        return s.to_string();
    }
    format!("{ELLIPSIS}{kept}")
}

/// `text` cut to at most `max_bytes` bytes in all, `marker` included when it was cut (the marker is
/// left out only when not even it fits). Trailing whitespace before the marker is dropped.
pub fn bound_bytes(text: &str, max_bytes: usize, marker: &str) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut s = prefix_bytes(text, max_bytes.saturating_sub(marker.len())).trim_end().to_string();
    if s.len() + marker.len() <= max_bytes {
        s.push_str(marker);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_land_on_character_boundaries() {
        let s = "aé漢🦀z"; // 1 + 2 + 3 + 4 + 1 bytes
        assert_eq!(floor_char_boundary(s, 0), 0);
        assert_eq!(floor_char_boundary(s, 2), 1);
        assert_eq!(floor_char_boundary(s, 5), 3);
        assert_eq!(floor_char_boundary(s, 6), 6);
        assert_eq!(floor_char_boundary(s, 100), s.len());
        for max in 0..=s.len() + 1 {
            let p = prefix_bytes(s, max);
            assert!(p.len() <= max && s.starts_with(p), "{max}: {p:?}");
        }
        assert_eq!(prefix_bytes(s, 9), "aé漢");
        assert_eq!(prefix_chars(s, 0), "");
        assert_eq!(prefix_chars(s, 3), "aé漢");
        assert_eq!(prefix_chars(s, 5), s);
        assert_eq!(prefix_chars(s, 50), s);
        assert_eq!(suffix_chars(s, 0), "");
        assert_eq!(suffix_chars(s, 2), "🦀z");
        assert_eq!(suffix_chars(s, 5), s);
        assert_eq!(suffix_chars(s, 50), s);
        assert_eq!(suffix_chars("", 3), "");
    }

    #[test]
    fn cuts_are_marked() {
        assert_eq!(ellipsis_chars("abc", 3), "abc");
        assert_eq!(ellipsis_chars("abcd", 3), "abc…");
        assert_eq!(ellipsis_chars("漢字漢字", 2), "漢字…");
        assert_eq!(ellipsis_bytes("abc", 3), "abc");
        assert_eq!(ellipsis_bytes("aé漢", 4), "aé…");
        assert_eq!(ellipsis_tail_chars("abcd", 4), "abcd");
        assert_eq!(ellipsis_tail_chars("abcdé", 2), "…dé");
        assert_eq!(bound_bytes("short", 10, " […]"), "short");
        let long = "€".repeat(2000);
        let b = bound_bytes(&long, 4096, " […]");
        assert!(b.len() <= 4096 && b.ends_with(" […]"), "{}", b.len());
        assert_eq!(bound_bytes("abc   defghi", 9, "…"), "abc…");
        assert_eq!(bound_bytes("abcdef", 2, " […]"), "", "not even the marker fits");
    }
}
