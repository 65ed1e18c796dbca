//! cargo fuzz target `rt1_record`: see `mirror_fuzz_targets::rt1_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_fuzz_targets::rt1_record(data));
