//! Integration tests: one binary, one module per area (see STYLE.md §7).

// Integration tests run real parts in real time: they read clocks and sleep while they
// wait for them (each wait has a deadline). The rule is for the engine and audio thread.
#![allow(clippy::disallowed_methods)]

mod alsa;
mod audio_thread;
mod mqtt;
mod onboarding;
mod phones;
mod realtime;
mod recordings;
mod rejoin;
mod signaling;
mod songs;
mod strangers;
mod support;
mod systemd;
mod tidy;
mod whip;
