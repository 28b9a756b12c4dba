//! Fuzz target `config`: see `duetbox::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    duetbox::fuzzing::config(data);
});
