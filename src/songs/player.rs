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
    /// Opens `path` (the library file) and plays it from `from`, as `generation`.
    Play {
        /// The generation its audio carries.
        generation: u32,
        /// The file.
        path: PathBuf,
        /// Where in the song to start.
        from: Duration,
    },
    /// Moves the open song to `to`, as `generation`.
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
            .spawn(move || run(&rx, &backing, &events))?;
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
    /// The song frame of the next sample to queue.
    position: u64,
    /// Decoded and not yet queued.
    carry: Vec<f32>,
    busy: Duration,
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
                    Some(Current {
                        generation,
                        decoder,
                        position,
                        carry: Vec::new(),
                        busy: opened_in,
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

/// Decodes until one chunk is queued (or the song ends: `false`).
fn fill_one(song: &mut Current, backing: &ArrayQueue<BackingChunk>) -> Result<bool, SongError> {
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
