//! A timer-paced output with no device: the loop runs at real-time speed and the audio
//! goes nowhere (or to a file, see `wav.rs`).

use std::time::{Duration, Instant};

use crate::audio::{Sink, SinkError};
use crate::engine::SAMPLE_RATE_HZ;

/// Paces writes to real time by sleeping until each period's deadline.
pub struct NullSink {
    period_frames: usize,
    next: Option<Instant>,
    late: u64,
}

impl NullSink {
    /// A null output with `period_frames` per write.
    pub fn new(period_frames: usize) -> NullSink {
        NullSink {
            period_frames,
            next: None,
            late: 0,
        }
    }

    /// Sleeps until the next period is due, like a device whose buffer is full.
    #[expect(clippy::disallowed_methods, reason = "this sink is the clock")]
    pub(crate) fn pace(&mut self) {
        let period =
            Duration::from_nanos(self.period_frames as u64 * 1_000_000_000 / SAMPLE_RATE_HZ as u64);
        let now = Instant::now();
        let next = *self.next.get_or_insert(now);
        if next > now {
            std::thread::sleep(next - now);
            self.next = Some(next + period);
        } else if now - next > 4 * period {
            // Fell far behind (a stall): restart the timeline, as a device would after
            // an underrun, and count it.
            self.late += 1;
            self.next = Some(now + period);
        } else {
            self.next = Some(next + period);
        }
    }
}

impl Sink for NullSink {
    fn period_frames(&self) -> usize {
        self.period_frames
    }

    fn write(&mut self, _stereo: &[f32]) -> Result<(), SinkError> {
        self.pace();
        Ok(())
    }

    fn xruns(&self) -> u64 {
        self.late
    }

    fn describe(&self) -> String {
        "null".into()
    }
}
