//! Fuzz target `mqtt_command`: see `duetbox::fuzzing::mqtt_command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    duetbox::fuzzing::mqtt_command(data);
});
