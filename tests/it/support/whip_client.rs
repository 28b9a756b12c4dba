//! A WHIP/WHEP client on `webrtc` 0.21.1, standing in for OBS, GStreamer or a load tool.
//!
//! Owns the client side of one session: its PeerConnection (bound to 127.0.0.1, mDNS
//! off, non-trickle), the hand-written HTTPS POST/DELETE (TLS through tokio-rustls that
//! accepts the box's self-signed certificate: these tests check the box's media, not its
//! certificate), a sender that Opus-encodes a source in 20 ms mono frames at real-time
//! pace, and a receiver that decodes what the box sends (stereo) into a recording.
//!
//! Every recorded packet carries the wall-clock instant it was handed to `write_rtp`
//! (sent) or returned by `TrackRemote::poll` (received), so a sample's position in a
//! recording maps to a wall-clock instant: the instant of its packet plus its offset in
//! the packet. The sent recording is the client's own packets decoded locally, i.e. the
//! audio exactly as the box will decode it (the encoder's look-ahead included).
//!
//! Knows nothing of the box's internals: only its HTTP interface and RTP. Every wait
//! has a deadline and names what it waited for.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};

use duetbox::engine::testkit::{synthesize, Signal};
use duetbox::engine::SAMPLE_RATE_HZ;

/// Samples in one 20 ms mono frame the client sends.
pub const FRAME_SAMPLES: usize = 960;

/// The client's frame duration.
pub const FRAME: Duration = Duration::from_millis(20);

/// The payload type the client offers for Opus by default, Chromium's (the box answers
/// with the offer's). [`WhipClient::connect_with`] offers another, as aiortc and
/// GStreamer (96) or Firefox (109) do.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

/// How long ICE gathering on 127.0.0.1 may take (it is one host candidate).
const GATHER_DEADLINE: Duration = Duration::from_secs(5);

/// How long ICE + DTLS may take to reach `connected` after the answer (WEBRTC.md
/// measured ~250 ms; the deadline is generous for a loaded 2-core machine).
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// How long one HTTPS request may take, connect to last byte.
const HTTP_DEADLINE: Duration = Duration::from_secs(10);

/// Largest Opus packet the sender produces (RFC 6716 allows 1275 bytes per frame).
const MAX_PACKET_BYTES: usize = 1500;

/// Decoder output room: 120 ms, the longest Opus packet, in stereo.
const MAX_DECODED_SAMPLES: usize = 5760 * 2;

/// Longest gap the receiver fills with concealment (a longer one is a new stream).
const MAX_CONCEALED_FRAMES: usize = SAMPLE_RATE_HZ as usize;

/// Which end of the box the client talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `POST /whip?role=singer`, a `sendrecv` audio transceiver: sends its voice and
    /// receives its personal mix.
    Singer,
    /// `POST /whep`, a `recvonly` audio transceiver: receives the venue mix.
    Listener,
    /// `POST /whip?role=backing` (the host PIN as its bearer): sends its audio as a
    /// backing feed, like a singer's voice.
    Backing,
}

/// How a client behaves beyond its role.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The payload type offered for Opus (Chromium's 111 by default; aiortc and
    /// GStreamer use 96, Firefox 109).
    pub opus_payload_type: u8,
    /// Packets sent every 20 ms (1; more makes a flooding client that sends copies of
    /// each frame, its stream's clock running that many times too fast).
    pub packets_per_frame: u32,
    /// Decode what arrives (false: only count the packets and when they came, a light
    /// listener for load tests).
    pub decode: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            opus_payload_type: OPUS_PAYLOAD_TYPE,
            packets_per_frame: 1,
            decode: true,
        }
    }
}

/// What a singer sends: given the frame index (0, 1, ...), 960 mono samples at 48 kHz.
pub type Source = Box<dyn FnMut(u64) -> Vec<f32> + Send>;

/// A source playing `signal` continuously.
pub fn signal_source(signal: Signal) -> Source {
    Box::new(move |k| synthesize(signal, k * FRAME_SAMPLES as u64, FRAME_SAMPLES))
}

/// A source of digital silence.
pub fn silence() -> Source {
    Box::new(|_| vec![0.0; FRAME_SAMPLES])
}

/// One packet in a [`Recording`].
#[derive(Clone, Copy, Debug)]
pub struct PacketTime {
    /// When it was handed to `write_rtp` (sent) or returned by `poll` (received).
    pub at: Instant,
    /// Its first frame's index in the recording.
    pub start: usize,
}

/// Decoded audio with the instant of every packet it came from.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// Interleaved samples, `channels` per frame.
    pub pcm: Vec<f32>,
    /// 1 (the sender's own decoded stream) or 2 (what the box sent).
    pub channels: usize,
    /// Packets in arrival (or send) order; concealed gaps have none.
    pub packets: Vec<PacketTime>,
    /// Frames filled by concealment because packets were missing.
    pub concealed_frames: usize,
}

impl Recording {
    /// Frames recorded.
    pub fn frames(&self) -> usize {
        self.pcm.len() / self.channels.max(1)
    }

    /// The first channel.
    pub fn left(&self) -> Vec<f32> {
        self.pcm
            .iter()
            .step_by(self.channels.max(1))
            .copied()
            .collect()
    }

    /// The wall-clock instant of frame `frame`: its packet's instant plus its offset in
    /// the packet (a packet is sent when its last frame was captured and can start
    /// playing when it arrives, so both ends use the same anchor). `None` before the
    /// first packet.
    pub fn instant_of(&self, frame: usize) -> Option<Instant> {
        let idx = self.packets.partition_point(|p| p.start <= frame);
        let packet = self.packets.get(idx.checked_sub(1)?)?;
        let offset = (frame - packet.start) as f64 / f64::from(SAMPLE_RATE_HZ);
        Some(packet.at + Duration::from_secs_f64(offset))
    }

    /// Packets whose instant lies in `[from, to]`.
    pub fn packets_between(&self, from: Instant, to: Instant) -> usize {
        self.packets
            .iter()
            .filter(|p| p.at >= from && p.at <= to)
            .count()
    }

    /// The longest time between two packets in `[from, to]` (zero with fewer than two):
    /// how long their sender (or the box) did not run.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let times: Vec<Instant> = self
            .packets
            .iter()
            .map(|p| p.at)
            .filter(|&t| t >= from && t <= to)
            .collect();
        times
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default()
    }

    /// The first frame of the first packet at or after `at` (the recording's end if none).
    pub fn first_frame_at_or_after(&self, at: Instant) -> usize {
        self.packets
            .iter()
            .find(|p| p.at >= at)
            .map_or(self.frames(), |p| p.start)
    }
}

/// Why `connect` failed: the HTTP status if the box refused, and what was said.
#[derive(Debug)]
pub struct ConnectError {
    /// The POST's status, if the request got that far.
    pub status: Option<u16>,
    /// The box's body or the local failure.
    pub message: String,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "HTTP {status}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<String> for ConnectError {
    fn from(message: String) -> Self {
        ConnectError {
            status: None,
            message,
        }
    }
}

/// State the PeerConnection's callbacks and the media tasks share with the client.
struct Shared {
    decode: bool,
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    received: Mutex<Recording>,
    sent: Mutex<Recording>,
    receivers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        // A panicking media task must not hide the recording from the test.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Handler(Arc<Shared>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.0.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.0.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.0.clone();
        let task = tokio::spawn(receive(track, shared.clone()));
        Shared::lock(&shared.receivers).push(task);
    }
}

/// Decodes the box's Opus (stereo) into the received recording, stamping each packet
/// with the instant `poll` returned it. Gaps in the RTP timestamps are concealed, so
/// the recording's frame index stays proportional to stream time.
async fn receive(track: Arc<dyn TrackRemote>, shared: Arc<Shared>) {
    let mut decoder = match opus::Decoder::new(SAMPLE_RATE_HZ, opus::Channels::Stereo) {
        Ok(d) => d,
        Err(e) => panic!("creating the client's Opus decoder: {e}"),
    };
    let mut out = vec![0.0f32; MAX_DECODED_SAMPLES];
    let mut last: Option<(u32, usize)> = None;
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let at = Instant::now();
        if !shared.decode {
            let mut rec = Shared::lock(&shared.received);
            let start = rec.packets.len();
            rec.packets.push(PacketTime { at, start });
            continue;
        }
        let h = &packet.header;
        let mut concealed = Vec::new();
        if let Some((last_ts, last_frames)) = last {
            let step = h.timestamp.wrapping_sub(last_ts);
            if step > u32::MAX / 2 || step == 0 {
                // Late or duplicate: its place in the recording has passed.
                continue;
            }
            let missing = (step as usize).saturating_sub(last_frames);
            if missing > 0 && missing <= MAX_CONCEALED_FRAMES {
                let mut left = missing;
                while left > 0 {
                    // Concealment comes in 2.5 ms steps up to 120 ms.
                    let n = left.min(MAX_DECODED_SAMPLES / 2) / 120 * 120;
                    if n == 0 {
                        break;
                    }
                    match decoder.decode_float(&[], &mut out[..n * 2], false) {
                        Ok(got) => concealed.extend_from_slice(&out[..got * 2]),
                        Err(_) => concealed.extend(std::iter::repeat_n(0.0, n * 2)),
                    }
                    left -= n;
                }
            }
        }
        let frames = match decoder.decode_float(&packet.payload, &mut out, false) {
            Ok(frames) => frames,
            // A packet the decoder refuses leaves a gap the next one conceals.
            Err(_) => continue,
        };
        last = Some((h.timestamp, frames));
        let mut rec = Shared::lock(&shared.received);
        rec.channels = 2;
        rec.concealed_frames += concealed.len() / 2;
        rec.pcm.extend_from_slice(&concealed);
        let start = rec.frames();
        rec.pcm.extend_from_slice(&out[..frames * 2]);
        rec.packets.push(PacketTime { at, start });
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: SAMPLE_RATE_HZ,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// One WHIP (singer) or WHEP (listener) session with the box.
pub struct WhipClient {
    base_url: String,
    pin: Option<String>,
    status: u16,
    location: String,
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
}

impl WhipClient {
    /// Offers, POSTs to the box at `base_url` (`https://127.0.0.1:port`), applies the
    /// answer and waits for `connected`; then a singer starts sending `source` (silence
    /// if `None`). `pin` goes in `Authorization: Bearer`. A refusal comes back as a
    /// [`ConnectError`] with the status and the box's text.
    pub async fn connect(
        base_url: &str,
        role: Role,
        name: &str,
        pin: Option<&str>,
        source: Option<Source>,
    ) -> Result<WhipClient, ConnectError> {
        Self::connect_with(base_url, role, name, pin, source, OPUS_PAYLOAD_TYPE).await
    }

    /// [`WhipClient::connect`] offering Opus on `opus_payload_type`.
    pub async fn connect_with(
        base_url: &str,
        role: Role,
        name: &str,
        pin: Option<&str>,
        source: Option<Source>,
        opus_payload_type: u8,
    ) -> Result<WhipClient, ConnectError> {
        let options = Options {
            opus_payload_type,
            ..Options::default()
        };
        Self::connect_options(base_url, role, name, pin, source, options).await
    }

    /// [`WhipClient::connect`] with every knob.
    pub async fn connect_options(
        base_url: &str,
        role: Role,
        name: &str,
        pin: Option<&str>,
        source: Option<Source>,
        options: Options,
    ) -> Result<WhipClient, ConnectError> {
        let Options {
            opus_payload_type,
            packets_per_frame,
            decode,
        } = options;
        let (gathered, mut gathered_rx) = watch::channel(false);
        let (state, mut state_rx) = watch::channel(RTCPeerConnectionState::New);
        let shared = Arc::new(Shared {
            decode,
            gathered,
            state,
            received: Mutex::new(Recording {
                channels: 2,
                ..Recording::default()
            }),
            sent: Mutex::new(Recording {
                channels: 1,
                ..Recording::default()
            }),
            receivers: Mutex::new(Vec::new()),
        });
        let (pc, voice) = build_peer(role, shared.clone(), opus_payload_type).await?;
        let result = async {
            let offer = pc
                .create_offer(None)
                .await
                .map_err(|e| format!("create_offer: {e}"))?;
            pc.set_local_description(offer)
                .await
                .map_err(|e| format!("set_local_description(offer): {e}"))?;
            wait_watch(
                &mut gathered_rx,
                GATHER_DEADLINE,
                "client ICE gathering",
                |g| *g,
            )
            .await?;
            let offer_sdp = pc
                .local_description()
                .await
                .ok_or_else(|| "no local description after gathering".to_string())?
                .sdp;
            let path = match role {
                Role::Singer => format!("/whip?name={}&role=singer", query_escape(name)),
                Role::Listener => format!("/whep?name={}", query_escape(name)),
                Role::Backing => format!("/whip?name={}&role=backing", query_escape(name)),
            };
            let mut headers = vec![("Content-Type", "application/sdp".to_string())];
            if let Some(pin) = pin {
                headers.push(("Authorization", format!("Bearer {pin}")));
            }
            let response =
                https_request(base_url, "POST", &path, &headers, offer_sdp.as_bytes()).await?;
            if response.status != 201 {
                return Err(ConnectError {
                    status: Some(response.status),
                    message: response.body,
                });
            }
            let location = response
                .header("location")
                .ok_or_else(|| "201 without a Location header".to_string())?
                .to_string();
            let answer = RTCSessionDescription::answer(response.body.clone())
                .map_err(|e| format!("the box's answer does not parse: {e}"))?;
            pc.set_remote_description(answer)
                .await
                .map_err(|e| format!("set_remote_description(answer): {e}"))?;
            wait_watch(
                &mut state_rx,
                CONNECT_DEADLINE,
                "the client's peer connection to reach connected",
                |s| *s == RTCPeerConnectionState::Connected,
            )
            .await?;
            Ok::<_, ConnectError>((response.status, location))
        }
        .await;
        let (status, location) = match result {
            Ok(ok) => ok,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let sender = voice.map(|voice| {
            let source = source.unwrap_or_else(silence);
            tokio::spawn(send(voice, source, shared.clone(), packets_per_frame))
        });
        Ok(WhipClient {
            base_url: base_url.to_string(),
            pin: pin.map(str::to_string),
            status,
            location,
            pc,
            shared,
            sender,
        })
    }

    /// The POST's status (201 for a client that connected).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The session URL the box returned, e.g. `/whip/p3`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// DELETEs the session (with the PIN, if any); returns the status. Media keeps
    /// flowing until [`WhipClient::close`].
    pub async fn delete(&self) -> Result<u16, String> {
        let mut headers = Vec::new();
        if let Some(pin) = &self.pin {
            headers.push(("Authorization", format!("Bearer {pin}")));
        }
        let response =
            https_request(&self.base_url, "DELETE", &self.location, &headers, b"").await?;
        Ok(response.status)
    }

    /// What the box sent so far, decoded: interleaved stereo at 48 kHz.
    pub fn received_pcm(&self) -> Vec<f32> {
        Shared::lock(&self.shared.received).pcm.clone()
    }

    /// What the box sent so far, with the arrival instant of every packet.
    pub fn received(&self) -> Recording {
        Shared::lock(&self.shared.received).clone()
    }

    /// What this client sent so far, decoded locally (mono), with the instant every
    /// packet was handed to `write_rtp`.
    pub fn sent(&self) -> Recording {
        Shared::lock(&self.shared.sent).clone()
    }

    /// Waits until at least `frames` frames have been received.
    pub async fn wait_received(&self, frames: usize, deadline: Duration, what: &str) {
        wait_frames(&self.shared.received, frames, deadline, what, "received").await;
    }

    /// Waits until at least `frames` frames have been sent.
    pub async fn wait_sent(&self, frames: usize, deadline: Duration, what: &str) {
        wait_frames(&self.shared.sent, frames, deadline, what, "sent").await;
    }

    /// Stops sending and receiving and closes the PeerConnection (the box is not told:
    /// DELETE first for a clean leave).
    pub async fn close(mut self) {
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
        let _ = self.pc.close().await;
        for task in Shared::lock(&self.shared.receivers).drain(..) {
            task.abort();
        }
    }
}

impl Drop for WhipClient {
    fn drop(&mut self) {
        // A test that panics before `close` must not leave media tasks running into the
        // next test.
        if let Some(sender) = self.sender.take() {
            sender.abort();
        }
        for task in Shared::lock(&self.shared.receivers).drain(..) {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pc = self.pc.clone();
            runtime.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

/// A singer's sending track and its SSRC (webrtc 0.21.1 drops packets whose header
/// does not carry one of the track's SSRCs).
struct LocalVoice {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
}

/// Builds the PeerConnection with one audio transceiver: `sendrecv` with a local Opus
/// track for a singer (returned), `recvonly` for a listener.
async fn build_peer(
    role: Role,
    shared: Arc<Shared>,
    opus_payload_type: u8,
) -> Result<(Arc<dyn PeerConnection>, Option<LocalVoice>), String> {
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: opus_payload_type,
            },
            RtpCodecKind::Audio,
        )
        .map_err(|e| format!("register Opus: {e}"))?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine)
        .map_err(|e| format!("interceptors: {e}"))?;
    // mDNS off, as the box does (WEBRTC.md §3); an explicit 127.0.0.1 bind gives the
    // loopback candidate (§5).
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(true)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_setting_engine(setting_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler(shared)))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await
        .map_err(|e| format!("building the client PeerConnection: {e}"))?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    match role {
        Role::Singer | Role::Backing => {
            let ssrc = rand::random::<u32>();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                "whip-client".to_string(),
                format!("voice-{ssrc:08x}"),
                "whip client voice".to_string(),
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
            // add_track on the offering side makes a sendrecv transceiver.
            pc.add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(|e| format!("add_track: {e}"))?;
            Ok((
                pc,
                Some(LocalVoice {
                    track,
                    ssrc,
                    payload_type: opus_payload_type,
                }),
            ))
        }
        Role::Listener => {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| format!("add_transceiver_from_kind(audio, recvonly): {e}"))?;
            Ok((pc, None))
        }
    }
}

/// Encodes `source` as 20 ms mono Opus (the engine harness's phone encoder: VoIP,
/// in-band FEC, set up like a phone browser's uplink) and writes `per_tick` RTP packets
/// (normally one) per tick of a 20 ms interval; records each packet's decoded audio and
/// the instant it was handed to `write_rtp`.
async fn send(voice: LocalVoice, mut source: Source, shared: Arc<Shared>, per_tick: u32) {
    let LocalVoice {
        track,
        ssrc,
        payload_type,
    } = voice;
    let mut encoder = duetbox::engine::testkit::phone_encoder();
    let mut local = opus::Decoder::new(SAMPLE_RATE_HZ, opus::Channels::Mono)
        .expect("an Opus decoder for 48 kHz mono");
    let mut sequence = rand::random::<u16>();
    let mut timestamp = rand::random::<u32>();
    let mut payload = vec![0u8; MAX_PACKET_BYTES];
    let mut decoded = vec![0.0f32; FRAME_SAMPLES];
    let mut tick = tokio::time::interval(FRAME);
    let (mut n, mut frames) = (0, 0);
    for k in 0u64.. {
        // A flooder (more than one packet per tick) encodes once per tick and sends
        // copies, as a cheap attacker would: the test client's own encoding must not
        // take the CPU that the box and the other clients need.
        let first = k % u64::from(per_tick.max(1)) == 0;
        if first {
            tick.tick().await;
            let pcm = source(k / u64::from(per_tick.max(1)));
            assert_eq!(pcm.len(), FRAME_SAMPLES, "a source frame is 20 ms of mono");
            n = encoder
                .encode_float(&pcm, &mut payload)
                .expect("encoding 20 ms of mono");
            frames = local
                .decode_float(&payload[..n], &mut decoded, false)
                .expect("decoding our own packet");
        }
        let packet = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: k == 0,
                payload_type,
                sequence_number: sequence,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::copy_from_slice(&payload[..n]),
        };
        let at = Instant::now();
        if track.write_rtp(packet).await.is_err() {
            // The connection closed; the test sees the recording stop growing.
            return;
        }
        let mut rec = Shared::lock(&shared.sent);
        let start = rec.frames();
        rec.pcm.extend_from_slice(&decoded[..frames]);
        rec.packets.push(PacketTime { at, start });
        drop(rec);
        sequence = sequence.wrapping_add(1);
        timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
    }
}

async fn wait_frames(
    recording: &Mutex<Recording>,
    frames: usize,
    deadline: Duration,
    what: &str,
    verb: &str,
) {
    let start = Instant::now();
    loop {
        let got = Shared::lock(recording).frames();
        if got >= frames {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}: {got} of {frames} frames {verb}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_watch<T>(
    rx: &mut watch::Receiver<T>,
    deadline: Duration,
    what: &str,
    done: impl FnMut(&T) -> bool,
) -> Result<(), String> {
    match tokio::time::timeout(deadline, rx.wait_for(done)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(format!("{what}: the peer connection went away")),
        Err(_) => Err(format!("timed out after {deadline:?} waiting for {what}")),
    }
}

fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An HTTP response: status, headers (names lowercase), body as text.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body (lossy UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A TCP connection to `authority` (`host:port`), from the local address `from` if
/// given.
pub async fn connect_from(
    from: Option<std::net::IpAddr>,
    authority: &str,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(from) = from else {
        return tokio::net::TcpStream::connect(authority).await;
    };
    let to = tokio::net::lookup_host(authority)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{authority}: no address")))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// One HTTP/1.1 request over TLS to `base_url` (`https://host:port`), `Connection:
/// close`, within [`HTTP_DEADLINE`].
pub async fn https_request(
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    https_request_from(None, base_url, method, path, headers, body).await
}

/// [`https_request`] from the local address `from` (a loopback address other than
/// 127.0.0.1 plays another client on the venue Wi-Fi).
pub async fn https_request_from(
    from: Option<std::net::IpAddr>,
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let what = format!("{method} {path}");
    tokio::time::timeout(
        HTTP_DEADLINE,
        https_request_now(from, base_url, method, path, headers, body),
    )
    .await
    .map_err(|_| format!("timed out after {HTTP_DEADLINE:?} waiting for the response to {what}"))?
    .map_err(|e| format!("{what}: {e}"))
}

async fn https_request_now(
    from: Option<std::net::IpAddr>,
    base_url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let authority = base_url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{base_url}: not an https:// URL"))?
        .trim_end_matches('/');
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let tcp = connect_from(from, authority)
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(tls_config())
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    tls.write_all(&bytes)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    tls.flush().await.map_err(|e| format!("sending: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the response is complete; a peer that closes without TLS close_notify
    // after a complete response is fine.
    loop {
        if let Some(response) = parse_response(&raw)? {
            return Ok(response);
        }
        match tls.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
    parse_response_at_eof(&raw)
}

/// A complete response in `raw`, or `None` if more bytes are needed.
fn parse_response(raw: &[u8]) -> Result<Option<HttpResponse>, String> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let (status, headers) = parse_head(&raw[..head_end])?;
    let rest = &raw[head_end + 4..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if let Some(len) = header("content-length") {
        let len: usize = len
            .trim()
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if rest.len() < len {
            return Ok(None);
        }
        rest[..len].to_vec()
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        match dechunk(rest)? {
            Some(body) => body,
            None => return Ok(None),
        }
    } else {
        // Body until the connection closes.
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

fn parse_response_at_eof(raw: &[u8]) -> Result<HttpResponse, String> {
    if let Some(response) = parse_response(raw)? {
        return Ok(response);
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "the connection closed after {} bytes, mid-header",
                raw.len()
            )
        })?;
    let (status, headers) = parse_head(&raw[..head_end])?;
    if headers.iter().any(|(n, _)| n == "content-length") {
        return Err("the connection closed before the whole body arrived".into());
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[head_end + 4..]).into_owned(),
    })
}

fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// The body of a complete chunked encoding, or `None` if it is not complete yet.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// TLS that accepts any server certificate (the box's is self-signed and made at first
/// start) but still checks the handshake signatures with ring.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
