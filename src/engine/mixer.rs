//! Gain staging and the mixes: venue (= listener), and one personal mix per singer.
//!
//! Owns the per-source gain, pan and mute, the voice reverb send, the mix-minus and the
//! per-output limiter and encoder. Knows nothing of packets or time.
//!
//! Mix-minus is computed by subtraction: `personal = venue_bus - (1 - monitor) * own`,
//! where `own` is exactly what the singer added to the bus. That costs O(singers) per
//! period instead of O(singers²), and leaves an own-voice residue at float rounding
//! (about -140 dB), far below the 60 dB the product needs.
//!
//! Invariant: nothing allocates after construction; every output passes its limiter.

use super::codec::{Encoder, EncoderConfig, MAX_ENCODED_BYTES};

/// Converts decibels to a linear gain.
pub fn db_to_gain(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

/// Converts a linear amplitude to dBFS, floored at -120.
pub fn gain_to_db(gain: f32) -> f32 {
    if gain <= 1e-6 {
        -120.0
    } else {
        20.0 * gain.log10()
    }
}

/// Constant-power pan law: `pan` in -1 (left) ..= 1 (right) to (left, right) gains; the
/// centre is -3 dB on each side so a voice keeps its loudness wherever it is panned.
pub fn pan_gains(pan: f32) -> (f32, f32) {
    let theta = (pan.clamp(-1.0, 1.0) + 1.0) * std::f32::consts::FRAC_PI_4;
    (theta.cos(), theta.sin())
}

/// How one singer sits in the mixes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SingerSettings {
    /// Gain of the voice into every mix, dB.
    pub gain_db: f32,
    /// Stereo position, -1 (left) ..= 1 (right).
    pub pan: f32,
    /// Silences the voice in every mix.
    pub muted: bool,
    /// Level of the singer's own voice in their personal mix, linear 0..=1
    /// (0 = exact mix-minus, 1 = the venue mix).
    pub monitor: f32,
    /// Level of the voice reverb ("karaoke echo"), linear 0..=1; 0 disables it.
    pub reverb_wet: f32,
}

impl Default for SingerSettings {
    fn default() -> Self {
        SingerSettings {
            gain_db: 0.0,
            pan: 0.0,
            muted: false,
            monitor: 0.0,
            reverb_wet: 0.0,
        }
    }
}

impl SingerSettings {
    /// Whether the singer's personal mix is sample-identical to the venue mix, so it can
    /// share the venue's encode.
    pub fn hears_venue_mix(&self) -> bool {
        self.monitor >= 1.0 || self.muted
    }
}

/// An Opus encoder fed period by period, emitting one frame whenever it has one.
pub struct MixEncoder {
    encoder: Encoder,
    envelope: [u8; MAX_ENVELOPE],
    envelope_len: usize,
    frame_samples: usize,
    pending: Vec<f32>,
    filled: usize,
    /// Mix time (in frames since the engine started) of the first sample pending.
    pending_start: u64,
    out: Vec<u8>,
    out_len: usize,
    out_start: u64,
    ready: bool,
    /// Encodes libopus refused.
    pub failures: u64,
    /// Frames produced.
    pub frames: u64,
}

impl MixEncoder {
    /// An encoder with `config`; allocates now.
    pub fn new(config: &EncoderConfig) -> MixEncoder {
        MixEncoder {
            encoder: Encoder::new(config),
            envelope: [0; MAX_ENVELOPE],
            envelope_len: 0,
            frame_samples: config.frame_samples,
            pending: vec![0.0; 2 * config.frame_samples],
            filled: 0,
            pending_start: 0,
            out: vec![0; MAX_ENCODED_BYTES],
            out_len: 0,
            out_start: 0,
            ready: false,
            failures: 0,
            frames: 0,
        }
    }

    /// Forgets pending audio and codec history.
    pub fn reset(&mut self) {
        self.encoder.reset();
        self.filled = 0;
        self.ready = false;
    }

    /// Feeds one period of interleaved stereo that starts at mix time `start`. At most one
    /// frame becomes ready per call when periods are no longer than frames (the engine
    /// checks that at construction).
    pub fn feed(&mut self, stereo: &[f32], start: u64) {
        self.ready = false;
        let mut offset = 0;
        while offset < stereo.len() {
            if self.filled == 0 {
                self.pending_start = start + (offset / 2) as u64;
            }
            let take = (stereo.len() - offset).min(self.pending.len() - self.filled);
            self.pending[self.filled..self.filled + take]
                .copy_from_slice(&stereo[offset..offset + take]);
            self.filled += take;
            offset += take;
            if self.filled == self.pending.len() {
                let n = self.encoder.encode(&self.pending, &mut self.out);
                self.filled = 0;
                if n == 0 {
                    self.failures += 1;
                } else {
                    self.out_len = n;
                    self.out_start = self.pending_start;
                    self.ready = true;
                    self.frames += 1;
                    self.envelope_len = envelope(&self.pending, &mut self.envelope);
                }
            }
        }
    }

    /// The frame finished by the last `feed`, if any: (mix time of its first sample, its
    /// duration in frames, the Opus payload).
    pub fn ready_frame(&self) -> Option<(u64, usize, &[u8])> {
        self.ready.then(|| {
            (
                self.out_start,
                self.frame_samples,
                &self.out[..self.out_len],
            )
        })
    }

    /// The payload of the last frame produced.
    pub fn last_payload(&self) -> &[u8] {
        &self.out[..self.out_len]
    }

    /// The level envelope of the last frame produced (see [`envelope`]).
    pub fn last_envelope(&self) -> &[u8] {
        &self.envelope[..self.envelope_len]
    }

    /// Marks the ready frame as taken.
    pub fn take(&mut self) {
        self.ready = false;
    }
}

/// Frames per envelope value: 2.5 ms.
pub const ENVELOPE_BLOCK: usize = 120;

/// Envelope values of the longest frame (20 ms).
pub const MAX_ENVELOPE: usize = 8;

/// The level of `stereo` (interleaved) per [`ENVELOPE_BLOCK`] frames into `out`, as
/// codes of 90/255 dB from -90 dBFS (0, and silence) to 0 dBFS (255); returns how many.
/// What a phone compares with what it plays to find when it plays it (`docs/sync.md`).
/// Allocates nothing.
pub fn envelope(stereo: &[f32], out: &mut [u8; MAX_ENVELOPE]) -> usize {
    let mut n = 0;
    for (block, code) in stereo.chunks_exact(2 * ENVELOPE_BLOCK).zip(out.iter_mut()) {
        let power = block.iter().map(|v| v * v).sum::<f32>() / block.len() as f32;
        let db = 10.0 * power.max(1e-12).log10();
        *code = ((db + 90.0) * 255.0 / 90.0).round().clamp(0.0, 255.0) as u8;
        n += 1;
    }
    n
}

/// Adds `mono * gain` into interleaved `stereo` with pan gains `(l, r)`.
pub fn add_panned(mono: &[f32], gain: f32, (l, r): (f32, f32), stereo: &mut [f32]) {
    for (frame, &v) in stereo.chunks_exact_mut(2).zip(mono) {
        frame[0] += v * gain * l;
        frame[1] += v * gain * r;
    }
}

/// `out = (bus - minus * own) * master`, all interleaved stereo of equal length.
pub fn mix_minus(bus: &[f32], own: &[f32], minus: f32, master: f32, out: &mut [f32]) {
    for ((o, &b), &s) in out.iter_mut().zip(bus).zip(own) {
        *o = (b - minus * s) * master;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_codes_each_2_5_ms_from_minus_90_to_0_dbfs() {
        // 10 ms: a full-scale square, a 0.5 sine, silence, a -100 dBFS whisper.
        let mut stereo = Vec::new();
        for k in 0..4 * ENVELOPE_BLOCK {
            let v = match k / ENVELOPE_BLOCK {
                0 => 1.0,
                1 => 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * k as f32 / 48_000.0).sin(),
                2 => 0.0,
                _ => 1e-5,
            };
            stereo.extend_from_slice(&[v, v]);
        }
        let mut out = [7u8; MAX_ENVELOPE];
        assert_eq!(envelope(&stereo, &mut out), 4);
        // 0.5 sine: -9.03 dBFS → (90 - 9.03) × 255 / 90 = 229.4.
        assert_eq!(&out[..4], &[255, 229, 0, 0]);
        assert_eq!(&out[4..], &[7; 4], "only the frame's blocks are written");
        // A 20 ms frame fills all eight.
        assert_eq!(envelope(&[0.1; 2 * 8 * ENVELOPE_BLOCK], &mut out), 8);
        assert!(out.iter().all(|&c| c == 198), "{out:?}");
    }

    #[test]
    fn centre_pan_keeps_power() {
        let (l, r) = pan_gains(0.0);
        assert!((l * l + r * r - 1.0).abs() < 1e-6);
        assert!(pan_gains(-1.0).1.abs() < 1e-6);
    }

    #[test]
    fn mix_minus_at_monitor_zero_removes_exactly_the_own_contribution() {
        let own = [0.3f32, -0.2, 0.1, 0.4];
        let other = [0.25f32, 0.5, -0.125, 0.0625];
        let bus: Vec<f32> = own.iter().zip(&other).map(|(a, b)| a + b).collect();
        let mut out = [0.0; 4];
        mix_minus(&bus, &own, 1.0, 1.0, &mut out);
        for (o, e) in out.iter().zip(&other) {
            assert!((o - e).abs() < 1e-7);
        }
    }

    #[test]
    fn encoder_emits_one_frame_per_frame_of_periods() {
        let mut enc = MixEncoder::new(&EncoderConfig::default());
        let period = vec![0.1f32; 2 * 240];
        enc.feed(&period, 0);
        assert!(enc.ready_frame().is_none());
        enc.feed(&period, 240);
        let (start, samples, payload) = enc.ready_frame().expect("frame after 10 ms");
        assert_eq!((start, samples), (0, 480));
        assert!(!payload.is_empty());
    }
}
