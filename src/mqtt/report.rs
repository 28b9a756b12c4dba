//! What the box tells the panel: the retained `<base>/state` JSON, the `<base>/meters`
//! JSON, and the [`Pacer`] that decides when a new state goes out. Pure: the caller
//! brings the room's view, the output's health and the time.

use std::time::Duration;

use serde_json::{json, Value};

use crate::control::{Presence, RoomView};

/// Who this box is, for every message and the discovery configs.
#[derive(Clone, Debug)]
pub struct BoxInfo {
    /// Display name (`[box] name` or the host name).
    pub name: String,
    /// The kept id (`trust::box_id`).
    pub id: String,
    /// duetbox's version.
    pub version: String,
    /// The output, e.g. `alsa:default`.
    pub output: String,
}

/// The output device's health, read from the audio thread's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OutputHealth {
    /// The audio thread's heartbeat advanced lately.
    pub running: bool,
    /// The period the device granted, frames.
    pub period_frames: u64,
    /// Underruns recovered since start.
    pub xruns: u64,
}

/// Queue entries listed in the state at most (`queue_length` counts them all).
pub const MAX_QUEUE_LISTED: usize = 50;

/// `<base>/state`. Levels, delays, loss and the song's position are the figures part:
/// see [`structure_of`]. `song_ms` is where the speakers are in the song playing
/// (negative during its count-in, published as 0).
pub fn state(
    info: &BoxInfo,
    view: &RoomView,
    health: &OutputHealth,
    uptime: Duration,
    song_ms: Option<i64>,
) -> Value {
    let (singers, listeners) = view.counts();
    let slots: Vec<Value> = view
        .slots
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let holder = view.holder(s);
            let figure = |v: Option<f32>| v.map_or(Value::Null, |v| json!(round1(v)));
            json!({
                "slot": s.slot.to_string(),
                "open": k < view.singer_limit,
                "peer": holder.map(|p| p.peer.to_string()),
                "name": holder.map(|p| p.name.clone()),
                "presence": holder.map(|p| p.presence.as_str()),
                "connected": holder.is_some_and(|p| p.presence == Presence::Live),
                "level_db": figure(holder.map(|p| p.level_db)),
                "delay_ms": figure(holder.map(|p| p.delay_ms)),
                "loss_pct": figure(holder.map(|p| p.loss_pct)),
                "gain_db": s.settings.gain_db,
                "muted": s.settings.muted,
                "pan": s.settings.pan,
                "monitor": s.settings.monitor,
                "reverb": s.settings.reverb_wet,
            })
        })
        .collect();
    json!({
        "version": info.version,
        "box": {"name": info.name, "id": info.id},
        "uptime_s": uptime.as_secs(),
        "output": {
            "device": info.output,
            "running": health.running,
            "period_frames": health.period_frames,
            "xruns": health.xruns,
        },
        "slots": slots,
        "singers": singers,
        "singer_limit": view.singer_limit,
        "listeners": listeners,
        "master_gain_db": view.master_gain_db,
        "backing_gain_db": view.backing_gain_db,
        "backing_muted": view.backing_muted,
        "backing_source": view.backing_source.as_str(),
        "pin_set": view.pin_set,
        "song": view.song.as_ref().map(|s| json!({
            "entry": s.entry.id.0,
            "title": s.entry.song.title,
            "artist": s.entry.song.artist,
            "singers": s.entry.singers.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
            "state": s.now.state.as_str(),
            "mode": s.entry.mode.as_str(),
            "position_ms": song_ms.unwrap_or(0).max(0),
            "duration_ms": s.now.duration.map(|d| d.as_millis() as u64),
        })),
        "queue": view.queue.iter().take(MAX_QUEUE_LISTED).map(|e| json!({
            "entry": e.id.0,
            "title": e.song.title,
            "artist": e.song.artist,
            "singers": e.singers.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
            "mode": e.mode.as_str(),
        })).collect::<Vec<_>>(),
        "queue_length": view.queue.len(),
        "problems": view.problems.len(),
    })
}

/// A state without what changes all the time (uptime and the slots' figures): two
/// states with the same structure differ only in figures, which go out at the slow
/// pace; any other change goes out at once.
pub fn structure_of(state: &Value) -> Value {
    let mut s = state.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("uptime_s");
    }
    if let Some(song) = s.get_mut("song").and_then(Value::as_object_mut) {
        song.remove("position_ms");
    }
    if let Some(slots) = s.get_mut("slots").and_then(Value::as_array_mut) {
        for slot in slots.iter_mut().filter_map(Value::as_object_mut) {
            for figure in ["level_db", "delay_ms", "loss_pct"] {
                slot.remove(figure);
            }
        }
    }
    s
}

/// `<base>/meters`: the venue output's and each slot's peak level, dBFS.
pub fn meters(view: &RoomView, venue_db: f32) -> Value {
    let slots: Vec<Value> = view
        .slots
        .iter()
        .map(|s| {
            let level = view.holder(s).map(|p| round1(p.level_db));
            json!({"slot": s.slot.to_string(), "level_db": level})
        })
        .collect();
    json!({"venue_db": round1(venue_db), "slots": slots})
}

fn round1(v: f32) -> f64 {
    (f64::from(v) * 10.0).round() / 10.0
}

/// When a new state goes out: a change of structure at once (but not more often than
/// `quick`), a change of figures only at most every `slow`, nothing when nothing
/// changed. Always the latest state: the caller asks with the state of now, so nothing
/// stale queues up.
#[derive(Debug)]
pub struct Pacer {
    quick: Duration,
    slow: Duration,
    sent: Option<(Duration, Value, Value)>,
}

impl Pacer {
    /// A pacer that has sent nothing yet.
    pub fn new(quick: Duration, slow: Duration) -> Pacer {
        Pacer {
            quick,
            slow,
            sent: None,
        }
    }

    /// Whether `state` should go out at `now`. When it returns true the caller
    /// publishes it, and the pacer counts it as sent.
    pub fn due(&mut self, now: Duration, state: &Value) -> bool {
        let structure = structure_of(state);
        let due = match &self.sent {
            None => true,
            Some((at, last_structure, last_state)) => {
                let since = now.saturating_sub(*at);
                if *last_structure != structure {
                    since >= self.quick
                } else {
                    figures_differ(last_state, state) && since >= self.slow
                }
            }
        };
        if due {
            self.sent = Some((now, structure, state.clone()));
        }
        due
    }

    /// Forget what was sent: the next state goes out (a new connection to the broker).
    pub fn reset(&mut self) {
        self.sent = None;
    }
}

fn figures_differ(a: &Value, b: &Value) -> bool {
    a.get("slots") != b.get("slots") || a.get("song") != b.get("song")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::room::{ParticipantView, SlotView};
    use crate::control::{PeerId, Role, SlotId};
    use crate::engine::SingerSettings;

    fn info() -> BoxInfo {
        BoxInfo {
            name: "Stage left".into(),
            id: "0123456789ab".into(),
            version: "0.1.0".into(),
            output: "alsa:default".into(),
        }
    }

    fn view() -> RoomView {
        RoomView {
            recordings: Default::default(),
            backing_source: crate::control::night::BackingSource::Songs,
            live: None,
            line_in_configured: false,
            queue: Vec::new(),
            song: None,
            problems: Vec::new(),
            participants: vec![
                ParticipantView {
                    peer: PeerId(3),
                    name: "Ana".into(),
                    role: Role::Singer,
                    slot: Some(SlotId(1)),
                    presence: Presence::Live,
                    level_db: -18.04,
                    delay_ms: 12.0,
                    loss_pct: 0.0,
                    sync_ms: None,
                    round_trip_ms: None,
                    one_way_ms: None,
                },
                ParticipantView {
                    peer: PeerId(4),
                    name: "Lou".into(),
                    role: Role::Listener,
                    slot: None,
                    presence: Presence::Live,
                    level_db: -120.0,
                    delay_ms: 0.0,
                    loss_pct: 0.0,
                    sync_ms: None,
                    round_trip_ms: None,
                    one_way_ms: None,
                },
            ],
            slots: vec![
                SlotView {
                    slot: SlotId(0),
                    peer: None,
                    settings: SingerSettings {
                        muted: true,
                        ..SingerSettings::default()
                    },
                },
                SlotView {
                    slot: SlotId(1),
                    peer: Some(PeerId(3)),
                    settings: SingerSettings::default(),
                },
            ],
            master_gain_db: -3.0,
            backing_gain_db: -6.0,
            backing_muted: false,
            singer_limit: 2,
            pin_set: true,
            lead_ms: 0.0,
            venue_delay_ms: 0.0,
        }
    }

    #[test]
    fn the_state_names_the_slots_and_never_the_pin() {
        let health = OutputHealth {
            running: true,
            period_frames: 240,
            xruns: 2,
        };
        let s = state(&info(), &view(), &health, Duration::from_secs(61), None);
        assert_eq!(s["slots"][0]["slot"], "A");
        assert_eq!(s["slots"][0]["peer"], Value::Null);
        assert_eq!(s["slots"][0]["connected"], false);
        assert_eq!(s["slots"][0]["muted"], true);
        assert_eq!(s["slots"][1]["name"], "Ana");
        assert_eq!(s["slots"][1]["peer"], "p3");
        assert_eq!(s["slots"][1]["connected"], true);
        assert_eq!(s["slots"][1]["level_db"], -18.0);
        assert_eq!(
            (s["singers"].clone(), s["listeners"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(s["output"]["xruns"], 2);
        assert_eq!(s["pin_set"], true);
        assert_eq!(s["uptime_s"], 61);
        assert!(!s.to_string().contains("pin\":\""), "no PIN in {s}");
    }

    #[test]
    fn structure_goes_out_at_once_and_figures_at_the_slow_pace() {
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(ms(100), ms(1000));
        let health = OutputHealth::default();
        let mut v = view();
        let at = |v: &RoomView, up: u64| state(&info(), v, &health, Duration::from_secs(up), None);
        assert!(pacer.due(ms(0), &at(&v, 0)), "the first state goes out");
        assert!(!pacer.due(ms(100), &at(&v, 0)), "nothing changed");
        v.participants[0].level_db = -10.0;
        assert!(
            !pacer.due(ms(500), &at(&v, 0)),
            "figures wait for the slow pace"
        );
        assert!(pacer.due(ms(1000), &at(&v, 1)));
        assert!(
            !pacer.due(ms(5000), &at(&v, 5)),
            "uptime alone is no change"
        );
        v.participants[0].level_db = -10.5;
        assert!(pacer.due(ms(6000), &at(&v, 6)));
        v.participants[0].level_db = -11.0;
        assert!(!pacer.due(ms(6500), &at(&v, 6)));
        v.master_gain_db = -9.0;
        assert!(pacer.due(ms(6500), &at(&v, 6)), "a volume goes out at once");
        v.master_gain_db = -8.0;
        assert!(!pacer.due(ms(6550), &at(&v, 6)), "but not within `quick`");
        assert!(pacer.due(ms(6600), &at(&v, 6)));
        pacer.reset();
        assert!(
            pacer.due(ms(6601), &at(&v, 6)),
            "a new connection gets the state"
        );
    }

    #[test]
    fn the_state_lists_the_queue_and_the_song_whose_position_is_a_figure() {
        use crate::control::night::{EntryId, NowPlaying, SongRef, TransportState};
        use crate::control::room::{EntryView, SongView};
        let song = |n: u64| SongRef {
            id: crate::songs::library::SongId(n),
            title: format!("Song {n}"),
            artist: Some("Band".into()),
            path: "/x".into(),
            duration: Some(Duration::from_secs(200)),
        };
        let entry = |n: u32| EntryView {
            id: EntryId(n),
            song: song(u64::from(n)),
            singers: vec![(PeerId(3), "Ana".into())],
            mode: Default::default(),
        };
        let mut v = view();
        v.queue = (2..=60).map(entry).collect();
        v.queue[0].mode = crate::control::night::SyncMode::InEar;
        v.song = Some(SongView {
            entry: entry(1),
            now: NowPlaying {
                entry: crate::control::night::Entry {
                    id: EntryId(1),
                    song: song(1),
                    singers: vec![PeerId(3)],
                    mode: Default::default(),
                },
                generation: 4,
                state: TransportState::Playing,
                duration: Some(Duration::from_secs(200)),
                position: 0,
                count_in: Duration::ZERO,
                beats: 0,
            },
        });
        let health = OutputHealth::default();
        let at = |ms: i64| state(&info(), &v, &health, Duration::ZERO, Some(ms));
        let s = at(12_345);
        assert_eq!(s["song"]["title"], "Song 1");
        assert_eq!(s["song"]["singers"][0], "Ana");
        assert_eq!(s["song"]["position_ms"], 12_345);
        assert_eq!(s["song"]["mode"], "stage");
        assert_eq!(
            (&s["queue"][0]["mode"], &s["queue"][1]["mode"]),
            (&json!("in_ear"), &json!("stage"))
        );
        assert_eq!(s["queue"].as_array().map(Vec::len), Some(MAX_QUEUE_LISTED));
        assert_eq!(s["queue_length"], 59);
        let ms = Duration::from_millis;
        let mut pacer = Pacer::new(ms(100), ms(1000));
        assert!(pacer.due(ms(0), &at(0)));
        assert!(!pacer.due(ms(500), &at(500)), "the position is a figure");
        assert!(pacer.due(ms(1000), &at(1000)));
    }

    #[test]
    fn meters_have_a_level_per_slot() {
        let m = meters(&view(), -3.04);
        assert_eq!(m["venue_db"], -3.0);
        assert_eq!(m["slots"][0]["level_db"], Value::Null);
        assert_eq!(m["slots"][1]["level_db"], -18.0);
    }
}
