//! Secret values and their keyed content hashes.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroize;

/// The value of one secret: a JSON object of key → JSON value.
///
/// `Debug` and `Display` print `<redacted>`, the contents are zeroized on drop, and only
/// [`SecretValue::expose`] reads them. It deliberately implements neither `Serialize` nor
/// `Deserialize`, so it cannot slip into a report, a log field or a wire message by accident.
#[derive(Clone, Default, PartialEq)]
pub struct SecretValue(Map<String, Value>);

impl SecretValue {
    /// Wraps a JSON object.
    pub fn new(fields: Map<String, Value>) -> Self {
        Self(fields)
    }

    /// Parses a JSON document that must hold one object. Errors never quote the input.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, InvalidSecret> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(other) => {
                let kind = json_kind(&other);
                zeroize_value(other);
                Err(InvalidSecret(format!("expected a JSON object, found {kind}")))
            }
            // serde_json's own messages quote no input; its depth limit is not a syntax error.
            Err(e) if e.to_string().starts_with("recursion limit exceeded") => Err(InvalidSecret(
                format!("nested deeper than 128 levels (line {}, column {})", e.line(), e.column()),
            )),
            Err(e) => Err(InvalidSecret(format!(
                "not valid JSON (line {}, column {}: {:?})",
                e.line(),
                e.column(),
                e.classify()
            ))),
        }
    }

    /// A secret stored as one text (AWS Secrets Manager, GitHub, a key of a Kubernetes
    /// Secret): a JSON object as such, anything else as `{"value": text}`.
    pub fn from_text(text: &str) -> Self {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Self(map),
            other => {
                if let Ok(v) = other {
                    zeroize_value(v);
                }
                Self(Map::from_iter([("value".into(), Value::String(text.to_string()))]))
            }
        }
    }

    /// The inverse of [`from_text`](Self::from_text): a lone `value` string as itself (the
    /// shape plain-string secrets are read in), anything else as a JSON object.
    pub fn to_text(&self) -> zeroize::Zeroizing<String> {
        if self.0.len() == 1
            && let Some(Value::String(s)) = self.0.get("value")
        {
            return zeroize::Zeroizing::new(s.clone());
        }
        zeroize::Zeroizing::new(
            serde_json::to_string(&self.0).expect("a JSON map always serializes"),
        )
    }

    /// Reads the fields. Every call site is a place where a value leaves its wrapper.
    pub fn expose(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Mutable access to the fields, for the merge phase.
    pub fn expose_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.0
    }

    /// The canonical encoding: compact JSON with keys sorted at every level.
    pub fn canonical_json(&self) -> Vec<u8> {
        // serde_json's Map is a BTreeMap here (no `preserve_order`), so keys come out sorted.
        serde_json::to_vec(&self.0).expect("a JSON map always serializes")
    }

    /// The names of the top-level keys.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        for (mut key, value) in std::mem::take(&mut self.0) {
            key.zeroize();
            zeroize_value(value);
        }
    }
}

/// Overwrites every string held in a JSON value before it is freed.
pub fn zeroize_value(value: Value) {
    match value {
        Value::String(mut s) => s.zeroize(),
        Value::Array(items) => items.into_iter().for_each(zeroize_value),
        Value::Object(map) => {
            for (mut key, value) in map {
                key.zeroize();
                zeroize_value(value);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The JSON type name of a value, for error messages that must not quote it.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A secret's content did not have the expected shape. The message never quotes the content.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSecret(String);

/// The 32-byte key of the content hash. Same key across runs and workers, so hashes written
/// earlier (ledger, store metadata) compare with hashes computed now.
#[derive(Clone)]
pub struct HashKey([u8; 32]);

impl HashKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses the 64-hex-digit form kept in the state ledger or a `hash_key` reference.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// The 64-hex-digit form.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The keyed hash of a secret's canonical JSON.
    pub fn hash(&self, value: &SecretValue) -> ContentHash {
        let mut bytes = value.canonical_json();
        let hash = blake3::keyed_hash(&self.0, &bytes);
        bytes.zeroize();
        ContentHash(hash.to_hex().to_string())
    }

    /// A keyed hash of arbitrary bookkeeping bytes (e.g. the fingerprint of a merge's inputs).
    pub fn fingerprint(&self, bytes: &[u8]) -> ContentHash {
        ContentHash(blake3::keyed_hash(&self.0, bytes).to_hex().to_string())
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

impl Drop for HashKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A keyed BLAKE3 hash of a secret's canonical JSON, as 64 hex digits. Safe to print: without
/// the key it reveals nothing, even about low-entropy values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContentHash(String);

impl ContentHash {
    /// A hash in its stored form (64 lowercase hex digits), e.g. from store metadata.
    pub fn parse(text: &str) -> Option<Self> {
        let valid =
            text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Self(text.to_string()))
    }

    /// The full hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for human-readable output.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_round_trips_plain_strings_and_objects() {
        let plain = SecretValue::from_text("hunter2");
        assert_eq!(plain.expose()["value"], "hunter2");
        assert_eq!(plain.to_text().as_str(), "hunter2");
        let object = SecretValue::from_text(r#"{"user":"u","port":5432}"#);
        assert_eq!(object.expose()["port"], 5432);
        assert_eq!(SecretValue::from_text(&object.to_text()), object);
        // Valid JSON that is not an object is still a plain string.
        assert_eq!(SecretValue::from_text("[1]").expose()["value"], "[1]");
    }
    use serde_json::json;

    fn secret(v: Value) -> SecretValue {
        match v {
            Value::Object(m) => SecretValue::new(m),
            _ => unreachable!(),
        }
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let s = secret(json!({"password": "hunter2"}));
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
    }

    #[test]
    fn hash_is_keyed_and_order_independent() {
        let a = secret(json!({"a": 1, "b": {"y": 2, "x": 1}}));
        let b: SecretValue =
            SecretValue::from_json_slice(br#"{"b": {"x": 1, "y": 2}, "a": 1}"#).unwrap();
        let k1 = HashKey::from_bytes([1; 32]);
        let k2 = HashKey::from_bytes([2; 32]);
        assert_eq!(k1.hash(&a), k1.hash(&b));
        assert_ne!(k1.hash(&a), k2.hash(&a));
        assert_eq!(k1.hash(&a).as_str().len(), 64);
    }

    #[test]
    fn hash_key_hex_round_trips() {
        let k = HashKey::from_bytes([0xab; 32]);
        assert_eq!(HashKey::from_hex(&k.to_hex()).unwrap().to_hex(), k.to_hex());
        assert!(HashKey::from_hex("zz").is_none());
    }

    #[test]
    fn invalid_secret_errors_do_not_quote_the_input() {
        let err = SecretValue::from_json_slice(br#""canary-123""#).unwrap_err();
        assert!(!err.to_string().contains("canary"), "{err}");
        let err = SecretValue::from_json_slice(br#"{"k": "canary-123""#).unwrap_err();
        assert!(!err.to_string().contains("canary"), "{err}");
    }
}
