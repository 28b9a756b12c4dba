//! Test harness for the engine: virtual clock, synthetic phones, impairments and
//! measurements. Shared by the unit tests and `benches/` (feature `testkit`).
//!
//! Phones encode real Opus (libopus, 20 ms mono, in-band FEC on, like a phone browser) of a
//! test signal, on their own drifting sample clock. Packets cross a simulated network
//! with seeded jitter, stalls, loss, reordering and duplication, and reach the engine
//! with their true arrival time. The engine renders one period per step of the virtual
//! clock. Nothing sleeps: ten simulated minutes take seconds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Command, SingerSettings, SAMPLE_RATE_HZ};
use super::{Engine, EngineConfig, MixId, Output, ReceiverStats, RtpAudio, SingerId};

/// A phone's test signal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signal {
    /// A sine of `hz` at linear amplitude `amplitude`.
    Tone {
        /// Frequency, Hz.
        hz: f32,
        /// Peak amplitude, linear.
        amplitude: f32,
    },
    /// Low-passed white noise (deterministic for a seed), for latency by correlation.
    Noise {
        /// Seed of the generator.
        seed: u32,
        /// Peak-ish amplitude, linear.
        amplitude: f32,
    },
}

impl Signal {
    /// A 0.5-amplitude sine.
    pub fn tone(hz: f32) -> Signal {
        Signal::Tone { hz, amplitude: 0.5 }
    }
}

/// Renders `n` samples of `signal` starting at sample `from` (noise restarts at 0).
pub fn synthesize(signal: Signal, from: u64, n: usize) -> Vec<f32> {
    let mut state = NoiseState::new(signal);
    if let Signal::Noise { .. } = signal {
        for _ in 0..from {
            state.next();
        }
    }
    (0..n as u64)
        .map(|k| sample_at(signal, from + k, &mut state))
        .collect()
}

struct NoiseState {
    lcg: u32,
    lp: f32,
}

impl NoiseState {
    fn new(signal: Signal) -> NoiseState {
        let seed = if let Signal::Noise { seed, .. } = signal {
            seed
        } else {
            1
        };
        NoiseState {
            lcg: seed.wrapping_mul(2_654_435_761).wrapping_add(1),
            lp: 0.0,
        }
    }

    fn next(&mut self) -> f32 {
        self.lcg = self.lcg.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let white = (self.lcg >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
        // One-pole low-pass at ~3 kHz: speech-like spectrum, which Opus codes faithfully.
        self.lp += 0.35 * (white - self.lp);
        self.lp
    }
}

fn sample_at(signal: Signal, n: u64, state: &mut NoiseState) -> f32 {
    match signal {
        Signal::Tone { hz, amplitude } => {
            let phase = (n as f64 * hz as f64 / SAMPLE_RATE_HZ as f64).fract();
            amplitude * (2.0 * std::f64::consts::PI * phase).sin() as f32
        }
        Signal::Noise { amplitude, .. } => amplitude * 2.0 * state.next(),
    }
}

/// A phone's Opus encoder, set up like a phone browser's uplink: 48 kHz mono, VoIP,
/// in-band FEC on expecting some loss, 48 kbit/s, and complexity 5, libwebrtc's default
/// on Android and iOS (desktop Chrome uses 9).
pub fn phone_encoder() -> opus::Encoder {
    let mut encoder = opus::Encoder::new(
        SAMPLE_RATE_HZ,
        opus::Channels::Mono,
        opus::Application::Voip,
    )
    .expect("libopus creates a mono encoder");
    encoder.set_inband_fec(true).expect("fec");
    encoder.set_packet_loss_perc(10).expect("loss");
    encoder.set_complexity(5).expect("complexity");
    encoder
        .set_bitrate(opus::Bitrate::Bits(48_000))
        .expect("bitrate");
    encoder
}

/// `frames` consecutive 20 ms packets of `signal` from one [`phone_encoder`], the first
/// starting at sample 0.
pub fn phone_packets(signal: Signal, frames: u64) -> Vec<Vec<u8>> {
    let mut encoder = phone_encoder();
    let mut noise = NoiseState::new(signal);
    let mut pcm = vec![0.0f32; PHONE_FRAME_SAMPLES];
    (0..frames)
        .map(|k| {
            let from = k * PHONE_FRAME_SAMPLES as u64;
            encode_frame(&mut encoder, signal, &mut noise, from, &mut pcm)
        })
        .collect()
}

/// Encodes the phone frame of `signal` that starts at sample `from` (`pcm` is scratch,
/// one frame long).
fn encode_frame(
    encoder: &mut opus::Encoder,
    signal: Signal,
    noise: &mut NoiseState,
    from: u64,
    pcm: &mut [f32],
) -> Vec<u8> {
    for (i, v) in pcm.iter_mut().enumerate() {
        *v = sample_at(signal, from + i as u64, noise);
    }
    let mut buf = [0u8; 1500];
    let n = encoder.encode_float(pcm, &mut buf).expect("encode");
    buf[..n].to_vec()
}

/// Delay added by the network on top of the base delay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Jitter {
    /// None.
    None,
    /// Independent uniform delay in `0..=max` per packet (reorders when above a frame).
    Uniform(Duration),
    /// The network stalls for `stall` every `every`; what was sent meanwhile floods in
    /// when it ends.
    Stalls {
        /// Period of the stalls.
        every: Duration,
        /// Length of each stall.
        stall: Duration,
    },
}

/// Packets the network drops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// None.
    None,
    /// Each packet independently with probability `p`.
    Random(f64),
    /// `len` consecutive packets out of every `every`.
    Bursts {
        /// Period, packets.
        every: u64,
        /// Burst length, packets.
        len: u64,
    },
}

/// How a phone's packets travel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Network {
    /// Fixed one-way delay.
    pub base: Duration,
    /// Added delay.
    pub jitter: Jitter,
    /// Dropped packets.
    pub loss: Loss,
    /// Every (depth+1)-th packet arrives after the `depth` packets sent after it.
    pub reorder_depth: u64,
    /// Probability that a packet arrives twice.
    pub duplicate: f64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            base: Duration::from_millis(2),
            jitter: Jitter::None,
            loss: Loss::None,
            reorder_depth: 0,
            duplicate: 0.0,
        }
    }
}

/// Index of a phone in a [`Harness`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhoneId(pub usize);

struct Phone {
    singer: SingerId,
    signal: Signal,
    noise: NoiseState,
    encoder: opus::Encoder,
    network: Network,
    drift_ppm: f64,
    seq: u16,
    ts: u32,
    ssrc: u32,
    /// Frames sent on the current stream.
    frames: u64,
    /// Sample index of the signal (continues across restarts).
    signal_pos: u64,
    /// When the current stream started, virtual time.
    start: Duration,
    pcm: Vec<f32>,
    sending: bool,
    /// Until then the phone's frames go nowhere (see [`Harness::go_silent`]).
    silent_until: Duration,
    /// Whether silent frames still use up sequence numbers (lost on the way) or not
    /// (never sent).
    silent_lost: bool,
    sent: u64,
    with_fec: u64,
    /// Per frame sent: (dropped by the network, carries FEC).
    history: Vec<(bool, bool)>,
    /// See [`Harness::loop_packets`]: the signal position where the kept second starts,
    /// and its packets as encoded so far; replayed once the second is complete.
    loop_second: Option<(u64, Vec<Vec<u8>>)>,
}

/// Phone frames in one second.
const FRAMES_PER_SECOND: usize = SAMPLE_RATE_HZ as usize / PHONE_FRAME_SAMPLES;

impl Phone {
    /// The payload of the next frame: encoded live, or replayed (and the signal
    /// position advanced either way).
    fn next_payload(&mut self) -> Vec<u8> {
        let pos = self.signal_pos;
        self.signal_pos += PHONE_FRAME_SAMPLES as u64;
        match &mut self.loop_second {
            Some((from, packets)) if packets.len() == FRAMES_PER_SECOND => {
                let k = (pos - *from) as usize / PHONE_FRAME_SAMPLES;
                packets[k % FRAMES_PER_SECOND].clone()
            }
            kept => {
                let payload = encode_frame(
                    &mut self.encoder,
                    self.signal,
                    &mut self.noise,
                    pos,
                    &mut self.pcm,
                );
                if let Some((_, packets)) = kept {
                    packets.push(payload.clone());
                }
                payload
            }
        }
    }
}

struct InFlight {
    arrival: Duration,
    order: u64,
    phone: usize,
    ssrc: u32,
    seq: u16,
    ts: u32,
    payload: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.arrival, self.order) == (other.arrival, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.arrival, self.order).cmp(&(other.arrival, other.order))
    }
}

/// Phone frame duration, samples (Chrome's default 20 ms).
pub const PHONE_FRAME_SAMPLES: usize = 960;

/// Running extremes of one phone's receive state since the last [`Harness::mark`].
#[derive(Clone, Copy, Debug)]
pub struct Track {
    /// Smallest delay seen.
    pub min_delay: Duration,
    /// Largest delay seen.
    pub max_delay: Duration,
    /// Stats at the mark.
    pub at_mark: ReceiverStats,
}

/// The virtual world: an engine, phones, a network and a clock.
pub struct Harness {
    /// The engine under test.
    pub engine: Engine,
    now: Duration,
    phones: Vec<Phone>,
    tracks: Vec<Track>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    rng: ChaCha8Rng,
    venue_buf: Vec<f32>,
    /// Venue output, interleaved stereo, while recording.
    pub venue: Vec<f32>,
    /// Personal mixes, interleaved stereo, while recording (one per phone).
    pub personal: Vec<Vec<f32>>,
    recording: bool,
    /// Largest sample-to-sample step in the venue output since the mark (left channel).
    pub venue_max_step: f32,
    last_venue_left: f32,
    /// Encoded frames seen per mix since the mark: (venue, personal).
    pub frames_seen: (u64, u64),
    decode_returns: bool,
    frame_lookahead: usize,
}

impl Harness {
    /// A world around an engine built from `config`, seeded with 1.
    pub fn new(config: EngineConfig) -> Harness {
        let period = config.period_samples;
        let mut probe = opus::Encoder::new(
            SAMPLE_RATE_HZ,
            opus::Channels::Mono,
            opus::Application::Voip,
        )
        .expect("encoder");
        let frame_lookahead = probe.get_lookahead().expect("lookahead") as usize;
        Harness {
            engine: Engine::new(config),
            now: Duration::ZERO,
            phones: Vec::new(),
            tracks: Vec::new(),
            in_flight: BinaryHeap::new(),
            order: 0,
            rng: ChaCha8Rng::seed_from_u64(1),
            venue_buf: vec![0.0; 2 * period],
            venue: Vec::new(),
            personal: Vec::new(),
            recording: false,
            venue_max_step: 0.0,
            last_venue_left: 0.0,
            frames_seen: (0, 0),
            decode_returns: false,
            frame_lookahead,
        }
    }

    /// Reseeds the network's randomness.
    pub fn seed(mut self, seed: u64) -> Harness {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self
    }

    /// The phone encoder's look-ahead, samples: the codec's share of the latency.
    pub fn codec_lookahead(&self) -> usize {
        self.frame_lookahead
    }

    /// Adds a singer whose phone plays `signal` over `network`, seated with `settings`.
    pub fn add_phone(
        &mut self,
        signal: Signal,
        network: Network,
        settings: SingerSettings,
    ) -> PhoneId {
        let singer = SingerId(self.phones.len() as u32 + 1);
        self.engine
            .handle_command(Command::AddSinger { singer, settings });
        let encoder = phone_encoder();
        let ssrc = self.rng.random();
        let seq = self.rng.random();
        let ts = self.rng.random();
        self.phones.push(Phone {
            singer,
            signal,
            noise: NoiseState::new(signal),
            encoder,
            network,
            drift_ppm: 0.0,
            seq,
            ts,
            ssrc,
            frames: 0,
            signal_pos: 0,
            start: self.now,
            pcm: vec![0.0; PHONE_FRAME_SAMPLES],
            sending: true,
            silent_until: Duration::ZERO,
            silent_lost: true,
            sent: 0,
            with_fec: 0,
            history: Vec::new(),
            loop_second: None,
        });
        self.personal.push(Vec::new());
        self.tracks.push(Track {
            min_delay: Duration::MAX,
            max_delay: Duration::ZERO,
            at_mark: ReceiverStats::default(),
        });
        PhoneId(self.phones.len() - 1)
    }

    /// Sets a phone's clock error, ppm (positive: its clock runs fast).
    pub fn set_drift(&mut self, phone: PhoneId, ppm: f64) {
        self.phones[phone.0].drift_ppm = ppm;
    }

    /// Changes a phone's network from now on.
    pub fn set_network(&mut self, phone: PhoneId, network: Network) {
        self.phones[phone.0].network = network;
    }

    /// Starts or stops a phone's stream.
    pub fn set_sending(&mut self, phone: PhoneId, sending: bool) {
        let p = &mut self.phones[phone.0];
        if sending && !p.sending {
            p.start = self.now;
            p.frames = 0;
        }
        p.sending = sending;
    }

    /// The phone's frames for the next `duration` go nowhere, on the same stream and
    /// timeline: timestamps go on as time passes, so the frames after it are
    /// `duration` later in media time. With `lost` they are lost on the way (their
    /// sequence numbers are skipped, as when the Wi-Fi drops); without, the phone sends
    /// nothing (the sequence continues where it stopped, as with a paused sender).
    pub fn go_silent(&mut self, phone: PhoneId, duration: Duration, lost: bool) {
        let p = &mut self.phones[phone.0];
        p.silent_until = self.now + duration;
        p.silent_lost = lost;
    }

    /// Restarts a phone's stream as a reconnect would: new SSRC, new sequence and
    /// timestamp bases, fresh encoder state.
    pub fn restart_stream(&mut self, phone: PhoneId) {
        let (ssrc, seq, ts) = (self.rng.random(), self.rng.random(), self.rng.random());
        let p = &mut self.phones[phone.0];
        p.ssrc = ssrc;
        p.seq = seq;
        p.ts = ts;
        p.frames = 0;
        p.start = self.now;
        p.loop_second = None;
        let _ = p.encoder.reset_state();
    }

    /// From now on the phone encodes one more second live, then replays that second's
    /// packets over and over instead of encoding. The stream is the same as a live one
    /// for a signal that repeats every second once the encoder has settled (give it a
    /// second or two first); long soaks use it because the phone's encoder, not the
    /// engine, is most of their cost, which matters under qemu. A stream restart goes
    /// back to live encoding.
    ///
    /// Panics unless the phone plays a tone of whole hertz (a one-second period).
    pub fn loop_packets(&mut self, phone: PhoneId) {
        let p = &mut self.phones[phone.0];
        assert!(
            matches!(p.signal, Signal::Tone { hz, .. } if hz.fract() == 0.0),
            "only a tone of whole hertz repeats every second: {:?}",
            p.signal
        );
        p.loop_second = Some((p.signal_pos, Vec::with_capacity(FRAMES_PER_SECOND)));
    }

    /// The singer behind a phone.
    pub fn singer(&self, phone: PhoneId) -> SingerId {
        self.phones[phone.0].singer
    }

    /// Current virtual time (the next period plays at this time).
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Starts or stops recording the venue and personal mixes.
    pub fn record(&mut self, on: bool) {
        self.recording = on;
    }

    /// Packets a phone has sent, and how many of them carried FEC.
    pub fn sent(&self, phone: PhoneId) -> (u64, u64) {
        (self.phones[phone.0].sent, self.phones[phone.0].with_fec)
    }

    /// Losses from frame `from` on whose next packet arrived carrying FEC: the most
    /// in-band FEC can rebuild.
    pub fn recoverable_losses(&self, phone: PhoneId, from: usize) -> u64 {
        let h = &self.phones[phone.0].history;
        (from..h.len().saturating_sub(1))
            .filter(|&k| h[k].0 && !h[k + 1].0 && h[k + 1].1)
            .count() as u64
    }

    /// Frames a phone has sent on its current stream.
    pub fn frames_sent(&self, phone: PhoneId) -> usize {
        self.phones[phone.0].history.len()
    }

    /// The receive stats of a phone's singer now.
    pub fn stats(&self, phone: PhoneId) -> ReceiverStats {
        self.engine
            .singer_stats(self.phones[phone.0].singer)
            .expect("phone is seated")
    }

    /// Extremes since the last mark.
    pub fn track(&self, phone: PhoneId) -> Track {
        self.tracks[phone.0]
    }

    /// Starts a new measurement interval: extremes, steps and frame counts reset.
    pub fn mark(&mut self) {
        for (i, track) in self.tracks.iter_mut().enumerate() {
            let singer = self.phones[i].singer;
            track.at_mark = self.engine.singer_stats(singer).unwrap_or_default();
            track.min_delay = Duration::MAX;
            track.max_delay = Duration::ZERO;
        }
        self.venue_max_step = 0.0;
        self.frames_seen = (0, 0);
    }

    /// Runs the world for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.step();
        }
    }

    /// The output device stops taking audio for `duration` (a stalled driver, a USB
    /// hiccup): phones keep sending and packets keep arriving, but nothing renders.
    pub fn stall_output(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.exchange();
            self.now += self.period();
        }
    }

    /// Also drains return frames and counts them per mix (venue, personal).
    pub fn count_returns(&mut self, on: bool) {
        self.decode_returns = on;
    }

    fn step(&mut self) {
        self.exchange();
        self.engine.render_period(self.now, &mut self.venue_buf);
        while let Some(out) = self.engine.poll_output() {
            if let Output::Frame { mix, .. } = out {
                if self.decode_returns {
                    match mix {
                        MixId::Venue => self.frames_seen.0 += 1,
                        MixId::Personal(_) => self.frames_seen.1 += 1,
                    }
                }
            }
        }
        for frame in self.venue_buf.chunks_exact(2) {
            let step = (frame[0] - self.last_venue_left).abs();
            self.venue_max_step = self.venue_max_step.max(step);
            self.last_venue_left = frame[0];
        }
        if self.recording {
            self.venue.extend_from_slice(&self.venue_buf);
            for (idx, phone) in self.phones.iter().enumerate() {
                if let Some(pcm) = self.engine.personal_mix(phone.singer) {
                    self.personal[idx].extend_from_slice(pcm);
                }
            }
        }
        for (idx, phone) in self.phones.iter().enumerate() {
            if let Some(stats) = self.engine.singer_stats(phone.singer) {
                let track = &mut self.tracks[idx];
                track.min_delay = track.min_delay.min(stats.delay);
                track.max_delay = track.max_delay.max(stats.delay);
            }
        }
        self.now += self.period();
    }

    /// One engine period of virtual time.
    fn period(&self) -> Duration {
        let period = self.engine.config().period_samples as u64;
        Duration::from_nanos(period * 1_000_000_000 / SAMPLE_RATE_HZ as u64)
    }

    /// Phones send what is due and the engine gets every packet that has arrived by now.
    fn exchange(&mut self) {
        for idx in 0..self.phones.len() {
            self.send_due(idx);
        }
        while self
            .in_flight
            .peek()
            .is_some_and(|Reverse(p)| p.arrival <= self.now)
        {
            let Reverse(packet) = self.in_flight.pop().expect("peeked");
            let singer = self.phones[packet.phone].singer;
            let rtp = RtpAudio {
                ssrc: packet.ssrc,
                sequence: packet.seq,
                timestamp: packet.ts,
                payload: &packet.payload,
            };
            self.engine.handle_packet(singer, rtp, packet.arrival);
        }
    }

    fn send_due(&mut self, idx: usize) {
        loop {
            let phone = &self.phones[idx];
            if !phone.sending {
                return;
            }
            // Frame k is complete when the phone's clock reaches (k+1) frames.
            let phone_secs =
                (phone.frames + 1) as f64 * PHONE_FRAME_SAMPLES as f64 / SAMPLE_RATE_HZ as f64;
            let send =
                phone.start + Duration::from_secs_f64(phone_secs / (1.0 + phone.drift_ppm * 1e-6));
            if send > self.now {
                return;
            }
            self.send_one(idx, send);
        }
    }

    fn send_one(&mut self, idx: usize, send: Duration) {
        let phone = &mut self.phones[idx];
        let payload = phone.next_payload();
        let (seq, ts, ssrc, k) = (phone.seq, phone.ts, phone.ssrc, phone.frames);
        phone.ts = phone.ts.wrapping_add(PHONE_FRAME_SAMPLES as u32);
        phone.frames += 1;
        if send < phone.silent_until {
            if phone.silent_lost {
                phone.seq = phone.seq.wrapping_add(1);
            }
            return;
        }
        phone.seq = phone.seq.wrapping_add(1);
        phone.sent += 1;
        let has_fec = super::codec::inspect(&payload).is_some_and(|i| i.has_fec);
        if has_fec {
            phone.with_fec += 1;
        }
        let network = phone.network;
        let lost = match network.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.random_bool(p),
            Loss::Bursts { every, len } => k >= every && k % every < len,
        };
        self.phones[idx].history.push((lost, has_fec));
        if lost {
            return;
        }
        let mut arrival = send + network.base;
        match network.jitter {
            Jitter::None => {}
            Jitter::Uniform(max) => {
                arrival += Duration::from_nanos(self.rng.random_range(0..=max.as_nanos() as u64));
            }
            Jitter::Stalls { every, stall } => {
                let phase = Duration::from_nanos((send.as_nanos() % every.as_nanos()) as u64);
                if phase < stall {
                    arrival += stall - phase;
                }
            }
        }
        if network.reorder_depth > 0 && k % (network.reorder_depth + 1) == 0 {
            let frame = Duration::from_millis(20);
            arrival += frame * network.reorder_depth as u32 + Duration::from_millis(1);
        }
        let copies = if self.rng.random_bool(network.duplicate) {
            2
        } else {
            1
        };
        for c in 0..copies {
            self.order += 1;
            self.in_flight.push(Reverse(InFlight {
                arrival: arrival + Duration::from_millis(c),
                order: self.order,
                phone: idx,
                ssrc,
                seq,
                ts,
                payload: payload.clone(),
            }));
        }
    }
}

/// The left channel of interleaved stereo.
pub fn left(stereo: &[f32]) -> Vec<f32> {
    stereo.iter().step_by(2).copied().collect()
}

/// Amplitude of the `hz` component of `x` (Goertzel over the whole slice).
pub fn tone_level(x: &[f32], hz: f32) -> f32 {
    let w = 2.0 * std::f64::consts::PI * hz as f64 / SAMPLE_RATE_HZ as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = v as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    (2.0 * power.max(0.0).sqrt() / x.len().max(1) as f64) as f32
}

/// Largest sample-to-sample step in `x`.
pub fn max_step(x: &[f32]) -> f32 {
    x.windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0, f32::max)
}

/// The lag (in samples, `0..max_lag`) at which `recorded` best matches `reference`,
/// with the normalised correlation there.
pub fn best_lag(reference: &[f32], recorded: &[f32], max_lag: usize) -> (usize, f32) {
    let mut best = (0, f32::MIN);
    let n = reference.len();
    let ref_energy: f32 = reference.iter().map(|v| v * v).sum();
    for lag in 0..max_lag {
        let Some(seg) = recorded.get(lag..lag + n) else {
            break;
        };
        let dot: f32 = reference.iter().zip(seg).map(|(a, b)| a * b).sum();
        let energy: f32 = seg.iter().map(|v| v * v).sum();
        let corr = dot / (ref_energy * energy).sqrt().max(1e-12);
        if corr > best.1 {
            best = (lag, corr);
        }
    }
    best
}
