//! Recording every song: each voice on its own track, the backing, and the final mix,
//! as Ogg Opus files under the state directory.
//!
//! The audio thread stages what each period rendered ([`crate::engine::PeriodSources`])
//! into fixed [`RecordChunk`]s (20 ms) and pushes them into a bounded queue while a
//! recording runs: no allocation, no lock, no file; a full queue drops the chunk and
//! counts it ([`RecordCounters::dropped`]). This module's thread takes them from there,
//! off the audio thread: it encodes ([`track::OpusTrack`]) and writes, and a disk that
//! fills up only stops the recording (an event says why), never the music.
//!
//! Alignment: a voice reaches the mixer one uplink after it was sung, against the
//! backing the singer heard. Each voice of a [`Session`] carries that shift
//! ([`VoicePlan::shift_frames`], worked out by the control task from what it measured);
//! the voice's track starts that much later in the rendered stream, so on every track
//! the song's first frame is at the same place, and the mix is made of the shifted
//! voices: the recording is on the beat even where the venue heard a voice late.
//!
//! Invariants: the audio thread's part ([`RecordStage`]) is fixed memory; a gap in the
//! chunks (a dropped one) is filled with silence, so the tracks stay aligned; every
//! track of a session has the same length when it ends.

pub mod track;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::engine::limiter::Limiter;
use crate::engine::{mixer, PeriodSources, SingerId, SAMPLE_RATE_HZ};
use track::OpusTrack;

/// Frames in one [`RecordChunk`].
pub const CHUNK_FRAMES: usize = 960;

/// Voices a chunk holds (the engine's seats beyond this are not recorded).
pub const MAX_VOICES: usize = 8;

/// Chunks the queue holds (1.28 s): the recorder thread may stall on a slow SD card
/// that long without a chunk lost.
pub const QUEUE_CHUNKS: usize = 64;

/// Bitrates: a voice (mono) and the backing and the mix (stereo), bits/s. Music grade:
/// the recordings are kept and listened to.
const VOICE_BITRATE: i32 = 96_000;
const STEREO_BITRATE: i32 = 160_000;

/// Chunks kept while armed (2.56 s).
pub const ARMED_CHUNKS: usize = 128;

/// How long the thread waits for a command when no chunk is queued.
const IDLE: Duration = Duration::from_millis(20);

/// The mix's limiter: ceiling and look-ahead (its delay is taken back out).
const MIX_CEILING_DB: f32 = -1.0;
const MIX_LOOKAHEAD: Duration = Duration::from_micros(1_500);
const MIX_RELEASE: Duration = Duration::from_millis(80);

/// How far (frames, 1 ms) a voice's place may drift before its track is put back:
/// the jitter buffer's delay moves a little all the time, and every correction is a
/// small jump in the voice.
const REALIGN_FRAMES: i64 = 48;

/// A seat's part of a chunk: its singer, its voice, its jitter-buffer delay (frames).
type Seated<'a> = (Option<SingerId>, &'a [f32], u64);

/// 20 ms of every source, as rendered.
#[derive(Clone)]
pub struct RecordChunk {
    /// Mix time of the first frame.
    pub start: u64,
    /// Frames used (less than [`CHUNK_FRAMES`] when a seat changed hands mid-chunk).
    pub frames: usize,
    /// The backing, interleaved stereo.
    pub backing: [f32; 2 * CHUNK_FRAMES],
    /// Each seat's singer (`None`: free).
    pub singers: [Option<SingerId>; MAX_VOICES],
    /// Each seat's voice.
    pub voices: [[f32; CHUNK_FRAMES]; MAX_VOICES],
    /// Each seat's jitter-buffer delay when the chunk began, frames
    /// ([`crate::engine::PeriodSources::voice_delays`]).
    pub delays: [u32; MAX_VOICES],
}

impl RecordChunk {
    fn empty() -> RecordChunk {
        RecordChunk {
            start: 0,
            frames: 0,
            backing: [0.0; 2 * CHUNK_FRAMES],
            singers: [None; MAX_VOICES],
            voices: [[0.0; CHUNK_FRAMES]; MAX_VOICES],
            delays: [0; MAX_VOICES],
        }
    }
}

impl Default for RecordChunk {
    fn default() -> Self {
        RecordChunk::empty()
    }
}

/// What the audio thread and the recorder share.
#[derive(Clone)]
pub struct RecordLink {
    /// Chunks from the audio thread.
    pub chunks: Arc<ArrayQueue<RecordChunk>>,
    /// Set while a recording runs (the audio thread stages only then).
    pub on: Arc<AtomicBool>,
    /// Counters.
    pub counters: Arc<RecordCounters>,
}

impl RecordLink {
    /// A link with its queue (allocated here, once).
    pub fn new() -> RecordLink {
        RecordLink {
            chunks: Arc::new(ArrayQueue::new(QUEUE_CHUNKS)),
            on: Arc::new(AtomicBool::new(false)),
            counters: Arc::default(),
        }
    }
}

impl Default for RecordLink {
    fn default() -> Self {
        RecordLink::new()
    }
}

/// Counters of the recording path.
#[derive(Debug, Default)]
pub struct RecordCounters {
    /// Chunks dropped because the queue was full (filled with silence).
    pub dropped: AtomicU64,
}

/// The audio thread's staging: fills a chunk period by period. Fixed memory.
pub struct RecordStage {
    chunk: Box<RecordChunk>,
}

impl RecordStage {
    /// A stage (allocates its one chunk).
    pub fn new() -> RecordStage {
        RecordStage {
            chunk: Box::new(RecordChunk::empty()),
        }
    }

    /// Adds a period's sources while `link.on`; pushes each full chunk (or one cut
    /// short by a seat changing hands). Never blocks or allocates.
    pub fn add(&mut self, link: &RecordLink, sources: &PeriodSources<'_>) {
        if !link.on.load(Ordering::Relaxed) {
            self.chunk.frames = 0;
            return;
        }
        let frames = sources.backing.len() / 2;
        let mut done = 0;
        while done < frames {
            let chunk = &mut self.chunk;
            if chunk.frames > 0 {
                let changed = sources
                    .voices()
                    .take(MAX_VOICES)
                    .enumerate()
                    .any(|(k, (singer, _))| chunk.singers[k] != singer);
                if changed {
                    self.push(link);
                }
            }
            let chunk = &mut self.chunk;
            if chunk.frames == 0 {
                chunk.start = sources.start + done as u64;
                chunk.singers = [None; MAX_VOICES];
                for (k, (singer, _)) in sources.voices().take(MAX_VOICES).enumerate() {
                    chunk.singers[k] = singer;
                }
                for (k, delay) in sources.voice_delays().take(MAX_VOICES).enumerate() {
                    chunk.delays[k] = delay;
                }
            }
            let take = (CHUNK_FRAMES - chunk.frames).min(frames - done);
            let at = chunk.frames;
            chunk.backing[2 * at..2 * (at + take)]
                .copy_from_slice(&sources.backing[2 * done..2 * (done + take)]);
            for (k, (singer, voice)) in sources.voices().take(MAX_VOICES).enumerate() {
                if singer.is_some() {
                    chunk.voices[k][at..at + take].copy_from_slice(&voice[done..done + take]);
                }
            }
            chunk.frames += take;
            done += take;
            if chunk.frames == CHUNK_FRAMES {
                self.push(link);
            }
        }
    }

    fn push(&mut self, link: &RecordLink) {
        if link.chunks.push((*self.chunk).clone()).is_err() {
            link.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.chunk.frames = 0;
    }
}

impl Default for RecordStage {
    fn default() -> Self {
        RecordStage::new()
    }
}

/// One voice of a recording.
#[derive(Clone, Debug, PartialEq)]
pub struct VoicePlan {
    /// Whose.
    pub singer: SingerId,
    /// The file name's part for it (already safe: the caller makes it).
    pub label: String,
    /// How much later in the rendered stream the voice sits than the backing it was
    /// sung to, frames, less the box's jitter buffer (which each chunk says, as it
    /// moves).
    pub shift_frames: u64,
    /// Its gain and pan in the mix.
    pub gain_db: f32,
    /// -1 (left) to 1 (right).
    pub pan: f32,
}

/// A recording to make.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// The directory it goes in (created by the recorder).
    pub dir: PathBuf,
    /// The song's title and artist (tags).
    pub title: String,
    /// See `title`.
    pub artist: String,
    /// Mix time of the song's first frame as the speakers got it.
    pub start: u64,
    /// Its voices.
    pub voices: Vec<VoicePlan>,
}

/// What the room asks of the recorder.
#[derive(Clone, Debug, PartialEq)]
pub enum RecorderCommand {
    /// A song is about to start: stage chunks from now on and keep the last
    /// [`ARMED_CHUNKS`] until its session starts (which takes those from its start on),
    /// so its first frames are not lost to the time it takes to know where it starts.
    Arm,
    /// Starts recording `Session` (ending any running one first).
    Start(Session),
    /// Ends the running recording: every track is padded to the backing's length,
    /// closed and synced.
    Stop,
    /// A voice of the running recording is now this far behind the backing it was
    /// sung to ([`VoicePlan::shift_frames`]): its track follows from the next chunk on,
    /// put back like a moved jitter buffer (past [`REALIGN_FRAMES`]).
    Shift {
        /// The voice.
        singer: SingerId,
        /// Its new shift, frames.
        shift_frames: u64,
    },
}

/// What the recorder tells the room.
#[derive(Clone, Debug, PartialEq)]
pub enum RecorderEvent {
    /// A recording is complete: its directory and file names.
    Finished {
        /// The directory.
        dir: PathBuf,
        /// The files in it.
        files: Vec<String>,
        /// Its length, frames.
        frames: u64,
    },
    /// A recording stopped early: what went wrong (a full disk). The music went on.
    Failed {
        /// The directory.
        dir: PathBuf,
        /// Why, for the host.
        reason: String,
    },
}

/// The recorder thread's handle.
pub struct Recorder {
    commands: Sender<RecorderCommand>,
    join: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Starts the thread on `link`; it hands each event to `events`.
    pub fn spawn(
        link: RecordLink,
        events: impl Fn(RecorderEvent) + Send + 'static,
    ) -> std::io::Result<Recorder> {
        let (commands, rx) = std::sync::mpsc::channel();
        let join = std::thread::Builder::new()
            .name("duetbox-recorder".into())
            .spawn(move || {
                if let Err(e) = crate::audio::make_background() {
                    tracing::debug!(error = %e, "the recorder keeps the usual priority");
                }
                run(link, rx, events)
            })?;
        Ok(Recorder {
            commands,
            join: Some(join),
        })
    }

    /// Hands the thread a command.
    pub fn send(&self, command: RecorderCommand) {
        // The thread ends only when this handle is dropped.
        let _ = self.commands.send(command);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.commands.send(RecorderCommand::Stop);
        let (dead, _) = std::sync::mpsc::channel();
        self.commands = dead;
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

fn run(link: RecordLink, commands: Receiver<RecorderCommand>, events: impl Fn(RecorderEvent)) {
    let mut current: Option<Recording> = None;
    // Armed: the chunks since, until a session starts.
    let mut early: Option<VecDeque<RecordChunk>> = None;
    loop {
        let command = if link.chunks.is_empty() {
            match commands.recv_timeout(IDLE) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            commands.try_recv().ok()
        };
        // Chunks first: those queued before a Stop belong to the recording it ends.
        drain(&link, &mut current, &mut early, &events);
        match command {
            Some(RecorderCommand::Arm) => {
                // Grows as chunks come (a report later, a handful; at most
                // ARMED_CHUNKS), not 5 MB at once.
                early = Some(VecDeque::new());
                link.on.store(true, Ordering::Relaxed);
            }
            Some(RecorderCommand::Start(session)) => {
                if let Some(rec) = current.take() {
                    events(rec.finish());
                }
                match Recording::start(session.clone()) {
                    Ok(mut rec) => {
                        let mut failed = None;
                        for chunk in early.take().unwrap_or_default() {
                            if let Err(err) = rec.add(&chunk) {
                                failed = Some(err);
                                break;
                            }
                        }
                        match failed {
                            None => {
                                current = Some(rec);
                                link.on.store(true, Ordering::Relaxed);
                            }
                            Some(err) => {
                                link.on.store(false, Ordering::Relaxed);
                                events(rec.failed(&err));
                            }
                        }
                    }
                    Err(err) => {
                        early = None;
                        link.on.store(false, Ordering::Relaxed);
                        events(RecorderEvent::Failed {
                            reason: describe(&err),
                            dir: session.dir,
                        });
                    }
                }
            }
            Some(RecorderCommand::Shift {
                singer,
                shift_frames,
            }) => {
                if let Some(rec) = current.as_mut() {
                    rec.shift(singer, shift_frames);
                }
            }
            Some(RecorderCommand::Stop) => {
                link.on.store(false, Ordering::Relaxed);
                drain(&link, &mut current, &mut early, &events);
                early = None;
                if let Some(rec) = current.take() {
                    events(rec.finish());
                }
            }
            None => {}
        }
    }
    if let Some(rec) = current.take() {
        events(rec.finish());
    }
}

/// Hands every queued chunk to the running recording, or keeps it while armed; a
/// write error ends the recording (the stage stops staging) and says why.
fn drain(
    link: &RecordLink,
    current: &mut Option<Recording>,
    early: &mut Option<VecDeque<RecordChunk>>,
    events: &impl Fn(RecorderEvent),
) {
    while let Some(chunk) = link.chunks.pop() {
        let Some(rec) = current.as_mut() else {
            if let Some(kept) = early.as_mut() {
                if kept.len() == ARMED_CHUNKS {
                    kept.pop_front();
                }
                kept.push_back(chunk);
            }
            continue;
        };
        if let Err(err) = rec.add(&chunk) {
            let rec = current.take().expect("running");
            link.on.store(false, Ordering::Relaxed);
            events(rec.failed(&err));
        }
    }
}

/// A disk error as the host reads it.
fn describe(err: &std::io::Error) -> String {
    if err.raw_os_error() == Some(libc::ENOSPC) {
        "the disk is full: recording stopped (the music plays on)".into()
    } else {
        format!("recording stopped: {err}")
    }
}

/// One voice while recording.
struct VoiceTrack {
    plan: VoicePlan,
    track: OpusTrack,
    file: String,
    /// Song frames of this voice handed to its track so far.
    emitted: u64,
    /// Its jitter buffer's delay in the last chunk that had it, frames.
    delay: u64,
    /// Shifted samples not yet in the mix.
    pending: VecDeque<f32>,
    gains: (f32, f32),
}

/// A running recording.
struct Recording {
    session: Session,
    backing: OpusTrack,
    mix: OpusTrack,
    voices: Vec<VoiceTrack>,
    /// Backing frames not yet in the mix, interleaved.
    backing_pending: VecDeque<f32>,
    /// The next mix time expected (a gap is silence).
    next: u64,
    limiter: Limiter,
    /// Limiter output frames still to drop (its look-ahead).
    limiter_skip: usize,
    scratch: Vec<f32>,
}

impl Recording {
    /// Moves a voice's place (see [`RecorderCommand::Shift`]).
    fn shift(&mut self, singer: SingerId, shift_frames: u64) {
        if let Some(voice) = self.voices.iter_mut().find(|v| v.plan.singer == singer) {
            voice.plan.shift_frames = shift_frames;
        }
    }

    fn start(session: Session) -> std::io::Result<Recording> {
        std::fs::create_dir_all(&session.dir)?;
        let tags = [
            ("TITLE", session.title.as_str()),
            ("ARTIST", session.artist.as_str()),
        ];
        let backing =
            OpusTrack::create(&session.dir.join("backing.opus"), 2, STEREO_BITRATE, &tags)?;
        let mix = OpusTrack::create(&session.dir.join("mix.opus"), 2, STEREO_BITRATE, &tags)?;
        let mut voices = Vec::new();
        for plan in &session.voices {
            let file = format!("voice-{}.opus", plan.label);
            let track = OpusTrack::create(&session.dir.join(&file), 1, VOICE_BITRATE, &tags)?;
            let (l, r) = mixer::pan_gains(plan.pan);
            let gain = mixer::db_to_gain(plan.gain_db);
            voices.push(VoiceTrack {
                emitted: 0,
                delay: 0,
                plan: plan.clone(),
                track,
                file,
                pending: VecDeque::new(),
                gains: (l * gain, r * gain),
            });
        }
        let limiter = Limiter::new(SAMPLE_RATE_HZ, MIX_CEILING_DB, MIX_LOOKAHEAD, MIX_RELEASE);
        let limiter_skip = limiter.latency_frames();
        Ok(Recording {
            next: session.start,
            session,
            backing,
            mix,
            voices,
            backing_pending: VecDeque::new(),
            limiter,
            limiter_skip,
            scratch: Vec::new(),
        })
    }

    /// Takes one chunk (the part from the song's start on).
    fn add(&mut self, chunk: &RecordChunk) -> std::io::Result<()> {
        let end = chunk.start + chunk.frames as u64;
        if end <= self.next {
            return Ok(());
        }
        if chunk.start > self.next {
            // A chunk was dropped: silence keeps every track in place.
            let gap = (chunk.start - self.next) as usize;
            self.add_frames(&vec![0.0; 2 * gap], &[])?;
            self.next = chunk.start;
        }
        let from = (self.next - chunk.start) as usize;
        let seats: Vec<Seated<'_>> = chunk
            .singers
            .iter()
            .zip(&chunk.voices)
            .zip(chunk.delays)
            .map(|((s, v), delay)| (*s, &v[from..chunk.frames], u64::from(delay)))
            .collect();
        self.add_frames(&chunk.backing[2 * from..2 * chunk.frames], &seats)?;
        self.next = end;
        Ok(())
    }

    /// Appends backing frames (rendered from `self.next` on) and each seat's voice for
    /// them (a voice not seated is silence). Each voice is placed on the song's
    /// timeline by its shift: the plan's, plus its jitter buffer's delay now. While
    /// that moves less than [`REALIGN_FRAMES`] the voice runs on unbroken; beyond, its
    /// track drops what it already has or pads silence up to where it belongs.
    fn add_frames(&mut self, backing: &[f32], seats: &[Seated<'_>]) -> std::io::Result<()> {
        let frames = backing.len() / 2;
        self.backing.push(backing)?;
        self.backing_pending.extend(backing.iter().copied());
        let zeros = vec![0.0; frames];
        let rendered = self.next as i64 - self.session.start as i64;
        for voice in &mut self.voices {
            let (offered, delay) = seats
                .iter()
                .find(|(s, _, _)| *s == Some(voice.plan.singer))
                .map_or((zeros.as_slice(), voice.delay), |(_, v, d)| (*v, *d));
            voice.delay = delay;
            // The song frame the first offered sample was sung at, against where the
            // track is.
            let at = rendered - (voice.plan.shift_frames + delay) as i64;
            let ahead = at - voice.emitted as i64;
            let mut kept = offered;
            if ahead > REALIGN_FRAMES || voice.emitted == 0 && ahead > 0 {
                let pad = vec![0.0; ahead as usize];
                voice.track.push(&pad)?;
                voice.pending.extend(pad);
                voice.emitted += ahead as u64;
            } else if ahead < -REALIGN_FRAMES || voice.emitted == 0 && ahead < 0 {
                let drop = (-ahead as usize).min(offered.len());
                kept = &offered[drop..];
            }
            voice.track.push(kept)?;
            voice.pending.extend(kept.iter().copied());
            voice.emitted += kept.len() as u64;
        }
        self.mix_ready(false)
    }

    /// Mixes what every source has; at the end, what the backing has (voices padded).
    fn mix_ready(&mut self, end: bool) -> std::io::Result<()> {
        let backing_frames = self.backing_pending.len() / 2;
        let frames = if end {
            backing_frames
        } else {
            self.voices
                .iter()
                .map(|v| v.pending.len())
                .fold(backing_frames, usize::min)
        };
        if frames == 0 {
            return Ok(());
        }
        self.scratch.clear();
        self.scratch
            .extend(self.backing_pending.drain(..2 * frames));
        for voice in &mut self.voices {
            let (l, r) = voice.gains;
            let n = voice.pending.len().min(frames);
            for (k, s) in voice.pending.drain(..n).enumerate() {
                self.scratch[2 * k] += s * l;
                self.scratch[2 * k + 1] += s * r;
            }
        }
        if end {
            // The limiter's look-ahead still holds the last frames: push them out.
            self.scratch
                .extend(std::iter::repeat_n(0.0, 2 * self.limiter.latency_frames()));
        }
        self.limiter.process(&mut self.scratch);
        let skip = self.limiter_skip.min(self.scratch.len() / 2);
        self.limiter_skip -= skip;
        let out = &self.scratch[2 * skip..];
        self.mix.push(out)
    }

    /// Pads every voice to the backing's length and closes all tracks.
    fn finish(mut self) -> RecorderEvent {
        let dir = self.session.dir.clone();
        let frames = self.next - self.session.start;
        match self.close() {
            Ok(files) => RecorderEvent::Finished { dir, files, frames },
            Err(err) => RecorderEvent::Failed {
                reason: describe(&err),
                dir,
            },
        }
    }

    fn close(&mut self) -> std::io::Result<Vec<String>> {
        let length = self.backing.len();
        for voice in &mut self.voices {
            let missing = length.saturating_sub(voice.track.len());
            voice.track.push_silence(missing as usize)?;
        }
        self.mix_ready(true)?;
        let mut files = vec!["mix.opus".to_string(), "backing.opus".to_string()];
        self.backing.finish()?;
        self.mix.finish()?;
        for voice in &mut self.voices {
            voice.track.finish()?;
            files.push(voice.file.clone());
        }
        Ok(files)
    }

    fn failed(self, err: &std::io::Error) -> RecorderEvent {
        RecorderEvent::Failed {
            dir: self.session.dir,
            reason: describe(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{BackingAudio, Command, Engine, EngineConfig, SingerSettings};

    const ANA: SingerId = SingerId(1);
    const BEN: SingerId = SingerId(2);

    /// A chunk at `start` whose backing and voices come from `backing(t)` and
    /// `voice(singer, t)` (t: mix time of each frame).
    fn chunk(
        start: u64,
        singers: &[SingerId],
        backing: impl Fn(u64) -> f32,
        voice: impl Fn(SingerId, u64) -> f32,
    ) -> RecordChunk {
        let mut c = RecordChunk::empty();
        c.start = start;
        c.frames = CHUNK_FRAMES;
        for k in 0..CHUNK_FRAMES {
            let t = start + k as u64;
            c.backing[2 * k] = backing(t);
            c.backing[2 * k + 1] = backing(t);
            for (seat, &s) in singers.iter().enumerate() {
                c.voices[seat][k] = voice(s, t);
            }
        }
        for (seat, &s) in singers.iter().enumerate() {
            c.singers[seat] = Some(s);
        }
        c
    }

    /// A 2 ms click (0.5) where `t` is in `[at, at + 96)`.
    fn click(t: u64, at: u64) -> f32 {
        if (at..at + 96).contains(&t) {
            0.5
        } else {
            0.0
        }
    }

    /// The decoded left channel of an Ogg Opus file, its pre-skip dropped.
    fn decode(path: &std::path::Path) -> Vec<f32> {
        let file = std::fs::File::open(path).expect("open");
        let mut reader = ogg::reading::PacketReader::new(std::io::BufReader::new(file));
        let head = reader.read_packet_expected().expect("head").data;
        reader.read_packet_expected().expect("tags");
        let channels = usize::from(head[9]);
        let pre_skip = usize::from(u16::from_le_bytes([head[10], head[11]]));
        let layout = if channels == 1 {
            opus::Channels::Mono
        } else {
            opus::Channels::Stereo
        };
        let mut decoder = opus::Decoder::new(SAMPLE_RATE_HZ, layout).expect("decoder");
        let mut left = Vec::new();
        let mut granule = 0;
        while let Some(p) = reader.read_packet().expect("page") {
            granule = p.absgp_page();
            if p.data.is_empty() {
                continue;
            }
            let mut out = vec![0.0; 960 * channels];
            let n = decoder
                .decode_float(&p.data, &mut out, false)
                .expect("decode");
            left.extend(out[..n * channels].iter().step_by(channels));
        }
        let end = (granule as usize).min(left.len());
        left[pre_skip..end].to_vec()
    }

    fn onset(samples: &[f32]) -> Option<usize> {
        samples.iter().position(|v| v.abs() > 0.2)
    }

    fn session(dir: &std::path::Path, start: u64, shifts: [u64; 2]) -> Session {
        let plan = |singer, label: &str, shift_frames| VoicePlan {
            singer,
            label: label.into(),
            shift_frames,
            gain_db: 0.0,
            pan: 0.0,
        };
        Session {
            dir: dir.to_path_buf(),
            title: "Marked".into(),
            artist: "Test".into(),
            start,
            voices: vec![plan(ANA, "A-ana", shifts[0]), plan(BEN, "B-ben", shifts[1])],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("duetbox-record-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_voice_follows_its_jitter_buffer_as_it_grows_and_shrinks() {
        let dir = temp_dir("buffer");
        // Ana's voice reaches the mixer 2_000 frames after she sang, plus her jitter
        // buffer: 720 frames (15 ms) for the first beat, 2_400 (50 ms) for the second,
        // 1_200 (25 ms) for the third. She sang a click on each beat, a second apart.
        let start = 10_000;
        let beats = [start + 24_000, start + 72_000, start + 120_000];
        let buffer = |t: u64| match t {
            t if t < start + 48_000 => 720,
            t if t < start + 96_000 => 2_400,
            _ => 1_200,
        };
        let mut rec = Recording::start(session(&dir, start, [2_000, 2_000])).expect("start");
        let mut t = start;
        while t < start + 144_000 {
            let mut c = chunk(
                t,
                &[ANA],
                |t| beats.iter().map(|&b| click(t, b)).sum(),
                |_, t| beats.iter().map(|&b| click(t, b + 2_000 + buffer(b))).sum(),
            );
            c.delays[0] = buffer(t) as u32;
            rec.add(&c).expect("add");
            t += CHUNK_FRAMES as u64;
        }
        let RecorderEvent::Finished { files, frames, .. } = rec.finish() else {
            panic!("finished");
        };
        let voice = decode(&dir.join(&files[2]));
        assert_eq!(voice.len() as u64, frames, "as long as the song");
        for &b in &beats {
            let song = (b - start) as usize;
            let at = onset(&voice[song - 2_400..]).map(|k| k + song - 2_400);
            assert!(
                at.is_some_and(|at| at.abs_diff(song) <= 48 + 24),
                "the click sung on the beat at {song} is at {at:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_voice_is_shifted_onto_the_beat_it_was_sung_to_and_a_lost_chunk_keeps_the_place() {
        let dir = temp_dir("align");
        // The song starts at mix time 10_000. Its beat: a click at song frame 24_000.
        // Ana's voice reaches the mixer 3_000 frames (62.5 ms) after she sang it, Ben's
        // 7_200 (150 ms): each sang a click on that beat.
        let start = 10_000;
        let beat = start + 24_000;
        let mut rec = Recording::start(session(&dir, start, [3_000, 7_200])).expect("start");
        let backing = |t| click(t, beat);
        let voice = |s, t| match s {
            ANA => click(t, beat + 3_000),
            _ => click(t, beat + 7_200),
        };
        // Chunks from before the song's start on; the one at 28_240 (song frame 18_240)
        // never arrives.
        let mut t = 9_040;
        while t < start + 48_000 {
            if t != 28_240 {
                rec.add(&chunk(t, &[ANA, BEN], backing, voice))
                    .expect("add");
            }
            t += CHUNK_FRAMES as u64;
        }
        let event = rec.finish();
        let RecorderEvent::Finished { files, frames, .. } = event else {
            panic!("finished: {event:?}");
        };
        assert_eq!(
            files,
            [
                "mix.opus",
                "backing.opus",
                "voice-A-ana.opus",
                "voice-B-ben.opus"
            ]
        );
        let length = frames as usize;
        let tracks: Vec<(String, Vec<f32>)> = files
            .iter()
            .map(|f| (f.clone(), decode(&dir.join(f))))
            .collect();
        for (name, pcm) in &tracks {
            assert_eq!(pcm.len(), length, "{name} is as long as the song recorded");
            let at = onset(pcm).unwrap_or_else(|| panic!("{name} has the click"));
            assert!(
                at.abs_diff(24_000) <= 24,
                "{name}: the click at song frame {at}, the beat at 24000"
            );
        }
        // ffmpeg (what a listener's player stands for) reads every file to the same
        // length: the granules trim the encoder's lookahead and the pad.
        for (name, _) in &tracks {
            let out = std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-i"])
                .arg(dir.join(name))
                .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
                .output()
                .expect("ffmpeg runs (scripts/setup.sh installs it)");
            assert!(out.status.success(), "ffmpeg reads {name}: {out:?}");
            assert_eq!(out.stdout.len() / 4, length, "ffmpeg's length of {name}");
        }
        // In the mix the three clicks are one: on the beat, and nothing after.
        let mix = &tracks[0].1;
        assert!(
            onset(&mix[24_000 + 480..]).is_none(),
            "the mix has one click, not three"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_thread_records_what_the_stage_hands_it_and_a_full_disk_stops_only_the_recording() {
        // A real engine renders a ramp as backing; the stage cuts it into chunks; the
        // recorder writes them.
        let period = 240;
        let mut engine = Engine::new(EngineConfig {
            period_samples: period,
            ..EngineConfig::default()
        });
        engine.handle_command(Command::Backing {
            generation: 1,
            paused: false,
        });
        engine.handle_command(Command::SetBacking {
            gain_db: 0.0,
            muted: false,
        });
        engine.handle_command(Command::AddSinger {
            singer: ANA,
            settings: SingerSettings::default(),
        });
        let link = RecordLink::new();
        let (events_tx, events) = std::sync::mpsc::channel();
        let recorder = Recorder::spawn(link.clone(), move |e| {
            let _ = events_tx.send(e);
        })
        .expect("spawn");
        let dir = temp_dir("thread");
        // Armed when the song opens; its session (where it starts) follows 200 ms
        // later, as the control task learns it from a report.
        recorder.send(RecorderCommand::Arm);
        while !link.on.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        let mut stage = RecordStage::new();
        let mut venue = vec![0.0; 2 * period];
        let tone: Vec<f32> = (0..2 * 48_000)
            .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * (i / 2) as f32 / 48_000.0).sin())
            .collect();
        let mut pushed = 0;
        for n in 0..200u64 {
            while engine.backing_queued() < engine.backing_wanted() && pushed < tone.len() {
                let take = 2_000.min(tone.len() - pushed);
                engine.push_backing(BackingAudio {
                    generation: 1,
                    position: (pushed / 2) as u64,
                    samples: &tone[pushed..pushed + take],
                    last: false,
                });
                pushed += take;
            }
            engine.render_period(Duration::from_micros(n * 5_000), &mut venue);
            stage.add(&link, &engine.period_sources());
            if n == 40 {
                recorder.send(RecorderCommand::Start(session(&dir, 0, [0, 0])));
            }
            while link.chunks.len() > QUEUE_CHUNKS / 2 {
                std::thread::yield_now();
            }
        }
        recorder.send(RecorderCommand::Stop);
        let event = events
            .recv_timeout(Duration::from_secs(10))
            .expect("an event");
        let RecorderEvent::Finished { frames, .. } = event else {
            panic!("finished: {event:?}");
        };
        assert_eq!(frames, 200 * period as u64, "every rendered frame");
        let backing = decode(&dir.join("backing.opus"));
        for (from, to) in [(480, 4_800), (4_800, 43_200)] {
            let level = crate::engine::testkit::tone_level(&backing[from..to], 440.0);
            assert!(
                (0.25..=0.35).contains(&level),
                "the backing's tone from {from} (kept while armed) to {to}: {level}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();

        // A recording into a full disk: the thread says why and records nothing more.
        let full = PathBuf::from("/dev/full/nowhere");
        recorder.send(RecorderCommand::Start(session(&full, 0, [0, 0])));
        let event = events
            .recv_timeout(Duration::from_secs(10))
            .expect("an event");
        assert!(
            matches!(&event, RecorderEvent::Failed { .. }),
            "a directory that cannot be made fails: {event:?}"
        );
        assert!(!link.on.load(Ordering::Relaxed), "the stage stays off");
        assert_eq!(link.counters.dropped.load(Ordering::Relaxed), 0);
    }
}
