//! cargo fuzz target `frame`: see `mirror_fuzz_targets::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_fuzz_targets::frame(data));
