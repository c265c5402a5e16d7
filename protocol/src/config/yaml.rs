//! YAML text → JSON value, keeping the line of every key and expanding `${VAR}`.
//!
//! The config is parsed into a span-annotated tree (saphyr), environment references in string
//! scalars are expanded, and the tree becomes a `serde_json::Value` plus an index from key path
//! to line. The typed config is then deserialized from that value, and every error is located
//! through the index. Paths whose text came from the environment are remembered so that no
//! message ever quotes them.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use saphyr::{MarkedYamlOwned, Scalar, YamlDataOwned, YamlLoader};
use serde_json::{Map, Number, Value};

use super::Diagnostic;

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A key path from the document root.
pub type KeyPath = Vec<Segment>;

/// Renders a key path the way users write it: `targets.Prod.imports[0]`.
pub fn display_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() { "(top level)".into() } else { out }
}

/// A parsed config document.
#[derive(Debug, Default)]
pub struct Document {
    /// The content, environment references expanded.
    pub root: Value,
    lines: BTreeMap<KeyPath, usize>,
    from_env: BTreeSet<KeyPath>,
    /// Scalars written as exactly `${NAME}`: the variable they name.
    env_refs: BTreeMap<KeyPath, String>,
}

impl Document {
    /// The line of the key at `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &[Segment]) -> Option<usize> {
        (0..=path.len()).rev().find_map(|n| self.lines.get(&path[..n]).copied())
    }

    /// Whether the value at `path` (or inside it) came from an environment variable.
    pub fn is_from_env(&self, path: &[Segment]) -> bool {
        self.from_env.range(path.to_vec()..).next().is_some_and(|p| p.starts_with(path))
            || (0..path.len()).any(|n| self.from_env.contains(&path[..n]))
    }

    /// The variable a scalar names when it is written as exactly `${NAME}`, so credentials can
    /// stay references instead of values.
    pub fn env_reference(&self, path: &[Segment]) -> Option<&str> {
        self.env_refs.get(path).map(String::as_str)
    }

    /// The value at `path`, if any.
    pub fn get(&self, path: &[Segment]) -> Option<&Value> {
        path.iter().try_fold(&self.root, |node, seg| match seg {
            Segment::Key(k) => node.get(k),
            Segment::Index(i) => node.get(i),
        })
    }

    /// Replaces the node at `path`; returns whether it existed.
    pub fn replace(&mut self, path: &[Segment], value: Value) -> bool {
        let node = path.iter().try_fold(&mut self.root, |node, seg| match seg {
            Segment::Key(k) => node.get_mut(k),
            Segment::Index(i) => node.get_mut(i),
        });
        match node {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        }
    }

    /// Removes the node at `path` from the content; returns whether something was removed.
    pub fn remove(&mut self, path: &[Segment]) -> bool {
        let Some((last, parent)) = path.split_last() else {
            return false;
        };
        let node = parent.iter().try_fold(&mut self.root, |node, seg| match seg {
            Segment::Key(k) => node.get_mut(k),
            Segment::Index(i) => node.get_mut(i),
        });
        match (node, last) {
            (Some(Value::Object(map)), Segment::Key(k)) => map.remove(k).is_some(),
            (Some(Value::Array(items)), Segment::Index(i)) if *i < items.len() => {
                items.remove(*i);
                true
            }
            _ => false,
        }
    }
}

/// Parses YAML text. `env` looks up environment variables (injected, so this stays pure).
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Document, Vec<Diagnostic>> {
    shape_check(text, file)?;
    let mut loader: YamlLoader<MarkedYamlOwned> = YamlLoader::default();
    loader.early_parse(false);
    let mut parser = saphyr_parser::Parser::new_from_str(text);
    let scan = parser.load(&mut loader, true).err().or_else(|| loader.error().cloned());
    if let Some(e) = scan {
        return Err(vec![Diagnostic::at(
            file,
            Some(e.marker().line()),
            String::new(),
            format!("invalid YAML: {}", e.info()),
        )]);
    }
    let mut docs = loader.into_documents();
    let mut doc = Document::default();
    let Some(root) = docs.pop() else {
        return Err(vec![Diagnostic::at(file, None, String::new(), "the file is empty".into())]);
    };
    if !docs.is_empty() {
        return Err(vec![Diagnostic::at(
            file,
            Some(root.span.start.line()),
            String::new(),
            "expected one YAML document, found several".into(),
        )]);
    }
    let mut ctx = Converter { file, env, doc: &mut doc, diags: Vec::new() };
    let root = ctx.convert(root, &mut Vec::new());
    if !ctx.diags.is_empty() {
        return Err(ctx.diags);
    }
    doc.root = root;
    if !doc.root.is_object() {
        return Err(vec![Diagnostic::at(
            file,
            Some(1),
            String::new(),
            "the config must be a mapping of keys".into(),
        )]);
    }
    Ok(doc)
}

/// How deep mappings and sequences may nest: far beyond any real config, far below what
/// would exhaust the stack.
const MAX_DEPTH: usize = 64;
/// How many nodes a document may hold once aliases are expanded (a "billion laughs" bomb
/// expands a few lines into billions).
const MAX_NODES: usize = 1_000_000;

/// Checks the event stream before anything is built from it, without recursion: one
/// document, nesting within [`MAX_DEPTH`], aliases expanding to at most [`MAX_NODES`], and only
/// YAML's own tags. Syntax errors are left to the loader, which reports them.
fn shape_check(text: &str, file: &str) -> Result<(), Vec<Diagnostic>> {
    use saphyr_parser::{Event, Tag};
    let refuse = |line: usize, message: &str| {
        Err(vec![Diagnostic::at(file, Some(line), String::new(), message.into())])
    };
    let custom = |tag: &Option<std::borrow::Cow<'_, Tag>>| {
        tag.as_ref().is_some_and(|t| !t.is_yaml_core_schema())
    };
    let (mut documents, mut nodes) = (0usize, 0usize);
    let mut open: Vec<(usize, usize)> = Vec::new(); // (anchor id, nodes before the container)
    let mut anchored: BTreeMap<usize, usize> = BTreeMap::new(); // anchor id → its nodes
    for event in saphyr_parser::Parser::new_from_str(text) {
        let Ok((event, span)) = event else { return Ok(()) };
        let line = span.start.line();
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return refuse(line, "expected one YAML document, found several");
                }
            }
            Event::MappingStart(anchor, tag) | Event::SequenceStart(anchor, tag) => {
                if custom(&tag) {
                    return refuse(line, "custom YAML tags (`!name`) are not allowed here");
                }
                nodes += 1;
                open.push((anchor, nodes));
                if open.len() > MAX_DEPTH {
                    return refuse(line, &format!("nested deeper than {MAX_DEPTH} levels"));
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((anchor, start)) = open.pop()
                    && anchor > 0
                {
                    anchored.insert(anchor, nodes + 1 - start);
                }
            }
            Event::Scalar(_, _, anchor, tag) => {
                if custom(&tag) {
                    return refuse(line, "custom YAML tags (`!name`) are not allowed here");
                }
                nodes += 1;
                if anchor > 0 {
                    anchored.insert(anchor, 1);
                }
            }
            Event::Alias(anchor) => nodes += anchored.get(&anchor).copied().unwrap_or(1),
            _ => {}
        }
        if nodes > MAX_NODES {
            return refuse(
                line,
                &format!("more than {MAX_NODES} values once aliases are expanded"),
            );
        }
    }
    Ok(())
}

struct Converter<'a> {
    file: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    doc: &'a mut Document,
    diags: Vec<Diagnostic>,
}

impl Converter<'_> {
    fn error(&mut self, line: usize, path: &[Segment], message: String) {
        self.diags.push(Diagnostic::at(self.file, Some(line), display_path(path), message));
    }

    fn convert(&mut self, node: MarkedYamlOwned, path: &mut KeyPath) -> Value {
        let line = node.span.start.line();
        match node.data {
            YamlDataOwned::Representation(text, style, tag) => {
                let text = if text.contains('$') {
                    if let Some(name) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}'))
                        && !name.contains([':', '$', '{', '}'])
                    {
                        self.doc.env_refs.insert(path.clone(), name.to_string());
                    }
                    match crate::env::expand(&text, self.env) {
                        Ok((expanded, used_env)) => {
                            if used_env {
                                self.doc.from_env.insert(path.clone());
                            }
                            expanded
                        }
                        Err(e) => {
                            self.error(line, path, e.to_string());
                            return Value::Null;
                        }
                    }
                } else {
                    text
                };
                let tag = tag.map(Cow::Owned);
                match Scalar::parse_from_cow_and_metadata(Cow::Borrowed(&text), style, tag.as_ref())
                {
                    Some(scalar) => self.scalar(scalar, line, path),
                    None => {
                        self.error(line, path, "the value does not match its YAML tag".into());
                        Value::Null
                    }
                }
            }
            YamlDataOwned::Value(scalar) => {
                let scalar = match &scalar {
                    saphyr::ScalarOwned::Null => Scalar::Null,
                    saphyr::ScalarOwned::Boolean(b) => Scalar::Boolean(*b),
                    saphyr::ScalarOwned::Integer(i) => Scalar::Integer(*i),
                    saphyr::ScalarOwned::FloatingPoint(f) => Scalar::FloatingPoint(*f),
                    saphyr::ScalarOwned::String(s) => Scalar::String(Cow::Borrowed(s.as_str())),
                };
                self.scalar(scalar, line, path)
            }
            YamlDataOwned::Sequence(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        path.push(Segment::Index(i));
                        self.doc.lines.insert(path.clone(), item.span.start.line());
                        let v = self.convert(item, path);
                        path.pop();
                        v
                    })
                    .collect(),
            ),
            YamlDataOwned::Mapping(entries) => {
                let mut map = Map::new();
                for (key, value) in entries {
                    let key_line = key.span.start.line();
                    let name = match key.data {
                        YamlDataOwned::Representation(text, _, _) => text,
                        YamlDataOwned::Value(saphyr::ScalarOwned::String(s)) => s,
                        _ => {
                            self.error(key_line, path, "mapping keys must be plain text".into());
                            continue;
                        }
                    };
                    path.push(Segment::Key(name.clone()));
                    self.doc.lines.insert(path.clone(), key_line);
                    let v = self.convert(value, path);
                    path.pop();
                    map.insert(name, v);
                }
                Value::Object(map)
            }
            YamlDataOwned::Tagged(_, inner) => self.convert(*inner, path),
            YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
                self.error(line, path, "this YAML value cannot be read".into());
                Value::Null
            }
        }
    }

    fn scalar(&mut self, scalar: Scalar, line: usize, path: &[Segment]) -> Value {
        match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(b),
            Scalar::Integer(i) => Value::Number(i.into()),
            Scalar::FloatingPoint(f) => match Number::from_f64(f.into_inner()) {
                Some(n) => Value::Number(n),
                None => {
                    self.error(line, path, "NaN and infinity are not allowed here".into());
                    Value::Null
                }
            },
            Scalar::String(s) => Value::String(s.into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t".into()),
            "PAR" => Some("6".into()),
            _ => None,
        }
    }

    #[test]
    fn keeps_lines_and_types_of_plain_expanded_scalars() {
        let text = "a:\n  b: ${PAR}\n  c: \"${PAR}\"\n  d: [x, y]\n";
        let doc = parse(text, "f.yaml", &env).unwrap();
        assert_eq!(doc.root["a"]["b"], Value::from(6));
        assert_eq!(doc.root["a"]["c"], Value::from("6"));
        let key = |k: &str| Segment::Key(k.into());
        assert_eq!(doc.line_of(&[key("a"), key("d"), Segment::Index(1)]), Some(4));
        assert_eq!(doc.line_of(&[key("a"), key("c"), key("zzz")]), Some(3));
        assert!(doc.is_from_env(&[key("a"), key("b")]));
        assert!(doc.is_from_env(&[key("a")]));
        assert!(!doc.is_from_env(&[key("a"), key("d")]));
    }

    #[test]
    fn refuses_several_documents_deep_nesting_custom_tags_and_alias_bombs() {
        let one = |text: &str| match parse(text, "f.yaml", &env) {
            Err(errs) => errs[0].to_string(),
            Ok(_) => "accepted".into(),
        };
        assert_eq!(one("a: 1\n---\nb: 2\n"), "f.yaml:2: expected one YAML document, found several");
        let mut deep = String::new();
        for level in 0..5000 {
            deep.push_str(&format!("{}k:\n", " ".repeat(level)));
        }
        assert!(one(&deep).ends_with("nested deeper than 64 levels"), "{}", one(&deep));
        assert!(one("a: !foo bar\n").contains("custom YAML tags"));
        assert!(one("a: !!str 5\n") == "accepted");
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, name) in ["b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                ["b", "c", "d", "e", "f", "g"][i - 1].to_string()
            };
            bomb.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        assert!(one(&bomb).contains("once aliases are expanded"), "{}", one(&bomb));
    }

    #[test]
    fn reports_syntax_errors_and_missing_variables_with_lines() {
        let errs = parse("a: [1, 2\nb: 3\n", "f.yaml", &env).unwrap_err();
        assert!(errs[0].to_string().starts_with("f.yaml:"), "{}", errs[0]);
        let errs = parse("a: 1\nb: ${MISSING}\n", "f.yaml", &env).unwrap_err();
        assert_eq!(errs[0].line, Some(2));
        assert!(errs[0].to_string().contains("MISSING"));
    }
}
