//! The size sections of the change summary: what each job's size check found (`sizes::SizeSummary`,
//! stored by `sizes::measure_job` after the builds) — the attributes whose NAR or closure size grew by
//! more than `max_increase_percent`, largest first, and the runtime dependencies each Changed attribute
//! gained, lost or changed the version of.
//!
//! [`attach`] reads the stored size summaries of a [`ChangeSummary`]'s jobs (so a summary of an old commit
//! shows them too); [`render_section`] is the Markdown, bounded like the rest of the summary (at most
//! `max_packages_listed` rows per table, then "… and N more"; only the headline line at
//! [`Truncation::CountsOnly`]). This file never measures anything and never writes a table.

use std::fmt::Write as _;

use super::{ChangeSummary, Settings, Truncation};
use crate::sizes::{self, SizeSummary};
use crate::store::{Store, StoreError};

/// Blocking. Puts the stored size summary of each of `summary`'s jobs (same repository, head, base and
/// job) into `summary.sizes`, replacing what was there.
pub fn attach(store: &Store, summary: &mut ChangeSummary) -> Result<(), StoreError> {
    let mut found = Vec::new();
    for job in &summary.jobs {
        if let Some(s) = sizes::summary_of(store, &job.repo, &job.head_sha, &job.base_sha, &job.job)? {
            found.push(s);
        }
    }
    summary.sizes = found;
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Appends the size sections of one job (`h`: the heading level of its subsections).
pub fn render_section(out: &mut String, s: &SizeSummary, settings: &Settings, level: Truncation, h: &str) {
    let (n, d) = (s.increases.len(), s.dependencies.len());
    let _ = writeln!(
        out,
        "**Sizes:** {n} attribute{} grew by more than {} % against {} ({} measured, {} compared); {d} \
         changed attribute{} with runtime dependency changes\n",
        plural(n),
        s.max_increase_percent,
        s.baseline_markdown(),
        s.measured,
        s.compared,
        plural(d),
    );
    if level >= Truncation::CountsOnly {
        return;
    }
    let max = settings.max_packages_listed.max(1);
    if n > 0 {
        let _ = writeln!(out, "{h} Size increases ({n})\n");
        out.push_str(sizes::INCREASE_HEADER);
        for i in s.increases.iter().take(max) {
            out.push_str(&sizes::increase_row(i));
        }
        if n > max {
            let _ = writeln!(out, "\n… and {} more", n - max);
        }
        out.push('\n');
    }
    if d > 0 {
        let _ = writeln!(out, "{h} Runtime dependency changes ({d})\n");
        for c in s.dependencies.iter().take(max) {
            out.push_str(&sizes::dependency_line(c));
        }
        if d > max {
            let _ = writeln!(out, "\n… and {} more", d - max);
        }
        out.push('\n');
    }
}
