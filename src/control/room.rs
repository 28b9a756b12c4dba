//! The room: the one owner of who is in the box, who holds which stage slot, every
//! slot's settings, the master and backing levels, admission, and every deadline.
//!
//! Sans-IO, like the engine and str0m: the caller feeds [`Input`]s with the time they
//! happened ([`Room::handle`]), drains [`Action`]s ([`Room::poll_action`]) and feeds
//! [`Input::Tick`] at [`Room::next_deadline`]. The room never reads a clock, never
//! spawns, never locks and does no IO; its tests run on virtual time without sockets.
//! Every surface (the WebSocket, WHIP/WHEP, later MQTT and the host page) drives it
//! with the same inputs, through the one task that owns it (`control::ControlTask`).
//!
//! # Model
//!
//! A *participant* is a person on a phone (or a WHIP/WHEP client): a visible
//! [`PeerId`], a secret [`Token`], a name, a role, and for a singer a stage *slot* (A,
//! B, … up to `max_singers`). A *connection* ([`ConnId`], never shown to anyone) is one
//! WebSocket session or one WHIP/WHEP resource; a participant has at most one at a
//! time. A phone whose connection drops keeps its participant, slot and settings for
//! the rejoin grace: it comes back on a new connection with its token. Ids others can
//! see are never capabilities: only the token (and the connection it arrived on) acts
//! for a participant.
//!
//! A slot's settings are the engine's [`SingerSettings`]: the host's (gain, pan, mute)
//! stay with the slot from one singer to the next; the singer's own (monitor, reverb)
//! go back to their defaults when a new singer takes the slot. A rejoin keeps all.
//!
//! # Outputs
//!
//! - [`Action::Engine`]: state commands for the audio thread, in order. The caller
//!   must deliver every one (`control::link::EngineLink` does, coalescing).
//! - [`Action::Route`]: which mix a connection's media hears. The room decides routes
//!   from the same settings, through the same rule
//!   ([`SingerSettings::hears_venue_mix`]), that the engine uses to pick its encode.
//! - [`Action::Bye`]: end a connection (tell it why, close its media).
//! - [`Action::Changed`]: the [`RoomView`] changed.
//!
//! Replies to the input's sender come back from [`Room::handle`] itself: a
//! [`Reply`] or a [`Refusal`], which is data, not an error.
//!
//! # Invariants
//!
//! - A slot has at most one holder and a singer holds exactly one slot; singers never
//!   exceed `max_singers`, listeners never exceed `max_listeners`.
//! - Every seated singer has had exactly one `AddSinger` and, once gone, one
//!   `RemoveSinger`; nothing one participant sends changes another's slot, settings or
//!   route.
//! - A connection that is not a participant's current one has no power: its inputs are
//!   ignored or refused.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::in_ear::{InEar, Uplink, PHONE_PACKET};
use super::night::{
    BackingSource, Effect, EntryId, LiveState, Night, NightRefusal, NowPlaying, Problem,
    SongFeedback, SongRef, SyncMode, Transport,
};
use super::recording::{
    Follow, RecordPlan, RecordVoice, RecordingNews, Recordings, RecordingsView,
};
use super::sync::{Steer, Timeline};
use super::throttle::PinThrottle;
use crate::engine::codec::PHONE_LOOKAHEAD_FRAMES;
use crate::engine::{duration_of, Command, MixId, SingerId, SingerSettings};
use crate::songs::line_in::LineInCommand;
use crate::songs::player::PlayerCommand;

/// Bytes of a session token: 128 random bits.
pub const TOKEN_BYTES: usize = 16;

/// Lowest gain the room accepts for a slot, the master or the backing track, dB.
pub const GAIN_MIN_DB: f32 = -60.0;

/// Longest PIN the room accepts, characters.
pub const PIN_MAX_CHARS: usize = 64;

/// Highest gain the room accepts, dB. Every output passes a limiter, so a boost cannot
/// clip; more than this only makes a voice harsh.
pub const GAIN_MAX_DB: f32 = 12.0;

/// A participant, as everyone sees it (`p7`). Not a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl PeerId {
    /// Parses what [`fmt::Display`] writes (`p7`).
    pub fn parse(text: &str) -> Option<PeerId> {
        let digits = text.strip_prefix('p')?;
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(PeerId)
    }

    /// The engine's id for this participant's voice (same number, so logs line up).
    pub fn singer(self) -> SingerId {
        SingerId(self.0)
    }
}

/// One connection (a WebSocket session or a WHIP/WHEP resource). Chosen by the caller,
/// unique for the life of the box, never shown to anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A participant's secret: whoever holds it acts for the participant (rejoin, WHIP
/// DELETE). 128 random bits, made by the caller (the room has no randomness of its own,
/// so that its tests are deterministic). Shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token(pub [u8; TOKEN_BYTES]);

impl Token {
    /// Parses 32 hex digits; `None` for anything else.
    pub fn parse(text: &str) -> Option<Token> {
        let bytes = text.as_bytes();
        if bytes.len() != 2 * TOKEN_BYTES {
            return None;
        }
        let mut out = [0u8; TOKEN_BYTES];
        for (k, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[k] = (hi * 16 + lo) as u8;
        }
        Some(Token(out))
    }

    /// Compares in time independent of where the tokens differ, so response times leak
    /// nothing about a guess.
    pub fn matches(&self, other: &Token) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach a log, not even through `{:?}`.
        f.write_str("Token(..)")
    }
}

/// Equality of two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A stage slot: A, B, … (index 0 is A).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub usize);

impl fmt::Display for SlotId {
    /// A..Z, then AA, AB, … like spreadsheet columns (max_singers is at most 32).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut n = self.0 + 1;
        let mut letters = [0u8; 4];
        let mut len = 0;
        while n > 0 && len < letters.len() {
            n -= 1;
            letters[len] = b'A' + (n % 26) as u8;
            len += 1;
            n /= 26;
        }
        for &l in letters[..len].iter().rev() {
            write!(f, "{}", l as char)?;
        }
        Ok(())
    }
}

impl SlotId {
    /// Parses a slot name ("A", "b", "AA"); `None` for anything else.
    pub fn parse(text: &str) -> Option<SlotId> {
        if text.is_empty() || text.len() > 3 {
            return None;
        }
        let mut n = 0usize;
        for c in text.chars() {
            let c = c.to_ascii_uppercase();
            if !c.is_ascii_uppercase() {
                return None;
            }
            n = n * 26 + (c as usize - 'A' as usize + 1);
        }
        Some(SlotId(n - 1))
    }
}

/// Singer or listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends a voice from a stage slot, hears a personal mix.
    Singer,
    /// Hears the venue mix.
    Listener,
    /// A WHIP client whose audio the host may choose as the backing (admitted with the
    /// host PIN; one at a time; no seat).
    Backing,
}

impl Role {
    /// The name used on every wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Singer => "singer",
            Role::Listener => "listener",
            Role::Backing => "backing",
        }
    }
}

/// Where a participant's media stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Admitted; media not up yet.
    Connecting,
    /// Media flows.
    Live,
    /// Media or connection lost; the participant keeps its place meanwhile.
    Reconnecting,
}

impl Presence {
    /// The name used on every wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Connecting => "connecting",
            Presence::Live => "live",
            Presence::Reconnecting => "reconnecting",
        }
    }
}

/// What the media layer reports about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaState {
    /// ICE and DTLS are up.
    Connected,
    /// Consent lost for a moment (ICE may recover).
    Disconnected,
    /// Consent lost for good, or the peer connection closed.
    Failed,
}

/// Why the room ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByeReason {
    /// Its participant asked to leave.
    Left,
    /// The host removed its participant; the phone must not rejoin by itself.
    Kicked,
    /// The same participant came back on another connection.
    Replaced,
    /// Its media failed (the participant may rejoin within the grace).
    Timeout,
    /// The box is shutting down.
    Shutdown,
}

impl ByeReason {
    /// The name used on every wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::Left => "left",
            ByeReason::Kicked => "kicked",
            ByeReason::Replaced => "replaced",
            ByeReason::Timeout => "timeout",
            ByeReason::Shutdown => "shutdown",
        }
    }
}

/// Why the room refused an input. Adapters map these to their wire's codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The PIN is missing or wrong.
    WrongPin,
    /// Too many wrong PINs from this address: try again after this long.
    SlowDown(Duration),
    /// Every seat of this role is taken.
    Full(Role),
    /// The box is shutting down.
    ShuttingDown,
    /// This connection already joined.
    AlreadyJoined,
    /// This connection has not joined (or is no longer its participant's).
    NotJoined,
    /// Only singers have mix settings.
    NotASinger,
    /// No participant with that id or token.
    UnknownPeer,
    /// No such slot.
    UnknownSlot,
    /// Nobody holds that slot.
    EmptySlot,
    /// A value is out of its range; names the field.
    OutOfRange(&'static str),
    /// The queue or the transport refused.
    Night(NightRefusal),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::WrongPin => f.write_str("wrong PIN"),
            Refusal::SlowDown(wait) => write!(
                f,
                "too many wrong PINs from this address; try again in {} s",
                wait.as_secs_f64().ceil()
            ),
            Refusal::Full(role) => write!(f, "all {} seats are taken", role.as_str()),
            Refusal::ShuttingDown => f.write_str("the box is shutting down"),
            Refusal::AlreadyJoined => f.write_str("already joined"),
            Refusal::NotJoined => f.write_str("not joined"),
            Refusal::NotASinger => f.write_str("only singers have mix settings"),
            Refusal::UnknownPeer => f.write_str("no such participant"),
            Refusal::UnknownSlot => f.write_str("no such slot"),
            Refusal::EmptySlot => f.write_str("nobody holds that slot"),
            Refusal::OutOfRange(field) => write!(f, "`{field}` is out of range"),
            Refusal::Night(n) => f.write_str(match n {
                NightRefusal::QueueFull => "the queue is full",
                NightRefusal::TooManyEntries => "you already have the most songs waiting",
                NightRefusal::AlreadyQueued => "you already queued this song",
                NightRefusal::UnknownEntry => "no such queue entry",
                NightRefusal::NotYours => "that entry is not yours",
                NightRefusal::NothingQueued => "the queue is empty",
                NightRefusal::NothingPlaying => "no song is playing",
                NightRefusal::BeyondTheEnd => "that is past the end of the song",
                NightRefusal::NoLineIn => "this box has no line-in (audio.line_in)",
                NightRefusal::NoFeed => "no WHIP backing feed is connected",
                NightRefusal::LiveSourcePlays => {
                    "a live source is the backing: switch the backing to songs first"
                }
            }),
        }
    }
}

/// A request to join (or to rejoin with a token).
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// Display name (the adapter has checked it: 1-32 printable characters).
    pub name: String,
    /// Role asked for.
    pub role: Role,
    /// PIN given, if any.
    pub pin: Option<String>,
    /// A token from an earlier `welcome`: rejoin that participant if it is still here.
    pub token: Option<Token>,
    /// The token the participant gets if this is a fresh join (made by the caller).
    pub new_token: Token,
    /// Whether a lost connection keeps the participant for the rejoin grace (phones),
    /// or ends it at once (WHIP/WHEP clients, which have no way back).
    pub rejoinable: bool,
    /// The client's address, for slowing down PIN guessing per address (`None`: not
    /// slowed, e.g. a local surface).
    pub from: Option<IpAddr>,
}

/// A change to some of a slot's settings; `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlotChange {
    /// Voice gain, dB ([`GAIN_MIN_DB`]..=[`GAIN_MAX_DB`]).
    pub gain_db: Option<f32>,
    /// Silences the voice everywhere.
    pub muted: Option<bool>,
    /// Stereo position, -1..=1.
    pub pan: Option<f32>,
    /// Own voice in the singer's personal mix, 0..=1.
    pub monitor: Option<f32>,
    /// Voice reverb, 0..=1.
    pub reverb: Option<f32>,
}

/// A singer's receive figures, as the audio thread reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SingerFigures {
    /// Voice peak since the last report, dBFS.
    pub level_db: f32,
    /// The box's jitter-buffer delay for this voice, ms.
    pub delay_ms: f32,
    /// How much audio each of its packets carries, ms (0 before the first): the box asks
    /// for 10 ms (`a=ptime:10`), which Chromium sends; others may send 20.
    pub packet_ms: f32,
    /// Packets lost so far (cumulative).
    pub lost: u64,
    /// Packets received so far (cumulative).
    pub packets: u64,
}

/// Everything that can happen to the room.
#[derive(Clone, Debug)]
pub enum Input {
    /// A connection asks to join.
    Join {
        /// The connection.
        conn: ConnId,
        /// What it asks for.
        request: JoinRequest,
    },
    /// The media of a connection changed state.
    Media {
        /// The connection.
        conn: ConnId,
        /// Its new state.
        state: MediaState,
    },
    /// A connection ended without saying goodbye (socket closed or failed).
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// A participant leaves through its connection.
    Leave {
        /// The connection.
        conn: ConnId,
    },
    /// A participant leaves through its token (WHIP/WHEP `DELETE` of its resource).
    LeaveByToken {
        /// The token.
        token: Token,
    },
    /// A singer changes their own monitor and reverb (only the fields given).
    Mix {
        /// The singer's connection.
        conn: ConnId,
        /// Own voice in the personal mix, 0..=1.
        monitor: Option<f32>,
        /// Voice reverb, 0..=1.
        reverb: Option<f32>,
    },
    /// The host changes a slot's settings (only the fields given).
    SetSlot {
        /// The slot.
        slot: SlotId,
        /// The change.
        change: SlotChange,
    },
    /// The host sets the master level.
    SetMaster {
        /// Gain, dB.
        gain_db: f32,
    },
    /// The host sets the backing track's level, mute or source (only the fields given).
    SetBacking {
        /// Gain, dB.
        gain_db: Option<f32>,
        /// Silenced.
        muted: Option<bool>,
        /// Songs or the line-in.
        source: Option<BackingSource>,
    },
    /// The host removes a participant.
    Kick {
        /// Who.
        peer: PeerId,
    },
    /// The host removes whoever holds a slot.
    KickSlot {
        /// The slot.
        slot: SlotId,
    },
    /// The host opens only the first `limit` slots to new singers (1..=`max_singers`).
    /// Singers already on a slot beyond it keep it until they leave.
    SetSingerLimit {
        /// Open slots.
        limit: usize,
    },
    /// The host sets the PIN new joins must give, or clears it (`None`). People in the
    /// room keep their place, and their tokens rejoin without it.
    SetPin {
        /// 1 to [`PIN_MAX_CHARS`] printable characters, or `None` for no PIN.
        pin: Option<String>,
    },
    /// New receive figures for a singer's voice.
    Figures {
        /// The voice.
        singer: SingerId,
        /// Its figures.
        figures: SingerFigures,
    },
    /// The host page logs in (its PIN is checked like a join's, and guesses slowed down
    /// by the same throttle).
    HostLogin {
        /// The PIN given.
        pin: String,
        /// The client's address.
        from: Option<IpAddr>,
    },
    /// A singer adds a song to the queue, alone or with a partner from the room.
    QueueAdd {
        /// The singer's connection.
        conn: ConnId,
        /// The song (the surface found it in the library).
        song: SongRef,
        /// A second singer (a participant who sings).
        partner: Option<PeerId>,
    },
    /// A singer named by an entry withdraws from it (the one who added it removes it).
    QueueWithdraw {
        /// The singer's connection.
        conn: ConnId,
        /// The entry.
        entry: EntryId,
    },
    /// The host removes an entry.
    QueueRemove {
        /// The entry.
        entry: EntryId,
    },
    /// The host moves an entry (0 is next).
    QueueMove {
        /// The entry.
        entry: EntryId,
        /// Its new place.
        to: usize,
    },
    /// The host picks whom the singers of an entry (queued or playing) follow.
    SetMode {
        /// The entry.
        entry: EntryId,
        /// Its mode.
        mode: SyncMode,
    },
    /// How long after the mixer renders a frame the stage timeline plays it (the
    /// speakers' device and path, `SongClock::speakers_behind_frames`): in-ear mode
    /// holds the speakers back by this plus the slowest uplink.
    Stage {
        /// The stage timeline behind the mixer.
        behind: Duration,
    },
    /// The host's (or panel's) transport.
    Transport(Transport),
    /// News from the player or the engine about the song.
    Song(SongFeedback),
    /// A phone's playout report, as the box measured it (`control::sync`): it plays
    /// `delay_us` behind the speakers, `extra_us` of which it adds itself.
    Playout {
        /// The connection.
        conn: ConnId,
        /// Its playout behind the speakers', µs (its extra included).
        delay_us: i64,
        /// The delay it adds of its own, µs.
        extra_us: i64,
    },
    /// A phone measured its round trip from its speaker to its own microphone
    /// (`docs/sync.md`). Kept with the participant, so a rejoin with its token keeps it.
    Calibrated {
        /// The connection.
        conn: ConnId,
        /// The round trip.
        calibration: Calibration,
    },
    /// The box's reading of a singer's uplink against its phone's wall clock: the
    /// fastest packet's one-way time less (box clock − phone's wall clock), ms
    /// (`rtc::PeerEvent::SenderClock`).
    SenderClock {
        /// The connection whose media it measured.
        conn: ConnId,
        /// The reading, ms.
        lateness_ms: f64,
    },
    /// A phone's wall clock (the one its RTCP sender reports use) against the box's:
    /// the box's clock minus the phone's, ms, as the page measured it.
    WallClock {
        /// The connection.
        conn: ConnId,
        /// Box clock − the phone's wall clock, ms.
        offset_ms: f64,
    },
    /// News from the recorder (`control::recording`).
    Recorded(RecordingNews),
    /// Time passed: expire what is due ([`Room::next_deadline`]).
    Tick,
    /// The box is stopping: every connection ends, no more joins.
    Shutdown,
}

/// What the room tells the sender of an input.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Admitted (or readmitted).
    Joined(Welcome),
    /// A queue entry was made.
    Queued(EntryId),
    /// What to tell a phone after its playout report.
    Sync(Steer),
    /// Done.
    Done,
}

/// An admission.
#[derive(Clone, Debug, PartialEq)]
pub struct Welcome {
    /// The participant.
    pub peer: PeerId,
    /// Its secret.
    pub token: Token,
    /// Its role.
    pub role: Role,
    /// Its name as kept.
    pub name: String,
    /// Its slot (singers).
    pub slot: Option<SlotId>,
    /// Its slot's settings (singers).
    pub settings: Option<SingerSettings>,
    /// Whether this was a rejoin with a token (place and settings kept).
    pub rejoined: bool,
    /// Its calibration, if it made one (kept across rejoins).
    pub calibration: Option<Calibration>,
}

/// A phone's own latency, as its calibration measured it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// From a sample leaving the page to the page hearing it back through its own
    /// microphone: output + input latency (and a few centimetres of air).
    pub round_trip: Duration,
    /// What the browser says its output adds (part of `round_trip`; zero where it
    /// does not say).
    pub output: Duration,
}

impl Calibration {
    /// The longest round trip a phone may report (a Bluetooth headset's 300 ms and
    /// room to spare; the page searches no further).
    pub const MAX_ROUND_TRIP: Duration = Duration::from_millis(500);

    /// The input (capture) latency: the round trip less the output's share.
    pub fn capture(&self) -> Duration {
        self.round_trip.saturating_sub(self.output)
    }
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Deliver this command to the audio thread (never drop it).
    Engine(Command),
    /// Hand this to the song player.
    Player(PlayerCommand),
    /// Hand this to the line-in.
    LineIn(LineInCommand),
    /// Let the WHIP backing feed's audio into the backing as this generation (`None`:
    /// keep it out).
    Feed(Option<u32>),
    /// From now on this connection's media hears `mix`.
    Route {
        /// The connection.
        conn: ConnId,
        /// The mix.
        mix: MixId,
    },
    /// End this connection: tell it `reason`, close its media.
    Bye {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: ByeReason,
    },
    /// A participant is gone for good (for the log and, later, the panel's events).
    Left {
        /// Who.
        peer: PeerId,
        /// Why.
        reason: ByeReason,
    },
    /// Start recording a song (ending any recording running).
    Record(RecordPlan),
    /// End the recording running.
    RecordStop,
    /// A recorded voice's place moved by a millisecond or more (its singer's
    /// [`RecordVoice::to_the_box`] now): the recording running follows it.
    RecordShift {
        /// The singer.
        peer: PeerId,
        /// What [`RecordVoice::to_the_box`] is now.
        to_the_box: Duration,
    },
    /// The room view changed (publish it).
    Changed,
}

/// Limits and secrets of the room.
#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// Stage slots.
    pub max_singers: usize,
    /// Listener limit.
    pub max_listeners: usize,
    /// PIN ("" = none).
    pub pin: String,
    /// The host page's PIN ("" = no host page).
    pub host_pin: String,
    /// How long a participant whose connection dropped keeps its place.
    pub rejoin_grace: Duration,
    /// How long a connection may take from its join to live media; a join that never
    /// sends an offer (or whose media never comes up) loses its place then.
    pub join_deadline: Duration,
    /// Master level at start, dB.
    pub master_gain_db: f32,
    /// Backing level at start, dB.
    pub backing_gain_db: f32,
    /// The clicks before every song (0: none) and how long they take in all.
    pub count_in_beats: u32,
    /// See `count_in_beats`.
    pub count_in: Duration,
    /// Whether the box has a line-in the host may choose.
    pub line_in: bool,
    /// The most the phones' backing may lead the speakers' (`control::sync`).
    pub max_lead: Duration,
    /// What the speaker path adds after the output device (`audio.speaker_latency_ms`).
    pub speaker_latency: Duration,
    /// Whether every song is recorded (`songs.record`).
    pub record: bool,
}

/// One participant as everyone may see it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParticipantView {
    /// Id.
    pub peer: PeerId,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Slot (singers).
    pub slot: Option<SlotId>,
    /// Media state.
    pub presence: Presence,
    /// Voice peak, dBFS (-120 = silence; listeners: -120).
    pub level_db: f32,
    /// The box's buffer for this voice, ms.
    pub delay_ms: f32,
    /// Loss over the last report interval, %.
    pub loss_pct: f32,
    /// How far its playout is from the speakers', ms (positive: late), once it reports.
    pub sync_ms: Option<f32>,
    /// Its speaker-to-microphone round trip, ms, once calibrated.
    pub round_trip_ms: Option<f32>,
    /// The network's fastest one-way time from it to the box, ms, once measured.
    pub one_way_ms: Option<f32>,
}

/// One slot as everyone may see it.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotView {
    /// Which.
    pub slot: SlotId,
    /// Who holds it.
    pub peer: Option<PeerId>,
    /// Its settings.
    pub settings: SingerSettings,
}

/// One queue entry as everyone may see it.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryView {
    /// Its id.
    pub id: EntryId,
    /// The song.
    pub song: SongRef,
    /// Its singers and their names.
    pub singers: Vec<(PeerId, String)>,
    /// Whom its singers follow.
    pub mode: SyncMode,
}

/// The song playing.
#[derive(Clone, Debug, PartialEq)]
pub struct SongView {
    /// The entry.
    pub entry: EntryView,
    /// Where the transport is, and the generation, length and position.
    pub now: NowPlaying,
}

/// A snapshot of the room.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomView {
    /// The song queue, in order.
    pub queue: Vec<EntryView>,
    /// The song playing.
    pub song: Option<SongView>,
    /// Songs that could not play, newest last.
    pub problems: Vec<Problem>,
    /// Participants by id.
    pub participants: Vec<ParticipantView>,
    /// Slots A, B, ….
    pub slots: Vec<SlotView>,
    /// Master level, dB.
    pub master_gain_db: f32,
    /// Backing level, dB.
    pub backing_gain_db: f32,
    /// Backing silenced.
    pub backing_muted: bool,
    /// Where the backing comes from.
    pub backing_source: BackingSource,
    /// The live source (line-in, WHIP feed), while one plays.
    pub live: Option<LiveState>,
    /// Whether the box has a line-in.
    pub line_in_configured: bool,
    /// Slots open to new singers (the first this many).
    pub singer_limit: usize,
    /// Whether joining needs a PIN (never the PIN itself).
    pub pin_set: bool,
    /// How far ahead of the speakers the phones' backing plays, ms.
    pub lead_ms: f32,
    /// How long the speakers hold the backing back for in-ear singers, ms.
    pub venue_delay_ms: f32,
    /// The recordings (their ids are capabilities: adapters show each only to its
    /// singers and the host).
    pub recordings: RecordingsView,
}

impl RoomView {
    /// Who holds `slot`, if anyone.
    pub fn holder(&self, slot: &SlotView) -> Option<&ParticipantView> {
        slot.peer
            .and_then(|peer| self.participants.iter().find(|p| p.peer == peer))
    }

    /// (singers, listeners) in the room, reconnecting ones included.
    pub fn counts(&self) -> (usize, usize) {
        let count = |role| self.participants.iter().filter(|p| p.role == role).count();
        (count(Role::Singer), count(Role::Listener))
    }
}

struct Participant {
    name: String,
    role: Role,
    token: Token,
    conn: Option<ConnId>,
    slot: Option<SlotId>,
    presence: Presence,
    /// The current connection must have live media by then.
    live_by: Option<Duration>,
    /// When the participant lost its last live connection (its grace counts from then,
    /// however often it rejoins without going live again).
    lost_since: Option<Duration>,
    /// Had live media at least once: only such a participant keeps its place when its
    /// connection drops (a join that never got media has nothing to come back to).
    was_live: bool,
    rejoinable: bool,
    figures: SingerFigures,
    loss_pct: f32,
    /// Its last sync offset, ms, shown to the host.
    sync_ms: Option<f32>,
    /// Its last calibration.
    calibration: Option<Calibration>,
    /// The two halves of its one-way network time, each with the connection it was
    /// measured on ([`Input::SenderClock`], [`Input::WallClock`]).
    sender_lateness: Option<(ConnId, f64)>,
    wall_offset: Option<(ConnId, f64)>,
    /// The one-way time last shown, ms.
    one_way_shown: Option<f32>,
}

impl Participant {
    /// The network's fastest one-way time from this phone to the box, when both halves
    /// were measured on its current connection and agree with a network: within
    /// [`MAX_ONE_WAY`] (a few ms below zero, clock readings' noise, count as zero).
    fn one_way(&self) -> Option<Duration> {
        let conn = self.conn?;
        let (by, lateness) = self.sender_lateness?;
        let (with, offset) = self.wall_offset?;
        if by != conn || with != conn {
            return None;
        }
        let ms = lateness - offset;
        (-ONE_WAY_SLACK_MS..=MAX_ONE_WAY.as_secs_f64() * 1000.0)
            .contains(&ms)
            .then(|| Duration::from_secs_f64(ms.max(0.0) / 1000.0))
    }

    /// From a sound reaching this phone's microphone to its packet reaching the box,
    /// decoded: its capture (from its calibration; none measured counts as none), one
    /// of its packets (its sender reports map each packet's first timestamp to when its
    /// last sample was captured: `rtc/sender_clock.rs`), the network's fastest
    /// one-way time (none measured counts as none), and its encoder's look-ahead. The
    /// box's jitter buffer comes after.
    ///
    /// Until its first packet is decoded, a packet counts as [`PHONE_PACKET`]. Counting
    /// 20 ms for Chromium's 10 ms packets and no look-ahead put every voice 10 ms early
    /// less the 6.5 ms look-ahead: the 3.5 to 4.5 ms early lean of every in-ear and
    /// stage recording run here.
    fn to_the_box(&self) -> Duration {
        let packet = if self.figures.packet_ms > 0.0 {
            Duration::from_secs_f32(self.figures.packet_ms / 1000.0)
        } else {
            PHONE_PACKET
        };
        self.calibration.map(|c| c.capture()).unwrap_or_default()
            + packet
            + self.one_way().unwrap_or_default()
            + duration_of(PHONE_LOOKAHEAD_FRAMES)
    }

    /// How much later than the stage timeline this singer's voice of a moment reaches
    /// the box (before its jitter buffer): [`Participant::to_the_box`], and in in-ear
    /// mode how late the phone plays against the timeline too (its playout report,
    /// early counting against the rest): the singer sings to what the phone plays, and
    /// a phone's playout wanders by tens of ms while the box steers it back.
    fn sung_late(&self, in_ear: bool) -> Duration {
        let late_ms = if in_ear {
            self.sync_ms.unwrap_or(0.0)
        } else {
            0.0
        };
        // Whole microseconds, within ±10 s (the playout report's range is wider).
        let late = Duration::from_micros((late_ms.abs().min(10_000.0) * 1000.0) as u64);
        if late_ms >= 0.0 {
            self.to_the_box() + late
        } else {
            self.to_the_box().saturating_sub(late)
        }
    }
}

/// How far a recorded voice's place must move before the recording running is told
/// (the recorder puts a voice back only past a millisecond, too).
const RECORD_SHIFT_STEP: Duration = Duration::from_millis(1);

/// The longest one-way time believed: past it, the phone's clock readings disagree
/// with each other, not with the network.
pub const MAX_ONE_WAY: Duration = Duration::from_secs(1);

/// How far below zero a one-way reading may fall and still count (as zero), ms.
const ONE_WAY_SLACK_MS: f64 = 10.0;

struct Slot {
    holder: Option<PeerId>,
    settings: SingerSettings,
}

/// The room. See the module docs for the model and call order.
pub struct Room {
    config: RoomConfig,
    participants: BTreeMap<PeerId, Participant>,
    slots: Vec<Slot>,
    master_gain_db: f32,
    backing_gain_db: f32,
    backing_muted: bool,
    singer_limit: usize,
    pin: String,
    next_peer: u32,
    shutting_down: bool,
    throttle: PinThrottle,
    night: Night,
    recordings: Recordings,
    timeline: Timeline<PeerId>,
    /// The lead the engine was last told, frames.
    lead_frames: u32,
    /// The speakers' in-ear delays the engine was last told.
    in_ear: InEar,
    /// Each recorded voice's [`RecordVoice::to_the_box`] as the recording running was
    /// last told (empty when none runs).
    record_shifts: Vec<(PeerId, Duration)>,
    /// The stage timeline behind the mixer ([`Input::Stage`]).
    stage_behind: Duration,
    actions: VecDeque<Action>,
    changed: bool,
}

impl Room {
    /// An empty room.
    pub fn new(config: RoomConfig) -> Room {
        let slots = (0..config.max_singers)
            .map(|_| Slot {
                holder: None,
                settings: SingerSettings::default(),
            })
            .collect();
        let night = Night::with_count_in(config.count_in, config.count_in_beats);
        let max_lead = config.max_lead;
        let recordings = Recordings::new(config.record);
        Room {
            recordings,
            master_gain_db: config.master_gain_db,
            backing_gain_db: config.backing_gain_db,
            backing_muted: false,
            singer_limit: config.max_singers,
            pin: config.pin.clone(),
            config,
            participants: BTreeMap::new(),
            slots,
            next_peer: 1,
            shutting_down: false,
            throttle: PinThrottle::new(),
            night,
            timeline: Timeline::new(max_lead),
            lead_frames: 0,
            in_ear: InEar::new(),
            record_shifts: Vec::new(),
            stage_behind: Duration::ZERO,
            actions: VecDeque::new(),
            changed: false,
        }
    }

    /// Applies one input at `now` (any monotonic clock, the same for every call).
    /// Replies to its sender; the consequences come out of [`Room::poll_action`].
    pub fn handle(&mut self, now: Duration, input: Input) -> Result<Reply, Refusal> {
        let result = match input {
            Input::Join { conn, request } => self.join(now, conn, request).map(Reply::Joined),
            Input::Media { conn, state } => {
                self.media(now, conn, state);
                Ok(Reply::Done)
            }
            Input::Closed { conn } => {
                if let Some(peer) = self.by_conn(conn) {
                    self.lose(now, peer, conn);
                }
                Ok(Reply::Done)
            }
            Input::Leave { conn } => {
                let peer = self.by_conn(conn).ok_or(Refusal::NotJoined)?;
                self.remove(peer, ByeReason::Left);
                Ok(Reply::Done)
            }
            Input::LeaveByToken { token } => {
                let peer = self.by_token(&token).ok_or(Refusal::UnknownPeer)?;
                self.remove(peer, ByeReason::Left);
                Ok(Reply::Done)
            }
            Input::Mix {
                conn,
                monitor,
                reverb,
            } => {
                let peer = self.by_conn(conn).ok_or(Refusal::NotJoined)?;
                let slot = self.participants[&peer].slot.ok_or(Refusal::NotASinger)?;
                self.change_slot(
                    slot,
                    SlotChange {
                        monitor,
                        reverb,
                        ..SlotChange::default()
                    },
                )
                .map(|()| Reply::Done)
            }
            Input::SetSlot { slot, change } => self.change_slot(slot, change).map(|()| Reply::Done),
            Input::SetMaster { gain_db } => {
                check_gain("master_gain_db", gain_db)?;
                self.master_gain_db = gain_db;
                self.emit(Action::Engine(Command::SetMaster { gain_db }));
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::SetBacking {
                gain_db,
                muted,
                source,
            } => {
                if let Some(gain_db) = gain_db {
                    check_gain("backing_gain_db", gain_db)?;
                }
                if let Some(source) = source {
                    let available = match source {
                        BackingSource::Songs => true,
                        BackingSource::LineIn => self.config.line_in,
                        BackingSource::Whip => self
                            .participants
                            .values()
                            .any(|p| p.role == Role::Backing && p.presence == Presence::Live),
                    };
                    let effects = self
                        .night
                        .set_source(source, available)
                        .map_err(Refusal::Night)?;
                    self.carry_out(effects);
                }
                if let Some(gain_db) = gain_db {
                    self.backing_gain_db = gain_db;
                }
                if let Some(muted) = muted {
                    self.backing_muted = muted;
                }
                self.emit(Action::Engine(Command::SetBacking {
                    gain_db: self.backing_gain_db,
                    muted: self.backing_muted,
                }));
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::Kick { peer } => {
                if !self.participants.contains_key(&peer) {
                    return Err(Refusal::UnknownPeer);
                }
                self.remove(peer, ByeReason::Kicked);
                Ok(Reply::Done)
            }
            Input::KickSlot { slot } => {
                let s = self.slots.get(slot.0).ok_or(Refusal::UnknownSlot)?;
                let peer = s.holder.ok_or(Refusal::EmptySlot)?;
                self.remove(peer, ByeReason::Kicked);
                Ok(Reply::Done)
            }
            Input::SetSingerLimit { limit } => {
                if !(1..=self.slots.len()).contains(&limit) {
                    return Err(Refusal::OutOfRange("limit"));
                }
                self.changed |= self.singer_limit != limit;
                self.singer_limit = limit;
                Ok(Reply::Done)
            }
            Input::SetPin { pin } => {
                if let Some(pin) = &pin {
                    let chars = pin.chars().count();
                    if !(1..=PIN_MAX_CHARS).contains(&chars) || pin.chars().any(char::is_control) {
                        return Err(Refusal::OutOfRange("pin"));
                    }
                }
                let pin = pin.unwrap_or_default();
                self.changed |= self.pin != pin;
                self.pin = pin;
                Ok(Reply::Done)
            }
            Input::Figures { singer, figures } => {
                self.figures(singer, figures);
                Ok(Reply::Done)
            }
            Input::HostLogin { pin, from } => {
                if let Some(from) = from {
                    self.throttle.check(from, now).map_err(Refusal::SlowDown)?;
                }
                let host_pin = &self.config.host_pin;
                if host_pin.is_empty() || !constant_time_eq(pin.as_bytes(), host_pin.as_bytes()) {
                    if let Some(from) = from {
                        self.throttle.failed(from, now);
                    }
                    return Err(Refusal::WrongPin);
                }
                if let Some(from) = from {
                    self.throttle.succeeded(from);
                }
                Ok(Reply::Done)
            }
            Input::QueueAdd {
                conn,
                song,
                partner,
            } => {
                let peer = self.by_conn(conn).ok_or(Refusal::NotJoined)?;
                if self.participants[&peer].role != Role::Singer {
                    return Err(Refusal::NotASinger);
                }
                let mut singers = vec![peer];
                if let Some(partner) = partner.filter(|&p| p != peer) {
                    let p = self
                        .participants
                        .get(&partner)
                        .ok_or(Refusal::UnknownPeer)?;
                    if p.role != Role::Singer {
                        return Err(Refusal::NotASinger);
                    }
                    singers.push(partner);
                }
                let id = self.night.add(song, singers).map_err(Refusal::Night)?;
                self.changed = true;
                Ok(Reply::Queued(id))
            }
            Input::QueueWithdraw { conn, entry } => {
                let peer = self.by_conn(conn).ok_or(Refusal::NotJoined)?;
                self.night.withdraw(peer, entry).map_err(Refusal::Night)?;
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::QueueRemove { entry } => {
                self.night.remove(entry).map_err(Refusal::Night)?;
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::QueueMove { entry, to } => {
                self.night.move_to(entry, to).map_err(Refusal::Night)?;
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::SetMode { entry, mode } => {
                self.night.set_mode(entry, mode).map_err(Refusal::Night)?;
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::Stage { behind } => {
                self.stage_behind = behind;
                Ok(Reply::Done)
            }
            Input::Transport(command) => {
                let effects = self.night.transport(command).map_err(Refusal::Night)?;
                self.carry_out(effects);
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::Song(news) => {
                let (effects, changed) = self.night.feedback(news);
                self.carry_out(effects);
                self.changed |= changed;
                Ok(Reply::Done)
            }
            Input::Playout {
                conn,
                delay_us,
                extra_us,
            } => {
                let peer = self.by_conn(conn).ok_or(Refusal::NotJoined)?;
                let steer = self.timeline.report(now, peer, delay_us, extra_us);
                let p = self.participants.get_mut(&peer).expect("found by its conn");
                let ms = steer.offset_us as f32 / 1000.0;
                if p.sync_ms.is_none_or(|old| (old - ms).abs() >= 1.0) {
                    p.sync_ms = Some(ms);
                    self.changed = true;
                }
                Ok(Reply::Sync(steer))
            }
            Input::Calibrated { conn, calibration } => {
                let peer = self.by_conn(conn).ok_or(Refusal::NotJoined)?;
                if calibration.round_trip.is_zero()
                    || calibration.round_trip > Calibration::MAX_ROUND_TRIP
                {
                    return Err(Refusal::OutOfRange("round_trip_ms"));
                }
                if calibration.output > calibration.round_trip {
                    return Err(Refusal::OutOfRange("output_ms"));
                }
                let p = self.participants.get_mut(&peer).expect("found by its conn");
                p.calibration = Some(calibration);
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::SenderClock { conn, lateness_ms } => {
                let peer = self.by_conn(conn).ok_or(Refusal::NotJoined)?;
                let p = self.participants.get_mut(&peer).expect("found by its conn");
                p.sender_lateness = Some((conn, lateness_ms));
                self.one_way_moved(peer);
                Ok(Reply::Done)
            }
            Input::WallClock { conn, offset_ms } => {
                let peer = self.by_conn(conn).ok_or(Refusal::NotJoined)?;
                if !offset_ms.is_finite() {
                    return Err(Refusal::OutOfRange("offset_ms"));
                }
                let p = self.participants.get_mut(&peer).expect("found by its conn");
                p.wall_offset = Some((conn, offset_ms));
                self.one_way_moved(peer);
                Ok(Reply::Done)
            }
            Input::Recorded(news) => {
                let participants = &self.participants;
                self.recordings.news(news, |peer| {
                    participants
                        .get(&peer)
                        .map(|p| p.name.clone())
                        .unwrap_or_default()
                });
                self.changed = true;
                Ok(Reply::Done)
            }
            Input::Tick => {
                self.expire(now);
                self.timeline.retune(now);
                Ok(Reply::Done)
            }
            Input::Shutdown => {
                self.shutting_down = true;
                let everyone: Vec<PeerId> = self.participants.keys().copied().collect();
                for peer in everyone {
                    self.remove(peer, ByeReason::Shutdown);
                }
                Ok(Reply::Done)
            }
        };
        self.update_lead();
        self.follow_recording();
        self.follow_in_ear(now);
        if std::mem::take(&mut self.changed) && !self.actions.contains(&Action::Changed) {
            self.actions.push_back(Action::Changed);
        }
        result
    }

    /// The next thing to do; call until `None` after every [`Room::handle`].
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Input::Tick`] is next due, if anything is waiting for time.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.participants
            .values()
            .filter_map(|p| self.deadline_of(p))
            .min()
    }

    /// A participant's next deadline: live media on its connection, or the end of its
    /// grace without one.
    fn deadline_of(&self, p: &Participant) -> Option<Duration> {
        match p.conn {
            Some(_) => p.live_by,
            None => p.lost_since.map(|t| t + self.config.rejoin_grace),
        }
    }

    /// A snapshot for the phones, the host and the panel.
    pub fn view(&self) -> RoomView {
        let entry_view = |e: &super::night::Entry| EntryView {
            id: e.id,
            song: e.song.clone(),
            singers: e
                .singers
                .iter()
                .filter_map(|p| Some((*p, self.participants.get(p)?.name.clone())))
                .collect(),
            mode: e.mode,
        };
        RoomView {
            queue: self.night.queue().iter().map(entry_view).collect(),
            song: self.night.now_playing().map(|now| SongView {
                entry: entry_view(&now.entry),
                now: now.clone(),
            }),
            problems: self.night.problems().cloned().collect(),
            participants: self
                .participants
                .iter()
                .map(|(&peer, p)| ParticipantView {
                    peer,
                    name: p.name.clone(),
                    role: p.role,
                    slot: p.slot,
                    presence: p.presence,
                    level_db: if p.role == Role::Singer {
                        p.figures.level_db
                    } else {
                        -120.0
                    },
                    delay_ms: p.figures.delay_ms,
                    loss_pct: p.loss_pct,
                    sync_ms: p.sync_ms,
                    round_trip_ms: p.calibration.map(|c| c.round_trip.as_secs_f32() * 1000.0),
                    one_way_ms: p.one_way().map(|d| d.as_secs_f32() * 1000.0),
                })
                .collect(),
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(k, s)| SlotView {
                    slot: SlotId(k),
                    peer: s.holder,
                    settings: s.settings,
                })
                .collect(),
            master_gain_db: self.master_gain_db,
            backing_gain_db: self.backing_gain_db,
            backing_muted: self.backing_muted,
            backing_source: self.night.source(),
            live: self.night.live().cloned(),
            line_in_configured: self.config.line_in,
            singer_limit: self.singer_limit,
            pin_set: !self.pin.is_empty(),
            lead_ms: self.lead_frames as f32 / 48.0,
            venue_delay_ms: self.in_ear.backing().as_secs_f32() * 1000.0,
            recordings: self.recordings.view(),
        }
    }

    /// Stage slots.
    pub fn max_singers(&self) -> usize {
        self.slots.len()
    }

    fn emit(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Turns the night's effects into actions (and stage moves).
    /// Starts or ends the song's recording as the transport moved.
    fn follow_recording(&mut self) {
        let in_ear = self.in_ear_song();
        let (participants, slots) = (&self.participants, &self.slots);
        let voices = |singers: &[PeerId]| {
            singers
                .iter()
                .filter_map(|peer| {
                    let p = participants.get(peer)?;
                    let slot = p.slot?;
                    let settings = slots[slot.0].settings;
                    Some(RecordVoice {
                        peer: *peer,
                        name: p.name.clone(),
                        slot,
                        gain_db: if settings.muted {
                            -120.0
                        } else {
                            settings.gain_db
                        },
                        pan: settings.pan,
                        to_the_box: p.sung_late(in_ear),
                    })
                })
                .collect()
        };
        match self.recordings.follow(self.night.now_playing(), voices) {
            Follow::Same => {}
            Follow::Stop => {
                self.record_shifts.clear();
                self.emit(Action::RecordStop);
                self.changed = true;
                return;
            }
            Follow::Start(plan) => {
                self.record_shifts = plan.voices.iter().map(|v| (v.peer, v.to_the_box)).collect();
                self.emit(Action::Record(plan));
                self.changed = true;
                return;
            }
        }
        // The recording running follows each voice's place as it is measured anew (a
        // one-way time that settles, an in-ear phone's playout that wanders).
        let mut moved = Vec::new();
        for (peer, told) in &mut self.record_shifts {
            let Some(now) = self.participants.get(peer).map(|p| p.sung_late(in_ear)) else {
                continue;
            };
            if now.abs_diff(*told) >= RECORD_SHIFT_STEP {
                *told = now;
                moved.push((*peer, now));
            }
        }
        for (peer, to_the_box) in moved {
            self.emit(Action::RecordShift { peer, to_the_box });
        }
    }

    /// Whether the song playing is sung in-ear.
    fn in_ear_song(&self) -> bool {
        self.night
            .now_playing()
            .is_some_and(|n| n.entry.mode == SyncMode::InEar)
    }

    /// Holds the speakers back while an in-ear song is the song: by the stage timeline
    /// and the slowest seated voice's uplink (`control::in_ear`). A singer's uplink is
    /// how late it reaches the box against the timeline ([`Participant::sung_late`]:
    /// its phone's playout, capture, packet and network) and the box's jitter buffer.
    fn follow_in_ear(&mut self, now: Duration) {
        let on = self.in_ear_song();
        let uplinks: Vec<Uplink> = self
            .participants
            .iter()
            .filter(|(_, p)| p.slot.is_some())
            .map(|(peer, p)| Uplink {
                singer: peer.singer(),
                uplink: p.sung_late(true)
                    + Duration::from_secs_f32(p.figures.delay_ms.max(0.0) / 1000.0),
            })
            .collect();
        let commands = self.in_ear.follow(now, on, self.stage_behind, &uplinks);
        for command in commands {
            self.emit(Action::Engine(command));
            self.changed = true;
        }
    }

    /// Shows a participant's one-way time when it moved by a millisecond or more.
    fn one_way_moved(&mut self, peer: PeerId) {
        let Some(p) = self.participants.get_mut(&peer) else {
            return;
        };
        let ms = p.one_way().map(|d| d.as_secs_f32() * 1000.0);
        let moved = match (p.one_way_shown, ms) {
            (Some(old), Some(new)) => (old - new).abs() >= 1.0,
            (old, new) => old.is_some() != new.is_some(),
        };
        if moved {
            p.one_way_shown = ms;
            self.changed = true;
        }
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Player(command) => self.emit(Action::Player(command)),
                Effect::LineIn(command) => self.emit(Action::LineIn(command)),
                Effect::Feed(generation) => self.emit(Action::Feed(generation)),
                Effect::Engine { generation, paused } => {
                    self.emit(Action::Engine(Command::Backing { generation, paused }))
                }
                Effect::Stage(singers) => self.stage(&singers),
            }
        }
    }

    /// Puts `singers` (those still here) into slots A, B, … in order, swapping with
    /// whoever held those slots.
    fn stage(&mut self, singers: &[PeerId]) {
        for (k, peer) in singers.iter().enumerate() {
            let Some(from) = self.participants.get(peer).and_then(|p| p.slot) else {
                continue;
            };
            if k < self.slots.len() && from != SlotId(k) {
                self.swap_slots(from, SlotId(k));
            }
        }
    }

    /// Swaps the holders of two slots. The host's settings (gain, mute, pan) stay with
    /// the slots; each singer's own (monitor, reverb) go with the singer.
    fn swap_slots(&mut self, x: SlotId, y: SlotId) {
        let own = |s: &Slot| {
            s.holder
                .map(|_| (s.settings.monitor, s.settings.reverb_wet))
        };
        let (own_x, own_y) = (own(&self.slots[x.0]), own(&self.slots[y.0]));
        let (holder_x, holder_y) = (self.slots[x.0].holder, self.slots[y.0].holder);
        for (slot, holder, own) in [(x, holder_y, own_y), (y, holder_x, own_x)] {
            let s = &mut self.slots[slot.0];
            s.holder = holder;
            let (monitor, reverb) = own.unwrap_or((0.0, 0.0));
            s.settings.monitor = monitor;
            s.settings.reverb_wet = reverb;
            let settings = s.settings;
            let Some(peer) = holder else { continue };
            let p = self
                .participants
                .get_mut(&peer)
                .expect("a holder is a participant");
            p.slot = Some(slot);
            self.emit(Action::Engine(Command::SetSinger {
                singer: peer.singer(),
                settings,
            }));
            let p = &self.participants[&peer];
            if let Some(conn) = p.conn {
                let mix = self.route_of(p, peer);
                self.emit(Action::Route { conn, mix });
            }
        }
        self.changed = true;
    }

    fn by_conn(&self, conn: ConnId) -> Option<PeerId> {
        self.participants
            .iter()
            .find(|(_, p)| p.conn == Some(conn))
            .map(|(&peer, _)| peer)
    }

    /// Every participant's token is compared (in constant time each), so the time
    /// taken says nothing about which, if any, matched.
    fn by_token(&self, token: &Token) -> Option<PeerId> {
        let mut found = None;
        for (&peer, p) in &self.participants {
            if p.token.matches(token) {
                found = Some(peer);
            }
        }
        found
    }

    fn route_of(&self, p: &Participant, peer: PeerId) -> MixId {
        match p.slot {
            Some(slot) if !self.slots[slot.0].settings.hears_venue_mix() => {
                MixId::Personal(peer.singer())
            }
            _ => MixId::Venue,
        }
    }

    fn welcome(&self, peer: PeerId, rejoined: bool) -> Welcome {
        let p = &self.participants[&peer];
        Welcome {
            peer,
            token: p.token,
            role: p.role,
            name: p.name.clone(),
            slot: p.slot,
            settings: p.slot.map(|s| self.slots[s.0].settings),
            rejoined,
            calibration: p.calibration,
        }
    }

    fn join(
        &mut self,
        now: Duration,
        conn: ConnId,
        request: JoinRequest,
    ) -> Result<Welcome, Refusal> {
        if self.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        if self.by_conn(conn).is_some() {
            return Err(Refusal::AlreadyJoined);
        }
        if let Some(peer) = request.token.as_ref().and_then(|t| self.by_token(t)) {
            // A rejoin: the token is the capability, so no PIN is asked again (the host
            // may have changed it meanwhile; people on stage keep their place).
            let p = self.participants.get_mut(&peer).expect("found above");
            let old = p.conn.replace(conn);
            p.presence = Presence::Connecting;
            p.live_by = Some(now + self.config.join_deadline);
            if let Some(old) = old {
                self.emit(Action::Bye {
                    conn: old,
                    reason: ByeReason::Replaced,
                });
            }
            let p = &self.participants[&peer];
            let mix = self.route_of(p, peer);
            self.emit(Action::Route { conn, mix });
            self.changed = true;
            return Ok(self.welcome(peer, true));
        }
        // A backing feed is admitted with the host PIN (it can take over the speakers),
        // everyone else with the room's.
        let backing = request.role == Role::Backing;
        let pin = if backing {
            self.config.host_pin.as_str()
        } else {
            self.pin.as_str()
        };
        if !pin.is_empty() || backing {
            if let Some(from) = request.from {
                // A guesser who must wait is refused without looking at the PIN.
                self.throttle.check(from, now).map_err(Refusal::SlowDown)?;
            }
            let given = request.pin.as_deref().unwrap_or("");
            if pin.is_empty() || !constant_time_eq(given.as_bytes(), pin.as_bytes()) {
                if let Some(from) = request.from {
                    self.throttle.failed(from, now);
                }
                return Err(Refusal::WrongPin);
            }
            if let Some(from) = request.from {
                self.throttle.succeeded(from);
            }
        }
        let slot = match request.role {
            Role::Singer => {
                let open = &self.slots[..self.singer_limit];
                let free = open.iter().position(|s| s.holder.is_none());
                Some(SlotId(free.ok_or(Refusal::Full(Role::Singer))?))
            }
            Role::Listener => {
                if self.listeners() >= self.config.max_listeners {
                    return Err(Refusal::Full(Role::Listener));
                }
                None
            }
            Role::Backing => {
                if self.participants.values().any(|p| p.role == Role::Backing) {
                    return Err(Refusal::Full(Role::Backing));
                }
                None
            }
        };
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        if let Some(slot) = slot {
            let s = &mut self.slots[slot.0];
            s.holder = Some(peer);
            // The host's settings stay with the slot; the singer's own start afresh.
            s.settings.monitor = 0.0;
            s.settings.reverb_wet = 0.0;
            let settings = s.settings;
            self.emit(Action::Engine(Command::AddSinger {
                singer: peer.singer(),
                settings,
            }));
        }
        self.participants.insert(
            peer,
            Participant {
                name: request.name,
                role: request.role,
                token: request.new_token,
                conn: Some(conn),
                slot,
                presence: Presence::Connecting,
                live_by: Some(now + self.config.join_deadline),
                lost_since: None,
                was_live: false,
                rejoinable: request.rejoinable,
                figures: SingerFigures {
                    level_db: -120.0,
                    ..SingerFigures::default()
                },
                loss_pct: 0.0,
                sync_ms: None,
                calibration: None,
                sender_lateness: None,
                wall_offset: None,
                one_way_shown: None,
            },
        );
        if request.role == Role::Listener {
            self.emit(Action::Engine(Command::SetListeners(
                self.listeners() as u32
            )));
        }
        let mix = self.route_of(&self.participants[&peer], peer);
        self.emit(Action::Route { conn, mix });
        self.changed = true;
        Ok(self.welcome(peer, false))
    }

    fn listeners(&self) -> usize {
        self.participants
            .values()
            .filter(|p| p.role == Role::Listener)
            .count()
    }

    fn media(&mut self, now: Duration, conn: ConnId, state: MediaState) {
        let Some(peer) = self.by_conn(conn) else {
            return; // A connection that is no longer anyone's: its media is being closed.
        };
        let p = self.participants.get_mut(&peer).expect("found above");
        match state {
            MediaState::Connected => {
                p.presence = Presence::Live;
                p.live_by = None;
                p.lost_since = None;
                p.was_live = true;
            }
            MediaState::Disconnected => p.presence = Presence::Reconnecting,
            MediaState::Failed => return self.lose(now, peer, conn),
        }
        self.changed = true;
    }

    /// The participant's connection (or its media) is gone: a phone that was live keeps
    /// its place for the grace, anything else leaves at once.
    fn lose(&mut self, now: Duration, peer: PeerId, conn: ConnId) {
        let p = self.participants.get_mut(&peer).expect("caller found it");
        if !p.rejoinable || !p.was_live {
            self.remove(peer, ByeReason::Timeout);
            return;
        }
        let lost_since = *p.lost_since.get_or_insert(now);
        if lost_since + self.config.rejoin_grace <= now {
            // Its grace ran out while it tried again.
            self.remove(peer, ByeReason::Timeout);
            return;
        }
        p.conn = None;
        p.presence = Presence::Reconnecting;
        p.live_by = None;
        p.sync_ms = None;
        self.timeline.forget(peer);
        self.emit(Action::Bye {
            conn,
            reason: ByeReason::Timeout,
        });
        self.changed = true;
    }

    /// Tells the engine the lead the phones need, while songs are the backing (a live
    /// source has nothing queued ahead to lead with).
    fn update_lead(&mut self) {
        let lead = if self.night.source() == BackingSource::Songs {
            crate::engine::frames_in(Duration::from_micros(self.timeline.lead_us() as u64)) as u32
        } else {
            0
        };
        if lead != self.lead_frames {
            self.lead_frames = lead;
            self.emit(Action::Engine(Command::SetLead { frames: lead }));
            self.changed = true;
        }
    }

    fn remove(&mut self, peer: PeerId, reason: ByeReason) {
        self.timeline.forget(peer);
        let Some(p) = self.participants.remove(&peer) else {
            return;
        };
        if let Some(conn) = p.conn {
            self.emit(Action::Bye { conn, reason });
        }
        self.emit(Action::Left { peer, reason });
        self.night.forget(peer);
        if p.role == Role::Backing && self.night.source() == BackingSource::Whip {
            // The feed is gone: the songs have the backing again.
            if let Ok(effects) = self.night.set_source(BackingSource::Songs, true) {
                self.carry_out(effects);
            }
        }
        match p.slot {
            Some(slot) => {
                self.slots[slot.0].holder = None;
                self.emit(Action::Engine(Command::RemoveSinger(peer.singer())));
            }
            None => self.emit(Action::Engine(Command::SetListeners(
                self.listeners() as u32
            ))),
        }
        self.changed = true;
    }

    fn expire(&mut self, now: Duration) {
        let due: Vec<(PeerId, Option<ConnId>)> = self
            .participants
            .iter()
            .filter(|(_, p)| self.deadline_of(p).is_some_and(|t| t <= now))
            .map(|(&peer, p)| (peer, p.conn))
            .collect();
        for (peer, conn) in due {
            match conn {
                // No live media in time on this connection.
                Some(conn) => self.lose(now, peer, conn),
                // The grace is over.
                None => self.remove(peer, ByeReason::Timeout),
            }
        }
    }

    fn change_slot(&mut self, slot: SlotId, change: SlotChange) -> Result<(), Refusal> {
        let s = self.slots.get(slot.0).ok_or(Refusal::UnknownSlot)?;
        // Check everything before changing anything: a refused change changes nothing.
        if let Some(gain_db) = change.gain_db {
            check_gain("gain_db", gain_db)?;
        }
        check_range("pan", change.pan, -1.0, 1.0)?;
        check_range("monitor", change.monitor, 0.0, 1.0)?;
        check_range("reverb", change.reverb, 0.0, 1.0)?;
        let mut settings = s.settings;
        let before = settings;
        if let Some(v) = change.gain_db {
            settings.gain_db = v;
        }
        if let Some(v) = change.muted {
            settings.muted = v;
        }
        if let Some(v) = change.pan {
            settings.pan = v;
        }
        if let Some(v) = change.monitor {
            settings.monitor = v;
        }
        if let Some(v) = change.reverb {
            settings.reverb_wet = v;
        }
        if settings == before {
            return Ok(());
        }
        self.slots[slot.0].settings = settings;
        self.changed = true;
        let Some(peer) = self.slots[slot.0].holder else {
            return Ok(()); // A preset for the next singer in this slot.
        };
        self.emit(Action::Engine(Command::SetSinger {
            singer: peer.singer(),
            settings,
        }));
        if before.hears_venue_mix() != settings.hears_venue_mix() {
            let p = &self.participants[&peer];
            if let Some(conn) = p.conn {
                let mix = self.route_of(p, peer);
                self.emit(Action::Route { conn, mix });
            }
        }
        Ok(())
    }

    fn figures(&mut self, singer: SingerId, figures: SingerFigures) {
        let Some(p) = self.participants.get_mut(&PeerId(singer.0)) else {
            return; // A report that crossed the singer's departure.
        };
        let lost = figures.lost.saturating_sub(p.figures.lost);
        let packets = figures.packets.saturating_sub(p.figures.packets);
        p.loss_pct = if lost + packets > 0 {
            lost as f32 * 100.0 / (lost + packets) as f32
        } else {
            0.0
        };
        p.figures = figures;
        self.changed = true;
    }
}

fn check_gain(field: &'static str, gain_db: f32) -> Result<(), Refusal> {
    check_range(field, Some(gain_db), GAIN_MIN_DB, GAIN_MAX_DB)
}

fn check_range(field: &'static str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), Refusal> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(Refusal::OutOfRange(field)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
