//! `screen_user::fuzzing::dnsbl_sites` on every input libFuzzer makes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| screen_user::fuzzing::dnsbl_sites(data));
