#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| confidant_fuzz_targets::manifest(data));
