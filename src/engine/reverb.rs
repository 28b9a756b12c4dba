//! Mono-in, stereo-out "karaoke echo" room reverb for one singer's voice,
//! in the Schroeder/Freeverb style: per channel, eight parallel lowpass-
//! feedback comb filters feed four series allpasses; the right channel's
//! delay lines are slightly longer than the left's, which decorrelates the
//! two sides and gives stereo width.
//!
//! Owns: the reverb's delay lines and filter state, the room-size and
//! damping parameters, and the "tail has died" bookkeeping.
//!
//! Must not know: the dry signal (the mixer adds it), who is singing, buses,
//! the limiter, devices, threads or I/O.
//!
//! Invariants:
//! - the output only ever adds into the caller's buffer, scaled by the
//!   caller's wet gain;
//! - the state is always finite: non-finite input is treated as silence,
//!   every feedback gain is below 1 and the damping filter's gain is at most
//!   1, so the network is stable for every parameter value;
//! - after [`Reverb::new`] nothing allocates, locks or logs, and the work
//!   per sample is fixed (16 combs + 8 allpasses).

/// Sample rate the classic Freeverb delay lengths were tuned for, in Hz; the
/// lengths below are rescaled from it so the room sounds the same at 48 kHz.
const REFERENCE_RATE_HZ: f64 = 44_100.0;

/// Number of parallel comb filters per channel: enough echo density for a
/// smooth tail without a metallic ring.
const NUM_COMBS: usize = 8;

/// Number of series allpass diffusers per channel: they smear the combs'
/// discrete echoes into a wash.
const NUM_ALLPASSES: usize = 4;

/// Comb delay lengths in samples at 44.1 kHz (25-37 ms). Freeverb's
/// mutually prime-ish lengths, chosen so the combs' echoes rarely coincide.
const COMB_LENGTHS_44K: [usize; NUM_COMBS] = [1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617];

/// Allpass delay lengths in samples at 44.1 kHz (5-13 ms): Freeverb's
/// diffuser lengths, short enough not to be heard as separate echoes.
const ALLPASS_LENGTHS_44K: [usize; NUM_ALLPASSES] = [556, 441, 341, 225];

/// Extra delay in samples at 44.1 kHz (~0.5 ms) for every right-channel
/// line. The small offset decorrelates L and R without shifting the image.
const STEREO_SPREAD_44K: usize = 23;

/// Dimensionless gain on the input before the combs. Eight combs with
/// feedback up to 0.98 add up to a large loop gain; Freeverb's 0.015 keeps a
/// full-scale voice's tail around unity at wet gain 1.0.
const INPUT_GAIN: f32 = 0.015;

/// Comb feedback = room × ROOM_SCALE + ROOM_OFFSET: maps room 0..1 to
/// feedback 0.7..0.98, i.e. a small room up to a long hall that is still
/// stable (feedback below 1).
const ROOM_SCALE: f32 = 0.28;

/// See [`ROOM_SCALE`]: feedback for room size 0.
const ROOM_OFFSET: f32 = 0.7;

/// Lowpass coefficient in the comb loop = damping × DAMP_SCALE: damping 1
/// gives a 0.4 one-pole coefficient, dark but not muffled.
const DAMP_SCALE: f32 = 0.4;

/// Allpass feedback coefficient (dimensionless): Freeverb's 0.5 diffuses
/// without adding a ringing colour of its own.
const ALLPASS_FEEDBACK: f32 = 0.5;

/// Room size a new reverb starts with (0..1): a medium room, ~1 s tail.
const DEFAULT_ROOM: f32 = 0.5;

/// Damping a new reverb starts with (0..1): halfway, so the tail darkens as
/// it decays like a real furnished room.
const DEFAULT_DAMPING: f32 = 0.5;

/// Output level below which the tail counts as dead: 1e-5 linear,
/// -100 dBFS, far under a venue's noise floor.
const SILENCE_THRESHOLD: f32 = 1e-5;

/// Worst-case (L1 impulse-response) gain of one allpass, dimensionless:
/// 1 for the direct path plus (1 + feedback) for the recirculating one.
const ALLPASS_WORST_GAIN: f32 = 2.0 + ALLPASS_FEEDBACK;

/// Upper bound on how much an internal state value can grow on its way to
/// the output: every comb and allpass can contribute, through up to four
/// allpasses.
const STATE_TO_OUTPUT_GAIN: f32 = (NUM_COMBS + NUM_ALLPASSES) as f32
    * ALLPASS_WORST_GAIN
    * ALLPASS_WORST_GAIN
    * ALLPASS_WORST_GAIN
    * ALLPASS_WORST_GAIN;

/// Largest state magnitude (linear) that still guarantees the output stays
/// below [`SILENCE_THRESHOLD`] at wet gain 1.0 from now on.
const STATE_SILENCE_THRESHOLD: f32 = SILENCE_THRESHOLD / STATE_TO_OUTPUT_GAIN;

/// State values below this magnitude are flushed to exactly 0. It sits far
/// above the subnormal range (~1e-38), whose arithmetic is up to 100× slower
/// on x86, and far below audibility.
const FLUSH_BELOW: f32 = 1e-30;

/// A stereo Freeverb-style room reverb. See the module docs.
#[derive(Debug, Clone)]
pub struct Reverb {
    left: Tank,
    right: Tank,
    /// Comb feedback (dimensionless, 0.7..=0.98).
    feedback: f32,
    /// Weight of the previous lowpass state in the comb loop (0..=0.4).
    damp: f32,
    /// Consecutive frames in which every state value written stayed below
    /// [`STATE_SILENCE_THRESHOLD`].
    quiet_frames: usize,
    /// Once `quiet_frames` reaches the longest delay line, every stored value
    /// was written during the quiet stretch, so the whole state is quiet.
    longest_line: usize,
}

impl Reverb {
    /// Creates a reverb with room size 0.5 and damping 0.5, allocating all
    /// delay lines (about 28 000 `f32` at 48 kHz). `sample_rate_hz` is in
    /// frames per second; 0 is treated as 1.
    pub fn new(sample_rate_hz: u32) -> Reverb {
        let scale = f64::from(sample_rate_hz.max(1)) / REFERENCE_RATE_HZ;
        let scaled = |len_44k: usize| ((len_44k as f64 * scale).round() as usize).max(1);
        let left = Tank::new(
            |i| scaled(COMB_LENGTHS_44K[i]),
            |i| scaled(ALLPASS_LENGTHS_44K[i]),
        );
        let right = Tank::new(
            |i| scaled(COMB_LENGTHS_44K[i] + STEREO_SPREAD_44K),
            |i| scaled(ALLPASS_LENGTHS_44K[i] + STEREO_SPREAD_44K),
        );
        let longest_line = left.longest_line().max(right.longest_line());
        let mut reverb = Reverb {
            left,
            right,
            feedback: 0.0,
            damp: 0.0,
            quiet_frames: longest_line,
            longest_line,
        };
        reverb.set_room_size(DEFAULT_ROOM);
        reverb.set_damping(DEFAULT_DAMPING);
        reverb
    }

    /// Sets the room size, 0 (small, short tail) ..= 1 (large hall, several
    /// seconds); values outside are clamped and NaN is ignored. Takes
    /// effect on the next sample, without clicks.
    pub fn set_room_size(&mut self, room: f32) {
        if !room.is_nan() {
            self.feedback = room.clamp(0.0, 1.0) * ROOM_SCALE + ROOM_OFFSET;
        }
    }

    /// Sets the high-frequency damping, 0 (bright tail) ..= 1 (dark tail);
    /// values outside are clamped and NaN is ignored.
    pub fn set_damping(&mut self, damp: f32) {
        if !damp.is_nan() {
            self.damp = damp.clamp(0.0, 1.0) * DAMP_SCALE;
        }
    }

    /// Runs `mono_in` (one singer, linear full-scale units) through the
    /// reverb and ADDS the wet stereo result × `wet_gain` (linear) into
    /// `stereo_out` (interleaved `[L, R, ...]`, expected length
    /// `2 × mono_in.len()`). The dry signal is not added. On a length
    /// mismatch only the frames both slices have are processed. Non-finite
    /// input samples are treated as silence; a non-finite `wet_gain` as 0
    /// (the tail keeps evolving either way, so turning wet back up later is
    /// seamless).
    pub fn process_add(&mut self, mono_in: &[f32], wet_gain: f32, stereo_out: &mut [f32]) {
        let wet_gain = if wet_gain.is_finite() { wet_gain } else { 0.0 };
        for (&sample, out) in mono_in.iter().zip(stereo_out.chunks_exact_mut(2)) {
            let input = if sample.is_finite() {
                sample * INPUT_GAIN
            } else {
                0.0
            };
            let mut state_peak = input.abs();
            let left = self
                .left
                .process(input, self.feedback, self.damp, &mut state_peak);
            let right = self
                .right
                .process(input, self.feedback, self.damp, &mut state_peak);
            out[0] += left * wet_gain;
            out[1] += right * wet_gain;
            if state_peak < STATE_SILENCE_THRESHOLD {
                self.quiet_frames = self.quiet_frames.saturating_add(1);
            } else {
                self.quiet_frames = 0;
            }
        }
    }

    /// Clears the tail to silence, keeping room size and damping. Does not
    /// allocate.
    pub fn reset(&mut self) {
        self.left.reset();
        self.right.reset();
        self.quiet_frames = self.longest_line;
    }

    /// True when the tail is below -100 dBFS (at wet gain 1.0) and will stay
    /// there without new input, so a caller whose wet gain is 0 may skip
    /// [`Reverb::process_add`] entirely until the singer is heard again.
    pub fn is_silent(&self) -> bool {
        self.quiet_frames >= self.longest_line
    }
}

/// One channel's comb bank and allpass chain.
#[derive(Debug, Clone)]
struct Tank {
    combs: [Comb; NUM_COMBS],
    allpasses: [Allpass; NUM_ALLPASSES],
}

impl Tank {
    fn new(comb_len: impl Fn(usize) -> usize, allpass_len: impl Fn(usize) -> usize) -> Tank {
        Tank {
            combs: std::array::from_fn(|i| Comb::new(comb_len(i))),
            allpasses: std::array::from_fn(|i| Allpass::new(allpass_len(i))),
        }
    }

    fn longest_line(&self) -> usize {
        let combs = self.combs.iter().map(|c| c.buffer.len());
        let allpasses = self.allpasses.iter().map(|a| a.buffer.len());
        combs.chain(allpasses).max().unwrap_or(0)
    }

    fn reset(&mut self) {
        self.combs.iter_mut().for_each(Comb::reset);
        self.allpasses.iter_mut().for_each(Allpass::reset);
    }

    fn process(&mut self, input: f32, feedback: f32, damp: f32, state_peak: &mut f32) -> f32 {
        let mut sum = 0.0;
        for comb in &mut self.combs {
            sum += comb.process(input, feedback, damp, state_peak);
        }
        let mut out = sum;
        for allpass in &mut self.allpasses {
            out = allpass.process(out, state_peak);
        }
        out
    }
}

/// Feedback comb with a one-pole lowpass in the loop, so high frequencies
/// die faster than low ones, as in a real room.
#[derive(Debug, Clone)]
struct Comb {
    buffer: Vec<f32>,
    pos: usize,
    lowpass: f32,
}

impl Comb {
    fn new(len: usize) -> Comb {
        Comb {
            buffer: vec![0.0; len],
            pos: 0,
            lowpass: 0.0,
        }
    }

    fn reset(&mut self) {
        self.buffer.fill(0.0);
        self.pos = 0;
        self.lowpass = 0.0;
    }

    fn process(&mut self, input: f32, feedback: f32, damp: f32, state_peak: &mut f32) -> f32 {
        let output = self.buffer[self.pos];
        self.lowpass = flush(output * (1.0 - damp) + self.lowpass * damp);
        let written = flush(input + self.lowpass * feedback);
        self.buffer[self.pos] = written;
        self.pos = (self.pos + 1) % self.buffer.len();
        *state_peak = state_peak.max(written.abs()).max(self.lowpass.abs());
        output
    }
}

/// Schroeder allpass diffuser: flat magnitude response, smeared phase.
#[derive(Debug, Clone)]
struct Allpass {
    buffer: Vec<f32>,
    pos: usize,
}

impl Allpass {
    fn new(len: usize) -> Allpass {
        Allpass {
            buffer: vec![0.0; len],
            pos: 0,
        }
    }

    fn reset(&mut self) {
        self.buffer.fill(0.0);
        self.pos = 0;
    }

    fn process(&mut self, input: f32, state_peak: &mut f32) -> f32 {
        let delayed = self.buffer[self.pos];
        let written = flush(input + delayed * ALLPASS_FEEDBACK);
        self.buffer[self.pos] = written;
        self.pos = (self.pos + 1) % self.buffer.len();
        *state_peak = state_peak.max(written.abs());
        delayed - input
    }
}

fn flush(x: f32) -> f32 {
    if x.abs() < FLUSH_BELOW {
        0.0
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 48_000;
    const RATE_USIZE: usize = RATE as usize;

    fn run(reverb: &mut Reverb, input: &[f32], wet: f32) -> Vec<f32> {
        let mut out = vec![0.0; input.len() * 2];
        for (inp, outp) in input.chunks(128).zip(out.chunks_mut(256)) {
            reverb.process_add(inp, wet, outp);
        }
        out
    }

    fn energy(stereo: &[f32]) -> f64 {
        stereo.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
    }

    fn impulse(frames: usize) -> Vec<f32> {
        let mut x = vec![0.0; frames];
        x[0] = 1.0;
        x
    }

    /// Deterministic full-scale white noise in -1..1 (xorshift32).
    fn noise(frames: usize, mut seed: u32) -> Vec<f32> {
        (0..frames)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as f32 / u32::MAX as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn frames(stereo: &[f32], from_s: f32, to_s: f32) -> &[f32] {
        let at = |s: f32| (s * RATE as f32) as usize * 2;
        &stereo[at(from_s)..at(to_s)]
    }

    #[test]
    fn impulse_produces_a_tail_that_decays_over_time() {
        let mut reverb = Reverb::new(RATE);
        let out = run(&mut reverb, &impulse(RATE_USIZE), 1.0);
        let early = energy(frames(&out, 0.0, 0.5));
        let late = energy(frames(&out, 0.5, 1.0));
        assert!(early > 0.0);
        assert!(late < early / 100.0, "early {early} late {late}");
    }

    #[test]
    fn impulse_tail_lasts_longer_than_one_hundred_milliseconds() {
        let mut reverb = Reverb::new(RATE);
        let out = run(&mut reverb, &impulse(RATE_USIZE), 1.0);
        let peak_after_150ms = frames(&out, 0.15, 0.3)
            .iter()
            .fold(0.0_f32, |m, x| m.max(x.abs()));
        assert!(peak_after_150ms > 1e-4, "got {peak_after_150ms}");
        assert!(!reverb.is_silent());
    }

    #[test]
    fn silence_in_gives_silence_out_once_the_tail_has_decayed() {
        let mut reverb = Reverb::new(RATE);
        run(&mut reverb, &noise(RATE_USIZE / 2, 7), 1.0);
        assert!(!reverb.is_silent());
        run(&mut reverb, &vec![0.0; 5 * RATE_USIZE], 1.0);
        assert!(reverb.is_silent());
        let out = run(&mut reverb, &vec![0.0; RATE_USIZE], 1.0);
        assert!(out.iter().all(|x| x.abs() < SILENCE_THRESHOLD));
    }

    #[test]
    fn full_scale_noise_for_ten_seconds_stays_finite_and_bounded() {
        for (room, damping) in [(0.5, 0.5), (1.0, 0.0)] {
            let mut reverb = Reverb::new(RATE);
            reverb.set_room_size(room);
            reverb.set_damping(damping);
            let out = run(&mut reverb, &noise(10 * RATE_USIZE, 12_345), 1.0);
            let peak = out.iter().fold(0.0_f32, |m, x| m.max(x.abs()));
            assert!(out.iter().all(|x| x.is_finite()));
            assert!(peak < 4.0, "room {room}: peak {peak}");
            assert!(peak > 0.01, "room {room}: suspiciously quiet {peak}");
        }
    }

    #[test]
    fn left_and_right_are_decorrelated() {
        let mut reverb = Reverb::new(RATE);
        let out = run(&mut reverb, &noise(2 * RATE_USIZE, 99), 1.0);
        let (mut lr, mut ll, mut rr) = (0.0_f64, 0.0_f64, 0.0_f64);
        for frame in out.chunks_exact(2) {
            let (l, r) = (f64::from(frame[0]), f64::from(frame[1]));
            lr += l * r;
            ll += l * l;
            rr += r * r;
        }
        let correlation = lr / (ll * rr).sqrt();
        assert!(correlation.abs() < 0.5, "correlation {correlation}");
    }

    #[test]
    fn wet_signal_is_added_to_the_buffer_and_scaled_by_wet_gain() {
        let input = noise(4_800, 3);
        let reference = run(&mut Reverb::new(RATE), &input, 1.0);
        let mut reverb = Reverb::new(RATE);
        let mut out = vec![0.25; input.len() * 2];
        reverb.process_add(&input, 0.5, &mut out);
        for (got, wet) in out.iter().zip(&reference) {
            assert!((got - (0.25 + 0.5 * wet)).abs() < 1e-6);
        }
    }

    #[test]
    fn mismatched_lengths_process_the_shorter_and_do_not_panic() {
        let mut reverb = Reverb::new(RATE);
        let mut short_out = vec![0.0; 10];
        reverb.process_add(&[1.0; 100], 1.0, &mut short_out);
        let mut long_out = vec![0.0; 1_000];
        reverb.process_add(&[0.5; 3], 1.0, &mut long_out);
        let mut odd_out = vec![0.0; 7];
        reverb.process_add(&[0.5; 3], 1.0, &mut odd_out);
        assert_eq!(odd_out[6], 0.0);
        reverb.process_add(&[], 1.0, &mut []);
    }

    #[test]
    fn fresh_and_reset_reverbs_are_silent() {
        let mut reverb = Reverb::new(RATE);
        assert!(reverb.is_silent());
        run(&mut reverb, &impulse(100), 1.0);
        assert!(!reverb.is_silent());
        reverb.reset();
        assert!(reverb.is_silent());
        let out = run(&mut reverb, &vec![0.0; RATE_USIZE], 1.0);
        assert!(out.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn non_finite_input_is_treated_as_silence() {
        let mut reverb = Reverb::new(RATE);
        let input = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0];
        let out = run(&mut reverb, &input, f32::NAN);
        assert!(out.iter().all(|&x| x == 0.0));
        assert!(reverb.is_silent());
    }

    #[test]
    fn larger_room_rings_longer() {
        let tail_energy = |room: f32| {
            let mut reverb = Reverb::new(RATE);
            reverb.set_room_size(room);
            let out = run(&mut reverb, &impulse(RATE_USIZE), 1.0);
            energy(frames(&out, 0.5, 1.0))
        };
        assert!(tail_energy(1.0) > 10.0 * tail_energy(0.2));
        assert_eq!(tail_energy(7.0), tail_energy(1.0), "room is clamped to 1");
    }

    #[test]
    fn more_damping_darkens_the_tail() {
        // A first difference emphasises high frequencies.
        let high_energy = |damping: f32| {
            let mut reverb = Reverb::new(RATE);
            reverb.set_damping(damping);
            let out = run(&mut reverb, &impulse(RATE_USIZE), 1.0);
            let left: Vec<f32> = out.iter().step_by(2).copied().collect();
            left.windows(2)
                .map(|w| f64::from(w[1] - w[0]).powi(2))
                .sum::<f64>()
        };
        assert!(high_energy(1.0) < high_energy(0.0));
    }
}
