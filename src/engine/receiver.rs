//! The receive pipeline of one singer: RTP in, 48 kHz mono PCM out on demand.
//!
//! Owns the [`PacketStore`], the arrival statistics and target delay, the Opus decoder,
//! concealment (in-band FEC, PLC, fades) and the time-scale control that keeps the
//! buffer at its target. Knows nothing of sockets or the wall clock: `at` and `now` come
//! from the caller, on one clock.
//!
//! The delay it controls is `D = now - (base + vts / 48 kHz)`: how long after the fastest
//! possible arrival of a sample it is played. `base` is the fastest relative arrival in
//! the window, `vts` the media time of the next sample to play (concealed samples that
//! stand for no media push it back, so an underrun grows `D`; a compress splice pulls it
//! forward). The target is the window's jitter plus one period plus a margin.
//!
//! Invariants: never panics on any packet; memory is fixed after [`Receiver::new`];
//! a render does bounded work (at most a few decodes and one splice).

use std::time::Duration;

use super::codec::{self, Decoder, MAX_PACKET_SAMPLES, OPUS_GRANULE_SAMPLES};
use super::jitter::{ArrivalStats, Insert, JitterConfig, PacketStore, MAX_PAYLOAD_BYTES};
use super::timescale::{PcmFifo, MAX_SPLICE_SAMPLES};
use super::SAMPLE_RATE_HZ;

/// A relative delay this far from the window means the sender's timeline jumped.
const TIMELINE_JUMP: Duration = Duration::from_secs(2);

/// Continuous concealment after which the PLC is faded out (Opus PLC turns buzzy after
/// a few frames), samples (40 ms).
const FADE_OUT_AFTER_SAMPLES: usize = 1920;

/// Length of the fade-out of a long concealment, samples (20 ms).
const FADE_OUT_SAMPLES: usize = 960;

/// Length of the fade-in when real audio returns after a faded concealment or a new
/// stream, samples (5 ms: short enough not to lose a syllable, long enough not to click).
const FADE_IN_SAMPLES: usize = 240;

/// A delay this far above the target is a backlog, not jitter (the output stopped
/// taking audio while packets kept coming): it is dropped rather than played late.
/// Beyond any target the controller may choose (`max_delay`) plus this margin.
const BACKLOG_MARGIN_US: i64 = 50_000;

/// Decoded audio kept and faded out when a backlog is dropped, samples (5 ms).
const BACKLOG_FADE_SAMPLES: usize = 240;

/// Continuous concealment after which the source is idle: silence instead of PLC, and
/// the next packet starts a fresh timeline (500 ms).
const IDLE_AFTER_SAMPLES: usize = 24_000;

/// Concealment is generated in whole multiples of this, samples (10 ms).
const PLC_UNIT_SAMPLES: usize = 480;

/// Dead band of the delay controller below the target, microseconds.
const BAND_BELOW_US: i64 = 1_000;

/// Dead band of the delay controller above the target, microseconds. Wider than below
/// because a splice removes whole pitch periods, and overshooting down costs concealment.
const BAND_ABOVE_US: i64 = 2_000;

/// Error, in multiples of the band, beyond which a splice may accept a weaker seam.
const URGENT_FACTOR: i64 = 4;

/// Smoothing of the loss-rate estimate per packet (about the last 50 packets).
const LOSS_SMOOTHING: f32 = 0.02;

/// Loss rate above which the target grows by one packet, so the packet after a lost
/// one is already buffered when the loss is due and its in-band FEC can rebuild it
/// (the FEC copy rides in the *next* packet; without that packet in hand only PLC is
/// possible). On a clean LAN this never triggers and costs no latency.
const FEC_LOSS_THRESHOLD: f32 = 0.01;

/// Settings of one receive pipeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReceiverConfig {
    /// Target-delay settings.
    pub jitter: JitterConfig,
    /// The mixer's period, samples; the target adds one period.
    pub period_samples: usize,
}

/// Counters and gauges of one receive pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReceiverStats {
    /// Packets handed in, including bad ones.
    pub packets: u64,
    /// Zero-length payloads (dropped).
    pub empty: u64,
    /// Payloads above the size limit (dropped).
    pub oversized: u64,
    /// Payloads that are not Opus or that libopus rejected (dropped / concealed).
    pub invalid: u64,
    /// Packets that arrived after their turn (dropped).
    pub late: u64,
    /// Packets that arrived twice (dropped).
    pub duplicates: u64,
    /// Packets that never arrived in time (concealed).
    pub lost: u64,
    /// Lost packets rebuilt from the next packet's in-band FEC.
    pub fec_recovered: u64,
    /// Samples produced by PLC (concealment without data).
    pub concealed_samples: u64,
    /// Times the buffer ran dry while a stream was live.
    pub underruns: u64,
    /// New SSRCs after the first.
    pub restarts: u64,
    /// Timeline jumps (sequence or timestamp) that forced a fresh start.
    pub resyncs: u64,
    /// Times a backlog (delay far above the target, e.g. after the output stalled)
    /// was dropped to bring the voice back in time.
    pub caught_up: u64,
    /// Packets dropped unplayed by those catch-ups.
    pub skipped: u64,
    /// Samples removed by compress splices.
    pub compressed_samples: u64,
    /// Samples added by expand splices.
    pub expanded_samples: u64,
    /// Current delay `D` (see module docs).
    pub delay: Duration,
    /// Duration of the last packet decoded: the phone's packetisation (zero before the
    /// first).
    pub packet: Duration,
    /// Current target delay.
    pub target: Duration,
    /// Jitter at the configured percentile over the window.
    pub jitter: Duration,
    /// Estimated clock drift of the phone against ours, ppm (positive: phone fast).
    pub drift_ppm: f64,
}

impl ReceiverStats {
    /// Concealed audio in milliseconds.
    pub fn concealed_ms(&self) -> f64 {
        self.concealed_samples as f64 * 1000.0 / SAMPLE_RATE_HZ as f64
    }
}

/// The receive pipeline of one singer.
pub struct Receiver {
    config: ReceiverConfig,
    store: PacketStore,
    arrivals: ArrivalStats,
    decoder: Decoder,
    fifo: PcmFifo,
    scratch: Vec<f32>,
    ssrc: Option<u32>,
    /// The next packet starts a fresh playout timeline.
    anchor_pending: bool,
    /// Whether any audio was produced since the last anchor (else render silence).
    live: bool,
    /// The stream went idle (the phone stopped sending); the next anchor waits for its
    /// turn at the target delay.
    resuming: bool,
    /// Media time of the next sample to decode.
    tail_ts: i64,
    /// Concealed samples not yet matched to missing media (underrun growth).
    debt: usize,
    /// Continuous concealed samples.
    conceal_run: usize,
    /// Current fade gain.
    envelope: f32,
    target_us: i64,
    target_at: Option<Duration>,
    /// Smoothed fraction of packets lost.
    loss_rate: f32,
    /// Duration of the last packet decoded, samples.
    packet_samples: usize,
    stats: ReceiverStats,
}

impl Receiver {
    /// A pipeline with no stream yet; allocates everything it will ever use.
    pub fn new(config: ReceiverConfig) -> Receiver {
        let max_delay_samples = duration_to_samples(config.jitter.max_delay);
        let capacity = max_delay_samples
            + 3 * MAX_PACKET_SAMPLES
            + MAX_SPLICE_SAMPLES
            + 2 * config.period_samples.max(OPUS_GRANULE_SAMPLES);
        let mut receiver = Receiver {
            config,
            store: PacketStore::new(),
            arrivals: ArrivalStats::new(),
            decoder: Decoder::new(),
            fifo: PcmFifo::new(capacity),
            scratch: vec![0.0; MAX_PACKET_SAMPLES],
            ssrc: None,
            anchor_pending: true,
            live: false,
            resuming: false,
            tail_ts: 0,
            debt: 0,
            conceal_run: 0,
            envelope: 0.0,
            target_us: 0,
            target_at: None,
            loss_rate: 0.0,
            packet_samples: 0,
            stats: ReceiverStats::default(),
        };
        receiver.target_us = receiver.floor_target_us();
        receiver
    }

    /// Returns the pipeline to its state after `new`, keeping its allocations (a seat
    /// handed to a new singer).
    pub fn reset(&mut self) {
        self.store.clear();
        self.arrivals.clear();
        self.decoder.reset();
        self.fifo.clear();
        self.ssrc = None;
        self.anchor_pending = true;
        self.live = false;
        self.resuming = false;
        self.tail_ts = 0;
        self.debt = 0;
        self.conceal_run = 0;
        self.envelope = 0.0;
        self.target_at = None;
        self.target_us = self.floor_target_us();
        self.loss_rate = 0.0;
        self.packet_samples = 0;
        self.stats = ReceiverStats::default();
    }

    /// Packets held and decoded samples waiting: bounded by construction.
    pub fn buffered(&self) -> (usize, usize) {
        (self.store.len(), self.fifo.len())
    }

    /// The current delay `D` (see the module docs): how long after its fastest
    /// arrival a sample plays.
    pub fn delay(&self) -> Duration {
        self.stats.delay
    }

    /// Counters and gauges.
    pub fn stats(&self) -> ReceiverStats {
        let mut stats = self.stats;
        stats.target = Duration::from_micros(self.target_us.max(0) as u64);
        stats.packet = crate::engine::duration_of(self.packet_samples as u64);
        stats.jitter = self.arrivals.jitter();
        stats.drift_ppm = self.arrivals.drift_ppm();
        stats
    }

    /// Takes one RTP packet that arrived at `at`. Never fails: bad packets are counted
    /// and dropped.
    pub fn handle_packet(&mut self, ssrc: u32, seq: u16, ts: u32, payload: &[u8], at: Duration) {
        self.stats.packets += 1;
        if payload.is_empty() {
            self.stats.empty += 1;
            return;
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            self.stats.oversized += 1;
            return;
        }
        let Some(info) = codec::inspect(payload) else {
            self.stats.invalid += 1;
            return;
        };
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.stats.restarts += 1;
            }
            self.ssrc = Some(ssrc);
            self.start_new_timeline(true);
        }
        let (_, ts_ext) = self.store.extend(seq, ts);
        let mut rel_us = ArrivalStats::relative_us(at, ts_ext);
        if self.arrivals.is_jump(rel_us, TIMELINE_JUMP) {
            self.stats.resyncs += 1;
            self.start_new_timeline(false);
            rel_us = ArrivalStats::relative_us(at, self.store.extend(seq, ts).1);
        }
        match self
            .store
            .insert(seq, ts, info.samples, info.has_fec, payload)
        {
            Insert::Stored => {}
            Insert::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            Insert::Late => self.stats.late += 1,
            Insert::Jump => {
                self.stats.resyncs += 1;
                self.start_new_timeline(false);
                let inserted = self
                    .store
                    .insert(seq, ts, info.samples, info.has_fec, payload);
                debug_assert_eq!(inserted, Insert::Stored);
                rel_us = ArrivalStats::relative_us(at, self.store.extend(seq, ts).1);
            }
        }
        // Late packets count too: they are exactly the jitter the target must cover.
        self.arrivals
            .record(at, rel_us, self.config.jitter.percentile);
        self.update_target(at);
    }

    /// Renders the next `out.len()` samples, the first of which plays at `now`.
    pub fn render(&mut self, now: Duration, out: &mut [f32]) {
        // Bounded: each step adds at least one granule or re-anchors once.
        let mut guard = 0;
        while self.fifo.len() < out.len() && guard < 64 {
            self.produce(now, out.len() - self.fifo.len());
            guard += 1;
        }
        let n = self.fifo.pop_into(out);
        out[n..].fill(0.0);
    }

    /// Drops the packet timeline (and the decoder's memory on a new stream); whatever is
    /// already decoded still plays, faded out at its end so the seam does not click.
    fn start_new_timeline(&mut self, new_stream: bool) {
        self.store.clear();
        self.arrivals.clear();
        self.target_at = None;
        if new_stream {
            self.decoder.reset();
        }
        self.anchor_pending = true;
        self.debt = 0;
        let tail = self.fifo.as_mut_slice();
        let n = tail.len().min(OPUS_GRANULE_SAMPLES);
        let from = tail.len() - n;
        fade_out(&mut tail[from..]);
        self.envelope = 0.0;
    }

    fn floor_target_us(&self) -> i64 {
        let period_us = self.config.period_samples as i64 * 1_000_000 / SAMPLE_RATE_HZ as i64;
        let jitter = &self.config.jitter;
        (period_us + jitter.margin.as_micros() as i64).clamp(
            jitter.min_delay.as_micros() as i64,
            jitter.max_delay.as_micros() as i64,
        )
    }

    fn update_target(&mut self, at: Duration) {
        let jitter = &self.config.jitter;
        let fec_room_us = if self.loss_rate > FEC_LOSS_THRESHOLD {
            self.packet_samples as i64 * 1_000_000 / SAMPLE_RATE_HZ as i64
        } else {
            0
        };
        let measured = self.arrivals.jitter().as_micros() as i64 + fec_room_us;
        let raw = (self.floor_target_us() + measured).clamp(
            jitter.min_delay.as_micros() as i64,
            jitter.max_delay.as_micros() as i64,
        );
        let elapsed = self
            .target_at
            .map_or(Duration::ZERO, |t| at.saturating_sub(t));
        self.target_at = Some(at);
        self.target_us = if raw >= self.target_us {
            raw
        } else {
            let fall = (elapsed.as_secs_f64() * jitter.shrink_per_s * 1e6) as i64;
            raw.max(self.target_us - fall)
        };
    }

    /// Adds at least one granule of audio to the fifo (or re-anchors).
    fn produce(&mut self, now: Duration, need: usize) {
        let Some(packet) = self.store.earliest() else {
            self.underrun(need);
            return;
        };
        let (seq, ts, samples, has_fec) = (packet.seq, packet.ts, packet.samples, packet.has_fec);
        if self.is_backlog(now, ts) {
            self.drop_backlog(now);
            return;
        }
        let next_seq = self.store.next_seq().unwrap_or(seq);
        if self.anchor_pending && self.resuming && self.is_early(now, ts) {
            // A stream that comes back after going idle (same SSRC, its timeline
            // running on) waits for its turn at the target delay the window still
            // knows, instead of playing its first packet at once and running dry on
            // the next one's jitter.
            self.fifo.extend(round_up_granule(need));
            return;
        }
        if self.anchor_pending {
            self.anchor_pending = false;
            self.resuming = false;
            self.tail_ts = ts;
            self.debt = 0;
        } else if !self.fill_gap(seq - next_seq, ts, samples, has_fec) {
            // The timeline moved on further than any buffer: this packet starts it again,
            // at its turn (the next call anchors on it).
            return;
        }
        self.decode(seq, samples);
        self.store.advance_to(seq + 1);
        self.live = true;
        self.control(now);
    }

    /// Conceals what is missing between the last decoded sample and packet `ts`, using
    /// concealment already played during an underrun first and FEC for the last frame.
    /// False when the gap is more than any buffer holds (the sender was silent for
    /// long, or its clock jumped): then nothing is concealed and the timeline is to be
    /// anchored again on this packet, at its turn.
    fn fill_gap(&mut self, missing_packets: i64, ts: i64, samples: usize, has_fec: bool) -> bool {
        let gap = ts - self.tail_ts;
        let max_gap = duration_to_samples(self.config.jitter.max_delay) as i64;
        if gap < 0 || gap > max_gap {
            // Not losses to conceal (nor to raise the target for): the sender was
            // silent, or its clock jumped.
            self.stats.resyncs += 1;
            self.anchor_pending = true;
            self.resuming = true;
            self.debt = 0;
            return false;
        }
        for _ in 0..missing_packets.clamp(0, 64) {
            self.loss_rate += LOSS_SMOOTHING * (1.0 - self.loss_rate);
        }
        self.stats.lost += missing_packets.max(0) as u64;
        let mut gap = gap as usize;
        let cover = self.debt.min(gap);
        self.debt = 0;
        self.tail_ts += cover as i64;
        gap -= cover;
        let fec_len = if has_fec && missing_packets >= 1 && gap >= samples {
            samples
        } else {
            0
        };
        let mut plc_left = gap - fec_len;
        while plc_left > 0 {
            let chunk = round_up_plc(plc_left).min(MAX_PACKET_SAMPLES);
            self.conceal(chunk);
            plc_left = plc_left.saturating_sub(chunk);
        }
        if fec_len > 0 {
            let Some(packet) = self.store.earliest() else {
                return true;
            };
            let ok = self
                .decoder
                .decode_fec(packet.payload, &mut self.scratch[..fec_len]);
            if ok {
                self.stats.fec_recovered += 1;
                self.push_decoded(fec_len);
            } else {
                self.conceal(fec_len);
            }
        }
        self.tail_ts = ts;
        true
    }

    fn decode(&mut self, seq: i64, samples: usize) {
        let Some(packet) = self.store.get(seq) else {
            return;
        };
        let payload = packet.payload;
        self.loss_rate -= LOSS_SMOOTHING * self.loss_rate;
        self.packet_samples = samples;
        match self.decoder.decode(payload, &mut self.scratch) {
            Some(n) if n > 0 => {
                self.push_decoded(n);
                self.tail_ts += n as i64;
            }
            _ => {
                self.stats.invalid += 1;
                self.conceal(samples.max(OPUS_GRANULE_SAMPLES));
                self.tail_ts += samples as i64;
            }
        }
        self.debt = 0;
    }

    fn underrun(&mut self, need: usize) {
        if !self.live || self.anchor_pending {
            // No stream (yet, or any more): silence.
            self.fifo.extend(round_up_granule(need));
            return;
        }
        if self.conceal_run == 0 {
            self.stats.underruns += 1;
        }
        let chunk = round_up_plc(need).min(MAX_PACKET_SAMPLES);
        self.conceal(chunk);
        self.debt = self.debt.saturating_add(chunk);
        if self.conceal_run >= IDLE_AFTER_SAMPLES {
            // The phone stopped sending: stop extrapolating; the next packet re-anchors.
            self.anchor_pending = true;
            self.live = false;
            self.resuming = true;
            self.debt = 0;
        }
    }

    /// Appends `len` samples of PLC, faded out once the concealment runs long.
    fn conceal(&mut self, len: usize) {
        let len = len.min(MAX_PACKET_SAMPLES);
        let faded = self.envelope <= 0.0 && self.conceal_run >= FADE_OUT_AFTER_SAMPLES;
        if faded || !self.decoder.conceal(&mut self.scratch[..len]) {
            self.scratch[..len].fill(0.0);
        }
        self.stats.concealed_samples += len as u64;
        let step = 1.0 / FADE_OUT_SAMPLES as f32;
        let out = self.fifo.extend(len);
        for (o, &s) in out.iter_mut().zip(&self.scratch[..len]) {
            if self.conceal_run >= FADE_OUT_AFTER_SAMPLES {
                self.envelope = (self.envelope - step).max(0.0);
            }
            self.conceal_run += 1;
            *o = s * self.envelope;
        }
    }

    /// Appends `len` decoded samples from the scratch buffer, fading in if needed.
    fn push_decoded(&mut self, len: usize) {
        self.conceal_run = 0;
        let step = 1.0 / FADE_IN_SAMPLES as f32;
        let out = self.fifo.extend(len);
        for (o, &s) in out.iter_mut().zip(&self.scratch[..len]) {
            if self.envelope < 1.0 {
                self.envelope = (self.envelope + step).min(1.0);
            }
            *o = s * self.envelope;
        }
    }

    /// Measures `D` and splices the fifo towards the target.
    fn control(&mut self, now: Duration) {
        if self.arrivals.is_empty() {
            return;
        }
        let delay_us = self.delay_us(now, self.tail_ts - self.fifo.len() as i64);
        self.stats.delay = Duration::from_micros(delay_us.max(0) as u64);
        let err_us = delay_us - self.target_us;
        if err_us > BAND_ABOVE_US {
            let want = us_to_samples(err_us);
            let urgent = err_us > URGENT_FACTOR * BAND_ABOVE_US;
            if let Some(splice) = self
                .fifo
                .compress(want, us_to_samples(BAND_BELOW_US), urgent)
            {
                self.stats.compressed_samples += splice.samples as u64;
            }
        } else if err_us < -BAND_BELOW_US {
            let want = us_to_samples(-err_us);
            let urgent = -err_us > URGENT_FACTOR * BAND_BELOW_US;
            if let Some(splice) = self.fifo.expand(want, us_to_samples(BAND_ABOVE_US), urgent) {
                self.stats.expanded_samples += splice.samples.unsigned_abs() as u64;
            }
        }
    }

    /// Whether playing on from the fifo and then packet `ts` would put the voice so far
    /// behind that it must be a backlog rather than jitter.
    fn is_backlog(&self, now: Duration, ts: i64) -> bool {
        if self.arrivals.is_empty() {
            return false;
        }
        // The concealment played during an underrun (the debt) stands for media time
        // too: without it, a sender that was silent for a while and resumes on its
        // timeline would look that far behind, and its resumed packets be dropped.
        let next_ts = if self.anchor_pending {
            ts
        } else {
            self.tail_ts + self.debt as i64
        };
        let delay_us = self.delay_us(now, next_ts - self.fifo.len() as i64);
        delay_us > self.config.jitter.max_delay.as_micros() as i64 + BACKLOG_MARGIN_US
    }

    /// Whether a packet at `ts` that would start a timeline now would play before its
    /// turn: its delay below the target (and the dead band).
    fn is_early(&self, now: Duration, ts: i64) -> bool {
        if self.arrivals.is_empty() {
            return false;
        }
        let delay_us = self.delay_us(now, ts - self.fifo.len() as i64);
        delay_us < self.target_us - BAND_BELOW_US
    }

    /// `D` at `now` if the sample playing now has media time `vts` (module docs).
    fn delay_us(&self, now: Duration, vts: i64) -> i64 {
        now.as_micros() as i64 - self.arrivals.base_us() - vts * 1_000_000 / SAMPLE_RATE_HZ as i64
    }

    /// Brings a voice that fell far behind back to its target at once: splices remove
    /// a few milliseconds per period, which after a stall of seconds would leave the
    /// singer out of time with the music for a long while. Keeps a short fade-out of
    /// what is decoded, drops the packets whose turn has passed, and re-anchors on the
    /// first one still due (faded in).
    fn drop_backlog(&mut self, now: Duration) {
        self.stats.caught_up += 1;
        let keep = self.fifo.len().min(BACKLOG_FADE_SAMPLES);
        self.fifo.truncate(keep);
        fade_out(self.fifo.as_mut_slice());
        // The media time that plays at the target delay once the fade is out.
        let due_us = now.as_micros() as i64 - self.arrivals.base_us() - self.target_us;
        let due_ts = due_us * SAMPLE_RATE_HZ as i64 / 1_000_000 + keep as i64;
        while let Some(packet) = self.store.earliest() {
            if packet.ts + packet.samples as i64 > due_ts {
                break;
            }
            let seq = packet.seq;
            self.store.advance_to(seq + 1);
            self.stats.skipped += 1;
        }
        self.anchor_pending = true;
        self.debt = 0;
        self.envelope = 0.0;
    }
}

/// Fades `x` linearly down to silence at its last sample.
fn fade_out(x: &mut [f32]) {
    let n = x.len() as f32;
    for (i, v) in x.iter_mut().enumerate() {
        *v *= 1.0 - (i + 1) as f32 / n;
    }
}

/// Rounds a concealment length up to whole 10 ms: SILK (in Chrome's hybrid uplink) only
/// extrapolates whole 10 ms frames, and shorter PLC calls each restart the pitch
/// extrapolation at a new phase, which clicks at every call.
fn round_up_plc(n: usize) -> usize {
    n.div_ceil(PLC_UNIT_SAMPLES).max(1) * PLC_UNIT_SAMPLES
}

fn round_up_granule(n: usize) -> usize {
    n.div_ceil(OPUS_GRANULE_SAMPLES).max(1) * OPUS_GRANULE_SAMPLES
}

fn us_to_samples(us: i64) -> usize {
    (us.max(0) as u64 * SAMPLE_RATE_HZ as u64 / 1_000_000) as usize
}

fn duration_to_samples(d: Duration) -> usize {
    (d.as_micros() as u64 * SAMPLE_RATE_HZ as u64 / 1_000_000) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_before_the_first_packet() {
        let mut rx = Receiver::new(ReceiverConfig {
            jitter: JitterConfig::default(),
            period_samples: 240,
        });
        let mut out = [1.0f32; 240];
        rx.render(Duration::from_millis(5), &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn garbage_is_counted_not_played() {
        let mut rx = Receiver::new(ReceiverConfig {
            jitter: JitterConfig::default(),
            period_samples: 240,
        });
        rx.handle_packet(1, 1, 0, &[], Duration::ZERO);
        rx.handle_packet(1, 2, 960, &[0u8; 2000], Duration::ZERO);
        rx.handle_packet(1, 3, 1920, &[0x03, 0x00], Duration::ZERO);
        let stats = rx.stats();
        assert_eq!((stats.empty, stats.oversized, stats.invalid), (1, 1, 1));
    }
}
