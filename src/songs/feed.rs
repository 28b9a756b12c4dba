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

use super::line_in::{queued_frames, LiveFeed};
use crate::audio::AudioHandle;
use crate::engine::SAMPLE_RATE_HZ;
use crate::rtc::BackingPacket;

/// Frames handed to the drift correction at a time (10 ms).
const PIECE_FRAMES: usize = 480;

/// Packets the task may be behind before the next ones are dropped.
pub const FEED_QUEUE: usize = 64;

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

async fn run(mut packets: mpsc::Receiver<BackingPacket>, audio: AudioHandle, gate: Arc<FeedGate>) {
    let mut decoder = match opus::Decoder::new(SAMPLE_RATE_HZ, opus::Channels::Stereo) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the backing feed's decoder cannot start");
            return;
        }
    };
    let target = 4 * audio.engine_period_frames + 2 * 960;
    let mut feed: Option<LiveFeed> = None;
    let mut playing: Option<u32> = None;
    let mut last: Option<u16> = None;
    // A 120 ms packet is the longest Opus has.
    let mut decoded = vec![0.0f32; 2 * 5_760];
    let mut pending: Vec<f32> = Vec::with_capacity(2 * (5_760 + PIECE_FRAMES));
    let (mut bad, mut late, mut concealed) = (0u64, 0u64, 0u64);
    while let Some(packet) = packets.recv().await {
        let gap = match last {
            None => 0,
            Some(l) => packet.sequence.wrapping_sub(l),
        };
        if last.is_some() && (gap == 0 || gap > u16::MAX / 2) {
            late += 1;
            continue;
        }
        last = Some(packet.sequence);
        if (2..=MAX_CONCEALED + 1).contains(&gap) {
            for _ in 1..gap {
                if let Ok(n) = decoder.decode_float(&[], &mut decoded[..2 * 960], false) {
                    pending.extend_from_slice(&decoded[..2 * n]);
                    concealed += 1;
                }
            }
        }
        match decoder.decode_float(&packet.payload, &mut decoded, false) {
            Ok(n) => pending.extend_from_slice(&decoded[..2 * n]),
            Err(_) => {
                bad += 1;
                if bad == 1 || bad.is_multiple_of(1000) {
                    tracing::warn!(bad, "the backing feed sends packets that are not Opus");
                }
                continue;
            }
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
        bad,
        late,
        concealed,
        dropped = stats.frames_dropped,
        trimmed = stats.frames_trimmed,
        ratio = stats.ratio,
        "backing feed ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
