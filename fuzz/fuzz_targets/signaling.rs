//! Fuzz target `signaling`: see `duetbox::fuzzing::signaling_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    duetbox::fuzzing::signaling_message(data);
});
