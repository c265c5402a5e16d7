//! GitHub Actions output: workflow commands on stdout, and a markdown table for the job
//! summary page.

use std::fmt::Write;

use super::{Report, Status};

/// Escapes workflow-command data.
fn data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow-command property value.
fn property(text: &str) -> String {
    data(text).replace(':', "%3A").replace(',', "%2C")
}

/// The workflow commands, and the markdown summary for `$GITHUB_STEP_SUMMARY`.
pub fn render(report: &Report) -> (String, String) {
    let mut out = String::new();
    for target in &report.targets {
        let title = property(&format!("vss {}", target.target));
        let s = &target.summary;
        match target.status {
            Status::Ok if s.has_changes() => {
                let _ = writeln!(
                    out,
                    "::notice title={title}::{}",
                    data(&format!(
                        "{} to add, {} to change, {} to delete, {} unchanged",
                        s.added, s.modified, s.removed, s.unchanged
                    ))
                );
            }
            Status::Ok => {}
            Status::Failed | Status::Skipped => {
                let _ = writeln!(
                    out,
                    "::error title={title}::{}",
                    data(target.error.as_deref().unwrap_or("failed"))
                );
            }
        }
        for warning in &target.warnings {
            let _ = writeln!(out, "::warning title={title}::{}", data(warning));
        }
    }
    let s = &report.summary;
    let _ = writeln!(
        out,
        "::notice title=vss::{}",
        data(&format!(
            "{}{} added, {} modified, {} removed, {} unchanged across {} targets",
            if report.dry_run { "dry run: " } else { "" },
            s.added,
            s.modified,
            s.removed,
            s.unchanged,
            report.targets.len()
        ))
    );

    let mut md = String::new();
    let _ = writeln!(md, "### vss {}\n", if report.dry_run { "plan (dry run)" } else { "sync" });
    let _ = writeln!(md, "| Target | Status | Added | Modified | Removed | Unchanged |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
    for t in &report.targets {
        let status = match t.status {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        };
        let _ = writeln!(
            md,
            "| {} | {status} | {} | {} | {} | {} |",
            t.target, t.summary.added, t.summary.modified, t.summary.removed, t.summary.unchanged
        );
    }
    let _ = writeln!(
        md,
        "| **Total** | | **{}** | **{}** | **{}** | **{}** |",
        s.added, s.modified, s.removed, s.unchanged
    );
    for t in report.targets.iter().filter(|t| !t.changes.is_empty()) {
        let _ = writeln!(
            md,
            "\n<details><summary>{}: {} changes</summary>\n",
            t.target,
            t.changes.len()
        );
        for c in &t.changes {
            let _ = writeln!(md, "- `{}` {}", c.change_type.symbol(), c.path);
        }
        let _ = writeln!(md, "\n</details>");
    }
    (out, md)
}
