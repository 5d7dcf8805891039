#![no_main]
//! See docs/FUZZING.md; the body is `msa::fuzz::prepare`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| msa::fuzz::prepare(data));
