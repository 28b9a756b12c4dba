//! Peak and RMS level meters for singer inputs and mix outputs.
//!
//! Owns: accumulating peak and mean-square over a span of samples, and the
//! conversion of levels to dBFS.
//!
//! Must not know: where the samples come from, how often the UI polls, the
//! sample rate, threads or I/O. Ballistics (decay, hold) belong to whoever
//! displays the level.
//!
//! Invariants:
//! - [`Level::peak`] and [`Level::rms`] are finite and >= 0;
//! - non-finite samples never reach the accumulators;
//! - no method allocates, locks or logs; work is O(1) per sample.

/// dBFS reported for a level of exactly zero (digital silence), and the
/// lowest value ever reported. -120 dBFS is below the noise floor of any
/// 24-bit converter, so a display can treat it as "off" without a special
/// case for minus infinity.
pub const SILENCE_DBFS: f32 = -120.0;

/// A measured level in linear full-scale units (1.0 = 0 dBFS).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Level {
    /// Largest absolute sample value seen, linear (>= 0).
    pub peak: f32,
    /// Root mean square over all samples seen, linear (>= 0). A full-scale
    /// sine reads 0.707.
    pub rms: f32,
}

impl Level {
    /// [`Level::peak`] in dBFS, floored at -120 (also for zero).
    pub fn peak_dbfs(&self) -> f32 {
        to_dbfs(self.peak)
    }

    /// [`Level::rms`] in dBFS, floored at -120 (also for zero). A full-scale
    /// sine reads -3.01 dBFS.
    pub fn rms_dbfs(&self) -> f32 {
        to_dbfs(self.rms)
    }
}

fn to_dbfs(linear: f32) -> f32 {
    // NaN is possible because `Level`'s fields are public.
    if linear.is_nan() || linear <= 0.0 {
        return SILENCE_DBFS;
    }
    (20.0 * linear.log10()).max(SILENCE_DBFS)
}

/// Accumulates the level of everything added since the last
/// [`Meter::take`].
#[derive(Clone, Debug, Default)]
pub struct Meter {
    /// Largest absolute finite sample so far, linear.
    peak: f32,
    /// Sum of squares in f64: an f32 sum stops growing after ~2^24 samples
    /// (6 minutes of stereo at 48 kHz) if the UI stops polling.
    sum_squares: f64,
    /// Finite samples counted in `sum_squares`.
    count: u64,
}

impl Meter {
    /// Creates a meter reading silence.
    pub fn new() -> Meter {
        Meter::default()
    }

    /// Adds mono samples (linear full-scale units). Non-finite samples are
    /// skipped: they count toward neither peak nor RMS.
    pub fn add_mono(&mut self, samples: &[f32]) {
        for &sample in samples {
            if sample.is_finite() {
                self.peak = self.peak.max(sample.abs());
                self.sum_squares += f64::from(sample) * f64::from(sample);
                self.count += 1;
            }
        }
    }

    /// Adds interleaved stereo `[L, R, ...]`: the peak is the louder of the
    /// two channels and the RMS is taken over all samples of both channels.
    /// Non-finite samples are skipped. A trailing lone sample still counts.
    pub fn add_stereo(&mut self, interleaved: &[f32]) {
        // Both channels feed one peak and one mean square, so the channel a
        // sample belongs to does not matter.
        self.add_mono(interleaved);
    }

    /// Returns the level since the last take (or creation) and starts a new
    /// span. Reads silence if nothing finite was added.
    pub fn take(&mut self) -> Level {
        let level = self.peek();
        *self = Meter::default();
        level
    }

    /// Returns the level since the last take without resetting.
    pub fn peek(&self) -> Level {
        let rms = if self.count == 0 {
            0.0
        } else {
            (self.sum_squares / self.count as f64).sqrt() as f32
        };
        Level {
            peak: self.peak,
            rms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(frames: usize, amplitude: f32) -> Vec<f32> {
        // 1 kHz at 48 kHz: exactly 48 samples per cycle, so the crest lands
        // on a sample and whole cycles fit the buffer.
        (0..frames)
            .map(|n| amplitude * (2.0 * std::f32::consts::PI * n as f32 / 48.0).sin())
            .collect()
    }

    #[test]
    fn full_scale_sine_reads_unit_peak_and_minus_three_dbfs_rms() {
        let mut meter = Meter::new();
        meter.add_mono(&sine(48_000, 1.0));
        let level = meter.take();
        assert!((level.peak - 1.0).abs() < 1e-6);
        assert!((level.rms - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-4);
        assert!(level.peak_dbfs().abs() < 1e-4);
        assert!((level.rms_dbfs() + 3.0103).abs() < 1e-3);
    }

    #[test]
    fn silence_reads_minus_120_dbfs() {
        let mut meter = Meter::new();
        meter.add_mono(&[0.0; 480]);
        let level = meter.take();
        assert_eq!(level, Level::default());
        assert_eq!(level.peak_dbfs(), -120.0);
        assert_eq!(level.rms_dbfs(), -120.0);
    }

    #[test]
    fn nothing_added_reads_silence() {
        assert_eq!(
            Meter::new().peek(),
            Level {
                peak: 0.0,
                rms: 0.0
            }
        );
    }

    #[test]
    fn levels_below_the_floor_read_minus_120_dbfs() {
        let level = Level {
            peak: 1e-9,
            rms: f32::NAN,
        };
        assert_eq!(level.peak_dbfs(), -120.0);
        assert_eq!(level.rms_dbfs(), -120.0);
    }

    #[test]
    fn take_returns_the_level_and_resets() {
        let mut meter = Meter::new();
        meter.add_mono(&[0.5, -0.5]);
        assert_eq!(
            meter.take(),
            Level {
                peak: 0.5,
                rms: 0.5
            }
        );
        assert_eq!(meter.take(), Level::default());
        meter.add_mono(&[0.25]);
        assert_eq!(
            meter.take(),
            Level {
                peak: 0.25,
                rms: 0.25
            }
        );
    }

    #[test]
    fn peek_does_not_reset() {
        let mut meter = Meter::new();
        meter.add_mono(&[0.5]);
        assert_eq!(meter.peek(), meter.peek());
        assert_eq!(meter.take().peak, 0.5);
    }

    #[test]
    fn level_accumulates_across_calls() {
        let mut meter = Meter::new();
        meter.add_mono(&[1.0]);
        meter.add_mono(&[0.0]);
        let level = meter.peek();
        assert_eq!(level.peak, 1.0);
        assert!((level.rms - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }

    #[test]
    fn stereo_peak_is_the_louder_channel_and_rms_covers_both() {
        let mut meter = Meter::new();
        meter.add_stereo(&[0.1, -0.8, 0.2, 0.4]);
        let level = meter.take();
        assert_eq!(level.peak, 0.8);
        let expected = ((0.01 + 0.64 + 0.04 + 0.16) / 4.0_f32).sqrt();
        assert!((level.rms - expected).abs() < 1e-6);
    }

    #[test]
    fn non_finite_samples_are_ignored() {
        let mut meter = Meter::new();
        meter.add_stereo(&[f32::NAN, 0.5, f32::INFINITY, f32::NEG_INFINITY, -0.5]);
        assert_eq!(
            meter.take(),
            Level {
                peak: 0.5,
                rms: 0.5
            }
        );
        meter.add_mono(&[f32::NAN]);
        assert_eq!(meter.take(), Level::default());
    }
}
