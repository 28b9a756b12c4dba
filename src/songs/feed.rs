//! The WHIP backing feed: a client admitted in the `backing` role (with the host PIN)
//! sends Opus, for example OBS with a PC's audio; when the host chooses it, it is the
//! backing.
//!
//! A task on the runtime (a packet's work is a decode and a resample: well under a
//! millisecond) decodes every packet in order (a gap of a few packets is concealed by
//! the decoder, later or repeated packets are dropped), and, while the [`FeedGate`] is
//! open, hands the audio in 10 ms pieces to a [`LiveFeed`] that keeps it in step with
//! the output's clock as the line-in does. Its queue level target leaves room for a
//! 20 ms packet and as much network jitter. A closed gate keeps the decoder going and
//! drops the audio; opening it again starts a new fill.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::line_in::{queued_frames, target_frames, LiveFeed};
use crate::audio::AudioHandle;
use crate::engine::SAMPLE_RATE_HZ;
use crate::rtc::BackingPacket;

/// A feed's usual packet (20 ms): what a lost one is concealed with, and the slack its
/// queue keeps for each delivery.
const PACKET_FRAMES: usize = 960;

/// Frames handed to the drift correction at a time (10 ms).
const PIECE_FRAMES: usize = 480;

/// Packets the task may be behind before the next ones are dropped.
pub const FEED_QUEUE: usize = 64;

/// Packets older than the last one in a row after which the sequence is taken afresh.
const MAX_LATE_IN_A_ROW: u32 = 25;

/// Lost packets (20 ms each) concealed at most; a longer gap starts afresh.
const MAX_CONCEALED: u16 = 5;

/// Which generation the feed's audio plays as, if any; set by the control task.
#[derive(Debug, Default)]
pub struct FeedGate(AtomicU64);

impl FeedGate {
    /// Lets the audio in as `generation`, or (`None`) keeps it out.
    pub fn set(&self, generation: Option<u32>) {
        let v = generation.map_or(0, |g| (1 << 32) | u64::from(g));
        self.0.store(v, Ordering::Relaxed);
    }

    /// The generation the audio plays as, if it is let in.
    pub fn get(&self) -> Option<u32> {
        let v = self.0.load(Ordering::Relaxed);
        (v >> 32 != 0).then_some(v as u32)
    }
}

/// Starts a feed's decoder task; its packets go to the returned sender. The task ends
/// when the sender is dropped (the peer closed).
pub fn spawn(audio: AudioHandle, gate: Arc<FeedGate>) -> mpsc::Sender<BackingPacket> {
    let (tx, rx) = mpsc::channel(FEED_QUEUE);
    tokio::spawn(run(rx, audio, gate));
    tx
}

/// A feed's packets in order, decoded to interleaved stereo: gaps of up to
/// [`MAX_CONCEALED`] packets concealed, late and repeated packets dropped (unless so many
/// come in a row that the sender must have restarted its sequence). Pure but for libopus.
pub struct Depacketizer {
    decoder: opus::Decoder,
    last: Option<u16>,
    late_in_a_row: u32,
    decoded: Vec<f32>,
    /// Packets that were not Opus.
    pub bad: u64,
    /// Packets dropped as late or repeated.
    pub late: u64,
    /// Packets concealed.
    pub concealed: u64,
}

impl Depacketizer {
    /// A stereo 48 kHz decoder.
    pub fn new() -> Result<Depacketizer, String> {
        let decoder = opus::Decoder::new(SAMPLE_RATE_HZ, opus::Channels::Stereo)
            .map_err(|e| format!("the backing feed's decoder: {e}"))?;
        Ok(Depacketizer {
            decoder,
            last: None,
            late_in_a_row: 0,
            // A 120 ms packet is the longest Opus has.
            decoded: vec![0.0; 2 * 5_760],
            bad: 0,
            late: 0,
            concealed: 0,
        })
    }

    /// Decodes packet `sequence` onto the end of `out`; false if it was dropped.
    pub fn take(&mut self, sequence: u16, payload: &[u8], out: &mut Vec<f32>) -> bool {
        let gap = self.last.map_or(0, |l| sequence.wrapping_sub(l));
        if self.last.is_some() && (gap == 0 || gap > u16::MAX / 2) {
            self.late += 1;
            self.late_in_a_row += 1;
            // Many "late" in a row is a sender that started its sequence afresh.
            if self.late_in_a_row < MAX_LATE_IN_A_ROW {
                return false;
            }
        }
        self.late_in_a_row = 0;
        self.last = Some(sequence);
        if (2..=MAX_CONCEALED + 1).contains(&gap) {
            for _ in 1..gap {
                let concealment = &mut self.decoded[..2 * PACKET_FRAMES];
                if let Ok(n) = self.decoder.decode_float(&[], concealment, false) {
                    out.extend_from_slice(&self.decoded[..2 * n]);
                    self.concealed += 1;
                }
            }
        }
        match self.decoder.decode_float(payload, &mut self.decoded, false) {
            Ok(n) => {
                out.extend_from_slice(&self.decoded[..2 * n]);
                true
            }
            Err(_) => {
                self.bad += 1;
                if self.bad == 1 || self.bad.is_multiple_of(1000) {
                    tracing::warn!(
                        bad = self.bad,
                        "the backing feed sends packets that are not Opus"
                    );
                }
                false
            }
        }
    }
}

async fn run(mut packets: mpsc::Receiver<BackingPacket>, audio: AudioHandle, gate: Arc<FeedGate>) {
    let mut depacketizer = match Depacketizer::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the backing feed cannot start");
            return;
        }
    };
    let target = target_frames(&audio, PACKET_FRAMES);
    let mut feed: Option<LiveFeed> = None;
    let mut playing: Option<u32> = None;
    let mut pending: Vec<f32> = Vec::with_capacity(2 * (5_760 + PIECE_FRAMES));
    while let Some(packet) = packets.recv().await {
        if !depacketizer.take(packet.sequence, &packet.payload, &mut pending) {
            continue;
        }
        let generation = gate.get();
        if generation != playing {
            // Let in anew (or kept out): the next piece starts a new fill.
            playing = generation;
            feed = None;
        }
        let Some(generation) = generation else {
            pending.clear();
            continue;
        };
        if feed.is_none() {
            match LiveFeed::new(SAMPLE_RATE_HZ, PIECE_FRAMES, target) {
                Ok(f) => feed = Some(f),
                Err(e) => {
                    tracing::error!(error = %e, "the backing feed cannot start");
                    return;
                }
            }
        }
        let f = feed.as_mut().expect("made above");
        let mut used = 0;
        while pending.len() - used >= 2 * PIECE_FRAMES {
            let piece = &pending[used..used + 2 * PIECE_FRAMES];
            used += 2 * PIECE_FRAMES;
            let queued = queued_frames(&audio, PIECE_FRAMES);
            if let Err(e) = f.feed(generation, piece, queued, |chunk| {
                audio.backing.push(chunk).is_ok()
            }) {
                tracing::error!(error = %e, "the backing feed failed");
                return;
            }
        }
        pending.drain(..used);
    }
    let stats = feed.map(|f| f.stats()).unwrap_or_default();
    tracing::info!(
        bad = depacketizer.bad,
        late = depacketizer.late,
        concealed = depacketizer.concealed,
        dropped = stats.frames_dropped,
        trimmed = stats.frames_trimmed,
        ratio = stats.ratio,
        "backing feed ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(encoder: &mut opus::Encoder, hz: f32, n: usize) -> Vec<u8> {
        let pcm: Vec<f32> = (0..960)
            .flat_map(|i| {
                let t = (n * 960 + i) as f32 / 48_000.0;
                let v = 0.5 * (std::f32::consts::TAU * hz * t).sin();
                [v, v]
            })
            .collect();
        encoder.encode_vec_float(&pcm, 1500).expect("encode")
    }

    #[test]
    fn packets_are_decoded_in_order_gaps_concealed_and_late_ones_dropped() {
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio)
                .expect("encoder");
        let packets: Vec<Vec<u8>> = (0..40).map(|n| packet(&mut encoder, 440.0, n)).collect();
        let mut d = Depacketizer::new().expect("decoder");
        let mut out = Vec::new();
        // 65534, 65535, 0 (a wrap), then 2: the lost 1 is concealed.
        for (k, seq) in [65_534u16, 65_535, 0, 2].into_iter().enumerate() {
            assert!(d.take(seq, &packets[k], &mut out), "{seq}");
        }
        assert_eq!(out.len(), 2 * 960 * 5, "four packets and one concealed");
        assert_eq!(d.concealed, 1);
        // A repeat and an older packet are dropped.
        for seq in [2u16, 1, 65_000] {
            assert!(!d.take(seq, &packets[5], &mut out), "{seq}");
        }
        assert_eq!((d.late, out.len()), (3, 2 * 960 * 5));
        // A gap too long to conceal: the audio goes on from the new packet.
        assert!(d.take(20, &packets[6], &mut out));
        assert_eq!((d.concealed, out.len()), (1, 2 * 960 * 6));
        // Not Opus: counted, nothing added.
        assert!(!d.take(21, &[0xff; 3], &mut out));
        assert_eq!((d.bad, out.len()), (1, 2 * 960 * 6));
        // A sender that restarted its sequence far back (every packet "late") is
        // followed after MAX_LATE_IN_A_ROW of them.
        let mut taken = 0;
        for k in 0..30u16 {
            if d.take(45_000 + k, &packets[7 + usize::from(k)], &mut out) {
                taken += 1;
            }
        }
        assert_eq!(taken, 30 - MAX_LATE_IN_A_ROW + 1);
        // What came out is the tone.
        let left: Vec<f32> = out.iter().step_by(2).copied().collect();
        let level = crate::engine::testkit::tone_level(&left[960..4 * 960], 440.0);
        assert!((0.4..=0.6).contains(&level), "the tone at {level}");
    }

    #[test]
    fn the_gate_holds_any_generation_or_none() {
        let gate = FeedGate::default();
        assert_eq!(gate.get(), None);
        for g in [0, 1, 7, u32::MAX] {
            gate.set(Some(g));
            assert_eq!(gate.get(), Some(g));
        }
        gate.set(None);
        assert_eq!(gate.get(), None);
    }
}
