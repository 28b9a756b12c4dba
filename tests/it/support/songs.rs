//! Test songs: tones written as WAV here, encoded to every format the box plays by the
//! real encoders (sox for FLAC and Ogg Vorbis, lame for MP3, opusenc for Opus, ffmpeg
//! for AAC in MP4 and in ADTS, and ALAC, which the box does not decode), with
//! `scripts/setup.sh test` installing them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::INSTALL_HINT;

/// Writes a 16-bit WAV of tone segments `(hz, seconds)` at `amplitude` (0 Hz: silence),
/// `channels` channels at `rate`.
pub fn tone_wav(path: &Path, rate: u32, channels: u16, segments: &[(f32, f32)], amplitude: f32) {
    let mut samples: Vec<i16> = Vec::new();
    let mut n = 0u64;
    for &(hz, secs) in segments {
        let frames = (secs * rate as f32).round() as u64;
        for _ in 0..frames {
            let t = n as f32 / rate as f32;
            let v = if hz > 0.0 {
                amplitude * (2.0 * std::f32::consts::PI * hz * t).sin()
            } else {
                0.0
            };
            let s = (v * 32767.0).round() as i16;
            for _ in 0..channels {
                samples.push(s);
            }
            n += 1;
        }
    }
    write_wav16(path, rate, channels, &samples);
}

pub use duetbox::songs::testwav::write_wav16;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Encodes `wav` into `out`, the format from `out`'s extension (`.alac.m4a`: ALAC).
pub fn encode(wav: &Path, out: &Path) -> PathBuf {
    let (w, o) = (wav.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let name = o.to_ascii_lowercase();
    let ffmpeg = |codec: &[&str]| {
        let mut args = vec!["-hide_banner", "-loglevel", "error", "-y", "-i", w];
        args.extend_from_slice(codec);
        args.push(o);
        run("ffmpeg", &args);
    };
    if name.ends_with(".alac.m4a") {
        ffmpeg(&["-c:a", "alac"]);
    } else if name.ends_with(".flac") || name.ends_with(".ogg") || name.ends_with(".wav") {
        run("sox", &[w, o]);
    } else if name.ends_with(".mp3") {
        run("lame", &["--quiet", "-b", "192", w, o]);
    } else if name.ends_with(".opus") {
        run("opusenc", &["--quiet", "--bitrate", "128", w, o]);
    } else if name.ends_with(".m4a") {
        ffmpeg(&["-c:a", "aac", "-b:a", "192k"]);
    } else if name.ends_with(".aac") {
        ffmpeg(&["-c:a", "aac", "-b:a", "192k", "-f", "adts"]);
    } else {
        panic!("no encoder for {o}");
    }
    out.to_path_buf()
}

/// A song of `segments` in `dir` named `file` (its format from the extension), made
/// from a WAV at `rate`.
pub fn song(dir: &Path, file: &str, rate: u32, segments: &[(f32, f32)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("the library dir");
    let wav = dir.join(format!(".{file}.source.wav"));
    tone_wav(&wav, rate, 2, segments, 0.5);
    let out = dir.join(file);
    let path = encode(&wav, &out);
    std::fs::remove_file(&wav).expect("remove the source");
    path
}

/// The dominant of `candidates` (Hz) in each `window`-frame stretch of `left` (48 kHz),
/// with its level, or `None` where none reaches `floor`.
pub fn tones_by_window(
    left: &[f32],
    candidates: &[f32],
    window: usize,
    floor: f32,
) -> Vec<Option<(f32, f32)>> {
    left.chunks_exact(window)
        .map(|w| {
            candidates
                .iter()
                .map(|&hz| (hz, duetbox::engine::testkit::tone_level(w, hz)))
                .filter(|&(_, level)| level >= floor)
                .max_by(|a, b| a.1.total_cmp(&b.1))
        })
        .collect()
}
