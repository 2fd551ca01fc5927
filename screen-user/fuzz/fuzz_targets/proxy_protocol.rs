//! `screen_user::fuzzing::proxy_protocol` on every input libFuzzer makes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| screen_user::fuzzing::proxy_protocol(data));
