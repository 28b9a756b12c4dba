//! In-ear mode: how long the speakers hold the backing and each voice back, so that
//! the venue hears every voice on the beat its singer heard in their headphones
//! (`docs/sync.md`).
//!
//! The phones play each backing frame on the stage timeline: `stage` after the mixer
//! renders it. A singer sings to it there, and the voice reaches the mixer one *uplink*
//! later (capture, the phone's packet, the network and the box's jitter buffer). So
//! the speakers' backing waits `stage` plus the slowest uplink, and each faster voice
//! waits for the slowest. Pure: the room hands it the numbers and carries out the
//! engine commands it returns.

use std::time::Duration;

use crate::engine::{duration_of, frames_in, Command, SingerId, MAX_VENUE_DELAY_FRAMES};

/// What a phone's sender adds before its first sample leaves, until the box has seen
/// its packets (then their own duration: `SingerFigures::packet_ms`): one 20 ms Opus
/// packet, the longest a browser sends by default.
pub const PHONE_PACKET: Duration = Duration::from_millis(20);

/// A delay moves at once when it is off by this much (frames, 5 ms): a jitter buffer
/// breathing by a millisecond does not crossfade the speakers every report.
pub const MOVE_FRAMES: u32 = 240;

/// A delay off by less moves too, by this much or more (frames, 1 ms): to what it
/// should have been on average over the last [`REFINE_EVERY`]. Moving only by
/// [`MOVE_FRAMES`] left the speakers anywhere within ±5 ms of where the voices land,
/// for the rest of the song (in-ear medians −6.4 to +6.1 ms in five runs).
pub const FINE_FRAMES: u32 = 48;

/// How often a delay may move by less than [`MOVE_FRAMES`]: one crossfade in two
/// seconds at most, by a millisecond or a few.
pub const REFINE_EVERY: Duration = Duration::from_secs(2);

/// A seated singer's uplink: from the moment its phone played a backing frame to its
/// voice of that moment reaching the mixer, less the stage timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// The voice.
    pub singer: SingerId,
    /// Its uplink.
    pub uplink: Duration,
}

/// The delays the engine was last told.
#[derive(Clone, Debug, Default)]
pub struct InEar {
    backing: Held,
    voices: Vec<(SingerId, Held)>,
}

/// One delay the engine was told, and what it should have been since it last moved or
/// was refined.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    /// Told.
    frames: u32,
    /// Since when `sum` and `count` add up what it should be.
    since: Option<Duration>,
    sum: u64,
    count: u64,
}

impl Held {
    /// Where the delay moves, if it does, as it should be `want` at `now`: at once by
    /// [`MOVE_FRAMES`] or to or from none; else to the mean of what it should have been
    /// over [`REFINE_EVERY`], when that is [`FINE_FRAMES`] away.
    fn follow(&mut self, now: Duration, want: u32) -> Option<u32> {
        if self.frames.abs_diff(want) >= MOVE_FRAMES || (self.frames == 0) != (want == 0) {
            self.restart(now);
            self.frames = want;
            return Some(want);
        }
        let since = *self.since.get_or_insert(now);
        self.sum += u64::from(want);
        self.count += 1;
        if now.saturating_sub(since) < REFINE_EVERY {
            return None;
        }
        let mean = ((self.sum + self.count / 2) / self.count) as u32;
        self.restart(now);
        (mean.abs_diff(self.frames) >= FINE_FRAMES).then(|| {
            self.frames = mean;
            mean
        })
    }

    /// Starts adding up anew from `now`.
    fn restart(&mut self, now: Duration) {
        (self.since, self.sum, self.count) = (Some(now), 0, 0);
    }
}

impl InEar {
    /// Nothing held back.
    pub fn new() -> InEar {
        InEar::default()
    }

    /// How long the speakers hold the backing back now.
    pub fn backing(&self) -> Duration {
        duration_of(u64::from(self.backing.frames))
    }

    /// The commands that bring the engine to what `on` (the song playing is in-ear),
    /// `stage` and the seated singers' `uplinks` call for at `now`. Off, or with no
    /// singer, nothing is held back.
    pub fn follow(
        &mut self,
        now: Duration,
        on: bool,
        stage: Duration,
        uplinks: &[Uplink],
    ) -> Vec<Command> {
        let slowest = uplinks.iter().map(|u| u.uplink).max().filter(|_| on);
        let cap = |d: Duration| (frames_in(d).min(u64::from(MAX_VENUE_DELAY_FRAMES))) as u32;
        let mut commands = Vec::new();
        let backing = slowest.map_or(0, |s| cap(stage + s));
        if let Some(frames) = self.backing.follow(now, backing) {
            commands.push(Command::SetVenueDelay { frames });
        }
        // A singer who left its seat: the engine's seat starts from no delay.
        self.voices
            .retain(|(singer, _)| uplinks.iter().any(|u| u.singer == *singer));
        for u in uplinks {
            let want = slowest.map_or(0, |s| cap(s.saturating_sub(u.uplink)));
            let held = match self.voices.iter_mut().find(|(s, _)| *s == u.singer) {
                Some((_, held)) => held,
                None => {
                    self.voices.push((u.singer, Held::default()));
                    &mut self.voices.last_mut().expect("just pushed").1
                }
            };
            if let Some(frames) = held.follow(now, want) {
                commands.push(Command::SetVoiceDelay {
                    singer: u.singer,
                    frames,
                });
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the tests' follows happen, unless they say otherwise.
    const T0: Duration = Duration::from_secs(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn up(singer: u32, uplink: u64) -> Uplink {
        Uplink {
            singer: SingerId(singer),
            uplink: ms(uplink),
        }
    }

    #[test]
    fn the_backing_waits_for_the_slowest_voice_and_the_faster_voice_for_it() {
        let mut e = InEar::new();
        let c = e.follow(T0, true, ms(40), &[up(1, 60), up(2, 100)]);
        assert_eq!(
            c,
            vec![
                Command::SetVenueDelay { frames: 6_720 },
                Command::SetVoiceDelay {
                    singer: SingerId(1),
                    frames: 1_920
                },
            ],
            "the backing 40 + 100 ms, the faster voice 40 ms; the slowest not at all"
        );
        assert_eq!(e.backing(), ms(140));
        // Nothing changed: nothing to say.
        assert!(e
            .follow(T0, true, ms(40), &[up(1, 60), up(2, 100)])
            .is_empty());
    }

    #[test]
    fn small_moves_wait_and_large_ones_go() {
        let mut e = InEar::new();
        e.follow(T0, true, ms(40), &[up(1, 60), up(2, 100)]);
        // A jitter buffer breathes by 3 ms: no crossfade.
        assert!(e
            .follow(T0, true, ms(40), &[up(1, 63), up(2, 100)])
            .is_empty());
        // The slow phone's uplink grows by 20 ms: both delays follow.
        let c = e.follow(T0, true, ms(40), &[up(1, 60), up(2, 120)]);
        assert_eq!(
            c,
            vec![
                Command::SetVenueDelay { frames: 7_680 },
                Command::SetVoiceDelay {
                    singer: SingerId(1),
                    frames: 2_880
                },
            ]
        );
    }

    #[test]
    fn a_lasting_small_difference_is_refined_at_most_every_two_seconds() {
        let mut e = InEar::new();
        e.follow(T0, true, ms(40), &[up(1, 60), up(2, 100)]);
        assert_eq!(e.backing(), ms(140));
        // The slow phone's uplink breathes by ±2 ms around where it was, ten reports a
        // second for three seconds: on average nothing moved, so nothing moves.
        let mut t = T0;
        for k in 0..30 {
            t += ms(100);
            let u = if k % 2 == 0 { 98 } else { 102 };
            assert!(
                e.follow(t, true, ms(40), &[up(1, 60), up(2, u)]).is_empty(),
                "breathing at {t:?}"
            );
        }
        // Then it stays 3 ms longer: the backing and the faster voice follow, by less
        // than a step, and no more often than every two seconds.
        let mut moves = Vec::new();
        for _ in 0..60 {
            t += ms(100);
            let c = e.follow(t, true, ms(40), &[up(1, 60), up(2, 103)]);
            if !c.is_empty() {
                moves.push((t, c));
            }
        }
        assert!(
            (1..=2).contains(&moves.len())
                && moves.windows(2).all(|w| w[1].0 - w[0].0 >= REFINE_EVERY),
            "{moves:?}"
        );
        assert_eq!(
            moves.last().map(|(_, c)| c.clone()),
            Some(vec![
                Command::SetVenueDelay { frames: 6_864 },
                Command::SetVoiceDelay {
                    singer: SingerId(1),
                    frames: 2_064
                },
            ]),
            "143 ms and 43 ms"
        );
    }

    #[test]
    fn off_or_without_singers_nothing_is_held_back() {
        let mut e = InEar::new();
        assert!(e.follow(T0, false, ms(40), &[up(1, 60)]).is_empty());
        assert!(e.follow(T0, true, ms(40), &[]).is_empty());
        e.follow(T0, true, ms(40), &[up(1, 60), up(2, 100)]);
        // The song ends (stage mode next): everything back to none, at once.
        let c = e.follow(T0, false, ms(40), &[up(1, 60), up(2, 100)]);
        assert_eq!(
            c,
            vec![
                Command::SetVenueDelay { frames: 0 },
                Command::SetVoiceDelay {
                    singer: SingerId(1),
                    frames: 0
                },
            ]
        );
        assert_eq!(e.backing(), Duration::ZERO);
    }

    #[test]
    fn a_singer_who_left_is_forgotten_without_a_command() {
        let mut e = InEar::new();
        e.follow(T0, true, ms(40), &[up(1, 60), up(2, 100)]);
        // The slow singer leaves: the other is now the slowest.
        let c = e.follow(T0, true, ms(40), &[up(1, 60)]);
        assert_eq!(
            c,
            vec![
                Command::SetVenueDelay { frames: 4_800 },
                Command::SetVoiceDelay {
                    singer: SingerId(1),
                    frames: 0
                },
            ]
        );
        // Singer 2 comes back to a fresh seat: its delay is set from none.
        let c = e.follow(T0, true, ms(40), &[up(1, 60), up(2, 100)]);
        assert!(c.contains(&Command::SetVoiceDelay {
            singer: SingerId(1),
            frames: 1_920
        }));
        assert!(!c
            .iter()
            .any(|c| matches!(c, Command::SetVoiceDelay { singer, .. } if *singer == SingerId(2))));
    }

    #[test]
    fn delays_are_capped_at_what_the_engine_holds() {
        let mut e = InEar::new();
        let c = e.follow(T0, true, ms(40), &[up(1, 0), up(2, 900)]);
        assert_eq!(
            c,
            vec![
                Command::SetVenueDelay {
                    frames: MAX_VENUE_DELAY_FRAMES
                },
                Command::SetVoiceDelay {
                    singer: SingerId(1),
                    frames: MAX_VENUE_DELAY_FRAMES
                },
            ]
        );
    }
}
