//! Timed lyrics: `.lrc` (lines, and words where enhanced LRC times them) and UltraStar
//! `.txt` (notes grouped into lines; duets' `P1`/`P2` parts go to slots A and B), both
//! read into one [`Lyrics`]: lines with their start and end in the song, their part,
//! and their syllables with times.
//!
//! Files come from the library (the venue's own files), but are read with limits all
//! the same: at most [`MAX_FILE_BYTES`], [`MAX_LINES`] lines and [`MAX_LINE_CHARS`]
//! characters a line; a line that cannot be read is skipped, never fatal. Text that is
//! not UTF-8 is read as Windows-1252, which older UltraStar files use.

use serde::Serialize;

/// Largest lyrics file read.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Lines kept at most.
pub const MAX_LINES: usize = 5_000;
/// Characters of a line's text kept.
pub const MAX_LINE_CHARS: usize = 300;

/// Which singer a line is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Everyone (a solo song, or a duet's lines sung together).
    All,
    /// The first part of a duet: slot A.
    P1,
    /// The second part: slot B.
    P2,
}

/// One syllable (or word) and when it starts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Syllable {
    /// Start in the song, ms.
    pub at_ms: u64,
    /// Its text, with the spaces around it as written.
    pub text: String,
}

/// One line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Line {
    /// When it starts in the song, ms.
    pub start_ms: u64,
    /// When it ends (the last note's end, or the next line's start).
    pub end_ms: u64,
    /// Whose it is.
    pub part: Part,
    /// Its text.
    pub text: String,
    /// Its syllables with times (one, the whole line, when the file times only lines).
    pub syllables: Vec<Syllable>,
}

/// A song's lyrics, lines sorted by start.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Lyrics {
    /// The lines.
    pub lines: Vec<Line>,
    /// Whether the song has duet parts.
    pub duet: bool,
    /// Beats per minute, when the file says (UltraStar): the count-in's tempo.
    pub bpm: Option<f64>,
}

/// Reads a lyrics file's bytes as text: UTF-8 (a BOM is dropped), else Windows-1252.
pub fn text_of(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_FILE_BYTES)];
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| cp1252(b)).collect(),
    }
}

/// One Windows-1252 byte as a character. Written out here: it is 32 table entries over
/// Latin-1, not worth a dependency.
fn cp1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

fn clip(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_LINE_CHARS)
        .collect()
}

/// `mm:ss.xx` (or `mm:ss:xx`, `mm:ss`) as ms.
fn lrc_time(t: &str) -> Option<u64> {
    let (m, rest) = t.split_once(':')?;
    let m: u64 = m.trim().parse().ok()?;
    let (s, frac) = match rest.split_once(['.', ':']) {
        Some((s, f)) => (s, f),
        None => (rest, ""),
    };
    let s: u64 = s.trim().parse().ok()?;
    if s >= 60 || m > 600 {
        return None;
    }
    let frac_ms = match frac.len() {
        0 => 0,
        1 => frac.parse::<u64>().ok()? * 100,
        2 => frac.parse::<u64>().ok()? * 10,
        _ => frac.get(..3)?.parse::<u64>().ok()?,
    };
    Some(m * 60_000 + s * 1_000 + frac_ms)
}

/// Parses LRC: `[mm:ss.xx]` line times (several per line repeat it), `[offset:±ms]`,
/// enhanced `<mm:ss.xx>` word times; other tags are ignored.
pub fn parse_lrc(text: &str) -> Lyrics {
    let mut offset: i64 = 0;
    let mut timed: Vec<(u64, String, Vec<Syllable>)> = Vec::new();
    for raw in text.lines() {
        let mut rest = raw.trim();
        let mut times = Vec::new();
        while let Some(tail) = rest.strip_prefix('[') {
            let Some((tag, after)) = tail.split_once(']') else {
                break;
            };
            if let Some(ms) = lrc_time(tag) {
                times.push(ms);
            } else if let Some(v) = tag.strip_prefix("offset:") {
                offset = v.trim().parse().unwrap_or(0).clamp(-600_000, 600_000);
            }
            rest = after;
        }
        if times.is_empty() {
            continue;
        }
        let (line_text, syllables) = lrc_words(rest);
        for at in times {
            if timed.len() >= MAX_LINES {
                break;
            }
            timed.push((at, line_text.clone(), syllables.clone()));
        }
    }
    // A positive offset shows the lyrics sooner (the LRC convention).
    let shift = |ms: u64| (ms as i64 - offset).max(0) as u64;
    timed.sort_by_key(|t| t.0);
    let mut lines: Vec<Line> = Vec::with_capacity(timed.len());
    for (i, (at, text, syllables)) in timed.iter().enumerate() {
        let start = shift(*at);
        let next = timed.get(i + 1).map(|t| shift(t.0));
        let syllables = if syllables.is_empty() {
            vec![Syllable {
                at_ms: start,
                text: text.clone(),
            }]
        } else {
            syllables
                .iter()
                .map(|s| Syllable {
                    at_ms: if s.at_ms == LINE_START {
                        start
                    } else {
                        shift(s.at_ms)
                    },
                    text: s.text.clone(),
                })
                .collect()
        };
        if text.trim().is_empty() {
            // An empty timed line ends the one before; it is not shown.
            continue;
        }
        lines.push(Line {
            start_ms: start,
            end_ms: next.unwrap_or(start + 5_000).max(start),
            part: Part::All,
            text: text.clone(),
            syllables,
        });
    }
    Lyrics {
        lines,
        duet: false,
        bpm: None,
    }
}

/// Stands for "the line's own start" in [`lrc_words`]' syllables.
const LINE_START: u64 = u64::MAX;

/// A line's text and its enhanced-LRC word times (`<mm:ss.xx>word`), if any; words
/// before the first time start with the line ([`LINE_START`]).
fn lrc_words(rest: &str) -> (String, Vec<Syllable>) {
    let mut syllables = Vec::new();
    let mut text = String::new();
    let mut current: Option<(u64, String)> = Some((LINE_START, String::new()));
    let mut s = rest;
    while !s.is_empty() {
        if let Some(tail) = s.strip_prefix('<') {
            if let Some((tag, after)) = tail.split_once('>') {
                if let Some(ms) = lrc_time(tag) {
                    if let Some((at, t)) = current.take() {
                        if !t.is_empty() {
                            syllables.push(Syllable { at_ms: at, text: t });
                        }
                    }
                    current = Some((ms, String::new()));
                    s = after;
                    continue;
                }
            }
        }
        let c = s.chars().next().unwrap_or(' ');
        text.push(c);
        if let Some((_, t)) = current.as_mut() {
            t.push(c);
        }
        s = &s[c.len_utf8()..];
    }
    if let Some((at, t)) = current {
        if !t.is_empty() {
            syllables.push(Syllable { at_ms: at, text: t });
        }
    }
    if syllables.iter().all(|s| s.at_ms == LINE_START) {
        // No word is timed: the line is one syllable (made by the caller).
        syllables.clear();
    }
    let text = clip(text.trim());
    (text, syllables)
}

/// Parses UltraStar: `#BPM`, `#GAP` (ms), notes `: * F R G` (start, length, pitch,
/// text; beats are quarter notes of the BPM), `-` line breaks, `P1`/`P2` duet parts,
/// `E` the end. `#RELATIVE:YES` files count each line's beats from its line break.
pub fn parse_ultrastar(text: &str) -> Lyrics {
    let mut bpm: Option<f64> = None;
    let mut gap_ms = 0.0f64;
    let mut relative = false;
    let mut part = Part::All;
    let mut duet = false;
    let mut base = 0i64;
    let mut lines: Vec<Line> = Vec::new();
    let mut building: Option<Building> = None;
    let flush = |building: &mut Option<Building>,
                 part: Part,
                 bpm: Option<f64>,
                 gap_ms: f64,
                 lines: &mut Vec<Line>| {
        if let (Some(b), Some(bpm)) = (building.take(), bpm.filter(|b| *b > 0.0)) {
            if lines.len() < MAX_LINES {
                lines.extend(b.line(part, bpm, gap_ms));
            }
        }
    };
    for raw in text.lines() {
        let line = raw.trim_end_matches(['\r', '\n']);
        if let Some(header) = line.strip_prefix('#') {
            let Some((key, value)) = header.split_once(':') else {
                continue;
            };
            let number = || value.trim().replace(',', ".").parse::<f64>().ok();
            match key.trim().to_ascii_uppercase().as_str() {
                "BPM" => bpm = number().filter(|b| b.is_finite() && *b > 0.0 && *b < 10_000.0),
                "GAP" => {
                    gap_ms = number()
                        .filter(|g| g.is_finite())
                        .unwrap_or(0.0)
                        .clamp(0.0, 3.6e6)
                }
                "RELATIVE" => relative = value.trim().eq_ignore_ascii_case("yes"),
                _ => {}
            }
            continue;
        }
        let mut fields = line.splitn(2, ' ');
        let kind = fields.next().unwrap_or("");
        let rest = fields.next().unwrap_or("");
        match kind {
            ":" | "*" | "F" | "R" | "G" => {
                // start length pitch text (the text keeps its leading space, if any).
                let mut f = rest.splitn(4, ' ');
                let (Some(start), Some(len), Some(_pitch)) = (
                    f.next().and_then(|v| v.trim().parse::<i64>().ok()),
                    f.next().and_then(|v| v.trim().parse::<i64>().ok()),
                    f.next(),
                ) else {
                    continue;
                };
                let syllable = f.next().unwrap_or("").to_string();
                let start = base + start.clamp(-1_000_000, 1_000_000);
                let end = start + len.clamp(0, 100_000);
                let b = building.get_or_insert(Building {
                    end,
                    notes: Vec::new(),
                });
                b.end = b.end.max(end);
                if b.notes.len() < MAX_LINE_CHARS {
                    b.notes.push((start, syllable));
                }
            }
            "-" => {
                flush(&mut building, part, bpm, gap_ms, &mut lines);
                if relative {
                    let mut f = rest.split_whitespace();
                    let a = f.next().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                    let b = f.next().and_then(|v| v.parse::<i64>().ok()).unwrap_or(a);
                    base += b.clamp(0, 1_000_000);
                }
            }
            "P1" | "P2" | "P3" => {
                flush(&mut building, part, bpm, gap_ms, &mut lines);
                duet = true;
                base = 0;
                part = match kind {
                    "P1" => Part::P1,
                    "P2" => Part::P2,
                    _ => Part::All,
                };
            }
            "E" => break,
            _ => {
                // "P 1" is the older spelling of "P1".
                if kind == "P" {
                    flush(&mut building, part, bpm, gap_ms, &mut lines);
                    duet = true;
                    base = 0;
                    part = match rest.trim() {
                        "1" => Part::P1,
                        "2" => Part::P2,
                        _ => Part::All,
                    };
                }
            }
        }
    }
    flush(&mut building, part, bpm, gap_ms, &mut lines);
    lines.sort_by_key(|l| l.start_ms);
    Lyrics { lines, duet, bpm }
}

/// An UltraStar line being read: where its last note ends, its notes as (beat, text).
struct Building {
    end: i64,
    notes: Vec<(i64, String)>,
}

impl Building {
    /// The line, timed by `bpm` and the gap; `None` if it has no text.
    fn line(self, part: Part, bpm: f64, gap_ms: f64) -> Option<Line> {
        let ms = |beat: i64| (gap_ms + beat as f64 * 60_000.0 / (bpm * 4.0)).max(0.0) as u64;
        let first = self.notes.first()?.0;
        let text = clip(&self.notes.iter().map(|n| n.1.as_str()).collect::<String>());
        if text.trim().is_empty() {
            return None;
        }
        Some(Line {
            start_ms: ms(first),
            end_ms: ms(self.end),
            part,
            text: text.trim().to_string(),
            syllables: self
                .notes
                .into_iter()
                .map(|(beat, text)| Syllable {
                    at_ms: ms(beat),
                    text,
                })
                .collect(),
        })
    }
}

/// Reads the lyrics file at `path` of `kind`; `None` if it cannot be read.
pub fn load(path: &std::path::Path, ultrastar: bool) -> Option<Lyrics> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64)
        .read_to_end(&mut bytes)
        .ok()?;
    let text = text_of(&bytes);
    Some(if ultrastar {
        parse_ultrastar(&text)
    } else {
        parse_lrc(&text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lrc_lines_repeat_tags_offset_and_words() {
        let l = parse_lrc(
            "[ti:Song]\n[offset:500]\n[00:12.00]First line\n[00:05.5][01:00.250]Chorus\n\
             [00:20.00]<00:20.00>Word <00:20.50>by <00:21.00>word\n[00:25.00]\nnot timed\n\
             [01:10.00]Lead <01:10.40>in\n",
        );
        let starts: Vec<u64> = l.lines.iter().map(|x| x.start_ms).collect();
        assert_eq!(starts, [5_000, 11_500, 19_500, 59_750, 69_500]);
        assert_eq!(l.lines[0].text, "Chorus");
        assert_eq!(l.lines[0].end_ms, 11_500, "ends where the next starts");
        let words = &l.lines[2].syllables;
        assert_eq!(
            words
                .iter()
                .map(|s| (s.at_ms, s.text.as_str()))
                .collect::<Vec<_>>(),
            [(19_500, "Word "), (20_000, "by "), (20_500, "word")]
        );
        assert_eq!(l.lines[2].text, "Word by word");
        assert_eq!(l.lines[2].end_ms, 24_500, "the empty line at 25 s ends it");
        let lead: Vec<(u64, &str)> = l.lines[4]
            .syllables
            .iter()
            .map(|s| (s.at_ms, s.text.as_str()))
            .collect();
        assert_eq!(
            lead,
            [(69_500, "Lead "), (69_900, "in")],
            "untimed first words start with the line"
        );
    }

    #[test]
    fn ultrastar_notes_become_timed_lines_with_parts() {
        let l = parse_ultrastar(
            "#TITLE:Duet\n#BPM:300\n#GAP:1000\nP1\n: 0 4 5 Hel\n: 4 4 5 lo\n- 10\n\
             * 12 4 7  world\nP2\n: 20 8 3 Hi\nE\n: 99 1 1 after end\n",
        );
        // One beat = 60000 / (300 * 4) = 50 ms.
        assert!(l.duet);
        assert_eq!(l.bpm, Some(300.0));
        let got: Vec<(u64, u64, Part, &str)> = l
            .lines
            .iter()
            .map(|x| (x.start_ms, x.end_ms, x.part, x.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1_000, 1_400, Part::P1, "Hello"),
                (1_600, 1_800, Part::P1, "world"),
                (2_000, 2_400, Part::P2, "Hi"),
            ]
        );
        assert_eq!(l.lines[0].syllables[1].at_ms, 1_200);
    }

    #[test]
    fn ultrastar_relative_and_decimal_comma_and_cp1252() {
        let bytes = b"#BPM:150,5\n#RELATIVE:YES\n: 0 2 1 Caf\xe9\n- 4 8\n: 0 2 1 \x93Oui\x94\n";
        let l = parse_ultrastar(&text_of(bytes));
        assert_eq!(l.lines[0].text, "Café");
        assert_eq!(l.lines[1].text, "\u{201c}Oui\u{201d}");
        let beat = 60_000.0 / (150.5 * 4.0);
        assert_eq!(l.lines[1].start_ms, (8.0 * beat) as u64);
    }

    #[test]
    fn garbage_is_skipped_and_limits_hold() {
        let l = parse_ultrastar(": x y z\n: 1 2\n#BPM:abc\n: 0 1 1 a\n");
        assert!(l.lines.is_empty(), "no BPM, no timing");
        let many = "[00:01.00]x\n".repeat(MAX_LINES + 10);
        assert_eq!(parse_lrc(&many).lines.len(), MAX_LINES);
        let long = format!("[00:01.00]{}\n", "y".repeat(10_000));
        assert_eq!(parse_lrc(&long).lines[0].text.len(), MAX_LINE_CHARS);
        assert!(parse_lrc("[99:99.99]bad\n[aa:bb]x\n").lines.is_empty());
    }
}
