//! The deep-merge rules of the merge phase.
//!
//! The same rules as the reference pipeline, so that a migration from it validates zero-sum:
//! maps merge recursively; lists append (later items after earlier ones, duplicates kept);
//! scalars and type conflicts: the later value wins; a `null` in a later layer keeps the earlier
//! value. The result is a pure function of the layers: merging again never grows a list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SecretValue;

/// How lists from a later layer combine with the earlier list.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ListMerge {
    /// Later items after earlier ones, duplicates kept (the reference behaviour).
    #[default]
    Append,
    /// Later items after earlier ones, skipping items already present.
    AppendUnique,
    /// The later list replaces the earlier one.
    Replace,
}

/// Merges `later` into `earlier` in place.
pub fn deep_merge(earlier: &mut Value, later: Value, lists: ListMerge) {
    match (earlier, later) {
        (_, Value::Null) => {}
        (Value::Object(base), Value::Object(over)) => merge_maps(base, over, lists),
        (Value::Array(base), Value::Array(over)) => match lists {
            ListMerge::Append => base.extend(over),
            ListMerge::AppendUnique => {
                for item in over {
                    if !base.contains(&item) {
                        base.push(item);
                    }
                }
            }
            ListMerge::Replace => *base = over,
        },
        (slot, later) => *slot = later,
    }
}

fn merge_maps(
    base: &mut serde_json::Map<String, Value>,
    over: serde_json::Map<String, Value>,
    lists: ListMerge,
) {
    for (key, value) in over {
        match base.get_mut(&key) {
            Some(slot) => deep_merge(slot, value, lists),
            None => {
                base.insert(key, value);
            }
        }
    }
}

/// Merges one layer of secrets (name → value) into the accumulated result, per name.
pub fn merge_layer(
    acc: &mut BTreeMap<String, SecretValue>,
    layer: BTreeMap<String, SecretValue>,
    lists: ListMerge,
) {
    for (name, mut value) in layer {
        match acc.get_mut(&name) {
            Some(existing) => {
                let later = std::mem::take(value.expose_mut());
                merge_maps(existing.expose_mut(), later, lists);
            }
            None => {
                acc.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(a: Value, b: Value, lists: ListMerge) -> Value {
        let mut a = a;
        deep_merge(&mut a, b, lists);
        a
    }

    #[test]
    fn maps_merge_recursively() {
        let out = merged(
            json!({"db": {"host": "a", "port": 1}}),
            json!({"db": {"port": 2, "user": "u"}}),
            ListMerge::Append,
        );
        assert_eq!(out, json!({"db": {"host": "a", "port": 2, "user": "u"}}));
    }

    #[test]
    fn lists_append_and_keep_duplicates() {
        let out = merged(json!({"l": [1, 2]}), json!({"l": [2, 3]}), ListMerge::Append);
        assert_eq!(out, json!({"l": [1, 2, 2, 3]}));
    }

    #[test]
    fn lists_append_unique_and_replace() {
        let unique = merged(json!({"l": [1, 2]}), json!({"l": [2, 3]}), ListMerge::AppendUnique);
        assert_eq!(unique, json!({"l": [1, 2, 3]}));
        let replace = merged(json!({"l": [1, 2]}), json!({"l": [3]}), ListMerge::Replace);
        assert_eq!(replace, json!({"l": [3]}));
    }

    #[test]
    fn scalars_and_type_conflicts_take_the_later_value() {
        let out = merged(
            json!({"s": "a", "t": {"x": 1}, "u": [1]}),
            json!({"s": "b", "t": "flat", "u": {"k": 1}}),
            ListMerge::Append,
        );
        assert_eq!(out, json!({"s": "b", "t": "flat", "u": {"k": 1}}));
    }

    #[test]
    fn null_keeps_the_earlier_value() {
        let out = merged(
            json!({"a": 1, "b": {"c": 2}}),
            json!({"a": null, "b": null}),
            ListMerge::Append,
        );
        assert_eq!(out, json!({"a": 1, "b": {"c": 2}}));
        let added = merged(json!({}), json!({"n": null}), ListMerge::Append);
        assert_eq!(added, json!({"n": null}));
    }

    #[test]
    fn layers_merge_per_secret_name() {
        let secret = |v: Value| SecretValue::new(v.as_object().unwrap().clone());
        let mut acc = BTreeMap::from([("app".to_string(), secret(json!({"a": 1, "l": ["x"]})))]);
        let layer = BTreeMap::from([
            ("app".to_string(), secret(json!({"b": 2, "l": ["y"]}))),
            ("other".to_string(), secret(json!({"c": 3}))),
        ]);
        merge_layer(&mut acc, layer, ListMerge::Append);
        assert_eq!(acc["app"].expose(), secret(json!({"a": 1, "b": 2, "l": ["x", "y"]})).expose());
        assert_eq!(acc["other"].expose(), secret(json!({"c": 3})).expose());
    }
}
