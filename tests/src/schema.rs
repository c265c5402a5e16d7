//! The config's JSON Schema (`vss config schema`), checked against every config the suite
//! writes: a config vss accepts must never be refused by the schema an editor uses.

use std::sync::OnceLock;

use serde_json::Value;
use vss_protocol::config::Config;

/// What the schema says about `yaml`: one line per violation, empty when it conforms (or
/// when the text is not YAML at all: the loader reports that itself). `${NAME}`s stay as
/// written, as an editor sees them.
pub fn violations(yaml: &str) -> Vec<String> {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(&Config::schema()).expect("the schema is a valid JSON Schema")
    });
    let as_written = |name: &str| Some(format!("${{{name}}}"));
    let Ok(doc) = vss_protocol::config::yaml::parse(yaml, "vss.yaml", &as_written) else {
        return Vec::new();
    };
    violations_of(validator, &doc.root)
}

fn violations_of(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator.iter_errors(doc).map(|e| format!("{}: {}", e.instance_path(), e)).collect()
}
