//! Every song recorded, as the room sees it: which song is being recorded, the
//! recordings made (for their singers and the host to download) and why the last one
//! stopped, if it did. Pure like the night and the room that own it: the room follows
//! its transport here ([`Recordings::follow`]), the control task's recorder
//! (`control::recorder`) carries the plans out and its news comes back as
//! [`RecordingNews`].
//!
//! A recording follows a queue *entry*, not a generation: a seek or a pause inside the
//! song is part of its recording; the song ending, stopping, failing or another
//! starting ends it. A live backing (line-in, WHIP feed) is not recorded: it has no
//! song to name and no end.
//!
//! A recording's id is its download capability (128 random bits, made by the
//! recorder): it is shown only to the song's singers and the host, never in what every
//! phone sees.

use std::collections::VecDeque;
use std::time::Duration;

use super::night::{EntryId, NowPlaying, TransportState};
use super::room::{PeerId, SlotId};

/// Recordings the room lists (the newest; older ones stay on disk, by their link, as
/// long as the retention keeps them).
pub const LISTED: usize = 20;

/// One voice to record.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordVoice {
    /// The singer.
    pub peer: PeerId,
    /// Their name (for the file's name).
    pub name: String,
    /// Their slot.
    pub slot: SlotId,
    /// The slot's gain in the mix, dB.
    pub gain_db: f32,
    /// The slot's pan, -1..=1.
    pub pan: f32,
    /// From a sound reaching the phone's microphone to its packet reaching the box
    /// (capture, one phone packet, the network's one-way time; what was not measured
    /// counts as none), and for an in-ear song how late the phone plays against the
    /// stage timeline (the singer sings to it). The box's jitter buffer comes after.
    /// The room tells the recording running when it moves (`Action::RecordShift`).
    pub to_the_box: Duration,
}

/// A song to record: what the room knows (the recorder adds where it starts in the mix
/// and how late each voice arrives).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordPlan {
    /// The entry.
    pub entry: EntryId,
    /// The transport generation it starts with.
    pub generation: u32,
    /// The song's title and artist.
    pub title: String,
    /// See `title`.
    pub artist: String,
    /// The count-in before the song's first frame (not recorded).
    pub count_in: Duration,
    /// The singers on stage for it.
    pub voices: Vec<RecordVoice>,
}

/// What the recorder tells the room.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordingNews {
    /// A recording is complete.
    Finished {
        /// The entry it recorded.
        entry: EntryId,
        /// Its id (the download capability).
        id: String,
        /// The song's title.
        title: String,
        /// Its singers.
        singers: Vec<PeerId>,
        /// Its files.
        files: Vec<String>,
        /// Its length.
        length: Duration,
    },
    /// A recording stopped early (or never started), and why; the music went on.
    Failed {
        /// The entry.
        entry: EntryId,
        /// The song's title.
        title: String,
        /// Why, for the host.
        reason: String,
    },
}

/// A recording made.
#[derive(Clone, Debug, PartialEq)]
pub struct Take {
    /// Its id (the download capability).
    pub id: String,
    /// The song's title.
    pub title: String,
    /// Its singers and their names (as they were when it finished).
    pub singers: Vec<(PeerId, String)>,
    /// Its files.
    pub files: Vec<String>,
    /// Its length.
    pub length: Duration,
}

/// The recordings as the host (all) and the singers (their own) see them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordingsView {
    /// The song being recorded.
    pub now: Option<String>,
    /// Why the last recording stopped early, until one is made again.
    pub problem: Option<String>,
    /// The newest recordings, newest last.
    pub takes: Vec<Take>,
}

/// The room's part. See the module docs.
#[derive(Debug, Default)]
pub struct Recordings {
    on: bool,
    /// The entry being recorded, its title, and whether its recording failed (it is
    /// not started again).
    now: Option<(EntryId, String, bool)>,
    problem: Option<String>,
    takes: VecDeque<Take>,
}

/// What [`Recordings::follow`] asks of the room.
#[derive(Clone, Debug, PartialEq)]
pub enum Follow {
    /// Nothing changed.
    Same,
    /// End the recording running.
    Stop,
    /// End any recording running and start this one.
    Start(RecordPlan),
}

impl Recordings {
    /// Recordings made only when `on` (`songs.record`).
    pub fn new(on: bool) -> Recordings {
        Recordings {
            on,
            ..Recordings::default()
        }
    }

    /// Follows the transport: a new entry playing starts its recording (once it is
    /// open: a song that fails to load is not recorded), none playing ends it.
    /// `voices` is asked for the entry's singers on stage only when one starts.
    pub fn follow(
        &mut self,
        now: Option<&NowPlaying>,
        voices: impl FnOnce(&[PeerId]) -> Vec<RecordVoice>,
    ) -> Follow {
        let playing = now.filter(|n| self.on && n.state != TransportState::Loading);
        let entry = playing.map(|n| n.entry.id);
        if entry == self.now.as_ref().map(|(e, _, _)| *e) {
            return Follow::Same;
        }
        match playing {
            None => {
                self.now = None;
                Follow::Stop
            }
            Some(n) => {
                let song = &n.entry.song;
                self.now = Some((n.entry.id, song.title.clone(), false));
                Follow::Start(RecordPlan {
                    entry: n.entry.id,
                    generation: n.generation,
                    title: song.title.clone(),
                    artist: song.artist.clone().unwrap_or_default(),
                    count_in: n.count_in,
                    voices: voices(&n.entry.singers),
                })
            }
        }
    }

    /// The recorder's news; `name` gives a singer's name.
    pub fn news(&mut self, news: RecordingNews, name: impl Fn(PeerId) -> String) {
        match news {
            RecordingNews::Finished {
                id,
                title,
                singers,
                files,
                length,
                ..
            } => {
                if self.takes.len() == LISTED {
                    self.takes.pop_front();
                }
                self.problem = None;
                self.takes.push_back(Take {
                    id,
                    title,
                    singers: singers.into_iter().map(|p| (p, name(p))).collect(),
                    files,
                    length,
                });
            }
            RecordingNews::Failed {
                entry,
                title,
                reason,
            } => {
                if let Some((e, _, failed)) = self.now.as_mut() {
                    *failed |= *e == entry;
                }
                self.problem = Some(format!("{title}: {reason}"));
            }
        }
    }

    /// The view.
    pub fn view(&self) -> RecordingsView {
        RecordingsView {
            now: self
                .now
                .as_ref()
                .filter(|(_, _, failed)| !failed)
                .map(|(_, title, _)| title.clone()),
            problem: self.problem.clone(),
            takes: self.takes.iter().cloned().collect(),
        }
    }
}
