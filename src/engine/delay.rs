//! A stereo delay line of fixed capacity, for the venue bus in in-ear mode: the backing
//! waits for the slowest singer's voice, and each faster voice for the difference
//! (`docs/sync.md`).
//!
//! Allocated once; [`Delay::process`] never allocates. A change of delay crossfades
//! from the old read position to the new one over the period it happens in, so a
//! delay that moves by tens of milliseconds does not click.

/// Interleaved stereo samples per frame.
const CHANNELS: usize = 2;

/// A delay of up to `capacity` frames.
#[derive(Clone, Debug)]
pub struct Delay {
    /// The last `capacity + 1` frames written (interleaved), as a ring.
    ring: Vec<f32>,
    /// Where the next frame is written, in frames.
    write: usize,
    /// The delay now and the one the last period used, frames.
    frames: u32,
    before: u32,
}

impl Delay {
    /// A silent line that can hold up to `capacity` frames of delay.
    pub fn new(capacity: u32) -> Delay {
        Delay {
            ring: vec![0.0; CHANNELS * (capacity as usize + 1)],
            write: 0,
            frames: 0,
            before: 0,
        }
    }

    /// The most it delays, frames.
    pub fn capacity(&self) -> u32 {
        (self.ring.len() / CHANNELS - 1) as u32
    }

    /// The delay from the next period on (capped at the capacity), frames.
    pub fn set(&mut self, frames: u32) {
        self.frames = frames.min(self.capacity());
    }

    /// The delay in effect, frames.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Forgets what it holds (a new singer in a seat): silence comes out first.
    pub fn clear(&mut self) {
        self.ring.fill(0.0);
        self.before = self.frames;
    }

    /// Takes one period in (interleaved stereo) and puts the same period, delayed, in
    /// place. With no delay now or before, `audio` is left as it is.
    pub fn process(&mut self, audio: &mut [f32]) {
        let len = self.ring.len() / CHANNELS;
        let n = audio.len() / CHANNELS;
        if self.frames == 0 && self.before == 0 {
            // Keep the ring current, so a delay set later starts from real audio.
            for frame in audio.chunks_exact(CHANNELS) {
                self.put(frame, len);
            }
            return;
        }
        let (from, to) = (self.before as usize, self.frames as usize);
        for k in 0..n {
            let input = [audio[CHANNELS * k], audio[CHANNELS * k + 1]];
            self.put(&input, len);
            // The frame just written is `write - 1`; `d` frames back is the delayed one.
            let at = |d: usize| (self.write + len - 1 - d) % len;
            let (old, new) = (at(from), at(to));
            let w = if from == to {
                1.0
            } else {
                (k + 1) as f32 / n as f32
            };
            for c in 0..CHANNELS {
                audio[CHANNELS * k + c] =
                    self.ring[CHANNELS * old + c] * (1.0 - w) + self.ring[CHANNELS * new + c] * w;
            }
        }
        self.before = self.frames;
    }

    fn put(&mut self, frame: &[f32], len: usize) {
        self.ring[CHANNELS * self.write..CHANNELS * self.write + CHANNELS].copy_from_slice(frame);
        self.write = (self.write + 1) % len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ramp: frame i is (i, -i).
    fn ramp(from: usize, n: usize) -> Vec<f32> {
        (from..from + n)
            .flat_map(|i| [i as f32, -(i as f32)])
            .collect()
    }

    #[test]
    fn no_delay_passes_audio_through_untouched() {
        let mut d = Delay::new(100);
        let mut a = ramp(1, 10);
        d.process(&mut a);
        assert_eq!(a, ramp(1, 10));
    }

    #[test]
    fn a_delay_plays_each_frame_that_many_frames_later() {
        let mut d = Delay::new(100);
        d.set(25);
        // The change from no delay fades over a first (silent) period.
        let mut first = vec![0.0; 20];
        d.process(&mut first);
        let mut out = Vec::new();
        for p in 0..10 {
            let mut a = ramp(1 + 10 * p, 10);
            d.process(&mut a);
            out.extend(a);
        }
        // 25 frames of the silence before it; then frame i comes out as i - 25.
        assert!(out[..50].iter().all(|&s| s == 0.0));
        assert_eq!(&out[50..], &ramp(1, 75)[..]);
    }

    #[test]
    fn a_delay_set_later_starts_from_the_audio_already_through() {
        let mut d = Delay::new(100);
        let mut a = ramp(1, 40);
        d.process(&mut a);
        d.set(30);
        let mut fade = ramp(41, 10);
        d.process(&mut fade);
        let mut b = ramp(51, 10);
        d.process(&mut b);
        assert_eq!(b, ramp(21, 10), "frame 51 comes out as frame 21");
    }

    #[test]
    fn a_changed_delay_crossfades_over_one_period_then_holds() {
        let mut d = Delay::new(100);
        d.set(10);
        let mut out = Vec::new();
        for p in 0..5 {
            let mut a = ramp(1 + 20 * p, 20);
            d.process(&mut a);
            out.extend(a);
        }
        d.set(30);
        let mut fade = ramp(101, 20);
        d.process(&mut fade);
        // From 10 behind to 30 behind: each frame a mix of the two, the weight moving.
        for k in 0..20 {
            let (old, new) = ((101 + k - 10) as f32, (101 + k - 30) as f32);
            let w = (k + 1) as f32 / 20.0;
            let want = old * (1.0 - w) + new * w;
            assert!((fade[2 * k] - want).abs() < 1e-3, "frame {k}");
        }
        let mut after = ramp(121, 20);
        d.process(&mut after);
        assert_eq!(after, ramp(91, 20), "then exactly 30 behind");
        assert_eq!(d.frames(), 30);
    }

    #[test]
    fn the_delay_is_capped_at_the_capacity() {
        let mut d = Delay::new(50);
        d.set(1_000);
        assert_eq!(d.frames(), 50);
        let mut out = Vec::new();
        for p in 0..10 {
            let mut a = ramp(1 + 10 * p, 10);
            d.process(&mut a);
            out.extend(a);
        }
        assert_eq!(&out[2 * 60..], &ramp(11, 40)[..], "50 frames behind");
    }
}
