//! One recorded track: 48 kHz float PCM in, an Ogg Opus file (RFC 7845) out.
//!
//! Owns its libopus encoder and the file's Ogg pages. Encodes whole 20 ms frames as PCM
//! arrives; [`OpusTrack::finish`] pads the last frame with silence, marks the end of the
//! stream and syncs the file to disk. The granule positions count real samples, so a
//! player (ffmpeg, sox, a phone) trims the encoder's lookahead at the start and the pad
//! at the end: the file decodes to exactly the samples pushed. Pages end every second
//! (see [`PAGE_PACKETS`]).
//!
//! Runs on the recorder's thread, never the audio thread: it allocates (a packet per
//! frame for the Ogg writer) and writes to disk, and a write error (a full disk) is
//! returned for the recorder to stop on.
//!
//! Written here: no crate encodes Opus into Ogg; `ogg` pages the packets and libopus
//! (the `opus` crate) encodes them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::engine::SAMPLE_RATE_HZ;

/// Samples per channel in one Opus frame (20 ms).
pub const FRAME_SAMPLES: usize = 960;

/// The largest Opus packet libopus writes (RFC 6716 §3.4's bound for one frame).
const MAX_PACKET_BYTES: usize = 1275;

/// Packets per Ogg page (1 s): a page ends after the first packet and then every this
/// many, so the first audio page is never also the last (players then take the end's
/// granule as the start's trim; RFC 7845 §4.5) and a power cut loses at most a second.
const PAGE_PACKETS: u64 = 50;

/// Encoder complexity: the recordings are kept, so they get the best libopus does (the
/// recorder encodes in real time on its own thread; a Pi 4 core manages several tracks
/// at this setting).
const COMPLEXITY: i32 = 10;

/// A recorded track, open for PCM.
pub struct OpusTrack {
    encoder: opus::Encoder,
    pages: PacketWriter<'static, BufWriter<File>>,
    serial: u32,
    channels: usize,
    /// Interleaved samples waiting for a whole frame.
    pending: Vec<f32>,
    /// The last encoded packet and its end granule, held back so that the stream's
    /// last packet can carry the end-of-stream mark.
    held: Option<(Vec<u8>, u64)>,
    /// The encoder's lookahead (the pre-skip), samples.
    pre_skip: u64,
    /// Samples (per channel) pushed so far.
    pushed: u64,
    /// Samples (per channel) encoded so far, padding included.
    encoded: u64,
}

impl OpusTrack {
    /// Creates `path` as an Ogg Opus file of `channels` (1 or 2) at `bitrate` bits/s,
    /// tagged with `tags` (`("TITLE", "…")` pairs, Vorbis comments).
    pub fn create(
        path: &Path,
        channels: usize,
        bitrate: i32,
        tags: &[(&str, &str)],
    ) -> io::Result<OpusTrack> {
        let layout = match channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            _ => return Err(io::Error::other("a track is mono or stereo")),
        };
        let opus_err = |e: opus::Error| io::Error::other(format!("opus: {e}"));
        let mut encoder = opus::Encoder::new(SAMPLE_RATE_HZ, layout, opus::Application::Audio)
            .map_err(opus_err)?;
        encoder.set_complexity(COMPLEXITY).map_err(opus_err)?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(bitrate))
            .map_err(opus_err)?;
        let pre_skip = encoder.get_lookahead().map_err(opus_err)?.max(0) as u64;
        let file = File::create(path)?;
        let mut pages = PacketWriter::new(BufWriter::new(file));
        let serial = serial_for(path);
        pages.write_packet(
            opus_head(channels as u8, pre_skip as u16),
            serial,
            PacketWriteEndInfo::EndPage,
            0,
        )?;
        pages.write_packet(opus_tags(tags), serial, PacketWriteEndInfo::EndPage, 0)?;
        Ok(OpusTrack {
            encoder,
            pages,
            serial,
            channels,
            pending: Vec::with_capacity(FRAME_SAMPLES * channels),
            held: None,
            pre_skip,
            pushed: 0,
            encoded: 0,
        })
    }

    /// Appends interleaved samples (a whole number of frames of `channels`).
    pub fn push(&mut self, samples: &[f32]) -> io::Result<()> {
        let frame = FRAME_SAMPLES * self.channels;
        self.pushed += (samples.len() / self.channels) as u64;
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (frame - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == frame {
                self.encode_pending()?;
            }
        }
        Ok(())
    }

    /// Appends `frames` frames of silence.
    pub fn push_silence(&mut self, frames: usize) -> io::Result<()> {
        let zeros = [0.0f32; FRAME_SAMPLES * 2];
        let mut left = frames;
        while left > 0 {
            let n = left.min(FRAME_SAMPLES);
            self.push(&zeros[..n * self.channels])?;
            left -= n;
        }
        Ok(())
    }

    /// Samples (per channel) pushed so far.
    pub fn len(&self) -> u64 {
        self.pushed
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.pushed == 0
    }

    /// Pads the last frame, ends the stream and syncs the file to disk. Nothing may be
    /// pushed after it.
    pub fn finish(&mut self) -> io::Result<()> {
        // The encoder holds its lookahead back: silence pushes the last samples out.
        let mut flush = self.pre_skip as usize * self.channels;
        while flush > 0 {
            let frame = FRAME_SAMPLES * self.channels;
            let take = (frame - self.pending.len()).min(flush);
            self.pending.resize(self.pending.len() + take, 0.0);
            flush -= take;
            if self.pending.len() == frame {
                self.encode_pending()?;
            }
        }
        if !self.pending.is_empty() {
            self.pending.resize(FRAME_SAMPLES * self.channels, 0.0);
            self.encode_pending()?;
        }
        // The last page's granule is where the pushed samples end, which trims the pad.
        let end = self.pre_skip + self.pushed;
        let last = self.held.take().map_or_else(Vec::new, |(packet, _)| packet);
        self.pages
            .write_packet(last, self.serial, PacketWriteEndInfo::EndStream, end)?;
        let out = self.pages.inner_mut();
        out.flush()?;
        out.get_ref().sync_all()
    }

    fn encode_pending(&mut self) -> io::Result<()> {
        let mut packet = vec![0u8; MAX_PACKET_BYTES];
        let n = self
            .encoder
            .encode_float(&self.pending, &mut packet)
            .map_err(|e| io::Error::other(format!("opus: {e}")))?;
        packet.truncate(n);
        self.pending.clear();
        self.encoded += FRAME_SAMPLES as u64;
        if let Some((previous, granule)) = self.held.take() {
            // `previous` is packet number `written` (from 1).
            let written = self.encoded / FRAME_SAMPLES as u64 - 1;
            let end = if written % PAGE_PACKETS == 1 {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.pages
                .write_packet(previous, self.serial, end, granule)?;
        }
        // A page's granule counts every sample decoded up to its last packet, the
        // pre-skip included (RFC 7845 §4): what was encoded so far.
        self.held = Some((packet, self.encoded));
        Ok(())
    }
}

/// A stream serial number from the file name (any value is valid; a different one per
/// file helps a tool that chains files).
fn serial_for(path: &Path) -> u32 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0x811c_9dc5u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
}

/// The identification header (RFC 7845 §5.1), channel mapping family 0.
fn opus_head(channels: u8, pre_skip: u16) -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1);
    head.push(channels);
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&SAMPLE_RATE_HZ.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes());
    head.push(0);
    head
}

/// The comment header (RFC 7845 §5.2).
fn opus_tags(tags: &[(&str, &str)]) -> Vec<u8> {
    let vendor = concat!("duetbox ", env!("CARGO_PKG_VERSION"));
    let mut out = Vec::new();
    out.extend_from_slice(b"OpusTags");
    out.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    out.extend_from_slice(vendor.as_bytes());
    out.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    for (key, value) in tags {
        let comment = format!("{key}={value}");
        out.extend_from_slice(&(comment.len() as u32).to_le_bytes());
        out.extend_from_slice(comment.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testkit::tone_level;

    fn decode(path: &Path) -> (Vec<u8>, Vec<u8>, Vec<f32>, u64) {
        let file = File::open(path).expect("open");
        let mut reader = ogg::reading::PacketReader::new(std::io::BufReader::new(file));
        let head = reader.read_packet_expected().expect("OpusHead").data;
        let tags = reader.read_packet_expected().expect("OpusTags").data;
        let channels = usize::from(head[9]);
        let mut decoder = opus::Decoder::new(
            SAMPLE_RATE_HZ,
            if channels == 1 {
                opus::Channels::Mono
            } else {
                opus::Channels::Stereo
            },
        )
        .expect("decoder");
        let mut pcm = Vec::new();
        let mut last_granule = 0;
        while let Some(packet) = reader.read_packet().expect("a good page") {
            last_granule = packet.absgp_page();
            if packet.data.is_empty() {
                continue;
            }
            let mut out = vec![0f32; FRAME_SAMPLES * channels];
            let n = decoder
                .decode_float(&packet.data, &mut out, false)
                .expect("decodes");
            pcm.extend_from_slice(&out[..n * channels]);
        }
        (head, tags, pcm, last_granule)
    }

    #[test]
    fn a_tone_comes_back_at_its_place_and_the_granules_trim_to_what_was_pushed() {
        let dir = std::env::temp_dir().join(format!("duetbox-track-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("voice.opus");
        let mut track =
            OpusTrack::create(&path, 1, 64_000, &[("TITLE", "Marked"), ("ARTIST", "Mia")])
                .expect("create");
        // 0.5 s of silence, then 0.5 s of 440 Hz, pushed in odd-sized pieces.
        track.push_silence(24_000).expect("silence");
        let tone: Vec<f32> = (0..24_001)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48_000.0).sin())
            .collect();
        for piece in tone.chunks(333) {
            track.push(piece).expect("push");
        }
        assert_eq!(track.len(), 48_001);
        track.finish().expect("finish");

        let (head, tags, pcm, granule) = decode(&path);
        assert_eq!(&head[..8], b"OpusHead");
        let pre_skip = u64::from(u16::from_le_bytes([head[10], head[11]]));
        assert!(pre_skip > 0, "the lookahead is declared");
        assert_eq!(granule, pre_skip + 48_001, "the end trims the pad");
        let text = String::from_utf8_lossy(&tags);
        assert!(text.contains("TITLE=Marked") && text.contains("ARTIST=Mia"));
        // Decoded with the pre-skip dropped, the tone starts at 0.5 s.
        let pcm = &pcm[pre_skip as usize..];
        let onset = pcm
            .iter()
            .position(|v| v.abs() > 0.1)
            .expect("the tone is there");
        assert!(
            onset.abs_diff(24_000) <= 48,
            "the tone starts at sample {onset}, pushed at 24000"
        );
        let level = tone_level(&pcm[30_000..46_000], 440.0);
        assert!(
            (0.45..=0.55).contains(&level),
            "the tone keeps its level: {level}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_silent_track_is_as_long_to_ffmpeg_as_what_was_pushed() {
        // Silence encodes to tiny packets: 3 s would fit one Ogg page, which players
        // read as start-trimmed; the pages end every second instead.
        let path = std::env::temp_dir().join(format!("duetbox-silent-{}.opus", std::process::id()));
        let mut track = OpusTrack::create(&path, 1, 96_000, &[]).expect("create");
        track.push_silence(144_000).expect("silence");
        track.finish().expect("finish");
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&path)
            .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
            .output()
            .expect("ffmpeg runs (scripts/setup.sh installs it)");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout.len() / 4, 144_000);
        let (head, _, _, granule) = decode(&path);
        let pre_skip = u64::from(u16::from_le_bytes([head[10], head[11]]));
        assert_eq!(granule, pre_skip + 144_000, "the end trims the pad");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_full_disk_is_an_error_not_a_panic() {
        // /dev/full takes the open and fails every write.
        let path = Path::new("/dev/full");
        let result = OpusTrack::create(path, 2, 128_000, &[]).and_then(|mut track| {
            track.push_silence(48_000)?;
            track.finish()
        });
        let err = result.expect_err("a full disk fails the track");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
