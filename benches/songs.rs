//! Cost of decoding a song, per format, printed as a table.
//!
//! `cargo bench --bench songs` (`make bench-songs`). Makes a three-minute stereo song
//! (a chord, 44.1 kHz) with the real encoders (sox, lame, opusenc, ffmpeg: `scripts/
//! setup.sh test` installs them), then decodes each file start to end with the box's
//! own `SongDecoder` (demux, decode, resample to 48 kHz) and reports the time taken,
//! as milliseconds and as a share of the song's length on one core. The player thread
//! does this about a second ahead of the speakers, so a share well under 100 % is what
//! keeps the backing fed; on a Pi the numbers are several times these.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it decodes a short song
//! once per format, so the code stays built and working.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use duetbox::songs::decode::SongDecoder;
use duetbox::songs::testwav::{to_i16, write_wav16};

#[expect(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn clock() -> Instant {
    Instant::now()
}

fn write_wav(path: &Path, rate: u32, seconds: u32) {
    let frames = rate as usize * seconds as usize;
    let samples: Vec<i16> = (0..frames)
        .flat_map(|n| {
            let t = n as f32 / rate as f32;
            let chord: f32 = [220.0f32, 277.2, 329.6, 440.0]
                .iter()
                .map(|hz| (2.0 * std::f32::consts::PI * hz * t).sin())
                .sum();
            let s = to_i16(0.2 * chord);
            [s, s]
        })
        .collect();
    write_wav16(path, rate, 2, &samples);
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The song in every format; the ones whose encoder is missing are left out (said).
fn songs(dir: &Path, seconds: u32) -> Vec<(&'static str, PathBuf)> {
    std::fs::create_dir_all(dir).expect("bench dir");
    let wav = dir.join("source.wav");
    write_wav(&wav, 44_100, seconds);
    let w = wav.to_str().expect("utf-8");
    let mut out = vec![("wav 44.1k", wav.clone())];
    let mut add =
        |label: &'static str, name: &str, program: &str, args: &dyn Fn(&str) -> Vec<String>| {
            let path = dir.join(name);
            let o = path.to_str().expect("utf-8").to_string();
            let args = args(&o);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if run(program, &args) {
                out.push((label, path));
            } else {
                eprintln!("songs bench: {program} failed or is missing; {label} left out");
            }
        };
    add("flac", "song.flac", "sox", &|o| vec![w.into(), o.into()]);
    add("ogg vorbis", "song.ogg", "sox", &|o| {
        vec![w.into(), o.into()]
    });
    add("mp3 192k", "song.mp3", "lame", &|o| {
        vec![
            "--quiet".into(),
            "-b".into(),
            "192".into(),
            w.into(),
            o.into(),
        ]
    });
    add("opus 128k", "song.opus", "opusenc", &|o| {
        vec![
            "--quiet".into(),
            "--bitrate".into(),
            "128".into(),
            w.into(),
            o.into(),
        ]
    });
    add("m4a aac 192k", "song.m4a", "ffmpeg", &|o| {
        [
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            w,
            "-c:a",
            "aac",
            "-b:a",
            "192k",
            o,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    });
    out
}

fn decode(path: &Path) -> (Duration, usize) {
    let start = clock();
    let mut decoder = SongDecoder::open(path).expect("the song opens");
    let mut buf = Vec::new();
    let mut frames = 0;
    loop {
        buf.clear();
        let more = decoder.read(&mut buf).expect("the song decodes");
        frames += buf.len() / 2;
        if !more {
            break;
        }
    }
    (start.elapsed(), frames)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let seconds = if bench { 180 } else { 2 };
    let dir = std::env::temp_dir().join(format!("duetbox-bench-songs-{}", std::process::id()));
    let list = songs(&dir, seconds);
    if bench {
        println!("decode a {seconds} s stereo song to 48 kHz, start to end, one core");
        println!("{:<14} {:>10} {:>12}", "format", "ms", "% real time");
    }
    for (label, path) in &list {
        let (took, frames) = decode(path);
        assert!(
            frames.abs_diff(seconds as usize * 48_000) <= 4_800,
            "{label}: {frames} frames for {seconds} s"
        );
        if bench {
            let share = took.as_secs_f64() / f64::from(seconds) * 100.0;
            println!(
                "{label:<14} {:>10.1} {share:>11.2}%",
                took.as_secs_f64() * 1e3
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
