//! Playout sync: every phone that plays the mix plays each backing frame when the
//! speakers do (`docs/sync.md`).
//!
//! The mixer's clock is the master. The speakers play a rendered frame a device buffer
//! (plus the configured speaker path) after it is rendered; a phone plays it a network,
//! a jitter buffer and its own output later, and that *playout delay* differs from
//! phone to phone and drifts as browsers adapt their buffers. Each phone measures what
//! it plays (the RTP timestamp its receiver played and when, on the box's clock) and
//! reports it; the box turns that into the phone's delay behind the speakers (µs,
//! `http::ws`) and hands it here.
//!
//! Two actuators close the loop:
//! - the **lead** (one for the box): the encoded mixes carry the backing this far
//!   ahead of the speakers ([`crate::engine::Command::SetLead`]), enough for the
//!   slowest phone;
//! - each phone's **extra delay** (its own): the rest, added on the phone (a Web Audio
//!   delay, or the jitter buffer's target), steered by the *offset* the box tells it
//!   after every report: its delay minus the lead (positive: it plays late).
//!
//! Pure: time comes in as `now`; the room owns one [`Timeline`] and carries out what
//! it says.

use std::collections::BTreeMap;
use std::time::Duration;

/// Reports a phone's need is judged over (about 4 s at the page's two a second): the
/// slowest of them but [`OUTLIERS`], so a jitter buffer's breathing does not drag the
/// lead about.
const WINDOW: usize = 8;

/// The slowest reports of a window left out of its need.
const OUTLIERS: usize = 2;

/// The lead stays this far above the slowest phone's own delay, so that phone still
/// has a little extra delay to steer with.
pub const MARGIN: Duration = Duration::from_millis(5);

/// The lead rises at once when a phone needs this much more.
const RAISE_STEP: Duration = Duration::from_millis(2);

/// The lead falls only when every phone needs this much less...
const LOWER_STEP: Duration = Duration::from_millis(15);

/// ...for this long (a phone that left, a buffer that settled)...
const LOWER_AFTER: Duration = Duration::from_secs(10);

/// ...and then by at most this much...
const LOWER_BY: Duration = Duration::from_millis(5);

/// ...this often, down to what the phones need. Every phone plays a fall of the lead as
/// a jump of its backing until its next report moves its own delay; a jitter buffer that
/// drained 120 ms made every phone jump 120 ms at once (markers 100 ms off in a test),
/// where 5 ms steps leave them within about 5 ms meanwhile.
const LOWER_EVERY: Duration = Duration::from_secs(1);

/// A phone silent this long no longer counts for the lead.
const STALE: Duration = Duration::from_secs(5);

/// What the box tells a phone after its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steer {
    /// The phone's playout minus the speakers' for the same backing frame, µs: positive
    /// means it plays late and should take that much extra delay off.
    pub offset_us: i64,
    /// The lead now, µs.
    pub lead_us: i64,
}

#[derive(Clone, Debug)]
struct Phone {
    /// Its own delay behind the speakers (without its extra), newest last.
    natural_us: [i64; WINDOW],
    len: usize,
    next: usize,
    last_offset_us: i64,
    at: Duration,
}

impl Phone {
    /// The third slowest of its recent reports (the slowest of one or two): one or two
    /// wild readings (a buffer refilling after a gap) do not move the lead for everyone.
    fn need_us(&self) -> i64 {
        let mut recent = self.natural_us;
        let recent = &mut recent[..self.len];
        recent.sort_unstable_by(|a, b| b.cmp(a));
        match recent.len() {
            0 => 0,
            1 | 2 => recent[recent.len() - 1],
            _ => recent[OUTLIERS],
        }
    }
}

/// The lead and every phone's offset.
#[derive(Clone, Debug)]
pub struct Timeline<K: Ord + Copy> {
    max_lead: Duration,
    phones: BTreeMap<K, Phone>,
    lead_us: i64,
    lowering: Lowering,
}

/// Where the lead is in falling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lowering {
    /// The phones need about the lead.
    No,
    /// Every phone has needed clearly less since then.
    Waiting(Duration),
    /// Falling by steps; the last one then.
    Falling(Duration),
}

impl<K: Ord + Copy> Timeline<K> {
    /// No phones, no lead; the lead never exceeds `max_lead`.
    pub fn new(max_lead: Duration) -> Timeline<K> {
        Timeline {
            max_lead,
            phones: BTreeMap::new(),
            lead_us: 0,
            lowering: Lowering::No,
        }
    }

    /// The lead, µs.
    pub fn lead_us(&self) -> i64 {
        self.lead_us
    }

    /// The last offset told to `key` (µs), if it reported.
    pub fn offset_us(&self, key: K) -> Option<i64> {
        self.phones.get(&key).map(|p| p.last_offset_us)
    }

    /// A phone's report at `now`: it plays `delay_us` behind the speakers (its extra
    /// included) and adds `extra_us` of its own. Returns what to tell it.
    pub fn report(&mut self, now: Duration, key: K, delay_us: i64, extra_us: i64) -> Steer {
        let phone = self.phones.entry(key).or_insert(Phone {
            natural_us: [0; WINDOW],
            len: 0,
            next: 0,
            last_offset_us: 0,
            at: now,
        });
        phone.natural_us[phone.next] = delay_us - extra_us.max(0);
        phone.next = (phone.next + 1) % WINDOW;
        phone.len = (phone.len + 1).min(WINDOW);
        phone.at = now;
        self.retune(now);
        let offset_us = delay_us - self.lead_us;
        if let Some(p) = self.phones.get_mut(&key) {
            p.last_offset_us = offset_us;
        }
        Steer {
            offset_us,
            lead_us: self.lead_us,
        }
    }

    /// The phone is gone (left, lost its media, stopped playing the mix).
    pub fn forget(&mut self, key: K) {
        self.phones.remove(&key);
    }

    /// Moves the lead toward what the phones heard recently need: up at once, down only
    /// after a while, and then by steps.
    pub fn retune(&mut self, now: Duration) {
        self.phones.retain(|_, p| now.saturating_sub(p.at) < STALE);
        let max_us = self.max_lead.as_micros() as i64;
        let need = self
            .phones
            .values()
            .map(|p| p.need_us() + MARGIN.as_micros() as i64)
            .max()
            .unwrap_or(0)
            .clamp(0, max_us);
        if need > self.lead_us + RAISE_STEP.as_micros() as i64 {
            self.lead_us = need;
            self.lowering = Lowering::No;
            return;
        }
        let less = need < self.lead_us - LOWER_STEP.as_micros() as i64;
        self.lowering = match self.lowering {
            Lowering::Falling(last) if need < self.lead_us => {
                if now.saturating_sub(last) < LOWER_EVERY {
                    Lowering::Falling(last)
                } else {
                    self.step_down(need, now)
                }
            }
            Lowering::Waiting(since) if less => {
                if now.saturating_sub(since) < LOWER_AFTER {
                    Lowering::Waiting(since)
                } else {
                    self.step_down(need, now)
                }
            }
            _ if less => Lowering::Waiting(now),
            _ => Lowering::No,
        };
    }

    /// One step of a falling lead toward `need`, taken at `now`.
    fn step_down(&mut self, need: i64, now: Duration) -> Lowering {
        self.lead_us = need.max(self.lead_us - LOWER_BY.as_micros() as i64);
        Lowering::Falling(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A phone whose own delay behind the speakers is `natural` and which follows the
    /// box's offsets the way the page does (takes 80 % of each off its extra).
    struct Sim {
        natural: i64,
        extra: i64,
    }

    impl Sim {
        fn step(&mut self, t: &mut Timeline<u8>, now: Duration, key: u8) -> Steer {
            let steer = t.report(now, key, self.natural + self.extra, self.extra);
            self.extra = (self.extra - steer.offset_us * 4 / 5).max(0);
            steer
        }
    }

    #[test]
    fn two_phones_of_different_delays_settle_on_the_slower_ones_lead() {
        let mut t = Timeline::new(Duration::from_millis(400));
        let mut fast = Sim {
            natural: 30 * MS,
            extra: 0,
        };
        let mut slow = Sim {
            natural: 95 * MS,
            extra: 0,
        };
        let mut last = (
            Steer {
                offset_us: 0,
                lead_us: 0,
            },
            Steer {
                offset_us: 0,
                lead_us: 0,
            },
        );
        for k in 0..20 {
            let now = at(500 * k);
            last = (fast.step(&mut t, now, 1), slow.step(&mut t, now, 2));
        }
        assert_eq!(t.lead_us(), 100 * MS, "the slowest phone plus the margin");
        // Both play within a millisecond of the speakers: the fast one by its extra.
        let played = |s: &Sim| s.natural + s.extra - t.lead_us();
        assert!(played(&fast).abs() <= MS, "fast: {}", played(&fast));
        assert!(played(&slow).abs() <= MS, "slow: {}", played(&slow));
        assert!(
            last.0.offset_us.abs() <= MS && last.1.offset_us.abs() <= MS,
            "{last:?}"
        );
        assert_eq!(t.offset_us(2), Some(last.1.offset_us));
    }

    #[test]
    fn the_lead_rises_at_once_and_falls_only_after_a_quiet_while() {
        let mut t = Timeline::new(Duration::from_millis(400));
        t.report(at(0), 1, 50 * MS, 0);
        assert_eq!(t.lead_us(), 55 * MS);
        // A phone with more delay: up at once.
        t.report(at(100), 2, 120 * MS, 0);
        assert_eq!(t.lead_us(), 125 * MS);
        // It leaves: the lead waits 10 s before it falls to what the other needs.
        t.forget(2);
        t.report(at(200), 1, 50 * MS, 0);
        assert_eq!(t.lead_us(), 125 * MS);
        t.report(at(9_000), 1, 50 * MS, 0);
        assert_eq!(t.lead_us(), 125 * MS, "not yet");
        // After 10 s, by 5 ms a second.
        t.report(at(10_300), 1, 50 * MS, 0);
        assert_eq!(t.lead_us(), 120 * MS, "after 10 s, one step");
        t.report(at(10_800), 1, 50 * MS, 0);
        assert_eq!(t.lead_us(), 120 * MS, "not within the second");
        let mut last = t.lead_us();
        let mut k = 0;
        while t.lead_us() > 55 * MS {
            k += 1;
            t.report(at(10_300 + 500 * k), 1, 50 * MS, 0);
            assert!(last - t.lead_us() <= 5 * MS, "a step of 5 ms at most");
            last = t.lead_us();
        }
        assert_eq!(k, 26, "65 ms more in 13 s");
        assert_eq!(t.lead_us(), 55 * MS, "down to what it needs");
        // Small wobbles move nothing.
        t.report(at(30_000), 1, 51 * MS, 0);
        t.report(at(31_000), 1, 49 * MS, 0);
        assert_eq!(t.lead_us(), 55 * MS);
    }

    #[test]
    fn a_phone_needing_more_while_the_lead_falls_stops_the_fall() {
        let mut t = Timeline::new(Duration::from_millis(400));
        t.report(at(0), 1, 200 * MS, 0);
        for k in 1..=8 {
            t.report(at(500 * k), 1, 50 * MS, 0);
        }
        for k in 9..=20 {
            t.report(at(500 * k), 1, 50 * MS, 0);
        }
        assert_eq!(
            t.lead_us(),
            205 * MS,
            "waiting 10 s from the first lower need"
        );
        for k in 21..=25 {
            t.report(at(500 * k), 1, 50 * MS, 0);
        }
        assert_eq!(t.lead_us(), 190 * MS, "falling by 5 ms a second");
        // Its buffer grows back: as soon as the window's need is up, so is the lead.
        for k in 26..=40 {
            t.report(at(500 * k), 1, 190 * MS, 0);
        }
        assert_eq!(t.lead_us(), 195 * MS, "it needs 195: no lower, no higher");
        for k in 41..=70 {
            t.report(at(500 * k), 1, 189 * MS, 0);
        }
        assert_eq!(t.lead_us(), 195 * MS, "within the band: it stays");
    }

    #[test]
    fn a_phone_slower_than_the_largest_lead_is_told_it_is_late_and_the_lead_is_capped() {
        let mut t = Timeline::new(Duration::from_millis(200));
        let steer = t.report(at(0), 1, 450 * MS, 0);
        assert_eq!(t.lead_us(), 200 * MS);
        assert_eq!(
            steer.offset_us,
            250 * MS,
            "late by what the lead cannot cover"
        );
    }

    #[test]
    fn one_wild_reading_does_not_move_the_lead() {
        let mut t = Timeline::new(Duration::from_millis(400));
        for k in 0..4 {
            t.report(at(500 * k), 1, 50 * MS, 0);
        }
        t.report(at(2_000), 1, 390 * MS, 0);
        t.report(at(2_500), 1, 50 * MS, 0);
        assert_eq!(t.lead_us(), 55 * MS);
        // A lasting change does.
        for k in 6..9 {
            t.report(at(500 * k), 1, 90 * MS, 0);
        }
        assert_eq!(t.lead_us(), 95 * MS);
    }

    #[test]
    fn a_silent_phone_stops_counting_after_five_seconds() {
        let mut t = Timeline::new(Duration::from_millis(400));
        for k in 0..3 {
            t.report(at(k), 1, 150 * MS, 0);
        }
        t.report(at(3), 2, 40 * MS, 0);
        assert_eq!(t.lead_us(), 155 * MS);
        for k in 1..=80 {
            t.report(at(500 * k), 2, 40 * MS, 0);
        }
        assert_eq!(t.offset_us(1), None, "the silent phone is forgotten");
        assert_eq!(t.lead_us(), 45 * MS);
    }

    #[test]
    fn the_need_is_the_slowest_of_recent_reports_without_the_extra() {
        let mut t = Timeline::new(Duration::from_millis(400));
        // A buffer that breathes between 40 and 60 ms (10 ms of extra on top).
        for k in 0..8 {
            let natural = if k % 2 == 0 { 40 } else { 60 };
            t.report(at(500 * k), 1, (natural + 10) * MS, 10 * MS);
        }
        assert_eq!(t.lead_us(), 65 * MS);
    }
}
