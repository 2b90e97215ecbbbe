#![no_main]
//! Protobuf bytes → ModelInferRequest → tensors → validation against add_sub.

use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
#[allow(dead_code)]
mod targets;

fuzz_target!(|data: &[u8]| {
    targets::wire_request(data, targets::add_sub_spec());
});
