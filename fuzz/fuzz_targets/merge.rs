//! The deep merge (`merge::deep_merge`, `merge::merge_layer`) on generated JSON, under each
//! `ListMerge` rule, against the rules it documents: maps merge key by key, lists append (or
//! append unique items, or are replaced), scalars and type conflicts take the later value, a
//! later `null` keeps the earlier value; merging into nothing gives the layer back; merging
//! the same layer again changes nothing unless lists append.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use vss_fuzz::{json_object, json_value};
use vss_protocol::SecretValue;
use vss_protocol::merge::{ListMerge, deep_merge, merge_layer};

const RULES: [ListMerge; 3] = [ListMerge::Append, ListMerge::AppendUnique, ListMerge::Replace];

fn merged(earlier: &Value, later: &Value, lists: ListMerge) -> Value {
    let mut out = earlier.clone();
    deep_merge(&mut out, later.clone(), lists);
    out
}

/// The documented rules, stated on the result `m` of merging `b` into `a`.
fn check(a: &Value, b: &Value, m: &Value, lists: ListMerge) {
    match (a, b) {
        (_, Value::Null) => assert_eq!(m, a, "a later null keeps the earlier value"),
        (Value::Object(a), Value::Object(b)) => {
            let m = m.as_object().expect("two maps merge into a map");
            assert!(m.keys().all(|k| a.contains_key(k) || b.contains_key(k)), "no key invented");
            for (k, av) in a {
                let mv = m.get(k).expect("earlier keys are kept");
                match b.get(k) {
                    Some(bv) => check(av, bv, mv, lists),
                    None => assert_eq!(mv, av),
                }
            }
            for (k, bv) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                assert_eq!(m.get(k), Some(bv), "later-only keys are taken as they are");
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            let m = m.as_array().expect("two lists merge into a list");
            match lists {
                ListMerge::Append => assert_eq!(*m, [a.as_slice(), b].concat()),
                ListMerge::Replace => assert_eq!(m, b),
                ListMerge::AppendUnique => {
                    assert_eq!(&m[..a.len()], a.as_slice(), "earlier items come first");
                    let added = &m[a.len()..];
                    for (i, item) in added.iter().enumerate() {
                        assert!(b.contains(item), "added items come from the later list");
                        assert!(!a.contains(item), "an item already present is not added");
                        assert!(!added[..i].contains(item), "an item is added once");
                    }
                    assert!(b.iter().all(|item| m.contains(item)), "every later item is present");
                }
            }
        }
        _ => assert_eq!(m, b, "scalars and type conflicts take the later value"),
    }
}

fn secrets(u: &mut Unstructured<'_>) -> Result<BTreeMap<String, SecretValue>> {
    let mut out = BTreeMap::new();
    for name in ["app", "db", "api"] {
        if u.arbitrary()? {
            out.insert(name.to_string(), SecretValue::new(json_object(u, 1)?));
        }
    }
    Ok(out)
}

fn exposed(secrets: &BTreeMap<String, SecretValue>) -> BTreeMap<&str, &Map<String, Value>> {
    secrets.iter().map(|(k, v)| (k.as_str(), v.expose())).collect()
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let lists = *u.choose(&RULES)?;
    let a = json_value(&mut u, 0)?;
    let b = json_value(&mut u, 0)?;

    let m = merged(&a, &b, lists);
    check(&a, &b, &m, lists);
    assert_eq!(
        merged(&Value::Object(Map::new()), &b, lists).is_object(),
        b.is_object() || b.is_null()
    );
    if b.is_object() {
        assert_eq!(merged(&Value::Object(Map::new()), &b, lists), b, "merged into nothing");
    }
    assert_eq!(merged(&a, &Value::Null, lists), a);
    if a.is_object() {
        assert_eq!(
            merged(&a, &Value::Object(Map::new()), lists),
            a,
            "an empty layer changes nothing"
        );
    }
    if lists != ListMerge::Append {
        assert_eq!(merged(&m, &b, lists), m, "merging the same layer again changes nothing");
    }

    // Layers of secrets merge per name, each like two maps.
    let acc = secrets(&mut u)?;
    let layer = secrets(&mut u)?;
    let mut from_nothing = BTreeMap::new();
    merge_layer(&mut from_nothing, layer.clone(), lists);
    assert_eq!(exposed(&from_nothing), exposed(&layer), "merged into nothing");
    let mut out = acc.clone();
    merge_layer(&mut out, layer.clone(), lists);
    assert!(out.keys().all(|k| acc.contains_key(k) || layer.contains_key(k)));
    for (name, value) in &out {
        let earlier = acc.get(name).map(|v| Value::Object(v.expose().clone()));
        let later = layer.get(name).map(|v| Value::Object(v.expose().clone()));
        let expected = match (earlier, later) {
            (Some(e), Some(l)) => merged(&e, &l, lists),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => unreachable!("checked above"),
        };
        assert_eq!(Value::Object(value.expose().clone()), expected, "secret {name}");
    }
    assert_eq!(
        out.len(),
        acc.keys().chain(layer.keys()).collect::<std::collections::BTreeSet<_>>().len()
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
