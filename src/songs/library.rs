//! The library index: every song under the library folder with its id, names, length
//! and lyrics, searchable, kept in the state folder (`library.json`) so a restart does
//! not read every file again, and refreshed by a thread of its own so new files show up.
//!
//! A [`SongId`] is a hash of the song's path relative to the root: stable across
//! restarts and rescans, shown to phones, and worth nothing by itself: the box only
//! ever opens a path it finds in its own index under that id, never one a client sent.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::decode::SongDecoder;
use super::{scan, LyricsKind};

/// Results one search returns at most.
pub const MAX_RESULTS: usize = 50;
/// Characters of a search query looked at (the rest is ignored).
pub const MAX_QUERY_CHARS: usize = 100;

/// A song's id (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SongId(pub u64);

impl SongId {
    /// The id of the song at `relative` (its path under the library root).
    pub fn of(relative: &Path) -> SongId {
        // FNV-1a, 64 bits: stable across versions and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in relative.as_os_str().as_encoded_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        SongId(h)
    }

    /// Parses the 16 hex digits [`fmt::Display`] writes.
    pub fn parse(text: &str) -> Option<SongId> {
        (text.len() == 16)
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
            .map(SongId)
    }
}

impl fmt::Display for SongId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One song of the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibrarySong {
    /// Its id.
    pub id: SongId,
    /// The audio file, relative to the root.
    pub path: PathBuf,
    /// Title (tag, else the file name).
    pub title: String,
    /// Artist (tag, else the file name's `Artist - `).
    pub artist: Option<String>,
    /// Length, ms, when the file says.
    pub duration_ms: Option<u64>,
    /// The lyrics file, relative to the root.
    pub lyrics: Option<(PathBuf, LyricsKindName)>,
    /// The file's size and modification time when its tags were read.
    size: u64,
    modified_s: u64,
    /// Why the file could not be opened when indexed (it stays listed: the host sees
    /// the error when it is queued).
    pub problem: Option<String>,
}

/// [`LyricsKind`] as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LyricsKindName {
    /// `.lrc`.
    Lrc,
    /// UltraStar `.txt`.
    UltraStar,
}

impl From<LyricsKind> for LyricsKindName {
    fn from(k: LyricsKind) -> Self {
        match k {
            LyricsKind::Lrc => LyricsKindName::Lrc,
            LyricsKind::UltraStar => LyricsKindName::UltraStar,
        }
    }
}

/// The index: songs sorted by artist then title.
#[derive(Debug, Default)]
pub struct Library {
    root: PathBuf,
    songs: Vec<LibrarySong>,
    by_id: HashMap<SongId, usize>,
    /// Each song's "artist title", lower case: what a search matches, made once per
    /// index instead of once per song per search.
    keys: Vec<String>,
    /// Entries the last walk could not list (unreadable, too deep, too many).
    pub skipped: usize,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    songs: Vec<LibrarySong>,
}

const STORED_VERSION: u32 = 1;

impl Library {
    /// An empty library at `root` (before the first scan).
    pub fn empty(root: &Path) -> Library {
        Library {
            root: root.to_path_buf(),
            ..Library::default()
        }
    }

    fn from_songs(root: &Path, mut songs: Vec<LibrarySong>, skipped: usize) -> Library {
        songs.sort_by_cached_key(|s| {
            (
                s.artist.as_deref().unwrap_or("").to_lowercase(),
                s.title.to_lowercase(),
                s.path.clone(),
            )
        });
        let by_id = songs.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        let keys = songs
            .iter()
            .map(|s| format!("{} {}", s.artist.as_deref().unwrap_or(""), s.title).to_lowercase())
            .collect();
        Library {
            root: root.to_path_buf(),
            songs,
            by_id,
            keys,
            skipped,
        }
    }

    /// The songs, sorted.
    pub fn songs(&self) -> &[LibrarySong] {
        &self.songs
    }

    /// The song with `id`.
    pub fn get(&self, id: SongId) -> Option<&LibrarySong> {
        self.by_id.get(&id).map(|&i| &self.songs[i])
    }

    /// Where a song's file is.
    pub fn full_path(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// Songs whose artist or title contain every word of `query` (case-insensitive), from
    /// `offset`, at most [`MAX_RESULTS`]; and how many matched in all.
    pub fn search(&self, query: &str, offset: usize) -> (Vec<&LibrarySong>, usize) {
        let query: String = query.chars().take(MAX_QUERY_CHARS).collect();
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        let mut total = 0;
        let mut page = Vec::new();
        for (song, hay) in self.songs.iter().zip(&self.keys) {
            if words.iter().all(|w| hay.contains(w.as_str())) {
                if total >= offset && page.len() < MAX_RESULTS {
                    page.push(song);
                }
                total += 1;
            }
        }
        (page, total)
    }

    /// Loads the index kept in `file` (an empty library if there is none or it is
    /// unreadable: the next refresh rebuilds it).
    pub fn load(root: &Path, file: &Path) -> Library {
        let Ok(text) = std::fs::read_to_string(file) else {
            return Library::empty(root);
        };
        match serde_json::from_str::<Stored>(&text) {
            Ok(stored) if stored.version == STORED_VERSION => {
                Library::from_songs(root, stored.songs, 0)
            }
            _ => {
                tracing::warn!(file = %file.display(), "library index unreadable, rebuilding it");
                Library::empty(root)
            }
        }
    }

    /// Writes the index to `file` (through a temporary file, so a crash leaves the old).
    pub fn save(&self, file: &Path) -> std::io::Result<()> {
        let stored = Stored {
            version: STORED_VERSION,
            songs: self.songs.clone(),
        };
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&stored)?)?;
        std::fs::rename(&tmp, file)
    }

    /// A fresh walk of the root: songs already indexed and unchanged (same size and
    /// modification time) keep what was read; new or changed files are opened for their
    /// tags and length. `None` if nothing changed.
    pub fn refresh(&self) -> Result<Option<Library>, super::Error> {
        let scan = scan(&self.root)?;
        let mut songs = Vec::with_capacity(scan.songs.len());
        let mut changed = scan.songs.len() != self.songs.len();
        for found in scan.songs {
            let id = SongId::of(&found.path);
            let full = self.root.join(&found.path);
            let (size, modified_s) = stamp(&full);
            let lyrics = found.lyrics.map(|(p, k)| (p, LyricsKindName::from(k)));
            if let Some(known) = self.get(id) {
                if known.size == size && known.modified_s == modified_s && known.path == found.path
                {
                    let mut song = known.clone();
                    changed |= song.lyrics != lyrics;
                    song.lyrics = lyrics;
                    songs.push(song);
                    continue;
                }
            }
            changed = true;
            let (title, artist, duration_ms, problem) = match SongDecoder::open(&full) {
                Ok(d) => {
                    let info = d.info();
                    (
                        info.title.clone().unwrap_or(found.title),
                        info.artist.clone().or(found.artist),
                        info.duration.map(|d| d.as_millis() as u64),
                        None,
                    )
                }
                Err(e) => (found.title, found.artist, None, Some(e.to_string())),
            };
            songs.push(LibrarySong {
                id,
                path: found.path,
                title,
                artist,
                duration_ms,
                lyrics,
                size,
                modified_s,
                problem,
            });
        }
        Ok(changed.then(|| Library::from_songs(&self.root, songs, scan.skipped)))
    }
}

fn stamp(path: &Path) -> (u64, u64) {
    let Ok(meta) = std::fs::metadata(path) else {
        return (0, 0);
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    (meta.len(), modified)
}

/// Starts the indexer thread: loads `index_file`, publishes it, then walks the root
/// every `every`, publishing and saving each change. It ends when every receiver is
/// gone.
pub fn spawn_indexer(
    root: PathBuf,
    index_file: PathBuf,
    every: Duration,
) -> std::io::Result<tokio::sync::watch::Receiver<Arc<Library>>> {
    let first = Library::load(&root, &index_file);
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(first));
    std::thread::Builder::new()
        .name("duetbox-library".into())
        .spawn(move || {
            let mut logged_error = false;
            loop {
                let current = tx.borrow().clone();
                match current.refresh() {
                    Ok(Some(fresh)) => {
                        tracing::info!(
                            songs = fresh.songs.len(),
                            skipped = fresh.skipped,
                            "library indexed"
                        );
                        if let Err(e) = fresh.save(&index_file) {
                            tracing::warn!(file = %index_file.display(), error = %e, "cannot keep the library index");
                        }
                        if tx.send(Arc::new(fresh)).is_err() {
                            return;
                        }
                        logged_error = false;
                    }
                    Ok(None) => logged_error = false,
                    Err(e) => {
                        // A missing folder (a USB stick not in yet) is logged once.
                        if !logged_error {
                            tracing::warn!(error = %e, "cannot read the song library");
                            logged_error = true;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                std::thread::park_timeout(every);
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_round_trip() {
        let id = SongId::of(Path::new("duets/A - B.mp3"));
        assert_eq!(id, SongId::of(Path::new("duets/A - B.mp3")));
        assert_ne!(id, SongId::of(Path::new("duets/A - C.mp3")));
        assert_eq!(SongId::parse(&id.to_string()), Some(id));
        assert_eq!(SongId::parse("xyz"), None);
        assert_eq!(SongId::parse("0123456789abcdefa"), None);
        // The value is fixed forever (phones and the stored index keep it).
        assert_eq!(SongId::of(Path::new("a")).to_string(), "af63dc4c8601ec8c");
    }

    fn song(path: &str, artist: Option<&str>, title: &str) -> LibrarySong {
        LibrarySong {
            id: SongId::of(Path::new(path)),
            path: path.into(),
            title: title.into(),
            artist: artist.map(Into::into),
            duration_ms: None,
            lyrics: None,
            size: 0,
            modified_s: 0,
            problem: None,
        }
    }

    #[test]
    fn search_matches_every_word_in_artist_or_title_and_pages() {
        let lib = Library::from_songs(
            Path::new("/x"),
            vec![
                song("1.mp3", Some("ABBA"), "Waterloo"),
                song("2.mp3", Some("Sonny & Cher"), "I Got You Babe"),
                song("3.mp3", None, "Babe"),
            ],
            0,
        );
        let titles = |q: &str| -> Vec<String> {
            lib.search(q, 0).0.iter().map(|s| s.title.clone()).collect()
        };
        assert_eq!(titles("babe"), ["Babe", "I Got You Babe"]);
        assert_eq!(titles("cher BABE"), ["I Got You Babe"]);
        assert_eq!(titles("abba queen"), Vec::<String>::new());
        assert_eq!(titles("").len(), 3);
        assert_eq!(lib.search("", 2).0.len(), 1);
        assert_eq!(lib.search("", 2).1, 3);
        let long = "a".repeat(10_000);
        assert_eq!(
            lib.search(&long, 0).1,
            0,
            "a long query is cut, not refused"
        );
    }

    #[test]
    fn the_index_survives_a_restart_and_notices_new_and_changed_files() {
        let root = std::env::temp_dir().join(format!("duetbox-lib-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("A - One.mp3"), b"not audio").unwrap();
        let file = root.join("library.json.d");
        let lib = Library::load(&root, &file);
        assert!(lib.songs().is_empty());
        let lib = lib.refresh().unwrap().expect("a first scan changes it");
        assert_eq!(lib.songs().len(), 1);
        assert!(
            lib.songs()[0].problem.is_some(),
            "junk is listed with its problem"
        );
        lib.save(&file).unwrap();
        let again = Library::load(&root, &file);
        assert_eq!(again.songs(), lib.songs());
        assert!(again.refresh().unwrap().is_none(), "nothing changed");
        std::fs::write(root.join("B - Two.ogg"), b"x").unwrap();
        std::fs::write(root.join("A - One.lrc"), b"[00:01.00]hi").unwrap();
        let fresh = again.refresh().unwrap().expect("new files");
        assert_eq!(fresh.songs().len(), 2);
        assert_eq!(
            fresh.songs()[0].lyrics,
            Some(("A - One.lrc".into(), LyricsKindName::Lrc))
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
