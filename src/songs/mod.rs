//! The song library (P8, first part): which files under the library folder are songs,
//! what they are called, and which lyrics file goes with each. No decoding here.
//!
//! Layout: any tree of folders. A song is an audio file with one of
//! [`AUDIO_EXTENSIONS`]; its lyrics are a file with the same stem next to it, `.lrc`
//! (timed lines) or `.txt` (UltraStar). Names come from the file name,
//! `Artist - Title.ext` (tags, when read, will take precedence).
//!
//! The walk never follows symbolic links (the library cannot reach outside its folder
//! or loop), stops at [`MAX_DEPTH`] levels and [`MAX_SONGS`] songs, and skips hidden
//! files and folders.

use std::path::{Path, PathBuf};

pub mod decode;
pub mod feed;
pub mod library;
pub mod line_in;
pub mod lyrics;
pub mod player;
#[cfg(any(test, feature = "testkit"))]
pub mod testwav;

/// The file extensions taken as songs (lower case).
pub const AUDIO_EXTENSIONS: [&str; 8] = ["mp3", "ogg", "oga", "opus", "flac", "wav", "m4a", "aac"];
/// Folder levels below the library root that are walked.
pub const MAX_DEPTH: usize = 8;
/// Songs listed at most; the rest are counted as skipped.
pub const MAX_SONGS: usize = 100_000;

/// A library problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The root could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Which lyrics format a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LyricsKind {
    /// `.lrc`: timed lines, optionally timed words.
    Lrc,
    /// `.txt`: UltraStar notes and lines.
    UltraStar,
}

/// One song of the library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Song {
    /// The audio file, relative to the library root.
    pub path: PathBuf,
    /// Artist, when the name says.
    pub artist: Option<String>,
    /// Title.
    pub title: String,
    /// The lyrics file next to it, relative to the root.
    pub lyrics: Option<(PathBuf, LyricsKind)>,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The songs, sorted by path.
    pub songs: Vec<Song>,
    /// Entries not listed: unreadable folders, too deep, over [`MAX_SONGS`].
    pub skipped: usize,
}

/// Artist and title from a file stem: `Artist - Title`, underscores as spaces.
pub fn names_from_stem(stem: &str) -> (Option<String>, String) {
    let clean = stem.replace('_', " ");
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    match clean.split_once(" - ") {
        Some((artist, title)) if !artist.trim().is_empty() && !title.trim().is_empty() => {
            (Some(artist.trim().to_string()), title.trim().to_string())
        }
        _ => (None, clean),
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Walks `root` (module doc for the rules).
pub fn scan(root: &Path) -> Result<Scan, Error> {
    let mut scan = Scan::default();
    // The root itself must be readable: a missing library is an error, not no songs.
    std::fs::read_dir(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut folders = vec![(root.to_path_buf(), 0usize)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            scan.skipped += 1;
            continue;
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            // file_type() does not follow symbolic links: a link is neither.
            let Ok(kind) = entry.file_type() else {
                scan.skipped += 1;
                continue;
            };
            if kind.is_dir() {
                if depth < MAX_DEPTH {
                    folders.push((entry.path(), depth + 1));
                } else {
                    scan.skipped += 1;
                }
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
        for file in &files {
            let is_song = extension(file).is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.as_str()));
            if !is_song {
                continue;
            }
            if scan.songs.len() >= MAX_SONGS {
                scan.skipped += 1;
                continue;
            }
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
            let (artist, title) = names_from_stem(stem.as_deref().unwrap_or_default());
            let lyrics = [("lrc", LyricsKind::Lrc), ("txt", LyricsKind::UltraStar)]
                .into_iter()
                .find_map(|(ext, kind)| {
                    let candidate = file.with_extension(ext);
                    files.contains(&candidate).then_some((candidate, kind))
                });
            let relative = |p: &Path| p.strip_prefix(root).unwrap_or(p).to_path_buf();
            scan.songs.push(Song {
                path: relative(file),
                artist,
                title,
                lyrics: lyrics.map(|(p, k)| (relative(&p), k)),
            });
        }
    }
    scan.songs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_artist_dash_title() {
        assert_eq!(
            names_from_stem("ABBA - Dancing_Queen"),
            (Some("ABBA".into()), "Dancing Queen".into())
        );
        assert_eq!(
            names_from_stem("Dancing Queen"),
            (None, "Dancing Queen".into())
        );
        assert_eq!(names_from_stem(" - Title"), (None, "- Title".into()));
        assert_eq!(
            names_from_stem("A - B - C"),
            (Some("A".into()), "B - C".into()),
            "the first dash splits"
        );
    }

    #[test]
    fn a_library_tree_lists_songs_with_their_lyrics_and_never_leaves_the_root() {
        let root = std::env::temp_dir().join(format!("duetbox-songs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let outside = root.with_extension("outside");
        let _ = std::fs::remove_dir_all(&outside);
        std::fs::create_dir_all(root.join("duets/deep")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        for f in [
            "ABBA - Waterloo.MP3",
            "ABBA - Waterloo.lrc",
            "duets/Sonny & Cher - I Got You Babe.ogg",
            "duets/Sonny & Cher - I Got You Babe.txt",
            "duets/deep/Solo.flac",
            "notes.txt",
            "cover.jpg",
            ".hidden.mp3",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        std::fs::write(outside.join("Secret.mp3"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let scan = scan(&root).expect("scanned");
        let paths: Vec<String> = scan
            .songs
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "ABBA - Waterloo.MP3",
                "duets/Sonny & Cher - I Got You Babe.ogg",
                "duets/deep/Solo.flac"
            ]
        );
        assert_eq!(
            scan.songs[0].lyrics,
            Some(("ABBA - Waterloo.lrc".into(), LyricsKind::Lrc))
        );
        assert_eq!(scan.songs[1].artist.as_deref(), Some("Sonny & Cher"));
        assert_eq!(
            scan.songs[1].lyrics.as_ref().map(|l| l.1),
            Some(LyricsKind::UltraStar)
        );
        assert_eq!(scan.songs[2].lyrics, None);
        assert!(matches!(
            super::scan(&root.join("missing")),
            Err(Error::Io { .. })
        ));
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    }
}
