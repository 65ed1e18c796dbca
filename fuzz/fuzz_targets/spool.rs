//! cargo fuzz target `spool`: see `mirror_fuzz_targets::spool`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_fuzz_targets::spool(data));
