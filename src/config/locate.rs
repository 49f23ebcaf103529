//! Where a problem is in `ekaci.toml`: key paths (`caches[1].permissions.allow_all`), the byte span of
//! a key or value in the parsed document, 1-based line and column, and parser messages made one line
//! long and free of secret values.
//!
//! Pure functions over text and the parsed document; nothing here reads files.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn segs_from_ignored(p: &serde_ignored::Path<'_>) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut cur = p;
    loop {
        match cur {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                out.push(Seg::Index(*index));
                cur = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                out.push(Seg::Key(key.clone()));
                cur = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => cur = parent,
        }
    }
    out.reverse();
    out
}

pub(super) fn segs_from_p2e(p: &serde_path_to_error::Path) -> Vec<Seg> {
    p.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// `caches[1].permissions.allow_all`; keys that are not bare TOML keys are quoted.
pub(super) fn format_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare =
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
        }
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

/// The byte span of the value at `segs` (of its key instead, when `want_key` and the path ends in a key).
pub(super) fn locate(root: &Spanned<DeTable<'_>>, segs: &[Seg], want_key: bool) -> Option<Range<usize>> {
    let mut span = root.span();
    let mut node: Option<&DeValue<'_>> = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    for (n, seg) in segs.iter().enumerate() {
        let last = n + 1 == segs.len();
        let value = match seg {
            Seg::Key(k) => {
                let (key, value) = table?.iter().find(|(key, _)| key.get_ref().as_ref() == k.as_str())?;
                span = if last && want_key { key.span() } else { value.span() };
                value
            }
            Seg::Index(i) => match node? {
                DeValue::Array(items) => {
                    let value = items.get(*i)?;
                    span = value.span();
                    value
                }
                _ => return None,
            },
        };
        node = Some(value.get_ref());
        table = match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    Some(span)
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let off = crate::text::floor_char_boundary(text, offset);
    let before = text.get(..off).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Joins a multi-line parser message into one line and names types the way the file does.
pub(super) fn one_line(message: &str) -> String {
    let joined = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let mut out = String::with_capacity(joined.len());
    let mut rest = joined.as_str();
    // serde says "expected struct WebConfig"; the user wrote (or should write) a table.
    while let Some(i) = rest.find("expected struct ") {
        out.push_str(&rest[..i]);
        out.push_str("expected a table");
        let after = &rest[i + "expected struct ".len()..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    let mut out = out
        .replace("expected a sequence", "expected an array")
        .replace("expected path string", "expected a string");
    for int in ["i64", "u64", "u32", "u16", "usize"] {
        if let Some(stripped) = out.strip_suffix(&format!("expected {int}")) {
            out = format!("{stripped}expected an integer");
        }
    }
    out
}

/// "invalid type: string \"hunter2\", expected …" → "invalid type: a string, expected …".
pub(super) fn redact_unexpected(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kind = if rest.starts_with("string") {
                "a string"
            } else if rest.starts_with("integer") {
                "an integer"
            } else if rest.starts_with("floating point") {
                "a float"
            } else if rest.starts_with("boolean") {
                "a boolean"
            } else {
                "a value"
            };
            let expected = rest.rfind(", expected ").map_or("", |i| &rest[i..]);
            return format!("{prefix}{kind}{expected}");
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let t = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        // 'é' is two bytes: the `=` after "bé " is the 4th character.
        assert_eq!(line_col(t, 10), (2, 4));
        assert_eq!(line_col(t, 999), (3, 1));
    }

    #[test]
    fn paths_format_like_toml_keys() {
        let segs = vec![Seg::Key("caches".into()), Seg::Index(1), Seg::Key("permissions".into())];
        assert_eq!(format_path(&segs), "caches[1].permissions");
        assert_eq!(format_path(&[Seg::Key("a b".into())]), "\"a b\"");
        assert_eq!(format_path(&[]), "(top level)");
    }

    #[test]
    fn messages_are_cleaned_and_redacted() {
        assert_eq!(
            one_line("invalid type: integer `5`, expected struct WebConfig"),
            "invalid type: integer `5`, expected a table"
        );
        assert_eq!(
            redact_unexpected("invalid type: string \"hunter2\", expected a boolean"),
            "invalid type: a string, expected a boolean"
        );
        assert_eq!(one_line("a\n  b\n"), "a; b");
    }
}
