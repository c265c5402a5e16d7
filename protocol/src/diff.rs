//! Per-target change sets: names, key names and hashes, never values.

use serde::{Deserialize, Serialize};

use crate::{ContentHash, SecretValue};

/// What happens to one secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    /// The secret is created.
    Added,
    /// The secret's value changes.
    Modified,
    /// The secret is deleted.
    Removed,
}

impl ChangeType {
    /// The plan symbol: `+`, `~` or `-`.
    pub fn symbol(self) -> char {
        match self {
            ChangeType::Added => '+',
            ChangeType::Modified => '~',
            ChangeType::Removed => '-',
        }
    }
}

/// One secret's change, described without its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretChange {
    /// The secret's name in the target.
    pub path: String,
    /// Created, changed or deleted.
    pub change_type: ChangeType,
    /// Top-level keys present only in the desired value.
    pub keys_added: Vec<String>,
    /// Top-level keys present only in the current value.
    pub keys_removed: Vec<String>,
    /// Top-level keys present in both with different values.
    pub keys_modified: Vec<String>,
    /// Keyed hash of the current value, if the secret exists.
    pub current_hash: Option<ContentHash>,
    /// Keyed hash of the desired value, unless the secret is removed.
    pub desired_hash: Option<ContentHash>,
}

impl SecretChange {
    /// Describes a change from `current` to `desired`; either side may be absent.
    pub fn between(
        path: String,
        current: Option<(&SecretValue, ContentHash)>,
        desired: Option<(&SecretValue, ContentHash)>,
    ) -> Self {
        let change_type = match (&current, &desired) {
            (None, _) => ChangeType::Added,
            (_, None) => ChangeType::Removed,
            _ => ChangeType::Modified,
        };
        let empty = SecretValue::default();
        let cur = current.as_ref().map_or(&empty, |(v, _)| *v).expose();
        let des = desired.as_ref().map_or(&empty, |(v, _)| *v).expose();
        let keys_added = des.keys().filter(|k| !cur.contains_key(*k)).cloned().collect();
        let keys_removed = cur.keys().filter(|k| !des.contains_key(*k)).cloned().collect();
        let keys_modified = des
            .iter()
            .filter(|(k, v)| cur.get(*k).is_some_and(|c| c != *v))
            .map(|(k, _)| k.clone())
            .collect();
        Self {
            path,
            change_type,
            keys_added,
            keys_removed,
            keys_modified,
            current_hash: current.map(|(_, h)| h),
            desired_hash: desired.map(|(_, h)| h),
        }
    }
}

impl SecretChange {
    /// A change to a secret whose current value cannot be read (a write-only store): a
    /// rewrite (`desired: Some`) or a delete, with the hash vss last wrote if it knows it and
    /// no key-level detail.
    pub fn unseen(
        path: String,
        current_hash: Option<ContentHash>,
        desired: Option<(&SecretValue, ContentHash)>,
    ) -> Self {
        let change_type =
            if desired.is_some() { ChangeType::Modified } else { ChangeType::Removed };
        Self {
            path,
            change_type,
            keys_added: Vec::new(),
            keys_removed: Vec::new(),
            keys_modified: Vec::new(),
            current_hash,
            desired_hash: desired.map(|(_, h)| h),
        }
    }
}

/// Counts of a change set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Secrets created.
    pub added: u64,
    /// Secrets changed.
    pub modified: u64,
    /// Secrets deleted.
    pub removed: u64,
    /// Secrets already as desired.
    pub unchanged: u64,
    /// All of the above.
    pub total: u64,
}

impl Summary {
    /// Counts `changes` plus `unchanged` secrets that need nothing.
    pub fn of(changes: &[SecretChange], unchanged: u64) -> Self {
        let count = |t| changes.iter().filter(|c| c.change_type == t).count() as u64;
        let (added, modified, removed) =
            (count(ChangeType::Added), count(ChangeType::Modified), count(ChangeType::Removed));
        Self { added, modified, removed, unchanged, total: added + modified + removed + unchanged }
    }

    /// Adds another summary's counts to this one.
    pub fn add(&mut self, other: &Summary) {
        self.added += other.added;
        self.modified += other.modified;
        self.removed += other.removed;
        self.unchanged += other.unchanged;
        self.total += other.total;
    }

    /// Whether anything is created, changed or deleted.
    pub fn has_changes(&self) -> bool {
        self.added + self.modified + self.removed > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashKey;
    use serde_json::json;

    #[test]
    fn key_level_diff_names_keys_only() {
        let key = HashKey::from_bytes([7; 32]);
        let cur =
            SecretValue::new(json!({"a": "canary-1", "b": 1, "c": 3}).as_object().unwrap().clone());
        let des =
            SecretValue::new(json!({"a": "canary-2", "b": 1, "d": 4}).as_object().unwrap().clone());
        let change = SecretChange::between(
            "app/db".into(),
            Some((&cur, key.hash(&cur))),
            Some((&des, key.hash(&des))),
        );
        assert_eq!(change.change_type, ChangeType::Modified);
        assert_eq!(change.keys_added, vec!["d"]);
        assert_eq!(change.keys_removed, vec!["c"]);
        assert_eq!(change.keys_modified, vec!["a"]);
        let text = serde_json::to_string(&change).unwrap();
        assert!(!text.contains("canary"), "{text}");
    }

    #[test]
    fn summary_counts() {
        let key = HashKey::from_bytes([7; 32]);
        let v = SecretValue::new(json!({"k": 1}).as_object().unwrap().clone());
        let changes = vec![
            SecretChange::between("a".into(), None, Some((&v, key.hash(&v)))),
            SecretChange::between("b".into(), Some((&v, key.hash(&v))), None),
        ];
        let s = Summary::of(&changes, 3);
        assert_eq!((s.added, s.modified, s.removed, s.unchanged, s.total), (1, 0, 1, 3, 5));
        assert!(s.has_changes());
        assert!(!Summary::of(&[], 3).has_changes());
    }
}
