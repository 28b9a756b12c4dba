//! ALSA playback and capture: the only file that calls alsa-lib.
//!
//! [`AlsaSink`] owns one PCM opened for blocking, interleaved, 48 kHz stereo playback:
//! the sample format negotiation (FLOAT_LE, else S32_LE, else S16_LE), the period and
//! buffer sizes the device granted, and underrun recovery.
//!
//! Invariants: `write` allocates nothing (the byte buffer is sized for one period at open)
//! and logs nothing (it runs on the real-time thread): recovered underruns are counted
//! in [`Sink::xruns`], and only errors it cannot recover from come back as `Err`. The
//! period the audio thread renders is the one the device granted, never the one asked for.
//! Knows nothing of the engine beyond the sample rate. [`AlsaCapture`] reads a line-in
//! the same way (its reader is not real-time: it returns errors as text).

use std::fmt;

use alsa::pcm::{Access, Format, HwParams, State, PCM};
use alsa::{Direction, ValueOr};

use crate::audio::{Sink, SinkError};
use crate::engine::SAMPLE_RATE_HZ;

/// Channels of every PCM we open: the venue mix is interleaved stereo.
pub const CHANNELS: usize = 2;

/// Failed writes or reads (xruns, interrupted calls, zero-frame calls) one call may
/// recover from before it gives up. A device that underruns again right after being re-prepared,
/// eight times in one period, is broken rather than late; looping forever would hang the
/// audio thread and hide that from the watchdog.
const MAX_RECOVERIES_PER_CALL: u32 = 8;

/// The sample formats we can produce, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleFormat {
    /// 32-bit float, little-endian: the engine's own samples, no conversion loss.
    F32Le,
    /// 32-bit signed integer, little-endian (full-scale = `i32::MAX`).
    S32Le,
    /// 16-bit signed integer, little-endian (full-scale = `i16::MAX`).
    S16Le,
}

impl SampleFormat {
    /// Negotiation order: the first one the device accepts wins. Float first because it
    /// is exact; S32 before S16 because it keeps the limiter's headroom detail.
    pub const PREFERENCE: [SampleFormat; 3] = [
        SampleFormat::F32Le,
        SampleFormat::S32Le,
        SampleFormat::S16Le,
    ];

    /// Bytes per sample (one channel).
    pub fn bytes_per_sample(self) -> usize {
        match self {
            SampleFormat::F32Le | SampleFormat::S32Le => 4,
            SampleFormat::S16Le => 2,
        }
    }

    fn alsa(self) -> Format {
        match self {
            SampleFormat::F32Le => Format::FloatLE,
            SampleFormat::S32Le => Format::S32LE,
            SampleFormat::S16Le => Format::S16LE,
        }
    }

    /// Encodes `samples` into `out` (exactly `samples.len() * bytes_per_sample()` bytes).
    /// Integer formats clamp to -1..=1 first; float passes through unchanged (the engine's
    /// limiter already bounds it). Allocates nothing.
    ///
    /// # Panics
    /// If `out` has the wrong length (a bug in the caller's buffer sizing).
    pub fn encode(self, samples: &[f32], out: &mut [u8]) {
        assert_eq!(
            out.len(),
            samples.len() * self.bytes_per_sample(),
            "byte buffer sized for the sample format"
        );
        match self {
            SampleFormat::F32Le => {
                for (v, o) in samples.iter().zip(out.chunks_exact_mut(4)) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            SampleFormat::S32Le => {
                for (v, o) in samples.iter().zip(out.chunks_exact_mut(4)) {
                    // `as` saturates, so +1.0 (which rounds to 2^31 in f32) becomes i32::MAX.
                    let s = (v.clamp(-1.0, 1.0) * i32::MAX as f32) as i32;
                    o.copy_from_slice(&s.to_le_bytes());
                }
            }
            SampleFormat::S16Le => {
                for (v, o) in samples.iter().zip(out.chunks_exact_mut(2)) {
                    let s = (v.clamp(-1.0, 1.0) * i16::MAX as f32) as i16;
                    o.copy_from_slice(&s.to_le_bytes());
                }
            }
        }
    }
}

impl SampleFormat {
    /// Decodes `bytes` (exactly `out.len() * bytes_per_sample()`) into `out`, full scale
    /// as ±1.0. Allocates nothing.
    ///
    /// # Panics
    /// If `bytes` has the wrong length (a bug in the caller's buffer sizing).
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) {
        assert_eq!(
            bytes.len(),
            out.len() * self.bytes_per_sample(),
            "byte buffer sized for the sample format"
        );
        match self {
            SampleFormat::F32Le => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            SampleFormat::S32Le => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / i32::MAX as f32;
                }
            }
            SampleFormat::S16Le => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from(i16::from_le_bytes([b[0], b[1]])) / f32::from(i16::MAX);
                }
            }
        }
    }
}

impl fmt::Display for SampleFormat {
    /// ALSA's names: `FLOAT_LE`, `S32_LE`, `S16_LE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SampleFormat::F32Le => "FLOAT_LE",
            SampleFormat::S32Le => "S32_LE",
            SampleFormat::S16Le => "S16_LE",
        })
    }
}

/// An ALSA playback PCM, written one period at a time in blocking mode: the device's
/// clock paces the audio thread.
pub struct AlsaSink {
    pcm: PCM,
    name: String,
    format: SampleFormat,
    period_frames: usize,
    buffer_frames: usize,
    /// One period in the device's format, allocated at open.
    bytes: Vec<u8>,
    xruns: u64,
}

impl AlsaSink {
    /// Opens `pcm` (an ALSA name: `default`, `hw:1`, `plughw:CARD=Device`, ...) for
    /// blocking interleaved stereo playback at 48 kHz, in the first format of
    /// [`SampleFormat::PREFERENCE`] the device accepts, with period and buffer sizes as
    /// near as the device allows to `period_frames` and `buffer_frames` (read the granted
    /// ones back with [`Sink::period_frames`] and [`AlsaSink::buffer_frames`]).
    ///
    /// Playback starts once the buffer is full, so the first period has the whole buffer
    /// as headroom. Errors name the PCM and the failing step, e.g.
    /// `alsa:hw:1: set rate 48000: Invalid argument`.
    pub fn open(
        pcm: &str,
        period_frames: usize,
        buffer_frames: usize,
    ) -> Result<AlsaSink, SinkError> {
        let opened = Opened::new(pcm, Direction::Playback, period_frames, buffer_frames)
            .map_err(SinkError)?;
        Ok(AlsaSink {
            bytes: vec![0; opened.period_frames * CHANNELS * opened.format.bytes_per_sample()],
            pcm: opened.pcm,
            name: pcm.to_string(),
            format: opened.format,
            period_frames: opened.period_frames,
            buffer_frames: opened.buffer_frames,
            xruns: 0,
        })
    }

    /// The sample format negotiated with the device.
    pub fn sample_format(&self) -> SampleFormat {
        self.format
    }

    /// The buffer size the device granted, frames.
    pub fn buffer_frames(&self) -> usize {
        self.buffer_frames
    }

    /// Frames between the next frame written and the speaker (ALSA's delay), if the
    /// device can tell now (not while it is in an underrun).
    #[allow(
        clippy::unnecessary_cast,
        reason = "Frames is a C long: i64 here, i32 on 32-bit ARM"
    )]
    pub fn delay_frames(&self) -> Option<i64> {
        self.pcm.delay().ok().map(|frames| frames as i64)
    }

    /// Writes the first `frames` frames of `self.bytes`, recovering from underruns.
    fn write_frames(&mut self, frames: usize) -> Result<(), SinkError> {
        let frame_bytes = CHANNELS * self.format.bytes_per_sample();
        // Bytes, not typed samples: `io_f32()` and friends check the format on every call,
        // which allocates hardware parameters; the format was fixed at open.
        let io = self.pcm.io_bytes();
        let mut done = 0;
        let mut recoveries = 0;
        while done < frames {
            let err = match io.writei(&self.bytes[done * frame_bytes..frames * frame_bytes]) {
                Ok(0) => None,
                Ok(written) => {
                    done += written;
                    continue;
                }
                Err(err) => Some(err),
            };
            recoveries += 1;
            if recoveries > MAX_RECOVERIES_PER_CALL {
                return Err(match err {
                    Some(err) => self.error("write", err),
                    None => self.message("write: the device accepts no frames"),
                });
            }
            let Some(err) = err else { continue };
            let underrun = matches!(err.errno(), libc::EPIPE | libc::ESTRPIPE);
            if !underrun && err.errno() != libc::EINTR {
                return Err(self.error("write", err));
            }
            self.pcm
                .try_recover(err, true)
                .map_err(|e| self.error("recover", e))?;
            if underrun {
                self.xruns += 1;
            }
            // snd_pcm_recover prepares after an underrun and resumes after a suspend;
            // a device that cannot resume is left in Setup/Suspended and needs this.
            if !matches!(self.pcm.state(), State::Prepared | State::Running) {
                self.pcm.prepare().map_err(|e| self.error("prepare", e))?;
            }
        }
        Ok(())
    }

    fn error(&self, step: &str, err: alsa::Error) -> SinkError {
        self.message(&format!("{step}: {}", errno_text(err)))
    }

    fn message(&self, text: &str) -> SinkError {
        SinkError(format!("alsa:{}: {text}", self.name))
    }
}

impl Sink for AlsaSink {
    fn period_frames(&self) -> usize {
        self.period_frames
    }

    /// Writes `stereo` (normally one period) in period-sized pieces, each blocking until
    /// the device has room.
    fn write(&mut self, stereo: &[f32]) -> Result<(), SinkError> {
        let sample_bytes = self.format.bytes_per_sample();
        for chunk in stereo.chunks(CHANNELS * self.period_frames) {
            let frames = chunk.len() / CHANNELS;
            let samples = &chunk[..frames * CHANNELS];
            self.format
                .encode(samples, &mut self.bytes[..samples.len() * sample_bytes]);
            self.write_frames(frames)?;
        }
        Ok(())
    }

    fn xruns(&self) -> u64 {
        self.xruns
    }

    fn describe(&self) -> String {
        format!("alsa:{}", self.name)
    }

    /// `snd_pcm_delay`: the frames between the application pointer and what is heard.
    fn delay_frames(&mut self) -> Option<u64> {
        self.pcm.delay().ok().map(|d| d.max(0) as u64)
    }
}

/// A PCM opened for blocking interleaved stereo I/O, with what the device granted.
struct Opened {
    pcm: PCM,
    format: SampleFormat,
    rate: u32,
    period_frames: usize,
    buffer_frames: usize,
}

impl Opened {
    /// Opens `pcm` in `direction` at (or, for capture, near) 48 kHz in the first format
    /// of [`SampleFormat::PREFERENCE`] the device accepts, periods and buffer near the
    /// ones asked. Playback starts once the buffer is full (the first period has the
    /// whole buffer as headroom); capture starts at the first read. Errors name the PCM
    /// and the failing step, e.g. `alsa:hw:1: set rate 48000: Invalid argument`.
    fn new(
        pcm: &str,
        direction: Direction,
        period_frames: usize,
        buffer_frames: usize,
    ) -> Result<Opened, String> {
        let fail =
            |step: &str, err: alsa::Error| format!("alsa:{pcm}: {step}: {}", errno_text(err));
        if pcm.contains('\0') {
            return Err(format!(
                "alsa:{}: open: the PCM name contains a NUL byte",
                pcm.escape_debug()
            ));
        }
        let asked_period = alsa::pcm::Frames::try_from(period_frames)
            .map_err(|_| format!("alsa:{pcm}: period of {period_frames} frames is too large"))?;
        let asked_buffer = alsa::pcm::Frames::try_from(buffer_frames)
            .map_err(|_| format!("alsa:{pcm}: buffer of {buffer_frames} frames is too large"))?;
        let handle = PCM::new(pcm, direction, false).map_err(|e| fail("open", e))?;
        // Formats in order of preference. Some plugin chains accept a format in the
        // test but not when the whole configuration is applied (a `plug` that cannot
        // convert FLOAT_LE to its slave's format): then the next format is tried.
        let mut failure = None;
        let mut chosen = None;
        for format in SampleFormat::PREFERENCE {
            let hw = HwParams::any(&handle).map_err(|e| fail("read hardware parameters", e))?;
            hw.set_access(Access::RWInterleaved)
                .map_err(|e| fail("set access interleaved", e))?;
            if hw.test_format(format.alsa()).is_err() {
                continue;
            }
            let applied = hw
                .set_format(format.alsa())
                .map_err(|e| fail(&format!("set format {format}"), e))
                .and_then(|()| {
                    hw.set_channels(CHANNELS as u32)
                        .map_err(|e| fail(&format!("set channels {CHANNELS}"), e))
                })
                .and_then(|()| {
                    hw.set_rate(SAMPLE_RATE_HZ, ValueOr::Nearest)
                        .map_err(|e| fail(&format!("set rate {SAMPLE_RATE_HZ}"), e))
                })
                .and_then(|()| {
                    hw.set_period_size_near(asked_period, ValueOr::Nearest)
                        .map(|_| ())
                        .map_err(|e| fail(&format!("set period near {period_frames} frames"), e))
                })
                .and_then(|()| {
                    hw.set_buffer_size_near(asked_buffer)
                        .map(|_| ())
                        .map_err(|e| fail(&format!("set buffer near {buffer_frames} frames"), e))
                })
                .and_then(|()| {
                    handle
                        .hw_params(&hw)
                        .map_err(|e| fail(&format!("apply hardware parameters ({format})"), e))
                });
            match applied {
                Ok(()) => {
                    chosen = Some(format);
                    break;
                }
                Err(e) => failure = Some(e),
            }
        }
        let format = match (chosen, failure) {
            (Some(format), _) => format,
            (None, Some(e)) => return Err(e),
            (None, None) => {
                return Err(format!(
                    "alsa:{pcm}: set format: none of FLOAT_LE, S32_LE, S16_LE is supported"
                ))
            }
        };
        let (granted_period, granted_buffer, rate) = {
            let hw = handle
                .hw_params_current()
                .map_err(|e| fail("read granted parameters", e))?;
            let period = hw
                .get_period_size()
                .map_err(|e| fail("read granted period", e))?;
            let buffer = hw
                .get_buffer_size()
                .map_err(|e| fail("read granted buffer", e))?;
            let rate = hw.get_rate().map_err(|e| fail("read granted rate", e))?;
            (period, buffer, rate)
        };
        // Playback must be exactly the engine's rate (the device's clock is the mix's);
        // a capture at another rate is resampled by its reader.
        if direction == Direction::Playback && rate != SAMPLE_RATE_HZ {
            return Err(format!(
                "alsa:{pcm}: set rate {SAMPLE_RATE_HZ}: the device granted {rate}"
            ));
        }
        {
            let sw = handle
                .sw_params_current()
                .map_err(|e| fail("read software parameters", e))?;
            let start = match direction {
                Direction::Playback => granted_buffer,
                Direction::Capture => 1,
            };
            sw.set_start_threshold(start)
                .map_err(|e| fail("set start threshold", e))?;
            sw.set_avail_min(granted_period)
                .map_err(|e| fail("set avail min", e))?;
            handle
                .sw_params(&sw)
                .map_err(|e| fail("apply software parameters", e))?;
        }
        let period_frames = usize::try_from(granted_period)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("alsa:{pcm}: granted period {granted_period}"))?;
        Ok(Opened {
            pcm: handle,
            format,
            rate,
            period_frames,
            buffer_frames: usize::try_from(granted_buffer).unwrap_or(0),
        })
    }
}

/// An ALSA capture PCM (the venue's karaoke player on a line-in), read one period at a
/// time in blocking mode: the device's clock paces its reader.
pub struct AlsaCapture {
    pcm: PCM,
    name: String,
    format: SampleFormat,
    rate: u32,
    period_frames: usize,
    /// One period in the device's format, allocated at open.
    bytes: Vec<u8>,
    overruns: u64,
}

impl AlsaCapture {
    /// Opens `pcm` for blocking interleaved stereo capture near 48 kHz (read the granted
    /// rate with [`AlsaCapture::rate`]), periods near `period_frames`, a buffer of four
    /// of them.
    pub fn open(pcm: &str, period_frames: usize) -> Result<AlsaCapture, String> {
        let opened = Opened::new(pcm, Direction::Capture, period_frames, 4 * period_frames)?;
        Ok(AlsaCapture {
            bytes: vec![0; opened.period_frames * CHANNELS * opened.format.bytes_per_sample()],
            pcm: opened.pcm,
            name: pcm.to_string(),
            format: opened.format,
            rate: opened.rate,
            period_frames: opened.period_frames,
            overruns: 0,
        })
    }

    /// The device's sample rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Frames per read.
    pub fn period_frames(&self) -> usize {
        self.period_frames
    }

    /// Overruns so far (the reader was late and the device dropped audio).
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Blocks until one period is captured and decodes it into `stereo` (interleaved,
    /// `2 * period_frames()` samples). An overrun is recovered and counted.
    pub fn read(&mut self, stereo: &mut [f32]) -> Result<(), String> {
        let frame_bytes = CHANNELS * self.format.bytes_per_sample();
        let frames = self.period_frames;
        let io = self.pcm.io_bytes();
        let mut done = 0;
        let mut recoveries = 0;
        while done < frames {
            let err = match io.readi(&mut self.bytes[done * frame_bytes..frames * frame_bytes]) {
                Ok(0) => None,
                Ok(read) => {
                    done += read;
                    continue;
                }
                Err(err) => Some(err),
            };
            recoveries += 1;
            if recoveries > MAX_RECOVERIES_PER_CALL {
                return Err(match err {
                    Some(err) => format!("alsa:{}: read: {}", self.name, errno_text(err)),
                    None => format!("alsa:{}: read: the device gives no frames", self.name),
                });
            }
            let Some(err) = err else { continue };
            let overrun = matches!(err.errno(), libc::EPIPE | libc::ESTRPIPE);
            if !overrun && err.errno() != libc::EINTR {
                return Err(format!("alsa:{}: read: {}", self.name, errno_text(err)));
            }
            self.pcm
                .try_recover(err, true)
                .map_err(|e| format!("alsa:{}: recover: {}", self.name, errno_text(e)))?;
            if overrun {
                self.overruns += 1;
            }
            if !matches!(self.pcm.state(), State::Prepared | State::Running) {
                self.pcm
                    .prepare()
                    .map_err(|e| format!("alsa:{}: prepare: {}", self.name, errno_text(e)))?;
            }
        }
        self.format
            .decode(&self.bytes, &mut stereo[..frames * CHANNELS]);
        Ok(())
    }
}

/// The errno's text without std's " (os error N)" suffix: "Invalid argument".
fn errno_text(err: alsa::Error) -> String {
    let text = std::io::Error::from_raw_os_error(err.errno()).to_string();
    match text.find(" (os error") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: SampleFormat, samples: &[f32]) -> Vec<u8> {
        let mut out = vec![0; samples.len() * format.bytes_per_sample()];
        format.encode(samples, &mut out);
        out
    }

    #[test]
    fn float_passes_through_bit_exact() {
        let samples = [0.0, 0.25, -0.5, 1.0];
        let out = encoded(SampleFormat::F32Le, &samples);
        let back: Vec<f32> = out
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        assert_eq!(back, samples);
    }

    #[test]
    fn integer_formats_clamp_out_of_range_samples_to_full_scale() {
        let samples = [2.0, -2.0, 1.0, -1.0, 0.5, 0.0];
        let s16: Vec<i16> = encoded(SampleFormat::S16Le, &samples)
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes(b.try_into().expect("2 bytes")))
            .collect();
        assert_eq!(
            s16,
            [i16::MAX, -i16::MAX, i16::MAX, -i16::MAX, i16::MAX / 2, 0]
        );
        let s32: Vec<i32> = encoded(SampleFormat::S32Le, &samples)
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        // -1.0 * (i32::MAX as f32) is exactly -2^31: negative full scale is i32::MIN.
        assert_eq!(&s32[..4], [i32::MAX, i32::MIN, i32::MAX, i32::MIN]);
        assert!(
            (s32[4] - i32::MAX / 2).abs() <= 128,
            "half scale {}",
            s32[4]
        );
        assert_eq!(s32[5], 0);
    }

    #[test]
    fn errno_text_has_no_os_error_suffix() {
        let err = alsa::Error::new("snd_pcm_hw_params_set_rate", libc::EINVAL);
        assert_eq!(errno_text(err), "Invalid argument");
    }
}
