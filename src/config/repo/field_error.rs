//! [`FieldError`], one problem found in a repository configuration (field path + message), and its
//! rendering as Markdown for GitHub check runs.
//!
//! Paths and messages may carry text from the repository, so the Markdown rendering escapes
//! everything that could format, mention users, reference issues or reorder text.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::escape_markdown;

const MARKDOWN_MAX_ITEMS: usize = 100;

/// One problem found in the configuration: where (`jobs.hello.file`; empty for the whole file) and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into() }
    }

    /// Renders `errors` as a Markdown bullet list (one line per error, at most 100 of them followed by a
    /// count of the rest) for a GitHub check-run summary. Paths and messages may contain text from the
    /// repository, so every Markdown-significant character is escaped, `@` and `#` are broken up so they
    /// cannot mention users or reference issues, and control characters are replaced.
    pub fn to_markdown_list(errors: &[FieldError]) -> String {
        let mut out = String::new();
        for e in errors.iter().take(MARKDOWN_MAX_ITEMS) {
            out.push_str("- ");
            if !e.path.is_empty() {
                out.push_str("**");
                out.push_str(&escape_markdown(&e.path));
                out.push_str("**: ");
            }
            out.push_str(&escape_markdown(&e.message));
            out.push('\n');
        }
        if errors.len() > MARKDOWN_MAX_ITEMS {
            out.push_str(&format!("- … and {} more\n", errors.len() - MARKDOWN_MAX_ITEMS));
        }
        out
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}
