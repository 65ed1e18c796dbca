//! cargo fuzz target `journal_record`: see `mirror_fuzz_targets::journal_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mirror_fuzz_targets::journal_record(data));
