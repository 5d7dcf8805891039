#![no_main]
//! See docs/FUZZING.md; the body is `correo_smtp::fuzz::data_reader`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| correo_smtp::fuzz::data_reader(data));
