//! `screen_user::fuzzing::cidr_table` on every input libFuzzer makes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| screen_user::fuzzing::cidr_table(data));
