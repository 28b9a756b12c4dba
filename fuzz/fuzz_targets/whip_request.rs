//! Fuzz target `whip_request`: see `duetbox::fuzzing::whip_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    duetbox::fuzzing::whip_request(data);
});
