//! The room on virtual time: no sockets, no clock, no threads.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::control::night::{BackingSource, NightRefusal, SongFeedback, SongRef, Transport};
use crate::songs::line_in::LineInCommand;
use crate::songs::player::PlayerCommand;

const GRACE: Duration = Duration::from_secs(30);
const JOIN_DEADLINE: Duration = Duration::from_secs(10);

fn config() -> RoomConfig {
    RoomConfig {
        max_singers: 2,
        max_listeners: 3,
        pin: String::new(),
        host_pin: "host".into(),
        rejoin_grace: GRACE,
        join_deadline: JOIN_DEADLINE,
        master_gain_db: 0.0,
        backing_gain_db: -6.0,
        count_in_beats: 0,
        count_in: Duration::ZERO,
        line_in: true,
        max_lead: Duration::from_millis(400),
        speaker_latency: Duration::ZERO,
        record: false,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn token(n: u8) -> Token {
    Token([n; TOKEN_BYTES])
}

/// A room and the actions it emitted, drained after every input.
struct Harness {
    room: Room,
    actions: Vec<Action>,
    next_token: u8,
}

impl Harness {
    fn new(config: RoomConfig) -> Harness {
        Harness {
            room: Room::new(config),
            actions: Vec::new(),
            next_token: 1,
        }
    }

    fn handle(&mut self, now: Duration, input: Input) -> Result<Reply, Refusal> {
        let result = self.room.handle(now, input);
        while let Some(a) = self.room.poll_action() {
            self.actions.push(a);
        }
        result
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    fn request(&mut self, name: &str, role: Role) -> JoinRequest {
        let new_token = token(self.next_token);
        self.next_token += 1;
        JoinRequest {
            name: name.into(),
            role,
            pin: None,
            token: None,
            new_token,
            rejoinable: true,
            from: None,
        }
    }

    fn join(&mut self, now: Duration, conn: u64, name: &str, role: Role) -> Welcome {
        let request = self.request(name, role);
        self.join_with(now, conn, request)
            .unwrap_or_else(|r| panic!("{name} refused: {r}"))
    }

    fn join_with(
        &mut self,
        now: Duration,
        conn: u64,
        request: JoinRequest,
    ) -> Result<Welcome, Refusal> {
        match self.handle(
            now,
            Input::Join {
                conn: ConnId(conn),
                request,
            },
        )? {
            Reply::Joined(w) => Ok(w),
            Reply::Done | Reply::Queued(_) | Reply::Sync(_) => {
                panic!("a join answers with a welcome")
            }
        }
    }

    fn rejoin(&mut self, now: Duration, conn: u64, token: Token) -> Welcome {
        let mut request = self.request("ignored", Role::Singer);
        request.token = Some(token);
        self.join_with(now, conn, request).expect("rejoin admitted")
    }

    /// A singer's own mix change, which must be accepted.
    fn mix(&mut self, now: Duration, conn: u64, monitor: Option<f32>, reverb: Option<f32>) {
        let input = Input::Mix {
            conn: ConnId(conn),
            monitor,
            reverb,
        };
        self.handle(now, input).expect("mix accepted");
    }

    /// A connection's media changes state.
    fn media(&mut self, now: Duration, conn: u64, state: MediaState) {
        let input = Input::Media {
            conn: ConnId(conn),
            state,
        };
        self.handle(now, input).expect("media state taken");
    }

    /// When `peer` must next have done something (live media, or come back).
    fn deadline_of(&self, peer: PeerId) -> Option<Duration> {
        self.room.deadline_of(&self.room.participants[&peer])
    }

    fn slot(&self, slot: usize) -> SlotView {
        self.room.view().slots[slot].clone()
    }

    fn participant(&self, peer: PeerId) -> Option<ParticipantView> {
        self.room
            .view()
            .participants
            .into_iter()
            .find(|p| p.peer == peer)
    }
}

/// What `f` picks out of the actions, in order.
fn pick<T>(actions: &[Action], f: impl FnMut(&Action) -> Option<T>) -> Vec<T> {
    actions.iter().filter_map(f).collect()
}

fn engine_commands(actions: &[Action]) -> Vec<Command> {
    pick(actions, |a| match a {
        Action::Engine(c) => Some(*c),
        _ => None,
    })
}

fn byes(actions: &[Action]) -> Vec<(ConnId, ByeReason)> {
    pick(actions, |a| match a {
        Action::Bye { conn, reason } => Some((*conn, *reason)),
        _ => None,
    })
}

fn routes(actions: &[Action]) -> Vec<(ConnId, MixId)> {
    pick(actions, |a| match a {
        Action::Route { conn, mix } => Some((*conn, *mix)),
        _ => None,
    })
}

#[test]
fn a_singer_joins_goes_live_and_leaves() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    assert_eq!(ana.slot, Some(SlotId(0)));
    assert_eq!(ana.role, Role::Singer);
    assert!(!ana.rejoined);
    let actions = h.take();
    assert_eq!(
        engine_commands(&actions),
        vec![Command::AddSinger {
            singer: ana.peer.singer(),
            settings: SingerSettings::default()
        }]
    );
    assert_eq!(
        routes(&actions),
        vec![(ConnId(1), MixId::Personal(ana.peer.singer()))]
    );
    assert!(actions.contains(&Action::Changed));
    assert_eq!(
        h.participant(ana.peer).map(|p| p.presence),
        Some(Presence::Connecting)
    );

    h.media(secs(0.5), 1, MediaState::Connected);
    assert_eq!(
        h.participant(ana.peer).map(|p| p.presence),
        Some(Presence::Live)
    );
    h.take();

    h.handle(secs(9.0), Input::Leave { conn: ConnId(1) })
        .expect("leave");
    let actions = h.take();
    assert_eq!(byes(&actions), vec![(ConnId(1), ByeReason::Left)]);
    assert_eq!(
        engine_commands(&actions),
        vec![Command::RemoveSinger(ana.peer.singer())]
    );
    assert_eq!(h.slot(0).peer, None);
    assert_eq!(h.room.view().counts(), (0, 0));
    assert_eq!(h.room.next_deadline(), None);
}

#[test]
fn singers_fill_slots_in_order_and_listeners_hear_the_venue() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let ben = h.join(secs(0.0), 2, "Ben", Role::Singer);
    assert_eq!((ana.slot, ben.slot), (Some(SlotId(0)), Some(SlotId(1))));
    assert_ne!(ana.token, ben.token);
    h.take();
    let lia = h.join(secs(0.0), 3, "Lia", Role::Listener);
    assert_eq!(lia.slot, None);
    let actions = h.take();
    assert_eq!(engine_commands(&actions), vec![Command::SetListeners(1)]);
    assert_eq!(routes(&actions), vec![(ConnId(3), MixId::Venue)]);
    assert_eq!(h.room.view().counts(), (2, 1));
}

#[test]
fn capacity_limits_refuse_the_extra_singer_and_listener() {
    let mut h = Harness::new(config());
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.join(secs(0.0), 2, "Ben", Role::Singer);
    let extra = h.request("Cleo", Role::Singer);
    assert_eq!(
        h.join_with(secs(0.0), 3, extra),
        Err(Refusal::Full(Role::Singer))
    );
    for conn in 10..13 {
        h.join(secs(0.0), conn, "L", Role::Listener);
    }
    let extra = h.request("L4", Role::Listener);
    assert_eq!(
        h.join_with(secs(0.0), 13, extra),
        Err(Refusal::Full(Role::Listener))
    );
    assert_eq!(h.room.view().counts(), (2, 3));
    // A refusal changes nothing and emits nothing.
    h.take();
    let extra = h.request("Cleo", Role::Singer);
    let _ = h.join_with(secs(0.0), 3, extra);
    assert!(h.take().is_empty());
}

#[test]
fn the_pin_is_required_and_checked() {
    let mut h = Harness::new(RoomConfig {
        pin: "4711".into(),
        ..config()
    });
    let mut wrong = h.request("Mallory", Role::Singer);
    wrong.pin = Some("4712".into());
    assert_eq!(h.join_with(secs(0.0), 1, wrong), Err(Refusal::WrongPin));
    let missing = h.request("Mallory", Role::Singer);
    assert_eq!(h.join_with(secs(0.0), 2, missing), Err(Refusal::WrongPin));
    let mut longer = h.request("Mallory", Role::Singer);
    longer.pin = Some("47110".into());
    assert_eq!(h.join_with(secs(0.0), 3, longer), Err(Refusal::WrongPin));
    let mut right = h.request("Ana", Role::Singer);
    right.pin = Some("4711".into());
    assert!(h.join_with(secs(0.0), 4, right).is_ok());
    assert_eq!(h.room.view().counts(), (1, 0));
}

#[test]
fn the_host_sets_and_clears_the_pin_and_the_room_keeps_its_people() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.handle(
        secs(0.5),
        Input::Media {
            conn: ConnId(1),
            state: MediaState::Connected,
        },
    )
    .unwrap();
    h.take();
    assert!(!h.room.view().pin_set);
    let pin = |p: &str| Input::SetPin {
        pin: Some(p.into()),
    };
    for bad in ["", "12\n34", &"9".repeat(PIN_MAX_CHARS + 1)] {
        assert_eq!(
            h.handle(secs(1.0), pin(bad)),
            Err(Refusal::OutOfRange("pin")),
            "{bad:?}"
        );
    }
    assert!(h.take().is_empty(), "a refused PIN changes nothing");
    assert!(!h.room.view().pin_set);
    h.handle(secs(1.0), pin("2580")).unwrap();
    assert_eq!(h.take(), vec![Action::Changed]);
    assert!(h.room.view().pin_set);
    let missing = h.request("Bo", Role::Singer);
    assert_eq!(h.join_with(secs(2.0), 2, missing), Err(Refusal::WrongPin));
    let mut right = h.request("Bo", Role::Singer);
    right.pin = Some("2580".into());
    h.join_with(secs(2.0), 3, right).unwrap();
    // Ana, who joined without a PIN, is still on stage and may rejoin with her token.
    h.handle(secs(3.0), Input::Closed { conn: ConnId(1) })
        .unwrap();
    let mut back = h.request("Ana", Role::Singer);
    back.token = Some(ana.token);
    assert!(h.join_with(secs(4.0), 4, back).unwrap().rejoined);
    h.handle(secs(5.0), Input::SetPin { pin: None }).unwrap();
    assert!(!h.room.view().pin_set);
    let anyone = h.request("Cleo", Role::Listener);
    h.join_with(secs(6.0), 5, anyone).unwrap();
}

#[test]
fn the_singer_limit_closes_slots_to_new_singers_only() {
    let mut h = Harness::new(RoomConfig {
        max_singers: 3,
        ..config()
    });
    for bad in [0, 4] {
        assert_eq!(
            h.handle(secs(0.0), Input::SetSingerLimit { limit: bad }),
            Err(Refusal::OutOfRange("limit"))
        );
    }
    assert_eq!(h.room.view().singer_limit, 3);
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.join(secs(0.0), 2, "Bo", Role::Singer);
    h.handle(secs(1.0), Input::SetSingerLimit { limit: 1 })
        .unwrap();
    assert_eq!(h.room.view().singer_limit, 1);
    // Bo, on B, stays; nobody new gets a slot until the limit is raised.
    assert_eq!(h.room.view().counts(), (2, 0));
    let cleo = h.request("Cleo", Role::Singer);
    assert_eq!(
        h.join_with(secs(2.0), 3, cleo),
        Err(Refusal::Full(Role::Singer))
    );
    h.handle(secs(3.0), Input::Leave { conn: ConnId(1) })
        .unwrap();
    let cleo = h.request("Cleo", Role::Singer);
    assert_eq!(
        h.join_with(secs(4.0), 4, cleo).unwrap().slot,
        Some(SlotId(0))
    );
    h.handle(secs(5.0), Input::SetSingerLimit { limit: 3 })
        .unwrap();
    let dan = h.request("Dan", Role::Singer);
    assert_eq!(
        h.join_with(secs(6.0), 5, dan).unwrap().slot,
        Some(SlotId(2))
    );
}

#[test]
fn the_host_removes_whoever_holds_a_slot() {
    let mut h = Harness::new(config());
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    let bo = h.join(secs(0.0), 2, "Bo", Role::Singer);
    h.take();
    assert_eq!(
        h.handle(secs(1.0), Input::KickSlot { slot: SlotId(5) }),
        Err(Refusal::UnknownSlot)
    );
    h.handle(secs(1.0), Input::KickSlot { slot: SlotId(1) })
        .unwrap();
    assert_eq!(byes(&h.take()), vec![(ConnId(2), ByeReason::Kicked)]);
    assert!(h.room.view().participants.iter().all(|p| p.peer != bo.peer));
    assert_eq!(
        h.handle(secs(2.0), Input::KickSlot { slot: SlotId(1) }),
        Err(Refusal::EmptySlot)
    );
}

#[test]
fn a_second_join_on_one_connection_is_refused() {
    let mut h = Harness::new(config());
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    let again = h.request("Ana", Role::Listener);
    assert_eq!(
        h.join_with(secs(0.0), 1, again),
        Err(Refusal::AlreadyJoined)
    );
    assert_eq!(h.room.view().counts(), (1, 0));
}

#[test]
fn a_mix_message_with_one_field_changes_only_that_field() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.take();
    h.mix(secs(1.0), 1, None, Some(0.3));
    h.mix(secs(2.0), 1, Some(0.5), None);
    let settings = h.slot(0).settings;
    assert_eq!((settings.monitor, settings.reverb_wet), (0.5, 0.3));
    assert_eq!(
        engine_commands(&h.take()),
        vec![
            Command::SetSinger {
                singer: ana.peer.singer(),
                settings: SingerSettings {
                    reverb_wet: 0.3,
                    ..SingerSettings::default()
                }
            },
            Command::SetSinger {
                singer: ana.peer.singer(),
                settings: SingerSettings {
                    reverb_wet: 0.3,
                    monitor: 0.5,
                    ..SingerSettings::default()
                }
            }
        ]
    );
    // The host changes the gain: the singer's own settings stay.
    h.handle(
        secs(3.0),
        Input::SetSlot {
            slot: SlotId(0),
            change: SlotChange {
                gain_db: Some(-4.0),
                ..SlotChange::default()
            },
        },
    )
    .expect("gain");
    let settings = h.slot(0).settings;
    assert_eq!(
        (settings.gain_db, settings.monitor, settings.reverb_wet),
        (-4.0, 0.5, 0.3)
    );
}

#[test]
fn a_refused_change_changes_nothing() {
    let mut h = Harness::new(config());
    let lia = h.join(secs(0.0), 3, "Lia", Role::Listener);
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.take();
    let before = h.room.view();
    for (change, field) in [
        (
            SlotChange {
                gain_db: Some(20.0),
                monitor: Some(0.5),
                ..SlotChange::default()
            },
            "gain_db",
        ),
        (
            SlotChange {
                pan: Some(-1.5),
                ..SlotChange::default()
            },
            "pan",
        ),
        (
            SlotChange {
                reverb: Some(1.01),
                muted: Some(true),
                ..SlotChange::default()
            },
            "reverb",
        ),
        (
            SlotChange {
                gain_db: Some(f32::NAN),
                ..SlotChange::default()
            },
            "gain_db",
        ),
    ] {
        assert_eq!(
            h.handle(
                secs(1.0),
                Input::SetSlot {
                    slot: SlotId(0),
                    change
                }
            ),
            Err(Refusal::OutOfRange(field))
        );
    }
    assert_eq!(
        h.handle(
            secs(1.0),
            Input::SetSlot {
                slot: SlotId(2),
                change: SlotChange::default()
            }
        ),
        Err(Refusal::UnknownSlot)
    );
    assert_eq!(
        h.handle(
            secs(1.0),
            Input::Mix {
                conn: ConnId(3),
                monitor: Some(0.5),
                reverb: None
            }
        ),
        Err(Refusal::NotASinger)
    );
    assert_eq!(
        h.handle(
            secs(1.0),
            Input::Mix {
                conn: ConnId(99),
                monitor: Some(0.5),
                reverb: None
            }
        ),
        Err(Refusal::NotJoined)
    );
    assert_eq!(
        h.handle(secs(1.0), Input::SetMaster { gain_db: 13.0 }),
        Err(Refusal::OutOfRange("master_gain_db"))
    );
    assert_eq!(
        h.handle(
            secs(1.0),
            Input::SetBacking {
                gain_db: Some(-61.0),
                muted: Some(true),
                source: Some(BackingSource::LineIn),
            }
        ),
        Err(Refusal::OutOfRange("backing_gain_db"))
    );
    assert_eq!(h.room.view(), before);
    assert!(h.take().is_empty());
    let _ = lia;
}

#[test]
fn routes_follow_the_monitor_and_mute() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.take();
    let mix = |h: &mut Harness, monitor: f32| {
        h.mix(secs(1.0), 1, Some(monitor), None);
        routes(&h.take())
    };
    // Monitor at 1: the personal mix is the venue mix, so the singer shares its encode.
    assert_eq!(mix(&mut h, 1.0), vec![(ConnId(1), MixId::Venue)]);
    // No route change when the route stays.
    assert_eq!(mix(&mut h, 1.0), vec![]);
    assert_eq!(
        mix(&mut h, 0.8),
        vec![(ConnId(1), MixId::Personal(ana.peer.singer()))]
    );
    // A muted singer hears the venue mix too (nothing of theirs is in it).
    h.handle(
        secs(2.0),
        Input::SetSlot {
            slot: SlotId(0),
            change: SlotChange {
                muted: Some(true),
                ..SlotChange::default()
            },
        },
    )
    .expect("mute");
    assert_eq!(routes(&h.take()), vec![(ConnId(1), MixId::Venue)]);
}

#[test]
fn a_phone_that_rejoins_within_the_grace_gets_its_slot_and_settings_back() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.media(secs(0.5), 1, MediaState::Connected);
    h.mix(secs(1.0), 1, Some(0.4), Some(0.2));
    h.handle(
        secs(1.0),
        Input::SetSlot {
            slot: SlotId(0),
            change: SlotChange {
                gain_db: Some(-3.0),
                pan: Some(-0.5),
                ..SlotChange::default()
            },
        },
    )
    .expect("host");
    let settings = h.slot(0).settings;
    h.take();

    // The phone's Wi-Fi drops: its socket closes.
    h.handle(secs(10.0), Input::Closed { conn: ConnId(1) })
        .expect("closed");
    let actions = h.take();
    assert_eq!(byes(&actions), vec![(ConnId(1), ByeReason::Timeout)]);
    assert!(
        engine_commands(&actions).is_empty(),
        "the seat stays in the engine"
    );
    assert_eq!(
        h.participant(ana.peer).map(|p| p.presence),
        Some(Presence::Reconnecting)
    );
    assert_eq!(h.slot(0).peer, Some(ana.peer), "nobody else can take it");
    assert_eq!(h.room.next_deadline(), Some(secs(10.0) + GRACE));

    // Meanwhile another singer arrives and gets the other slot.
    let ben = h.join(secs(12.0), 2, "Ben", Role::Singer);
    assert_eq!(ben.slot, Some(SlotId(1)));
    let extra = h.request("Cleo", Role::Singer);
    assert_eq!(
        h.join_with(secs(13.0), 3, extra),
        Err(Refusal::Full(Role::Singer))
    );
    h.take();

    // Back 25 s later on a new connection with the token.
    let back = h.rejoin(secs(35.0), 4, ana.token);
    assert!(back.rejoined);
    assert_eq!(
        (back.peer, back.slot, back.name.as_str()),
        (ana.peer, Some(SlotId(0)), "Ana")
    );
    assert_eq!(back.settings, Some(settings));
    assert_eq!(h.slot(0).settings, settings);
    let actions = h.take();
    assert!(engine_commands(&actions).is_empty(), "same engine seat");
    assert_eq!(
        routes(&actions),
        vec![(ConnId(4), MixId::Personal(ana.peer.singer()))]
    );
    assert_eq!(
        h.deadline_of(ana.peer),
        Some(secs(35.0) + JOIN_DEADLINE),
        "the new connection must go live in time"
    );
    // The old connection has no power any more, the new one has.
    assert_eq!(
        h.handle(secs(36.0), Input::Leave { conn: ConnId(1) }),
        Err(Refusal::NotJoined)
    );
    h.media(secs(36.0), 4, MediaState::Connected);
    assert_eq!(
        h.participant(ana.peer).map(|p| p.presence),
        Some(Presence::Live)
    );
    assert_eq!(h.deadline_of(ana.peer), None);
}

#[test]
fn the_grace_expiring_frees_the_slot_and_the_token() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.media(secs(0.5), 1, MediaState::Connected);
    h.mix(secs(1.0), 1, Some(0.4), None);
    h.media(secs(5.0), 1, MediaState::Failed);
    h.take();
    let due = secs(5.0) + GRACE;
    assert_eq!(h.room.next_deadline(), Some(due));
    h.handle(due - Duration::from_millis(1), Input::Tick)
        .expect("tick");
    assert_eq!(h.slot(0).peer, Some(ana.peer), "not yet");
    assert!(h.take().is_empty());
    h.handle(due, Input::Tick).expect("tick");
    let actions = h.take();
    assert_eq!(
        engine_commands(&actions),
        vec![Command::RemoveSinger(ana.peer.singer())]
    );
    assert!(byes(&actions).is_empty(), "no connection to tell");
    assert_eq!(h.slot(0).peer, None);
    assert_eq!(h.room.next_deadline(), None);
    // The token is spent: coming back now is a fresh join, with fresh own settings.
    let again = h.rejoin(due + secs(1.0), 2, ana.token);
    assert!(!again.rejoined);
    assert_ne!(again.peer, ana.peer);
    assert_eq!(again.settings.map(|s| s.monitor), Some(0.0));
}

#[test]
fn a_rejoin_while_the_old_connection_is_still_open_replaces_it() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.media(secs(0.5), 1, MediaState::Connected);
    h.take();
    // The phone noticed the drop before the box did.
    let back = h.rejoin(secs(3.0), 2, ana.token);
    assert_eq!(back.peer, ana.peer);
    let actions = h.take();
    assert_eq!(byes(&actions), vec![(ConnId(1), ByeReason::Replaced)]);
    // The old connection's last words change nothing.
    h.handle(secs(4.0), Input::Closed { conn: ConnId(1) })
        .expect("closed");
    h.media(secs(4.0), 1, MediaState::Failed);
    assert!(h.take().is_empty());
    assert_eq!(h.room.next_deadline(), Some(secs(3.0) + JOIN_DEADLINE));
    assert_eq!(h.slot(0).peer, Some(ana.peer));
}

#[test]
fn a_join_that_never_goes_live_loses_its_place_at_the_deadline() {
    let mut h = Harness::new(config());
    // Two sockets join as singers and never send an offer: both seats are taken...
    let idle_a = h.join(secs(0.0), 1, "Idle1", Role::Singer);
    h.join(secs(0.5), 2, "Idle2", Role::Singer);
    let real = h.request("Real", Role::Singer);
    assert_eq!(
        h.join_with(secs(1.0), 3, real),
        Err(Refusal::Full(Role::Singer))
    );
    assert_eq!(h.room.next_deadline(), Some(JOIN_DEADLINE));
    h.take();
    h.handle(JOIN_DEADLINE - Duration::from_millis(1), Input::Tick)
        .expect("tick");
    assert!(h.take().is_empty(), "not yet");
    // ...until their deadline: no grace for a place that never had media.
    h.handle(JOIN_DEADLINE, Input::Tick).expect("tick");
    let actions = h.take();
    assert_eq!(byes(&actions), vec![(ConnId(1), ByeReason::Timeout)]);
    assert_eq!(
        engine_commands(&actions),
        vec![Command::RemoveSinger(idle_a.peer.singer())]
    );
    h.handle(secs(10.5), Input::Tick).expect("tick");
    assert_eq!(h.room.view().counts(), (0, 0));
    let real = h.request("Real", Role::Singer);
    let welcome = h
        .join_with(secs(11.0), 3, real)
        .expect("a real singer gets a seat");
    assert_eq!(welcome.slot, Some(SlotId(0)));
}

#[test]
fn a_rejoin_that_never_goes_live_does_not_stretch_the_grace() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.media(secs(1.0), 1, MediaState::Connected);
    h.handle(secs(5.0), Input::Closed { conn: ConnId(1) })
        .expect("closed");
    // Comes back with its token again and again, never with media.
    let mut now = secs(6.0);
    let mut conn = 10;
    while h.participant(ana.peer).is_some() {
        assert!(
            now < secs(5.0) + GRACE + JOIN_DEADLINE + secs(1.0),
            "still holding the slot at {now:?}"
        );
        h.rejoin(now, conn, ana.token);
        now += JOIN_DEADLINE;
        h.handle(now, Input::Tick).expect("tick");
        conn += 1;
    }
    assert!(now <= secs(5.0) + GRACE + JOIN_DEADLINE, "gone at {now:?}");
    assert_eq!(h.slot(0).peer, None);
}

#[test]
fn pin_guessing_is_slowed_per_address_while_others_join_at_once() {
    use super::super::throttle::FREE_FAILURES;
    use std::net::{IpAddr, Ipv4Addr};
    let mut h = Harness::new(RoomConfig {
        pin: "4711".into(),
        ..config()
    });
    let guesser = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66));
    let phone = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let guess = |h: &mut Harness, now: Duration, conn: u64, pin: &str, from: IpAddr| {
        let mut r = h.request("x", Role::Listener);
        r.pin = Some(pin.into());
        r.from = Some(from);
        h.join_with(now, conn, r)
    };
    let mut now = secs(0.0);
    for k in 0..FREE_FAILURES {
        assert_eq!(
            guess(&mut h, now, u64::from(k), "0000", guesser),
            Err(Refusal::WrongPin)
        );
        now += secs(0.001);
    }
    // Now it must wait, and the right PIN does not help it meanwhile.
    assert_eq!(
        guess(&mut h, now, 100, "4711", guesser),
        Err(Refusal::SlowDown(secs(1.0) - secs(0.001)))
    );
    // A phone from another address joins at once.
    assert!(guess(&mut h, now, 101, "4711", phone).is_ok());
    // After the wait, the right PIN is accepted and the record cleared.
    now += secs(1.0);
    assert!(guess(&mut h, now, 102, "4711", guesser).is_ok());
    assert!(guess(&mut h, now, 103, "0000", guesser) == Err(Refusal::WrongPin));
}

#[test]
fn a_whip_client_that_fails_leaves_at_once() {
    let mut h = Harness::new(config());
    let mut request = h.request("whip", Role::Singer);
    request.rejoinable = false;
    let w = h.join_with(secs(0.0), 1, request).expect("whip");
    h.take();
    h.media(secs(6.0), 1, MediaState::Failed);
    let actions = h.take();
    assert_eq!(byes(&actions), vec![(ConnId(1), ByeReason::Timeout)]);
    assert_eq!(
        engine_commands(&actions),
        vec![Command::RemoveSinger(w.peer.singer())]
    );
    assert_eq!(h.room.view().counts(), (0, 0));
    assert_eq!(h.room.next_deadline(), None);
}

#[test]
fn delete_by_token_ends_only_that_participant() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let ben = h.join(secs(0.0), 2, "Ben", Role::Singer);
    h.take();
    assert_eq!(
        h.handle(secs(1.0), Input::LeaveByToken { token: token(99) }),
        Err(Refusal::UnknownPeer)
    );
    h.handle(secs(1.0), Input::LeaveByToken { token: ben.token })
        .expect("delete");
    assert_eq!(byes(&h.take()), vec![(ConnId(2), ByeReason::Left)]);
    assert!(h.participant(ana.peer).is_some());
    assert!(h.participant(ben.peer).is_none());
}

#[test]
fn the_host_kicks_a_singer_who_cannot_come_back_with_the_token() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let ben = h.join(secs(0.0), 2, "Ben", Role::Singer);
    h.take();
    h.handle(secs(5.0), Input::Kick { peer: ana.peer })
        .expect("kick");
    let actions = h.take();
    assert_eq!(byes(&actions), vec![(ConnId(1), ByeReason::Kicked)]);
    assert_eq!(
        engine_commands(&actions),
        vec![Command::RemoveSinger(ana.peer.singer())]
    );
    assert_eq!(h.slot(0).peer, None);
    assert!(h.participant(ben.peer).is_some(), "the partner stays");
    assert_eq!(
        h.handle(secs(5.0), Input::Kick { peer: ana.peer }),
        Err(Refusal::UnknownPeer)
    );
    let again = h.rejoin(secs(6.0), 3, ana.token);
    assert!(!again.rejoined, "the kicked token is gone");
    assert_ne!(again.peer, ana.peer);
}

#[test]
fn a_kicked_reconnecting_singer_frees_the_slot_without_a_bye() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.media(secs(0.5), 1, MediaState::Connected);
    h.handle(secs(1.0), Input::Closed { conn: ConnId(1) })
        .expect("closed");
    h.take();
    h.handle(secs(2.0), Input::Kick { peer: ana.peer })
        .expect("kick");
    let actions = h.take();
    assert!(byes(&actions).is_empty());
    assert_eq!(h.slot(0).peer, None);
    assert_eq!(h.room.next_deadline(), None);
}

#[test]
fn slot_settings_set_by_the_host_wait_for_the_next_singer() {
    let mut h = Harness::new(config());
    h.handle(
        secs(0.0),
        Input::SetSlot {
            slot: SlotId(1),
            change: SlotChange {
                gain_db: Some(-6.0),
                pan: Some(0.7),
                monitor: Some(0.9),
                ..SlotChange::default()
            },
        },
    )
    .expect("preset");
    assert!(engine_commands(&h.take()).is_empty(), "nobody to command");
    h.join(secs(1.0), 1, "Ana", Role::Singer);
    let ben = h.join(secs(1.0), 2, "Ben", Role::Singer);
    let expected = SingerSettings {
        gain_db: -6.0,
        pan: 0.7,
        ..SingerSettings::default()
    };
    assert_eq!(
        ben.settings,
        Some(expected),
        "host's kept, singer's own reset"
    );
    assert!(engine_commands(&h.take()).contains(&Command::AddSinger {
        singer: ben.peer.singer(),
        settings: expected
    }));
}

#[test]
fn master_and_backing_levels_are_room_state() {
    let mut h = Harness::new(config());
    h.handle(secs(0.0), Input::SetMaster { gain_db: -3.0 })
        .expect("master");
    h.handle(
        secs(0.0),
        Input::SetBacking {
            gain_db: None,
            muted: Some(true),
            source: None,
        },
    )
    .expect("mute backing");
    h.handle(
        secs(0.0),
        Input::SetBacking {
            gain_db: Some(-12.0),
            muted: None,
            source: None,
        },
    )
    .expect("backing level");
    assert_eq!(
        engine_commands(&h.take()),
        vec![
            Command::SetMaster { gain_db: -3.0 },
            Command::SetBacking {
                gain_db: -6.0,
                muted: true
            },
            Command::SetBacking {
                gain_db: -12.0,
                muted: true
            },
        ]
    );
    let view = h.room.view();
    assert_eq!(
        (
            view.master_gain_db,
            view.backing_gain_db,
            view.backing_muted
        ),
        (-3.0, -12.0, true)
    );
}

#[test]
fn shutdown_says_goodbye_to_everyone_and_admits_nobody() {
    let mut h = Harness::new(config());
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.join(secs(0.0), 2, "Lia", Role::Listener);
    h.join(secs(0.0), 3, "Ben", Role::Singer);
    h.handle(secs(1.0), Input::Closed { conn: ConnId(3) })
        .expect("closed");
    h.take();
    h.handle(secs(2.0), Input::Shutdown).expect("shutdown");
    let mut got = byes(&h.take());
    got.sort_by_key(|(conn, _)| *conn);
    assert_eq!(
        got,
        vec![
            (ConnId(1), ByeReason::Shutdown),
            (ConnId(2), ByeReason::Shutdown)
        ]
    );
    assert_eq!(h.room.view().counts(), (0, 0));
    let late = h.request("Late", Role::Singer);
    assert_eq!(h.join_with(secs(3.0), 4, late), Err(Refusal::ShuttingDown));
}

#[test]
fn figures_become_levels_delay_and_loss_of_the_last_interval() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let figures = |lost, packets| SingerFigures {
        level_db: -12.0,
        delay_ms: 7.5,
        packet_ms: 20.0,
        lost,
        packets,
    };
    h.handle(
        secs(0.1),
        Input::Figures {
            singer: ana.peer.singer(),
            figures: figures(0, 5),
        },
    )
    .expect("figures");
    h.handle(
        secs(0.2),
        Input::Figures {
            singer: ana.peer.singer(),
            figures: figures(1, 14),
        },
    )
    .expect("figures");
    let p = h.participant(ana.peer).expect("ana");
    assert_eq!((p.level_db, p.delay_ms), (-12.0, 7.5));
    assert!((p.loss_pct - 10.0).abs() < 1e-4, "1 of 10: {}", p.loss_pct);
    // Figures of a singer who has gone are dropped.
    h.handle(secs(0.3), Input::Leave { conn: ConnId(1) })
        .expect("leave");
    h.take();
    h.handle(
        secs(0.3),
        Input::Figures {
            singer: ana.peer.singer(),
            figures: figures(1, 20),
        },
    )
    .expect("late figures");
    assert!(h.take().is_empty());
}

#[test]
fn changed_is_emitted_once_per_input() {
    let mut h = Harness::new(config());
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    let changed = h.take().iter().filter(|a| **a == Action::Changed).count();
    assert_eq!(changed, 1);
}

#[test]
fn slot_names_and_tokens_read_back() {
    let names: Vec<String> = [0, 1, 25, 26, 27, 31]
        .iter()
        .map(|&k| SlotId(k).to_string())
        .collect();
    assert_eq!(names, ["A", "B", "Z", "AA", "AB", "AF"]);
    for k in 0..40 {
        assert_eq!(SlotId::parse(&SlotId(k).to_string()), Some(SlotId(k)));
    }
    assert_eq!(SlotId::parse("b"), Some(SlotId(1)));
    assert_eq!(SlotId::parse(""), None);
    assert_eq!(SlotId::parse("A1"), None);
    let t = Token([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xa, 0xb, 0xc, 0xd, 0xe, 0xff]);
    let text = t.to_string();
    assert_eq!(text, "000102030405060708090a0b0c0d0eff");
    assert_eq!(Token::parse(&text), Some(t));
    assert_eq!(Token::parse(&text.to_uppercase()), Some(t));
    assert_eq!(Token::parse(&text[1..]), None);
    assert_eq!(Token::parse("zz0102030405060708090a0b0c0d0eff"), None);
    assert_eq!(format!("{t:?}"), "Token(..)", "secrets never reach a log");
    assert_eq!(PeerId(7).to_string(), "p7");
}

#[derive(Clone, Debug)]
enum Op {
    Join(u8, bool, bool),
    Rejoin(u8, u8),
    Media(u8, u8),
    Closed(u8),
    Leave(u8),
    Kick(u8),
    Mix(u8, f32),
    Mute(u8, bool),
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8, any::<bool>(), any::<bool>()).prop_map(|(c, s, r)| Op::Join(c, s, r)),
        (0u8..8, 0u8..12).prop_map(|(c, t)| Op::Rejoin(c, t)),
        (0u8..8, 0u8..3).prop_map(|(c, s)| Op::Media(c, s)),
        (0u8..8).prop_map(Op::Closed),
        (0u8..8).prop_map(Op::Leave),
        (0u8..12).prop_map(Op::Kick),
        (0u8..8, -0.5f32..1.5).prop_map(|(c, m)| Op::Mix(c, m)),
        (0u8..3, any::<bool>()).prop_map(|(s, m)| Op::Mute(s, m)),
        (0u16..40_000).prop_map(Op::Tick),
    ]
}

proptest! {
    /// Whatever happens, in any order: slots and the engine's seats agree, limits hold,
    /// every `AddSinger` is matched by at most one `RemoveSinger`, and every route goes
    /// to a connection that is some participant's current one.
    #[test]
    fn any_sequence_keeps_slots_seats_and_limits_consistent(ops in proptest::collection::vec(op(), 1..120)) {
        let mut h = Harness::new(RoomConfig { max_singers: 3, max_listeners: 2, ..config() });
        let mut now = Duration::ZERO;
        let mut conn_of = [0u64; 8];
        let mut next_conn = 1u64;
        let mut tokens: Vec<Token> = Vec::new();
        let mut seated: BTreeSet<SingerId> = BTreeSet::new();
        let mut ever_removed: BTreeSet<SingerId> = BTreeSet::new();
        for op in ops {
            now += Duration::from_millis(100);
            let ticked = matches!(op, Op::Tick(_));
            let _ = match op {
                Op::Join(c, singer, rejoinable) => {
                    conn_of[c as usize] = next_conn;
                    next_conn += 1;
                    let mut r = h.request("x", if singer { Role::Singer } else { Role::Listener });
                    r.rejoinable = rejoinable;
                    let result = h.join_with(now, conn_of[c as usize], r);
                    if let Ok(w) = &result {
                        tokens.push(w.token);
                    }
                    result.map(Reply::Joined)
                }
                Op::Rejoin(c, t) => {
                    conn_of[c as usize] = next_conn;
                    next_conn += 1;
                    let mut r = h.request("x", Role::Singer);
                    r.token = tokens.get(t as usize).copied();
                    h.join_with(now, conn_of[c as usize], r).map(Reply::Joined)
                }
                Op::Media(c, s) => h.handle(now, Input::Media {
                    conn: ConnId(conn_of[c as usize]),
                    state: [MediaState::Connected, MediaState::Disconnected, MediaState::Failed][s as usize],
                }),
                Op::Closed(c) => h.handle(now, Input::Closed { conn: ConnId(conn_of[c as usize]) }),
                Op::Leave(c) => h.handle(now, Input::Leave { conn: ConnId(conn_of[c as usize]) }),
                Op::Kick(p) => h.handle(now, Input::Kick { peer: PeerId(u32::from(p)) }),
                Op::Mix(c, m) => h.handle(now, Input::Mix { conn: ConnId(conn_of[c as usize]), monitor: Some(m), reverb: None }),
                Op::Mute(s, m) => h.handle(now, Input::SetSlot { slot: SlotId(s as usize), change: SlotChange { muted: Some(m), ..SlotChange::default() } }),
                Op::Tick(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    h.handle(now, Input::Tick)
                }
            };
            let mut routed = Vec::new();
            for action in h.take() {
                match action {
                    Action::Engine(Command::AddSinger { singer, .. }) => {
                        prop_assert!(seated.insert(singer), "{singer} added twice");
                        prop_assert!(!ever_removed.contains(&singer), "{singer} re-added after removal");
                    }
                    Action::Engine(Command::RemoveSinger(singer)) => {
                        prop_assert!(seated.remove(&singer), "{singer} removed but not seated");
                        ever_removed.insert(singer);
                    }
                    Action::Engine(Command::SetSinger { singer, .. }) => {
                        prop_assert!(seated.contains(&singer), "{singer} set but not seated");
                    }
                    Action::Route { conn, .. } => routed.push(conn),
                    _ => {}
                }
            }
            // A route always names a connection that is someone's current one.
            let current: BTreeSet<ConnId> = h.room.participants.values().filter_map(|p| p.conn).collect();
            for conn in routed {
                prop_assert!(current.contains(&conn), "route to {conn}, nobody's connection");
            }
            let view = h.room.view();
            let (singers, listeners) = view.counts();
            prop_assert!(singers <= 3 && listeners <= 2);
            let holders: BTreeSet<PeerId> = view.slots.iter().filter_map(|s| s.peer).collect();
            let singer_peers: BTreeSet<PeerId> = view.participants.iter().filter(|p| p.role == Role::Singer).map(|p| p.peer).collect();
            prop_assert_eq!(&holders, &singer_peers);
            let seated_peers: BTreeSet<PeerId> = seated.iter().map(|s| PeerId(s.0)).collect();
            prop_assert_eq!(&seated_peers, &singer_peers);
            for p in &view.participants {
                prop_assert_eq!(p.slot.is_some(), p.role == Role::Singer);
                if let Some(slot) = p.slot {
                    prop_assert_eq!(view.slots[slot.0].peer, Some(p.peer));
                }
            }
            if let (true, Some(deadline)) = (ticked, h.room.next_deadline()) {
                prop_assert!(deadline > now, "an overdue deadline: {:?} at {:?}", deadline, now);
            }
        }
    }
}

// ---- The night: queue, transport, stage --------------------------------------------

fn song(n: u64) -> SongRef {
    SongRef {
        id: crate::songs::library::SongId(n),
        title: format!("Song {n}"),
        artist: None,
        path: format!("/songs/{n}.ogg").into(),
        duration: Some(Duration::from_secs(180)),
    }
}

fn queue_add(
    h: &mut Harness,
    conn: u64,
    n: u64,
    partner: Option<PeerId>,
) -> Result<EntryId, Refusal> {
    let input = Input::QueueAdd {
        conn: ConnId(conn),
        song: song(n),
        partner,
    };
    match h.handle(secs(1.0), input)? {
        Reply::Queued(id) => Ok(id),
        other => panic!("a queue_add answers with the entry: {other:?}"),
    }
}

fn players(actions: &[Action]) -> Vec<PlayerCommand> {
    pick(actions, |a| match a {
        Action::Player(c) => Some(c.clone()),
        _ => None,
    })
}

#[test]
fn starting_an_entry_puts_its_singers_on_a_and_b_and_plays_it() {
    let mut h = Harness::new(RoomConfig {
        max_singers: 3,
        ..config()
    });
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let ben = h.join(secs(0.0), 2, "Ben", Role::Singer);
    let cleo = h.join(secs(0.0), 3, "Cleo", Role::Singer);
    assert_eq!(cleo.slot, Some(SlotId(2)));
    // Ana's and Cleo's own mix settings, and the host's on slot A.
    h.mix(secs(0.5), 3, Some(0.4), Some(0.2));
    h.mix(secs(0.5), 1, Some(0.1), None);
    h.handle(
        secs(0.5),
        Input::SetSlot {
            slot: SlotId(0),
            change: SlotChange {
                pan: Some(-0.5),
                ..SlotChange::default()
            },
        },
    )
    .unwrap();
    // Cleo sings a duet with Ana: Cleo goes to A, Ana to B, Ben to C.
    let entry = queue_add(&mut h, 3, 7, Some(ana.peer)).unwrap();
    h.take();
    h.handle(secs(2.0), Input::Transport(Transport::Start(entry)))
        .unwrap();
    let actions = h.take();
    assert_eq!(h.participant(cleo.peer).unwrap().slot, Some(SlotId(0)));
    assert_eq!(h.participant(ana.peer).unwrap().slot, Some(SlotId(1)));
    assert_eq!(h.participant(ben.peer).unwrap().slot, Some(SlotId(2)));
    // The host's pan stays with slot A; each singer's monitor and reverb go with them.
    let a = h.slot(0);
    assert_eq!((a.peer, a.settings.pan), (Some(cleo.peer), -0.5));
    assert_eq!((a.settings.monitor, a.settings.reverb_wet), (0.4, 0.2));
    assert_eq!(h.slot(1).settings.monitor, 0.1);
    let commands = engine_commands(&actions);
    assert!(commands.contains(&Command::SetSinger {
        singer: cleo.peer.singer(),
        settings: a.settings
    }));
    let generation = commands
        .iter()
        .find_map(|c| match c {
            Command::Backing { generation, paused } => {
                assert!(!paused);
                Some(*generation)
            }
            _ => None,
        })
        .expect("the engine is told the new generation");
    assert_eq!(
        players(&actions),
        vec![PlayerCommand::Play {
            generation,
            path: "/songs/7.ogg".into(),
            from: Duration::ZERO,
            count_in: Duration::ZERO,
            beats: 0,
        }]
    );
    let view = h.room.view();
    assert!(view.queue.is_empty());
    let song_view = view.song.expect("a song plays");
    assert_eq!(song_view.entry.singers.len(), 2);
    assert_eq!(song_view.entry.singers[0].1, "Cleo");
}

#[test]
fn the_queue_refuses_listeners_strangers_and_floods_and_changes_nothing() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let lee = h.join(secs(0.0), 2, "Lee", Role::Listener);
    h.take();
    assert_eq!(queue_add(&mut h, 2, 1, None), Err(Refusal::NotASinger));
    assert_eq!(queue_add(&mut h, 9, 1, None), Err(Refusal::NotJoined));
    assert_eq!(
        queue_add(&mut h, 1, 1, Some(lee.peer)),
        Err(Refusal::NotASinger),
        "a listener is no duet partner"
    );
    assert_eq!(
        queue_add(&mut h, 1, 1, Some(PeerId(999))),
        Err(Refusal::UnknownPeer)
    );
    assert!(h.take().is_empty(), "refusals change nothing");
    let first = queue_add(&mut h, 1, 1, Some(ana.peer)).unwrap();
    assert_eq!(
        h.room.view().queue[0].singers.len(),
        1,
        "naming oneself as partner is a solo"
    );
    for n in 2..=3 {
        queue_add(&mut h, 1, n, None).unwrap();
    }
    assert_eq!(
        queue_add(&mut h, 1, 4, None),
        Err(Refusal::Night(NightRefusal::TooManyEntries))
    );
    // Only the host removes or reorders; a singer withdraws only what names them.
    let other = h.join(secs(2.0), 3, "Oli", Role::Listener);
    let _ = other;
    let input = Input::QueueWithdraw {
        conn: ConnId(2),
        entry: first,
    };
    assert_eq!(
        h.handle(secs(2.0), input),
        Err(Refusal::Night(NightRefusal::NotYours))
    );
    let input = Input::QueueWithdraw {
        conn: ConnId(1),
        entry: first,
    };
    h.handle(secs(2.0), input).unwrap();
    assert_eq!(h.room.view().queue.len(), 2);
}

#[test]
fn a_singer_who_leaves_for_good_goes_off_the_queue() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let ben = h.join(secs(0.0), 2, "Ben", Role::Singer);
    queue_add(&mut h, 1, 1, Some(ben.peer)).unwrap();
    queue_add(&mut h, 2, 2, None).unwrap();
    h.handle(secs(1.0), Input::Kick { peer: ben.peer }).unwrap();
    let view = h.room.view();
    assert_eq!(view.queue.len(), 1, "Ben's solo is gone");
    assert_eq!(view.queue[0].singers, vec![(ana.peer, "Ana".to_string())]);
}

#[test]
fn the_host_pin_is_its_own_and_guessing_it_is_slowed() {
    let mut h = Harness::new(RoomConfig {
        pin: "1234".into(),
        host_pin: "9876".into(),
        ..config()
    });
    let from: IpAddr = "10.0.0.9".parse().unwrap();
    let login = |pin: &str| Input::HostLogin {
        pin: pin.into(),
        from: Some(from),
    };
    assert_eq!(
        h.handle(secs(0.0), login("1234")),
        Err(Refusal::WrongPin),
        "the singers' PIN is not the host's"
    );
    h.handle(secs(0.0), login("9876")).expect("the host PIN");
    for _ in 0..5 {
        assert_eq!(h.handle(secs(1.0), login("0000")), Err(Refusal::WrongPin));
    }
    assert!(
        matches!(
            h.handle(secs(1.0), login("9876")),
            Err(Refusal::SlowDown(_))
        ),
        "after five wrong guesses even the right PIN waits"
    );
    h.handle(secs(3.0), login("9876")).expect("after the wait");
    let mut none = Harness::new(config_without_host_pin());
    assert_eq!(
        none.handle(secs(0.0), login("")),
        Err(Refusal::WrongPin),
        "no host PIN, no host page"
    );
}

fn config_without_host_pin() -> RoomConfig {
    RoomConfig {
        host_pin: String::new(),
        ..config()
    }
}

#[test]
fn engine_feedback_moves_the_song_and_stale_news_is_ignored() {
    let mut h = Harness::new(config());
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    queue_add(&mut h, 1, 1, None).unwrap();
    queue_add(&mut h, 1, 2, None).unwrap();
    h.handle(secs(1.0), Input::Transport(Transport::Next))
        .unwrap();
    let first = h.room.view().song.unwrap().now.generation;
    h.handle(secs(1.1), Input::Transport(Transport::Next))
        .unwrap();
    let second = h.room.view().song.unwrap().now.generation;
    assert_ne!(first, second);
    h.take();
    // The first song's end arrives late: nothing happens.
    h.handle(
        secs(1.2),
        Input::Song(SongFeedback::Ended { generation: first }),
    )
    .unwrap();
    assert!(h.room.view().song.is_some());
    assert!(!h.take().contains(&Action::Changed));
    h.handle(
        secs(5.0),
        Input::Song(SongFeedback::Ended { generation: second }),
    )
    .unwrap();
    assert!(h.room.view().song.is_none());
    assert!(h.take().contains(&Action::Changed));
}

#[test]
fn the_host_picks_the_line_in_only_on_a_box_that_has_one() {
    let source = |s| Input::SetBacking {
        gain_db: None,
        muted: None,
        source: Some(s),
    };
    let mut without = Harness::new(RoomConfig {
        line_in: false,
        ..config()
    });
    let before = without.room.view();
    assert_eq!(
        without.handle(secs(0.0), source(BackingSource::LineIn)),
        Err(Refusal::Night(NightRefusal::NoLineIn))
    );
    assert_eq!(without.room.view(), before);
    assert!(without.take().is_empty());

    let mut h = Harness::new(config());
    h.handle(secs(0.0), source(BackingSource::LineIn))
        .expect("line-in");
    let actions = h.take();
    let starts: Vec<u32> = pick(&actions, |a| match a {
        Action::LineIn(LineInCommand::Start { generation }) => Some(*generation),
        _ => None,
    });
    assert_eq!(starts.len(), 1, "{actions:?}");
    assert!(
        engine_commands(&actions).contains(&Command::Backing {
            generation: starts[0],
            paused: false
        }),
        "the engine plays the line-in's generation: {actions:?}"
    );
    let view = h.room.view();
    assert_eq!(
        (view.backing_source, view.line_in_configured),
        (BackingSource::LineIn, true)
    );
    // The song transport waits while the line-in plays.
    assert_eq!(
        h.handle(secs(0.1), Input::Transport(Transport::Play)),
        Err(Refusal::Night(NightRefusal::LiveSourcePlays))
    );
    h.handle(secs(0.2), source(BackingSource::Songs))
        .expect("songs");
    assert!(h.take().contains(&Action::LineIn(LineInCommand::Stop)));
    assert_eq!(h.room.view().backing_source, BackingSource::Songs);
}

#[test]
fn a_backing_feed_needs_the_host_pin_takes_no_seat_and_hands_back_when_it_leaves() {
    let mut h = Harness::new(config());
    let feed = |h: &mut Harness, pin: Option<&str>| {
        let mut request = h.request("OBS", Role::Backing);
        request.pin = pin.map(str::to_string);
        request.rejoinable = false;
        request
    };
    // The singers' PIN is none here; the feed still needs the host's.
    for pin in [None, Some(""), Some("hos"), Some("host2")] {
        let request = feed(&mut h, pin);
        assert_eq!(
            h.join_with(secs(0.0), 9, request),
            Err(Refusal::WrongPin),
            "{pin:?}"
        );
    }
    let request = feed(&mut h, Some("host"));
    let welcome = h
        .join_with(secs(0.0), 10, request)
        .expect("the feed is admitted");
    assert_eq!((welcome.role, welcome.slot), (Role::Backing, None));
    let request = feed(&mut h, Some("host"));
    assert_eq!(
        h.join_with(secs(0.0), 11, request),
        Err(Refusal::Full(Role::Backing)),
        "one feed at a time"
    );
    assert_eq!(
        h.room.view().counts(),
        (0, 0),
        "a feed is neither singer nor listener"
    );
    let choose = |s| Input::SetBacking {
        gain_db: None,
        muted: None,
        source: Some(s),
    };
    // Not before its media is up.
    assert_eq!(
        h.handle(secs(0.1), choose(BackingSource::Whip)),
        Err(Refusal::Night(NightRefusal::NoFeed))
    );
    h.handle(
        secs(0.2),
        Input::Media {
            conn: ConnId(10),
            state: MediaState::Connected,
        },
    )
    .expect("media");
    h.take();
    h.handle(secs(0.3), choose(BackingSource::Whip))
        .expect("the feed is the backing");
    let actions = h.take();
    let opened: Vec<u32> = pick(&actions, |a| match a {
        Action::Feed(Some(g)) => Some(*g),
        _ => None,
    });
    assert_eq!(opened.len(), 1, "{actions:?}");
    assert!(engine_commands(&actions).contains(&Command::Backing {
        generation: opened[0],
        paused: false
    }));
    // The feed leaves: its audio is shut out and the songs have the backing again.
    h.handle(secs(1.0), Input::Leave { conn: ConnId(10) })
        .expect("leave");
    assert!(h.take().contains(&Action::Feed(None)));
    assert_eq!(h.room.view().backing_source, BackingSource::Songs);
}

/// A phone's playout report on `conn`: it plays `delay_ms` behind the speakers,
/// `extra_ms` of it its own extra delay.
fn playout(conn: u64, delay_ms: i64, extra_ms: i64) -> Input {
    Input::Playout {
        conn: ConnId(conn),
        delay_us: delay_ms * 1000,
        extra_us: extra_ms * 1000,
    }
}

#[test]
fn playout_reports_set_the_lead_and_each_phones_offset() {
    let mut h = Harness::new(config());
    let mia = h.join(secs(0.0), 1, "Mia", Role::Singer);
    let lou = h.join(secs(0.0), 2, "Lou", Role::Listener);
    h.take();
    // The listener plays 70 ms behind the speakers, the singer 10 ms: the lead covers
    // the listener (and 5 ms), and each is told how far it is from it.
    let steer = |r: Result<Reply, Refusal>| match r {
        Ok(Reply::Sync(s)) => s,
        other => panic!("a playout report answers with a steer: {other:?}"),
    };
    let s = steer(h.handle(secs(1.0), playout(2, 70, 0)));
    assert_eq!((s.lead_us, s.offset_us), (75_000, -5_000));
    let s = steer(h.handle(secs(1.1), playout(1, 10, 0)));
    assert_eq!((s.lead_us, s.offset_us), (75_000, -65_000));
    assert_eq!(
        engine_commands(&h.take()),
        vec![Command::SetLead { frames: 3_600 }],
        "the engine is told the lead once"
    );
    assert_eq!(h.participant(mia.peer).and_then(|p| p.sync_ms), Some(-65.0));
    assert_eq!(h.participant(lou.peer).and_then(|p| p.sync_ms), Some(-5.0));
    assert_eq!(h.room.view().lead_ms, 75.0);
    // A stranger's connection has no say.
    assert_eq!(
        h.handle(secs(1.2), playout(9, 500, 0)),
        Err(Refusal::NotJoined)
    );
    // A live source has nothing queued ahead: no lead while it plays; back with songs.
    let source = |s| Input::SetBacking {
        gain_db: None,
        muted: None,
        source: Some(s),
    };
    h.handle(secs(2.0), source(BackingSource::LineIn)).unwrap();
    assert!(engine_commands(&h.take()).contains(&Command::SetLead { frames: 0 }));
    h.handle(secs(3.0), source(BackingSource::Songs)).unwrap();
    assert!(engine_commands(&h.take()).contains(&Command::SetLead { frames: 3_600 }));
    // The listener leaves: ten seconds later the lead falls, by 5 ms a second, to what
    // the singer needs.
    h.handle(secs(4.0), Input::Leave { conn: ConnId(2) })
        .unwrap();
    for k in 0..50 {
        h.handle(secs(4.5 + 0.5 * f64::from(k)), playout(1, 10, 0))
            .unwrap();
    }
    assert_eq!(h.room.view().lead_ms, 15.0);
    assert!(engine_commands(&h.take()).contains(&Command::SetLead { frames: 720 }));
}

/// A phone's calibration report: round trip and output latency, ms.
fn calibrated(conn: u64, round_trip_ms: u64, output_ms: u64) -> Input {
    Input::Calibrated {
        conn: ConnId(conn),
        calibration: Calibration {
            round_trip: Duration::from_millis(round_trip_ms),
            output: Duration::from_millis(output_ms),
        },
    }
}

#[test]
fn a_calibration_is_kept_with_the_token_and_nonsense_is_refused() {
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    assert_eq!(ana.calibration, None);
    h.media(secs(0.5), 1, MediaState::Connected);
    h.take();
    assert_eq!(h.handle(secs(1.0), calibrated(1, 45, 12)), Ok(Reply::Done));
    assert!(h.take().contains(&Action::Changed), "the host sees it");
    assert_eq!(
        h.participant(ana.peer).and_then(|p| p.round_trip_ms),
        Some(45.0)
    );
    // Out of range, or an output longer than the round trip: refused, nothing changes.
    for (round_trip, output, field) in [
        (0, 0, "round_trip_ms"),
        (501, 0, "round_trip_ms"),
        (45, 46, "output_ms"),
    ] {
        assert_eq!(
            h.handle(secs(1.1), calibrated(1, round_trip, output)),
            Err(Refusal::OutOfRange(field))
        );
    }
    // A stranger's connection has no say.
    assert_eq!(
        h.handle(secs(1.2), calibrated(9, 80, 0)),
        Err(Refusal::NotJoined)
    );
    assert_eq!(
        h.participant(ana.peer).and_then(|p| p.round_trip_ms),
        Some(45.0)
    );
    // The phone drops and comes back with its token: the calibration is still there.
    h.media(secs(5.0), 1, MediaState::Failed);
    let back = h.rejoin(secs(6.0), 2, ana.token);
    assert!(back.rejoined);
    let kept = back.calibration.expect("kept with the token");
    assert_eq!(
        (kept.round_trip, kept.capture()),
        (Duration::from_millis(45), Duration::from_millis(33))
    );
}

/// The player opened the song playing: its generation.
fn opened(h: &mut Harness, at: Duration) -> u32 {
    let generation = h.room.view().song.expect("a song").now.generation;
    let news = SongFeedback::Opened {
        generation,
        duration: None,
    };
    h.handle(at, Input::Song(news)).unwrap();
    generation
}

fn record_actions(actions: &[Action]) -> Vec<Action> {
    pick(actions, |a| match a {
        Action::Record(_) | Action::RecordStop => Some(a.clone()),
        _ => None,
    })
}

#[test]
fn every_song_is_recorded_from_open_to_end_and_only_its_singers_are_named() {
    use crate::control::recording::RecordingNews;
    let mut h = Harness::new(RoomConfig {
        record: true,
        ..config()
    });
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let ben = h.join(secs(0.0), 2, "Ben", Role::Singer);
    h.media(secs(0.5), 1, MediaState::Connected);
    h.handle(secs(0.6), calibrated(1, 45, 12)).unwrap();
    let solo = queue_add(&mut h, 1, 7, None).unwrap();
    let duet = queue_add(&mut h, 2, 8, Some(ana.peer)).unwrap();
    h.take();
    h.handle(secs(2.0), Input::Transport(Transport::Start(solo)))
        .unwrap();
    assert_eq!(
        record_actions(&h.take()),
        vec![],
        "a song still loading is not recorded (it may fail)"
    );
    let generation = opened(&mut h, secs(2.1));
    let started = record_actions(&h.take());
    let [Action::Record(plan)] = started.as_slice() else {
        panic!("one recording starts: {started:?}");
    };
    assert_eq!((plan.entry, plan.generation), (solo, generation));
    assert_eq!(plan.voices.len(), 1, "only the song's singer: {plan:?}");
    assert_eq!(plan.voices[0].peer, ana.peer);
    // Capture 33 ms, one 20 ms packet (none decoded yet), no one-way time measured, the
    // encoder's 6.5 ms look-ahead.
    assert_eq!(plan.voices[0].to_the_box, Duration::from_micros(59_500));
    assert_eq!(h.room.view().recordings.now.as_deref(), Some("Song 7"));
    // A pause, a seek and position news are part of the same recording.
    h.handle(secs(3.0), Input::Transport(Transport::Pause))
        .unwrap();
    h.handle(secs(3.5), Input::Transport(Transport::Seek(secs(10.0))))
        .unwrap();
    h.handle(secs(4.0), Input::Transport(Transport::Play))
        .unwrap();
    assert_eq!(record_actions(&h.take()), vec![]);
    // The next song: this recording ends, the duet's starts with both singers.
    h.handle(secs(5.0), Input::Transport(Transport::Start(duet)))
        .unwrap();
    assert_eq!(record_actions(&h.take()), vec![Action::RecordStop]);
    opened(&mut h, secs(5.1));
    let started = record_actions(&h.take());
    let [Action::Record(plan)] = started.as_slice() else {
        panic!("the duet's recording starts: {started:?}");
    };
    let voices: Vec<PeerId> = plan.voices.iter().map(|v| v.peer).collect();
    assert_eq!(voices, vec![ben.peer, ana.peer]);
    // The solo's recording is done: listed with its singer.
    h.handle(
        secs(5.5),
        Input::Recorded(RecordingNews::Finished {
            entry: solo,
            id: "0123456789abcdef0123456789abcdef".into(),
            title: "Song 7".into(),
            singers: vec![ana.peer],
            files: vec!["mix.opus".into()],
            length: secs(3.0),
        }),
    )
    .unwrap();
    let view = h.room.view().recordings;
    assert_eq!(view.takes.len(), 1);
    assert_eq!(view.takes[0].singers, vec![(ana.peer, "Ana".to_string())]);
    assert_eq!(view.now.as_deref(), Some("Song 8"));
    // The duet's recording fails (a full disk): the host reads why; the song plays on
    // and is not recorded again.
    h.handle(
        secs(6.0),
        Input::Recorded(RecordingNews::Failed {
            entry: duet,
            title: "Song 8".into(),
            reason: "the disk is full".into(),
        }),
    )
    .unwrap();
    h.handle(secs(6.5), Input::Transport(Transport::Pause))
        .unwrap();
    h.handle(secs(7.0), Input::Transport(Transport::Play))
        .unwrap();
    let view = h.room.view().recordings;
    assert_eq!(view.problem.as_deref(), Some("Song 8: the disk is full"));
    assert_eq!(view.now, None);
    assert!(h.room.view().song.is_some(), "the music plays on");
    assert_eq!(record_actions(&h.take()), vec![]);
    // The song stops: the (failed) recording is closed.
    h.handle(secs(8.0), Input::Transport(Transport::Stop))
        .unwrap();
    assert_eq!(record_actions(&h.take()), vec![Action::RecordStop]);
}

#[test]
fn a_box_that_does_not_record_plans_no_recording() {
    let mut h = Harness::new(config());
    h.join(secs(0.0), 1, "Ana", Role::Singer);
    let solo = queue_add(&mut h, 1, 7, None).unwrap();
    h.handle(secs(2.0), Input::Transport(Transport::Start(solo)))
        .unwrap();
    opened(&mut h, secs(2.1));
    h.handle(secs(3.0), Input::Transport(Transport::Stop))
        .unwrap();
    assert_eq!(record_actions(&h.take()), vec![]);
}

fn venue_delays(actions: &[Action]) -> Vec<Command> {
    engine_commands(actions)
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                Command::SetVenueDelay { .. } | Command::SetVoiceDelay { .. }
            )
        })
        .collect()
}

#[test]
fn an_in_ear_song_holds_the_speakers_back_for_the_slowest_voice_and_a_stage_song_does_not() {
    use crate::control::night::SyncMode;
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    let ben = h.join(secs(0.0), 2, "Ben", Role::Singer);
    h.media(secs(0.5), 1, MediaState::Connected);
    h.media(secs(0.5), 2, MediaState::Connected);
    // Ana's phone captures 33 ms late (calibrated) and sends 10 ms packets; Ben has not
    // calibrated and no packet of his is decoded yet (20 ms counted). Their jitter
    // buffers hold 30 and 10 ms.
    h.handle(secs(0.6), calibrated(1, 45, 12)).unwrap();
    for (peer, delay_ms, packet_ms) in [(ana.peer, 30.0, 10.0), (ben.peer, 10.0, 0.0)] {
        let figures = SingerFigures {
            level_db: -20.0,
            delay_ms,
            packet_ms,
            lost: 0,
            packets: 100,
        };
        h.handle(
            secs(0.7),
            Input::Figures {
                singer: peer.singer(),
                figures,
            },
        )
        .unwrap();
    }
    h.handle(
        secs(0.8),
        Input::Stage {
            behind: Duration::from_millis(40),
        },
    )
    .unwrap();
    let duet = queue_add(&mut h, 1, 7, Some(ben.peer)).unwrap();
    let next = queue_add(&mut h, 2, 8, Some(ana.peer)).unwrap();
    assert_eq!(
        h.room.view().queue[0].mode,
        SyncMode::Stage,
        "stage by default"
    );
    // Only a known entry takes a mode.
    assert!(h
        .handle(
            secs(1.0),
            Input::SetMode {
                entry: EntryId(99),
                mode: SyncMode::InEar
            }
        )
        .is_err());
    h.handle(
        secs(1.0),
        Input::SetMode {
            entry: duet,
            mode: SyncMode::InEar,
        },
    )
    .unwrap();
    assert_eq!(h.room.view().queue[0].mode, SyncMode::InEar);
    assert_eq!(venue_delays(&h.take()), vec![], "nothing plays yet");
    h.handle(secs(2.0), Input::Transport(Transport::Start(duet)))
        .unwrap();
    // Each: capture + packet + look-ahead (6.5 ms) + jitter buffer. Ana: 33 + 10 + 6.5
    // + 30 = 79.5 ms; Ben: 0 + 20 + 6.5 + 10 = 36.5 ms. The backing waits 40 + 79.5,
    // Ben's voice 43.
    assert_eq!(
        venue_delays(&h.take()),
        vec![
            Command::SetVenueDelay { frames: 5_736 },
            Command::SetVoiceDelay {
                singer: ben.peer.singer(),
                frames: 2_064
            },
        ]
    );
    assert!((h.room.view().venue_delay_ms - 119.5).abs() < 0.01);
    // The next song is a stage song: nothing held back.
    h.handle(secs(5.0), Input::Transport(Transport::Start(next)))
        .unwrap();
    assert_eq!(
        venue_delays(&h.take()),
        vec![
            Command::SetVenueDelay { frames: 0 },
            Command::SetVoiceDelay {
                singer: ben.peer.singer(),
                frames: 0
            },
        ]
    );
    // The host switches the playing song to in-ear: it holds back at once.
    h.handle(
        secs(6.0),
        Input::SetMode {
            entry: next,
            mode: SyncMode::InEar,
        },
    )
    .unwrap();
    assert_eq!(venue_delays(&h.take()).len(), 2);
}

/// The two halves of a phone's one-way time: the box's reading of its sender reports
/// and the page's wall clock against the box's.
fn one_way_halves(conn: u64, one_way_ms: f64) -> [Input; 2] {
    let offset_ms = -1.78e12;
    [
        Input::SenderClock {
            conn: ConnId(conn),
            lateness_ms: offset_ms + one_way_ms,
        },
        Input::WallClock {
            conn: ConnId(conn),
            offset_ms,
        },
    ]
}

/// Ana alone on stage (jitter buffer 10 ms, the stage timeline 40 ms behind the mixer,
/// no calibration) singing song 7 in-ear from 2 s: the harness, the entry, and what the
/// room did by then.
fn ana_sings_in_ear() -> (Harness, EntryId, Vec<Action>) {
    use crate::control::night::SyncMode;
    let mut h = Harness::new(config());
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.media(secs(0.5), 1, MediaState::Connected);
    let figures = SingerFigures {
        level_db: -20.0,
        delay_ms: 10.0,
        packet_ms: 0.0,
        lost: 0,
        packets: 100,
    };
    h.handle(
        secs(0.6),
        Input::Figures {
            singer: ana.peer.singer(),
            figures,
        },
    )
    .unwrap();
    h.handle(
        secs(0.7),
        Input::Stage {
            behind: Duration::from_millis(40),
        },
    )
    .unwrap();
    let song = queue_add(&mut h, 1, 7, None).unwrap();
    h.handle(
        secs(1.0),
        Input::SetMode {
            entry: song,
            mode: SyncMode::InEar,
        },
    )
    .unwrap();
    h.handle(secs(2.0), Input::Transport(Transport::Start(song)))
        .unwrap();
    let actions = h.take();
    (h, song, actions)
}

#[test]
fn the_network_one_way_time_counts_once_both_halves_are_in_and_make_sense() {
    let (mut h, _, actions) = ana_sings_in_ear();
    // 40 + 0 (capture) + 20 (packet) + 6.5 (look-ahead) + 10 (jitter buffer).
    assert_eq!(
        venue_delays(&actions),
        vec![Command::SetVenueDelay { frames: 3_672 }]
    );
    let [lateness, wall] = one_way_halves(1, 80.0);
    h.handle(secs(3.0), lateness).unwrap();
    assert_eq!(venue_delays(&h.take()), vec![], "half a measurement");
    assert_eq!(h.room.view().participants[0].one_way_ms, None);
    h.handle(secs(3.1), wall).unwrap();
    assert_eq!(
        venue_delays(&h.take()),
        vec![Command::SetVenueDelay { frames: 7_512 }],
        "80 ms more"
    );
    assert_eq!(h.room.view().participants[0].one_way_ms, Some(80.0));
    // A page whose clock readings contradict the box's: no one-way time at all.
    for (one_way_ms, counted) in [(-30.0, None), (2_000.0, None), (-4.0, Some(0.0))] {
        let [lateness, _] = one_way_halves(1, one_way_ms);
        h.handle(secs(4.0), lateness).unwrap();
        assert_eq!(
            h.room.view().participants[0].one_way_ms,
            counted,
            "{one_way_ms} ms"
        );
    }
    assert_eq!(
        venue_delays(&h.take()),
        vec![Command::SetVenueDelay { frames: 3_672 }]
    );
    assert!(h
        .handle(
            secs(5.0),
            Input::WallClock {
                conn: ConnId(1),
                offset_ms: f64::NAN
            }
        )
        .is_err());
    // Another connection's readings are not Ana's.
    let [lateness, _] = one_way_halves(9, 80.0);
    assert!(h.handle(secs(5.0), lateness).is_err(), "not joined");
}

#[test]
fn an_in_ear_singer_whose_phone_plays_late_holds_the_speakers_back_as_much_more() {
    let (mut h, song, actions) = ana_sings_in_ear();
    // 40 (stage) + 20 (packet) + 6.5 (look-ahead) + 10 (jitter buffer).
    assert_eq!(
        venue_delays(&actions),
        vec![Command::SetVenueDelay { frames: 3_672 }]
    );
    let offset = |r: Result<Reply, Refusal>| match r {
        Ok(Reply::Sync(s)) => s.offset_us,
        other => panic!("a playout report answers with a steer: {other:?}"),
    };
    // Her phone plays 30 ms behind the stage timeline (5 ms of its own buffer, 35 of
    // extra not yet steered away): she sings 30 ms late, and the speakers wait for it.
    assert_eq!(offset(h.handle(secs(3.0), playout(1, 40, 35))), 30_000);
    assert_eq!(
        venue_delays(&h.take()),
        vec![Command::SetVenueDelay { frames: 5_112 }]
    );
    // Steered back onto the timeline.
    assert_eq!(offset(h.handle(secs(4.0), playout(1, 10, 5))), 0);
    assert_eq!(
        venue_delays(&h.take()),
        vec![Command::SetVenueDelay { frames: 3_672 }]
    );
    // 4 ms early is less than a move.
    assert_eq!(offset(h.handle(secs(5.0), playout(1, 6, 1))), -4_000);
    assert_eq!(venue_delays(&h.take()), vec![]);
    // A stage song: the speakers hold nothing back, however late the phone.
    h.handle(
        secs(6.0),
        Input::SetMode {
            entry: song,
            mode: SyncMode::Stage,
        },
    )
    .unwrap();
    h.handle(secs(6.5), playout(1, 40, 35)).unwrap();
    assert_eq!(
        venue_delays(&h.take()),
        vec![Command::SetVenueDelay { frames: 0 }]
    );
}

#[test]
fn the_recording_running_follows_each_voice_as_it_is_measured_anew() {
    use crate::control::night::SyncMode;
    let mut h = Harness::new(RoomConfig {
        record: true,
        ..config()
    });
    let ana = h.join(secs(0.0), 1, "Ana", Role::Singer);
    h.media(secs(0.5), 1, MediaState::Connected);
    h.handle(secs(0.6), calibrated(1, 45, 12)).unwrap();
    let song = queue_add(&mut h, 1, 7, None).unwrap();
    h.handle(secs(1.0), Input::Transport(Transport::Start(song)))
        .unwrap();
    opened(&mut h, secs(1.1));
    let shifts = |actions: &[Action]| {
        pick(actions, |a| match a {
            Action::RecordShift { peer, to_the_box } => {
                Some((*peer, (to_the_box.as_secs_f64() * 10_000.0).round() / 10.0))
            }
            _ => None,
        })
    };
    let started = h.take();
    assert_eq!(record_actions(&started).len(), 1, "{started:?}");
    assert_eq!(shifts(&started), vec![]);
    // Her one-way time comes in mid-song: 80 ms more, told once.
    for input in one_way_halves(1, 80.0) {
        h.handle(secs(2.0), input).unwrap();
    }
    assert_eq!(shifts(&h.take()), vec![(ana.peer, 139.5)]);
    let [lateness, _] = one_way_halves(1, 80.4);
    h.handle(secs(3.0), lateness).unwrap();
    assert_eq!(shifts(&h.take()), vec![], "under a millisecond");
    // A stage song: how her phone plays does not move her voice (she follows the
    // speakers)...
    h.handle(secs(4.0), playout(1, 40, 35)).unwrap();
    assert_eq!(shifts(&h.take()), vec![]);
    // ...an in-ear one: she sings to her phone, 30 ms behind the timeline.
    h.handle(
        secs(5.0),
        Input::SetMode {
            entry: song,
            mode: SyncMode::InEar,
        },
    )
    .unwrap();
    assert_eq!(shifts(&h.take()), vec![(ana.peer, 169.9)]);
    // Stopped: nothing more is told.
    h.handle(secs(6.0), Input::Transport(Transport::Stop))
        .unwrap();
    h.take();
    for input in one_way_halves(1, 20.0) {
        h.handle(secs(7.0), input).unwrap();
    }
    assert_eq!(shifts(&h.take()), vec![]);
}
