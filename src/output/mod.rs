//! Audio outputs (and the line-in's capture): the only module that knows ALSA and WAV
//! files.
//!
//! Each output is an [`audio::Sink`](crate::audio::Sink). `alsa` writes to a sound card
//! and is paced by its clock; `null` paces itself with the monotonic clock (for machines
//! without a sound card); `wav` writes a file and paces like `null` (so a recording runs
//! in real time, as the box would). [`OutputSpec`] is the typed form of the config's
//! output setting and [`open`] turns it into a sink.
//!
//! Invariant: alsa-lib types never leave this module; callers see [`Sink`] and
//! [`SinkError`] only.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::audio::{Sink, SinkError};

mod alsa;
mod null;
mod wav;

pub use self::alsa::{AlsaCapture, AlsaSink, SampleFormat};
pub use null::NullSink;
pub use wav::WavSink;

/// The PCM that [`OutputSpec::Auto`] tries: whatever the system's ALSA config calls
/// the default device.
pub const AUTO_PCM: &str = "default";

/// Where the venue mix goes, as written in the config or on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// `auto`: the ALSA `default` PCM, or a timer-paced null output (with a warning)
    /// when it cannot be opened, so a box without a sound card still runs.
    Auto,
    /// `alsa:<pcm>`: this ALSA PCM or fail (`alsa:hw:1`, `alsa:default`).
    Alsa {
        /// The ALSA PCM name, everything after `alsa:`.
        pcm: String,
    },
    /// `wav:<path>`: record to a 16-bit WAV file, paced in real time.
    Wav {
        /// The file to create (truncated if it exists).
        path: PathBuf,
    },
    /// `null`: discard the audio, paced in real time.
    Null,
}

/// Text that is not an [`OutputSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("output {given:?}: expected auto, null, alsa:<pcm> (e.g. alsa:hw:1) or wav:<path>")]
pub struct ParseOutputSpecError {
    given: String,
}

impl FromStr for OutputSpec {
    type Err = ParseOutputSpecError;

    /// Parses `auto`, `null`, `alsa:<pcm>` or `wav:<path>` (case-sensitive, no trimming;
    /// the PCM name and the path must not be empty).
    fn from_str(text: &str) -> Result<OutputSpec, ParseOutputSpecError> {
        let spec = match text {
            "auto" => Some(OutputSpec::Auto),
            "null" => Some(OutputSpec::Null),
            _ => {
                if let Some(pcm) = text.strip_prefix("alsa:") {
                    (!pcm.is_empty()).then(|| OutputSpec::Alsa {
                        pcm: pcm.to_string(),
                    })
                } else if let Some(path) = text.strip_prefix("wav:") {
                    (!path.is_empty()).then(|| OutputSpec::Wav {
                        path: PathBuf::from(path),
                    })
                } else {
                    None
                }
            }
        };
        spec.ok_or_else(|| ParseOutputSpecError {
            given: text.to_string(),
        })
    }
}

impl fmt::Display for OutputSpec {
    /// The text [`OutputSpec::from_str`] accepts (a non-UTF-8 path is shown lossily).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputSpec::Auto => f.write_str("auto"),
            OutputSpec::Alsa { pcm } => write!(f, "alsa:{pcm}"),
            OutputSpec::Wav { path } => write!(f, "wav:{}", path.display()),
            OutputSpec::Null => f.write_str("null"),
        }
    }
}

/// Opens the output `spec` describes, with periods of about `period_frames` and (for
/// ALSA) a device buffer of about `buffer_frames`; use the sink's `period_frames()`,
/// which is what the device granted. Call it on the thread that will write (the audio
/// thread's `make_sink`).
///
/// The `Option<String>` is a warning for the caller to log: [`OutputSpec::Auto`] falls
/// back to a timer-paced [`NullSink`] when the ALSA [`AUTO_PCM`] cannot be opened, and
/// says why. Every other spec opens exactly what it names or returns the error.
pub fn open(
    spec: &OutputSpec,
    period_frames: usize,
    buffer_frames: usize,
) -> Result<(Box<dyn Sink>, Option<String>), SinkError> {
    match spec {
        OutputSpec::Auto => match AlsaSink::open(AUTO_PCM, period_frames, buffer_frames) {
            Ok(sink) => Ok((Box::new(sink), None)),
            Err(SinkError(reason)) => Ok((
                Box::new(NullSink::new(period_frames)),
                Some(format!(
                    "no usable sound card ({reason}); playing to a timer-paced null output"
                )),
            )),
        },
        OutputSpec::Alsa { pcm } => Ok((
            Box::new(AlsaSink::open(pcm, period_frames, buffer_frames)?),
            None,
        )),
        OutputSpec::Wav { path } => Ok((Box::new(WavSink::create(path, period_frames)?), None)),
        OutputSpec::Null => Ok((Box::new(NullSink::new(period_frames)), None)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str) -> Result<OutputSpec, ParseOutputSpecError> {
        text.parse()
    }

    #[test]
    fn every_form_parses_and_prints_back() {
        let cases = [
            ("auto", OutputSpec::Auto),
            ("null", OutputSpec::Null),
            ("alsa:hw:1", OutputSpec::Alsa { pcm: "hw:1".into() }),
            (
                "alsa:plughw:CARD=Device,DEV=0",
                OutputSpec::Alsa {
                    pcm: "plughw:CARD=Device,DEV=0".into(),
                },
            ),
            (
                "wav:/tmp/venue.wav",
                OutputSpec::Wav {
                    path: "/tmp/venue.wav".into(),
                },
            ),
        ];
        for (text, spec) in cases {
            assert_eq!(parse(text), Ok(spec.clone()), "{text}");
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn empty_names_unknown_kinds_and_other_cases_are_rejected() {
        for text in [
            "",
            "alsa:",
            "wav:",
            "ALSA:hw:1",
            " auto",
            "pulse",
            "hw:1",
            "Null",
        ] {
            assert!(parse(text).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn the_error_says_what_is_accepted() {
        let err = parse("pulse").expect_err("not an output");
        assert_eq!(
            err.to_string(),
            "output \"pulse\": expected auto, null, alsa:<pcm> (e.g. alsa:hw:1) or wav:<path>"
        );
    }

    proptest! {
        #[test]
        fn any_text_is_an_error_or_round_trips(text in ".*") {
            if let Ok(spec) = parse(&text) {
                prop_assert_eq!(spec.to_string(), text);
            }
        }

        #[test]
        fn any_pcm_name_round_trips(pcm in ".+") {
            let spec = OutputSpec::Alsa { pcm };
            prop_assert_eq!(parse(&spec.to_string()), Ok(spec));
        }
    }
}
