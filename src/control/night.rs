//! The karaoke night inside the room: the song queue and the backing transport. Pure
//! like the room that owns it (it is a part of [`super::room::Room`], split out to keep
//! each file about one thing): inputs in, the room turns its outcomes into actions.
//!
//! # Model
//!
//! The *queue* is a list of entries: a song from the library and its singers (the one
//! who added it, and for a duet a partner from the room). Entry ids are shown to all
//! and are no capability: only the host (or the panel) reorders, removes and starts
//! entries; a singer withdraws only an entry that names them.
//!
//! The *transport* plays one entry at a time. Every start, seek and stop takes a new
//! *generation*: the player decodes for it and the engine drops any audio of an older
//! one, so a seek or a next never plays stale audio. Feedback (opened, failed, ended,
//! position) counts only for the generation it names; late news of an older one is
//! ignored.
//!
//! A song that fails (unreadable, unsupported, corrupt) is recorded with its reason
//! for the host and the next entry starts. A song that ends stops the transport: the
//! host starts the next singers when they are ready.
//!
//! The *backing source* is the song files, the line-in (the venue's own player) or a
//! WHIP feed (a PC's audio sent in the `backing` role), one at a time, as the host
//! chooses. Choosing a live source stops the song and starts the source as a new
//! generation; while it plays, songs do not start (the queue still orders who sings
//! next). A line-in that fails is shown to the host (and tried again by its thread); a
//! WHIP feed that leaves hands the backing back to the songs.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use super::room::PeerId;
use crate::engine::{frames_in, SAMPLE_RATE_HZ};
use crate::songs::library::SongId;
use crate::songs::line_in::LineInCommand;
use crate::songs::player::PlayerCommand;

/// Entries the queue holds at most.
pub const MAX_QUEUE: usize = 200;
/// Entries one singer may have waiting at a time.
pub const MAX_ENTRIES_PER_SINGER: usize = 3;
/// Failures kept for the host to read.
pub const MAX_PROBLEMS: usize = 10;

/// A queue entry's id (shown to all; no capability).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u32);

/// A song as the room needs it (the surface looked it up in the library).
#[derive(Clone, Debug, PartialEq)]
pub struct SongRef {
    /// Library id.
    pub id: SongId,
    /// Title.
    pub title: String,
    /// Artist.
    pub artist: Option<String>,
    /// The file to play (from the library's own index, never from a client).
    pub path: PathBuf,
    /// Length, when known.
    pub duration: Option<Duration>,
}

/// One entry of the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Its id.
    pub id: EntryId,
    /// The song.
    pub song: SongRef,
    /// Its singers, the one who added it first.
    pub singers: Vec<PeerId>,
    /// Whom its singers follow: the speakers or their phones (the host picks).
    pub mode: SyncMode,
}

/// Whom the singers of a song follow (`docs/sync.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// The speakers: the phones play in time with them; each voice reaches the
    /// speakers one uplink late.
    #[default]
    Stage,
    /// Their phones, in headphones: the speakers hold the backing (and every faster
    /// voice) back until the slowest voice arrives, so the venue hears each voice on
    /// its beat.
    InEar,
}

impl SyncMode {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Stage => "stage",
            SyncMode::InEar => "in_ear",
        }
    }

    /// The mode a wire name names.
    pub fn parse(name: &str) -> Option<SyncMode> {
        match name {
            "stage" => Some(SyncMode::Stage),
            "in_ear" => Some(SyncMode::InEar),
            _ => None,
        }
    }
}

/// Where the transport is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportState {
    /// The player is opening the song.
    Loading,
    /// Playing.
    Playing,
    /// Held in place.
    Paused,
}

impl TransportState {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportState::Loading => "loading",
            TransportState::Playing => "playing",
            TransportState::Paused => "paused",
        }
    }
}

/// The entry being played.
#[derive(Clone, Debug, PartialEq)]
pub struct NowPlaying {
    /// The entry.
    pub entry: Entry,
    /// Its current generation.
    pub generation: u32,
    /// Where the transport is.
    pub state: TransportState,
    /// Length (from the player once open; the library's guess before).
    pub duration: Option<Duration>,
    /// Where the speakers last started a period: the song's timeline frame (48 kHz),
    /// the count-in first, then the song (see [`NowPlaying::song_ms`]).
    pub position: u64,
    /// The count-in before the song's first frame (zero after a seek).
    pub count_in: Duration,
    /// Its clicks.
    pub beats: u32,
}

impl NowPlaying {
    /// Timeline frame `frames` as a frame of the song: negative during the count-in.
    pub fn song_frame(&self, frames: u64) -> i64 {
        frames as i64 - frames_in(self.count_in) as i64
    }

    /// Timeline frame `frames` as a time in the song, ms: negative during the count-in.
    pub fn song_ms(&self, frames: u64) -> i64 {
        self.song_frame(frames) * 1000 / i64::from(SAMPLE_RATE_HZ)
    }
}

/// A song that could not play, for the host (and, as it is, the `queue` message).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Problem {
    /// The song.
    pub title: String,
    /// `unreadable`, `unsupported`, `corrupt`.
    pub kind: String,
    /// The details.
    pub detail: String,
}

/// The host's (or panel's) transport commands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transport {
    /// Resume a paused song, or start the first entry when nothing plays.
    Play,
    /// Hold the song in place.
    Pause,
    /// Stop the song (it is not put back in the queue).
    Stop,
    /// Start the first entry now (stopping what plays).
    Next,
    /// Move the playing song to this time.
    Seek(Duration),
    /// Start this entry now (stopping what plays).
    Start(EntryId),
}

/// What the player and the engine report.
#[derive(Clone, Debug, PartialEq)]
pub enum SongFeedback {
    /// The player opened (or moved) the song.
    Opened {
        /// For which generation.
        generation: u32,
        /// Its length, if the file says.
        duration: Option<Duration>,
    },
    /// The song cannot play.
    Failed {
        /// For which generation.
        generation: u32,
        /// `unreadable`, `unsupported`, `corrupt`.
        kind: String,
        /// The details.
        detail: String,
    },
    /// The speakers played the song's last frame.
    Ended {
        /// For which generation.
        generation: u32,
    },
    /// Where the speakers are (every 100 ms).
    Position {
        /// For which generation.
        generation: u32,
        /// Song frame.
        position: u64,
    },
    /// The line-in started capturing (`problem` None) or failed.
    LineIn {
        /// For which generation.
        generation: u32,
        /// What is wrong, naming the device.
        problem: Option<String>,
    },
}

/// Where the backing comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackingSource {
    /// Song files from the library, through the queue.
    #[default]
    Songs,
    /// The line-in.
    LineIn,
    /// The WHIP client in the `backing` role.
    Whip,
}

impl BackingSource {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BackingSource::Songs => "songs",
            BackingSource::LineIn => "line_in",
            BackingSource::Whip => "whip",
        }
    }

    /// The source a wire name names.
    pub fn parse(name: &str) -> Option<BackingSource> {
        match name {
            "songs" => Some(BackingSource::Songs),
            "line_in" => Some(BackingSource::LineIn),
            "whip" => Some(BackingSource::Whip),
            _ => None,
        }
    }
}

/// A live source (line-in or WHIP feed) while it is the source.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveState {
    /// Which.
    pub source: BackingSource,
    /// Its generation.
    pub generation: u32,
    /// Playing (a line-in: false until the device opened, and after it failed).
    pub live: bool,
    /// Why it is not, when it failed.
    pub problem: Option<String>,
}

/// What the room must carry out after a transport change.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Hand this to the song player.
    Player(PlayerCommand),
    /// Hand this to the line-in.
    LineIn(LineInCommand),
    /// Let the WHIP backing feed's audio in as this generation (`None`: keep it out).
    Feed(Option<u32>),
    /// Tell the engine the generation that may play, and whether it is held.
    Engine {
        /// Generation.
        generation: u32,
        /// Held.
        paused: bool,
    },
    /// These singers go onto the stage (slot A, B, … in this order).
    Stage(Vec<PeerId>),
}

/// Why the night refused something (the room maps these to its refusals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NightRefusal {
    /// The queue is full.
    QueueFull,
    /// This singer has [`MAX_ENTRIES_PER_SINGER`] entries waiting.
    TooManyEntries,
    /// This singer already queued this song.
    AlreadyQueued,
    /// No such entry.
    UnknownEntry,
    /// The entry does not name this singer.
    NotYours,
    /// Nothing is queued (play or next with an empty queue).
    NothingQueued,
    /// Nothing is playing (pause, seek).
    NothingPlaying,
    /// A seek beyond the song's end.
    BeyondTheEnd,
    /// The box has no line-in configured.
    NoLineIn,
    /// No WHIP backing feed is connected.
    NoFeed,
    /// A live source (line-in, WHIP feed) is the backing: songs wait.
    LiveSourcePlays,
}

/// The queue and the transport. See the module docs.
#[derive(Debug, Default)]
pub struct Night {
    queue: Vec<Entry>,
    now: Option<NowPlaying>,
    next_entry: u32,
    generation: u32,
    problems: VecDeque<Problem>,
    count_in: Duration,
    beats: u32,
    live: Option<LiveState>,
}

impl Night {
    /// A night whose songs start after `beats` clicks lasting `count_in` in all.
    pub fn with_count_in(count_in: Duration, beats: u32) -> Night {
        Night {
            count_in: if beats == 0 { Duration::ZERO } else { count_in },
            beats,
            ..Night::default()
        }
    }

    /// The queue, in order.
    pub fn queue(&self) -> &[Entry] {
        &self.queue
    }

    /// What is playing.
    pub fn now_playing(&self) -> Option<&NowPlaying> {
        self.now.as_ref()
    }

    /// Songs that could not play, newest last.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter()
    }

    /// Adds `song` for `singers` (the adder first, then a partner).
    pub fn add(&mut self, song: SongRef, singers: Vec<PeerId>) -> Result<EntryId, NightRefusal> {
        let adder = singers[0];
        if self.queue.len() >= MAX_QUEUE {
            return Err(NightRefusal::QueueFull);
        }
        let theirs = self.queue.iter().filter(|e| e.singers[0] == adder);
        let mut count = 0;
        for e in theirs {
            if e.song.id == song.id {
                return Err(NightRefusal::AlreadyQueued);
            }
            count += 1;
        }
        if count >= MAX_ENTRIES_PER_SINGER {
            return Err(NightRefusal::TooManyEntries);
        }
        self.next_entry += 1;
        let id = EntryId(self.next_entry);
        self.queue.push(Entry {
            id,
            song,
            singers,
            mode: SyncMode::Stage,
        });
        Ok(id)
    }

    /// The host picks whom the singers of an entry follow, queued or playing.
    pub fn set_mode(&mut self, entry: EntryId, mode: SyncMode) -> Result<(), NightRefusal> {
        if let Some(now) = self.now.as_mut().filter(|n| n.entry.id == entry) {
            now.entry.mode = mode;
            return Ok(());
        }
        let idx = self.index(entry)?;
        self.queue[idx].mode = mode;
        Ok(())
    }

    /// A singer named by an entry withdraws: the one who added it removes it; a partner
    /// only takes themselves off it.
    pub fn withdraw(&mut self, peer: PeerId, entry: EntryId) -> Result<(), NightRefusal> {
        let idx = self.index(entry)?;
        let e = &mut self.queue[idx];
        if e.singers[0] == peer {
            self.queue.remove(idx);
        } else if let Some(k) = e.singers.iter().position(|&p| p == peer) {
            e.singers.remove(k);
        } else {
            return Err(NightRefusal::NotYours);
        }
        Ok(())
    }

    /// The host removes an entry.
    pub fn remove(&mut self, entry: EntryId) -> Result<(), NightRefusal> {
        let idx = self.index(entry)?;
        self.queue.remove(idx);
        Ok(())
    }

    /// The host moves an entry to position `to` (0 is next; beyond the end is last).
    pub fn move_to(&mut self, entry: EntryId, to: usize) -> Result<(), NightRefusal> {
        let idx = self.index(entry)?;
        let e = self.queue.remove(idx);
        let to = to.min(self.queue.len());
        self.queue.insert(to, e);
        Ok(())
    }

    /// A participant left for good: off every entry; entries nobody is left on go.
    pub fn forget(&mut self, peer: PeerId) -> bool {
        let before = self.queue.clone();
        for e in &mut self.queue {
            e.singers.retain(|&p| p != peer);
        }
        self.queue.retain(|e| !e.singers.is_empty());
        before != self.queue
    }

    /// The backing source.
    pub fn source(&self) -> BackingSource {
        self.live
            .as_ref()
            .map_or(BackingSource::Songs, |live| live.source)
    }

    /// The live source, while one plays.
    pub fn live(&self) -> Option<&LiveState> {
        self.live.as_ref()
    }

    /// The host chooses the backing source; `available` says whether the box has it now
    /// (a configured line-in, a connected WHIP feed; songs always).
    pub fn set_source(
        &mut self,
        source: BackingSource,
        available: bool,
    ) -> Result<Vec<Effect>, NightRefusal> {
        if source == self.source() {
            return Ok(Vec::new());
        }
        match source {
            BackingSource::LineIn if !available => return Err(NightRefusal::NoLineIn),
            BackingSource::Whip if !available => return Err(NightRefusal::NoFeed),
            _ => {}
        }
        // What plays now stops: the song, or the other live source.
        let mut effects = match self.live.take() {
            Some(live) => vec![Self::stop_live(live.source)],
            None if self.now.is_some() => self.stop(),
            None => Vec::new(),
        };
        let generation = self.bump();
        effects.push(Effect::Engine {
            generation,
            paused: false,
        });
        let start = match source {
            BackingSource::Songs => return Ok(effects),
            BackingSource::LineIn => Effect::LineIn(LineInCommand::Start { generation }),
            BackingSource::Whip => Effect::Feed(Some(generation)),
        };
        effects.push(start);
        self.live = Some(LiveState {
            source,
            generation,
            // A feed is chosen only while connected; a line-in says when it opened.
            live: source == BackingSource::Whip,
            problem: None,
        });
        Ok(effects)
    }

    fn stop_live(source: BackingSource) -> Effect {
        match source {
            BackingSource::LineIn => Effect::LineIn(LineInCommand::Stop),
            _ => Effect::Feed(None),
        }
    }

    fn index(&self, entry: EntryId) -> Result<usize, NightRefusal> {
        self.queue
            .iter()
            .position(|e| e.id == entry)
            .ok_or(NightRefusal::UnknownEntry)
    }

    fn bump(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    /// Starts the entry at `idx` of the queue.
    fn start(&mut self, idx: usize) -> Vec<Effect> {
        let entry = self.queue.remove(idx);
        let generation = self.bump();
        let effects = vec![
            Effect::Stage(entry.singers.clone()),
            Effect::Engine {
                generation,
                paused: false,
            },
            Effect::Player(PlayerCommand::Play {
                generation,
                path: entry.song.path.clone(),
                from: Duration::ZERO,
                count_in: self.count_in,
                beats: self.beats,
            }),
        ];
        self.now = Some(NowPlaying {
            duration: entry.song.duration,
            entry,
            generation,
            state: TransportState::Loading,
            position: 0,
            count_in: self.count_in,
            beats: self.beats,
        });
        effects
    }

    fn stop(&mut self) -> Vec<Effect> {
        self.now = None;
        let generation = self.bump();
        vec![
            Effect::Player(PlayerCommand::Stop),
            Effect::Engine {
                generation,
                paused: false,
            },
        ]
    }

    /// A transport command.
    pub fn transport(&mut self, command: Transport) -> Result<Vec<Effect>, NightRefusal> {
        let starts = matches!(
            command,
            Transport::Play | Transport::Next | Transport::Start(_)
        );
        if starts && self.live.is_some() {
            return Err(NightRefusal::LiveSourcePlays);
        }
        match command {
            Transport::Play => match self.now.as_mut() {
                Some(now) => {
                    if now.state == TransportState::Paused {
                        now.state = TransportState::Playing;
                    }
                    Ok(vec![Effect::Engine {
                        generation: now.generation,
                        paused: false,
                    }])
                }
                None if self.queue.is_empty() => Err(NightRefusal::NothingQueued),
                None => Ok(self.start(0)),
            },
            Transport::Pause => {
                let now = self.now.as_mut().ok_or(NightRefusal::NothingPlaying)?;
                now.state = TransportState::Paused;
                Ok(vec![Effect::Engine {
                    generation: now.generation,
                    paused: true,
                }])
            }
            Transport::Stop => {
                if self.now.is_none() {
                    return Err(NightRefusal::NothingPlaying);
                }
                Ok(self.stop())
            }
            Transport::Next => {
                if self.queue.is_empty() {
                    return match self.now {
                        Some(_) => Ok(self.stop()),
                        None => Err(NightRefusal::NothingQueued),
                    };
                }
                Ok(self.start(0))
            }
            Transport::Start(entry) => {
                let idx = self.index(entry)?;
                Ok(self.start(idx))
            }
            Transport::Seek(to) => {
                let now = self.now.as_ref().ok_or(NightRefusal::NothingPlaying)?;
                if now.duration.is_some_and(|d| to > d) {
                    return Err(NightRefusal::BeyondTheEnd);
                }
                let paused = now.state == TransportState::Paused;
                let generation = self.bump();
                let now = self.now.as_mut().expect("checked above");
                now.generation = generation;
                // No count-in after a seek: the timeline is the song's own.
                now.count_in = Duration::ZERO;
                now.position = frames_in(to);
                Ok(vec![
                    Effect::Engine { generation, paused },
                    Effect::Player(PlayerCommand::Seek { generation, to }),
                ])
            }
        }
    }

    /// News from the player or the engine. Returns the effects, and whether what
    /// everyone sees changed (a position alone does not count).
    pub fn feedback(&mut self, news: SongFeedback) -> (Vec<Effect>, bool) {
        let current = self.now.as_ref().map(|n| n.generation);
        match news {
            SongFeedback::Opened {
                generation,
                duration,
            } if Some(generation) == current => {
                let now = self.now.as_mut().expect("current");
                if now.state == TransportState::Loading {
                    now.state = TransportState::Playing;
                }
                if duration.is_some() {
                    now.duration = duration;
                }
                (Vec::new(), true)
            }
            SongFeedback::Failed {
                generation,
                kind,
                detail,
            } if Some(generation) == current => {
                let failed = self.now.take().expect("current");
                if self.problems.len() == MAX_PROBLEMS {
                    self.problems.pop_front();
                }
                self.problems.push_back(Problem {
                    title: failed.entry.song.title,
                    kind,
                    detail,
                });
                let effects = if self.queue.is_empty() {
                    self.stop()
                } else {
                    self.start(0)
                };
                (effects, true)
            }
            SongFeedback::Ended { generation } if Some(generation) == current => {
                self.now = None;
                (Vec::new(), true)
            }
            SongFeedback::Position {
                generation,
                position,
            } if Some(generation) == current => {
                if let Some(now) = self.now.as_mut() {
                    now.position = position;
                }
                (Vec::new(), false)
            }
            SongFeedback::LineIn {
                generation,
                problem,
            } => match self.live.as_mut() {
                Some(line_in)
                    if line_in.source == BackingSource::LineIn
                        && line_in.generation == generation =>
                {
                    line_in.live = problem.is_none();
                    line_in.problem = problem;
                    (Vec::new(), true)
                }
                _ => (Vec::new(), false),
            },
            // News of an older generation: the world has moved on.
            _ => (Vec::new(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn song(n: u64, secs: u64) -> SongRef {
        SongRef {
            id: SongId(n),
            title: format!("Song {n}"),
            artist: None,
            path: format!("/lib/{n}.ogg").into(),
            duration: Some(Duration::from_secs(secs)),
        }
    }

    fn generation_of(effects: &[Effect]) -> u32 {
        effects
            .iter()
            .find_map(|e| match e {
                Effect::Engine { generation, .. } => Some(*generation),
                _ => None,
            })
            .expect("an engine effect")
    }

    #[test]
    fn limits_per_singer_duplicates_and_the_queue_cap() {
        let mut n = Night::default();
        let (a, b) = (PeerId(1), PeerId(2));
        n.add(song(1, 60), vec![a]).unwrap();
        assert_eq!(
            n.add(song(1, 60), vec![a, b]),
            Err(NightRefusal::AlreadyQueued)
        );
        n.add(song(1, 60), vec![b]).unwrap();
        n.add(song(2, 60), vec![a]).unwrap();
        n.add(song(3, 60), vec![a]).unwrap();
        assert_eq!(
            n.add(song(4, 60), vec![a]),
            Err(NightRefusal::TooManyEntries)
        );
        for k in 0..MAX_QUEUE {
            let _ = n.add(song(100 + k as u64, 60), vec![PeerId(10 + k as u32)]);
        }
        assert_eq!(n.queue().len(), MAX_QUEUE);
        assert_eq!(
            n.add(song(9, 60), vec![PeerId(9999)]),
            Err(NightRefusal::QueueFull)
        );
    }

    #[test]
    fn withdraw_remove_move_and_forget() {
        let mut n = Night::default();
        let (a, b, c) = (PeerId(1), PeerId(2), PeerId(3));
        let e1 = n.add(song(1, 60), vec![a, b]).unwrap();
        let e2 = n.add(song(2, 60), vec![c]).unwrap();
        let e3 = n.add(song(3, 60), vec![b]).unwrap();
        assert_eq!(n.withdraw(c, e1), Err(NightRefusal::NotYours));
        n.withdraw(b, e1).unwrap();
        assert_eq!(
            n.queue()[0].singers,
            vec![a],
            "the partner took themselves off"
        );
        n.move_to(e3, 0).unwrap();
        let order: Vec<EntryId> = n.queue().iter().map(|e| e.id).collect();
        assert_eq!(order, [e3, e1, e2]);
        n.move_to(e3, 99).unwrap();
        assert_eq!(n.queue().last().unwrap().id, e3);
        assert!(n.forget(c));
        assert!(n.queue().iter().all(|e| e.id != e2), "c's solo is gone");
        n.withdraw(a, e1).unwrap();
        assert_eq!(n.remove(e1), Err(NightRefusal::UnknownEntry));
        n.remove(e3).unwrap();
        assert!(n.queue().is_empty());
    }

    #[test]
    fn start_seek_pause_and_stale_news() {
        let mut n = Night::default();
        let a = PeerId(1);
        assert_eq!(
            n.transport(Transport::Play),
            Err(NightRefusal::NothingQueued)
        );
        n.add(song(1, 60), vec![a]).unwrap();
        let fx = n.transport(Transport::Play).unwrap();
        assert_eq!(fx[0], Effect::Stage(vec![a]));
        let g1 = generation_of(&fx);
        assert!(
            matches!(&fx[2], Effect::Player(PlayerCommand::Play { generation, from, .. }) if *generation == g1 && from.is_zero())
        );
        assert_eq!(n.now_playing().unwrap().state, TransportState::Loading);
        n.feedback(SongFeedback::Opened {
            generation: g1,
            duration: Some(Duration::from_secs(61)),
        });
        assert_eq!(n.now_playing().unwrap().state, TransportState::Playing);
        assert_eq!(
            n.transport(Transport::Seek(Duration::from_secs(62))),
            Err(NightRefusal::BeyondTheEnd)
        );
        n.transport(Transport::Pause).unwrap();
        let fx = n
            .transport(Transport::Seek(Duration::from_secs(30)))
            .unwrap();
        let g2 = generation_of(&fx);
        assert_ne!(g1, g2);
        assert_eq!(
            fx,
            vec![
                Effect::Engine {
                    generation: g2,
                    paused: true
                },
                Effect::Player(PlayerCommand::Seek {
                    generation: g2,
                    to: Duration::from_secs(30)
                })
            ],
            "a seek while paused stays paused"
        );
        // News of the first generation is stale now.
        let (fx, changed) = n.feedback(SongFeedback::Ended { generation: g1 });
        assert!(fx.is_empty() && !changed);
        assert!(n.now_playing().is_some());
        n.feedback(SongFeedback::Position {
            generation: g2,
            position: 1_440_000,
        });
        assert_eq!(n.now_playing().unwrap().position, 1_440_000);
        n.transport(Transport::Play).unwrap();
        let (_, changed) = n.feedback(SongFeedback::Ended { generation: g2 });
        assert!(changed);
        assert!(
            n.now_playing().is_none(),
            "an ended song stops the transport"
        );
    }

    #[test]
    fn a_song_starts_after_its_count_in_and_a_seek_has_none() {
        let mut n = Night::with_count_in(Duration::from_millis(2_400), 4);
        n.add(song(1, 60), vec![PeerId(1)]).unwrap();
        let fx = n.transport(Transport::Play).unwrap();
        assert!(fx.iter().any(|e| matches!(e,
            Effect::Player(PlayerCommand::Play { count_in, beats: 4, .. })
                if *count_in == Duration::from_millis(2_400))));
        let now = n.now_playing().unwrap();
        assert_eq!(now.song_ms(0), -2_400, "the count-in comes first");
        assert_eq!(now.song_ms(115_200), 0, "the song starts 2.4 s in");
        n.transport(Transport::Seek(Duration::from_secs(10)))
            .unwrap();
        let now = n.now_playing().unwrap();
        assert_eq!(now.count_in, Duration::ZERO);
        assert_eq!(now.song_ms(now.position), 10_000);
        assert_eq!(
            Night::with_count_in(Duration::from_secs(3), 0).count_in,
            Duration::ZERO,
            "no beats, no count-in"
        );
    }

    #[test]
    fn the_line_in_replaces_the_song_and_songs_wait_until_the_host_switches_back() {
        let mut night = Night::default();
        let first = night.add(song(1, 180), vec![PeerId(1)]).expect("add");
        night.add(song(2, 180), vec![PeerId(2)]).expect("add");
        night.transport(Transport::Start(first)).expect("start");
        assert_eq!(
            night.set_source(BackingSource::LineIn, false),
            Err(NightRefusal::NoLineIn)
        );
        assert!(
            night.now_playing().is_some(),
            "a refused switch changes nothing"
        );

        let effects = night
            .set_source(BackingSource::LineIn, true)
            .expect("line-in");
        let generation = night.live().expect("line-in state").generation;
        assert!(
            effects.contains(&Effect::Player(PlayerCommand::Stop)),
            "{effects:?}"
        );
        assert!(effects.contains(&Effect::LineIn(LineInCommand::Start { generation })));
        assert_eq!(
            effects.last(),
            Some(&Effect::LineIn(LineInCommand::Start { generation }))
        );
        assert!(effects.contains(&Effect::Engine {
            generation,
            paused: false
        }));
        assert_eq!(night.now_playing(), None);
        assert_eq!(night.source(), BackingSource::LineIn);
        // Choosing it again does nothing.
        assert_eq!(
            night.set_source(BackingSource::LineIn, true),
            Ok(Vec::new())
        );
        for command in [Transport::Play, Transport::Next] {
            assert_eq!(night.transport(command), Err(NightRefusal::LiveSourcePlays));
        }
        assert_eq!(night.queue().len(), 1, "the queue waits");

        // Its news counts for its own generation only.
        let failed = SongFeedback::LineIn {
            generation,
            problem: Some("alsa:hw:9: open: No such file or directory".into()),
        };
        assert_eq!(night.feedback(failed), (Vec::new(), true));
        let state = night.live().expect("still the source");
        assert!(!state.live && state.problem.is_some(), "{state:?}");
        let stale = SongFeedback::LineIn {
            generation: generation.wrapping_sub(1),
            problem: None,
        };
        assert_eq!(night.feedback(stale), (Vec::new(), false));
        let live = SongFeedback::LineIn {
            generation,
            problem: None,
        };
        night.feedback(live);
        assert_eq!(
            night.live().map(|l| (l.live, l.problem.clone())),
            Some((true, None))
        );

        // The WHIP feed takes over from the line-in, which stops.
        assert_eq!(
            night.set_source(BackingSource::Whip, false),
            Err(NightRefusal::NoFeed)
        );
        let effects = night.set_source(BackingSource::Whip, true).expect("feed");
        let feed = generation_of(&effects);
        assert_eq!(
            effects,
            vec![
                Effect::LineIn(LineInCommand::Stop),
                Effect::Engine {
                    generation: feed,
                    paused: false
                },
                Effect::Feed(Some(feed)),
            ]
        );
        assert!(night
            .live()
            .is_some_and(|l| l.live && l.source == BackingSource::Whip));

        let effects = night.set_source(BackingSource::Songs, true).expect("songs");
        assert_eq!(effects[0], Effect::Feed(None));
        assert!(
            generation_of(&effects) != feed && feed != generation,
            "each source a new generation"
        );
        assert!(
            night.transport(Transport::Play).is_ok(),
            "songs start again"
        );
    }

    #[test]
    fn a_failed_song_is_recorded_and_the_next_starts() {
        let mut n = Night::default();
        n.add(song(1, 60), vec![PeerId(1)]).unwrap();
        let e2 = n.add(song(2, 60), vec![PeerId(2)]).unwrap();
        let g1 = generation_of(&n.transport(Transport::Next).unwrap());
        let (fx, changed) = n.feedback(SongFeedback::Failed {
            generation: g1,
            kind: "corrupt".into(),
            detail: "bad packets".into(),
        });
        assert!(changed);
        assert_eq!(fx[0], Effect::Stage(vec![PeerId(2)]));
        assert_eq!(n.now_playing().unwrap().entry.id, e2);
        let p: Vec<&Problem> = n.problems().collect();
        assert_eq!(
            (p[0].title.as_str(), p[0].kind.as_str()),
            ("Song 1", "corrupt")
        );
        // The last one failing too stops the transport.
        let g2 = n.now_playing().unwrap().generation;
        let (fx, _) = n.feedback(SongFeedback::Failed {
            generation: g2,
            kind: "unsupported".into(),
            detail: "x".into(),
        });
        assert_eq!(fx[0], Effect::Player(PlayerCommand::Stop));
        assert!(n.now_playing().is_none());
        assert_eq!(n.problems().count(), 2);
    }
}
