//! Fuzz target: see `ringpool::__fuzz::segment_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringpool::__fuzz::segment_header(data));
