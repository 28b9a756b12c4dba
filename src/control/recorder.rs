//! The control task's side of recording every song: it turns the room's
//! [`RecordPlan`]s into the recorder thread's sessions (`crate::record`), names them,
//! keeps the newest `songs.recordings_kept`, and turns the thread's events into the
//! room's [`RecordingNews`].
//!
//! Timing. A plan arrives when the song is open, before its first frame is rendered.
//! The session starts once the audio thread's report shows the plan's generation
//! playing: the song's first frame (after the count-in) is at the reported mix time
//! less the reported position plus the count-in. Each voice is shifted by how much
//! later than the backing it was sung to it reaches the mix (stage mode: the singer
//! follows the speakers):
//!
//! ```text
//! shift = speakers behind the render (limiter, bridge, device, speaker path)
//!       + the phone's capture latency (its calibration; 0 when it made none)
//!       + one of its Opus packets (the packet's first sample waits for its last; 20 ms
//!         until one is decoded)
//!       + the network's fastest one-way time (its sender reports against the page's
//!         wall clock; 0 until both are in)
//!       + the phone encoder's look-ahead (6.5 ms)
//!       + the box's jitter buffer for the voice, as it moves (the recorder reads it
//!         with every chunk: `crate::record`)
//! ```
//!
//! The first three are the plan's `to_the_box` (`docs/sync.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::recording::{RecordPlan, RecordingNews};
use super::room::PeerId;
use super::SongClock;
use crate::engine::{frames_in, SAMPLE_RATE_HZ};
use crate::record::{RecordLink, Recorder, RecorderCommand, RecorderEvent, Session, VoicePlan};

/// A plan whose song started longer ago than this (in mix time) when the report shows
/// it records from the report on instead of from the song's first frame: its start is
/// gone from the audio thread's chunks anyway.
const START_WITHIN_FRAMES: u64 = SAMPLE_RATE_HZ as u64;

/// Longest part of a singer's name in a file name.
const LABEL_NAME_CHARS: usize = 24;

/// Where the recordings go and how many are kept.
#[derive(Clone, Debug)]
pub struct RecordTo {
    /// The folder (made when the first recording starts).
    pub dir: PathBuf,
    /// The newest this many are kept.
    pub kept: usize,
}

/// A session handed to the recorder thread, until its event comes back.
struct Started {
    dir: PathBuf,
    id: String,
    plan: RecordPlan,
}

/// The recorder and what it is doing. See the module docs.
pub struct SongRecorder {
    to: RecordTo,
    recorder: Recorder,
    events: mpsc::UnboundedReceiver<RecorderEvent>,
    /// The plan waiting for its song's first report.
    pending: Option<RecordPlan>,
    started: Vec<Started>,
    /// The speakers behind the render when the recording running started, frames
    /// (each voice's shift counts it: see the module docs).
    speakers: Option<u64>,
}

impl SongRecorder {
    /// Starts the recorder thread on the audio thread's `link`.
    pub fn spawn(to: RecordTo, link: RecordLink) -> std::io::Result<SongRecorder> {
        let (tx, events) = mpsc::unbounded_channel();
        let recorder = Recorder::spawn(link, move |event| {
            let _ = tx.send(event);
        })?;
        Ok(SongRecorder {
            to,
            recorder,
            events,
            pending: None,
            started: Vec::new(),
            speakers: None,
        })
    }

    /// Records `plan` from its song's first frame (see [`SongRecorder::follow`]),
    /// ending the recording running.
    pub fn start(&mut self, plan: RecordPlan) {
        self.stop();
        // The song is open and about to play: the audio thread stages from now on.
        self.recorder.send(RecorderCommand::Arm);
        self.pending = Some(plan);
    }

    /// Ends the recording running (its event follows).
    pub fn stop(&mut self) {
        self.pending = None;
        self.speakers = None;
        self.recorder.send(RecorderCommand::Stop);
    }

    /// A voice's place moved (`Action::RecordShift`): the plan waiting takes it, the
    /// recording running follows it.
    pub fn shift(&mut self, peer: PeerId, to_the_box: Duration) {
        if let Some(plan) = self.pending.as_mut() {
            if let Some(v) = plan.voices.iter_mut().find(|v| v.peer == peer) {
                v.to_the_box = to_the_box;
            }
        } else if let Some(speakers) = self.speakers {
            self.recorder.send(RecorderCommand::Shift {
                singer: peer.singer(),
                shift_frames: speakers + frames_in(to_the_box),
            });
        }
    }

    /// Starts the pending plan once `clock` shows its song playing.
    pub fn follow(&mut self, clock: &SongClock) {
        let Some(plan) = self.pending.as_ref() else {
            return;
        };
        let start = if clock.generation == plan.generation && clock.playing {
            (clock.mix_time + frames_in(plan.count_in)).saturating_sub(clock.position)
        } else if clock.generation > plan.generation {
            // Moved (a seek) before a report showed it: from here on.
            clock.mix_time
        } else {
            return;
        };
        let start = if start + START_WITHIN_FRAMES < clock.mix_time {
            clock.mix_time
        } else {
            start
        };
        let plan = self.pending.take().expect("checked above");
        let id = format!("{:032x}", rand::random::<u128>());
        let dir = self.to.dir.join(&id);
        let speakers = clock.speakers_behind_frames();
        self.speakers = Some(speakers);
        let voices = plan
            .voices
            .iter()
            .map(|v| VoicePlan {
                singer: v.peer.singer(),
                label: label(&v.slot.to_string(), &v.name),
                shift_frames: speakers + frames_in(v.to_the_box),
                gain_db: v.gain_db,
                pan: v.pan,
            })
            .collect();
        tracing::info!(
            entry = plan.entry.0,
            title = plan.title,
            recording = id,
            start,
            "recording the song"
        );
        self.recorder.send(RecorderCommand::Start(Session {
            dir: dir.clone(),
            title: plan.title.clone(),
            artist: plan.artist.clone(),
            start,
            voices,
        }));
        self.started.push(Started { dir, id, plan });
    }

    /// The recorder thread's next event.
    pub async fn next_event(&mut self) -> Option<RecorderEvent> {
        self.events.recv().await
    }

    /// An event from the recorder thread, as news for the room (`None`: one of a
    /// session this side no longer knows). Prunes the oldest recordings.
    pub fn event(&mut self, event: RecorderEvent) -> Option<RecordingNews> {
        let dir = match &event {
            RecorderEvent::Finished { dir, .. } | RecorderEvent::Failed { dir, .. } => dir,
        };
        let at = self.started.iter().position(|s| &s.dir == dir)?;
        let Started { id, plan, .. } = self.started.remove(at);
        let news = match event {
            RecorderEvent::Finished { files, frames, .. } => {
                tracing::info!(
                    recording = id,
                    title = plan.title,
                    seconds = frames as f64 / f64::from(SAMPLE_RATE_HZ),
                    "recording finished"
                );
                RecordingNews::Finished {
                    entry: plan.entry,
                    id,
                    title: plan.title,
                    singers: plan.voices.iter().map(|v| v.peer).collect(),
                    files,
                    length: Duration::from_secs_f64(frames as f64 / f64::from(SAMPLE_RATE_HZ)),
                }
            }
            RecorderEvent::Failed { reason, .. } => {
                tracing::warn!(
                    recording = id,
                    title = plan.title,
                    reason,
                    "recording stopped"
                );
                RecordingNews::Failed {
                    entry: plan.entry,
                    title: plan.title,
                    reason,
                }
            }
        };
        let running: Vec<&Path> = self.started.iter().map(|s| s.dir.as_path()).collect();
        prune(&self.to.dir, self.to.kept, &running);
        Some(news)
    }
}

/// Whether `name` is a recording's folder name (its id: 32 lowercase hex digits).
pub fn is_recording_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A voice's file label: its slot and its singer's name, lowercase letters, digits and
/// `_` only (the name is the singer's own text).
pub fn label(slot: &str, name: &str) -> String {
    let mut out = slot.to_ascii_lowercase();
    out.push('-');
    let mut last_sep = true;
    let mut chars = 0;
    for c in name.chars().flat_map(char::to_lowercase) {
        if chars == LABEL_NAME_CHARS {
            break;
        }
        if c.is_ascii_alphanumeric() {
            out.push(c);
            last_sep = false;
            chars += 1;
        } else if !last_sep {
            out.push('_');
            last_sep = true;
            chars += 1;
        }
    }
    let trimmed = out.trim_end_matches('_').trim_end_matches('-').len();
    out.truncate(trimmed);
    if out.len() == slot.len() {
        out.push_str("-singer");
    }
    out
}

/// Removes all but the newest `kept` recordings in `dir` (never one in `running`).
fn prune(dir: &Path, kept: usize, running: &[&Path]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_recording_id))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(kept);
    for (_, path) in found.into_iter().take(excess) {
        if running.contains(&path.as_path()) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "old recording removed"),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove an old recording")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_safe_file_names() {
        assert_eq!(label("A", "Ana"), "a-ana");
        assert_eq!(label("B", "  Zoë & Max!! "), "b-zo_max");
        assert_eq!(label("A", "../../etc/passwd"), "a-etc_passwd");
        assert_eq!(label("C", "日本"), "c-singer");
        assert_eq!(label("A", &"x".repeat(100)).len(), 2 + LABEL_NAME_CHARS);
    }

    #[test]
    fn recording_ids_are_32_lowercase_hex_digits() {
        assert!(is_recording_id(&format!("{:032x}", 7u128)));
        assert!(!is_recording_id("0123456789abcdef0123456789ABCDEF"));
        assert!(!is_recording_id("../0123456789abcdef0123456789abcd"));
        assert!(!is_recording_id("abc"));
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_running_ones() {
        let dir = std::env::temp_dir().join(format!("duetbox-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ids: Vec<String> = (0..5u128).map(|k| format!("{k:032x}")).collect();
        for (k, id) in ids.iter().enumerate() {
            let d = dir.join(id);
            std::fs::create_dir_all(&d).unwrap();
            let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + k as u64);
            std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
        }
        std::fs::create_dir_all(dir.join("not-a-recording")).unwrap();
        let running = dir.join(&ids[0]);
        prune(&dir, 2, &[running.as_path()]);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let expected = [&ids[0], &ids[3], &ids[4], "not-a-recording"];
        assert_eq!(left, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
