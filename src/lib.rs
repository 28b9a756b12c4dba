//! duetbox: phones as microphones over WebRTC, mixed on a small box and played on the
//! venue's speakers, with every singer's own mix sent back.
//!
//! The crate is a library plus a thin binary so that `tests/` and `benches/` reach the
//! same modules. Start with `ARCHITECTURE.md` for the map; in code, start with
//! [`engine`], the pure core that everything else drives.
//!
//! - [`engine`]: pure audio core (jitter buffers, Opus, mixes). No clock, no IO, no threads.
//! - [`audio`]: the real-time thread that drives the engine into a sink, and its queues.
//! - [`output`]: the sinks (ALSA, WAV, null) and the output spec that picks one.
//! - [`control`]: the room (who is on stage, every setting) and the task that owns it.
//! - [`mqtt`]: the venue panel over MQTT (status, state, commands, Home Assistant).
//! - [`service`]: systemd notifications (READY, STATUS, STOPPING, watchdog).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod audio;
pub mod config;
pub mod control;
pub mod discovery;
pub mod engine;
#[cfg(any(test, feature = "testkit"))]
pub mod fuzzing;
pub mod http;
pub mod lan;
pub mod limits;
pub mod mqtt;
pub mod output;
pub mod record;
pub mod rtc;
pub mod service;
pub mod songs;
pub mod telemetry;
pub mod trust;
