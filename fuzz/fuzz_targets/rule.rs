//! cargo fuzz target `rule`: see `mirror_fuzz_targets::rule`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_fuzz_targets::rule(data));
