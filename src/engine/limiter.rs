//! Stereo-linked lookahead peak limiter: the last stage of every mix output
//! (the venue mix to the speakers and each singer's personal return mix).
//!
//! Owns: the per-output gain computer (required gain, lookahead window
//! minimum, release envelope, attack smoothing), the lookahead delay line and
//! the final hard clamp.
//!
//! Must not know: who is singing, how many buses or singers exist, the mixer,
//! devices, threads, clocks or I/O. It sees interleaved stereo `f32` frames
//! and nothing else.
//!
//! Invariants:
//! - every output sample is finite and `|x| <= ceiling` (linear), whatever
//!   the input (non-finite input samples are treated as silence);
//! - while every frame in the lookahead window is at or below the ceiling and
//!   the release has finished, the gain is exactly `1.0`, so the output is
//!   bit-identical to the input delayed by [`Limiter::latency_frames`];
//! - after [`Limiter::new`] nothing allocates, locks or logs, and the work
//!   per frame is O(1) amortized.

use std::time::Duration;

/// Longest lookahead accepted (5 ms). Longer lookahead adds latency to the
/// singers' own return mix, where a few milliseconds is already audible, and
/// 5 ms covers the attack of vocal plosives.
pub const MAX_LOOKAHEAD: Duration = Duration::from_millis(5);

/// Lowest accepted ceiling in dBFS. Below this the "limiter" would be a mute
/// switch, and the required gain for full-scale peaks would approach the
/// subnormal range of `f32`.
const MIN_CEILING_DB: f32 = -60.0;

/// Highest accepted ceiling in dBFS: the output goes to a DAC whose full
/// scale is 1.0, so a ceiling above it would protect nothing.
const MAX_CEILING_DB: f32 = 0.0;

/// Ceiling in dBFS used when the caller passes NaN, leaving 1 dB of headroom
/// for inter-sample peaks in the DAC's reconstruction filter.
const FALLBACK_CEILING_DB: f32 = -1.0;

/// Dimensionless factor applied to the exact required gain
/// `ceiling / peak`. The product `peak * (ceiling / peak)` can round a few
/// ULPs above the ceiling; this -0.0001 dB margin keeps the smooth gain
/// doing the work so the hard clamp stays a safety net that rarely fires.
const REQUIRED_GAIN_MARGIN: f32 = 0.999_99;

/// Linear gain units the release envelope aims above its target. A pure
/// exponential never reaches its target, which would leave the gain a hair
/// below 1.0 forever and break bit-identical passthrough; aiming 0.01
/// (~0.09 dB) higher and stopping at the target lands exactly on it, within
/// about 4.6 release time constants from any depth of reduction.
const RELEASE_OVERSHOOT: f32 = 0.01;

/// Largest gain reduction reported by [`Limiter::gain_reduction_db`], in dB.
/// Absurdly large but finite inputs can push the gain into the subnormal
/// range; a meter needs a finite number, and 120 dB is already "muted".
const MAX_REPORTED_GAIN_REDUCTION_DB: f32 = 120.0;

/// A stereo-linked lookahead peak limiter. See the module docs for its
/// guarantees.
#[derive(Debug, Clone)]
pub struct Limiter {
    /// Output ceiling, linear full-scale units (1.0 = 0 dBFS).
    ceiling: f32,
    /// Per-frame multiplier of the release envelope's distance to its target.
    release_coef: f32,
    /// Lookahead in frames; also the output delay.
    lookahead_frames: usize,
    /// Minimum of the required gain over the last `lookahead_frames + 1`
    /// frames.
    window_min: WindowMin,
    /// Release envelope (linear gain) following `window_min`.
    envelope: f32,
    /// Moving average of the envelope that turns gain steps into ramps.
    smoother: BoxSmoother,
    /// Delays the audio so the smoothed gain lands on the peak it was for.
    delay: StereoDelay,
    /// Gain applied to the most recent output frame (linear).
    last_gain: f32,
    /// How many output samples the hard clamp had to touch; tests read it to
    /// check the smooth gain does the real work.
    hard_clamps: u64,
}

impl Limiter {
    /// Creates a limiter and allocates all of its buffers.
    ///
    /// - `sample_rate_hz`: frames per second (48 000 in duetbox; 0 is treated
    ///   as 1).
    /// - `ceiling_db`: output ceiling in dBFS, clamped to -60..=0 (NaN means
    ///   -1 dBFS).
    /// - `lookahead`: how far ahead the gain starts to fall, clamped to
    ///   [`MAX_LOOKAHEAD`]; zero gives an instant attack and no delay.
    /// - `release`: exponential time constant of the gain's recovery; zero
    ///   recovers instantly.
    pub fn new(
        sample_rate_hz: u32,
        ceiling_db: f32,
        lookahead: Duration,
        release: Duration,
    ) -> Limiter {
        let rate = f64::from(sample_rate_hz.max(1));
        let ceiling_db = if ceiling_db.is_nan() {
            FALLBACK_CEILING_DB
        } else {
            ceiling_db.clamp(MIN_CEILING_DB, MAX_CEILING_DB)
        };
        let lookahead_frames = (lookahead.min(MAX_LOOKAHEAD).as_secs_f64() * rate).round() as usize;
        let release_frames = release.as_secs_f64() * rate;
        let release_coef = if release_frames > 0.0 {
            (-1.0 / release_frames).exp() as f32
        } else {
            0.0
        };
        // The window covers the frame leaving the delay line and every frame
        // still inside it, so the gain is down before any of them comes out.
        let window = lookahead_frames + 1;
        Limiter {
            ceiling: 10.0_f32.powf(ceiling_db / 20.0),
            release_coef,
            lookahead_frames,
            window_min: WindowMin::new(window),
            envelope: 1.0,
            smoother: BoxSmoother::new(window),
            delay: StereoDelay::new(lookahead_frames),
            last_gain: 1.0,
            hard_clamps: 0,
        }
    }

    /// Limits interleaved stereo `[L, R, L, R, ...]` in place; any length,
    /// including 0. The output is delayed by [`Limiter::latency_frames`]
    /// frames. A trailing lone sample (odd slice length) is not a stereo
    /// frame and is written as silence (0.0) without touching the state, so
    /// the next call stays frame-aligned.
    pub fn process(&mut self, stereo: &mut [f32]) {
        if self.is_relaxed() && stereo.len().is_multiple_of(2) && self.all_below_ceiling(stereo) {
            // Fast path for the common case (nobody near full scale): the gain stays
            // exactly 1, so only the delay line does work. Measured: the per-sample gain
            // computer cost 11 % of a 32-singer period before this.
            for frame in stereo.chunks_exact_mut(2) {
                let (left, right) = self.delay.push(frame[0], frame[1]);
                frame[0] = left;
                frame[1] = right;
            }
            self.window_min.skip_unity(stereo.len() / 2);
            self.last_gain = 1.0;
            return;
        }
        let mut frames = stereo.chunks_exact_mut(2);
        for frame in &mut frames {
            let (left, right) = self.process_frame(frame[0], frame[1]);
            frame[0] = left;
            frame[1] = right;
        }
        for orphan in frames.into_remainder() {
            *orphan = 0.0;
        }
    }

    /// Output delay in frames (= lookahead in frames, at most 5 ms worth).
    /// Mixers must delay anything that bypasses the limiter by this much to
    /// stay aligned.
    pub fn latency_frames(&self) -> usize {
        self.lookahead_frames
    }

    /// Gain reduction applied to the most recent output frame, in dB
    /// (>= 0, finite; 0 means unity gain).
    pub fn gain_reduction_db(&self) -> f32 {
        if self.last_gain >= 1.0 {
            return 0.0;
        }
        (-20.0 * self.last_gain.log10()).clamp(0.0, MAX_REPORTED_GAIN_REDUCTION_DB)
    }

    /// Returns to the freshly created state: unity gain and a silent delay
    /// line. Does not allocate.
    pub fn reset(&mut self) {
        self.window_min.reset();
        self.envelope = 1.0;
        self.smoother.reset();
        self.delay.reset();
        self.last_gain = 1.0;
        self.hard_clamps = 0;
    }

    /// No reduction anywhere in the gain computer: envelope, window and smoother all
    /// hold exactly 1.
    fn is_relaxed(&self) -> bool {
        self.envelope == 1.0 && self.smoother.not_unity == 0 && self.window_min.is_unity()
    }

    fn all_below_ceiling(&self, stereo: &[f32]) -> bool {
        // `<=` is false for NaN, so non-finite input takes the careful path.
        stereo.iter().all(|v| v.abs() <= self.ceiling)
    }

    fn process_frame(&mut self, left: f32, right: f32) -> (f32, f32) {
        let left = finite_or_zero(left);
        let right = finite_or_zero(right);
        // Stereo-linked: one gain for both channels keeps the image from
        // swinging towards the quieter side when one side peaks.
        let peak = left.abs().max(right.abs());
        let required = if peak > self.ceiling {
            self.ceiling / peak * REQUIRED_GAIN_MARGIN
        } else {
            1.0
        };
        let held = self.window_min.push(required);
        // Falling is instant here because the smoother after us turns the
        // step into a ramp that still finishes before the peak comes out.
        self.envelope = if held <= self.envelope {
            held
        } else {
            let aim = held + RELEASE_OVERSHOOT;
            (aim - (aim - self.envelope) * self.release_coef).min(held)
        };
        let gain = self.smoother.push(self.envelope);
        self.last_gain = gain;
        let (delayed_left, delayed_right) = self.delay.push(left, right);
        (
            self.hard_clamp(delayed_left * gain),
            self.hard_clamp(delayed_right * gain),
        )
    }

    fn hard_clamp(&mut self, sample: f32) -> f32 {
        if sample.abs() > self.ceiling {
            self.hard_clamps += 1;
            self.ceiling.copysign(sample)
        } else {
            sample
        }
    }
}

fn finite_or_zero(sample: f32) -> f32 {
    if sample.is_finite() {
        sample
    } else {
        0.0
    }
}

/// Sliding-window minimum over the last `capacity` pushed values, as a
/// monotonic deque in a fixed ring buffer: O(1) amortized per push.
#[derive(Debug, Clone)]
struct WindowMin {
    /// Ring buffer of (frame index, value), values strictly increasing from
    /// front to back.
    entries: Vec<(u64, f32)>,
    head: usize,
    len: usize,
    next_index: u64,
}

impl WindowMin {
    fn new(capacity: usize) -> WindowMin {
        WindowMin {
            entries: vec![(0, 1.0); capacity],
            head: 0,
            len: 0,
            next_index: 0,
        }
    }

    fn reset(&mut self) {
        self.head = 0;
        self.len = 0;
        self.next_index = 0;
    }

    /// Whether every value in the window is 1 (no reduction pending).
    fn is_unity(&self) -> bool {
        self.len == 0 || self.entries[self.head].1 >= 1.0
    }

    /// Same state as pushing `n` values of 1.0 onto a window that holds only 1.0s.
    fn skip_unity(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.next_index += n as u64;
        self.head = 0;
        self.len = 1;
        self.entries[0] = (self.next_index - 1, 1.0);
    }

    fn push(&mut self, value: f32) -> f32 {
        let capacity = self.entries.len();
        let index = self.next_index;
        self.next_index += 1;
        // Expire first so at most capacity - 1 entries remain before the push.
        if self.len > 0 && self.entries[self.head].0 + capacity as u64 <= index {
            self.head = (self.head + 1) % capacity;
            self.len -= 1;
        }
        while self.len > 0 {
            let back = (self.head + self.len - 1) % capacity;
            if self.entries[back].1 >= value {
                self.len -= 1;
            } else {
                break;
            }
        }
        let slot = (self.head + self.len) % capacity;
        self.entries[slot] = (index, value);
        self.len += 1;
        self.entries[self.head].1
    }
}

/// Moving average over the last `window` envelope values. Averaging a
/// window-minimum over the same window length gives a linear attack ramp that
/// is guaranteed to reach each peak's required gain by the time that peak
/// leaves the delay line.
#[derive(Debug, Clone)]
struct BoxSmoother {
    values: Vec<f32>,
    pos: usize,
    /// f64 so that long runs of reduction do not drift the average upwards.
    sum: f64,
    /// How many values in the window are not exactly 1.0; when none are, the
    /// output is exactly 1.0 and `sum` is re-anchored, erasing any drift.
    not_unity: usize,
}

impl BoxSmoother {
    fn new(window: usize) -> BoxSmoother {
        BoxSmoother {
            values: vec![1.0; window],
            pos: 0,
            sum: window as f64,
            not_unity: 0,
        }
    }

    fn reset(&mut self) {
        self.values.fill(1.0);
        self.pos = 0;
        self.sum = self.values.len() as f64;
        self.not_unity = 0;
    }

    fn push(&mut self, value: f32) -> f32 {
        let old = std::mem::replace(&mut self.values[self.pos], value);
        self.pos = (self.pos + 1) % self.values.len();
        if old != 1.0 {
            self.not_unity -= 1;
        }
        if value != 1.0 {
            self.not_unity += 1;
        }
        if self.not_unity == 0 {
            self.sum = self.values.len() as f64;
            return 1.0;
        }
        self.sum += f64::from(value) - f64::from(old);
        ((self.sum / self.values.len() as f64) as f32).clamp(0.0, 1.0)
    }
}

/// Fixed-length interleaved stereo delay line; zero length passes through.
#[derive(Debug, Clone)]
struct StereoDelay {
    samples: Vec<f32>,
    pos: usize,
}

impl StereoDelay {
    fn new(frames: usize) -> StereoDelay {
        StereoDelay {
            samples: vec![0.0; frames * 2],
            pos: 0,
        }
    }

    fn reset(&mut self) {
        self.samples.fill(0.0);
        self.pos = 0;
    }

    fn push(&mut self, left: f32, right: f32) -> (f32, f32) {
        if self.samples.is_empty() {
            return (left, right);
        }
        let out_left = std::mem::replace(&mut self.samples[self.pos], left);
        let out_right = std::mem::replace(&mut self.samples[self.pos + 1], right);
        self.pos = (self.pos + 2) % self.samples.len();
        (out_left, out_right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RATE: u32 = 48_000;
    const CEILING_DB: f32 = -1.0;
    const RELEASE: Duration = Duration::from_millis(80);
    const LOOKAHEAD: Duration = Duration::from_millis(5);

    fn ceiling() -> f32 {
        10.0_f32.powf(CEILING_DB / 20.0)
    }

    fn sine_stereo(frames: usize, freq_hz: f32, amplitude: f32) -> Vec<f32> {
        (0..frames)
            .flat_map(|n| {
                let x = amplitude
                    * (2.0 * std::f32::consts::PI * freq_hz * n as f32 / RATE as f32).sin();
                [x, x]
            })
            .collect()
    }

    fn eight_full_scale_singers(frames: usize) -> Vec<f32> {
        // Different pitches and phases, but all peaks line up at frame 0 and
        // regularly after, so the sum genuinely reaches ~8.0.
        let pitches = [110.0, 165.0, 220.0, 247.5, 330.0, 440.0, 495.0, 660.0];
        (0..frames)
            .flat_map(|n| {
                let t = n as f32 / RATE as f32;
                let sum: f32 = pitches
                    .iter()
                    .map(|f| (2.0 * std::f32::consts::PI * f * t).cos())
                    .sum();
                [sum, sum * 0.9]
            })
            .collect()
    }

    #[test]
    fn signal_below_ceiling_passes_bit_identical_without_lookahead() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, Duration::ZERO, RELEASE);
        let input = sine_stereo(48_000, 440.0, 0.85);
        let mut output = input.clone();
        limiter.process(&mut output);
        assert_eq!(limiter.latency_frames(), 0);
        assert!(input
            .iter()
            .zip(&output)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(limiter.gain_reduction_db(), 0.0);
    }

    #[test]
    fn signal_below_ceiling_passes_identical_but_delayed_by_latency_with_lookahead() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, LOOKAHEAD, RELEASE);
        let latency = limiter.latency_frames();
        assert_eq!(latency, 240);
        let input = sine_stereo(48_000, 440.0, 0.85);
        let mut output = input.clone();
        limiter.process(&mut output);
        assert!(output[..latency * 2].iter().all(|&x| x == 0.0));
        let delayed = &output[latency * 2..];
        assert!(delayed
            .iter()
            .zip(&input)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn output_never_exceeds_ceiling_with_eight_full_scale_singers() {
        for lookahead in [Duration::ZERO, Duration::from_millis(1), LOOKAHEAD] {
            let mut limiter = Limiter::new(RATE, CEILING_DB, lookahead, RELEASE);
            let mut audio = eight_full_scale_singers(96_000);
            let loudest = audio.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
            assert!(
                loudest > 7.9,
                "test signal should reach ~8.0, got {loudest}"
            );
            for chunk in audio.chunks_mut(256) {
                limiter.process(chunk);
            }
            assert!(audio.iter().all(|x| x.is_finite() && x.abs() <= ceiling()));
            assert!(limiter.gain_reduction_db() > 0.0);
        }
    }

    #[test]
    fn smooth_gain_keeps_eight_singers_under_ceiling_without_the_hard_clamp() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, LOOKAHEAD, RELEASE);
        let mut audio = eight_full_scale_singers(96_000);
        limiter.process(&mut audio);
        assert_eq!(limiter.hard_clamps, 0);
    }

    #[test]
    fn gain_returns_to_unity_within_five_release_times_after_a_burst() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, LOOKAHEAD, RELEASE);
        let mut burst = sine_stereo(24_000, 440.0, 6.0);
        limiter.process(&mut burst);
        assert!(limiter.gain_reduction_db() > 10.0);

        let quiet_frames =
            (RELEASE.as_secs_f64() * 5.0 * f64::from(RATE)) as usize + limiter.latency_frames();
        let mut quiet = sine_stereo(quiet_frames, 440.0, 0.5);
        limiter.process(&mut quiet);
        assert_eq!(limiter.gain_reduction_db(), 0.0);
        assert_eq!(limiter.last_gain, 1.0);
    }

    #[test]
    fn release_is_gradual_rather_than_instant() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, Duration::ZERO, RELEASE);
        let mut burst = vec![4.0; 2_000];
        limiter.process(&mut burst);
        let deep = limiter.gain_reduction_db();
        let mut quiet = vec![0.1; 2 * 4_800]; // one 100 ms slice, > 1 release
        limiter.process(&mut quiet[..2]);
        assert!(limiter.gain_reduction_db() > deep * 0.9);
        limiter.process(&mut quiet[2..]);
        let later = limiter.gain_reduction_db();
        assert!(
            later > 0.0 && later < deep * 0.5,
            "deep {deep} later {later}"
        );
    }

    #[test]
    fn lookahead_attenuates_the_sample_right_before_a_step() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, LOOKAHEAD, RELEASE);
        let step_frame = 1_000;
        let quiet = 0.1;
        let mut audio: Vec<f32> = (0..4_000)
            .flat_map(|n| {
                let x = if n < step_frame { quiet } else { 4.0 };
                [x, x]
            })
            .collect();
        limiter.process(&mut audio);
        let latency = limiter.latency_frames();
        let just_before = audio[(step_frame + latency - 1) * 2];
        let well_before = audio[(step_frame - 1) * 2];
        assert_eq!(well_before, quiet, "no reduction a whole window early");
        assert!(just_before < quiet * 0.5, "got {just_before}");
        let at_step = audio[(step_frame + latency) * 2];
        assert!(at_step <= ceiling() && at_step > ceiling() * 0.99);
        assert_eq!(limiter.hard_clamps, 0);
    }

    #[test]
    fn non_finite_input_comes_out_as_finite_silence() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, Duration::ZERO, RELEASE);
        let mut audio = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5];
        limiter.process(&mut audio);
        assert_eq!(audio, [0.0, 0.0, 0.0, 0.5]);
    }

    #[test]
    fn lookahead_longer_than_five_milliseconds_is_clamped() {
        let limiter = Limiter::new(RATE, CEILING_DB, Duration::from_secs(1), RELEASE);
        assert_eq!(limiter.latency_frames(), 240);
    }

    #[test]
    fn empty_and_odd_length_buffers_do_not_panic_and_keep_frame_alignment() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, Duration::ZERO, RELEASE);
        limiter.process(&mut []);
        let mut odd = [0.2, 0.3, 0.4];
        limiter.process(&mut odd);
        assert_eq!(odd, [0.2, 0.3, 0.0]);
        let mut next = [0.5, 0.6];
        limiter.process(&mut next);
        assert_eq!(next, [0.5, 0.6]);
    }

    #[test]
    fn reset_restores_unity_gain_and_a_silent_delay_line() {
        let mut limiter = Limiter::new(RATE, CEILING_DB, LOOKAHEAD, RELEASE);
        let mut loud = vec![3.0; 2_000];
        limiter.process(&mut loud);
        limiter.reset();
        assert_eq!(limiter.gain_reduction_db(), 0.0);
        let mut quiet = vec![0.25; 1_000];
        limiter.process(&mut quiet);
        let latency = limiter.latency_frames() * 2;
        assert!(quiet[..latency].iter().all(|&x| x == 0.0));
        assert!(quiet[latency..].iter().all(|&x| x == 0.25));
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_output() {
        let input = eight_full_scale_singers(10_000);
        let mut whole = input.clone();
        Limiter::new(RATE, CEILING_DB, LOOKAHEAD, RELEASE).process(&mut whole);
        let mut pieces = input;
        let mut limiter = Limiter::new(RATE, CEILING_DB, LOOKAHEAD, RELEASE);
        let mut rest = pieces.as_mut_slice();
        for size in [2, 64, 14, 1024, 6].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at_mut((*size).min(rest.len()));
            limiter.process(head);
            rest = tail;
        }
        assert_eq!(whole, pieces);
    }

    proptest! {
        #[test]
        fn any_input_in_random_chunks_comes_out_finite_and_under_ceiling(
            samples in proptest::collection::vec(
                prop_oneof![
                    4 => -20.0_f32..20.0,
                    1 => proptest::num::f32::ANY,
                ],
                0..3_000,
            ),
            chunk_frames in proptest::collection::vec(1_usize..300, 1..20),
            lookahead_us in 0_u64..7_000,
            release_ms in 0_u64..200,
            ceiling_db in -30.0_f32..0.0,
        ) {
            let mut limiter = Limiter::new(
                RATE,
                ceiling_db,
                Duration::from_micros(lookahead_us),
                Duration::from_millis(release_ms),
            );
            let ceiling = 10.0_f32.powf(ceiling_db / 20.0);
            let mut audio = samples;
            limiter.process(&mut []);
            let mut rest = audio.as_mut_slice();
            for frames in chunk_frames.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at_mut((frames * 2).min(rest.len()));
                limiter.process(head);
                rest = tail;
            }
            for x in &audio {
                prop_assert!(x.is_finite() && x.abs() <= ceiling, "{x} vs {ceiling}");
            }
            let reduction = limiter.gain_reduction_db();
            prop_assert!(reduction.is_finite() && reduction >= 0.0);
        }
    }
}
