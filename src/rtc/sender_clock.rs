//! A phone's uplink on its own wall clock: how late its fastest packet reaches the
//! box after the phone handed it to its RTP sender (`docs/sync.md`).
//!
//! A phone's RTCP sender reports map its RTP timestamps to its wall clock (the NTP
//! time of the report). For Chromium's audio that mapping is the capture time its
//! audio carries: for a 20 ms frame, when its last 10 ms were captured, about when the
//! frame is handed to the sender (measured: a test track whose stamps moved 10 ms moved
//! the reading 10.6 ms; Firefox's and Safari's need a real phone to confirm).
//! So for every packet, `arrival − handed_over(ts)` is the network's one-way time plus
//! the difference between the box's clock and the phone's wall clock. The box cannot
//! see that difference; the page measures it (`pong` against its wall clock) and the
//! room subtracts it.
//!
//! The reports cut the stream into spans. For each span whose two reports agree (their
//! mappings within [`AGREE_MS`]):
//!
//! ```text
//! span lateness = min over its packets (arrival − ts / 48 kHz)    the fastest packet
//!               − its closing report's (ntp − rtp / 48 kHz)       the sender's mapping
//! ```
//!
//! and the lateness is the median of the spans of the last one or two [`WINDOW`]s, on
//! one unwrapped RTP timeline, so the timestamps' random origin cancels. The network
//! only ever delays a packet, so a span's fastest is the network's own time.
//!
//! A report's mapping is no measurement of the network: Chromium takes it from the
//! capture times its audio carries, the same for every report of a steady stream. But
//! the stream's timestamps may step against its capture times (seen at a stream's
//! start: 55 to 255 ms, between its first and second report), and now and then one
//! report is off (a test singer whose audio reached its sender in bursts). The packets
//! and the reports must then be paired span by span: the fastest packet of the last
//! 20 s against the mapping of its last reports had read the in-ear test singer's
//! one-way time 35 to 55 ms short for 3 to 10 s after such a step (and out of range,
//! so not at all, after one of 144 ms), and the speakers held the backing that much
//! too briefly. A span across a step, or next to a report that is off, has reports
//! that disagree and does not count.
//!
//! Pure: the uplink task passes each packet and report with the box's clock.

use std::time::Duration;

/// How long the spans' latenesses are kept (between one and two of these): long
/// enough to hold several spans (libwebrtc reports every 1 to 5 s for audio), each with
/// a packet that found the network quiet, short enough to follow a phone that moved
/// away.
pub const WINDOW: Duration = Duration::from_secs(10);

/// RTP clock of Opus, per ms.
const RTP_PER_MS: f64 = 48.0;

/// Spans kept per window: libwebrtc reports every 1 to 5 s; a sender that reports
/// more often (a flood of RTCP) keeps only its latest this many.
const SPANS_PER_WINDOW: usize = 16;

/// A span counts when the mappings of the reports on its two ends are this close,
/// ms: a steady Chromium stream's moved by under half a millisecond here (to confirm
/// on real phones); the steps seen were tens of ms.
pub const AGREE_MS: f64 = 5.0;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_S: u64 = 2_208_988_800;

/// The values of the last one or two windows, the latest [`SPANS_PER_WINDOW`] of
/// each, and their median.
#[derive(Clone, Debug, Default)]
struct WindowMedian {
    current: [f64; SPANS_PER_WINDOW],
    previous: [f64; SPANS_PER_WINDOW],
    previous_len: usize,
    /// Values pushed into the current window (the next one overwrites `count % N`).
    count: usize,
    since: Duration,
}

impl WindowMedian {
    fn push(&mut self, value: f64, now: Duration) {
        if now.saturating_sub(self.since) >= WINDOW {
            self.previous = self.current;
            self.previous_len = self.current_len();
            self.count = 0;
            self.since = now;
        }
        self.current[self.count % SPANS_PER_WINDOW] = value;
        self.count += 1;
    }

    /// How many of `current` hold this window's values.
    fn current_len(&self) -> usize {
        self.count.min(SPANS_PER_WINDOW)
    }

    /// The median (of an even count, the lower middle: the faster).
    fn get(&self) -> Option<f64> {
        let mut all = [0.0f64; 2 * SPANS_PER_WINDOW];
        let current = self.current_len();
        let n = current + self.previous_len;
        all[..current].copy_from_slice(&self.current[..current]);
        all[current..n].copy_from_slice(&self.previous[..self.previous_len]);
        let all = &mut all[..n];
        all.sort_unstable_by(f64::total_cmp);
        (n > 0).then(|| all[(n - 1) / 2])
    }
}

/// One uplink's sender clock.
#[derive(Clone, Debug, Default)]
pub struct SenderClock {
    /// The stream (a new SSRC starts over).
    ssrc: Option<u32>,
    /// The last packet's timestamp and where it sits on the unwrapped timeline.
    last: Option<(u32, i64)>,
    /// The fastest `arrival − ts` since the last report, ms.
    fastest: Option<f64>,
    /// The last report's `ntp − rtp`, ms.
    mapping: Option<f64>,
    /// The lateness of each span whose reports agreed, ms.
    spans: WindowMedian,
}

impl SenderClock {
    /// Nothing seen yet.
    pub fn new() -> SenderClock {
        SenderClock::default()
    }

    /// A packet of `ssrc` with RTP timestamp `ts` arrived at `at` (the box's clock).
    pub fn packet(&mut self, ssrc: u32, ts: u32, at: Duration) {
        if self.ssrc != Some(ssrc) {
            *self = SenderClock {
                ssrc: Some(ssrc),
                ..SenderClock::default()
            };
        }
        let unwrapped = self.unwrap(ts);
        self.last = Some((ts, unwrapped));
        let late = at.as_secs_f64() * 1000.0 - unwrapped as f64 / RTP_PER_MS;
        self.fastest = Some(self.fastest.map_or(late, |f| f.min(late)));
    }

    /// A sender report of `ssrc`: RTP timestamp `rtp` was handed over at `ntp` (NTP
    /// 32.32 fixed point) on the phone's wall clock; `at` is the box's clock now. It
    /// closes a span. Reports of another stream, or before its first packet, are
    /// ignored.
    pub fn report(&mut self, ssrc: u32, ntp: u64, rtp: u32, at: Duration) {
        if self.ssrc != Some(ssrc) || self.last.is_none() {
            return;
        }
        let mapping = unix_ms(ntp) - self.unwrap(rtp) as f64 / RTP_PER_MS;
        if let (Some(fastest), Some(opened)) = (self.fastest.take(), self.mapping) {
            if (mapping - opened).abs() <= AGREE_MS {
                self.spans.push(fastest - mapping, at);
            }
        }
        self.mapping = Some(mapping);
    }

    /// `one-way − (box clock − phone's wall clock)`, ms: the median span of the last
    /// window or two; `None` before a span whose reports agreed.
    pub fn lateness_ms(&self) -> Option<f64> {
        self.spans.get()
    }

    /// `ts` on the timeline of the packets so far: the nearest of its wraps to the last.
    fn unwrap(&self, ts: u32) -> i64 {
        match self.last {
            None => i64::from(ts),
            Some((last, at)) => at + i64::from(ts.wrapping_sub(last) as i32),
        }
    }
}

/// NTP 32.32 time as ms since the Unix epoch.
fn unix_ms(ntp: u64) -> f64 {
    let seconds = (ntp >> 32) as f64 - NTP_UNIX_S as f64;
    let fraction = (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0;
    (seconds + fraction) * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NTP time of `unix_ms` ms since 1970.
    fn ntp(unix_ms: f64) -> u64 {
        let s = unix_ms / 1000.0 + NTP_UNIX_S as f64;
        ((s.floor() as u64) << 32) | ((s.fract() * 4_294_967_296.0) as u64)
    }

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1000.0)
    }

    /// A phone whose wall clock reads `wall` when the box's reads 0, sending a 20 ms
    /// frame every 20 ms from RTP timestamp `ts0`, each handed over `handed[k]` ms late
    /// and on the network `net[k]` ms; a report after every 50th frame.
    fn run(
        ts0: u32,
        wall: f64,
        handed: impl Fn(usize) -> f64,
        net: impl Fn(usize) -> f64,
    ) -> SenderClock {
        let mut clock = SenderClock::new();
        for k in 0..500 {
            let due = 1000.0 + 20.0 * k as f64;
            let sent = due + handed(k);
            let ts = ts0.wrapping_add(960 * k as u32);
            clock.packet(7, ts, ms(sent + net(k)));
            if k % 50 == 49 {
                // The report extrapolates from the last hand-over, 3 ms later.
                let rtp = ts.wrapping_add(3 * 48);
                clock.report(7, ntp(wall + sent + 3.0), rtp, ms(sent + 3.0 + net(k)));
            }
        }
        clock
    }

    #[test]
    fn the_lateness_is_the_fastest_one_way_less_the_clocks_offset() {
        let wall = 1.78e12;
        // 30 ms one way, a packet now and then 0 to 40 ms later.
        let clock = run(1234, wall, |_| 0.0, |k| 30.0 + ((k * 37) % 41) as f64);
        let lateness = clock.lateness_ms().expect("packets and reports");
        // The room adds the page's offset (box − wall = −wall) back.
        assert!((lateness + wall - 30.0).abs() < 0.01, "{}", lateness + wall);
    }

    #[test]
    fn the_timestamps_may_wrap() {
        let wall = 1.7e12;
        let clock = run(u32::MAX - 960 * 100, wall, |_| 0.0, |_| 12.5);
        let one_way = clock.lateness_ms().expect("measured") + wall;
        assert!((one_way - 12.5).abs() < 0.01, "{one_way}");
    }

    #[test]
    fn a_late_hand_over_does_not_hide_the_network() {
        // The phone hands frames over 0 to 4 ms late; the reports' mappings move with
        // them: the result stays within the hand-over jitter of the network's 80 ms.
        let wall = 1.7e12;
        let clock = run(5, wall, |k| ((k * 7) % 5) as f64, |_| 80.0);
        let one_way = clock.lateness_ms().expect("measured") + wall;
        assert!((one_way - 80.0).abs() <= 4.0, "{one_way}");
    }

    #[test]
    fn one_report_off_the_sender_mapping_does_not_move_the_lateness() {
        // Every report maps as the stream's capture times do, but one reads 30 ms early
        // (a report extrapolated from a stale capture time after a burst), and one
        // 12 ms late.
        let wall = 1.7e12;
        let mut clock = SenderClock::new();
        for k in 0..1000u32 {
            let sent = 1000.0 + 20.0 * f64::from(k);
            let ts = 960 * k;
            clock.packet(7, ts, ms(sent + 40.0));
            if k % 100 == 99 {
                let off = match k {
                    499 => -30.0,
                    699 => 12.0,
                    _ => 0.0,
                };
                clock.report(7, ntp(wall + sent + off), ts, ms(sent + 40.0));
                if k == 99 {
                    assert_eq!(clock.lateness_ms(), None, "one report opens a span");
                    continue;
                }
                let one_way = clock.lateness_ms().expect("measured") + wall;
                assert!((one_way - 40.0).abs() < 0.01, "report {k}: {one_way}");
            }
        }
    }

    /// A phone whose stream's timestamps step by `step` ms against its capture times
    /// (both its packets' and its reports') after frame 230, with a report every
    /// `every` frames: the one-way time (30 ms) at every report, once measured.
    fn stepped(step: f64, every: u32) -> Vec<(u32, Option<f64>)> {
        let wall = 1.7e12;
        let mut clock = SenderClock::new();
        let mut seen = Vec::new();
        for k in 0..1500u32 {
            let sent = 1000.0 + 20.0 * f64::from(k);
            // The timestamps a step later fall behind the capture times by it.
            let behind = if k > 230 { step } else { 0.0 };
            let ts = (960.0 * f64::from(k) - 48.0 * behind) as u32;
            clock.packet(7, ts, ms(sent + 30.0));
            if k % every == every - 1 {
                clock.report(7, ntp(wall + sent), ts, ms(sent + 30.0));
                seen.push((k, clock.lateness_ms().map(|l| l + wall)));
            }
        }
        seen
    }

    #[test]
    fn a_step_of_the_senders_timestamps_does_not_move_the_lateness() {
        // The in-ear test singer's stream stepped 55 to 255 ms between its first two
        // reports; the fastest packet of 20 s against the latest reports read its
        // one-way time short (or out of range) for seconds.
        for (step, every) in [(55.0, 150), (-55.0, 150), (255.0, 230), (3.0, 50)] {
            let seen = stepped(step, every);
            let measured: Vec<_> = seen.iter().filter_map(|&(k, l)| Some((k, l?))).collect();
            assert!(
                measured.len() + 2 >= seen.len(),
                "measured from the second report on, but a span across the step: {seen:?}"
            );
            for (k, one_way) in measured {
                assert!(
                    (one_way - 30.0).abs() < 0.01,
                    "step {step} ms: report {k}: {one_way}"
                );
            }
        }
    }

    #[test]
    fn a_flood_of_reports_keeps_only_the_latest_of_each_window() {
        let wall = 1.7e12;
        let mut clock = SenderClock::new();
        // A thousand reports 50 ms early, a packet between each two, then the sender's
        // own mapping, as often, all within one window.
        for k in 0..1000 {
            clock.packet(7, 0, ms(25.0 + f64::from(k) * 0.001));
            clock.report(7, ntp(wall - 50.0), 0, ms(25.0 + f64::from(k) * 0.001));
        }
        for k in 0..=SPANS_PER_WINDOW as u32 {
            clock.packet(7, 0, ms(26.0 + f64::from(k) * 0.001));
            clock.report(7, ntp(wall), 0, ms(26.0 + f64::from(k) * 0.001));
        }
        let one_way = clock.lateness_ms().expect("measured") + wall;
        assert!((one_way - 26.0).abs() < 0.02, "{one_way}");
    }

    #[test]
    fn nothing_before_two_reports_and_a_new_stream_starts_over() {
        let mut clock = SenderClock::new();
        clock.report(7, ntp(1.0e12), 0, ms(0.0));
        clock.packet(7, 0, ms(10.0));
        assert_eq!(clock.lateness_ms(), None, "no report after a packet yet");
        clock.report(7, ntp(1.0e12), 0, ms(11.0));
        assert_eq!(clock.lateness_ms(), None, "no span closed yet");
        clock.packet(7, 960, ms(30.0));
        clock.report(7, ntp(1.0e12), 0, ms(31.0));
        assert!(clock.lateness_ms().is_some());
        clock.report(8, ntp(2.0e12), 0, ms(32.0));
        assert!(
            clock.lateness_ms().is_some(),
            "another stream's report is ignored"
        );
        clock.packet(8, 99, ms(33.0));
        assert_eq!(clock.lateness_ms(), None, "a new SSRC starts over");
    }

    #[test]
    fn an_old_fast_packet_is_forgotten_after_two_windows() {
        let mut clock = SenderClock::new();
        let wall = 1.0e12;
        clock.packet(1, 0, ms(5.0));
        clock.report(1, ntp(wall), 0, ms(5.0));
        clock.packet(1, 960, ms(25.0));
        clock.report(1, ntp(wall + 20.0), 960, ms(25.0));
        let fast = clock.lateness_ms().expect("measured") + wall;
        assert!((fast - 5.0).abs() < 0.01, "{fast}");
        // The path gets slower: 50 ms, for more than two windows.
        let mut t = 0.0;
        for k in 1..1500u32 {
            t = 20.0 * f64::from(k);
            clock.packet(1, 960 * k, ms(t + 50.0));
            if k % 50 == 0 {
                clock.report(1, ntp(wall + t), 960 * k, ms(t + 50.0));
            }
        }
        assert!(t > 2.0 * WINDOW.as_secs_f64() * 1000.0);
        let slow = clock.lateness_ms().expect("measured") + wall;
        assert!((slow - 50.0).abs() < 0.01, "{slow}");
    }
}
