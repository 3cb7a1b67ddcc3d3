//! Fuzz target: see `ringpool::__fuzz::ring_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringpool::__fuzz::ring_config(data));
