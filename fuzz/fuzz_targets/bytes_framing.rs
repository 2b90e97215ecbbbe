#![no_main]
//! Raw BYTES framing: the first byte is the element count, the rest the data.

use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

fuzz_target!(|data: &[u8]| {
    if let Some((&count, raw)) = data.split_first() {
        targets::bytes_framing(raw, count as usize);
    }
});
