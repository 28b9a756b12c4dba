//! Audio outputs: the only module that knows ALSA and WAV files.
//!
//! Each output is an [`audio::Sink`](crate::audio::Sink). `null` paces itself with the
//! monotonic clock (for machines without a sound card), `wav` writes a file and paces
//! like `null` (so a recording runs in real time, as the box would).

mod null;
mod wav;

pub use null::NullSink;
pub use wav::WavSink;
