//! When a singer's voice had gaps at the box, and why: what the log says about each
//! singer's receive pipeline, at most once per [`EVERY`].
//!
//! The audio thread counts every packet that came late or never, every sample it
//! concealed, every time a singer's buffer ran dry or a backlog was dropped
//! ([`ReceiverStats`]), and reports the totals a few times a second. An operator (or a
//! test that heard a voice dip in the venue) needs to know whether the box had the
//! voice in time; a per-packet log line would fill a Pi's SD card (one broken peer
//! wrote 130 MB in 20 minutes). So this keeps, per singer, the totals last logged and
//! says what grew since, once per interval.
//!
//! Pure (time is an argument) and bounded: a singer not reported for [`FORGET_AFTER`]
//! is forgotten.

use std::collections::HashMap;
use std::time::Duration;

use crate::engine::receiver::ReceiverStats;
use crate::engine::SingerId;

/// One singer's gaps are logged at most this often.
pub const EVERY: Duration = Duration::from_secs(5);

/// A singer the audio thread has not reported for this long is forgotten (it left).
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

/// What grew in one singer's receive pipeline since it was last logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gaps {
    /// Packets that arrived after their turn.
    pub late: u64,
    /// Packets that never arrived in time.
    pub lost: u64,
    /// Lost packets rebuilt from in-band FEC.
    pub fec_recovered: u64,
    /// Samples concealed without data.
    pub concealed_samples: u64,
    /// Times the buffer ran dry while the stream was live.
    pub underruns: u64,
    /// Backlogs dropped to bring the voice back in time...
    pub caught_up: u64,
    /// ...and the packets they dropped.
    pub skipped: u64,
}

impl Gaps {
    fn between(before: &ReceiverStats, now: &ReceiverStats) -> Gaps {
        Gaps {
            late: now.late.saturating_sub(before.late),
            lost: now.lost.saturating_sub(before.lost),
            fec_recovered: now.fec_recovered.saturating_sub(before.fec_recovered),
            concealed_samples: now
                .concealed_samples
                .saturating_sub(before.concealed_samples),
            underruns: now.underruns.saturating_sub(before.underruns),
            caught_up: now.caught_up.saturating_sub(before.caught_up),
            skipped: now.skipped.saturating_sub(before.skipped),
        }
    }

    fn any(&self) -> bool {
        *self != Gaps::default()
    }
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    logged: ReceiverStats,
    logged_at: Option<Duration>,
    reported_at: Duration,
}

/// Every singer's totals as last logged.
#[derive(Debug, Default)]
pub struct VoiceGaps {
    singers: HashMap<SingerId, Seen>,
}

impl VoiceGaps {
    /// The audio thread's totals for `singer` at `now`: the gaps to log, when there
    /// are any and this singer's last were logged [`EVERY`] or more ago (or never).
    pub fn observe(
        &mut self,
        singer: SingerId,
        stats: &ReceiverStats,
        now: Duration,
    ) -> Option<Gaps> {
        self.singers
            .retain(|_, s| now.saturating_sub(s.reported_at) < FORGET_AFTER);
        let seen = self.singers.entry(singer).or_insert(Seen {
            logged: ReceiverStats::default(),
            logged_at: None,
            reported_at: now,
        });
        seen.reported_at = now;
        let gaps = Gaps::between(&seen.logged, stats);
        let due = seen
            .logged_at
            .is_none_or(|at| now.saturating_sub(at) >= EVERY);
        (gaps.any() && due).then(|| {
            seen.logged = *stats;
            seen.logged_at = Some(now);
            gaps
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_singers_gaps_are_told_at_once_then_at_most_every_five_seconds_with_all_since() {
        let mut g = VoiceGaps::default();
        let ana = SingerId(1);
        let mut stats = ReceiverStats {
            packets: 100,
            ..ReceiverStats::default()
        };
        assert_eq!(g.observe(ana, &stats, secs(0.0)), None, "no gaps: nothing");
        stats.late = 2;
        stats.concealed_samples = 960;
        let first = g
            .observe(ana, &stats, secs(0.5))
            .expect("the first at once");
        assert_eq!((first.late, first.concealed_samples), (2, 960));
        stats.late = 5;
        assert_eq!(g.observe(ana, &stats, secs(1.0)), None, "within 5 s");
        stats.underruns = 1;
        assert_eq!(g.observe(ana, &stats, secs(5.4)), None, "still within 5 s");
        let next = g.observe(ana, &stats, secs(5.5)).expect("5 s on");
        assert_eq!(
            next,
            Gaps {
                late: 3,
                underruns: 1,
                ..Gaps::default()
            },
            "everything since the last, once"
        );
        assert_eq!(g.observe(ana, &stats, secs(20.0)), None, "nothing new");
    }

    #[test]
    fn singers_are_told_apart_and_a_silent_one_is_forgotten() {
        let mut g = VoiceGaps::default();
        let late = ReceiverStats {
            late: 1,
            ..ReceiverStats::default()
        };
        assert!(g.observe(SingerId(1), &late, secs(0.0)).is_some());
        assert!(
            g.observe(SingerId(2), &late, secs(0.1)).is_some(),
            "another singer's first gaps are not held back by the first's"
        );
        for k in 0..130 {
            g.observe(SingerId(2), &late, secs(0.5 * f64::from(k)));
        }
        assert_eq!(g.singers.len(), 1, "singer 1 left a minute ago");
    }
}
