//! The two decisions of a sync, as pure functions over hashes and counts: what each secret
//! needs ([`classify`]) and whether owned orphans may be deleted ([`deletions`]). The worker
//! does the I/O around them: list → classify → read → diff → apply → record.

use std::collections::{BTreeMap, BTreeSet};

use crate::ContentHash;
use crate::config::DeleteThreshold;

/// What vss knows of one listed target secret without reading it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// Its current content hash, when a ledger record for its listed version (or a stamp
    /// that still describes it) says so.
    pub hash: Option<ContentHash>,
    /// Whether vss owns it (a ledger record, or its own ownership stamp).
    pub owned: bool,
}

/// Each desired or listed secret, by what it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Classified {
    /// Desired and not listed: created.
    pub added: Vec<String>,
    /// Desired, listed, and known to hold the desired hash: nothing to do, nothing to read.
    pub unchanged: Vec<String>,
    /// Desired and listed, but not known to hold the desired hash: read and compared.
    pub to_read: Vec<String>,
    /// Listed, owned, not desired and not withheld: deleted if [`deletions`] allows.
    pub orphans: Vec<String>,
}

/// Classifies without reading. `desired`: target name → desired hash; `held`: names withheld
/// (several desired secrets map to one target name), never written nor deleted; `listed`:
/// the target's secrets and what is known of each.
pub fn classify(
    desired: &BTreeMap<String, ContentHash>,
    held: &BTreeSet<String>,
    listed: &BTreeMap<String, Known>,
) -> Classified {
    let mut out = Classified::default();
    for (name, hash) in desired {
        match listed.get(name) {
            None => out.added.push(name.clone()),
            Some(known) if known.hash.as_ref() == Some(hash) => out.unchanged.push(name.clone()),
            Some(_) => out.to_read.push(name.clone()),
        }
    }
    out.orphans = listed
        .iter()
        .filter(|(name, known)| {
            known.owned && !desired.contains_key(*name) && !held.contains(*name)
        })
        .map(|(name, _)| name.clone())
        .collect();
    out
}

/// Counts over the whole target (all shards of it), so every shard decides as one job would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetCounts {
    /// Owned orphans: what deleting would remove.
    pub owned_orphans: usize,
    /// Secrets listed in the target.
    pub listed: usize,
    /// Whether the desired state is empty.
    pub desired_empty: bool,
}

/// Whether a sync deletes its owned orphans.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Deletions {
    /// Deletion is not opted in for this target.
    NotOptedIn,
    /// Opted in, but there is nothing owned to delete.
    NothingToDelete,
    /// The desired state is empty (a source that came back empty looks like this): every
    /// owned secret is kept, with a warning.
    KeptForEmptyDesired,
    /// More than the mass-delete threshold allows: the job changes nothing at all.
    Refused {
        /// Owned orphans in the whole target.
        deletable: usize,
        /// Secrets listed in the whole target.
        listed: usize,
        /// The threshold exceeded.
        threshold: DeleteThreshold,
    },
    /// Delete them.
    Allowed,
}

/// Decides on deletes: `policy` is the target's threshold when deletion is opted in (`None`
/// otherwise); `allow_mass_delete` is `--allow-mass-delete`.
pub fn deletions(
    policy: Option<DeleteThreshold>,
    counts: TargetCounts,
    allow_mass_delete: bool,
) -> Deletions {
    let Some(threshold) = policy else {
        return Deletions::NotOptedIn;
    };
    if counts.owned_orphans == 0 {
        return Deletions::NothingToDelete;
    }
    if counts.desired_empty {
        return Deletions::KeptForEmptyDesired;
    }
    if threshold.exceeded(counts.owned_orphans as u64, counts.listed as u64) && !allow_mass_delete {
        return Deletions::Refused {
            deletable: counts.owned_orphans,
            listed: counts.listed,
            threshold,
        };
    }
    Deletions::Allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HashKey, SecretValue};

    fn hash(text: &str) -> ContentHash {
        let key = HashKey::from_bytes([7; 32]);
        let mut map = serde_json::Map::new();
        map.insert("v".into(), text.into());
        key.hash(&SecretValue::new(map))
    }

    fn known(h: Option<&str>, owned: bool) -> Known {
        Known { hash: h.map(hash), owned }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classify_sorts_every_secret_by_what_it_needs() {
        let desired: BTreeMap<String, ContentHash> =
            [("new", "a"), ("same", "b"), ("moved", "c"), ("unknown", "d"), ("drifted", "e")]
                .into_iter()
                .map(|(n, v)| (n.to_string(), hash(v)))
                .collect();
        let listed: BTreeMap<String, Known> = [
            ("same", known(Some("b"), true)),
            ("moved", known(Some("old"), true)),
            ("unknown", known(None, false)),
            ("drifted", known(None, true)),
            ("owned-orphan", known(None, true)),
            ("foreign", known(Some("x"), false)),
            ("held", known(None, true)),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_string(), k))
        .collect();
        let held = BTreeSet::from(["held".to_string()]);
        let out = classify(&desired, &held, &listed);
        assert_eq!(out.added, names(&["new"]));
        assert_eq!(out.unchanged, names(&["same"]));
        assert_eq!(out.to_read, names(&["drifted", "moved", "unknown"]));
        assert_eq!(out.orphans, names(&["owned-orphan"]), "foreign and held secrets are kept");
    }

    #[test]
    fn an_empty_target_adds_everything_and_orphans_nothing() {
        let desired = BTreeMap::from([("a".to_string(), hash("1"))]);
        let out = classify(&desired, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(out, Classified { added: names(&["a"]), ..Default::default() });
    }

    fn counts(owned_orphans: usize, listed: usize, desired_empty: bool) -> TargetCounts {
        TargetCounts { owned_orphans, listed, desired_empty }
    }

    #[test]
    fn deletes_need_opt_in_orphans_a_desired_state_and_the_threshold() {
        let t = DeleteThreshold::default();
        assert_eq!(deletions(None, counts(3, 10, false), true), Deletions::NotOptedIn);
        assert_eq!(deletions(Some(t), counts(0, 10, true), false), Deletions::NothingToDelete);
        assert_eq!(
            deletions(Some(t), counts(3, 10, true), true),
            Deletions::KeptForEmptyDesired,
            "an empty desired state never deletes, even with --allow-mass-delete"
        );
        assert_eq!(
            deletions(Some(t), counts(5, 10, false), false),
            Deletions::Allowed,
            "5 ≤ count"
        );
        assert_eq!(
            deletions(Some(t), counts(6, 100, false), false),
            Deletions::Allowed,
            "6% ≤ 10%"
        );
        assert_eq!(
            deletions(Some(t), counts(11, 100, false), false),
            Deletions::Refused { deletable: 11, listed: 100, threshold: t }
        );
        assert_eq!(deletions(Some(t), counts(11, 100, false), true), Deletions::Allowed);
        let strict = DeleteThreshold { percent: 0.0, count: 0 };
        assert!(matches!(
            deletions(Some(strict), counts(1, 1000, false), false),
            Deletions::Refused { .. }
        ));
    }
}
