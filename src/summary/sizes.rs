//! The size sections of the change summary: what each job's size check found (`sizes::SizeSummary`,
//! stored by `sizes::measure_job` after the builds) — the attributes whose NAR or closure size grew by
//! more than `max_increase_percent`, largest first, and the runtime dependencies each Changed attribute
//! gained, lost or changed the version of.
//!
//! [`attach`] reads the stored size summaries of a [`ChangeSummary`]'s jobs (so a summary of an old commit
//! shows them too), [`rerender`] adds freshly measured ones; [`render_section`] is the Markdown, bounded like the rest of the summary (at most
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

/// Puts `sizes` into `summary` and renders it again, with the settings its jobs were summarised with.
pub fn rerender(summary: &mut ChangeSummary, sizes: Vec<SizeSummary>) -> super::Rendered {
    summary.sizes = sizes;
    let settings = summary.jobs.first().map(|j| j.settings.clone()).unwrap_or_default();
    super::render(summary, &settings)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The size summary of `job` in `summary`, if it has one.
pub fn of_job<'a>(summary: &'a ChangeSummary, job: &super::JobSummary) -> Option<&'a SizeSummary> {
    summary
        .sizes
        .iter()
        .find(|s| s.job == job.job && s.base_sha == job.base_sha && s.head_sha == job.head_sha)
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

#[cfg(test)]
mod tests {
    use super::super::{EvalStatus, JobSummary, KindCounts, RebuildImpact};
    use super::*;
    use crate::sizes::{DepChange, DependencyChanges, SizeIncrease};

    fn job(name: &str) -> JobSummary {
        JobSummary {
            repo: "file:///r".into(),
            job: name.into(),
            base_sha: "b".repeat(40),
            head_sha: "a".repeat(40),
            eval: EvalStatus::Ok,
            new_eval_errors: vec![],
            fixed_eval_errors: vec![],
            changes: vec![],
            counts: KindCounts::default(),
            impact: RebuildImpact::default(),
            computed_at: 0,
            settings: Settings::default(),
        }
    }

    fn sizes(name: &str, n: usize) -> SizeSummary {
        SizeSummary {
            job: name.into(),
            base_sha: "b".repeat(40),
            head_sha: "a".repeat(40),
            base_branch: Some("main".into()),
            max_increase_percent: 10.0,
            measured: n as u64,
            compared: n as u64,
            no_baseline: 0,
            increases: (0..n)
                .map(|i| SizeIncrease {
                    attr: format!("pkgs.some-long-attribute-name-{i:06}"),
                    nar_before: 1000,
                    nar_after: 2000,
                    nar_change_percent: Some(100.0),
                    closure_before: 10_000,
                    closure_after: 11_000,
                    closure_change_percent: Some(10.0),
                })
                .collect(),
            dependencies: (0..n)
                .map(|i| DependencyChanges {
                    attr: format!("pkgs.some-long-attribute-name-{i:06}"),
                    changes: vec![
                        DepChange::Version {
                            name: "openssl".into(),
                            base: "1.1.1g".into(),
                            head: "1.1.1h".into(),
                        },
                        DepChange::Added { name: "zlib".into(), version: "1.2.11".into() },
                        DepChange::Removed { name: "libfoo".into(), version: "1.0".into() },
                    ],
                })
                .collect(),
            computed_at: 0,
        }
    }

    #[test]
    fn the_sections_list_rows_then_count_the_rest() {
        let summary = ChangeSummary {
            repo: "file:///r".into(),
            base_sha: "b".repeat(40),
            head_sha: "a".repeat(40),
            jobs: vec![job("main")],
            sizes: vec![sizes("main", 3)],
        };
        let settings = Settings { max_packages_listed: 2, ..Settings::default() };
        let md = super::super::render(&summary, &settings).markdown;
        assert!(
            md.contains("**Sizes:** 3 attributes grew by more than 10 % against the newest sizes on `main`"),
            "{md}"
        );
        assert!(md.contains("### Size increases (3)\n"), "{md}");
        assert!(md.contains("| `pkgs.some-long-attribute-name-000001` | 1000 B | 2.0 KiB | +100.0 % | 9.8 KiB | 10.7 KiB | +10.0 % |"), "{md}");
        assert!(!md.contains("| `pkgs.some-long-attribute-name-000002`"), "{md}");
        assert!(md.contains("### Runtime dependency changes (3)\n"), "{md}");
        assert!(
            md.contains("- `pkgs.some-long-attribute-name-000000`: `openssl 1.1.1g → 1.1.1h`, `+ zlib-1.2.11`, `- libfoo-1.0`\n"),
            "{md}"
        );
        assert_eq!(md.matches("\n… and 1 more\n").count(), 2, "{md}");
    }

    #[test]
    fn a_huge_summary_with_sizes_stays_within_githubs_limit() {
        // Ten jobs of 5,000 increases and 5,000 attributes with dependency changes each, every row listed.
        let names: Vec<String> = (0..10).map(|i| format!("job{i}")).collect();
        let summary = ChangeSummary {
            repo: "file:///r".into(),
            base_sha: "b".repeat(40),
            head_sha: "a".repeat(40),
            jobs: names.iter().map(|n| job(n)).collect(),
            sizes: names.iter().map(|n| sizes(n, 5000)).collect(),
        };
        let settings = Settings { max_packages_listed: 10_000, ..Settings::default() };
        let r = super::super::render(&summary, &settings);
        assert!(r.markdown.len() <= super::super::render::HARD_CAP, "{}", r.markdown.len());
        assert_eq!(r.truncation, Truncation::CountsOnly);
        assert_eq!(r.markdown.matches("**Sizes:** 5000 attributes grew").count(), 10, "the headline stays");
        // With the default limit (100 rows), one job fits without dropping the sections.
        let one = ChangeSummary { jobs: vec![job("main")], sizes: vec![sizes("main", 5000)], ..summary };
        let r = super::super::render(&one, &Settings::default());
        assert_eq!(r.truncation, Truncation::None);
        assert!(r.markdown.len() < super::super::render::SOFT_LIMIT);
        assert_eq!(r.markdown.matches("\n… and 4900 more\n").count(), 2, "{}", r.markdown);
    }
}
