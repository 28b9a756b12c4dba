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

/// What a phone's sender adds before its first sample leaves: one 20 ms Opus packet.
pub const PHONE_PACKET: Duration = Duration::from_millis(20);

/// A delay moves only when it is off by this much (frames, 5 ms): a jitter buffer
/// breathing by a millisecond does not crossfade the speakers every report.
pub const MOVE_FRAMES: u32 = 240;

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
    backing: u32,
    voices: Vec<(SingerId, u32)>,
}

impl InEar {
    /// Nothing held back.
    pub fn new() -> InEar {
        InEar::default()
    }

    /// How long the speakers hold the backing back now.
    pub fn backing(&self) -> Duration {
        duration_of(u64::from(self.backing))
    }

    /// The commands that bring the engine to what `on` (the song playing is in-ear),
    /// `stage` and the seated singers' `uplinks` call for. Off, or with no singer,
    /// nothing is held back.
    pub fn follow(&mut self, on: bool, stage: Duration, uplinks: &[Uplink]) -> Vec<Command> {
        let slowest = uplinks.iter().map(|u| u.uplink).max().filter(|_| on);
        let cap = |d: Duration| (frames_in(d).min(u64::from(MAX_VENUE_DELAY_FRAMES))) as u32;
        let mut commands = Vec::new();
        let backing = slowest.map_or(0, |s| cap(stage + s));
        if moves(self.backing, backing) {
            self.backing = backing;
            commands.push(Command::SetVenueDelay { frames: backing });
        }
        // A singer who left its seat: the engine's seat starts from no delay.
        self.voices
            .retain(|(singer, _)| uplinks.iter().any(|u| u.singer == *singer));
        for u in uplinks {
            let want = slowest.map_or(0, |s| cap(s.saturating_sub(u.uplink)));
            let now = match self.voices.iter_mut().find(|(s, _)| *s == u.singer) {
                Some((_, now)) => now,
                None => {
                    self.voices.push((u.singer, 0));
                    &mut self.voices.last_mut().expect("just pushed").1
                }
            };
            if moves(*now, want) {
                *now = want;
                commands.push(Command::SetVoiceDelay {
                    singer: u.singer,
                    frames: want,
                });
            }
        }
        commands
    }
}

/// Whether a delay at `now` should move to `want`: by a step worth a crossfade, or to
/// or from none at all.
fn moves(now: u32, want: u32) -> bool {
    now.abs_diff(want) >= MOVE_FRAMES || (now == 0) != (want == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = e.follow(true, ms(40), &[up(1, 60), up(2, 100)]);
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
        assert!(e.follow(true, ms(40), &[up(1, 60), up(2, 100)]).is_empty());
    }

    #[test]
    fn small_moves_wait_and_large_ones_go() {
        let mut e = InEar::new();
        e.follow(true, ms(40), &[up(1, 60), up(2, 100)]);
        // A jitter buffer breathes by 3 ms: no crossfade.
        assert!(e.follow(true, ms(40), &[up(1, 63), up(2, 100)]).is_empty());
        // The slow phone's uplink grows by 20 ms: both delays follow.
        let c = e.follow(true, ms(40), &[up(1, 60), up(2, 120)]);
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
    fn off_or_without_singers_nothing_is_held_back() {
        let mut e = InEar::new();
        assert!(e.follow(false, ms(40), &[up(1, 60)]).is_empty());
        assert!(e.follow(true, ms(40), &[]).is_empty());
        e.follow(true, ms(40), &[up(1, 60), up(2, 100)]);
        // The song ends (stage mode next): everything back to none, at once.
        let c = e.follow(false, ms(40), &[up(1, 60), up(2, 100)]);
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
        e.follow(true, ms(40), &[up(1, 60), up(2, 100)]);
        // The slow singer leaves: the other is now the slowest.
        let c = e.follow(true, ms(40), &[up(1, 60)]);
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
        let c = e.follow(true, ms(40), &[up(1, 60), up(2, 100)]);
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
        let c = e.follow(true, ms(40), &[up(1, 0), up(2, 900)]);
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
