//! `${VAR}` expansion: the one set of rules for the config and for Vault migrations.
//!
//! `${NAME}` is the variable's value, `${NAME:-default}` the default when it is unset or
//! empty, and `$${` a literal `${`. Names are letters, digits and `_`, not starting with a
//! digit. Errors name the variable, never a value.

/// Why a text could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${NAME}` with NAME unset (or empty) and no default.
    #[error("environment variable `{0}` is not set (use `${{{0}:-default}}` for a default)")]
    Missing(String),
    /// `${` with no `}`.
    #[error("unterminated `${{` (write `$${{` for a literal `${{`)")]
    Unterminated,
    /// `${...}` that does not name a variable.
    #[error("`${{{0}}}` is not a valid environment variable reference")]
    InvalidName(String),
    /// A default that holds another `${`: not supported (it would expand to a wrong text).
    #[error("`${{{0}:-…}}`: a default cannot hold another `${{…}}`")]
    NestedDefault(String),
}

/// Expands `text`; returns it and whether any variable was substituted.
pub fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, bool), ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut used = false;
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or(ExpandError::Unterminated)?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ExpandError::InvalidName(name.to_string()));
            }
            if default.is_some_and(|d| d.contains("${")) {
                return Err(ExpandError::NestedDefault(name.to_string()));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => {
                    out.push_str(&v);
                    used = true;
                }
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ExpandError::Missing(name.to_string())),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok((out, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(expand("a-${TOKEN}-b", &env).unwrap(), ("a-s3cr3t-b".into(), true));
        assert_eq!(expand("${NOPE:-x}", &env).unwrap(), ("x".into(), false));
        assert_eq!(expand("${EMPTY:-x}", &env).unwrap(), ("x".into(), false));
        assert_eq!(expand("$${TOKEN} $5", &env).unwrap(), ("${TOKEN} $5".into(), false));
        assert_eq!(expand("${NOPE}", &env), Err(ExpandError::Missing("NOPE".into())));
        let message = ExpandError::Missing("NOPE".into()).to_string();
        assert_eq!(
            message,
            "environment variable `NOPE` is not set (use `${NOPE:-default}` for a default)"
        );
        assert_eq!(expand("${bad-name}", &env), Err(ExpandError::InvalidName("bad-name".into())));
        assert_eq!(expand("a ${oops", &env), Err(ExpandError::Unterminated));
        assert_eq!(expand("${A:-${B}}/x", &env), Err(ExpandError::NestedDefault("A".into())));
        assert_eq!(
            ExpandError::Unterminated.to_string(),
            "unterminated `${` (write `$${` for a literal `${`)"
        );
    }
}
