//! Fuzzes the EncryptionConfiguration parser: any bytes must give a config or an error, never a
//! panic; a config that parses must also survive lookups, key mapping and the report.
//! Seed corpus: `crates/seal/tests/data/configs/{valid,invalid}/`.
#![no_main]

use coffer_seal::config::{self, GroupResource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = config::parse(data, "fuzz") {
        for r in ["secrets", "deployments.apps", "foos.example.com"] {
            let _ = cfg.providers_for(&GroupResource::parse(r));
        }
        let _ = cfg.providers_for_key("/registry", data);
        let _ = config::check(&cfg, "/registry");
    } else if let Some(split) = data.iter().position(|&b| b == 0) {
        // Also use the bytes as a prefix/key pair for the key mapping.
        let (prefix, key) = data.split_at(split);
        if let Ok(prefix) = std::str::from_utf8(prefix) {
            let _ = config::resource_for_key(prefix, &key[1..]);
        }
    }
});
