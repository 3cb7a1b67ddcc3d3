//! Fuzz target: see `ringpool::__fuzz::byte_ring_recv`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringpool::__fuzz::byte_ring_recv(data));
