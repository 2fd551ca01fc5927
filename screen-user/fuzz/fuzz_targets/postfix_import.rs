//! `screen_user::fuzzing::postfix_import` on every input libFuzzer makes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| screen_user::fuzzing::postfix_import(data));
