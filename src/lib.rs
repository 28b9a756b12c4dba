//! duetbox: phones as microphones over WebRTC, mixed on a small box and played on the
//! venue's speakers, with every singer's own mix sent back.
//!
//! The crate is a library plus a thin binary so that `tests/` and `benches/` reach the
//! same modules. Start with `ARCHITECTURE.md` for the map; in code, start with
//! [`engine`], the pure core that everything else drives.
//!
//! - [`engine`]: pure audio core (jitter buffers, Opus, mixes). No clock, no IO, no threads.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod engine;
