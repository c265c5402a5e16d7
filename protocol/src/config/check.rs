//! The diagnostics collector every check writes to, and the key-path helpers it needs.

use super::Diagnostic;
use super::yaml::{Document, KeyPath, Segment, display_path};

/// A key segment.
pub(crate) fn key(k: &str) -> Segment {
    Segment::Key(k.to_string())
}

/// A key path from its keys.
pub(crate) fn path(parts: &[&str]) -> KeyPath {
    parts.iter().map(|p| key(p)).collect()
}

/// `at` with `more` keys appended.
pub(crate) fn join(at: &[Segment], more: &[&str]) -> KeyPath {
    let mut out = at.to_vec();
    out.extend(more.iter().map(|k| key(k)));
    out
}

/// Collects diagnostics, each located through the document's line index.
pub(crate) struct Checker<'a> {
    file: &'a str,
    doc: &'a Document,
    /// Everything reported so far.
    pub diags: Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    /// A collector that starts with `diags`.
    pub(crate) fn new(file: &'a str, doc: &'a Document, diags: Vec<Diagnostic>) -> Self {
        Self { file, doc, diags }
    }

    /// Reports `message` at `at`.
    pub(crate) fn error(&mut self, at: &[Segment], message: String) {
        self.diags.push(Diagnostic::at(self.file, self.doc.line_of(at), display_path(at), message));
    }

    /// Reports a key this version does not implement.
    pub(crate) fn not_supported(&mut self, at: &[Segment], what: &str) {
        self.error(at, format!("{what} is not supported yet by this version of vss"));
    }

    /// Whether the value at `at` came from the environment (and so must not be quoted).
    pub(crate) fn is_from_env(&self, at: &[Segment]) -> bool {
        self.doc.is_from_env(at)
    }
}

/// The closest known name to a mistyped one, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_lowercase();
    known
        .map(|k| {
            let lower = k.to_lowercase();
            let similarity = strsim::normalized_damerau_levenshtein(&name, &lower);
            let prefix = name.len() >= 3 && (lower.starts_with(&name) || name.starts_with(&lower));
            (if prefix { similarity.max(0.8) } else { similarity }, k)
        })
        .filter(|(score, _)| *score >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// ` (did you mean `x`?)`, or nothing.
pub(crate) fn hint<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    did_you_mean(name, known).map(|b| format!(" (did you mean `{b}`?)")).unwrap_or_default()
}
