//! Who may call `vss serve`: a bearer token, or a webhook body signed with a shared secret
//! (`X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body, as GitHub sends it).
//! Comparisons are constant-time; nothing here is ever logged.

use aws_lc_rs::{constant_time, digest, hmac};
use axum::http::HeaderMap;
use zeroize::Zeroizing;

/// The credentials the server accepts, read once at start (several of each: rotation).
pub struct Credentials {
    tokens: Vec<Zeroizing<String>>,
    webhook_keys: Vec<hmac::Key>,
}

/// How a request proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A bearer token.
    Token,
    /// A signed webhook body.
    Webhook,
}

impl Credentials {
    /// Credentials from their texts.
    pub fn new(tokens: Vec<Zeroizing<String>>, webhook_secrets: Vec<Zeroizing<String>>) -> Self {
        let webhook_keys = webhook_secrets
            .iter()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
            .collect();
        Self { tokens, webhook_keys }
    }

    /// Whether any credential is configured.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.webhook_keys.is_empty()
    }

    /// Who the request is, if it proves it: a bearer token, or a valid body signature.
    pub fn check(&self, headers: &HeaderMap, body: &[u8]) -> Option<Caller> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(token) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
            // Digests of equal length: the comparison time says nothing about the token.
            let given = digest::digest(&digest::SHA256, token.trim().as_bytes());
            let known = self.tokens.iter().any(|t| {
                let expected = digest::digest(&digest::SHA256, t.as_bytes());
                constant_time::verify_slices_are_equal(expected.as_ref(), given.as_ref()).is_ok()
            });
            return known.then_some(Caller::Token);
        }
        let signature = header("x-hub-signature-256")?.strip_prefix("sha256=")?;
        let tag = decode_hex(signature)?;
        let valid = self.webhook_keys.iter().any(|key| hmac::verify(key, body, &tag).is_ok());
        valid.then_some(Caller::Webhook)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &str, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let tag = hmac::sign(&key, body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    }

    #[test]
    fn tokens_and_signatures_with_rotation() {
        let creds = Credentials::new(
            vec![Zeroizing::new("old".into()), Zeroizing::new("new".into())],
            vec![Zeroizing::new("s1".into()), Zeroizing::new("s2".into())],
        );
        let with = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
            h
        };
        assert_eq!(creds.check(&with("authorization", "Bearer new"), b""), Some(Caller::Token));
        assert_eq!(creds.check(&with("authorization", "Bearer old"), b""), Some(Caller::Token));
        assert_eq!(creds.check(&with("authorization", "Bearer nope"), b""), None);
        let body = br#"{"ref":"refs/heads/main"}"#;
        assert_eq!(
            creds.check(&with("x-hub-signature-256", &signed("s2", body)), body),
            Some(Caller::Webhook)
        );
        assert_eq!(creds.check(&with("x-hub-signature-256", &signed("s3", body)), body), None);
        assert_eq!(
            creds.check(&with("x-hub-signature-256", &signed("s1", body)), b"tampered"),
            None
        );
        assert_eq!(creds.check(&HeaderMap::new(), body), None);
    }
}
