//! Helpers shared by the fuzz targets in `fuzz_targets/`: an environment for `${VAR}`
//! expansion and a generator of JSON values from fuzzer bytes.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};

/// A value no config text contains unless the fuzzer writes it: it stands for a secret read
/// from the environment, and must never be quoted by a diagnostic.
pub const CANARY: &str = "canary-7f3a9c1e";

/// Splits fuzzer text into the config and an environment value: `text\0value`.
pub fn split_env(data: &str) -> (&str, Option<&str>) {
    match data.split_once('\0') {
        Some((text, value)) => (text, Some(value)),
        None => (data, None),
    }
}

/// The environment seen by the loader: `SECRET*` names hold [`CANARY`], `EMPTY` is set but
/// empty, `UNSET*` names are unset, and every other name holds `value` (unset without one).
pub fn env_lookup(name: &str, value: Option<&str>) -> Option<String> {
    if name.starts_with("SECRET") {
        Some(CANARY.to_string())
    } else if name == "EMPTY" {
        Some(String::new())
    } else if name.starts_with("UNSET") {
        None
    } else {
        value.map(str::to_string)
    }
}

/// How deep generated values nest (the merge recurses once per level).
const MAX_DEPTH: u32 = 8;

/// Keys from a small alphabet, so that two generated maps share keys and really merge.
fn key(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => "a".into(),
        1 => "b".into(),
        2 => "c".into(),
        3 => "list".into(),
        4 => "map".into(),
        _ => u.arbitrary::<String>()?,
    })
}

/// A JSON value drawn from fuzzer bytes, nested at most a few levels.
pub fn json_value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let choices: u8 = if depth >= MAX_DEPTH { 4 } else { 6 };
    Ok(match u.int_in_range(0..=choices)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(u.int_in_range(-3i64..=3)?.into()),
        3 => Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        4 => Value::String(u.arbitrary()?),
        5 => {
            let len = u.int_in_range(0..=4usize)?;
            Value::Array((0..len).map(|_| json_value(u, depth + 1)).collect::<Result<_>>()?)
        }
        _ => Value::Object(json_object(u, depth + 1)?),
    })
}

/// A JSON object drawn from fuzzer bytes.
pub fn json_object(u: &mut Unstructured<'_>, depth: u32) -> Result<Map<String, Value>> {
    let len = u.int_in_range(0..=4usize)?;
    let mut map = Map::new();
    for _ in 0..len {
        map.insert(key(u)?, json_value(u, depth)?);
    }
    Ok(map)
}
