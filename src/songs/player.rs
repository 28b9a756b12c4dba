//! The player thread: decodes the song the room chose, ahead of time, into the audio
//! thread's backing queue.
//!
//! The room sends [`PlayerCommand`]s (each names the generation it starts); the thread
//! opens, seeks and decodes on its own (never on the audio thread, never on the async
//! runtime: a large FLAC or a slow SD card stalls nobody), keeps about
//! [`AHEAD`] of audio queued, and answers with [`PlayerEvent`]s. Every chunk carries its
//! generation and song frame, so the engine drops what a newer command made stale; the
//! thread also takes its own stale chunks back out of the queue so the new ones are not
//! stuck behind them.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use super::decode::{SongDecoder, SongError, SongInfo};
use crate::audio::{BackingChunk, BACKING_CHUNK_SAMPLES};
use crate::engine::SAMPLE_RATE_HZ;

/// Audio kept decoded ahead in the backing queue.
pub const AHEAD: Duration = Duration::from_millis(1_000);

/// How long the thread waits for a command when it has nothing to decode (or the queue
/// is full).
const IDLE: Duration = Duration::from_millis(10);

/// What the room asks of the player.
#[derive(Clone, Debug, PartialEq)]
pub enum PlayerCommand {
    /// Opens `path` (the library file) and plays it from `from`, as `generation`,
    /// after `beats` clicks lasting `count_in` in all. The audio's positions count the
    /// count-in first: the song's first frame is at `count_in`.
    Play {
        /// The generation its audio carries.
        generation: u32,
        /// The file.
        path: PathBuf,
        /// Where in the song to start.
        from: Duration,
        /// The count-in's length (zero: none; ignored unless `from` is zero).
        count_in: Duration,
        /// Its clicks, evenly spaced, the first accented.
        beats: u32,
    },
    /// Moves the open song to `to`, as `generation` (no count-in: positions are the
    /// song's own from here).
    Seek {
        /// The generation its audio carries from now on.
        generation: u32,
        /// Where.
        to: Duration,
    },
    /// Closes the song.
    Stop,
}

/// What the player tells the room.
#[derive(Clone, Debug, PartialEq)]
pub enum PlayerEvent {
    /// A song opened (or moved) and its audio is on its way.
    Started {
        /// Its generation.
        generation: u32,
        /// What the file says.
        info: SongInfo,
        /// The song frame (48 kHz) its first audio starts at.
        position: u64,
        /// How long opening it took (decode cost shows up here and in the log).
        opened_in: Duration,
    },
    /// The song cannot be played (or stopped playing partway: the rest is corrupt).
    Failed {
        /// Its generation.
        generation: u32,
        /// `unreadable`, `unsupported` or `corrupt`.
        kind: &'static str,
        /// What went wrong, for the host.
        detail: String,
    },
    /// All of the song's audio is queued (its last chunk is marked: the engine reports
    /// when it has played).
    Decoded {
        /// Its generation.
        generation: u32,
        /// Packets skipped as damaged.
        bad_packets: u64,
        /// Time spent decoding, in all.
        busy: Duration,
    },
}

/// The handle the control plane keeps.
pub struct Player {
    commands: Sender<PlayerCommand>,
    join: Option<JoinHandle<()>>,
}

impl Player {
    /// Starts the thread: audio goes to `backing`, events to `events`.
    pub fn spawn(
        backing: Arc<ArrayQueue<BackingChunk>>,
        events: tokio::sync::mpsc::UnboundedSender<PlayerEvent>,
    ) -> std::io::Result<Player> {
        let (tx, rx) = std::sync::mpsc::channel();
        let join = std::thread::Builder::new()
            .name("duetbox-player".into())
            .spawn(move || {
                if let Err(e) = crate::audio::make_background() {
                    tracing::debug!(error = %e, "the song decoder keeps the usual priority");
                }
                run(&rx, &backing, &events)
            })?;
        Ok(Player {
            commands: tx,
            join: Some(join),
        })
    }

    /// Hands a command to the thread (never blocks).
    pub fn send(&self, command: PlayerCommand) {
        // The thread only ends when this handle is dropped.
        let _ = self.commands.send(command);
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        let (tx, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

struct Current {
    generation: u32,
    decoder: SongDecoder,
    /// The timeline frame of the next sample to queue (count-in, then the song).
    position: u64,
    /// Decoded and not yet queued.
    carry: Vec<f32>,
    busy: Duration,
    /// The count-in still to queue.
    count_in: Option<CountIn>,
}

/// Clicks before the song: `beats` of them, `beat` frames apart, `total` frames in all.
struct CountIn {
    beats: u32,
    beat: u64,
    total: u64,
    /// Frames of it queued so far.
    done: u64,
}

/// A click's tone: the first beat higher (the accent), each a short decaying sine.
const CLICK_HZ: [f32; 2] = [1_500.0, 1_000.0];
const CLICK_AMPLITUDE: f32 = 0.5;
const CLICK_DECAY_S: f32 = 0.02;
const CLICK_FRAMES: u64 = 4_800;

impl CountIn {
    fn new(count_in: Duration, beats: u32) -> Option<CountIn> {
        let total = crate::engine::frames_in(count_in);
        (beats > 0 && total > 0).then(|| CountIn {
            beats,
            beat: total / u64::from(beats),
            total,
            done: 0,
        })
    }

    /// The next up-to-one-chunk of clicks, interleaved stereo.
    fn next_chunk(&mut self, out: &mut Vec<f32>) {
        let n = (self.total - self.done).min((BACKING_CHUNK_SAMPLES / 2) as u64);
        for k in self.done..self.done + n {
            let beat = (k / self.beat).min(u64::from(self.beats) - 1);
            let into = k - beat * self.beat;
            let v = if into < CLICK_FRAMES {
                let t = into as f32 / SAMPLE_RATE_HZ as f32;
                let hz = CLICK_HZ[usize::from(beat != 0)];
                CLICK_AMPLITUDE
                    * (-t / CLICK_DECAY_S).exp()
                    * (2.0 * std::f32::consts::PI * hz * t).sin()
            } else {
                0.0
            };
            out.push(v);
            out.push(v);
        }
        self.done += n;
    }
}

fn run(
    commands: &Receiver<PlayerCommand>,
    backing: &ArrayQueue<BackingChunk>,
    events: &tokio::sync::mpsc::UnboundedSender<PlayerEvent>,
) {
    let mut current: Option<Current> = None;
    let ahead_chunks =
        (AHEAD.as_millis() as usize * SAMPLE_RATE_HZ as usize * 2 / 1000) / BACKING_CHUNK_SAMPLES;
    let ahead_chunks = ahead_chunks.min(backing.capacity());
    loop {
        let idle = current.is_none() || backing.len() >= ahead_chunks;
        let command = if idle {
            match commands.recv_timeout(IDLE) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(std::sync::mpsc::TryRecvError::Empty) => None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            }
        };
        if let Some(command) = command {
            current = handle(command, current, backing, events);
            continue;
        }
        let Some(song) = current.as_mut() else {
            continue;
        };
        if backing.len() >= ahead_chunks {
            continue;
        }
        match fill_one(song, backing) {
            Ok(true) => {}
            Ok(false) => {
                let _ = events.send(PlayerEvent::Decoded {
                    generation: song.generation,
                    bad_packets: song.decoder.bad_packets,
                    busy: song.busy,
                });
                current = None;
            }
            Err(e) => {
                let _ = events.send(failed(song.generation, &e));
                current = None;
            }
        }
    }
}

fn failed(generation: u32, e: &SongError) -> PlayerEvent {
    PlayerEvent::Failed {
        generation,
        kind: e.kind(),
        detail: e.to_string(),
    }
}

/// Drops queued chunks of other generations than `keep` (we are the queue's only
/// producer while a song plays; the engine drops any it still sees).
fn drain_stale(backing: &ArrayQueue<BackingChunk>, keep_generation: Option<u32>) {
    let mut keep = Vec::new();
    while let Some(chunk) = backing.pop() {
        if Some(chunk.generation()) == keep_generation {
            keep.push(chunk);
        }
    }
    for chunk in keep {
        let _ = backing.push(chunk);
    }
}

fn handle(
    command: PlayerCommand,
    current: Option<Current>,
    backing: &ArrayQueue<BackingChunk>,
    events: &tokio::sync::mpsc::UnboundedSender<PlayerEvent>,
) -> Option<Current> {
    match command {
        PlayerCommand::Stop => {
            drop(current);
            drain_stale(backing, None);
            None
        }
        PlayerCommand::Play {
            generation,
            path,
            from,
            count_in,
            beats,
        } => {
            drop(current);
            drain_stale(backing, Some(generation));
            let (opened, opened_in) = timed(|| {
                let mut decoder = SongDecoder::open(&path)?;
                let position = if from.is_zero() {
                    0
                } else {
                    decoder.seek(from)?
                };
                Ok::<_, SongError>((decoder, position))
            });
            match opened {
                Ok((decoder, position)) => {
                    tracing::info!(
                        generation,
                        path = %path.display(),
                        rate = decoder.info().source_rate,
                        channels = decoder.info().source_channels,
                        opened_ms = opened_in.as_secs_f64() * 1e3,
                        "song opened"
                    );
                    let _ = events.send(PlayerEvent::Started {
                        generation,
                        info: decoder.info().clone(),
                        position,
                        opened_in,
                    });
                    // A count-in leads into a song's start only (its positions come
                    // first: the song's first frame is at the count-in's length).
                    let count_in = if from.is_zero() {
                        CountIn::new(count_in, beats)
                    } else {
                        None
                    };
                    Some(Current {
                        generation,
                        decoder,
                        position,
                        carry: Vec::new(),
                        busy: opened_in,
                        count_in,
                    })
                }
                Err(e) => {
                    tracing::warn!(generation, path = %path.display(), error = %e, "song cannot play");
                    let _ = events.send(failed(generation, &e));
                    None
                }
            }
        }
        PlayerCommand::Seek { generation, to } => {
            let mut song = current?;
            drain_stale(backing, Some(generation));
            song.generation = generation;
            song.carry.clear();
            song.count_in = None;
            let (seeked, took) = timed(|| song.decoder.seek(to));
            song.busy += took;
            match seeked {
                Ok(position) => {
                    song.position = position;
                    let _ = events.send(PlayerEvent::Started {
                        generation,
                        info: song.decoder.info().clone(),
                        position,
                        opened_in: took,
                    });
                    Some(song)
                }
                Err(e) => {
                    let _ = events.send(failed(generation, &e));
                    None
                }
            }
        }
    }
}

/// Decodes until one chunk is queued (or the song ends: `false`); the count-in first.
fn fill_one(song: &mut Current, backing: &ArrayQueue<BackingChunk>) -> Result<bool, SongError> {
    if let Some(count_in) = song.count_in.as_mut() {
        let mut clicks = Vec::with_capacity(BACKING_CHUNK_SAMPLES);
        count_in.next_chunk(&mut clicks);
        let chunk = BackingChunk::new(song.generation, song.position, &clicks, false);
        if backing.push(chunk).is_err() {
            // Full: the same clicks again next time.
            count_in.done -= (clicks.len() / 2) as u64;
            return Ok(true);
        }
        song.position += (clicks.len() / 2) as u64;
        if count_in.done >= count_in.total {
            song.count_in = None;
        }
        return Ok(true);
    }
    let (result, took) = timed(|| {
        let mut more = true;
        while song.carry.len() < BACKING_CHUNK_SAMPLES && more {
            more = song.decoder.read(&mut song.carry)?;
        }
        Ok::<_, SongError>(more)
    });
    song.busy += took;
    let more = result?;
    let n = song.carry.len().min(BACKING_CHUNK_SAMPLES);
    let last = !more && n == song.carry.len();
    if n > 0 || last {
        let chunk = BackingChunk::new(song.generation, song.position, &song.carry[..n], last);
        if backing.push(chunk).is_err() {
            // Full (the caller checks first; a line-in could share it): try later.
            return Ok(true);
        }
        song.carry.drain(..n);
        song.position += (n / 2) as u64;
    }
    Ok(more || !song.carry.is_empty())
}

#[expect(
    clippy::disallowed_methods,
    reason = "the player measures its own decode cost for the log and the closing note"
)]
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = std::time::Instant::now();
    let value = f();
    (value, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit stereo WAV at 48 kHz holding `frames` frames of `value`.
    fn flat_wav(path: &std::path::Path, frames: usize, value: f32) {
        let samples = vec![crate::songs::testwav::to_i16(value); 2 * frames];
        crate::songs::testwav::write_wav16(path, 48_000, 2, &samples);
    }

    #[test]
    fn the_count_in_clicks_on_the_beats_and_the_song_starts_after_it() {
        let dir = std::env::temp_dir().join(format!("duetbox-player-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flat.wav");
        flat_wav(&path, 24_000, 0.25);
        let backing = Arc::new(ArrayQueue::new(256));
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let player = Player::spawn(backing.clone(), tx).unwrap();
        player.send(PlayerCommand::Play {
            generation: 3,
            path,
            from: Duration::ZERO,
            count_in: Duration::from_secs(1),
            beats: 2,
        });
        // The whole timeline: one second of count-in, half a second of song.
        let mut timeline: Vec<f32> = Vec::new();
        let mut last = false;
        let deadline = std::time::Duration::from_secs(10);
        let (mut waited, step) = (Duration::ZERO, Duration::from_millis(5));
        while !last {
            match backing.pop() {
                Some(chunk) => {
                    let audio = chunk.audio();
                    assert_eq!(audio.generation, 3);
                    assert_eq!(
                        audio.position as usize,
                        timeline.len() / 2,
                        "positions are contiguous"
                    );
                    timeline.extend_from_slice(audio.samples);
                    last = audio.last;
                }
                None => {
                    assert!(waited < deadline, "the player stalled");
                    std::thread::park_timeout(step);
                    waited += step;
                }
            }
        }
        drop(player);
        let left: Vec<f32> = timeline.iter().step_by(2).copied().collect();
        assert_eq!(left.len(), 72_000);
        let loud =
            |from: usize, to: usize| left[from..to].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(loud(0, 480) > 0.3, "a click on the first beat");
        assert!(loud(24_000, 24_480) > 0.3, "a click on the second");
        assert!(loud(6_000, 23_900) < 0.01, "silence between the beats");
        assert!(loud(30_000, 47_990) < 0.01, "silence before the song");
        assert!(
            (left[47_999]).abs() < 0.01 && (left[48_000] - 0.25).abs() < 1e-3,
            "the song's first frame at 1 s"
        );
        assert!(matches!(
            events.try_recv(),
            Ok(PlayerEvent::Started {
                generation: 3,
                position: 0,
                ..
            })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
