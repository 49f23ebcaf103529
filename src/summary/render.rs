//! Markdown rendering of a [`ChangeSummary`]: a headline verdict per job (evaluation, rebuild counts with
//! their buckets), the package-change tables, the rebuild-only count, the top blast radii and the size
//! sections (`summary::sizes`).
//!
//! Rendering is pure and deterministic. Everything that came from the repository (attribute names, `meta`,
//! error messages, job names) is escaped with [`escape_markdown`] and bounded in length. The text stays
//! under [`SOFT_LIMIT`] bytes by dropping detail in a fixed order ([`Truncation`]) and never exceeds
//! [`HARD_CAP`] bytes; it is only ever cut at a character boundary. This file must never read the store
//! or the graph, and never decide what changed (that is `classify` and `impact`).

use std::fmt::Write as _;
use std::time::Instant;

use super::{
    ChangeSummary, EvalStatus, JobSummary, PackageChange, PackageChangeKind, Rendered, Settings, Truncation,
};
use crate::text::{escape_markdown, floor_char_boundary, prefix_chars, short_sha as short};

/// Detail is dropped until the text is shorter than this many bytes.
pub const SOFT_LIMIT: usize = 60_000;
/// The text is never longer than this many bytes (GitHub's limit for a check run's summary).
pub const HARD_CAP: usize = 65_535;
/// Appended when the text had to be cut at [`HARD_CAP`].
pub const HARD_CAP_FOOTER: &str =
    "\n\n… *(truncated: the full summary is too large for a check run; see the \
                                   HTTP API or `ekaci summary`)*\n";

/// The longest piece of repository-provided text shown (in characters, before escaping).
const MAX_FIELD_CHARS: usize = 120;
/// The longest evaluation error message shown (in characters, before escaping).
const MAX_MESSAGE_CHARS: usize = 1000;
/// How many newly failing attributes are named.
const MAX_ERRORS_LISTED: usize = 20;

/// Renders `summary` to markdown, dropping detail as needed to fit.
pub fn render(summary: &ChangeSummary, settings: &Settings) -> Rendered {
    let started = Instant::now();
    let m = crate::metrics::global();
    let levels = [
        Truncation::None,
        Truncation::Maintainers,
        Truncation::Licenses,
        Truncation::RebuildOnlyLine,
        Truncation::CountsOnly,
    ];
    let mut out = None;
    for level in levels {
        let text = render_at(summary, settings, level);
        if text.len() < SOFT_LIMIT {
            out = Some(Rendered { markdown: text, truncation: level });
            break;
        }
    }
    let rendered = match out {
        Some(r) => r,
        None => {
            let mut text = render_at(summary, settings, Truncation::CountsOnly);
            let keep = floor_char_boundary(&text, HARD_CAP - HARD_CAP_FOOTER.len());
            text.truncate(keep);
            text.push_str(HARD_CAP_FOOTER);
            Rendered { markdown: text, truncation: Truncation::HardCap }
        }
    };
    match rendered.truncation {
        Truncation::None => {}
        Truncation::Maintainers | Truncation::Licenses | Truncation::RebuildOnlyLine => {
            m.change_summary_truncated.with_label_values(&["columns"]).inc()
        }
        Truncation::CountsOnly | Truncation::HardCap => {
            m.change_summary_truncated.with_label_values(&["summary"]).inc()
        }
    }
    m.change_summary_duration.with_label_values(&["render"]).observe(started.elapsed().as_secs_f64());
    rendered
}

/// Escaped, bounded repository-provided text.
fn esc(text: &str) -> String {
    esc_max(text, MAX_FIELD_CHARS)
}

fn esc_max(text: &str, max_chars: usize) -> String {
    let head = prefix_chars(text, max_chars);
    let mut out = escape_markdown(head);
    if head.len() < text.len() {
        out.push('…');
    }
    out
}

/// A list of escaped values (`—` when empty).
fn esc_list(items: &[String]) -> String {
    if items.is_empty() {
        return "—".to_string();
    }
    let shown: Vec<String> = items.iter().take(10).map(|s| esc(s)).collect();
    let mut out = shown.join(", ");
    if items.len() > 10 {
        let _ = write!(out, ", … {} more", items.len() - 10);
    }
    out
}

fn opt(v: &Option<String>) -> String {
    v.as_deref().map(esc).unwrap_or_else(|| "—".to_string())
}

fn render_at(summary: &ChangeSummary, settings: &Settings, level: Truncation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Change summary\n");
    let _ = writeln!(
        out,
        "Comparing `{}` (head) with `{}` (base).\n",
        esc(short(&summary.head_sha)),
        esc(short(&summary.base_sha))
    );
    if summary.jobs.is_empty() {
        out.push_str("No job has a summary yet.\n");
    }
    let several = summary.jobs.len() > 1;
    for job in &summary.jobs {
        if several {
            let _ = writeln!(out, "### Job {}\n", esc(&job.job));
        }
        render_job(&mut out, job, settings, level, several);
        if let Some(sizes) = super::sizes::of_job(summary, job) {
            super::sizes::render_section(
                &mut out,
                sizes,
                settings,
                level,
                if several { "####" } else { "###" },
            );
        }
    }
    if level != Truncation::None {
        let what = match level {
            Truncation::Maintainers => "maintainer changes are counted but not listed",
            Truncation::Licenses => "license and maintainer changes are counted but not listed",
            Truncation::RebuildOnlyLine => {
                "license and maintainer changes are counted but not listed; rebuild-only packages are omitted"
            }
            _ => "only counts are shown",
        };
        let _ = writeln!(out, "\n*The summary was shortened to fit: {what}.*");
    }
    out
}

fn render_job(out: &mut String, job: &JobSummary, settings: &Settings, level: Truncation, several: bool) {
    let h = if several { "####" } else { "###" };
    // Headline verdict.
    match &job.eval {
        EvalStatus::Ok => out.push_str("**Evaluation:** ok"),
        EvalStatus::Failed { message } => {
            let _ = write!(out, "**Evaluation:** failed: {}", esc_max(message, MAX_MESSAGE_CHARS));
        }
        EvalStatus::AttrErrors { count, allowed } => {
            let _ = write!(
                out,
                "**Evaluation:** {count} attribute{} failed to evaluate{}",
                plural(*count),
                if *allowed { " (allowed by the job)" } else { "" }
            );
        }
    }
    if !job.new_eval_errors.is_empty() {
        let names: Vec<String> = job.new_eval_errors.iter().take(MAX_ERRORS_LISTED).map(|a| esc(a)).collect();
        let more = job.new_eval_errors.len().saturating_sub(MAX_ERRORS_LISTED);
        let _ = write!(
            out,
            "; {} new: {}{}",
            job.new_eval_errors.len(),
            names.join(", "),
            if more > 0 { format!(", … and {more} more") } else { String::new() }
        );
    }
    if !job.fixed_eval_errors.is_empty() {
        let _ = write!(out, "; {} fixed", job.fixed_eval_errors.len());
    }
    out.push_str("\n\n");

    let kernels: Vec<String> = job
        .impact
        .per_kernel
        .iter()
        .map(|k| format!("{} {} ({})", k.kernel, k.rebuilds, k.bucket.label()))
        .collect();
    let kernels = if kernels.is_empty() { "none".to_string() } else { kernels.join(", ") };
    let hidden = job.impact.hidden_aliases;
    let _ = writeln!(
        out,
        "**Rebuilds:** {kernels} (attributes as `nix-env -qaP` lists them, nixpkgs' count{})\n",
        if !job.impact.aliases_known {
            "; the aliases nix-env leaves out are not known for this change, every attribute is counted"
                .to_string()
        } else if hidden > 0 {
            format!(
                "; {hidden} alias{} of an attribute listed before not counted",
                if hidden == 1 { "" } else { "es" }
            )
        } else {
            String::new()
        }
    );
    if !job.impact.per_system.is_empty() {
        let with_union = job.impact.blast_radius_computed;
        out.push_str(if with_union {
            "| system | rebuilds (attributes) | bucket | rebuilt derivations | must rebuild (derivations, with dependents) |\n| --- | ---: | --- | ---: | ---: |\n"
        } else {
            "| system | rebuilds (attributes) | bucket | rebuilt derivations |\n| --- | ---: | --- | ---: |\n"
        });
        for s in &job.impact.per_system {
            let _ = write!(
                out,
                "| {} | {} | {} | {} |",
                esc(&s.system),
                s.rebuilds,
                s.bucket.label(),
                s.rebuilt_drvs
            );
            if with_union {
                let _ = write!(out, " {} |", s.must_rebuild);
            }
            out.push('\n');
        }
        out.push('\n');
    }

    // Package changes.
    if settings.package_changes {
        let c = &job.counts;
        let _ = writeln!(
            out,
            "**Package changes:** {} added, {} removed, {} version bump{}, {} license change{}, {} maintainer \
             change{}, {} rebuild-only (attributes as `nix-env -qaP` lists them)\n",
            c.added,
            c.removed,
            c.version_bump,
            plural(c.version_bump),
            c.license_change,
            plural(c.license_change),
            c.maintainer_change,
            plural(c.maintainer_change),
            c.rebuild_only
        );
        if level < Truncation::CountsOnly {
            package_tables(out, job, settings, level, h);
        }
    }

    // Blast radius.
    if job.impact.blast_radius_computed && level < Truncation::CountsOnly && !job.impact.top.is_empty() {
        let shown = job.impact.top.len().min(settings.max_top_blast_radius.max(1));
        let _ = writeln!(
            out,
            "{h} Top blast radius\n\n{} rebuilt derivation{}; {} derivation{} must rebuild in total (with their \
             dependents).\n",
            job.impact.changed_drvs,
            plural(job.impact.changed_drvs),
            job.impact.must_rebuild,
            plural(job.impact.must_rebuild)
        );
        out.push_str("| attribute | system | dependents |\n| --- | --- | ---: |\n");
        for b in job.impact.top.iter().take(shown) {
            let _ = writeln!(out, "| {} | {} | {} |", esc(&b.attr), esc(&b.system), b.dependents);
        }
        out.push('\n');
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn package_tables(out: &mut String, job: &JobSummary, settings: &Settings, level: Truncation, h: &str) {
    let max = settings.max_packages_listed.max(1);
    let of = |kind: PackageChangeKind| job.changes.iter().filter(move |c| c.has(kind));
    type Row = fn(&PackageChange) -> String;
    let mut table = |kind: PackageChangeKind, title: &str, header: &str, row: Row| {
        let total = of(kind).count();
        if total == 0 {
            return;
        }
        let _ = writeln!(out, "{h} {title} ({total})\n\n{header}");
        for c in of(kind).take(max) {
            out.push_str(&row(c));
            out.push('\n');
        }
        if total > max {
            let _ = writeln!(out, "\n… and {} more", total - max);
        }
        out.push('\n');
    };
    table(PackageChangeKind::Added, "Added", "| attribute | system | version |\n| --- | --- | --- |", |c| {
        format!("| {} | {} | {} |", esc(&c.attr), esc(&c.system), opt(&c.head_version))
    });
    table(
        PackageChangeKind::Removed,
        "Removed",
        "| attribute | system | version |\n| --- | --- | --- |",
        |c| format!("| {} | {} | {} |", esc(&c.attr), esc(&c.system), opt(&c.base_version)),
    );
    table(
        PackageChangeKind::VersionBump,
        "Version bumps",
        "| attribute | system | old | new |\n| --- | --- | --- | --- |",
        |c| {
            format!(
                "| {} | {} | {} | {} |",
                esc(&c.attr),
                esc(&c.system),
                opt(&c.base_version),
                opt(&c.head_version)
            )
        },
    );
    if level < Truncation::Licenses {
        table(
            PackageChangeKind::LicenseChange,
            "License changes",
            "| attribute | old | new |\n| --- | --- | --- |",
            |c| {
                format!(
                    "| {} | {} | {} |",
                    esc(&c.attr),
                    esc_list(&c.base_license),
                    esc_list(&c.head_license)
                )
            },
        );
    }
    if level < Truncation::Maintainers {
        table(
            PackageChangeKind::MaintainerChange,
            "Maintainer changes",
            "| attribute | old | new |\n| --- | --- | --- |",
            |c| {
                format!(
                    "| {} | {} | {} |",
                    esc(&c.attr),
                    esc_list(&c.base_maintainers),
                    esc_list(&c.head_maintainers)
                )
            },
        );
    }
    if level < Truncation::RebuildOnlyLine {
        let n = job.counts.rebuild_only;
        if settings.include_rebuild_only {
            table(
                PackageChangeKind::RebuildOnly,
                "Rebuild only",
                "| attribute | system | version |\n| --- | --- | --- |",
                |c| format!("| {} | {} | {} |", esc(&c.attr), esc(&c.system), opt(&c.head_version)),
            );
        } else if n > 0 {
            let _ = writeln!(
                out,
                "{n} rebuild-only package{} (derivation and out paths changed, metadata did not).\n",
                plural(n)
            );
        }
    }
}
