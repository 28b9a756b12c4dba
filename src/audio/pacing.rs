//! When the device took its last period, smoothed: the instant every render is stamped
//! from.
//!
//! The audio thread learns the device's clock from when its blocking write returns.
//! That return comes when the device has freed a period, plus however long the kernel
//! took to wake the thread: on a loaded machine several milliseconds, never less than
//! nothing. Stamping renders with the raw wake-up hands that scheduling jitter to every
//! jitter buffer (whose delay is measured against the stamps): a voice whose packets
//! arrive near a burst's edge is compressed on a late wake-up and runs dry on the next,
//! punctual one (a WHIP duet through JACK's 1024-frame device lost parts of a voice
//! every 320 ms on a busy machine this way).
//!
//! So the stamp follows the device's own pace: one device period after the last stamp.
//! A wake-up earlier than that is the device running faster than predicted (or filling
//! its buffer at start) and is taken as it is; a later one only moves the stamp by a
//! small fraction, which tracks a device clock slower than the system's without
//! passing on the wake-up jitter. A wake-up far later than any jitter (the device
//! stalled or was restarted) is taken as it is too.

use std::time::Duration;

use crate::engine::SAMPLE_RATE_HZ;

/// The share of a late wake-up that moves the stamp (tracks a slow device clock:
/// 200 ppm slow leaves the stamp 0.2 ms early at 1024-frame periods).
const LATE_GAIN: f64 = 0.02;

/// A wake-up this much later than predicted is not jitter: the device stalled or was
/// restarted, and the stamp starts again from the wake-up.
const RESTART_AFTER: Duration = Duration::from_millis(50);

/// The smoothed device timeline.
#[derive(Debug)]
pub struct DevicePacing {
    period: Duration,
    last: Option<Duration>,
}

impl DevicePacing {
    /// Pacing for a device that takes `period_frames` per write.
    pub fn new(period_frames: usize) -> DevicePacing {
        DevicePacing {
            period: Duration::from_nanos(
                period_frames as u64 * 1_000_000_000 / u64::from(SAMPLE_RATE_HZ),
            ),
            last: None,
        }
    }

    /// The stamp for a burst whose thread woke at `woke` (on the audio clock).
    pub fn stamp(&mut self, woke: Duration) -> Duration {
        let stamp = match self.last {
            Some(last) => {
                let predicted = last + self.period;
                if woke <= predicted || woke > predicted + RESTART_AFTER {
                    woke
                } else {
                    predicted + (woke - predicted).mul_f64(LATE_GAIN)
                }
            }
            None => woke,
        };
        self.last = Some(stamp);
        stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD_US: u64 = 21_333;

    fn us(d: Duration) -> i64 {
        d.as_micros() as i64
    }

    #[test]
    fn late_wake_ups_do_not_move_the_stamps() {
        let mut pacing = DevicePacing::new(1024);
        let mut stamps = Vec::new();
        for n in 0..40u64 {
            // Punctual, then late by up to 8 ms on every other period.
            let late = if n % 2 == 1 { 8_000 } else { 0 };
            stamps.push(pacing.stamp(Duration::from_micros(n * PERIOD_US + late)));
        }
        for pair in stamps.windows(2) {
            let step = us(pair[1] - pair[0]);
            assert!(
                (PERIOD_US as i64 - 200..=PERIOD_US as i64 + 200).contains(&step),
                "steps one period ({PERIOD_US} µs) ± 0.2 ms, stepped {step} µs"
            );
        }
    }

    #[test]
    fn an_early_wake_up_is_taken_and_a_slow_device_is_followed() {
        let mut pacing = DevicePacing::new(1024);
        pacing.stamp(Duration::from_millis(100));
        // The buffer filling at start: writes return at once.
        assert_eq!(
            pacing.stamp(Duration::from_millis(101)),
            Duration::from_millis(101)
        );
        // A device 1000 ppm slower than the system clock, woken punctually.
        let slow = Duration::from_nanos(PERIOD_US * 1_001_000);
        let start = Duration::from_millis(101);
        let mut last = Duration::ZERO;
        for n in 1..=2000u32 {
            last = pacing.stamp(start + slow * n);
        }
        let behind = us(start + slow * 2000) - us(last);
        assert!(
            (0..=1_500).contains(&behind),
            "follows a slow device within 1.5 ms, {behind} µs behind"
        );
    }

    #[test]
    fn a_stall_restarts_the_timeline() {
        let mut pacing = DevicePacing::new(1024);
        pacing.stamp(Duration::from_millis(0));
        let woke = Duration::from_millis(400);
        assert_eq!(pacing.stamp(woke), woke);
    }
}
