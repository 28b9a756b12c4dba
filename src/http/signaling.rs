//! The signaling wire format: versioned JSON messages between a phone and the box
//! (docs/protocol.md). Pure: parsing and serialising only, no sockets.
//!
//! Parsing never panics: any text is either a [`ClientMessage`] or a [`WireError`] that
//! names what was wrong, which the connection sends back to that phone alone.

use serde::Serialize;
use serde_json::Value;

use crate::control::night::{BackingSource, EntryId, Problem, SyncMode, Transport};
use crate::control::recording::Take;
use crate::control::{Calibration, PeerId, Role, RoomView, SlotChange, SlotId, Token};
use crate::songs::library::{LibrarySong, SongId};

/// Protocol version spoken here.
pub const PROTOCOL_VERSION: u64 = 1;

/// Longest name accepted, in characters (after trimming).
pub const MAX_NAME_CHARS: usize = 32;

/// Longest SDP accepted, bytes.
pub const MAX_SDP_BYTES: usize = 64 * 1024;

/// Longest song search accepted, characters.
pub const MAX_QUERY_CHARS: usize = crate::songs::library::MAX_QUERY_CHARS;

/// The most delay a phone may say it adds of its own, ms.
pub const MAX_EXTRA_MS: f64 = 2_000.0;

/// The largest `wall_clock` offset, ms: a wall clock in the year 5000 or one before
/// 1970 is not a phone's (today's is about 1.8e12 ms).
pub const MAX_WALL_OFFSET_MS: f64 = 1e14;

/// The longest round trip a `calibration` may report, ms (the room's bound).
pub const MAX_ROUND_TRIP_MS: f64 = Calibration::MAX_ROUND_TRIP.as_millis() as f64;

/// Furthest a song search pages.
pub const MAX_OFFSET: u64 = 1_000_000;

/// What a phone sends.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// Take a seat.
    Join {
        /// Protocol version.
        v: u64,
        /// Display name (trimmed, 1..=32 chars).
        name: String,
        /// Role.
        role: Role,
        /// PIN, when given.
        pin: Option<String>,
        /// Token from an earlier `welcome`: rejoin in the same place.
        token: Option<Token>,
    },
    /// SDP offer.
    Offer {
        /// The SDP.
        sdp: String,
    },
    /// Trickled ICE candidate (`None` = end of candidates), as `RTCIceCandidateInit` JSON.
    Candidate {
        /// The candidate object, re-serialised.
        candidate: Option<String>,
    },
    /// Own mix settings.
    Mix {
        /// Monitor level 0..=1.
        monitor: Option<f32>,
        /// Reverb 0..=1.
        reverb: Option<f32>,
    },
    /// Heartbeat.
    Ping {
        /// Echoed back.
        t: f64,
    },
    /// What the phone plays (`docs/sync.md`): the return mix's RTP timestamp `rtp`
    /// reaches its listener's ear at `at` (the box's clock, ms, from `pong`'s `now`),
    /// `extra` ms of which the phone adds itself.
    Playout {
        /// RTP timestamp of the return mix.
        rtp: u32,
        /// When it is heard, box clock, ms.
        at: f64,
        /// The phone's own added delay, ms (0 to [`MAX_EXTRA_MS`]).
        extra: f64,
    },
    /// The phone's wall clock, the one its RTCP sender reports use, against the box's
    /// (`docs/sync.md`): the box's clock (`pong`'s `now`) minus the page's
    /// `performance.timeOrigin + performance.now()`, ms.
    WallClock {
        /// Box clock − the page's wall clock, ms (finite, at most [`MAX_WALL_OFFSET_MS`]
        /// either way).
        offset: f64,
    },
    /// Asks for the levels of this phone's return mix (answered with `envelope`).
    Envelope,
    /// The phone's round trip from its speaker to its own microphone (`docs/sync.md`).
    Calibration {
        /// Output + input latency, ms (above 0, at most [`MAX_ROUND_TRIP_MS`]).
        round_trip_ms: f64,
        /// What the browser says its output adds, ms (0 to `round_trip_ms`).
        output_ms: f64,
    },
    /// Leave now.
    Leave,
    /// Search the song library.
    Songs {
        /// Words that must all appear in the artist or title ("" lists everything).
        query: String,
        /// How many results to skip (paging).
        offset: usize,
    },
    /// Add a song to the queue.
    QueueAdd {
        /// The song.
        song: SongId,
        /// A second singer for a duet.
        partner: Option<PeerId>,
    },
    /// Take oneself off a queue entry (the one who added it removes it).
    QueueWithdraw {
        /// The entry.
        entry: EntryId,
    },
    /// The host page logs in (instead of joining).
    HostLogin {
        /// Protocol version.
        v: u64,
        /// The host PIN.
        pin: String,
    },
    /// Host: the transport.
    Transport(Transport),
    /// Host: remove a queue entry.
    QueueRemove {
        /// The entry.
        entry: EntryId,
    },
    /// Host: move a queue entry (0 is next).
    QueueMove {
        /// The entry.
        entry: EntryId,
        /// Its new place.
        to: usize,
    },
    /// Host: whom the singers of an entry (queued or playing) follow.
    Mode {
        /// The entry.
        entry: EntryId,
        /// Stage or in-ear.
        mode: SyncMode,
    },
    /// Host: a slot's settings (only the fields given).
    Slot {
        /// The slot.
        slot: SlotId,
        /// The change.
        change: SlotChange,
    },
    /// Host: the master level.
    Master {
        /// Gain, dB.
        gain_db: f32,
    },
    /// Host: the backing level, mute and source (only the fields given).
    Backing {
        /// Gain, dB.
        gain_db: Option<f32>,
        /// Silenced.
        muted: Option<bool>,
        /// Songs or the line-in.
        source: Option<BackingSource>,
    },
    /// Host: send a participant away.
    Kick {
        /// Who.
        peer: PeerId,
    },
}

impl ClientMessage {
    /// Whether only a host session may send it.
    pub fn is_host_only(&self) -> bool {
        matches!(
            self,
            ClientMessage::Transport(_)
                | ClientMessage::QueueRemove { .. }
                | ClientMessage::QueueMove { .. }
                | ClientMessage::Mode { .. }
                | ClientMessage::Slot { .. }
                | ClientMessage::Master { .. }
                | ClientMessage::Backing { .. }
                | ClientMessage::Kick { .. }
        )
    }
}

/// A finite number field, if present.
fn number_field(
    obj: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<f64>, WireError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| {
                WireError::new(ErrorCode::BadField, format!("`{name}` must be a number"))
            }),
    }
}

/// A boolean field, if present.
fn bool_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<bool>, WireError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(WireError::new(
            ErrorCode::BadField,
            format!("`{name}` must be true or false"),
        )),
    }
}

fn entry_field(obj: &serde_json::Map<String, Value>) -> Result<EntryId, WireError> {
    field(obj, "entry")?
        .as_u64()
        .and_then(|e| u32::try_from(e).ok())
        .map(EntryId)
        .ok_or_else(|| WireError::new(ErrorCode::BadField, "`entry` must be an entry id"))
}

/// Error codes of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object with a string `type`.
    BadJson,
    /// Unknown `type`.
    UnknownType,
    /// A field is missing or wrong.
    BadField,
    /// Not joined yet.
    NotJoined,
    /// Second join.
    AlreadyJoined,
    /// Unsupported version (fatal).
    Version,
    /// Wrong or missing PIN (fatal).
    WrongPin,
    /// No seat (fatal).
    RoomFull,
    /// Offer unusable.
    BadSdp,
    /// Second offer.
    AlreadyOffered,
    /// Frame too large (fatal).
    TooLarge,
    /// Messages faster than the box allows (fatal).
    RateLimited,
    /// The box failed.
    Internal,
    /// The queue or the transport said no (full, not yours, nothing playing, …).
    Refused,
    /// Only the host page may send this.
    Forbidden,
}

impl ErrorCode {
    /// Whether the connection closes after this error.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::Version
                | ErrorCode::WrongPin
                | ErrorCode::RoomFull
                | ErrorCode::TooLarge
                | ErrorCode::RateLimited
        )
    }
}

/// A refused message: code and human text.
#[derive(Clone, Debug, PartialEq)]
pub struct WireError {
    /// Code.
    pub code: ErrorCode,
    /// Message for people.
    pub message: String,
}

impl WireError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }
}

fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a Value, WireError> {
    obj.get(name)
        .ok_or_else(|| WireError::new(ErrorCode::BadField, format!("missing field `{name}`")))
}

fn string_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, WireError> {
    field(obj, name)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| WireError::new(ErrorCode::BadField, format!("`{name}` must be a string")))
}

fn unit_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<f32>, WireError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (0.0..=1.0).contains(&x) => Ok(Some(x as f32)),
            _ => Err(WireError::new(
                ErrorCode::BadField,
                format!("`{name}` must be a number from 0 to 1"),
            )),
        },
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<ClientMessage, WireError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| WireError::new(ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(WireError::new(ErrorCode::BadJson, "expected a JSON object"));
    };
    let Some(kind) = obj.get("type").and_then(Value::as_str) else {
        return Err(WireError::new(
            ErrorCode::BadJson,
            "missing string field `type`",
        ));
    };
    match kind {
        "join" => {
            let v = field(&obj, "v")?
                .as_u64()
                .ok_or_else(|| WireError::new(ErrorCode::BadField, "`v` must be an integer"))?;
            let name = string_field(&obj, "name")?.trim().to_string();
            let chars = name.chars().count();
            if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
                return Err(WireError::new(
                    ErrorCode::BadField,
                    format!("`name` must be 1 to {MAX_NAME_CHARS} printable characters"),
                ));
            }
            let role = match string_field(&obj, "role")?.as_str() {
                "singer" => Role::Singer,
                "listener" => Role::Listener,
                _ => {
                    return Err(WireError::new(
                        ErrorCode::BadField,
                        "`role` must be \"singer\" or \"listener\"",
                    ))
                }
            };
            let pin = match obj.get("pin") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    return Err(WireError::new(
                        ErrorCode::BadField,
                        "`pin` must be a string",
                    ))
                }
            };
            let token = match obj.get("token") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(Token::parse(s).ok_or_else(|| {
                    WireError::new(ErrorCode::BadField, "`token` must be 32 hex digits")
                })?),
                Some(_) => {
                    return Err(WireError::new(
                        ErrorCode::BadField,
                        "`token` must be a string",
                    ))
                }
            };
            Ok(ClientMessage::Join {
                v,
                name,
                role,
                pin,
                token,
            })
        }
        "offer" => {
            let sdp = string_field(&obj, "sdp")?;
            if sdp.len() > MAX_SDP_BYTES {
                return Err(WireError::new(ErrorCode::BadField, "`sdp` is too long"));
            }
            Ok(ClientMessage::Offer { sdp })
        }
        "candidate" => match field(&obj, "candidate")? {
            Value::Null => Ok(ClientMessage::Candidate { candidate: None }),
            c @ Value::Object(inner) => {
                if !inner.get("candidate").is_some_and(Value::is_string) {
                    return Err(WireError::new(
                        ErrorCode::BadField,
                        "`candidate.candidate` must be a string",
                    ));
                }
                Ok(ClientMessage::Candidate {
                    candidate: Some(c.to_string()),
                })
            }
            _ => Err(WireError::new(
                ErrorCode::BadField,
                "`candidate` must be an object or null",
            )),
        },
        "mix" => Ok(ClientMessage::Mix {
            monitor: unit_field(&obj, "monitor")?,
            reverb: unit_field(&obj, "reverb")?,
        }),
        "ping" => {
            let t = field(&obj, "t")?
                .as_f64()
                .ok_or_else(|| WireError::new(ErrorCode::BadField, "`t` must be a number"))?;
            Ok(ClientMessage::Ping { t })
        }
        "playout" => {
            let rtp = field(&obj, "rtp")?
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| {
                    WireError::new(ErrorCode::BadField, "`rtp` must be an RTP timestamp")
                })?;
            let at = field(&obj, "at")?
                .as_f64()
                .filter(|a| a.is_finite() && *a >= 0.0)
                .ok_or_else(|| {
                    WireError::new(ErrorCode::BadField, "`at` must be the box's time, ms")
                })?;
            let extra = field(&obj, "extra")?
                .as_f64()
                .filter(|e| (0.0..=MAX_EXTRA_MS).contains(e))
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::BadField,
                        format!("`extra` must be a delay from 0 to {MAX_EXTRA_MS} ms"),
                    )
                })?;
            Ok(ClientMessage::Playout { rtp, at, extra })
        }
        "wall_clock" => {
            let offset = field(&obj, "offset")?
                .as_f64()
                .filter(|o| o.abs() <= MAX_WALL_OFFSET_MS)
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::BadField,
                        "`offset` must be the box's clock less the page's wall clock, ms",
                    )
                })?;
            Ok(ClientMessage::WallClock { offset })
        }
        "envelope" => Ok(ClientMessage::Envelope),
        "calibration" => {
            let round_trip_ms = field(&obj, "round_trip_ms")?
                .as_f64()
                .filter(|r| *r > 0.0 && *r <= MAX_ROUND_TRIP_MS)
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::BadField,
                        format!("`round_trip_ms` must be above 0 and at most {MAX_ROUND_TRIP_MS}"),
                    )
                })?;
            let output_ms = field(&obj, "output_ms")?
                .as_f64()
                .filter(|o| (0.0..=round_trip_ms).contains(o))
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::BadField,
                        "`output_ms` must be from 0 to `round_trip_ms`",
                    )
                })?;
            Ok(ClientMessage::Calibration {
                round_trip_ms,
                output_ms,
            })
        }
        "leave" => Ok(ClientMessage::Leave),
        "songs" => {
            let query = match obj.get("query") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(q)) if q.chars().count() <= MAX_QUERY_CHARS => q.clone(),
                Some(_) => {
                    return Err(WireError::new(
                        ErrorCode::BadField,
                        format!("`query` must be a string of at most {MAX_QUERY_CHARS} characters"),
                    ))
                }
            };
            let offset = match obj.get("offset") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_u64().filter(|&o| o <= MAX_OFFSET).ok_or_else(|| {
                    WireError::new(
                        ErrorCode::BadField,
                        format!("`offset` must be an integer from 0 to {MAX_OFFSET}"),
                    )
                })? as usize,
            };
            Ok(ClientMessage::Songs { query, offset })
        }
        "queue_add" => {
            let song = SongId::parse(&string_field(&obj, "song")?).ok_or_else(|| {
                WireError::new(
                    ErrorCode::BadField,
                    "`song` must be a song id (16 hex digits)",
                )
            })?;
            let partner = match obj.get("partner") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => Some(PeerId::parse(p).ok_or_else(|| {
                    WireError::new(
                        ErrorCode::BadField,
                        "`partner` must be a peer id like \"p7\"",
                    )
                })?),
                Some(_) => {
                    return Err(WireError::new(
                        ErrorCode::BadField,
                        "`partner` must be a string",
                    ))
                }
            };
            Ok(ClientMessage::QueueAdd { song, partner })
        }
        "queue_withdraw" => Ok(ClientMessage::QueueWithdraw {
            entry: entry_field(&obj)?,
        }),
        "host" => {
            let v = field(&obj, "v")?
                .as_u64()
                .ok_or_else(|| WireError::new(ErrorCode::BadField, "`v` must be an integer"))?;
            let pin = string_field(&obj, "pin")?;
            if pin.chars().count() > 64 {
                return Err(WireError::new(ErrorCode::BadField, "`pin` is too long"));
            }
            Ok(ClientMessage::HostLogin { v, pin })
        }
        "transport" => {
            let command = match string_field(&obj, "do")?.as_str() {
                "play" => Transport::Play,
                "pause" => Transport::Pause,
                "stop" => Transport::Stop,
                "next" => Transport::Next,
                "seek" => {
                    let ms = number_field(&obj, "ms")?
                        .filter(|ms| (0.0..=86_400_000.0).contains(ms))
                        .ok_or_else(|| {
                            WireError::new(
                                ErrorCode::BadField,
                                "`ms` must be a time in the song, ms",
                            )
                        })?;
                    Transport::Seek(std::time::Duration::from_millis(ms as u64))
                }
                "start" => Transport::Start(entry_field(&obj)?),
                _ => {
                    return Err(WireError::new(
                        ErrorCode::BadField,
                        "`do` must be play, pause, stop, next, seek or start",
                    ))
                }
            };
            Ok(ClientMessage::Transport(command))
        }
        "queue_remove" => Ok(ClientMessage::QueueRemove {
            entry: entry_field(&obj)?,
        }),
        "queue_move" => {
            let to = field(&obj, "to")?
                .as_u64()
                .ok_or_else(|| WireError::new(ErrorCode::BadField, "`to` must be a position"))?;
            Ok(ClientMessage::QueueMove {
                entry: entry_field(&obj)?,
                to: to.min(u64::from(u32::MAX)) as usize,
            })
        }
        "mode" => {
            let mode = SyncMode::parse(&string_field(&obj, "mode")?).ok_or_else(|| {
                WireError::new(ErrorCode::BadField, "`mode` must be stage or in_ear")
            })?;
            Ok(ClientMessage::Mode {
                entry: entry_field(&obj)?,
                mode,
            })
        }
        "slot" => {
            let slot = SlotId::parse(&string_field(&obj, "slot")?).ok_or_else(|| {
                WireError::new(ErrorCode::BadField, "`slot` must be a slot letter")
            })?;
            let f32_of = |x: Option<f64>| x.map(|v| v as f32);
            Ok(ClientMessage::Slot {
                slot,
                change: SlotChange {
                    gain_db: f32_of(number_field(&obj, "gain_db")?),
                    muted: bool_field(&obj, "muted")?,
                    pan: f32_of(number_field(&obj, "pan")?),
                    monitor: None,
                    reverb: None,
                },
            })
        }
        "master" => Ok(ClientMessage::Master {
            gain_db: number_field(&obj, "gain_db")?
                .ok_or_else(|| WireError::new(ErrorCode::BadField, "missing field `gain_db`"))?
                as f32,
        }),
        "backing" => Ok(ClientMessage::Backing {
            gain_db: number_field(&obj, "gain_db")?.map(|v| v as f32),
            muted: bool_field(&obj, "muted")?,
            source: match obj.get("source") {
                None => None,
                Some(Value::String(s)) => Some(BackingSource::parse(s).ok_or_else(|| {
                    WireError::new(
                        ErrorCode::BadField,
                        "`source` must be songs, line_in or whip",
                    )
                })?),
                Some(_) => {
                    return Err(WireError::new(
                        ErrorCode::BadField,
                        "`source` must be songs, line_in or whip",
                    ))
                }
            },
        }),
        "kick" => Ok(ClientMessage::Kick {
            peer: PeerId::parse(&string_field(&obj, "peer")?)
                .ok_or_else(|| WireError::new(ErrorCode::BadField, "`peer` must be a peer id"))?,
        }),
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(WireError::new(
                ErrorCode::UnknownType,
                format!("unknown message type `{shown}`"),
            ))
        }
    }
}

/// One participant as the `room` message lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerView {
    /// Id, e.g. "p7".
    pub peer: String,
    /// Display name.
    pub name: String,
    /// singer | listener.
    pub role: &'static str,
    /// Stage slot ("A", "B", …) of a singer.
    pub slot: Option<String>,
    /// Voice level, dBFS.
    pub level_db: f32,
    /// Jitter-buffer delay, ms.
    pub delay_ms: f32,
    /// Loss in the last report interval, %.
    pub loss_pct: f32,
    /// connecting | live | reconnecting.
    pub state: &'static str,
    /// How far its playout is from the speakers', ms (positive: late), once measured.
    pub sync_ms: Option<f32>,
    /// Its speaker-to-microphone round trip, ms, once calibrated.
    pub round_trip_ms: Option<f32>,
    /// The network's fastest one-way time from it to the box, ms, once measured.
    pub one_way_ms: Option<f32>,
}

impl ServerMessage {
    /// The `room` message for the phone `me`: every singer and `me`, and the number of
    /// listeners. Listeners are not listed one by one: with a hundred of them, ten
    /// updates a second to each would be megabytes a second from a Pi.
    pub fn room(view: &RoomView, me: Option<PeerId>) -> ServerMessage {
        let (_, listeners) = view.counts();
        ServerMessage::Room {
            peers: PeerView::list(view, me),
            listeners,
        }
    }
}

impl PeerView {
    /// The singers and `me`, for the `room` message.
    pub fn list(view: &RoomView, me: Option<PeerId>) -> Vec<PeerView> {
        view.participants
            .iter()
            .filter(|p| p.role == Role::Singer || Some(p.peer) == me)
            .map(PeerView::of)
            .collect()
    }

    /// One participant.
    pub fn of(p: &crate::control::room::ParticipantView) -> PeerView {
        PeerView {
            peer: p.peer.to_string(),
            name: p.name.clone(),
            role: p.role.as_str(),
            slot: p.slot.map(|s| s.to_string()),
            level_db: round1(p.level_db),
            delay_ms: round1(p.delay_ms),
            loss_pct: round1(p.loss_pct),
            state: p.presence.as_str(),
            sync_ms: p.sync_ms.map(round1),
            round_trip_ms: p.round_trip_ms.map(round1),
            one_way_ms: p.one_way_ms.map(round1),
        }
    }
}

/// One decimal is all a phone shows; it also keeps the `room` message short.
pub(crate) fn round1(x: f32) -> f32 {
    (x * 10.0).round() / 10.0
}

/// A singer's own mix settings, as `welcome` hands them back.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MixView {
    /// Own voice in the personal mix, 0..=1.
    pub monitor: f32,
    /// Voice reverb, 0..=1.
    pub reverb: f32,
}

/// What the box sends.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// Seat granted.
    Welcome {
        /// Protocol version.
        v: u64,
        /// Peer id.
        peer: String,
        /// singer | listener.
        role: &'static str,
        /// Name as accepted.
        name: String,
        /// Singer seats.
        max_singers: usize,
        /// The secret to rejoin with (keep it; never show it).
        token: String,
        /// Stage slot of a singer.
        slot: Option<String>,
        /// Whether this was a rejoin: place and settings kept.
        rejoined: bool,
        /// A singer's own mix settings as the box has them.
        mix: Option<MixView>,
        /// The phone's round trip (speaker to its own microphone), ms, if it was
        /// calibrated (a rejoin keeps it).
        round_trip_ms: Option<f32>,
    },
    /// SDP answer.
    Answer {
        /// The SDP.
        sdp: String,
    },
    /// A box ICE candidate (RTCIceCandidateInit JSON).
    Candidate {
        /// The candidate.
        candidate: Value,
    },
    /// Who is there.
    Room {
        /// The singers, and the receiving phone itself.
        peers: Vec<PeerView>,
        /// How many listeners are in the room.
        listeners: usize,
    },
    /// Heartbeat answer.
    Pong {
        /// Echo.
        t: f64,
        /// The box's clock when it answered, ms (what `playout` times are on).
        now: f64,
    },
    /// The levels of this phone's return mix as the box encoded it, 2.5 ms apart.
    Envelope {
        /// The RTP timestamp whose audio the first level describes.
        rtp: u32,
        /// Frames (48 kHz) per level.
        step: u32,
        /// Two hex digits per level: 0 = -90 dBFS or less, 255 = 0 dBFS.
        levels: String,
    },
    /// After a `playout` report: how far the phone is from the speakers.
    Sync {
        /// Its playout minus the speakers' for the same backing frame, ms (positive:
        /// late; take this much of the extra delay off).
        offset_ms: f64,
        /// How far ahead of the speakers the return mixes carry the backing, ms.
        lead_ms: f64,
    },
    /// A refusal.
    Error {
        /// Code.
        code: ErrorCode,
        /// Text.
        message: String,
    },
    /// The session ends.
    Bye {
        /// left | kicked | shutdown | replaced | timeout.
        reason: &'static str,
    },
    /// Search results.
    Songs {
        /// The query answered.
        query: String,
        /// Results skipped.
        offset: usize,
        /// Songs that matched in all.
        total: usize,
        /// This page.
        songs: Vec<SongItem>,
    },
    /// A queue entry was made.
    Queued {
        /// Its id.
        entry: u32,
    },
    /// The queue and the song playing (sent when either changes).
    Queue(QueueView),
    /// The host page is logged in.
    #[serde(rename = "host_welcome")]
    HostWelcome {
        /// Protocol version.
        v: u64,
        /// Stage slots.
        max_singers: usize,
    },
    /// The recordings of the songs this phone sang in (sent when they change).
    Recordings {
        /// Newest last.
        recordings: Vec<RecordingItem>,
    },
    /// Everything the host page shows of the room (instead of `room`).
    #[serde(rename = "host_room")]
    HostRoom(HostRoomView),
    /// Which RTP timestamp of this phone's return mix carries which song frame.
    #[serde(rename = "song_clock")]
    SongClock {
        /// The transport's generation (matches the `queue` message's song).
        generation: u32,
        /// The song frame (48 kHz; negative during the count-in)...
        position: i64,
        /// ...that the return mix's audio at this RTP timestamp carries.
        rtp: u32,
        /// Whether the song advances (false: paused, stopped, not started).
        playing: bool,
    },
}

/// A slot as the host sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostSlot {
    /// "A", "B", ….
    pub slot: String,
    /// Its holder's peer id.
    pub peer: Option<String>,
    /// Voice gain, dB.
    pub gain_db: f32,
    /// Muted.
    pub muted: bool,
    /// Pan, -1..=1.
    pub pan: f32,
}

/// The `host_room` message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostRoomView {
    /// Everyone: singers and listeners.
    pub peers: Vec<PeerView>,
    /// The stage slots.
    pub slots: Vec<HostSlot>,
    /// Master level, dB.
    pub master_gain_db: f32,
    /// Backing level, dB.
    pub backing_gain_db: f32,
    /// Backing silenced.
    pub backing_muted: bool,
    /// Where the backing comes from: `songs` or `line_in`.
    pub backing_source: &'static str,
    /// Whether the box has a line-in to choose.
    pub line_in_configured: bool,
    /// The live source (line-in, WHIP feed) while one is the backing.
    pub live_source: Option<LiveView>,
    /// How far ahead of the speakers the phones' backing plays, ms (`docs/sync.md`).
    pub lead_ms: f32,
    /// How long the speakers hold the backing back for an in-ear song's voices, ms.
    pub venue_delay_ms: f32,
    /// The songs' recordings: every one the room lists, the one being made, and why
    /// the last one stopped early.
    pub recording: HostRecordingView,
}

/// The recordings as the host sees them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostRecordingView {
    /// The title of the song being recorded.
    pub now: Option<String>,
    /// Why the last recording stopped early (a full disk), until one is made again.
    pub problem: Option<String>,
    /// The recordings, newest last.
    pub recordings: Vec<RecordingItem>,
}

/// A song's recording, as its singers and the host see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordingItem {
    /// The song's title.
    pub title: String,
    /// Its singers' names.
    pub singers: Vec<String>,
    /// Its page: the files and a QR code (the link is the capability: never shown to
    /// anyone else).
    pub url: String,
    /// Its files.
    pub files: Vec<String>,
    /// Its length, seconds.
    pub seconds: f32,
}

impl RecordingItem {
    /// From the room's record of it.
    pub fn of(take: &Take) -> RecordingItem {
        RecordingItem {
            title: take.title.clone(),
            singers: take.singers.iter().map(|(_, name)| name.clone()).collect(),
            url: format!("/recordings/{}", take.id),
            files: take.files.clone(),
            seconds: round1(take.length.as_secs_f32()),
        }
    }

    /// The recordings `me` sang in.
    pub fn mine(view: &RoomView, me: PeerId) -> Vec<RecordingItem> {
        view.recordings
            .takes
            .iter()
            .filter(|t| t.singers.iter().any(|(p, _)| *p == me))
            .map(RecordingItem::of)
            .collect()
    }
}

/// A live source as the host sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveView {
    /// `line_in` or `whip`.
    pub source: &'static str,
    /// Playing (a line-in: its device is open).
    pub live: bool,
    /// Why not, naming the device.
    pub problem: Option<String>,
}

impl HostRoomView {
    /// From the room's view.
    pub fn of(view: &RoomView) -> HostRoomView {
        HostRoomView {
            peers: view.participants.iter().map(PeerView::of).collect(),
            slots: view
                .slots
                .iter()
                .map(|s| HostSlot {
                    slot: s.slot.to_string(),
                    peer: s.peer.map(|p| p.to_string()),
                    gain_db: s.settings.gain_db,
                    muted: s.settings.muted,
                    pan: s.settings.pan,
                })
                .collect(),
            master_gain_db: view.master_gain_db,
            backing_gain_db: view.backing_gain_db,
            backing_muted: view.backing_muted,
            backing_source: view.backing_source.as_str(),
            line_in_configured: view.line_in_configured,
            lead_ms: round1(view.lead_ms),
            venue_delay_ms: round1(view.venue_delay_ms),
            live_source: view.live.as_ref().map(|l| LiveView {
                source: l.source.as_str(),
                live: l.live,
                problem: l.problem.clone(),
            }),
            recording: HostRecordingView {
                now: view.recordings.now.clone(),
                problem: view.recordings.problem.clone(),
                recordings: view
                    .recordings
                    .takes
                    .iter()
                    .map(RecordingItem::of)
                    .collect(),
            },
        }
    }
}

/// A library song as phones see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SongItem {
    /// Id (16 hex digits).
    pub id: String,
    /// Title.
    pub title: String,
    /// Artist.
    pub artist: Option<String>,
    /// Length, ms.
    pub duration_ms: Option<u64>,
    /// Whether it has timed lyrics.
    pub lyrics: bool,
}

impl SongItem {
    /// From the library's record.
    pub fn of(song: &LibrarySong) -> SongItem {
        SongItem {
            id: song.id.to_string(),
            title: song.title.clone(),
            artist: song.artist.clone(),
            duration_ms: song.duration_ms,
            lyrics: song.lyrics.is_some(),
        }
    }
}

/// A singer on a queue entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntrySinger {
    /// Peer id.
    pub peer: String,
    /// Name.
    pub name: String,
}

/// One queue entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntryItem {
    /// Entry id.
    pub entry: u32,
    /// Song id.
    pub song: String,
    /// Title.
    pub title: String,
    /// Artist.
    pub artist: Option<String>,
    /// Singers, the one who added it first.
    pub singers: Vec<EntrySinger>,
    /// Whom they follow: `stage` (the speakers) or `in_ear` (their phones, in
    /// headphones).
    pub mode: &'static str,
}

/// The song playing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NowItem {
    /// The entry it came from.
    #[serde(flatten)]
    pub entry: EntryItem,
    /// loading | playing | paused.
    pub state: &'static str,
    /// The transport's generation: a new one on every start, seek and stop.
    pub generation: u32,
    /// Length, ms.
    pub duration_ms: Option<u64>,
    /// Where the speakers were at the last change, ms of the song (negative during the
    /// count-in).
    pub position_ms: i64,
    /// The count-in before the song's start (0: none, or after a seek).
    pub count_in_ms: u64,
    /// Its clicks.
    pub beats: u32,
}

/// The `queue` message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueView {
    /// The entries, next first.
    pub entries: Vec<EntryItem>,
    /// The song playing.
    pub song: Option<NowItem>,
    /// Songs that could not play, newest last.
    pub problems: Vec<Problem>,
}

impl QueueView {
    /// The queue part of `view`.
    pub fn of(view: &RoomView) -> QueueView {
        let entry = |e: &crate::control::room::EntryView| EntryItem {
            entry: e.id.0,
            song: e.song.id.to_string(),
            title: e.song.title.clone(),
            artist: e.song.artist.clone(),
            singers: e
                .singers
                .iter()
                .map(|(peer, name)| EntrySinger {
                    peer: peer.to_string(),
                    name: name.clone(),
                })
                .collect(),
            mode: e.mode.as_str(),
        };
        QueueView {
            entries: view.queue.iter().map(entry).collect(),
            song: view.song.as_ref().map(|s| NowItem {
                entry: entry(&s.entry),
                state: s.now.state.as_str(),
                generation: s.now.generation,
                duration_ms: s.now.duration.map(|d| d.as_millis() as u64),
                position_ms: s.now.song_ms(s.now.position),
                count_in_ms: s.now.count_in.as_millis() as u64,
                beats: s.now.beats,
            }),
            problems: view.problems.clone(),
        }
    }
}

impl ServerMessage {
    /// JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }
}

impl From<WireError> for ServerMessage {
    fn from(e: WireError) -> Self {
        ServerMessage::Error {
            code: e.code,
            message: e.message,
        }
    }
}

/// Checks that an offer has at most `max_m_lines` media sections and an audio m-line
/// with Opus at 48 kHz; returns its payload type. The WebRTC stack parses it properly
/// later; this gives the phone a precise error (and keeps offers with thousands of
/// media sections away from the stack).
pub fn check_offer(sdp: &str, max_m_lines: usize) -> Result<u8, WireError> {
    if !sdp.starts_with("v=0") {
        return Err(WireError::new(
            ErrorCode::BadSdp,
            "not an SDP session description",
        ));
    }
    let m_lines = sdp.lines().filter(|l| l.starts_with("m=")).count();
    if m_lines > max_m_lines {
        return Err(WireError::new(
            ErrorCode::BadSdp,
            format!("the offer has {m_lines} media sections; at most {max_m_lines} are allowed"),
        ));
    }
    if !sdp.lines().any(|l| l.starts_with("m=audio ")) {
        return Err(WireError::new(
            ErrorCode::BadSdp,
            "the offer has no audio m-line",
        ));
    }
    // The same reading the answer's sender uses, so what passes here can be answered.
    crate::rtc::opus_payload_type(sdp)
        .ok_or_else(|| WireError::new(ErrorCode::BadSdp, "the offer has no Opus 48 kHz codec"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = match parse(input) {
            Ok(m) => format!("{m:?}"),
            Err(e) => format!("error {:?}: {}", e.code, e.message),
        };
        assert_eq!(got, expect, "input: {input}");
    }

    #[test]
    fn song_and_host_messages_parse_or_name_their_fault() {
        check(
            r#"{"type":"songs","query":"abba","offset":50}"#,
            r#"Songs { query: "abba", offset: 50 }"#,
        );
        check(r#"{"type":"songs"}"#, r#"Songs { query: "", offset: 0 }"#);
        let long = format!(r#"{{"type":"songs","query":"{}"}}"#, "a".repeat(101));
        check(
            &long,
            "error BadField: `query` must be a string of at most 100 characters",
        );
        check(
            r#"{"type":"songs","offset":-1}"#,
            "error BadField: `offset` must be an integer from 0 to 1000000",
        );
        check(
            r#"{"type":"songs","offset":1e12}"#,
            "error BadField: `offset` must be an integer from 0 to 1000000",
        );
        check(
            r#"{"type":"queue_add","song":"af63dc4c8601ec8c","partner":"p3"}"#,
            "QueueAdd { song: SongId(12638187200555641996), partner: Some(PeerId(3)) }",
        );
        for bad in [r#""../../etc/passwd""#, r#""AF63""#, "7", "null"] {
            check(
                &format!(r#"{{"type":"queue_add","song":{bad}}}"#),
                if bad == "7" || bad == "null" {
                    "error BadField: `song` must be a string"
                } else {
                    "error BadField: `song` must be a song id (16 hex digits)"
                },
            );
        }
        check(
            r#"{"type":"queue_add","song":"af63dc4c8601ec8c","partner":"p99999999999"}"#,
            r#"error BadField: `partner` must be a peer id like "p7""#,
        );
        check(
            r#"{"type":"queue_withdraw","entry":4294967296}"#,
            "error BadField: `entry` must be an entry id",
        );
        check(
            r#"{"type":"host","v":1,"pin":"9876"}"#,
            r#"HostLogin { v: 1, pin: "9876" }"#,
        );
        check(
            &format!(r#"{{"type":"host","v":1,"pin":"{}"}}"#, "9".repeat(65)),
            "error BadField: `pin` is too long",
        );
        check(
            r#"{"type":"transport","do":"seek","ms":61000}"#,
            "Transport(Seek(61s))",
        );
        check(
            r#"{"type":"transport","do":"seek","ms":-5}"#,
            "error BadField: `ms` must be a time in the song, ms",
        );
        check(
            r#"{"type":"transport","do":"rewind"}"#,
            "error BadField: `do` must be play, pause, stop, next, seek or start",
        );
        check(
            r#"{"type":"transport","do":"start","entry":3}"#,
            "Transport(Start(EntryId(3)))",
        );
        check(
            r#"{"type":"slot","slot":"B","gain_db":-3,"muted":true}"#,
            "Slot { slot: SlotId(1), change: SlotChange { gain_db: Some(-3.0), muted: Some(true), pan: None, monitor: None, reverb: None } }",
        );
        check(
            r#"{"type":"slot","slot":"B","pan":"left"}"#,
            "error BadField: `pan` must be a number",
        );
        check(
            r#"{"type":"backing","muted":1}"#,
            "error BadField: `muted` must be true or false",
        );
        check(
            r#"{"type":"backing","source":"line_in"}"#,
            "Backing { gain_db: None, muted: None, source: Some(LineIn) }",
        );
        for bad in [r#""tape""#, "1", "null", r#""LINE_IN""#] {
            check(
                &format!(r#"{{"type":"backing","source":{bad}}}"#),
                "error BadField: `source` must be songs, line_in or whip",
            );
        }
        assert!(parse(r#"{"type":"backing","source":"songs"}"#)
            .unwrap()
            .is_host_only());
        check(
            r#"{"type":"kick","peer":"7"}"#,
            "error BadField: `peer` must be a peer id",
        );
        assert!(parse(r#"{"type":"kick","peer":"p7"}"#)
            .unwrap()
            .is_host_only());
        assert!(!parse(r#"{"type":"songs"}"#).unwrap().is_host_only());
        check(
            r#"{"type":"mode","entry":3,"mode":"in_ear"}"#,
            "Mode { entry: EntryId(3), mode: InEar }",
        );
        for bad in ["inear", "STAGE", ""] {
            check(
                &format!(r#"{{"type":"mode","entry":3,"mode":"{bad}"}}"#),
                "error BadField: `mode` must be stage or in_ear",
            );
        }
        check(
            r#"{"type":"mode","entry":3,"mode":1}"#,
            "error BadField: `mode` must be a string",
        );
        assert!(parse(r#"{"type":"mode","entry":3,"mode":"stage"}"#)
            .unwrap()
            .is_host_only());
    }

    #[test]
    fn messages_parse_or_name_their_fault() {
        check(
            r#"{"type":"join","v":1,"name":" Ana ","role":"singer"}"#,
            r#"Join { v: 1, name: "Ana", role: Singer, pin: None, token: None }"#,
        );
        check(
            r#"{"type":"join","v":1,"name":"Ben","role":"listener","pin":"12"}"#,
            r#"Join { v: 1, name: "Ben", role: Listener, pin: Some("12"), token: None }"#,
        );
        check(
            r#"{"type":"join","v":1,"name":"Ben","role":"singer","token":"000102030405060708090a0b0c0d0eff"}"#,
            r#"Join { v: 1, name: "Ben", role: Singer, pin: None, token: Some(Token(..)) }"#,
        );
        check(
            r#"{"type":"join","v":1,"name":"Ben","role":"singer","token":"p7"}"#,
            "error BadField: `token` must be 32 hex digits",
        );
        check(
            r#"{"type":"join","v":1,"name":"Ben","role":"singer","token":7}"#,
            "error BadField: `token` must be a string",
        );
        check(
            r#"{"type":"join","v":1,"name":"","role":"singer"}"#,
            "error BadField: `name` must be 1 to 32 printable characters",
        );
        check(
            r#"{"type":"join","v":1,"name":"x","role":"drummer"}"#,
            "error BadField: `role` must be \"singer\" or \"listener\"",
        );
        check(r#"{"type":"offer"}"#, "error BadField: missing field `sdp`");
        check(
            r#"{"type":"candidate","candidate":null}"#,
            "Candidate { candidate: None }",
        );
        check(
            r#"{"type":"candidate","candidate":{"sdpMid":"0"}}"#,
            "error BadField: `candidate.candidate` must be a string",
        );
        check(
            r#"{"type":"mix","monitor":0.5}"#,
            "Mix { monitor: Some(0.5), reverb: None }",
        );
        check(
            r#"{"type":"mix","monitor":2}"#,
            "error BadField: `monitor` must be a number from 0 to 1",
        );
        check(r#"{"type":"ping","t":12.5}"#, "Ping { t: 12.5 }");
        check(
            r#"{"type":"playout","rtp":4294967295,"at":81234.5,"extra":12.25}"#,
            "Playout { rtp: 4294967295, at: 81234.5, extra: 12.25 }",
        );
        check(
            r#"{"type":"playout","rtp":4294967296,"at":1,"extra":0}"#,
            "error BadField: `rtp` must be an RTP timestamp",
        );
        for at in ["-1", "\"soon\"", "null"] {
            check(
                &format!(r#"{{"type":"playout","rtp":1,"at":{at},"extra":0}}"#),
                "error BadField: `at` must be the box's time, ms",
            );
        }
        for extra in ["-0.5", "2000.5", "1e300"] {
            check(
                &format!(r#"{{"type":"playout","rtp":1,"at":5,"extra":{extra}}}"#),
                "error BadField: `extra` must be a delay from 0 to 2000 ms",
            );
        }
        check(r#"{"type":"leave"}"#, "Leave");
        check(r#"{"type":"envelope"}"#, "Envelope");
        check(
            r#"{"type":"wall_clock","offset":-1780000000123.25}"#,
            "WallClock { offset: -1780000000123.25 }",
        );
        for offset in ["1e15", "-1e300", "\"now\"", "null"] {
            check(
                &format!(r#"{{"type":"wall_clock","offset":{offset}}}"#),
                "error BadField: `offset` must be the box's clock less the page's wall clock, ms",
            );
        }
        check(
            r#"{"type":"calibration","round_trip_ms":45.5,"output_ms":12}"#,
            "Calibration { round_trip_ms: 45.5, output_ms: 12.0 }",
        );
        for (round_trip, output) in [
            ("0", "0"),
            ("-3", "0"),
            ("500.5", "0"),
            ("1e308", "0"),
            ("\"45\"", "0"),
            ("null", "0"),
        ] {
            check(
                &format!(
                    r#"{{"type":"calibration","round_trip_ms":{round_trip},"output_ms":{output}}}"#
                ),
                "error BadField: `round_trip_ms` must be above 0 and at most 500",
            );
        }
        for output in ["-1", "46", "null", "\"1\""] {
            check(
                &format!(r#"{{"type":"calibration","round_trip_ms":45,"output_ms":{output}}}"#),
                "error BadField: `output_ms` must be from 0 to `round_trip_ms`",
            );
        }
        check(
            r#"{"type":"dance"}"#,
            "error UnknownType: unknown message type `dance`",
        );
        check(r#"[1,2]"#, "error BadJson: expected a JSON object");
        check(
            r#"{"type":5}"#,
            "error BadJson: missing string field `type`",
        );
    }

    #[test]
    fn garbage_is_bad_json() {
        assert_eq!(parse("{nope").map_err(|e| e.code), Err(ErrorCode::BadJson));
    }

    #[test]
    fn server_messages_are_tagged_json() {
        let m = ServerMessage::Error {
            code: ErrorCode::RoomFull,
            message: "full".into(),
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"error","code":"room_full","message":"full"}"#
        );
        assert_eq!(
            ServerMessage::Bye { reason: "shutdown" }.to_json(),
            r#"{"type":"bye","reason":"shutdown"}"#
        );
    }

    #[test]
    fn offers_without_audio_or_opus_are_refused() {
        let opus = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(check_offer(opus, 4), Ok(111));
        let many = format!("{opus}{}", "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(4));
        assert_eq!(
            check_offer(&many, 4).map_err(|e| e.message),
            Err("the offer has 5 media sections; at most 4 are allowed".into())
        );
        let pcmu = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(
            check_offer(pcmu, 4).map_err(|e| e.message),
            Err("the offer has no Opus 48 kHz codec".into())
        );
        let video = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(
            check_offer(video, 4).map_err(|e| e.message),
            Err("the offer has no audio m-line".into())
        );
        assert!(check_offer("hello", 4).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_message_or_an_error(text in ".{0,300}") {
            let _ = parse(&text);
        }
    }
}
