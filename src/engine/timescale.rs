//! Time-scale modification of decoded PCM: the buffer's way to follow its target delay.
//!
//! Owns [`PcmFifo`], the decoded samples waiting for playout, and the WSOLA-style splice
//! that removes (compress) or repeats (expand) one stretch of them. The splice length is
//! chosen where the signal best matches itself shifted by that length (a pitch period for
//! voice, anything in silence), and the seam is a raised-cosine crossfade, so pitch is
//! kept and no click is made. Hand-written because no maintained crate offers in-place,
//! allocation-free pitch-synchronous splicing on a live buffer (rubato resamples, which
//! would bend the singer's pitch while the buffer catches up).
//!
//! Invariants: nothing allocates after [`PcmFifo::new`]; the fifo never holds more than
//! its capacity (pushes beyond it are truncated and reported).

/// Crossfade length of a splice, samples (5 ms: about one voice pitch period).
pub const SPLICE_FADE_SAMPLES: usize = 240;

/// Shortest stretch a splice removes or repeats, samples (2 ms: above the highest sung
/// pitch period we care to match, 500 Hz).
pub const MIN_SPLICE_SAMPLES: usize = 96;

/// Longest stretch a splice removes or repeats, samples (15 ms: below the lowest voice
/// pitch, ~70 Hz).
pub const MAX_SPLICE_SAMPLES: usize = 720;

/// Normalised correlation above which a splice is inaudible enough to make.
pub const SPLICE_MIN_CORRELATION: f32 = 0.6;

/// Mean-square level below which any splice is fine (about -60 dBFS RMS).
const SILENCE_MEAN_SQUARE: f32 = 1e-6;

/// A contiguous, fixed-capacity queue of mono samples.
pub struct PcmFifo {
    buf: Vec<f32>,
    start: usize,
    end: usize,
}

/// A splice that was made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Splice {
    /// Samples removed (positive) or added (negative).
    pub samples: isize,
    /// Correlation at the seam (1 for silence).
    pub correlation: f32,
}

impl PcmFifo {
    /// An empty fifo holding up to `capacity` samples; allocates now.
    pub fn new(capacity: usize) -> PcmFifo {
        PcmFifo {
            buf: vec![0.0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Free room in samples.
    pub fn room(&self) -> usize {
        self.buf.len() - self.len()
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Keeps only the oldest `n` samples.
    pub fn truncate(&mut self, n: usize) {
        self.end = self.start + n.min(self.len());
    }

    /// The waiting samples, oldest first.
    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..self.end]
    }

    /// The waiting samples, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.end]
    }

    /// Makes room for `n` more samples at the end and returns them (zeroed), or fewer if
    /// the fifo is full. The caller writes into the returned slice.
    pub fn extend(&mut self, n: usize) -> &mut [f32] {
        let n = n.min(self.room());
        if self.end + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let tail = &mut self.buf[self.end..self.end + n];
        tail.fill(0.0);
        self.end += n;
        tail
    }

    /// Moves up to `out.len()` samples into `out`; returns how many.
    pub fn pop_into(&mut self, out: &mut [f32]) -> usize {
        let n = out.len().min(self.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        n
    }

    /// Removes one self-similar stretch of about `want` samples (at most `want + slack`)
    /// from the front of the fifo, if the signal allows an inaudible seam.
    pub fn compress(&mut self, want: usize, slack: usize, urgent: bool) -> Option<Splice> {
        let (tau, correlation) = self.best_lag(want, slack, urgent, MIN_SPLICE_SAMPLES)?;
        let x = &mut self.buf[self.start..self.end];
        // y[0..W] = fade(x[0..W] -> x[tau..tau+W]); then x[tau+W..] follows.
        for i in 0..SPLICE_FADE_SAMPLES {
            let w = fade_weight(i, SPLICE_FADE_SAMPLES);
            x[i] = x[i] * (1.0 - w) + x[tau + i] * w;
        }
        let from = self.start + tau + SPLICE_FADE_SAMPLES;
        self.buf
            .copy_within(from..self.end, self.start + SPLICE_FADE_SAMPLES);
        self.end -= tau;
        Some(Splice {
            samples: tau as isize,
            correlation,
        })
    }

    /// Repeats one self-similar stretch of about `want` samples at the front of the fifo,
    /// if the signal allows an inaudible seam and there is room.
    pub fn expand(&mut self, want: usize, slack: usize, urgent: bool) -> Option<Splice> {
        if self.room() < MAX_SPLICE_SAMPLES {
            return None;
        }
        let (tau, correlation) = self.best_lag(want, slack, urgent, MIN_SPLICE_SAMPLES)?;
        // y = x[0..tau] ++ fade(x[tau..tau+f] -> x[0..f]) ++ x[f..]: the stretch x[0..tau]
        // plays twice, joined by a crossfade of f samples (shorter than the usual fade
        // when the stretch itself is shorter, so the in-place copy below stays sound).
        let f = SPLICE_FADE_SAMPLES.min(tau);
        if self.end + tau > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let s = self.start;
        // Shift x[f..] right by tau: original x[i] (i >= f) now lives at s + i + tau, and
        // positions s+f .. s+f+tau are free to be rewritten; x[0..f] stays in place.
        self.buf.copy_within(s + f..self.end, s + f + tau);
        self.end += tau;
        for i in f..tau + f {
            let orig = self.buf[s + i + tau];
            self.buf[s + i] = if i < tau {
                orig
            } else {
                let k = i - tau;
                let w = fade_weight(k, f);
                orig * (1.0 - w) + self.buf[s + k] * w
            };
        }
        Some(Splice {
            samples: -(tau as isize),
            correlation,
        })
    }

    /// Finds the lag in `[min_lag, want + slack]` where the fifo front best
    /// matches itself; `None` if the fifo is too short or no lag correlates well enough.
    fn best_lag(
        &self,
        want: usize,
        slack: usize,
        urgent: bool,
        min_lag: usize,
    ) -> Option<(usize, f32)> {
        let x = self.as_slice();
        let hi = (want + slack).min(MAX_SPLICE_SAMPLES);
        let hi = hi.min(x.len().checked_sub(SPLICE_FADE_SAMPLES)?);
        let lo = min_lag;
        if hi < lo {
            return None;
        }
        let a = &x[..SPLICE_FADE_SAMPLES];
        let energy_a: f32 = a.iter().map(|v| v * v).sum();
        let mean_square = energy_a / SPLICE_FADE_SAMPLES as f32;
        let window_energy = |tau: usize| -> f32 {
            x[tau..tau + SPLICE_FADE_SAMPLES]
                .iter()
                .map(|v| v * v)
                .sum()
        };
        if mean_square < SILENCE_MEAN_SQUARE
            && window_energy(want.clamp(lo, hi)) / (SPLICE_FADE_SAMPLES as f32)
                < SILENCE_MEAN_SQUARE
        {
            return Some((want.clamp(lo, hi), 1.0));
        }
        let mut best = (lo, f32::MIN);
        let mut energy_b = window_energy(lo);
        for tau in lo..=hi {
            if tau > lo {
                let gone = x[tau - 1];
                let came = x[tau + SPLICE_FADE_SAMPLES - 1];
                energy_b = (energy_b - gone * gone + came * came).max(0.0);
            }
            let dot: f32 = a
                .iter()
                .zip(&x[tau..tau + SPLICE_FADE_SAMPLES])
                .map(|(p, q)| p * q)
                .sum();
            let den = (energy_a * energy_b).sqrt();
            let corr = if den > 0.0 { dot / den } else { 0.0 };
            // Prefer the lag nearest to what was asked among equally good ones.
            if corr > best.1 + 1e-4 {
                best = (tau, corr);
            }
        }
        let floor = if urgent {
            SPLICE_MIN_CORRELATION / 2.0
        } else {
            SPLICE_MIN_CORRELATION
        };
        (best.1 >= floor).then_some(best)
    }
}

/// Raised-cosine weight of the incoming side at position `i` of a crossfade of `len`.
fn fade_weight(i: usize, len: usize) -> f32 {
    let t = (i as f32 + 0.5) / len as f32;
    0.5 - 0.5 * (std::f32::consts::PI * t).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, hz: f32) -> Vec<f32> {
        (0..n)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin())
            .collect()
    }

    fn max_step(x: &[f32]) -> f32 {
        x.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn compress_removes_a_pitch_period_without_a_step() {
        let mut fifo = PcmFifo::new(4800);
        let src = tone(1920, 440.0);
        fifo.extend(src.len()).copy_from_slice(&src);
        let splice = fifo.compress(200, 60, false).expect("a tone splices");
        assert!(splice.samples >= 96 && splice.samples <= 260, "{splice:?}");
        assert_eq!(fifo.len(), 1920 - splice.samples as usize);
        assert!(splice.correlation > 0.99);
        let natural = max_step(&src);
        assert!(max_step(fifo.as_slice()) < natural * 1.1);
    }

    #[test]
    fn expand_repeats_a_pitch_period_without_a_step() {
        let mut fifo = PcmFifo::new(4800);
        let src = tone(1920, 440.0);
        fifo.extend(src.len()).copy_from_slice(&src);
        let splice = fifo.expand(200, 60, false).expect("a tone splices");
        assert!(
            splice.samples <= -96 && splice.samples >= -260,
            "{splice:?}"
        );
        assert_eq!(fifo.len() as isize, 1920 - splice.samples);
        let natural = max_step(&src);
        assert!(
            max_step(fifo.as_slice()) < natural * 1.1,
            "{}",
            max_step(fifo.as_slice())
        );
    }

    #[test]
    fn noise_without_self_similarity_is_not_spliced() {
        let mut fifo = PcmFifo::new(4800);
        let mut seed = 1u32;
        let noise = fifo.extend(1920);
        for v in noise.iter_mut() {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        }
        assert_eq!(fifo.compress(200, 60, false), None);
    }

    #[test]
    fn silence_splices_exactly_what_was_asked() {
        let mut fifo = PcmFifo::new(4800);
        fifo.extend(1920);
        assert_eq!(fifo.compress(150, 10, false).map(|s| s.samples), Some(150));
        assert_eq!(fifo.len(), 1770);
    }

    #[test]
    fn extend_never_exceeds_capacity() {
        let mut fifo = PcmFifo::new(100);
        assert_eq!(fifo.extend(60).len(), 60);
        assert_eq!(fifo.extend(60).len(), 40);
        let mut out = [0.0; 30];
        assert_eq!(fifo.pop_into(&mut out), 30);
        assert_eq!(fifo.extend(60).len(), 30);
        assert_eq!(fifo.len(), 100);
    }
}
