//! The control plane: one task owns the [`room::Room`] and carries out what it decides.
//!
//! [`ControlTask`] is the room's driver, a short loop in the manner of the audio thread:
//! it takes requests from every surface through one channel ([`Control`] is the cheap,
//! cloneable handle the WebSocket sessions, WHIP/WHEP and later MQTT hold), reads the
//! clock, feeds the room, and does the IO the room's actions ask for: engine commands
//! into the audio thread's queue (through [`link::EngineLink`], so none is lost), the
//! fan-out of encoded mix frames to each connection's media, goodbyes to connections,
//! and the [`room::RoomView`] published through a `watch` for everyone to read.
//!
//! The room's state lives in the room alone and the room lives in this task alone: no
//! lock anywhere around it. Nothing here waits on one peer: each connection's media
//! has its own bounded queue of frames and its own writer task, so a peer that cannot
//! keep up loses its own frames (counted, logged at most once per
//! [`DROP_LOG_INTERVAL`]) and never delays another.
//!
//! Boundary: knows the room, the audio thread's queues and our `rtc` module; imports
//! nothing of `http` (adapters map the room's refusals to their wire's codes).

pub mod in_ear;
pub mod link;
pub mod night;
pub mod recorder;
pub mod recording;
pub mod room;
pub mod sync;
pub mod throttle;
pub mod voice_gaps;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audio::{AudioHandle, Report};
use crate::engine::mixer::ENVELOPE_BLOCK;
use crate::engine::{Event, MixId, SingerId};
use crate::rtc::{self, Inbound, OutFrame, Peer, PeerEvent, RtcSettings, Uplink};
use crate::songs::feed::FeedGate;
use crate::songs::library::Library;
use crate::songs::line_in::{LineIn, LineInEvent};
use crate::songs::player::{Player, PlayerEvent};
use night::SongFeedback;

pub use room::{
    ByeReason, Calibration, ConnId, Input, JoinRequest, MediaState, PeerId, Presence, Refusal,
    Reply, Role, RoomConfig, RoomView, SingerFigures, SlotChange, SlotId, Token, Welcome,
};

use link::EngineLink;
use recorder::{RecordTo, SongRecorder};
use room::{Action, Room};

/// How often the fan-out drains encoded frames (the return path's added latency is at
/// most this; 1 ms costs ~1000 wake-ups a second, nothing on a Pi).
const FANOUT_TICK: Duration = Duration::from_millis(1);

/// How far the audio clock may move from the mix time between two reports before the
/// timeline counts it as a jump (an output stall): well above the burst of a device
/// refilling its buffer. A smaller error is the sync loop's to absorb.
pub const CLOCK_JUMP: Duration = Duration::from_millis(100);

/// How much the stage timeline (the speakers' device delay) must move before the room
/// hears of it: a device's delay wobbles by a period as it is read.
const STAGE_MOVE: Duration = Duration::from_millis(2);

/// How often the audio thread's reports are read (it writes them every 100 ms).
const REPORT_TICK: Duration = Duration::from_millis(20);

/// Requests waiting for the control task. Senders wait when it is full (backpressure
/// on the network clients), never the task.
const REQUEST_QUEUE: usize = 256;

/// Encoded frames a connection's writer may have waiting: 8 × 10 ms. Beyond that the
/// peer cannot keep up and its newest frames are dropped (its own loss only).
pub const PEER_QUEUE_FRAMES: usize = 8;

/// A connection's dropped frames, and the output's underruns, are logged at most this
/// often (a Pi logs to an SD card).
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long shutdown waits for the peer connections to close.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Where the backing is: the audio thread's latest report (every 100 ms). Not part of
/// the room's view (it changes ten times a second); the venue screen and the phones
/// follow the song with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SongClock {
    /// The transport's generation.
    pub generation: u32,
    /// The song frame (48 kHz) the reported period started with.
    pub position: u64,
    /// That period's mix time.
    pub mix_time: u64,
    /// When it was rendered, on the audio clock.
    pub at: Duration,
    /// Whether the backing advanced in it.
    pub playing: bool,
    /// How much later than the mix time the outputs carry it (the limiter), frames.
    pub latency_frames: u32,
    /// How much later the speakers play what the audio thread writes (the device's
    /// delay, as it last said), frames.
    pub device_delay_frames: u64,
    /// What the speaker path adds after the device (`audio.speaker_latency_ms`), frames.
    pub speaker_frames: u32,
    /// How much later than `at` the device period holding this frame is written (a
    /// device period longer than the engine's), frames.
    pub bridge_frames: u32,
    /// How far ahead of `position` the return mixes carried the backing, frames.
    pub lead_frames: u32,
    /// How long the speakers' bus held the backing back (in-ear mode), frames. The
    /// phones keep to the stage timeline (`speakers_play_us`) all the same: in-ear
    /// singers hear their phones, and the speakers wait for their voices.
    pub venue_delay_frames: u32,
    /// The mix time since which the audio clock and the mix time have moved together.
    /// The output stalling (an underrun, a device that stopped) moves the mix time
    /// behind the clock: what was sent before then no longer maps to speaker time.
    pub steady_from: u64,
}

impl SongClock {
    /// The song frame the speakers play at `now` (audio clock): the report moved on by
    /// the time since, while playing, less the limiter's and the device's delay.
    pub fn position_at(&self, now: Duration) -> u64 {
        if !self.playing {
            return self.position;
        }
        let since = now.saturating_sub(self.at);
        let moved =
            (since.as_nanos() * u128::from(crate::engine::SAMPLE_RATE_HZ) / 1_000_000_000) as u64;
        (self.position + moved)
            .saturating_sub(self.speakers_behind_frames() + u64::from(self.venue_delay_frames))
    }

    /// How long after a frame is rendered the speakers play it: the limiter, the
    /// period bridge, the device's buffer and the speaker path, frames.
    pub fn speakers_behind_frames(&self) -> u64 {
        u64::from(self.latency_frames)
            + u64::from(self.bridge_frames)
            + self.device_delay_frames
            + u64::from(self.speaker_frames)
    }

    /// The RTP timestamp (of a return mix whose timestamps start at `offset`) that
    /// carries the frame rendered at this report's mix time (the limiter hands it to
    /// the encoder `latency_frames` later).
    pub fn rtp_at_report(&self, offset: u32) -> u32 {
        rtp_of_encoder_input(offset, self.mix_time + u64::from(self.latency_frames))
    }

    /// When (audio clock, µs) the speakers play the mix frame that a return mix (whose
    /// timestamps start at `offset`) carries at RTP timestamp `rtp`: the box's
    /// timeline from RTP time to speaker time. Valid for timestamps within about 12
    /// hours of this report.
    pub fn speakers_play_us(&self, rtp: u32, offset: u32) -> i64 {
        let frames = i64::from(rtp.wrapping_sub(self.rtp_at_report(offset)) as i32);
        let rate = i64::from(crate::engine::SAMPLE_RATE_HZ);
        self.at.as_micros() as i64
            + (frames + self.speakers_behind_frames() as i64) * 1_000_000 / rate
    }

    /// Whether a return mix (whose timestamps start at `offset`) carried `rtp` after the
    /// audio clock last jumped against the mix time, so that this clock maps it.
    pub fn maps(&self, rtp: u32, offset: u32) -> bool {
        let steady =
            rtp_of_encoder_input(offset, self.steady_from + u64::from(self.latency_frames));
        rtp.wrapping_sub(steady) as i32 >= 0
    }

    /// This report after `prev`, with where its steady stretch began: where it was, or
    /// this report's mix time when the clock moved more than [`CLOCK_JUMP`] away from
    /// the frames rendered since.
    pub fn after(mut self, prev: &SongClock) -> SongClock {
        let rendered = crate::engine::duration_of(self.mix_time.saturating_sub(prev.mix_time));
        let elapsed = self.at.saturating_sub(prev.at);
        self.steady_from = if elapsed.abs_diff(rendered) > CLOCK_JUMP {
            self.mix_time
        } else {
            prev.steady_from
        };
        self
    }

    /// Where the speakers are in `song` at `now`, ms of the song (negative during its
    /// count-in): by this clock when it is the song's generation, else where the room
    /// last heard it was.
    pub fn speakers_ms(&self, song: &night::NowPlaying, now: Duration) -> i64 {
        let frames = if self.generation == song.generation {
            self.position_at(now)
        } else {
            song.position
        };
        song.song_ms(frames)
    }
}

/// The RTP timestamp (of a return mix whose timestamps start at `offset`) whose decoded
/// audio is what the encoder took in at mix time `mix_time`: a frame is stamped with
/// its first input frame, and the decoder gives that input back the codec's look-ahead
/// later.
pub fn rtp_of_encoder_input(offset: u32, mix_time: u64) -> u32 {
    offset.wrapping_add((mix_time + crate::engine::codec::ENCODER_LOOKAHEAD_FRAMES) as u32)
}

/// The media of one connection, for its owner (the WebSocket session or WHIP handler).
pub struct Media {
    /// The SDP answer to send back.
    pub answer: String,
    /// What happens to the connection: trickled candidates, state changes.
    pub events: mpsc::UnboundedReceiver<PeerEvent>,
    /// The peer connection, for trickled remote candidates.
    pub peer: Arc<Peer>,
}

enum Request {
    Input {
        input: Input,
        /// For a join: told when the room ends this connection.
        bye: Option<oneshot::Sender<ByeReason>>,
        span: tracing::Span,
        reply: oneshot::Sender<Result<Reply, Refusal>>,
    },
    Attach {
        conn: ConnId,
        peer: Arc<Peer>,
        reply: oneshot::Sender<bool>,
    },
    Envelope {
        conn: ConnId,
        reply: oneshot::Sender<Option<Envelope>>,
    },
}

/// The last levels of the mix a connection hears, as encoded
/// (`engine::mixer::envelope`): what a phone sets against what it plays to find when
/// it plays it (`docs/sync.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Mix time (the encoder's input) of the first level.
    pub start: u64,
    /// One level per `engine::mixer::ENVELOPE_BLOCK` frames, oldest first.
    pub levels: Vec<u8>,
}

/// Levels kept per mix: 2 s.
const ENVELOPE_KEEP: usize = 800;

/// The handle every surface holds. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    requests: mpsc::Sender<Request>,
    view: watch::Receiver<Arc<RoomView>>,
    next_conn: Arc<AtomicU64>,
    venue_level_db: Arc<AtomicU32>,
    rtc: Arc<RtcSettings>,
    audio: AudioHandle,
    max_singers: usize,
    library: watch::Receiver<Arc<Library>>,
    song_clock: watch::Receiver<SongClock>,
    feed_gate: Arc<FeedGate>,
}

/// What a connection's media sends the box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sends {
    /// Nothing (a listener).
    Nothing,
    /// A singer's voice.
    Voice(SingerId),
    /// A backing feed (the WHIP `backing` role).
    Backing,
}

impl Control {
    /// Where the backing is (the audio thread's latest report).
    pub fn song_clock(&self) -> SongClock {
        *self.song_clock.borrow()
    }

    /// The audio clock's now (the clock [`SongClock::at`] is on).
    pub fn audio_now(&self) -> Duration {
        self.audio.clock.now()
    }

    /// The song library as indexed now.
    pub fn library(&self) -> Arc<Library> {
        self.library.borrow().clone()
    }

    /// A fresh connection id (one per WebSocket session or WHIP/WHEP resource).
    pub fn conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh secret token (128 bits from the thread-local CSPRNG).
    pub fn new_token() -> Token {
        Token(rand::random())
    }

    /// Feeds one input to the room and waits for its reply. What the control task logs
    /// about it goes under the caller's current span (a connection's peer span).
    pub async fn handle(&self, input: Input) -> Result<Reply, Refusal> {
        self.request(input, None, tracing::Span::current()).await
    }

    /// Joins (or rejoins) on `conn`; the receiver is told when the room ends it.
    pub async fn join(
        &self,
        conn: ConnId,
        request: JoinRequest,
    ) -> Result<(Welcome, oneshot::Receiver<ByeReason>), Refusal> {
        let (bye, bye_rx) = oneshot::channel();
        match self
            .request(
                Input::Join { conn, request },
                Some(bye),
                tracing::Span::current(),
            )
            .await?
        {
            Reply::Joined(welcome) => Ok((welcome, bye_rx)),
            Reply::Done | Reply::Queued(_) | Reply::Sync(_) => {
                unreachable!("the room answers a join with a welcome")
            }
        }
    }

    async fn request(
        &self,
        input: Input,
        bye: Option<oneshot::Sender<ByeReason>>,
        span: tracing::Span,
    ) -> Result<Reply, Refusal> {
        let (reply, reply_rx) = oneshot::channel();
        let request = Request::Input {
            input,
            bye,
            span,
            reply,
        };
        if self.requests.send(request).await.is_err() {
            return Err(Refusal::ShuttingDown);
        }
        reply_rx.await.unwrap_or(Err(Refusal::ShuttingDown))
    }

    /// Answers `conn`'s offer with a new peer connection and hands its media to the
    /// control task (the WebRTC setup runs here, in the caller's task, so the control
    /// task never waits for it). A singer's voice goes to `singer`'s engine seat.
    pub async fn offer(
        &self,
        conn: ConnId,
        sends: Sends,
        offer_sdp: String,
        wait_for_candidates: bool,
    ) -> Result<Media, rtc::Error> {
        let uplink = match sends {
            Sends::Nothing => Uplink::None,
            Sends::Voice(singer) => Uplink::Voice(Inbound {
                singer,
                audio: self.audio.clone(),
            }),
            Sends::Backing => Uplink::Backing(crate::songs::feed::spawn(
                self.audio.clone(),
                self.feed_gate.clone(),
            )),
        };
        let (peer, answer, events) =
            rtc::answer(&self.rtc, offer_sdp, uplink, wait_for_candidates).await?;
        let peer = Arc::new(peer);
        let (reply, reply_rx) = oneshot::channel();
        let attach = Request::Attach {
            conn,
            peer: peer.clone(),
            reply,
        };
        let attached = self.requests.send(attach).await.is_ok() && reply_rx.await == Ok(true);
        if !attached {
            peer.close().await;
            return Err(rtc::Error::Setup("the connection ended meanwhile".into()));
        }
        Ok(Media {
            answer,
            events,
            peer,
        })
    }

    /// The last 2 s of levels of the mix `conn` hears (`None`: it hears none yet).
    pub async fn envelope(&self, conn: ConnId) -> Option<Envelope> {
        let (reply, reply_rx) = oneshot::channel();
        self.requests
            .send(Request::Envelope { conn, reply })
            .await
            .ok()?;
        reply_rx.await.ok().flatten()
    }

    /// The title of the recording `id`, while the room lists it.
    pub fn recording_title(&self, id: &str) -> Option<String> {
        let view = self.view.borrow();
        let take = view.recordings.takes.iter().find(|t| t.id == id)?;
        Some(take.title.clone())
    }

    /// The room now.
    pub fn view(&self) -> Arc<RoomView> {
        self.view.borrow().clone()
    }

    /// The room, as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RoomView>> {
        self.view.clone()
    }

    /// (singers, listeners) now.
    pub fn counts(&self) -> (usize, usize) {
        self.view.borrow().counts()
    }

    /// Stage slots.
    pub fn max_singers(&self) -> usize {
        self.max_singers
    }

    /// The venue output's peak level over the last report, dBFS.
    pub fn venue_level_db(&self) -> f32 {
        f32::from_bits(self.venue_level_db.load(Ordering::Relaxed))
    }
}

struct Conn {
    peer: PeerId,
    span: tracing::Span,
    bye: Option<oneshot::Sender<ByeReason>>,
    mix: Option<MixId>,
    media: Option<ConnMedia>,
}

struct ConnMedia {
    peer: Arc<Peer>,
    frames: mpsc::Sender<OutFrame>,
    dropped: u64,
    dropped_logged: u64,
    logged_at: Option<Duration>,
}

/// The task that owns the room. See the module docs.
pub struct ControlTask {
    room: Room,
    requests: mpsc::Receiver<Request>,
    view: watch::Sender<Arc<RoomView>>,
    venue_level_db: Arc<AtomicU32>,
    audio: AudioHandle,
    link: EngineLink,
    conns: HashMap<ConnId, Conn>,
    fanout: HashMap<MixId, Vec<ConnId>>,
    closing: JoinSet<()>,
    shutdown: CancellationToken,
    xruns_logged: u64,
    xruns_logged_at: Option<Duration>,
    player: Player,
    player_events: mpsc::UnboundedReceiver<PlayerEvent>,
    /// The line-in's thread, when the box has one.
    line_in: Option<LineIn>,
    line_in_events: mpsc::UnboundedReceiver<LineInEvent>,
    /// Opened (with a generation) while the WHIP feed is the backing.
    feed_gate: Arc<FeedGate>,
    song_clock: watch::Sender<SongClock>,
    /// `audio.speaker_latency_ms`, frames.
    speaker_frames: u32,
    /// The levels of each mix someone hears, as encoded.
    envelopes: HashMap<MixId, KeptEnvelope>,
    /// The stage timeline behind the mixer, as the room was last told.
    stage_behind: Duration,
    /// Records every song (`songs.record`).
    recorder: Option<SongRecorder>,
    /// Each singer's receive gaps as last logged.
    voice_gaps: voice_gaps::VoiceGaps,
}

/// [`Envelope`] as the control task keeps it.
#[derive(Debug, Default)]
struct KeptEnvelope {
    start: u64,
    levels: std::collections::VecDeque<u8>,
}

/// The line-in the room may switch the backing to (`audio.line_in`).
pub struct LineInDevice {
    /// The ALSA capture PCM.
    pub pcm: String,
    /// The audio thread's `SCHED_FIFO` priority (0: normal scheduling); the capture
    /// thread takes one below it.
    pub realtime_priority: u8,
}

/// Builds the room, its task, the song player's and the recorder's threads and the
/// handle. Run the task with [`ControlTask::run`].
pub fn start(
    mut config: RoomConfig,
    rtc: RtcSettings,
    audio: AudioHandle,
    library: watch::Receiver<Arc<Library>>,
    line_in: Option<LineInDevice>,
    record: Option<RecordTo>,
    shutdown: CancellationToken,
) -> std::io::Result<(Control, ControlTask)> {
    let (player_tx, player_events) = mpsc::unbounded_channel();
    let player = Player::spawn(audio.backing.clone(), player_tx)?;
    let (line_in_tx, line_in_events) = mpsc::unbounded_channel();
    config.line_in = line_in.is_some();
    let line_in = match line_in {
        Some(d) => Some(LineIn::spawn(
            d.pcm,
            d.realtime_priority,
            audio.clone(),
            line_in_tx,
        )?),
        None => None,
    };
    let speaker_frames = crate::engine::frames_in(config.speaker_latency) as u32;
    config.record = record.is_some();
    let recorder = match record {
        Some(to) => Some(SongRecorder::spawn(to, audio.record.clone())?),
        None => None,
    };
    let room = Room::new(config);
    let (song_clock_tx, song_clock) = watch::channel(SongClock {
        speaker_frames,
        ..SongClock::default()
    });
    let (requests_tx, requests) = mpsc::channel(REQUEST_QUEUE);
    let (view_tx, view) = watch::channel(Arc::new(room.view()));
    let venue_level_db = Arc::new(AtomicU32::new((-120.0f32).to_bits()));
    let feed_gate = Arc::new(FeedGate::default());
    let control = Control {
        feed_gate: feed_gate.clone(),
        requests: requests_tx,
        view,
        next_conn: Arc::new(AtomicU64::new(1)),
        venue_level_db: venue_level_db.clone(),
        rtc: Arc::new(rtc),
        audio: audio.clone(),
        max_singers: room.max_singers(),
        library,
        song_clock,
    };
    let task = ControlTask {
        room,
        requests,
        view: view_tx,
        venue_level_db,
        audio,
        link: EngineLink::new(),
        conns: HashMap::new(),
        fanout: HashMap::new(),
        closing: JoinSet::new(),
        shutdown,
        xruns_logged: 0,
        xruns_logged_at: None,
        player,
        player_events,
        line_in,
        line_in_events,
        feed_gate,
        song_clock: song_clock_tx,
        speaker_frames,
        envelopes: HashMap::new(),
        recorder,
        stage_behind: Duration::ZERO,
        voice_gaps: voice_gaps::VoiceGaps::default(),
    };
    Ok((control, task))
}

impl ControlTask {
    /// Runs until shutdown: then every connection is told, every peer closed.
    pub async fn run(mut self) {
        let mut fanout_tick = tokio::time::interval(FANOUT_TICK);
        fanout_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut report_tick = tokio::time::interval(REPORT_TICK);
        report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let deadline = self
                .room
                .next_deadline()
                .map(|d| self.audio.clock.instant_at(d));
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    self.input(Input::Shutdown, tracing::Span::none());
                    break;
                }
                request = self.requests.recv() => match request {
                    Some(request) => self.request(request),
                    None => break,
                },
                _ = fanout_tick.tick() => self.fan_out(),
                _ = report_tick.tick() => self.reports(),
                Some(event) = self.player_events.recv() => self.player_event(event),
                Some(event) = self.line_in_events.recv() => self.line_in_event(event),
                Some(event) = next_recorder_event(&mut self.recorder) => {
                    let news = self.recorder.as_mut().and_then(|r| r.event(event));
                    if let Some(news) = news {
                        self.input(Input::Recorded(news), tracing::Span::none());
                    }
                }
                _ = sleep_until(deadline) => {
                    self.input(Input::Tick, tracing::Span::none());
                }
            }
            self.link.flush(|c| self.audio.command(c));
        }
        self.link.flush(|c| self.audio.command(c));
        let closing = std::mem::take(&mut self.closing);
        let _ = tokio::time::timeout(CLOSE_DEADLINE, closing.join_all()).await;
    }

    fn now(&self) -> Duration {
        self.audio.clock.now()
    }

    fn request(&mut self, request: Request) {
        match request {
            Request::Input {
                input,
                bye,
                span,
                reply,
            } => {
                let conn = match &input {
                    Input::Join { conn, .. } => Some(*conn),
                    _ => None,
                };
                let result = self.room.handle(self.now(), input);
                if let (Some(conn), Ok(Reply::Joined(welcome))) = (conn, &result) {
                    tracing::info!(
                        parent: &span,
                        peer = %welcome.peer,
                        name = welcome.name,
                        role = welcome.role.as_str(),
                        slot = ?welcome.slot.map(|s| s.to_string()),
                        rejoined = welcome.rejoined,
                        "peer joined"
                    );
                    self.conns.insert(
                        conn,
                        Conn {
                            peer: welcome.peer,
                            span: span.clone(),
                            bye,
                            mix: None,
                            media: None,
                        },
                    );
                }
                // Carried out before the reply, so whoever asked sees the consequences
                // (the view, the goodbye) by the time the reply arrives.
                self.apply(&span);
                let _ = reply.send(result);
            }
            Request::Attach { conn, peer, reply } => {
                let attached = self.attach(conn, peer);
                let _ = reply.send(attached);
            }
            Request::Envelope { conn, reply } => {
                let envelope = self
                    .fanout
                    .iter()
                    .find(|(_, conns)| conns.contains(&conn))
                    .and_then(|(mix, _)| self.envelopes.get(mix))
                    .map(|e| Envelope {
                        start: e.start,
                        levels: e.levels.iter().copied().collect(),
                    });
                let _ = reply.send(envelope);
            }
        }
    }

    fn input(&mut self, input: Input, span: tracing::Span) {
        let _ = self.room.handle(self.now(), input);
        self.apply(&span);
    }

    fn apply(&mut self, span: &tracing::Span) {
        let mut fanout_changed = false;
        let mut view_changed = false;
        while let Some(action) = self.room.poll_action() {
            match action {
                Action::Engine(command) => self.link.queue(command),
                Action::Player(command) => self.player.send(command),
                Action::Feed(generation) => self.feed_gate.set(generation),
                Action::LineIn(command) => {
                    if let Some(line_in) = &self.line_in {
                        line_in.send(command);
                    }
                }
                Action::Route { conn, mix } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.mix = Some(mix);
                        fanout_changed = true;
                    }
                }
                Action::Bye { conn, reason } => {
                    if let Some(c) = self.conns.remove(&conn) {
                        self.bye(c, reason);
                        fanout_changed = true;
                    }
                }
                Action::Left { peer, reason } => {
                    tracing::info!(parent: span, peer = %peer, reason = reason.as_str(), "peer left");
                }
                Action::Record(plan) => {
                    if let Some(recorder) = self.recorder.as_mut() {
                        recorder.start(plan);
                    }
                }
                Action::RecordStop => {
                    if let Some(recorder) = self.recorder.as_mut() {
                        recorder.stop();
                    }
                }
                Action::RecordShift { peer, to_the_box } => {
                    if let Some(recorder) = self.recorder.as_mut() {
                        recorder.shift(peer, to_the_box);
                    }
                }
                Action::Changed => view_changed = true,
            }
        }
        if fanout_changed {
            self.rebuild_fanout();
        }
        if view_changed {
            self.view.send_replace(Arc::new(self.room.view()));
        }
    }

    fn line_in_event(&mut self, event: LineInEvent) {
        let news = match event {
            LineInEvent::Started { generation, .. } => SongFeedback::LineIn {
                generation,
                problem: None,
            },
            LineInEvent::Failed { generation, detail } => SongFeedback::LineIn {
                generation,
                problem: Some(detail),
            },
        };
        self.input(Input::Song(news), tracing::Span::none());
    }

    fn player_event(&mut self, event: PlayerEvent) {
        let news = match event {
            PlayerEvent::Started {
                generation, info, ..
            } => SongFeedback::Opened {
                generation,
                duration: info.duration,
            },
            PlayerEvent::Failed {
                generation,
                kind,
                detail,
            } => {
                tracing::warn!(generation, kind, detail, "song failed");
                SongFeedback::Failed {
                    generation,
                    kind: kind.to_string(),
                    detail,
                }
            }
            PlayerEvent::Decoded {
                generation,
                bad_packets,
                busy,
            } => {
                tracing::info!(
                    generation,
                    bad_packets,
                    decode_ms = busy.as_secs_f64() * 1e3,
                    "song decoded"
                );
                return;
            }
        };
        self.input(Input::Song(news), tracing::Span::none());
    }

    fn bye(&mut self, mut conn: Conn, reason: ByeReason) {
        if let Some(bye) = conn.bye.take() {
            let _ = bye.send(reason);
        }
        if let Some(media) = conn.media.take() {
            let frames_sent = media.peer.frames_sent();
            tracing::debug!(
                parent: &conn.span,
                peer = %conn.peer,
                reason = reason.as_str(),
                frames_sent,
                frames_before_connected = media.peer.frames_early(),
                frames_dropped = media.dropped,
                "media closed"
            );
            // Dropping the frame sender ends the writer task; the close itself may take
            // a while and must not hold up the room.
            let peer = media.peer;
            self.closing.spawn(async move { peer.close().await });
        }
    }

    fn attach(&mut self, conn: ConnId, peer: Arc<Peer>) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.media.is_some() {
            return false;
        }
        let (frames, mut frames_rx) = mpsc::channel::<OutFrame>(PEER_QUEUE_FRAMES);
        let writer = peer.clone();
        tokio::spawn(
            async move {
                while let Some(frame) = frames_rx.recv().await {
                    writer.send(frame).await;
                }
            }
            .instrument(c.span.clone()),
        );
        c.media = Some(ConnMedia {
            peer,
            frames,
            dropped: 0,
            dropped_logged: 0,
            logged_at: None,
        });
        self.rebuild_fanout();
        true
    }

    fn rebuild_fanout(&mut self) {
        self.fanout.clear();
        for (&conn, c) in &self.conns {
            if let (Some(mix), Some(_)) = (c.mix, &c.media) {
                self.fanout.entry(mix).or_default().push(conn);
            }
        }
    }

    /// Hands every encoded frame to the writers of the connections that hear its mix,
    /// without waiting for any of them.
    fn fan_out(&mut self) {
        let mut any = false;
        while let Some(frame) = self.audio.frames.pop() {
            any = true;
            let Some(subscribers) = self.fanout.get(&frame.mix) else {
                continue;
            };
            let levels = frame.envelope();
            let kept = self.envelopes.entry(frame.mix).or_default();
            let end = kept.start + (kept.levels.len() * ENVELOPE_BLOCK) as u64;
            if kept.levels.is_empty() || end != frame.start {
                // The first frame, or a gap (a reset encoder): start over.
                kept.levels.clear();
                kept.start = frame.start;
            }
            kept.levels.extend(levels.iter().copied());
            while kept.levels.len() > ENVELOPE_KEEP {
                kept.levels.pop_front();
                kept.start += ENVELOPE_BLOCK as u64;
            }
            let out = OutFrame {
                start: frame.start,
                payload: Bytes::copy_from_slice(frame.payload()),
            };
            for conn in subscribers {
                let Some(media) = self.conns.get_mut(conn).and_then(|c| c.media.as_mut()) else {
                    continue;
                };
                if media.frames.try_send(out.clone()).is_err() {
                    media.dropped += 1;
                }
            }
        }
        if any {
            // Only the mixes someone hears.
            let fanout = &self.fanout;
            self.envelopes.retain(|mix, _| fanout.contains_key(mix));
        }
    }

    fn reports(&mut self) {
        let mut changed = false;
        while let Some(report) = self.audio.reports.pop() {
            match report {
                Report::Singer(r) => {
                    if let Some(g) = self.voice_gaps.observe(r.singer, &r.stats, self.now()) {
                        tracing::info!(
                            peer = %room::PeerId(r.singer.0),
                            late = g.late,
                            lost = g.lost,
                            fec_recovered = g.fec_recovered,
                            concealed_ms = crate::engine::duration_of(g.concealed_samples)
                                .as_secs_f64()
                                * 1000.0,
                            underruns = g.underruns,
                            caught_up = g.caught_up,
                            skipped = g.skipped,
                            delay_ms = r.stats.delay.as_secs_f64() * 1000.0,
                            target_ms = r.stats.target.as_secs_f64() * 1000.0,
                            "voice gaps at the box since the last such line"
                        );
                    }
                    let figures = SingerFigures {
                        level_db: r.voice.peak_dbfs(),
                        delay_ms: r.stats.delay.as_secs_f32() * 1000.0,
                        packet_ms: r.stats.packet.as_secs_f32() * 1000.0,
                        lost: r.stats.lost,
                        packets: r.stats.packets,
                    };
                    let _ = self.room.handle(
                        self.now(),
                        Input::Figures {
                            singer: r.singer,
                            figures,
                        },
                    );
                    changed = true;
                }
                Report::Venue(level) => self
                    .venue_level_db
                    .store(level.peak_dbfs().to_bits(), Ordering::Relaxed),
                Report::Event(Event::Rejected { singer, reason }) => {
                    // The room and the engine disagree about a seat: a bug, not input.
                    tracing::error!(singer = %singer, reason = ?reason, "engine refused a command");
                }
                Report::Event(Event::BackingEnded { generation }) => {
                    tracing::info!(generation, "song ended");
                    let _ = self
                        .room
                        .handle(self.now(), Input::Song(SongFeedback::Ended { generation }));
                    changed = true;
                }
                Report::Backing {
                    position,
                    at,
                    latency_frames,
                    bridge_frames,
                } => {
                    let clock = SongClock {
                        generation: position.generation,
                        position: position.position,
                        mix_time: position.mix_time,
                        at,
                        playing: position.playing,
                        latency_frames,
                        device_delay_frames: self
                            .audio
                            .counters
                            .output_delay_frames
                            .load(Ordering::Relaxed),
                        speaker_frames: self.speaker_frames,
                        bridge_frames,
                        lead_frames: position.lead,
                        venue_delay_frames: position.venue_delay,
                        steady_from: 0,
                    }
                    .after(&self.song_clock.borrow());
                    self.song_clock.send_replace(clock);
                    let behind = crate::engine::duration_of(clock.speakers_behind_frames());
                    if behind.abs_diff(self.stage_behind) >= STAGE_MOVE {
                        self.stage_behind = behind;
                        let _ = self.room.handle(self.now(), Input::Stage { behind });
                        changed = true;
                    }
                    if let Some(recorder) = self.recorder.as_mut() {
                        recorder.follow(&clock);
                    }
                    let _ = self.room.handle(
                        self.now(),
                        Input::Song(SongFeedback::Position {
                            generation: position.generation,
                            position: position.position,
                        }),
                    );
                }
            }
        }
        if changed {
            self.apply(&tracing::Span::none());
        }
        let now = self.now();
        for c in self.conns.values_mut() {
            let (Some(media), span, peer) = (c.media.as_mut(), &c.span, c.peer) else {
                continue;
            };
            if media.dropped > media.dropped_logged
                && media
                    .logged_at
                    .is_none_or(|t| now.saturating_sub(t) >= DROP_LOG_INTERVAL)
            {
                tracing::warn!(
                    parent: span,
                    peer = %peer,
                    dropped = media.dropped - media.dropped_logged,
                    total = media.dropped,
                    "return mix frames dropped: the peer cannot keep up"
                );
                media.dropped_logged = media.dropped;
                media.logged_at = Some(now);
            }
        }
        let xruns = self.audio.counters.xruns.load(Ordering::Relaxed);
        if xruns > self.xruns_logged
            && self
                .xruns_logged_at
                .is_none_or(|t| now.saturating_sub(t) >= DROP_LOG_INTERVAL)
        {
            tracing::warn!(
                xruns,
                new = xruns - self.xruns_logged,
                "audio output underran and recovered"
            );
            self.xruns_logged = xruns;
            self.xruns_logged_at = Some(now);
        }
    }
}

/// The recorder's next event (never, without a recorder).
async fn next_recorder_event(
    recorder: &mut Option<SongRecorder>,
) -> Option<crate::record::RecorderEvent> {
    match recorder {
        Some(r) => r.next_event().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::codec::ENCODER_LOOKAHEAD_FRAMES;

    #[test]
    fn the_timeline_maps_a_return_mix_timestamp_to_when_the_speakers_play_it() {
        let clock = SongClock {
            generation: 1,
            position: 0,
            mix_time: 480_000,
            at: Duration::from_secs(10),
            playing: true,
            latency_frames: 48,
            device_delay_frames: 1_440,
            speaker_frames: 480,
            bridge_frames: 0,
            lead_frames: 0,
            venue_delay_frames: 0,
            steady_from: 0,
        };
        let offset = 0xFFFF_FF00u32;
        // The timestamp that carries the report's own frame: rendered at 10 s, heard
        // from the speakers 1 + 30 + 10 ms later.
        let rtp = clock.rtp_at_report(offset);
        assert_eq!(
            rtp,
            offset.wrapping_add(480_000 + 48 + ENCODER_LOOKAHEAD_FRAMES as u32)
        );
        assert_eq!(clock.speakers_play_us(rtp, offset), 10_041_000);
        // 480 frames later (and across the 32-bit wrap): 10 ms later; earlier ones too.
        assert_eq!(
            clock.speakers_play_us(rtp.wrapping_add(480), offset),
            10_051_000
        );
        assert_eq!(
            clock.speakers_play_us(rtp.wrapping_sub(4_800), offset),
            9_941_000
        );
        // A device period longer than the engine's writes the frame later still.
        let bridged = SongClock {
            bridge_frames: 544,
            ..clock
        };
        assert_eq!(bridged.speakers_play_us(rtp, offset), 10_041_000 + 11_333);
        assert_eq!(bridged.position_at(clock.at), 0);
        // In-ear mode: the speakers play the song 100 ms later; the phones' timeline
        // stays.
        let held = SongClock {
            position: 96_000,
            venue_delay_frames: 4_800,
            ..clock
        };
        assert_eq!(held.speakers_play_us(rtp, offset), 10_041_000);
        assert_eq!(held.position_at(clock.at), 96_000 - 1_968 - 4_800);
    }

    #[test]
    fn a_report_after_the_output_stalled_no_longer_maps_what_was_sent_before() {
        let first = SongClock {
            generation: 1,
            mix_time: 480_000,
            at: Duration::from_secs(10),
            playing: true,
            latency_frames: 48,
            ..SongClock::default()
        };
        let offset = 7u32;
        // 100 ms rendered in 100 ms (and a device period of jitter): one steady stretch.
        let next = SongClock {
            mix_time: 484_800,
            at: Duration::from_millis(10_140),
            ..first
        }
        .after(&first);
        assert_eq!(next.steady_from, 0);
        assert!(next.maps(first.rtp_at_report(offset), offset));
        // Then 100 ms rendered in 1.9 s: the output stalled.
        let stalled = SongClock {
            mix_time: 489_600,
            at: Duration::from_millis(12_040),
            ..next
        }
        .after(&next);
        assert_eq!(stalled.steady_from, 489_600);
        assert!(!stalled.maps(next.rtp_at_report(offset), offset));
        assert!(!stalled.maps(stalled.rtp_at_report(offset).wrapping_sub(1), offset));
        assert!(stalled.maps(stalled.rtp_at_report(offset), offset));
        // Steady again: the stretch still begins at the stall.
        let on = SongClock {
            mix_time: 494_400,
            at: Duration::from_millis(12_140),
            ..stalled
        }
        .after(&stalled);
        assert_eq!(on.steady_from, 489_600);
        assert!(on.maps(on.rtp_at_report(offset), offset));
    }
}
