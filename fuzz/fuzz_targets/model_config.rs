#![no_main]
//! A model's config.yaml, as text.

use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        targets::model_config(text);
    }
});
