//! The control plane: who is in the room, in which seat, hearing which mix.
//!
//! Owns admission (PIN, seat limits, names), the peers' WebRTC sessions, the fan-out of
//! encoded mix frames to the peers that hear them, and the room view the phones see.
//! Drives the audio thread only through its command queue, and reads it only through
//! its report queue: it never shares a lock with the real-time thread. Locks here are
//! held only by network tasks, briefly, and never across an `.await`.
//!
//! Invariant: whatever one peer sends or does, no other peer's seat, route or stream
//! changes (bad input ends at its sender).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::audio::{AudioHandle, Report};
use crate::engine::{Command, Event, MixId, SingerId, SingerSettings};
use crate::http::signaling::{ErrorCode, PeerView, Role};
use crate::rtc::{self, Inbound, Outgoing, Peer, PeerEvent, RtcSettings};

/// How often the fan-out task drains encoded frames (the return path's added latency is
/// at most this; 1 ms costs ~1000 wake-ups a second, nothing on a Pi).
const FANOUT_TICK: Duration = Duration::from_millis(1);

/// How often reports from the audio thread are read (stats, levels, routes).
const REPORT_TICK: Duration = Duration::from_millis(20);

/// A peer: one phone or WHIP/WHEP client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Room limits and secrets.
#[derive(Clone, Debug)]
pub struct RoomSettings {
    /// Singer seats.
    pub max_singers: usize,
    /// Listener limit.
    pub max_listeners: usize,
    /// PIN ("" = none).
    pub pin: String,
}

/// Why a peer left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaveReason {
    /// It asked to.
    Left,
    /// The box is shutting down.
    Shutdown,
    /// Its connection failed or timed out.
    Timeout,
}

impl LeaveReason {
    /// The protocol's `bye` reason.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Shutdown => "shutdown",
            LeaveReason::Timeout => "timeout",
        }
    }
}

struct Entry {
    name: String,
    role: Role,
    singer: Option<SingerId>,
    state: &'static str,
    level_db: f32,
    delay_ms: f32,
    loss_pct: f32,
    last_lost: u64,
    last_packets: u64,
    peer: Option<Arc<Peer>>,
    /// Told when the box ends this peer's session (WS tasks watch it).
    bye: watch::Sender<Option<LeaveReason>>,
}

struct State {
    peers: BTreeMap<PeerId, Entry>,
    next_id: u32,
    /// Which mix each singer hears (engine Route events).
    routes: HashMap<SingerId, MixId>,
    /// Subscribers per mix, rebuilt on every change.
    fanout: HashMap<MixId, Vec<Arc<Outgoing>>>,
    venue_level_db: f32,
}

/// The room. Cheap to share (`Arc`).
pub struct Room {
    settings: RoomSettings,
    rtc: RtcSettings,
    audio: AudioHandle,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
}

/// Admission result.
pub struct Admission {
    /// The new peer.
    pub peer: PeerId,
    /// Told when the box ends the session.
    pub bye: watch::Receiver<Option<LeaveReason>>,
}

impl Room {
    /// An empty room driving `audio`.
    pub fn new(
        settings: RoomSettings,
        rtc: RtcSettings,
        audio: AudioHandle,
        shutdown: CancellationToken,
    ) -> Arc<Room> {
        Arc::new(Room {
            settings,
            rtc,
            audio,
            state: Mutex::new(State {
                peers: BTreeMap::new(),
                next_id: 1,
                routes: HashMap::new(),
                fanout: HashMap::new(),
                venue_level_db: -120.0,
            }),
            changed: watch::channel(0).0,
            shutdown,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock is a bug; the data is still consistent enough
        // to keep serving the other phones, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Room changes (joins, leaves, levels) as a version counter.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The box's maximum singer count.
    pub fn max_singers(&self) -> usize {
        self.settings.max_singers
    }

    /// Whether a PIN is required, and whether `given` is it.
    pub fn pin_ok(&self, given: Option<&str>) -> bool {
        self.settings.pin.is_empty() || given == Some(self.settings.pin.as_str())
    }

    /// Admits a peer or says why not.
    pub fn join(&self, name: &str, role: Role, pin: Option<&str>) -> Result<Admission, ErrorCode> {
        if !self.pin_ok(pin) {
            return Err(ErrorCode::WrongPin);
        }
        if self.shutdown.is_cancelled() {
            return Err(ErrorCode::Internal);
        }
        let mut st = self.lock();
        let count = |r: Role| st.peers.values().filter(|e| e.role == r).count();
        let limit = match role {
            Role::Singer => self.settings.max_singers,
            Role::Listener => self.settings.max_listeners,
        };
        if count(role) >= limit {
            return Err(ErrorCode::RoomFull);
        }
        let id = PeerId(st.next_id);
        st.next_id += 1;
        let singer = (role == Role::Singer).then_some(SingerId(id.0));
        if let Some(singer) = singer {
            if self
                .audio
                .command(Command::AddSinger {
                    singer,
                    settings: SingerSettings::default(),
                })
                .is_err()
            {
                return Err(ErrorCode::Internal);
            }
        }
        let (bye, bye_rx) = watch::channel(None);
        st.peers.insert(
            id,
            Entry {
                name: name.to_string(),
                role,
                singer,
                state: "connecting",
                level_db: -120.0,
                delay_ms: 0.0,
                loss_pct: 0.0,
                last_lost: 0,
                last_packets: 0,
                peer: None,
                bye,
            },
        );
        let listeners = st
            .peers
            .values()
            .filter(|e| e.role == Role::Listener)
            .count();
        drop(st);
        if role == Role::Listener {
            let _ = self.audio.command(Command::SetListeners(listeners as u32));
        }
        tracing::info!(peer = %id, name, role = role.as_str(), "peer joined");
        self.bump();
        Ok(Admission {
            peer: id,
            bye: bye_rx,
        })
    }

    /// Answers a peer's offer; returns the answer SDP and the peer's event stream.
    pub async fn attach(
        self: &Arc<Self>,
        id: PeerId,
        offer_sdp: String,
        wait_for_candidates: bool,
    ) -> Result<(String, mpsc::UnboundedReceiver<PeerEvent>), rtc::Error> {
        let (role, singer) = {
            let st = self.lock();
            let Some(e) = st.peers.get(&id) else {
                return Err(rtc::Error::Setup("peer left".into()));
            };
            if e.peer.is_some() {
                return Err(rtc::Error::Offer("already offered".into()));
            }
            (e.role, e.singer)
        };
        let inbound = singer.map(|singer| Inbound {
            singer,
            audio: self.audio.clone(),
        });
        let (peer, answer, events) =
            rtc::answer(&self.rtc, offer_sdp, inbound, wait_for_candidates).await?;
        let peer = Arc::new(peer);
        let attached = {
            let mut st = self.lock();
            let attached = match st.peers.get_mut(&id) {
                Some(e) => {
                    e.peer = Some(peer.clone());
                    true
                }
                None => false,
            };
            rebuild_fanout(&mut st);
            attached
        };
        if !attached {
            peer.close().await;
            return Err(rtc::Error::Setup("peer left".into()));
        }
        tracing::debug!(peer = %id, role = role.as_str(), "peer answered");
        Ok((answer, events))
    }

    /// Adds a trickled candidate for a peer.
    pub async fn add_candidate(&self, id: PeerId, json: Option<&str>) -> Result<(), rtc::Error> {
        let peer = self.lock().peers.get(&id).and_then(|e| e.peer.clone());
        match peer {
            Some(p) => p.add_remote_candidate(json).await,
            None => Err(rtc::Error::Candidate("no offer yet".into())),
        }
    }

    /// Applies a singer's own mix settings (listeners: ignored).
    pub fn set_mix(&self, id: PeerId, monitor: Option<f32>, reverb: Option<f32>) {
        let singer = self.lock().peers.get(&id).and_then(|e| e.singer);
        let Some(singer) = singer else { return };
        let settings = SingerSettings {
            monitor: monitor.unwrap_or(0.0),
            reverb_wet: reverb.unwrap_or(0.0),
            ..SingerSettings::default()
        };
        let _ = self.audio.command(Command::SetSinger { singer, settings });
    }

    /// Marks a peer's media state (connecting, live, reconnecting).
    pub fn set_state(&self, id: PeerId, state: &'static str) {
        if let Some(e) = self.lock().peers.get_mut(&id) {
            e.state = state;
        }
        self.bump();
    }

    /// Removes a peer: frees its seat, closes its connection, tells its owner.
    pub async fn leave(&self, id: PeerId, reason: LeaveReason) {
        let entry = {
            let mut st = self.lock();
            let entry = st.peers.remove(&id);
            if let Some(e) = &entry {
                if let Some(singer) = e.singer {
                    st.routes.remove(&singer);
                }
            }
            rebuild_fanout(&mut st);
            let listeners = st
                .peers
                .values()
                .filter(|e| e.role == Role::Listener)
                .count();
            (entry, listeners)
        };
        let (Some(entry), listeners) = entry else {
            return;
        };
        if let Some(singer) = entry.singer {
            let _ = self.audio.command(Command::RemoveSinger(singer));
        } else {
            let _ = self.audio.command(Command::SetListeners(listeners as u32));
        }
        let _ = entry.bye.send(Some(reason));
        let mut frames_sent = 0;
        if let Some(peer) = entry.peer {
            frames_sent = peer.outgoing.frames_sent.load(Ordering::Relaxed);
            peer.close().await;
        }
        tracing::info!(peer = %id, name = entry.name, reason = reason.as_str(), frames_sent, "peer left");
        self.bump();
    }

    /// Every peer, for the `room` message.
    pub fn view(&self) -> Vec<PeerView> {
        self.lock()
            .peers
            .iter()
            .map(|(id, e)| PeerView {
                peer: id.to_string(),
                name: e.name.clone(),
                role: e.role,
                level_db: e.level_db,
                delay_ms: e.delay_ms,
                loss_pct: e.loss_pct,
                state: e.state,
            })
            .collect()
    }

    /// (singers, listeners) now.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        let singers = st.peers.values().filter(|e| e.role == Role::Singer).count();
        (singers, st.peers.len() - singers)
    }

    /// Venue output level, dBFS.
    pub fn venue_level_db(&self) -> f32 {
        self.lock().venue_level_db
    }

    /// Ends every session (shutdown).
    pub async fn close_all(&self) {
        let ids: Vec<PeerId> = self.lock().peers.keys().copied().collect();
        for id in ids {
            self.leave(id, LeaveReason::Shutdown).await;
        }
    }

    /// Sends encoded frames to their subscribers until cancelled.
    pub async fn run_fanout(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FANOUT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            while let Some(frame) = self.audio.frames.pop() {
                let subscribers = self
                    .lock()
                    .fanout
                    .get(&frame.mix)
                    .cloned()
                    .unwrap_or_default();
                for out in subscribers {
                    out.send(&frame).await;
                }
            }
        }
    }

    /// Reads the audio thread's reports (routes, stats, levels) until cancelled.
    pub async fn run_reports(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REPORT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_xruns = 0;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut changed = false;
            while let Some(report) = self.audio.reports.pop() {
                let mut st = self.lock();
                match report {
                    Report::Event(Event::Route { singer, mix }) => {
                        st.routes.insert(singer, mix);
                        rebuild_fanout(&mut st);
                    }
                    Report::Event(Event::Rejected { singer, reason }) => {
                        tracing::warn!(singer = %singer, reason = ?reason, "engine refused a command");
                    }
                    Report::Singer(r) => {
                        let id = PeerId(r.singer.0);
                        if let Some(e) = st.peers.get_mut(&id) {
                            e.level_db = r.voice.peak_dbfs();
                            e.delay_ms = r.stats.delay.as_secs_f32() * 1000.0;
                            let lost = r.stats.lost.saturating_sub(e.last_lost);
                            let packets = r.stats.packets.saturating_sub(e.last_packets);
                            e.loss_pct = if lost + packets > 0 {
                                lost as f32 * 100.0 / (lost + packets) as f32
                            } else {
                                0.0
                            };
                            e.last_lost = r.stats.lost;
                            e.last_packets = r.stats.packets;
                            changed = true;
                        }
                    }
                    Report::Venue(level) => st.venue_level_db = level.peak_dbfs(),
                }
            }
            let xruns = self.audio.counters.xruns.load(Ordering::Relaxed);
            if xruns > last_xruns {
                tracing::warn!(xruns, "audio output underran and recovered");
                last_xruns = xruns;
            }
            if changed {
                self.bump();
            }
        }
    }
}

fn rebuild_fanout(st: &mut State) {
    let mut fanout: HashMap<MixId, Vec<Arc<Outgoing>>> = HashMap::new();
    for e in st.peers.values() {
        let Some(peer) = &e.peer else { continue };
        let mix = match e.singer {
            Some(singer) => st
                .routes
                .get(&singer)
                .copied()
                .unwrap_or(MixId::Personal(singer)),
            None => MixId::Venue,
        };
        fanout.entry(mix).or_default().push(peer.outgoing.clone());
    }
    st.fanout = fanout;
}
