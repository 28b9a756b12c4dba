//! Adaptive jitter buffer for one source: the packet store and the arrival statistics.
//!
//! Owns reordering, duplicates, late packets, sequence wrap-around and the target delay.
//! Knows nothing of sockets or the clock: arrival times come in as `at`, playout time as
//! `now`. Knows nothing of Opus beyond the duration the caller measured.
//!
//! Invariants: at most [`PACKET_SLOTS`] packets are held; a payload is at most
//! [`MAX_PAYLOAD_BYTES`]; the arrival window holds at most [`WINDOW_PACKETS`] samples.
//! Nothing allocates after [`PacketStore::new`] / [`ArrivalStats::new`].

use std::time::Duration;

use super::SAMPLE_RATE_HZ;

/// Largest RTP payload we keep, in bytes. An Opus packet on a 1500-byte Ethernet MTU
/// cannot be larger; anything bigger is garbage or an attack.
pub const MAX_PAYLOAD_BYTES: usize = 1500;

/// Packets the store can hold. 128 packets of 10 ms are 1.28 s, well above the largest
/// allowed delay; each slot costs [`MAX_PAYLOAD_BYTES`].
pub const PACKET_SLOTS: usize = 128;

/// How far a sequence number may jump (either way) before we call it a new timeline
/// rather than loss or lateness. 1000 packets are 20 s of 20 ms packets.
pub const MAX_SEQUENCE_JUMP: i64 = 1000;

/// Arrivals kept in the sliding window that the target delay is computed from
/// (about 5 s of 20 ms packets).
pub const WINDOW_PACKETS: usize = 256;

/// One stored packet.
struct Slot {
    /// Extended sequence number, or `None` when the slot is free.
    seq: Option<i64>,
    /// Extended RTP timestamp of the first sample.
    ts: i64,
    /// Duration in samples.
    samples: usize,
    has_fec: bool,
    len: usize,
    data: Box<[u8; MAX_PAYLOAD_BYTES]>,
}

/// A packet as the playout side sees it.
#[derive(Clone, Copy, Debug)]
pub struct StoredPacket<'a> {
    /// Extended sequence number.
    pub seq: i64,
    /// Extended RTP timestamp (48 kHz) of the first sample.
    pub ts: i64,
    /// Duration in samples.
    pub samples: usize,
    /// Whether it carries FEC for the packet before it.
    pub has_fec: bool,
    /// The Opus payload.
    pub payload: &'a [u8],
}

/// Where an inserted packet went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Stored for playout.
    Stored,
    /// Already stored: counted and dropped.
    Duplicate,
    /// Its turn has passed: counted and dropped.
    Late,
    /// So far from the current timeline that the caller must resynchronise.
    Jump,
}

/// Fixed-capacity store of packets indexed by extended sequence number.
pub struct PacketStore {
    slots: Vec<Slot>,
    /// Next sequence number playout will ask for (everything below is late).
    next_seq: Option<i64>,
    /// Highest 16-bit sequence number seen, extended, for unwrapping.
    highest: Option<i64>,
    /// Highest extended RTP timestamp seen, for unwrapping the 32-bit field.
    ts_ref: Option<i64>,
    held: usize,
}

/// Extends a 16-bit RTP sequence number to the value nearest `reference`.
pub fn unwrap_seq(seq: u16, reference: i64) -> i64 {
    let delta = (seq as i64 - reference).rem_euclid(1 << 16);
    if delta >= 1 << 15 {
        reference + delta - (1 << 16)
    } else {
        reference + delta
    }
}

/// Extends a 32-bit RTP timestamp to the value nearest `reference`.
pub fn unwrap_ts(ts: u32, reference: i64) -> i64 {
    let delta = (ts as i64 - reference).rem_euclid(1 << 32);
    if delta >= 1 << 31 {
        reference + delta - (1 << 32)
    } else {
        reference + delta
    }
}

impl PacketStore {
    /// An empty store; allocates all slots now.
    pub fn new() -> PacketStore {
        let slots = (0..PACKET_SLOTS)
            .map(|_| Slot {
                seq: None,
                ts: 0,
                samples: 0,
                has_fec: false,
                len: 0,
                data: Box::new([0u8; MAX_PAYLOAD_BYTES]),
            })
            .collect();
        PacketStore {
            slots,
            next_seq: None,
            highest: None,
            ts_ref: None,
            held: 0,
        }
    }

    /// Forgets every packet and the timeline (new stream or resync).
    pub fn clear(&mut self) {
        for slot in &mut self.slots {
            slot.seq = None;
        }
        self.next_seq = None;
        self.highest = None;
        self.ts_ref = None;
        self.held = 0;
    }

    /// Number of packets held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Extends the header fields against the current timeline, without storing.
    /// Returns `(seq, ts)`; the first packet of a timeline defines it.
    pub fn extend(&self, seq: u16, ts: u32) -> (i64, i64) {
        let seq_ext = match self.highest {
            Some(h) => unwrap_seq(seq, h),
            None => seq as i64 + (1 << 16),
        };
        let ts_ext = match self.ts_ref {
            Some(r) => unwrap_ts(ts, r),
            None => ts as i64 + (1 << 32),
        };
        (seq_ext, ts_ext)
    }

    /// Stores a packet already validated by the caller (`payload` non-empty, at most
    /// [`MAX_PAYLOAD_BYTES`], `samples` its duration).
    pub fn insert(
        &mut self,
        seq: u16,
        ts: u32,
        samples: usize,
        has_fec: bool,
        payload: &[u8],
    ) -> Insert {
        let (seq_ext, ts_ext) = self.extend(seq, ts);
        if let Some(next) = self.next_seq {
            if seq_ext < next {
                return if next - seq_ext > MAX_SEQUENCE_JUMP {
                    Insert::Jump
                } else {
                    Insert::Late
                };
            }
            if seq_ext - next >= PACKET_SLOTS as i64 {
                // Too far ahead to hold: either a huge loss or a new timeline.
                return Insert::Jump;
            }
        }
        if let Some(h) = self.highest {
            if (seq_ext - h).abs() > MAX_SEQUENCE_JUMP {
                return Insert::Jump;
            }
        }
        let idx = seq_ext.rem_euclid(PACKET_SLOTS as i64) as usize;
        let slot = &mut self.slots[idx];
        match slot.seq {
            Some(s) if s == seq_ext => return Insert::Duplicate,
            Some(_) => {
                // An older packet that playout never consumed (it fell below next_seq
                // without being taken): overwrite it.
            }
            None => self.held += 1,
        }
        slot.seq = Some(seq_ext);
        slot.ts = ts_ext;
        slot.samples = samples;
        slot.has_fec = has_fec;
        slot.len = payload.len();
        slot.data[..payload.len()].copy_from_slice(payload);
        self.highest = Some(self.highest.map_or(seq_ext, |h| h.max(seq_ext)));
        self.ts_ref = Some(self.ts_ref.map_or(ts_ext, |r| r.max(ts_ext)));
        if self.next_seq.is_none() {
            self.next_seq = Some(seq_ext);
        }
        Insert::Stored
    }

    /// The sequence number playout wants next, once a timeline exists.
    pub fn next_seq(&self) -> Option<i64> {
        self.next_seq
    }

    /// The held packet with the lowest sequence number at or after `next_seq`.
    pub fn earliest(&self) -> Option<StoredPacket<'_>> {
        let next = self.next_seq?;
        if self.held == 0 {
            return None;
        }
        (0..PACKET_SLOTS as i64).find_map(|k| self.get(next + k))
    }

    /// The packet with extended sequence number `seq`, if held.
    pub fn get(&self, seq: i64) -> Option<StoredPacket<'_>> {
        let slot = &self.slots[seq.rem_euclid(PACKET_SLOTS as i64) as usize];
        (slot.seq == Some(seq)).then(|| StoredPacket {
            seq,
            ts: slot.ts,
            samples: slot.samples,
            has_fec: slot.has_fec,
            payload: &slot.data[..slot.len],
        })
    }

    /// Playout has consumed (or given up on) every packet below `seq`: frees their slots.
    pub fn advance_to(&mut self, seq: i64) {
        let Some(next) = self.next_seq else { return };
        if seq <= next {
            return;
        }
        let span = (seq - next).min(PACKET_SLOTS as i64);
        for s in seq - span..seq {
            let slot = &mut self.slots[s.rem_euclid(PACKET_SLOTS as i64) as usize];
            if slot.seq.is_some_and(|held| held < seq) {
                slot.seq = None;
                self.held -= 1;
            }
        }
        self.next_seq = Some(seq);
    }

    /// Extended timestamp of the newest packet held, if any (for the buffer level).
    pub fn newest_end_ts(&self) -> Option<i64> {
        let next = self.next_seq?;
        let high = self.highest?;
        (next..=high)
            .rev()
            .find_map(|s| self.get(s))
            .map(|p| p.ts + p.samples as i64)
    }
}

impl Default for PacketStore {
    fn default() -> Self {
        PacketStore::new()
    }
}

/// Settings of the adaptive target delay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterConfig {
    /// The target never goes below this.
    pub min_delay: Duration,
    /// The target never goes above this; a buffer far above it is cut back.
    pub max_delay: Duration,
    /// Fraction of the window's arrivals the target must cover, 0.5..=1.0.
    pub percentile: f64,
    /// Added on top of the measured jitter and the period.
    pub margin: Duration,
    /// How fast the target may fall, as a fraction of real time (0.02 = 20 ms per second).
    pub shrink_per_s: f64,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            min_delay: Duration::ZERO,
            max_delay: Duration::from_millis(200),
            percentile: 1.0,
            margin: Duration::from_millis(1),
            shrink_per_s: 0.02,
        }
    }
}

/// Sliding-window statistics of arrival times against media time.
///
/// For each packet, the relative delay is `at - ts / 48 kHz`. Its minimum over the window
/// is the fastest path through the network (`base`); the percentile of `relative - base`
/// is the jitter the buffer must absorb. With clock drift the relative delay trends
/// linearly, so the minimum over a 5 s window lags by at most 5 s × drift (1.5 ms at
/// 300 ppm).
pub struct ArrivalStats {
    /// Relative delays in microseconds, ring buffer.
    window: Vec<i64>,
    /// Scratch for percentile selection (same capacity as `window`).
    scratch: Vec<i64>,
    filled: usize,
    pos: usize,
    base_us: i64,
    jitter_us: i64,
    /// Exponentially weighted least-squares sums for the drift estimate.
    drift: DriftFit,
}

/// Exponentially forgetting linear fit of relative delay against arrival time.
#[derive(Clone, Copy, Debug, Default)]
struct DriftFit {
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
    origin_us: Option<i64>,
}

/// Forgetting factor per packet for the drift fit (time constant ~2000 packets, 40 s of
/// 20 ms packets: long enough to average out 30 ms of jitter).
const DRIFT_FORGET: f64 = 1.0 - 1.0 / 2000.0;

impl DriftFit {
    fn add(&mut self, at_us: i64, rel_us: i64) {
        let origin = *self.origin_us.get_or_insert(at_us);
        let x = (at_us - origin) as f64 * 1e-6;
        let y = rel_us as f64 * 1e-6;
        self.w = self.w * DRIFT_FORGET + 1.0;
        self.sx = self.sx * DRIFT_FORGET + x;
        self.sy = self.sy * DRIFT_FORGET + y;
        self.sxx = self.sxx * DRIFT_FORGET + x * x;
        self.sxy = self.sxy * DRIFT_FORGET + x * y;
    }

    /// Slope of relative delay over time, in ppm; positive when the phone's clock runs
    /// fast (its media time outpaces ours, so relative delay falls).
    fn ppm(&self) -> f64 {
        let den = self.w * self.sxx - self.sx * self.sx;
        if self.w < 50.0 || den.abs() < 1e-9 {
            return 0.0;
        }
        -(self.w * self.sxy - self.sx * self.sy) / den * 1e6
    }
}

impl ArrivalStats {
    /// An empty window; allocates now.
    pub fn new() -> ArrivalStats {
        ArrivalStats {
            window: vec![0; WINDOW_PACKETS],
            scratch: vec![0; WINDOW_PACKETS],
            filled: 0,
            pos: 0,
            base_us: 0,
            jitter_us: 0,
            drift: DriftFit::default(),
        }
    }

    /// Forgets every arrival (new timeline).
    pub fn clear(&mut self) {
        self.filled = 0;
        self.pos = 0;
        self.base_us = 0;
        self.jitter_us = 0;
        self.drift = DriftFit::default();
    }

    /// Relative delay of a packet, in microseconds: arrival minus media time.
    pub fn relative_us(at: Duration, ts: i64) -> i64 {
        at.as_micros() as i64 - ts * 1_000_000 / SAMPLE_RATE_HZ as i64
    }

    /// Whether `rel_us` is so far from the window that the timeline must have jumped.
    pub fn is_jump(&self, rel_us: i64, limit: Duration) -> bool {
        self.filled > 0 && (rel_us - self.base_us).abs() > limit.as_micros() as i64
    }

    /// Records one arrival and recomputes base and jitter at `percentile`.
    pub fn record(&mut self, at: Duration, rel_us: i64, percentile: f64) {
        self.window[self.pos] = rel_us;
        self.pos = (self.pos + 1) % WINDOW_PACKETS;
        self.filled = (self.filled + 1).min(WINDOW_PACKETS);
        let live = &self.window[..self.filled];
        self.base_us = *live
            .iter()
            .min()
            .expect("window holds at least the new arrival");
        let scratch = &mut self.scratch[..self.filled];
        for (s, &r) in scratch.iter_mut().zip(live) {
            *s = r - self.base_us;
        }
        let rank = ((percentile.clamp(0.0, 1.0) * (self.filled - 1) as f64).ceil() as usize)
            .min(self.filled - 1);
        let (_, kth, _) = scratch.select_nth_unstable(rank);
        self.jitter_us = *kth;
        self.drift.add(at.as_micros() as i64, rel_us);
    }

    /// Whether any arrival has been recorded on this timeline.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// The fastest relative delay in the window, microseconds.
    pub fn base_us(&self) -> i64 {
        self.base_us
    }

    /// The jitter at the configured percentile.
    pub fn jitter(&self) -> Duration {
        Duration::from_micros(self.jitter_us.max(0) as u64)
    }

    /// Estimated clock drift of the phone against the arrival clock, ppm.
    pub fn drift_ppm(&self) -> f64 {
        self.drift.ppm()
    }
}

impl Default for ArrivalStats {
    fn default() -> Self {
        ArrivalStats::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_unwrap_across_the_16_bit_boundary() {
        assert_eq!(unwrap_seq(2, 65_534), 65_538);
        assert_eq!(unwrap_seq(65_534, 65_538), 65_534);
        assert_eq!(unwrap_ts(10, (1 << 32) - 10), (1 << 32) + 10);
    }

    #[test]
    fn store_reorders_and_flags_duplicates_and_late_packets() {
        let mut store = PacketStore::new();
        assert_eq!(store.insert(10, 0, 960, false, &[1]), Insert::Stored);
        assert_eq!(store.insert(12, 1920, 960, false, &[3]), Insert::Stored);
        assert_eq!(store.insert(11, 960, 960, false, &[2]), Insert::Stored);
        assert_eq!(store.insert(11, 960, 960, false, &[2]), Insert::Duplicate);
        let first = store.earliest().expect("packet");
        assert_eq!(first.payload, &[1]);
        let seq = first.seq;
        store.advance_to(seq + 1);
        assert_eq!(store.earliest().expect("packet").payload, &[2]);
        assert_eq!(store.insert(10, 0, 960, false, &[1]), Insert::Late);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_sequence_far_ahead_is_a_jump_not_a_store() {
        let mut store = PacketStore::new();
        store.insert(100, 0, 960, false, &[1]);
        assert_eq!(
            store.insert(100 + PACKET_SLOTS as u16, 0, 960, false, &[1]),
            Insert::Jump
        );
        assert_eq!(store.insert(30_000, 0, 960, false, &[1]), Insert::Jump);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn jitter_percentile_covers_the_slowest_arrival() {
        let mut stats = ArrivalStats::new();
        for k in 0..100i64 {
            let extra_ms = if k % 10 == 0 { 30 } else { 0 };
            let at = Duration::from_millis(20 * k as u64 + extra_ms);
            stats.record(at, ArrivalStats::relative_us(at, k * 960), 1.0);
        }
        assert_eq!(stats.jitter(), Duration::from_millis(30));
    }
}
