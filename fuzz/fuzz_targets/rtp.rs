//! Fuzz target `rtp`: see `duetbox::fuzzing::rtp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    duetbox::fuzzing::rtp(data);
});
