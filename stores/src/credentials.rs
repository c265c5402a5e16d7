//! Reading the credentials a config references: the one place a [`SecretRef`] becomes text.

use vss_protocol::config::SecretRef;
use zeroize::Zeroizing;

/// Reads what a [`SecretRef`] points at, in this process's environment.
pub trait ReadSecretRef {
    /// The referenced text, trimmed, read from this process's environment or a file; empty
    /// text is an error (an unset variable passed through as `""` must not become a
    /// credential anyone can guess). The error names the variable or file, never any content.
    fn read(&self) -> Result<Zeroizing<String>, String>;
}

impl ReadSecretRef for SecretRef {
    fn read(&self) -> Result<Zeroizing<String>, String> {
        let text = Zeroizing::new(match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        });
        let text = Zeroizing::new(text.trim().to_string());
        if text.is_empty() {
            return Err(match self {
                SecretRef::Env(name) => format!("environment variable {name} is empty"),
                SecretRef::File(path) => format!("{} is empty", path.display()),
            });
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_credential_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank");
        std::fs::write(&blank, "  \n").unwrap();
        let err = SecretRef::File(blank).read().unwrap_err();
        assert!(err.ends_with("is empty"), "{err}");
        let token = dir.path().join("token");
        std::fs::write(&token, "t0k\n").unwrap();
        assert_eq!(SecretRef::File(token).read().unwrap().as_str(), "t0k");
    }
}
