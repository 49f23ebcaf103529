//! Plain-text rendering of the CLI's results for terminals.

use std::fmt::Write;

use crate::jobset::diff::{AttrChange, ErrorChange, JobDiff};
use crate::jobset::{AttrOutcome, Jobset, JobsetState};
use crate::pipeline::{DiffReport, EvalReport, ReviewReport, Verdict};
use crate::text::short_sha as short;

/// The first non-empty line of a Nix error, without Nix's own `error: ` prefix.
fn first_line(message: &str) -> &str {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.strip_prefix("error: ").unwrap_or(line)
}

fn jobset_line(js: &Jobset) -> String {
    match &js.state {
        JobsetState::Failed { message } => format!("evaluation failed: {}", first_line(message)),
        JobsetState::Evaluating => "still evaluating".into(),
        JobsetState::Evaluated => {
            let note = if js.errors > 0 && js.allow_eval_failures { " (allowed)" } else { "" };
            format!("{} derivations, {} evaluation errors{note}", js.derivations, js.errors)
        }
    }
}

/// `ekaci eval`'s output.
pub fn eval_report(r: &EvalReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} at {} ({})", r.repo, short(&r.commit), r.config_file);
    for w in &r.config_warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for job in &r.jobs {
        let reused = if job.reused { ", reused" } else { "" };
        let _ = writeln!(out, "\njob {}: {}{reused}", job.jobset.key.job, jobset_line(&job.jobset));
        if let JobsetState::Failed { message } = &job.jobset.state {
            for l in message.lines() {
                let _ = writeln!(out, "  {l}");
            }
        }
        let width = job.attrs.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
        for (attr, outcome) in &job.attrs {
            match outcome {
                AttrOutcome::Drv(d) => {
                    let _ = writeln!(out, "  {attr:width$}  {}", d.drv_path);
                }
                AttrOutcome::Error { message } => {
                    let _ = writeln!(out, "  {attr:width$}  error: {}", first_line(message));
                }
            }
        }
    }
    out
}

fn change_list(out: &mut String, title: &str, changes: &[AttrChange]) {
    if changes.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {title} ({}):", changes.len());
    for c in changes {
        let _ = writeln!(out, "    {} ({})", c.attr, c.name);
    }
}

fn job_diff(out: &mut String, d: &JobDiff) {
    let _ = writeln!(out, "\njob {}:", d.job);
    let _ = writeln!(out, "  base: {}", jobset_line(&d.base));
    let _ = writeln!(out, "  head: {}", jobset_line(&d.head));
    change_list(out, "added", &d.added);
    change_list(out, "removed", &d.removed);
    change_list(out, "changed", &d.changed);
    let _ = writeln!(out, "  unchanged: {}", d.unchanged);
    type Pick = fn(&ErrorChange) -> bool;
    let groups: [(&str, Pick); 3] = [
        ("newly failing evaluation", ErrorChange::is_new),
        ("fixed evaluation", ErrorChange::is_fixed),
        ("still failing evaluation", |e| !e.is_new() && !e.is_fixed()),
    ];
    for (title, pick) in groups {
        let picked: Vec<_> = d.errors.iter().filter(|e| pick(e)).collect();
        if picked.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {title} ({}):", picked.len());
        for e in picked {
            let message = e.head_error.as_deref().or(e.base_error.as_deref()).unwrap_or("");
            let _ = writeln!(out, "    {}: {}", e.attr, first_line(message));
        }
    }
}

/// `ekaci diff`'s output.
pub fn diff_report(r: &DiffReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {} → {}", r.repo, short(&r.base_commit), short(&r.head_commit));
    for w in &r.config_warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for d in &r.jobs {
        job_diff(&mut out, d);
    }
    for job in &r.only_in_head {
        let _ = writeln!(out, "\njob {job}: new in head (nothing to compare)");
    }
    for job in &r.only_in_base {
        let _ = writeln!(out, "\njob {job}: removed in head");
    }
    out
}

/// `ekaci review`'s output.
pub fn review_report(r: &ReviewReport) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "{}: review of {} against {}", r.repo, short(&r.head_commit), short(&r.base_commit));
    for w in &r.config_warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if r.builds_skipped {
        let _ =
            writeln!(out, "nothing was built (--no-build): build results are not known, checks did not run");
    }
    for job in &r.jobs {
        let d = &job.diff;
        let verdict = if job.failed { "FAIL" } else { "ok" };
        let _ = writeln!(out, "\njob {}: {verdict}", d.job);
        let _ = writeln!(out, "  head: {}", jobset_line(&d.head));
        let count = |v: Verdict| job.attrs.iter().filter(|a| a.verdict == v).count();
        let builds = if r.builds_skipped {
            "builds: not built (--no-build)".to_string()
        } else {
            format!(
                "{} newly failing, {} newly succeeding, {} still failing",
                count(Verdict::NewlyFailing) + count(Verdict::AddedFailing),
                count(Verdict::NewlySucceeding),
                count(Verdict::StillFailing),
            )
        };
        let _ = writeln!(
            out,
            "  {} added, {} removed, {} changed, {} unchanged; {builds}",
            d.added.len(),
            d.removed.len(),
            d.changed.len(),
            d.unchanged,
        );
        let sections: [(&str, &[Verdict]); 7] = [
            ("newly failing", &[Verdict::NewlyFailing, Verdict::AddedFailing]),
            ("still failing", &[Verdict::StillFailing]),
            ("newly succeeding", &[Verdict::NewlySucceeding]),
            ("added", &[Verdict::AddedOk]),
            ("changed, still building", &[Verdict::StillOk]),
            ("added, not built (--no-build)", &[Verdict::AddedNotBuilt]),
            ("changed, not built (--no-build)", &[Verdict::ChangedNotBuilt]),
        ];
        for (title, verdicts) in sections {
            let picked: Vec<_> = job.attrs.iter().filter(|a| verdicts.contains(&a.verdict)).collect();
            if picked.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  {title} ({}):", picked.len());
            for a in picked {
                let why = match (&a.head.detail, a.head.ok, a.verdict) {
                    (_, _, Verdict::AddedNotBuilt | Verdict::ChangedNotBuilt) => String::new(),
                    (Some(detail), false, _) => format!(": {} ({})", first_line(detail), a.head.state),
                    _ => String::new(),
                };
                let _ = writeln!(out, "    {} ({}){why}", a.attr, a.name);
                if let Some(tail) = &a.log_tail {
                    for line in tail.lines() {
                        let _ = writeln!(out, "      | {line}");
                    }
                }
            }
        }
        change_list(&mut out, "removed", &d.removed);
        let new_errors: Vec<_> = d.errors.iter().filter(|e| e.is_new()).collect();
        if !new_errors.is_empty() {
            let note = if d.head.allow_eval_failures { ", allowed" } else { "" };
            let _ = writeln!(out, "  newly failing evaluation ({}{note}):", new_errors.len());
            for e in new_errors {
                let _ =
                    writeln!(out, "    {}: {}", e.attr, first_line(e.head_error.as_deref().unwrap_or("")));
            }
        }
    }
    for job in &r.only_in_head {
        let _ = writeln!(out, "\njob {job}: new in head (not reviewed)");
    }
    if !r.checks.is_empty() {
        let _ = writeln!(out, "\nchecks:");
        for c in &r.checks {
            let verdict = if c.passed() { "ok" } else { "FAIL" };
            let _ = writeln!(out, "  {verdict:<4} {}: {}", c.name, c.summary());
            if !c.passed() {
                for line in c.tail.lines() {
                    let _ = writeln!(out, "         | {line}");
                }
            }
            if let Some(file) = &c.output_file {
                let _ = writeln!(out, "         output: {file}");
            }
        }
    }
    if let Some(markdown) = &r.summary_markdown {
        let _ = writeln!(out, "\n{}", markdown.trim_end());
    }
    let nothing_built =
        if r.builds_skipped { " (evaluation only; nothing was built: --no-build)" } else { "" };
    let _ = writeln!(out, "\nresult: {}{nothing_built}", if r.failed { "FAIL" } else { "ok" });
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_time(secs: u64) -> String {
    crate::time::readable(secs)
}

#[cfg(test)]
mod tests {
    use super::utc_time;

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
