//! One song file as 48 kHz interleaved stereo: demuxing and decoding by symphonia (Opus
//! in Ogg by libopus, which symphonia does not decode), resampling by rubato's
//! synchronous FFT resampler, channels folded to stereo (mono to both sides, more than
//! two: the front pair). Runs on the player's thread, never on the audio thread.
//!
//! A damaged packet is skipped and counted; a file whose packets keep failing
//! ([`MAX_BAD_PACKETS_IN_A_ROW`]) is corrupt. Seeking is exact to the frame: the
//! container seeks to a packet at or before the time, the decoder discards up to it.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};
use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::codecs::CodecParameters;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, SeekMode, SeekTo, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::{MetadataOptions, StandardTag};
use symphonia::core::units::{Time, TimeBase};

use crate::engine::SAMPLE_RATE_HZ;

/// Packets in a row that may fail to decode before the file counts as corrupt.
pub const MAX_BAD_PACKETS_IN_A_ROW: u32 = 20;

/// Source sample rates accepted (a header claiming more is damaged or hostile).
const RATES: std::ops::RangeInclusive<u32> = 8_000..=384_000;

/// Source frames the resampler takes per call.
const RESAMPLE_CHUNK: usize = 1024;

/// Why a song cannot be played.
#[derive(Debug, thiserror::Error)]
pub enum SongError {
    /// The file could not be opened or read.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// No container or codec we can play.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The file is damaged.
    #[error("corrupt: {0}")]
    Corrupt(String),
}

impl SongError {
    /// A short word for the host page and MQTT: `unreadable`, `unsupported`, `corrupt`.
    pub fn kind(&self) -> &'static str {
        match self {
            SongError::Io(_) => "unreadable",
            SongError::Unsupported(_) => "unsupported",
            SongError::Corrupt(_) => "corrupt",
        }
    }
}

fn sym_error(e: SymError) -> SongError {
    match e {
        SymError::IoError(e) => SongError::Io(e),
        SymError::Unsupported(what) => SongError::Unsupported(what.to_string()),
        other => SongError::Corrupt(other.to_string()),
    }
}

/// What the file says about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SongInfo {
    /// Title tag.
    pub title: Option<String>,
    /// Artist tag.
    pub artist: Option<String>,
    /// Length, when the container knows it.
    pub duration: Option<Duration>,
    /// The source's sample rate and channels.
    pub source_rate: u32,
    /// Channels in the file.
    pub source_channels: usize,
}

enum Codec {
    Symphonia(Box<dyn AudioDecoder>),
    /// libopus, always decoding to stereo at 48 kHz.
    Opus(opus::Decoder),
}

/// A song being decoded. See the module docs.
pub struct SongDecoder {
    format: Box<dyn FormatReader>,
    track: u32,
    time_base: Option<TimeBase>,
    codec: Codec,
    info: SongInfo,
    /// Decoded source frames, stereo, waiting for the resampler (or for `read`).
    pending: Vec<f32>,
    /// Source frames still to drop (after a seek landed before the asked time).
    discard: u64,
    resampler: Option<Fft<f32>>,
    resampled: Vec<f32>,
    /// Resampler output frames still to drop: its delay, at the start and after a seek.
    delay_left: usize,
    /// Source frames fed to the resampler since the start or the last seek, and the
    /// output frames it owes for them.
    fed: u64,
    given: u64,
    /// Scratch for one decoded packet, interleaved in the source's channels.
    scratch: Vec<f32>,
    opus_out: Vec<f32>,
    bad_in_a_row: u32,
    /// Packets skipped as damaged, in all.
    pub bad_packets: u64,
    demuxed_all: bool,
}

impl SongDecoder {
    /// Opens `path` and gets ready to decode its first audio track.
    pub fn open(path: &Path) -> Result<SongDecoder, SongError> {
        let file = File::open(path)?;
        let mss = MediaSourceStream::new(Box::new(file), MediaSourceStreamOptions::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let mut format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(sym_error)?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| SongError::Unsupported("no audio track".into()))?
            .clone();
        let Some(CodecParameters::Audio(params)) = &track.codec_params else {
            return Err(SongError::Unsupported("no audio track".into()));
        };
        let channels = params.channels.as_ref().map_or(0, |c| c.count());
        let rate = params.sample_rate.unwrap_or(0);
        let codec = if params.codec == CODEC_ID_OPUS {
            if channels == 0 || channels > 2 {
                return Err(SongError::Unsupported(format!(
                    "Opus with {channels} channels"
                )));
            }
            let decoder = opus::Decoder::new(SAMPLE_RATE_HZ, opus::Channels::Stereo)
                .map_err(|e| SongError::Unsupported(format!("libopus: {e}")))?;
            Codec::Opus(decoder)
        } else {
            let decoder = symphonia::default::get_codecs()
                .make_audio_decoder(params, &AudioDecoderOptions::default())
                .map_err(sym_error)?;
            Codec::Symphonia(decoder)
        };
        let rate = if params.codec == CODEC_ID_OPUS {
            SAMPLE_RATE_HZ
        } else {
            rate
        };
        if !RATES.contains(&rate) {
            return Err(SongError::Unsupported(format!("sample rate {rate} Hz")));
        }
        let duration = match (track.time_base, track.duration, track.num_frames) {
            (Some(tb), Some(dur), _) => tb.calc_duration(dur).map(time_to_duration),
            (_, _, Some(frames)) => Some(Duration::from_secs_f64(frames as f64 / rate as f64)),
            _ => None,
        };
        let (title, artist) = tags(format.as_mut());
        let resampler = if rate == SAMPLE_RATE_HZ {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    rate as usize,
                    SAMPLE_RATE_HZ as usize,
                    RESAMPLE_CHUNK,
                    2,
                    FixedSync::Input,
                )
                .map_err(|e| SongError::Unsupported(format!("resampling {rate} Hz: {e}")))?,
            )
        };
        let delay_left = resampler.as_ref().map_or(0, |r| r.output_delay());
        let resampled = vec![0.0; 2 * resampler.as_ref().map_or(0, |r| r.output_frames_max())];
        Ok(SongDecoder {
            format,
            track: track.id,
            time_base: track.time_base,
            codec,
            info: SongInfo {
                title,
                artist,
                duration,
                source_rate: rate,
                source_channels: channels,
            },
            pending: Vec::new(),
            discard: 0,
            resampler,
            resampled,
            delay_left,
            fed: 0,
            given: 0,
            scratch: Vec::new(),
            opus_out: vec![0.0; 2 * 5760],
            bad_in_a_row: 0,
            bad_packets: 0,
            demuxed_all: false,
        })
    }

    /// What the file says about itself.
    pub fn info(&self) -> &SongInfo {
        &self.info
    }

    /// Appends the next stretch of audio (48 kHz interleaved stereo) to `out`; returns
    /// `false` once the song has ended and nothing more will come.
    pub fn read(&mut self, out: &mut Vec<f32>) -> Result<bool, SongError> {
        loop {
            let before = out.len();
            match self.resampler.is_some() {
                false => {
                    out.append(&mut self.pending);
                }
                true => self.resample(out, false)?,
            }
            if out.len() > before {
                return Ok(true);
            }
            if self.demuxed_all {
                self.resample(out, true)?;
                return Ok(out.len() > before);
            }
            self.decode_next()?;
        }
    }

    /// Moves to `to` from the start; the next [`SongDecoder::read`] starts exactly
    /// there. Returns the song frame (48 kHz) it starts at.
    pub fn seek(&mut self, to: Duration) -> Result<u64, SongError> {
        let time = Time::try_from_secs_f64(to.as_secs_f64())
            .ok_or_else(|| SongError::Corrupt("seek time".into()))?;
        let seeked = self
            .format
            .seek(
                SeekMode::Accurate,
                SeekTo::Time {
                    time,
                    track_id: Some(self.track),
                },
            )
            .map_err(sym_error)?;
        let rate = u64::from(self.info.source_rate);
        let wanted = (to.as_secs_f64() * rate as f64).round() as u64;
        let landed = match self.time_base {
            Some(tb) => tb
                .calc_time(seeked.actual_ts)
                .map(time_to_duration)
                .map_or(wanted, |d| (d.as_secs_f64() * rate as f64).round() as u64),
            None => wanted,
        };
        self.discard = wanted.saturating_sub(landed);
        self.pending.clear();
        match &mut self.codec {
            Codec::Symphonia(d) => d.reset(),
            Codec::Opus(d) => {
                let _ = d.reset_state();
            }
        }
        if let Some(r) = &mut self.resampler {
            r.reset();
            self.delay_left = r.output_delay();
        }
        self.fed = 0;
        self.given = 0;
        self.demuxed_all = false;
        self.bad_in_a_row = 0;
        Ok(crate::engine::frames_in(to))
    }

    /// Runs the resampler over one whole chunk of `pending`, or, with `flush` (the file
    /// has ended), over what is left and then silence until the owed frames are out.
    fn resample(&mut self, out: &mut Vec<f32>, flush: bool) -> Result<(), SongError> {
        let Some(r) = self.resampler.as_mut() else {
            return Ok(());
        };
        let rate = u64::from(self.info.source_rate);
        loop {
            let need = r.input_frames_next();
            let have = self.pending.len() / 2;
            let owed = self.fed * u64::from(SAMPLE_RATE_HZ) / rate;
            if (have < need && !flush) || (flush && have == 0 && self.given >= owed) {
                return Ok(());
            }
            let take = have.min(need);
            self.pending.resize(2 * have.max(need), 0.0);
            let frames_out = self.resampled.len() / 2;
            let adapter_in = InterleavedSlice::new(&self.pending[..2 * need], 2, need)
                .map_err(|e| SongError::Corrupt(format!("resampler input: {e}")))?;
            let mut adapter_out = InterleavedSlice::new_mut(&mut self.resampled, 2, frames_out)
                .map_err(|e| SongError::Corrupt(format!("resampler output: {e}")))?;
            let indexing = Indexing {
                partial_len: (take < need).then_some(take),
                ..Indexing::default()
            };
            let (_, written) = r
                .process_into_buffer(&adapter_in, &mut adapter_out, Some(&indexing))
                .map_err(|e| SongError::Corrupt(format!("resampling: {e}")))?;
            if take == need {
                self.pending.drain(..2 * need);
            } else {
                self.pending.clear();
            }
            self.fed += take as u64;
            let owed = self.fed * u64::from(SAMPLE_RATE_HZ) / rate;
            let skip = self.delay_left.min(written);
            self.delay_left -= skip;
            let usable = ((written - skip) as u64).min(owed.saturating_sub(self.given)) as usize;
            out.extend_from_slice(&self.resampled[2 * skip..2 * (skip + usable)]);
            self.given += usable as u64;
            if !flush {
                return Ok(());
            }
        }
    }

    /// Demuxes and decodes one packet of our track into `pending`.
    fn decode_next(&mut self) -> Result<(), SongError> {
        let packet = match self.format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.demuxed_all = true;
                return Ok(());
            }
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.demuxed_all = true;
                return Ok(());
            }
            Err(SymError::ResetRequired) => {
                // A chained stream with new parameters: we play the first one only.
                self.demuxed_all = true;
                return Ok(());
            }
            Err(e) => return self.bad_packet(e),
        };
        if packet.track_id != self.track {
            return Ok(());
        }
        let channels = match &mut self.codec {
            Codec::Symphonia(decoder) => match decoder.decode(&packet) {
                Ok(buf) => {
                    let channels = buf.spec().channels().count().max(1);
                    buf.copy_to_vec_interleaved(&mut self.scratch);
                    channels
                }
                Err(SymError::DecodeError(e)) => {
                    return self.bad_packet(SymError::DecodeError(e));
                }
                Err(e) => return Err(sym_error(e)),
            },
            Codec::Opus(decoder) => {
                match decoder.decode_float(&packet.data, &mut self.opus_out, false) {
                    Ok(frames) => {
                        let start = (packet.trim_start.get() as usize).min(frames);
                        let end = frames
                            .saturating_sub(packet.trim_end.get() as usize)
                            .max(start);
                        self.scratch.clear();
                        self.scratch
                            .extend_from_slice(&self.opus_out[2 * start..2 * end]);
                        2
                    }
                    Err(e) => {
                        return self.bad_packet(SymError::DecodeError(opus_error(e)));
                    }
                }
            }
        };
        self.bad_in_a_row = 0;
        let frames = self.scratch.len() / channels;
        let skip = (self.discard.min(frames as u64)) as usize;
        self.discard -= skip as u64;
        self.pending.reserve(2 * (frames - skip));
        for frame in self.scratch.chunks_exact(channels).skip(skip) {
            let (l, r) = if channels == 1 {
                (frame[0], frame[0])
            } else {
                (frame[0], frame[1])
            };
            self.pending.push(l);
            self.pending.push(r);
        }
        Ok(())
    }

    fn bad_packet(&mut self, e: SymError) -> Result<(), SongError> {
        self.bad_packets += 1;
        self.bad_in_a_row += 1;
        if self.bad_in_a_row > MAX_BAD_PACKETS_IN_A_ROW {
            return Err(SongError::Corrupt(format!(
                "{} packets in a row failed, the last: {e}",
                self.bad_in_a_row
            )));
        }
        Ok(())
    }
}

fn opus_error(_: opus::Error) -> &'static str {
    "opus packet"
}

fn time_to_duration(t: Time) -> Duration {
    let ns = t.as_nanos();
    Duration::from_nanos(ns.clamp(0, u64::MAX as i128) as u64)
}

/// Title and artist from the newest tags.
fn tags(format: &mut dyn FormatReader) -> (Option<String>, Option<String>) {
    let mut title = None;
    let mut artist = None;
    let mut metadata = format.metadata();
    if let Some(rev) = metadata.skip_to_latest() {
        let all = rev
            .media
            .tags
            .iter()
            .chain(rev.per_track.iter().flat_map(|t| t.metadata.tags.iter()));
        for tag in all {
            match &tag.std {
                Some(StandardTag::TrackTitle(v)) if title.is_none() => {
                    title = clean_tag(v);
                }
                Some(StandardTag::Artist(v)) if artist.is_none() => {
                    artist = clean_tag(v);
                }
                _ => {}
            }
        }
    }
    (title, artist)
}

/// A tag as shown: trimmed, control characters dropped, at most 200 characters; `None`
/// if nothing is left.
fn clean_tag(v: &str) -> Option<String> {
    let s: String = v
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
        .trim()
        .to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests;
