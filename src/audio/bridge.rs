//! Bridges the engine's period and the period the output device granted.
//!
//! The engine renders the configured period (its jitter buffers, limiter and encoders
//! are sized for it at start); a device may grant another one: dmix's default is 1024
//! frames, the PulseAudio and PipeWire ALSA plugins of desktop installs pick their
//! own. The audio thread then renders as many engine periods as it takes to fill one
//! device period, writes that, and keeps the rest for the next write. When the two
//! periods are equal this is a pass-through: one render, one write, nothing kept.
//!
//! Costs at most one engine period of extra latency (the rest kept between writes).
//! Invariant: fixed memory (one device period plus one engine period, stereo),
//! allocated in [`PeriodBridge::new`]; nothing allocates after that.

/// Interleaved stereo.
const CHANNELS: usize = 2;

/// A fixed buffer between engine periods and device periods.
pub struct PeriodBridge {
    engine_frames: usize,
    device_frames: usize,
    buf: Vec<f32>,
    /// Samples (not frames) rendered and not yet written.
    filled: usize,
}

impl PeriodBridge {
    /// A bridge from `engine_frames` per render to `device_frames` per write (both > 0).
    pub fn new(engine_frames: usize, device_frames: usize) -> PeriodBridge {
        assert!(
            engine_frames > 0 && device_frames > 0,
            "periods are never empty"
        );
        PeriodBridge {
            engine_frames,
            device_frames,
            buf: vec![0.0; CHANNELS * (engine_frames + device_frames)],
            filled: 0,
        }
    }

    /// Whether another engine period must be rendered before the next write.
    pub fn needs_render(&self) -> bool {
        self.filled < CHANNELS * self.device_frames
    }

    /// Where the next engine period goes (exactly one engine period, stereo); call
    /// [`PeriodBridge::rendered`] after filling it.
    pub fn render_slot(&mut self) -> &mut [f32] {
        let n = CHANNELS * self.engine_frames;
        &mut self.buf[self.filled..self.filled + n]
    }

    /// Marks the slot from [`PeriodBridge::render_slot`] as filled.
    pub fn rendered(&mut self) {
        self.filled += CHANNELS * self.engine_frames;
    }

    /// The next device period (once [`PeriodBridge::needs_render`] is false).
    pub fn device_period(&self) -> &[f32] {
        &self.buf[..CHANNELS * self.device_frames]
    }

    /// Drops the device period just written and moves the rest to the front.
    pub fn written(&mut self) {
        let n = CHANNELS * self.device_frames;
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Frames rendered but not yet written (the latency the bridge adds now).
    pub fn held_frames(&self) -> usize {
        self.filled / CHANNELS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `writes` device periods through a bridge whose engine writes a counting
    /// ramp; returns the samples the device got and the most frames ever held.
    fn run(engine: usize, device: usize, writes: usize) -> (Vec<f32>, usize) {
        let mut bridge = PeriodBridge::new(engine, device);
        let mut next = 0.0f32;
        let mut out = Vec::new();
        let mut held_max = 0;
        for _ in 0..writes {
            while bridge.needs_render() {
                for s in bridge.render_slot().chunks_exact_mut(2) {
                    s[0] = next;
                    s[1] = -next;
                    next += 1.0;
                }
                bridge.rendered();
            }
            assert_eq!(bridge.device_period().len(), 2 * device);
            out.extend_from_slice(bridge.device_period());
            bridge.written();
            held_max = held_max.max(bridge.held_frames());
        }
        (out, held_max)
    }

    #[test]
    fn every_frame_comes_out_once_and_in_order_whatever_the_periods() {
        for (engine, device) in [(240, 1024), (240, 240), (480, 120), (240, 1000), (960, 941)] {
            let (out, held_max) = run(engine, device, 50);
            assert_eq!(out.len(), 2 * device * 50);
            for (k, frame) in out.chunks_exact(2).enumerate() {
                assert_eq!(
                    frame,
                    [k as f32, -(k as f32)],
                    "{engine}->{device} frame {k}"
                );
            }
            assert!(
                held_max < engine,
                "{engine}->{device} held {held_max} frames"
            );
        }
    }

    #[test]
    fn equal_periods_pass_straight_through() {
        let (_, held_max) = run(240, 240, 10);
        assert_eq!(held_max, 0);
    }
}
