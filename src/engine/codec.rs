//! Opus glue: one decoder per singer, one encoder per distinct mix.
//!
//! Owns the libopus handles and the only `unsafe` in the crate (`opus_packet_has_lbrr`,
//! which the safe `opus` bindings do not expose). Knows nothing of RTP, time or mixes.
//! Invariant: after construction nothing here allocates; decode and encode write into
//! caller-provided slices.

use super::SAMPLE_RATE_HZ;

/// Longest Opus packet duration in samples at 48 kHz (RFC 6716 §3.2.5: 120 ms).
pub const MAX_PACKET_SAMPLES: usize = 5760;

/// Smallest unit Opus can conceal or decode, in samples at 48 kHz (2.5 ms).
pub const OPUS_GRANULE_SAMPLES: usize = 120;

/// Largest encoded frame we produce, in bytes (RFC 6716 §3.4: 1275 bytes per frame).
pub const MAX_ENCODED_BYTES: usize = 1275;

/// A mono Opus decoder for one singer's uplink.
pub struct Decoder {
    inner: opus::Decoder,
}

/// What a received payload is, checked once on arrival so garbage never reaches the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// Decoded duration at 48 kHz, in samples (per channel).
    pub samples: usize,
    /// Whether the packet carries in-band FEC (LBRR) data for the packet before it.
    pub has_fec: bool,
}

/// Parses the TOC of `payload`; `None` if libopus says it is not a valid Opus packet.
pub fn inspect(payload: &[u8]) -> Option<PacketInfo> {
    let samples = opus::packet::get_nb_samples(payload, SAMPLE_RATE_HZ).ok()?;
    if samples == 0 || samples > MAX_PACKET_SAMPLES {
        return None;
    }
    Some(PacketInfo {
        samples,
        has_fec: has_lbrr(payload),
    })
}

#[allow(unsafe_code)]
fn has_lbrr(payload: &[u8]) -> bool {
    let Ok(len) = i32::try_from(payload.len()) else {
        return false;
    };
    // SAFETY: libopus reads at most `len` bytes from `payload`, which is a live slice of
    // exactly that length; the function has no other side effects.
    let r = unsafe { opusic_sys::opus_packet_has_lbrr(payload.as_ptr(), len) };
    r == 1
}

impl Decoder {
    /// A fresh mono 48 kHz decoder. Panics only if libopus cannot allocate, which is a bug
    /// or an out-of-memory condition, not bad input.
    pub fn new() -> Decoder {
        let inner = opus::Decoder::new(SAMPLE_RATE_HZ, opus::Channels::Mono)
            .expect("libopus creates a 48 kHz mono decoder");
        Decoder { inner }
    }

    /// Decodes one packet into `out`; returns the number of samples written, or `None` if
    /// libopus rejects the payload (the caller conceals instead).
    pub fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Option<usize> {
        self.inner.decode_float(payload, out, false).ok()
    }

    /// Rebuilds the lost packet before `next_payload` from its in-band FEC into all of
    /// `out` (a multiple of 2.5 ms). Returns `false` if libopus refused.
    pub fn decode_fec(&mut self, next_payload: &[u8], out: &mut [f32]) -> bool {
        matches!(self.inner.decode_float(next_payload, out, true), Ok(n) if n == out.len())
    }

    /// Packet-loss concealment: extrapolates `out.len()` samples (a multiple of 2.5 ms).
    pub fn conceal(&mut self, out: &mut [f32]) -> bool {
        matches!(self.inner.decode_float(&[], out, false), Ok(n) if n == out.len())
    }

    /// Forgets all history, as for a new stream.
    pub fn reset(&mut self) {
        // Resetting a valid decoder cannot fail; if it did, the next decode would simply
        // continue from the old state, which is harmless.
        let _ = self.inner.reset_state();
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

/// Settings of the encoders for the return mixes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Frame duration in samples at 48 kHz: 480 (10 ms) or 960 (20 ms).
    pub frame_samples: usize,
    /// Target bitrate of a stereo return mix, bits per second.
    pub bitrate_bps: i32,
    /// libopus complexity, 0..=10 (we never go below 5 for music).
    pub complexity: i32,
    /// Whether to add in-band FEC to the return mixes.
    pub inband_fec: bool,
    /// Expected loss on the return path, percent (tunes FEC).
    pub expected_loss_pct: i32,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            frame_samples: 480,
            bitrate_bps: 128_000,
            complexity: 5,
            inband_fec: false,
            expected_loss_pct: 0,
        }
    }
}

/// How far the return mix's decoded audio lags its RTP timestamps: libopus' lookahead
/// in its low-delay mode (2.5 ms). A phone that follows the song by the timestamps it
/// plays adds it.
pub const ENCODER_LOOKAHEAD_FRAMES: u64 = 120;

/// How far a phone's voice, decoded here, lags its RTP timestamps: libopus' lookahead
/// in its VoIP and audio applications (6.5 ms: 2.5 ms and 4 ms of delay compensation),
/// which the browsers' encoders use (libwebrtc's in Chromium and Safari, Firefox's). A
/// voice's sample reaches the mix that much after its timestamp says it was captured.
pub const PHONE_LOOKAHEAD_FRAMES: u64 = 312;

/// A stereo Opus encoder for one distinct mix.
pub struct Encoder {
    inner: opus::Encoder,
}

impl Encoder {
    /// A 48 kHz stereo music encoder with `config`'s settings.
    pub fn new(config: &EncoderConfig) -> Encoder {
        let mut inner = opus::Encoder::new(
            SAMPLE_RATE_HZ,
            opus::Channels::Stereo,
            opus::Application::LowDelay,
        )
        .expect("libopus creates a 48 kHz stereo encoder");
        // These setters only fail for out-of-range values, which EncoderConfig's
        // producers (config validation) already exclude; a failure keeps libopus' default.
        let _ = inner.set_bitrate(opus::Bitrate::Bits(config.bitrate_bps));
        let _ = inner.set_complexity(config.complexity.clamp(0, 10));
        let _ = inner.set_inband_fec(config.inband_fec);
        let _ = inner.set_packet_loss_perc(config.expected_loss_pct.clamp(0, 100));
        let _ = inner.set_vbr(true);
        Encoder { inner }
    }

    /// Encodes one interleaved stereo frame; returns the payload length, or 0 if libopus
    /// failed (the frame is then skipped, counted by the caller).
    pub fn encode(&mut self, stereo: &[f32], out: &mut [u8]) -> usize {
        self.inner.encode_float(stereo, out).unwrap_or(0)
    }

    /// Forgets history (used when a mix is reassigned to a new singer).
    pub fn reset(&mut self) {
        let _ = self.inner.reset_state();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_encoder_lookahead_is_the_documented_one() {
        let mut enc = Encoder::new(&EncoderConfig::default());
        assert_eq!(
            enc.inner.get_lookahead().expect("lookahead") as u64,
            ENCODER_LOOKAHEAD_FRAMES
        );
    }

    #[test]
    fn a_phone_encoder_lookahead_is_the_documented_one() {
        for application in [opus::Application::Voip, opus::Application::Audio] {
            for channels in [opus::Channels::Mono, opus::Channels::Stereo] {
                let mut enc =
                    opus::Encoder::new(SAMPLE_RATE_HZ, channels, application).expect("an encoder");
                assert_eq!(
                    enc.get_lookahead().expect("lookahead") as u64,
                    PHONE_LOOKAHEAD_FRAMES,
                    "{application:?} {channels:?}"
                );
            }
        }
    }

    #[test]
    fn garbage_payloads_are_not_opus() {
        // TOC code 3 with a frame count of 0 is invalid (RFC 6716 §3.2.5).
        assert_eq!(inspect(&[0x03, 0x00]), None);
        assert_eq!(inspect(&[]), None);
    }

    #[test]
    fn a_real_packet_is_inspected_for_duration() {
        let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
            .expect("encoder");
        let pcm = vec![0.1f32; 960];
        let mut buf = [0u8; 1500];
        let n = enc.encode_float(&pcm, &mut buf).expect("encode");
        let info = inspect(&buf[..n]).expect("valid");
        assert_eq!(info.samples, 960);
    }
}
