//! A plan in the style of terraform's: `+ ~ -` per secret with key names, counts per target
//! and in total.

use std::fmt::Write;

use vss_protocol::diff::{ChangeType, SecretChange};
use vss_protocol::job::Phase;

use super::{Report, Status};

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";

fn colour(change: ChangeType) -> &'static str {
    match change {
        ChangeType::Added => "\x1b[32m",
        ChangeType::Modified => "\x1b[33m",
        ChangeType::Removed => "\x1b[31m",
    }
}

/// Text that came from outside (secret and key names, store errors) as it may be shown on a
/// terminal: control characters (newlines, escape sequences) and bidirectional overrides are
/// escaped, so a name can neither forge report lines nor hide what follows it.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| if unsafe_char(c) { c.escape_unicode().to_string() } else { c.to_string() })
        .collect::<String>()
        .into()
}

/// Renders the report; `colour` adds ANSI colours.
pub fn render(report: &Report, use_colour: bool) -> String {
    let paint = |code: &'static str, text: &str| {
        if use_colour { format!("{code}{text}{RESET}") } else { text.to_string() }
    };
    let mut out = String::new();
    let what = match report.phase {
        Phase::Sync => "targets",
        Phase::Merge => "targets in the merge store",
    };
    for target in &report.targets {
        let s = &target.summary;
        let _ = write!(out, "{}", paint(BOLD, &target.target));
        match target.status {
            Status::Ok if !s.has_changes() => {
                let _ = writeln!(out, ": no changes ({} unchanged)", s.unchanged);
            }
            Status::Ok => {
                let _ = writeln!(out);
                for change in &target.changes {
                    let _ = writeln!(out, "  {}", line(change, use_colour));
                }
                let _ = writeln!(
                    out,
                    "  {} to add, {} to change, {} to delete, {} unchanged",
                    s.added, s.modified, s.removed, s.unchanged
                );
            }
            Status::Failed | Status::Skipped => {
                let label = if target.status == Status::Failed { "FAILED" } else { "SKIPPED" };
                let _ = writeln!(
                    out,
                    ": {}: {}",
                    paint(colour(ChangeType::Removed), label),
                    shown(target.error.as_deref().unwrap_or(""))
                );
            }
        }
        if !target.not_applied.is_empty() {
            let _ = writeln!(
                out,
                "  {} changes not applied (not counted below)",
                target.not_applied.len()
            );
        }
        for warning in &target.warnings {
            let _ = writeln!(out, "  warning: {}", shown(warning));
        }
    }
    for error in &report.errors {
        if !report.targets.iter().any(|t| t.error.as_deref().is_some_and(|e| error.ends_with(e))) {
            let _ = writeln!(out, "error: {}", shown(error));
        }
    }
    let s = &report.summary;
    let _ = writeln!(
        out,
        "\n{}: {} added, {} modified, {} removed, {} unchanged across {} {what}{}",
        paint(BOLD, if report.dry_run { "Plan" } else { "Applied" }),
        s.added,
        s.modified,
        s.removed,
        s.unchanged,
        report.targets.len(),
        if report.dry_run { " (dry run: nothing was written)" } else { "" }
    );
    if report.has_errors() {
        let failed = report.targets.iter().filter(|t| t.status != Status::Ok).count();
        let _ = writeln!(out, "{} of {} targets did not complete.", failed, report.targets.len());
    }
    out
}

fn line(change: &SecretChange, use_colour: bool) -> String {
    let mut keys: Vec<String> = Vec::new();
    keys.extend(change.keys_added.iter().map(|k| format!("+{}", shown(k))));
    keys.extend(change.keys_modified.iter().map(|k| format!("~{}", shown(k))));
    keys.extend(change.keys_removed.iter().map(|k| format!("-{}", shown(k))));
    let head = format!("{} {}", change.change_type.symbol(), shown(&change.path));
    let head =
        if use_colour { format!("{}{head}{RESET}", colour(change.change_type)) } else { head };
    if keys.is_empty() { head } else { format!("{head}  ({})", keys.join(", ")) }
}
