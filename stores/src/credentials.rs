//! Reading the credentials a config references: the one place a [`SecretRef`] becomes text.

use vss_protocol::config::SecretRef;
use zeroize::Zeroizing;

/// Reads what a [`SecretRef`] points at, in this process's environment.
pub trait ReadSecretRef {
    /// The referenced text, trimmed, read from this process's environment or a file. The
    /// error names the variable or file, never any content.
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
        Ok(Zeroizing::new(text.trim().to_string()))
    }
}
