//! One phone's WebSocket session: signaling messages in and out, room updates, bye.
//!
//! The session is a connection ([`ConnId`]) of the room: it feeds the control task what
//! the phone says and what its peer connection does, and passes on what the room
//! decides (the welcome, the goodbye). Everything a phone sends is answered to that
//! phone only. A fatal error (PIN, room full, version, oversize frame) is followed by a
//! close with a reason. Room updates come from the room's published view, at most
//! every [`ROOM_INTERVAL`], so a room that changes fast costs each phone one message
//! per interval.
//!
//! Every input has a limit (`limits.*` in the config): messages per second (a client
//! over it gets `rate_limited` and is closed), trickled candidates, the offer's media
//! sections; and the outgoing queue is bounded, so a phone that stops reading (frozen,
//! or a script) is closed instead of growing the box's memory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::signaling::{
    self, round1, ClientMessage, ErrorCode, HostRoomView, MixView, QueueView, RecordingItem,
    ServerMessage, SongItem, WireError, PROTOCOL_VERSION,
};
use super::{refusal_code, AppState};
use crate::control::night::SongRef;
use crate::control::{
    ByeReason, Calibration, ConnId, Control, Input, JoinRequest, MediaState, PeerId, Reply, Role,
    Sends,
};
use crate::limits::{Limits, TokenBucket};
use crate::rtc::{Peer, PeerEvent};

/// A phone with media gets the song clock at least this often.
const SONG_CLOCK_EVERY: Duration = Duration::from_secs(1);

/// A phone gets its mix's levels at most this often.
const ENVELOPE_EVERY: Duration = Duration::from_millis(500);

/// A playout report further than this from the box's now, or from the speakers, is
/// not a measurement (µs).
const PLAYOUT_WINDOW_US: i64 = 10_000_000;

/// Close code for an oversize frame (RFC 6455 §7.4.1).
const CLOSE_TOO_BIG: u16 = 1009;

/// Close code for a policy refusal (PIN, full room, version).
const CLOSE_POLICY: u16 = 1008;

/// After the box closes a session, how long it keeps reading (and dropping) what the
/// client still sends: closing a socket with unread data resets it, and the client
/// would lose the error and the goodbye queued for it.
const LINGER: Duration = Duration::from_secs(2);

pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
) -> Response {
    let max = state.settings.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!(
                "peer",
                id = tracing::field::Empty,
                name = tracing::field::Empty,
                role = tracing::field::Empty
            );
            session(socket, state, client.ip()).instrument(span)
        })
}

/// The joined part of a session.
struct Joined {
    peer: PeerId,
    role: Role,
    bye: Option<oneshot::Receiver<ByeReason>>,
}

struct Session {
    control: Control,
    conn: ConnId,
    client: IpAddr,
    limits: Limits,
    candidates: usize,
    out: mpsc::Sender<Message>,
    /// The phone stopped reading: the session ends.
    overflowed: bool,
    /// The box queued a close frame.
    closing: bool,
    joined: Option<Joined>,
    media: Option<Arc<Peer>>,
    events: Option<mpsc::UnboundedReceiver<PeerEvent>>,
    /// The queue as last sent (it goes out again only when it changes).
    queue_sent: Option<QueueView>,
    /// The phone's recordings as last sent.
    recordings_sent: Vec<RecordingItem>,
    /// Logged in as the host page.
    host: bool,
    /// The song clock as last sent: generation, playing, when.
    clock_sent: Option<(u32, bool, u32, Instant)>,
    /// When this phone was last sent its mix's levels.
    envelope_sent: Option<Instant>,
}

impl Session {
    fn send(&mut self, msg: ServerMessage) {
        self.push(Message::Text(msg.to_json().into()));
    }

    fn push(&mut self, msg: Message) {
        if self.out.try_send(msg).is_err() && !self.overflowed {
            self.overflowed = true;
            tracing::info!(
                queued = self.limits.out_queue_messages,
                "phone stopped reading its socket; closing it"
            );
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        self.closing = true;
        self.push(Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_string().into(),
        })));
    }

    fn error(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.send(WireError::new(code, message).into());
    }

    /// Handles one message; returns false when the session must end.
    async fn handle(&mut self, text: &str) -> bool {
        let msg = match signaling::parse(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(code = ?e.code, "refused a message");
                self.send(e.into());
                return true;
            }
        };
        let host_only = msg.is_host_only();
        let for_hosts = host_only
            || matches!(
                msg,
                ClientMessage::Songs { .. }
                    | ClientMessage::Ping { .. }
                    | ClientMessage::HostLogin { .. }
            );
        match msg {
            ClientMessage::HostLogin { v, pin } => {
                if self.joined.is_some() || self.host {
                    self.error(ErrorCode::AlreadyJoined, "already joined");
                    return true;
                }
                if v != PROTOCOL_VERSION {
                    return self.fatal(ErrorCode::Version, &format!("protocol version {v} is not supported; this box speaks {PROTOCOL_VERSION}"));
                }
                let login = Input::HostLogin {
                    pin,
                    from: Some(self.client),
                };
                match self.control.handle(login).await {
                    Ok(_) => {
                        tracing::Span::current().record("role", "host");
                        tracing::info!(client = %self.client, "host page logged in");
                        self.host = true;
                        self.send(ServerMessage::HostWelcome {
                            v: PROTOCOL_VERSION,
                            max_singers: self.control.max_singers(),
                        });
                        let view = self.control.view();
                        self.send_host_view(&view);
                        true
                    }
                    Err(refusal) => {
                        tracing::info!(client = %self.client, "host page PIN refused");
                        self.fatal(refusal_code(refusal), &refusal.to_string())
                    }
                }
            }
            _ if host_only && !self.host => {
                self.error(ErrorCode::Forbidden, "only the host page may do this");
                true
            }
            _ if self.host && !for_hosts => {
                self.error(
                    ErrorCode::Forbidden,
                    "the host page neither sings nor listens",
                );
                true
            }
            ClientMessage::Transport(command) => self.forward(Input::Transport(command)).await,
            ClientMessage::QueueRemove { entry } => {
                self.forward(Input::QueueRemove { entry }).await
            }
            ClientMessage::Mode { entry, mode } => {
                self.forward(Input::SetMode { entry, mode }).await
            }
            ClientMessage::QueueMove { entry, to } => {
                self.forward(Input::QueueMove { entry, to }).await
            }
            ClientMessage::Slot { slot, change } => {
                self.forward(Input::SetSlot { slot, change }).await
            }
            ClientMessage::Master { gain_db } => self.forward(Input::SetMaster { gain_db }).await,
            ClientMessage::Backing {
                gain_db,
                muted,
                source,
            } => {
                self.forward(Input::SetBacking {
                    gain_db,
                    muted,
                    source,
                })
                .await
            }
            ClientMessage::Kick { peer } => self.forward(Input::Kick { peer }).await,
            ClientMessage::Join {
                v,
                name,
                role,
                pin,
                token,
            } => {
                if self.joined.is_some() || self.host {
                    self.error(ErrorCode::AlreadyJoined, "already joined");
                    return true;
                }
                if v != PROTOCOL_VERSION {
                    return self.fatal(ErrorCode::Version, &format!("protocol version {v} is not supported; this box speaks {PROTOCOL_VERSION}"));
                }
                let request = JoinRequest {
                    name,
                    role,
                    pin,
                    token,
                    new_token: Control::new_token(),
                    rejoinable: true,
                    from: Some(self.client),
                };
                match self.control.join(self.conn, request).await {
                    Ok((welcome, bye)) => {
                        let span = tracing::Span::current();
                        span.record("id", tracing::field::display(welcome.peer));
                        span.record("name", welcome.name.as_str());
                        span.record("role", welcome.role.as_str());
                        self.joined = Some(Joined {
                            peer: welcome.peer,
                            role: welcome.role,
                            bye: Some(bye),
                        });
                        self.send(ServerMessage::Welcome {
                            v: PROTOCOL_VERSION,
                            peer: welcome.peer.to_string(),
                            role: welcome.role.as_str(),
                            name: welcome.name,
                            max_singers: self.control.max_singers(),
                            token: welcome.token.to_string(),
                            slot: welcome.slot.map(|s| s.to_string()),
                            rejoined: welcome.rejoined,
                            mix: welcome.settings.map(|s| MixView {
                                monitor: s.monitor,
                                reverb: s.reverb_wet,
                            }),
                            round_trip_ms: welcome
                                .calibration
                                .map(|c| round1(c.round_trip.as_secs_f32() * 1000.0)),
                        });
                        let view = self.control.view();
                        self.send(ServerMessage::room(&view, Some(welcome.peer)));
                        self.send_queue(&view);
                        true
                    }
                    Err(refusal) => {
                        let code = refusal_code(refusal);
                        if code.is_fatal() {
                            self.fatal(code, &refusal.to_string())
                        } else {
                            self.error(code, refusal.to_string());
                            true
                        }
                    }
                }
            }
            _ if self.joined.is_none() && !self.host => {
                self.error(ErrorCode::NotJoined, "send join first");
                true
            }
            ClientMessage::Offer { sdp } => {
                if self.media.is_some() {
                    self.error(
                        ErrorCode::AlreadyOffered,
                        "this connection already has an offer",
                    );
                    return true;
                }
                if let Err(e) = signaling::check_offer(&sdp, self.limits.offer_m_lines) {
                    self.send(e.into());
                    return true;
                }
                let joined = self.joined.as_ref().expect("checked above");
                let sends = match joined.role {
                    Role::Singer => Sends::Voice(joined.peer.singer()),
                    _ => Sends::Nothing,
                };
                match self.control.offer(self.conn, sends, sdp, false).await {
                    Ok(media) => {
                        self.media = Some(media.peer);
                        self.events = Some(media.events);
                        self.send(ServerMessage::Answer { sdp: media.answer });
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "offer refused");
                        self.error(ErrorCode::BadSdp, e.to_string());
                    }
                }
                true
            }
            ClientMessage::Candidate { candidate } => {
                self.candidates += 1;
                if self.candidates > self.limits.candidates_per_connection {
                    self.error(
                        ErrorCode::BadField,
                        format!(
                            "at most {} candidates per connection",
                            self.limits.candidates_per_connection
                        ),
                    );
                    return true;
                }
                let result = match &self.media {
                    Some(peer) => peer.add_remote_candidate(candidate.as_deref()).await,
                    None => {
                        self.error(ErrorCode::BadField, "candidate before offer");
                        return true;
                    }
                };
                if let Err(e) = result {
                    self.error(ErrorCode::BadField, e.to_string());
                }
                true
            }
            ClientMessage::Mix { monitor, reverb } => {
                let input = Input::Mix {
                    conn: self.conn,
                    monitor,
                    reverb,
                };
                self.forward(input).await
            }
            ClientMessage::Ping { t } => {
                let now = self.control.audio_now().as_micros() as f64 / 1000.0;
                self.send(ServerMessage::Pong { t, now });
                true
            }
            ClientMessage::WallClock { offset } => {
                let input = Input::WallClock {
                    conn: self.conn,
                    offset_ms: offset,
                };
                self.forward(input).await
            }
            ClientMessage::Playout { rtp, at, extra } => {
                self.playout(rtp, at, extra).await;
                true
            }
            ClientMessage::Envelope => {
                self.envelope().await;
                true
            }
            ClientMessage::Calibration {
                round_trip_ms,
                output_ms,
            } => {
                let calibration = Calibration {
                    round_trip: Duration::from_secs_f64(round_trip_ms / 1000.0),
                    output: Duration::from_secs_f64(output_ms / 1000.0),
                };
                tracing::info!(round_trip_ms, output_ms, "calibrated");
                let input = Input::Calibrated {
                    conn: self.conn,
                    calibration,
                };
                self.forward(input).await
            }
            ClientMessage::Leave => {
                // The room answers with a goodbye, which ends the session (below).
                self.forward(Input::Leave { conn: self.conn }).await
            }
            ClientMessage::Songs { query, offset } => {
                let library = self.control.library();
                let (page, total) = library.search(&query, offset);
                let songs = page.into_iter().map(SongItem::of).collect();
                self.send(ServerMessage::Songs {
                    query,
                    offset,
                    total,
                    songs,
                });
                true
            }
            ClientMessage::QueueAdd { song, partner } => {
                let library = self.control.library();
                let Some(found) = library.get(song) else {
                    self.error(ErrorCode::BadField, "no such song in the library");
                    return true;
                };
                let song = SongRef {
                    id: found.id,
                    title: found.title.clone(),
                    artist: found.artist.clone(),
                    path: library.full_path(&found.path),
                    duration: found.duration_ms.map(Duration::from_millis),
                };
                let input = Input::QueueAdd {
                    conn: self.conn,
                    song,
                    partner,
                };
                match self.control.handle(input).await {
                    Ok(Reply::Queued(entry)) => self.send(ServerMessage::Queued { entry: entry.0 }),
                    Ok(_) => {}
                    Err(refusal) => self.error(refusal_code(refusal), refusal.to_string()),
                }
                true
            }
            ClientMessage::QueueWithdraw { entry } => {
                let input = Input::QueueWithdraw {
                    conn: self.conn,
                    entry,
                };
                self.forward(input).await
            }
        }
    }

    /// An input whose only answer is a refusal, if any: that goes back to the sender
    /// (a phone's or the host page's).
    async fn forward(&mut self, input: Input) -> bool {
        if let Err(refusal) = self.control.handle(input).await {
            self.error(refusal_code(refusal), refusal.to_string());
        }
        true
    }

    /// The host page's picture of the room, and the queue when it changed.
    fn send_host_view(&mut self, view: &crate::control::RoomView) {
        self.send(ServerMessage::HostRoom(HostRoomView::of(view)));
        self.send_queue(view);
    }

    /// Tells a phone with media which RTP timestamp of its return mix carries which song
    /// frame: when the song, a seek or a pause changes it, and every second (so a phone
    /// joining mid-song catches up). A phone turns the timestamp it is playing into the
    /// song position with it, and shows the lyrics of what it hears.
    fn send_song_clock(&mut self) {
        let Some(media) = self.media.as_ref() else {
            return;
        };
        let clock = self.control.song_clock();
        let now = Instant::now();
        let due = match self.clock_sent {
            Some((generation, playing, lead, at)) => {
                generation != clock.generation
                    || playing != clock.playing
                    || lead != clock.lead_frames
                    || now.duration_since(at) >= SONG_CLOCK_EVERY
            }
            None => true,
        };
        if !due {
            return;
        }
        let rtp = clock.rtp_at_report(media.timestamp_offset());
        // The return mix carries the backing the lead ahead of the speakers.
        let frame = clock.position + u64::from(clock.lead_frames) * u64::from(clock.playing);
        // The song's own frame: the count-in comes before its first.
        let position = match self.control.view().song.as_ref() {
            Some(s) if s.now.generation == clock.generation => s.now.song_frame(frame),
            _ => frame as i64,
        };
        self.clock_sent = Some((clock.generation, clock.playing, clock.lead_frames, now));
        self.send(ServerMessage::SongClock {
            generation: clock.generation,
            position,
            rtp,
            playing: clock.playing,
        });
    }

    /// A phone's playout report: where it is against the speakers, on the box's
    /// timeline (`SongClock::speakers_play_us`), goes to the room; its answer (the
    /// offset to steer by) goes back. Without media or a clock there is nothing to say.
    async fn playout(&mut self, rtp: u32, at_ms: f64, extra_ms: f64) {
        let Some(media) = self.media.as_ref() else {
            return;
        };
        let now_us = self.control.audio_now().as_micros() as i64;
        let at_us = (at_ms * 1000.0) as i64;
        if (at_us - now_us).abs() > PLAYOUT_WINDOW_US {
            self.error(
                ErrorCode::BadField,
                "`at` is not near the box's time: take it from pong's `now`",
            );
            return;
        }
        let clock = self.control.song_clock();
        if clock.at.is_zero() {
            return;
        }
        if !clock.maps(rtp, media.timestamp_offset()) {
            // The phone still plays what was sent before the speakers stalled: that
            // audio is not on the timeline since, and steering by it would move the
            // phone by the stall (seconds).
            return;
        }
        let delay_us = at_us - clock.speakers_play_us(rtp, media.timestamp_offset());
        if delay_us.abs() > PLAYOUT_WINDOW_US {
            self.error(
                ErrorCode::BadField,
                "`rtp` is not a timestamp this phone was sent lately",
            );
            return;
        }
        tracing::debug!(
            delay_us,
            extra_ms,
            device_delay = clock.device_delay_frames,
            lead = clock.lead_frames,
            "playout"
        );
        let input = Input::Playout {
            conn: self.conn,
            delay_us,
            extra_us: (extra_ms * 1000.0) as i64,
        };
        match self.control.handle(input).await {
            Ok(Reply::Sync(steer)) => self.send(ServerMessage::Sync {
                offset_ms: steer.offset_us as f64 / 1000.0,
                lead_ms: steer.lead_us as f64 / 1000.0,
            }),
            Ok(_) => {}
            Err(refusal) => self.error(refusal_code(refusal), refusal.to_string()),
        }
    }

    /// The levels of this phone's return mix, by RTP time: the phone sets them against
    /// what it plays to find when it really plays it (`docs/sync.md`).
    async fn envelope(&mut self) {
        let Some(offset) = self.media.as_ref().map(|m| m.timestamp_offset()) else {
            return;
        };
        // The page asks every second for the last 2 s; more than twice a second is
        // ignored.
        let now = Instant::now();
        if self
            .envelope_sent
            .is_some_and(|at| now.duration_since(at) < ENVELOPE_EVERY)
        {
            return;
        }
        self.envelope_sent = Some(now);
        let Some(envelope) = self.control.envelope(self.conn).await else {
            return;
        };
        let rtp = crate::control::rtp_of_encoder_input(offset, envelope.start);
        let levels = envelope.levels.iter().map(|l| format!("{l:02x}")).collect();
        self.send(ServerMessage::Envelope {
            rtp,
            step: crate::engine::mixer::ENVELOPE_BLOCK as u32,
            levels,
        });
    }

    /// The recordings of the songs this phone sang in, when they changed.
    fn send_recordings(&mut self, view: &crate::control::RoomView, me: PeerId) {
        let mine = RecordingItem::mine(view, me);
        if mine != self.recordings_sent {
            self.send(ServerMessage::Recordings {
                recordings: mine.clone(),
            });
            self.recordings_sent = mine;
        }
    }

    fn send_queue(&mut self, view: &crate::control::RoomView) {
        let queue = QueueView::of(view);
        if self.queue_sent.as_ref() != Some(&queue) {
            self.send(ServerMessage::Queue(queue.clone()));
            self.queue_sent = Some(queue);
        }
    }

    fn fatal(&mut self, code: ErrorCode, message: &str) -> bool {
        self.error(code, message);
        self.close(CLOSE_POLICY, message);
        false
    }

    /// The room ended this connection.
    fn bye(&mut self, reason: ByeReason) {
        if let Some(joined) = self.joined.as_mut() {
            joined.bye = None;
        }
        self.joined = None;
        self.send(ServerMessage::Bye {
            reason: reason.as_str(),
        });
        self.close(1000, reason.as_str());
    }
}

async fn session(socket: WebSocket, state: AppState, client: IpAddr) {
    let (mut sink, mut stream) = socket.split();
    let limits = state.settings.limits;
    let (out, mut out_rx) = mpsc::channel::<Message>(limits.out_queue_messages);
    let writer = tokio::spawn(
        async move {
            while let Some(msg) = out_rx.recv().await {
                let closing = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || closing {
                    break;
                }
            }
            let _ = sink.close().await;
        }
        .in_current_span(),
    );
    let control = state.control.clone();
    let mut s = Session {
        conn: control.conn(),
        client,
        limits,
        candidates: 0,
        control,
        out,
        overflowed: false,
        closing: false,
        joined: None,
        media: None,
        events: None,
        queue_sent: None,
        recordings_sent: Vec::new(),
        host: false,
        clock_sent: None,
        envelope_sent: None,
    };
    let mut room_updates = s.control.subscribe();
    let mut room_tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / limits.room_updates_per_s));
    room_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut room_dirty = false;
    let mut room_gone = false;
    let idle = state.settings.idle_timeout;
    let mut last_heard = Instant::now();
    let started = last_heard;
    let mut rate = TokenBucket::new(limits.messages_per_s, limits.messages_burst);
    loop {
        if s.overflowed {
            break;
        }
        tokio::select! {
            received = stream.next() => {
                last_heard = Instant::now();
                if !rate.take(last_heard - started) {
                    tracing::info!(client = %s.client, "messages faster than allowed; closing");
                    s.error(ErrorCode::RateLimited, format!(
                        "more than {} messages a second", limits.messages_per_s
                    ));
                    s.close(CLOSE_POLICY, "too many messages");
                    break;
                }
                match received {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Err(e)) => {
                        // tungstenite reports an oversize message as a capacity error.
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
                            s.error(ErrorCode::TooLarge, "message too large");
                            s.close(CLOSE_TOO_BIG, "message too large");
                        }
                        tracing::debug!(error = %text, "websocket read failed");
                        break;
                    }
                    Some(Ok(Message::Text(text))) => {
                        if !s.handle(text.as_str()).await {
                            break;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        s.error(ErrorCode::BadJson, "binary frames are not part of the protocol");
                    }
                    Some(Ok(_)) => {}
                }
            }
            // The deadline counts from the last frame heard, not from this pass of the
            // loop (room updates wake the loop ten times a second).
            _ = tokio::time::sleep_until(last_heard + idle) => {
                s.send(ServerMessage::Bye { reason: ByeReason::Timeout.as_str() });
                s.close(1000, "idle");
                break;
            }
            event = async { match s.events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                let state = match event {
                    Some(PeerEvent::LocalCandidate(json)) => {
                        if let Ok(candidate) = serde_json::from_str(&json) {
                            s.send(ServerMessage::Candidate { candidate });
                        }
                        continue;
                    }
                    Some(PeerEvent::SenderClock(lateness_ms)) => {
                        let _ = s.control.handle(Input::SenderClock { conn: s.conn, lateness_ms }).await;
                        continue;
                    }
                    Some(PeerEvent::Connected) => MediaState::Connected,
                    Some(PeerEvent::Disconnected) => MediaState::Disconnected,
                    Some(PeerEvent::Failed) | None => {
                        s.events = None;
                        MediaState::Failed
                    }
                };
                let _ = s.control.handle(Input::Media { conn: s.conn, state }).await;
            }
            reason = async {
                match s.joined.as_mut().and_then(|j| j.bye.as_mut()) {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            } => {
                // A dropped sender (the control task ended) is a shutdown.
                s.bye(reason.unwrap_or(ByeReason::Shutdown));
                break;
            }
            changed = room_updates.changed(), if !room_gone => {
                // The control task has ended (shutdown): the goodbye follows.
                room_gone = changed.is_err();
                room_dirty = !room_gone;
            }
            _ = room_tick.tick() => {
                if room_dirty && s.host {
                    room_dirty = false;
                    let view = room_updates.borrow_and_update().clone();
                    s.send_host_view(&view);
                } else if let (true, Some(joined)) = (room_dirty, s.joined.as_ref()) {
                    room_dirty = false;
                    let me = joined.peer;
                    let view = room_updates.borrow_and_update().clone();
                    s.send(ServerMessage::room(&view, Some(me)));
                    s.send_queue(&view);
                    s.send_recordings(&view, me);
                }
                s.send_song_clock();
            }
            _ = state.shutdown.cancelled(), if s.joined.is_none() => {
                s.send(ServerMessage::Bye { reason: ByeReason::Shutdown.as_str() });
                s.close(1001, "shutdown");
                break;
            }
        }
    }
    if s.joined.take().is_some() {
        // Gone without a goodbye: the room keeps the phone's place for the grace.
        let _ = s.control.handle(Input::Closed { conn: s.conn }).await;
    }
    let (overflowed, closing) = (s.overflowed, s.closing);
    drop(s);
    if overflowed {
        // Its socket is full: the queued close would never get through.
        writer.abort();
    } else if closing {
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    let _ = writer.await;
}
