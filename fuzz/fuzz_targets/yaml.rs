//! YAML parsing alone (`config::yaml::parse`) on arbitrary UTF-8: it never panics, a parsed
//! document is a mapping whose every key has a line within the text and can be read back by
//! its path, and values are marked as coming from the environment exactly when they do.
//!
//! Input: `yaml text`, optionally followed by `\0` and the value of the environment's
//! variables (see `vss_fuzz::env_lookup`).

#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use serde_json::Value;
use vss_fuzz::{CANARY, env_lookup, split_env};
use vss_protocol::config::yaml::{self, Segment};

/// Visits every node of the document with its path.
fn walk(value: &Value, path: &mut Vec<Segment>, visit: &mut dyn FnMut(&[Segment], &Value)) {
    visit(path, value);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Segment::Key(k.clone()));
                walk(v, path, visit);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                walk(v, path, visit);
                path.pop();
            }
        }
        _ => {}
    }
}

fn check(text: &str, env: &dyn Fn(&str) -> Option<String>, env_is_empty: bool) {
    let doc = match yaml::parse(text, "f.yaml", env) {
        Ok(doc) => doc,
        Err(diags) => {
            assert!(!diags.is_empty(), "a refused document names at least one problem");
            diags.iter().for_each(|d| drop(d.to_string()));
            return;
        }
    };
    assert!(doc.root.is_object(), "a parsed config is a mapping");
    // The scanner puts the end of a text without a final line break on the line after it.
    let last_line = 2 + text.matches(['\n', '\r']).count();
    let canary_in_text = text.contains(CANARY);
    walk(&doc.root, &mut Vec::new(), &mut |path, value| {
        assert_eq!(doc.get(path), Some(value), "{}", yaml::display_path(path));
        if let Some(line) = doc.line_of(path) {
            assert!((1..=last_line).contains(&line), "line {line} of {last_line}");
        }
        if !path.is_empty() {
            assert!(doc.line_of(path).is_some(), "{} has no line", yaml::display_path(path));
        }
        if env_is_empty {
            assert!(
                !doc.is_from_env(path),
                "{} marked as from the environment",
                yaml::display_path(path)
            );
        }
        if let Value::String(s) = value
            && s.contains(CANARY)
            && !canary_in_text
        {
            assert!(
                doc.is_from_env(path),
                "{} not marked as from the environment",
                yaml::display_path(path)
            );
        }
    });
}

fuzz_target!(|data: &[u8]| -> Corpus {
    let Ok(data) = std::str::from_utf8(data) else {
        return Corpus::Reject;
    };
    check(data, &|_| None, true);
    let (text, value) = split_env(data);
    if value.is_some_and(|v| v.contains(CANARY)) {
        return Corpus::Keep;
    }
    check(text, &|name| env_lookup(name, value), false);
    Corpus::Keep
});
