//! The only module that knows webrtc-rs: one `PeerConnection` per phone, RTP in to the
//! audio thread's queue, encoded mix frames out as RTP.
//!
//! Boundary: callers hand in SDP and candidate JSON as `String`s and get `String`s back;
//! no webrtc type leaves this module. Invariants: a phone's RTP goes only to its own
//! seat (the singer id is fixed when the peer is built); a failure on one peer never
//! touches another.
//!
//! Version: `webrtc` 0.21.1 (see ARCHITECTURE.md, "Why these crates").

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, Notify};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState,
};

use crate::audio::{AudioHandle, PacketSlot};
use crate::engine::SingerId;
use crate::limits::TokenBucket;

mod sender_clock;
use sender_clock::SenderClock;

/// The payload type we register for Opus (Chrome's and Safari's choice too). A peer that
/// offers another one gets its own in the answer, and its mix is sent with that.
const OPUS_PAYLOAD_TYPE: u8 = 111;

/// A peer's failed writes are logged at the first and then once per this many (1000
/// frames are 10 s of a mix).
const SEND_ERROR_LOG_EVERY: u64 = 1000;

/// How long an answer for a non-trickle client (WHIP) may wait for candidate gathering.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// A WebRTC failure for one peer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The offer was refused by the stack.
    #[error("offer rejected: {0}")]
    Offer(String),
    /// A candidate was refused.
    #[error("candidate rejected: {0}")]
    Candidate(String),
    /// Building the connection failed (sockets, settings).
    #[error("peer connection setup failed: {0}")]
    Setup(String),
}

/// Settings shared by every peer.
#[derive(Clone, Debug)]
pub struct RtcSettings {
    /// UDP bind addresses.
    pub udp_bind: Vec<IpAddr>,
    /// Offer loopback candidates.
    pub include_loopback: bool,
    /// ICE disconnected timeout.
    pub ice_disconnected: Duration,
    /// ICE failed timeout.
    pub ice_failed: Duration,
    /// ICE keepalive interval.
    pub ice_keepalive: Duration,
    /// Uplink bitrate signalled to phones, bit/s.
    pub uplink_bitrate_bps: u32,
    /// RTP packets a singer may send per second on average; the excess is dropped here,
    /// before the shared packet queue, so a flood hurts only the flooder.
    pub packets_per_s: f64,
    /// RTP packets a singer may send in a burst.
    pub packets_burst: f64,
}

/// What happens to a peer, for its owner.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerEvent {
    /// A local candidate to trickle (RTCIceCandidateInit JSON).
    LocalCandidate(String),
    /// ICE and DTLS are up: media flows.
    Connected,
    /// Consent lost for a moment.
    Disconnected,
    /// Consent lost for good (or the peer closed): free the seat.
    Failed,
    /// The singer's uplink on its own wall clock, ms: its fastest packet's one-way
    /// time less (the box's clock − the phone's wall clock) (`sender_clock`). At most
    /// one a [`SENDER_CLOCK_EVERY`].
    SenderClock(f64),
}

/// The most often a peer's [`PeerEvent::SenderClock`] is told (a phone may send
/// sender reports as fast as it likes).
pub const SENDER_CLOCK_EVERY: Duration = Duration::from_secs(1);

/// Where a singer's RTP goes.
#[derive(Clone)]
pub struct Inbound {
    /// The seat it belongs to.
    pub singer: SingerId,
    /// The audio thread's queues.
    pub audio: AudioHandle,
}

/// What a peer sends the box.
#[derive(Clone)]
pub enum Uplink {
    /// Nothing (a listener): its RTP is drained.
    None,
    /// A singer's voice, to its seat.
    Voice(Inbound),
    /// A backing feed's packets, to the task that decodes them (full: dropped, counted).
    Backing(mpsc::Sender<BackingPacket>),
}

/// One RTP packet of a backing feed.
#[derive(Clone, Debug)]
pub struct BackingPacket {
    /// Its sequence number.
    pub sequence: u16,
    /// The Opus payload.
    pub payload: bytes::Bytes,
}

/// One encoded mix frame on its way to a peer (the payload shared by every peer that
/// hears the mix: cloning it is a reference count, not a copy).
#[derive(Clone, Debug)]
pub struct OutFrame {
    /// Mix time of its first frame (frames since the engine started).
    pub start: u64,
    /// The Opus payload.
    pub payload: bytes::Bytes,
}

/// The sending side of a peer: writes mix frames as RTP.
struct Outgoing {
    track: Arc<TrackLocalStaticRTP>,
    /// Our SSRC for this peer: the sender refuses packets without it.
    ssrc: u32,
    /// The payload type this peer negotiated for Opus (111 in Chromium's and Safari's
    /// offers, 109 in Firefox's, 96 in aiortc's and GStreamer's): the sender refuses
    /// any other.
    payload_type: u8,
    sequence: AtomicU16,
    timestamp_offset: u32,
    frames_sent: AtomicU64,
    /// Set while ICE and DTLS are up. Until then there are no SRTP keys, and the stack
    /// would refuse (and log, at WARN) every frame: they are dropped here and counted.
    connected: Arc<AtomicBool>,
    /// Frames dropped because the connection was not up yet.
    frames_early: AtomicU64,
    /// Write failures so far (logged at the first and every
    /// [`SEND_ERROR_LOG_EVERY`]th: a broken peer fails on every frame).
    failures: AtomicU64,
}

/// One phone's connection.
pub struct Peer {
    pc: Arc<dyn PeerConnection>,
    outgoing: Outgoing,
}

impl Peer {
    /// What this peer's RTP timestamps add to the mix time (random, fixed for the
    /// connection): a phone turns the timestamp it plays back into mix time with it.
    pub fn timestamp_offset(&self) -> u32 {
        self.outgoing.timestamp_offset
    }

    /// Sends one encoded frame; the RTP timestamp is the frame's mix time plus this
    /// peer's random offset (RFC 3550 §5.1), so every peer's stream is continuous.
    pub async fn send(&self, frame: OutFrame) {
        let out = &self.outgoing;
        if !out.connected.load(Ordering::Relaxed) {
            out.frames_early.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let header = rtc::rtp::header::Header {
            version: 2,
            payload_type: out.payload_type,
            sequence_number: out.sequence.fetch_add(1, Ordering::Relaxed),
            timestamp: out.timestamp_offset.wrapping_add(frame.start as u32),
            ssrc: out.ssrc,
            ..Default::default()
        };
        let packet = rtc::rtp::packet::Packet {
            header,
            payload: frame.payload,
        };
        match out.track.write_rtp(packet).await {
            Ok(()) => {
                out.frames_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // A closed peer refuses every write until its owner removes it: count
                // them all, say so once in a while.
                let failures = out.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures == 1 || failures.is_multiple_of(SEND_ERROR_LOG_EVERY) {
                    tracing::debug!(error = %e, failures, "mix frames not sent");
                }
            }
        }
    }

    /// Frames sent so far.
    pub fn frames_sent(&self) -> u64 {
        self.outgoing.frames_sent.load(Ordering::Relaxed)
    }

    /// Frames dropped because they came before the connection was up.
    pub fn frames_early(&self) -> u64 {
        self.outgoing.frames_early.load(Ordering::Relaxed)
    }

    /// The payload type the mix is sent with (the one this peer negotiated for Opus).
    pub fn payload_type(&self) -> u8 {
        self.outgoing.payload_type
    }

    /// Adds a trickled remote candidate (RTCIceCandidateInit JSON); `None` ends them.
    pub async fn add_remote_candidate(&self, json: Option<&str>) -> Result<(), Error> {
        let Some(json) = json else { return Ok(()) };
        let init: RTCIceCandidateInit =
            serde_json::from_str(json).map_err(|e| Error::Candidate(e.to_string()))?;
        if init.candidate.is_empty() {
            return Ok(());
        }
        self.pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| Error::Candidate(e.to_string()))
    }

    /// Closes the connection (the phone is told over signaling, not by this).
    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

struct Handler {
    events: mpsc::UnboundedSender<PeerEvent>,
    /// Shared with [`Outgoing::connected`].
    connected: Arc<AtomicBool>,
    uplink: Uplink,
    gathered: Arc<Notify>,
    packets_per_s: f64,
    packets_burst: f64,
}

/// A singer's packets over the rate are logged at the first and once per this many.
const FLOOD_LOG_EVERY: u64 = 1000;

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            if let Ok(json) = serde_json::to_string(&init) {
                let _ = self.events.send(PeerEvent::LocalCandidate(json));
            }
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        // Disconnected keeps the keys (consent may come back); Failed and Closed end them.
        match state {
            RTCPeerConnectionState::Connected => self.connected.store(true, Ordering::Relaxed),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                self.connected.store(false, Ordering::Relaxed)
            }
            _ => {}
        }
        let event = match state {
            RTCPeerConnectionState::Connected => PeerEvent::Connected,
            RTCPeerConnectionState::Disconnected => PeerEvent::Disconnected,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => PeerEvent::Failed,
            _ => return,
        };
        let _ = self.events.send(event);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let mut budget = TokenBucket::new(self.packets_per_s, self.packets_burst);
        let inbound = match self.uplink.clone() {
            Uplink::Voice(inbound) => inbound,
            Uplink::None => {
                // A listener has nothing to send; drain so the stack does not buffer.
                tokio::spawn(async move { while track.poll().await.is_some() {} });
                return;
            }
            Uplink::Backing(feed) => {
                tokio::spawn(backing_track(track, feed, budget));
                return;
            }
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut oversized = 0u64;
            let mut flooded = 0u64;
            let mut sender_clock = SenderClock::new();
            let mut told: Option<Duration> = None;
            while let Some(event) = track.poll().await {
                let packet = match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => packet,
                    TrackRemoteEvent::OnRtcpPacket(packets) => {
                        let at = inbound.audio.clock.now();
                        for sr in packets
                            .iter()
                            .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
                        {
                            sender_clock.report(sr.ssrc, sr.ntp_time, sr.rtp_time, at);
                        }
                        let due = told.is_none_or(|t| at.saturating_sub(t) >= SENDER_CLOCK_EVERY);
                        if let Some(lateness) = sender_clock.lateness_ms().filter(|_| due) {
                            told = Some(at);
                            let _ = events.send(PeerEvent::SenderClock(lateness));
                        }
                        continue;
                    }
                    _ => continue,
                };
                let at = inbound.audio.clock.now();
                if !budget.take(at) {
                    flooded += 1;
                    if flooded == 1 || flooded.is_multiple_of(FLOOD_LOG_EVERY) {
                        tracing::warn!(
                            singer = %inbound.singer,
                            dropped = flooded,
                            "singer sends packets faster than allowed; the excess is dropped"
                        );
                    }
                    continue;
                }
                let h = &packet.header;
                sender_clock.packet(h.ssrc, h.timestamp, at);
                match PacketSlot::new(
                    inbound.singer,
                    h.ssrc,
                    h.sequence_number,
                    h.timestamp,
                    at,
                    &packet.payload,
                ) {
                    Some(slot) => inbound.audio.push_packet(slot),
                    None => oversized += 1,
                }
            }
            tracing::debug!(singer = %inbound.singer, oversized, flooded, "uplink track ended");
        });
    }
}

/// Where [`SenderReports`] sits in the interceptor chain: after every default one.
const SENDER_REPORTS_SLOT: usize = 14_000;

/// Hands the phones' RTCP sender reports to their tracks as well. Inbound RTCP is for
/// the interceptors unless one marks it for the application; this one marks the
/// compound packets that carry a sender report and changes nothing else.
#[derive(Default)]
struct SenderReports {
    read: std::collections::VecDeque<TaggedPacket>,
    write: std::collections::VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for SenderReports {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if packets.iter().any(|p| p.as_any().is::<SenderReport>()) {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for SenderReports {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Forwards a backing feed's packets (within the packet budget) to its decoder task.
async fn backing_track(
    track: Arc<dyn TrackRemote>,
    feed: mpsc::Sender<BackingPacket>,
    mut budget: TokenBucket,
) {
    let clock = crate::audio::AudioClock::start();
    let (mut flooded, mut full) = (0u64, 0u64);
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        if !budget.take(clock.now()) {
            flooded += 1;
            if flooded == 1 || flooded.is_multiple_of(FLOOD_LOG_EVERY) {
                tracing::warn!(
                    dropped = flooded,
                    "the backing feed sends packets faster than allowed; the excess is dropped"
                );
            }
            continue;
        }
        let packet = BackingPacket {
            sequence: packet.header.sequence_number,
            payload: packet.payload,
        };
        match feed.try_send(packet) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => full += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    tracing::debug!(flooded, full, "backing track ended");
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Answers `offer_sdp` with a new peer. What it sends goes where `uplink` says; every peer
/// gets a sending track for its mix. With `wait_for_candidates` (WHIP) the answer holds
/// every local candidate; otherwise candidates trickle out as [`PeerEvent`]s.
pub async fn answer(
    settings: &RtcSettings,
    offer_sdp: String,
    uplink: Uplink,
    wait_for_candidates: bool,
) -> Result<(Peer, String, mpsc::UnboundedReceiver<PeerEvent>), Error> {
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PAYLOAD_TYPE,
            },
            RtpCodecKind::Audio,
        )
        .map_err(|e| Error::Setup(e.to_string()))?;
    // Default interceptors: receiver reports for the phone's uplink, sender reports
    // (NTP/RTP mapping) for the mix we send, NACK/TWCC bookkeeping. Last in the chain,
    // after they have read them: the phone's sender reports, on to its track
    // (`sender_clock`).
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)
        .map_err(|e| Error::Setup(e.to_string()))?
        .with(Slot::from(SENDER_REPORTS_SLOT), SenderReports::default());
    // mDNS off: the default QueryOnly mode opens a multicast socket per peer and fails
    // on a box without a multicast route (WEBRTC.md §3); phones that hide their address
    // still connect through peer-reflexive candidates.
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(
            Some(settings.ice_disconnected),
            Some(settings.ice_failed),
            Some(settings.ice_keepalive),
        )
        .with_include_loopback_candidate(settings.include_loopback)
        .build();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let gathered = Arc::new(Notify::new());
    let connected = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(Handler {
        events: events_tx,
        connected: connected.clone(),
        uplink,
        gathered: gathered.clone(),
        packets_per_s: settings.packets_per_s,
        packets_burst: settings.packets_burst,
    });
    let udp_addrs: Vec<String> = settings
        .udp_bind
        .iter()
        .map(|ip| format!("{ip}:0"))
        .collect();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_setting_engine(setting_engine)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(udp_addrs)
        .build()
        .await
        .map_err(|e| Error::Setup(e.to_string()))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let ssrc = rand::random::<u32>();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "duetbox".to_string(),
        format!("mix-{ssrc:08x}"),
        "duetbox mix".to_string(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: opus_codec(),
            ..Default::default()
        }],
    )));
    let offer = RTCSessionDescription::offer(offer_sdp).map_err(|e| Error::Offer(e.to_string()))?;
    let result = async {
        pc.set_remote_description(offer)
            .await
            .map_err(|e| Error::Offer(e.to_string()))?;
        pc.add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| Error::Offer(e.to_string()))?;
        let answer = pc
            .create_answer(None)
            .await
            .map_err(|e| Error::Offer(e.to_string()))?;
        pc.set_local_description(answer)
            .await
            .map_err(|e| Error::Offer(e.to_string()))?;
        if wait_for_candidates {
            let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.notified()).await;
        }
        pc.local_description()
            .await
            .ok_or_else(|| Error::Offer("no local description".into()))
    }
    .await;
    let local = match result {
        Ok(local) => local,
        Err(e) => {
            let _ = pc.close().await;
            return Err(e);
        }
    };
    let Some(payload_type) = opus_payload_type(&local.sdp) else {
        let _ = pc.close().await;
        return Err(Error::Offer("the answer has no Opus payload type".into()));
    };
    let sdp = rewrite_opus_fmtp(&local.sdp, settings.uplink_bitrate_bps);
    let outgoing = Outgoing {
        track,
        ssrc,
        payload_type,
        sequence: AtomicU16::new(rand::random()),
        timestamp_offset: rand::random(),
        frames_sent: AtomicU64::new(0),
        connected,
        frames_early: AtomicU64::new(0),
        failures: AtomicU64::new(0),
    };
    Ok((Peer { pc, outgoing }, sdp, events_rx))
}

/// The payload type of Opus in an SDP's first audio m-line: in an answer, the one the
/// offer chose (JSEP answers with the offerer's numbers). `None` without one, or when
/// it is not written as a plain decimal number.
pub fn opus_payload_type(sdp: &str) -> Option<u8> {
    let mut in_audio = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            if in_audio {
                return None;
            }
            in_audio = m.starts_with("audio ");
        } else if let (true, Some(rest)) = (in_audio, line.strip_prefix("a=rtpmap:")) {
            let (pt, codec) = rest.split_once(' ')?;
            if codec.to_ascii_lowercase().starts_with("opus/48000") {
                // Canonical decimal only ("055" is not 55 to every parser).
                let digits = !pt.is_empty() && pt.bytes().all(|b| b.is_ascii_digit());
                let canonical = digits && (pt == "0" || !pt.starts_with('0'));
                return if canonical { pt.parse().ok() } else { None };
            }
        }
    }
    None
}

/// Rewrites the Opus fmtp of the answer *text sent to the phone* (never the description
/// set locally, which the stack would refuse: WEBRTC.md §8): what the box wants to
/// receive (mono voice with in-band FEC, no DTX, at `uplink_bitrate_bps`) and that it
/// sends stereo. `a=ptime:10` asks the phone for 10 ms packets, halving packetisation.
pub fn rewrite_opus_fmtp(sdp: &str, uplink_bitrate_bps: u32) -> String {
    let Some(pt) = opus_payload_type(sdp) else {
        return sdp.to_string();
    };
    let fmtp = format!(
        "a=fmtp:{pt} minptime=10;useinbandfec=1;usedtx=0;stereo=0;sprop-stereo=1;maxaveragebitrate={uplink_bitrate_bps}"
    );
    let fmtp_prefix = format!("a=fmtp:{pt} ");
    let mut out = String::with_capacity(sdp.len() + 64);
    // An existing fmtp line is replaced where it stands; only without one is a line
    // added after the rtpmap (adding it there too would give the phone two).
    let mut wrote_fmtp = sdp.lines().any(|l| l.starts_with(&fmtp_prefix));
    let mut has_ptime = false;
    for line in sdp.lines() {
        if line.starts_with(&fmtp_prefix) {
            out.push_str(&fmtp);
        } else {
            has_ptime |= line.starts_with("a=ptime:");
            out.push_str(line);
        }
        out.push_str("\r\n");
        if !wrote_fmtp && line.starts_with(&format!("a=rtpmap:{pt} ")) {
            out.push_str(&fmtp);
            out.push_str("\r\n");
            wrote_fmtp = true;
        }
    }
    if !has_ptime {
        if let Some(pos) = out.find(&fmtp) {
            out.insert_str(pos + fmtp.len() + 2, "a=ptime:10\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser-shaped offer (Chrome's layout); no ICE ever completes for it.
    const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:dTbk\r\n\
        a=ice-pwd:3ROgbzHu0y2ZM/TSfDr9Bugm\r\na=ice-options:trickle\r\n\
        a=fingerprint:sha-256 9D:9C:2C:7F:6B:0F:76:62:43:38:86:6F:2E:6F:3B:E6:67:7B:AB:4F:D5:65:3D:0A:38:F1:E7:53:F7:4E:76:2C\r\n\
        a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n\
        a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n";

    /// Frames that come before ICE and DTLS are up never reach the stack (it has no
    /// SRTP keys yet and would log a warning per frame): they are counted instead.
    #[tokio::test]
    async fn mix_frames_before_the_connection_is_up_are_counted_not_written() {
        let settings = RtcSettings {
            udp_bind: vec![IpAddr::from([127, 0, 0, 1])],
            include_loopback: true,
            ice_disconnected: Duration::from_secs(5),
            ice_failed: Duration::from_secs(10),
            ice_keepalive: Duration::from_secs(2),
            uplink_bitrate_bps: 64_000,
            packets_per_s: 200.0,
            packets_burst: 50.0,
        };
        let (peer, answer_sdp, _events) = answer(&settings, OFFER.to_string(), Uplink::None, false)
            .await
            .expect("the offer is answered");
        assert!(
            answer_sdp.contains("a=rtpmap:111 opus/48000/2"),
            "{answer_sdp}"
        );
        for start in 0..5u64 {
            let payload = bytes::Bytes::from_static(&[0xf8, 0xff, 0xfe]);
            peer.send(OutFrame {
                start: start * 480,
                payload,
            })
            .await;
        }
        assert_eq!((peer.frames_early(), peer.frames_sent()), (5, 0));
        peer.close().await;
    }

    #[test]
    fn fmtp_is_rewritten_for_the_phone_only() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n";
        let out = rewrite_opus_fmtp(sdp, 64_000);
        assert!(out.contains("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=0;stereo=0;sprop-stereo=1;maxaveragebitrate=64000\r\n"), "{out}");
        assert_eq!(out.matches("a=fmtp:111").count(), 1);
        assert!(out.contains("a=ptime:10\r\n"));
    }

    #[test]
    fn the_opus_payload_type_is_read_from_the_audio_m_line() {
        let firefox = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101\r\na=rtpmap:109 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(opus_payload_type(firefox), Some(109));
        let gstreamer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 OPUS/48000/2\r\n";
        assert_eq!(opus_payload_type(gstreamer), Some(96));
        let video_first = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(opus_payload_type(video_first), None);
        assert_eq!(opus_payload_type("v=0\r\n"), None);
        // Only plain decimal: "+109" and "055" parse as numbers but are not the
        // text the answer repeats (found by fuzzing).
        for odd in ["+109", "055", "1e2", ""] {
            let sdp = format!("v=0\r\nm=audio 9 X {odd}\r\na=rtpmap:{odd} opus/48000/2\r\n");
            assert_eq!(opus_payload_type(&sdp), None, "{odd:?}");
        }
    }

    #[test]
    fn fmtp_is_added_after_the_rtpmap_when_the_answer_has_none() {
        let sdp =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n";
        let out = rewrite_opus_fmtp(sdp, 64_000);
        assert_eq!(out.matches("a=fmtp:111").count(), 1, "{out}");
        assert!(
            out.contains("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;"),
            "{out}"
        );
        assert!(out.contains("a=ptime:10\r\n"), "{out}");
    }
}
