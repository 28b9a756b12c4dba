//! Audio outputs: the only module that knows ALSA and WAV files.
//!
//! Each output is an [`audio::Sink`](crate::audio::Sink). `null` paces itself with the
//! monotonic clock (for machines without a sound card), `wav` writes a file and paces
//! like `null` (so a recording runs in real time, as the box would).

mod null;
mod wav;

pub use null::NullSink;
pub use wav::WavSink;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the venue mix goes, as written in the config (`audio.output`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// ALSA's default device, else a timer-paced null output (with a warning).
    Auto,
    /// An ALSA PCM by name.
    Alsa {
        /// PCM name, e.g. `hw:1,0` or `default`.
        pcm: String,
    },
    /// A WAV file.
    Wav {
        /// The file.
        path: PathBuf,
    },
    /// Nowhere, paced by a timer.
    Null,
}

/// An output spec that is none of the accepted forms.
#[derive(Debug, thiserror::Error)]
#[error("expected \"auto\", \"null\", \"alsa:<pcm>\" or \"wav:<path>\"")]
pub struct BadOutputSpec;

impl FromStr for OutputSpec {
    type Err = BadOutputSpec;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(OutputSpec::Auto),
            "null" => Ok(OutputSpec::Null),
            _ => match s.split_once(':') {
                Some(("alsa", pcm)) if !pcm.is_empty() => Ok(OutputSpec::Alsa { pcm: pcm.into() }),
                Some(("wav", path)) if !path.is_empty() => {
                    Ok(OutputSpec::Wav { path: path.into() })
                }
                _ => Err(BadOutputSpec),
            },
        }
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputSpec::Auto => f.write_str("auto"),
            OutputSpec::Null => f.write_str("null"),
            OutputSpec::Alsa { pcm } => write!(f, "alsa:{pcm}"),
            OutputSpec::Wav { path } => write!(f, "wav:{}", path.display()),
        }
    }
}

/// Opens the output named by `spec`. The `Option<String>` is a warning for the caller
/// to log (a fallback was taken).
pub fn open(
    spec: &OutputSpec,
    period_frames: usize,
    _buffer_frames: usize,
) -> Result<(Box<dyn crate::audio::Sink>, Option<String>), crate::audio::SinkError> {
    match spec {
        OutputSpec::Null => Ok((Box::new(NullSink::new(period_frames)), None)),
        OutputSpec::Wav { path } => Ok((Box::new(WavSink::create(path, period_frames)?), None)),
        OutputSpec::Auto => Ok((
            Box::new(NullSink::new(period_frames)),
            Some(
                "ALSA output not built into this version; playing to a timer-paced null output"
                    .into(),
            ),
        )),
        OutputSpec::Alsa { pcm } => Err(crate::audio::SinkError(format!(
            "alsa:{pcm}: ALSA output not built into this version"
        ))),
    }
}
