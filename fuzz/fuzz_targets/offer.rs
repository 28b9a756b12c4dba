//! Fuzz target `offer`: see `duetbox::fuzzing::offer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    duetbox::fuzzing::offer(data);
});
