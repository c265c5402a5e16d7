//! The config loader (`Config::from_yaml`) on arbitrary UTF-8: it never panics, a loaded
//! config has no inheritance cycle, and an invalid one says why. With `env-leaks` (a default
//! feature), also that no diagnostic quotes a value that came from the environment (seed
//! `corpus/config/env-values-in-diagnostics` holds the four messages that once did).

#![no_main]

use std::path::Path;

use libfuzzer_sys::{Corpus, fuzz_target};
use vss_fuzz::{CANARY, env_lookup, split_env};
use vss_protocol::config::{Config, ConfigError};

fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    Config::from_yaml(text, "vss.yaml", Path::new("/base"), env)
}

fn check(result: Result<Config, ConfigError>, canary_may_appear: bool) {
    match result {
        Ok(config) => {
            let order = config.topological_order();
            assert_eq!(order.len(), config.targets.len());
        }
        Err(ConfigError::Invalid(diags)) => {
            assert!(!diags.is_empty(), "an invalid config names at least one problem");
            let message = ConfigError::Invalid(diags).to_string();
            assert!(
                canary_may_appear || !cfg!(feature = "env-leaks") || !message.contains(CANARY),
                "a diagnostic quotes a value from the environment:\n{message}"
            );
        }
        Err(e @ ConfigError::Read { .. }) => panic!("from_yaml does no I/O, yet: {e}"),
    }
}

fuzz_target!(|data: &[u8]| -> Corpus {
    let Ok(data) = std::str::from_utf8(data) else {
        return Corpus::Reject;
    };
    check(load(data, &|_| None), true);
    let (text, value) = split_env(data);
    let canary_may_appear = text.contains(CANARY) || value.is_some_and(|v| v.contains(CANARY));
    check(load(text, &|name| env_lookup(name, value)), canary_may_appear);
    Corpus::Keep
});
