//! The decoder on WAV files written here (the other formats need encoders: the
//! integration tests make them with sox, lame, opusenc and ffmpeg).

use super::*;

/// A 16-bit PCM WAV of `frames` frames at `rate`, `channels` channels, sample `f(frame,
/// channel)`.
fn wav(path: &Path, rate: u32, channels: u16, frames: usize, f: impl Fn(usize, u16) -> f32) {
    let samples: Vec<i16> = (0..frames)
        .flat_map(|n| (0..channels).map(move |c| (n, c)))
        .map(|(n, c)| crate::songs::testwav::to_i16(f(n, c)))
        .collect();
    crate::songs::testwav::write_wav16(path, rate, channels, &samples);
}

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("duetbox-decode-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn decode_all(d: &mut SongDecoder) -> Vec<f32> {
    let mut out = Vec::new();
    while d.read(&mut out).unwrap() {}
    out
}

/// A 16-bit sample that names its frame (mod 16384), exact through PCM.
fn code(frame: usize) -> f32 {
    ((frame % 16_384) as f32 + 1.0) / 32_768.0
}

fn decode_code(v: f32) -> usize {
    (v * 32_768.0).round() as usize - 1
}

fn tone(hz: f32, rate: u32) -> impl Fn(usize, u16) -> f32 {
    move |n, _| 0.5 * (2.0 * std::f32::consts::PI * hz * n as f32 / rate as f32).sin()
}

/// Level of `hz` in the left channel of interleaved stereo (amplitude).
fn level(stereo: &[f32], hz: f32) -> f32 {
    let left: Vec<f32> = stereo.iter().step_by(2).copied().collect();
    crate::engine::testkit::tone_level(&left, hz)
}

#[test]
fn a_48k_stereo_wav_comes_out_sample_exact() {
    let d = dir("exact");
    let path = d.join("Some Artist - A Song.wav");
    wav(&path, 48_000, 2, 48_000, |n, c| {
        code(n) * if c == 0 { 1.0 } else { -1.0 }
    });
    let mut dec = SongDecoder::open(&path).unwrap();
    assert_eq!(dec.info().source_rate, 48_000);
    assert_eq!(dec.info().duration, Some(Duration::from_secs(1)));
    let out = decode_all(&mut dec);
    assert_eq!(out.len(), 2 * 48_000);
    for (n, frame) in out.chunks_exact(2).enumerate() {
        assert_eq!(decode_code(frame[0]), n % 16_384, "frame {n}");
        assert_eq!(frame[1], -frame[0], "frame {n}");
    }
}

#[test]
fn mono_goes_to_both_sides() {
    let d = dir("mono");
    let path = d.join("mono.wav");
    wav(&path, 48_000, 1, 4_800, |n, _| code(n));
    let out = decode_all(&mut SongDecoder::open(&path).unwrap());
    assert_eq!(out.len(), 2 * 4_800);
    assert!(out.chunks_exact(2).all(|f| f[0] == f[1] && f[0] > 0.0));
}

#[test]
fn more_than_two_channels_keep_the_front_pair() {
    let d = dir("surround");
    let path = d.join("four.wav");
    wav(&path, 48_000, 4, 4_800, |_, c| 0.1 * (c as f32 + 1.0));
    let out = decode_all(&mut SongDecoder::open(&path).unwrap());
    assert_eq!(out.len(), 2 * 4_800);
    assert!(out
        .chunks_exact(2)
        .all(|f| (f[0] - 0.1).abs() < 1e-3 && (f[1] - 0.2).abs() < 1e-3));
}

#[test]
fn a_44k1_song_is_resampled_to_48k_same_length_same_pitch() {
    let d = dir("resample");
    let path = d.join("cd.wav");
    let rate = 44_100;
    wav(&path, rate, 2, 2 * rate as usize, tone(1_000.0, rate));
    let mut dec = SongDecoder::open(&path).unwrap();
    let out = decode_all(&mut dec);
    assert_eq!(out.len(), 2 * 96_000, "two seconds at 48 kHz, to the frame");
    let middle = &out[2 * 24_000..2 * 72_000];
    assert!(
        level(middle, 1_000.0) > 0.49,
        "1 kHz stays 1 kHz: {}",
        level(middle, 1_000.0)
    );
    assert!(level(middle, 1_088.4) < 0.01, "not sped up by 48/44.1");
    // No start-up delay: the tone starts at frame 0 (a zero crossing, rising), so it
    // first exceeds 0.45 (0.9 of its peak) at frame 9, as 0.5·sin(2π·1000·9/48000) does.
    let first = out
        .chunks_exact(2)
        .take(48)
        .position(|f| f[0] > 0.45)
        .expect("the first peak within 1 ms");
    assert!(
        (8..=10).contains(&first),
        "the tone reaches 0.45 at frame {first}"
    );
}

#[test]
fn a_seek_starts_exactly_at_the_asked_frame() {
    let d = dir("seek");
    let path = d.join("long.wav");
    wav(&path, 48_000, 2, 5 * 48_000, |n, _| code(n));
    let mut dec = SongDecoder::open(&path).unwrap();
    let mut out = Vec::new();
    dec.read(&mut out).unwrap();
    for ms in [2_500u64, 700, 4_999] {
        let at = dec.seek(Duration::from_millis(ms)).unwrap();
        assert_eq!(at, ms * 48);
        let mut out = Vec::new();
        while out.len() < 2 * 100 && dec.read(&mut out).unwrap() {}
        assert_eq!(
            decode_code(out[0]),
            (ms * 48) as usize % 16_384,
            "after a seek to {ms} ms"
        );
    }
}

#[test]
fn a_seek_in_a_resampled_song_lands_in_time() {
    let d = dir("seek-rs");
    let path = d.join("cd.wav");
    let rate = 44_100;
    // Silence, then a tone from 2.000 s on.
    wav(&path, rate, 2, 3 * rate as usize, |n, c| {
        if n >= 2 * rate as usize {
            tone(1_000.0, rate)(n, c)
        } else {
            0.0
        }
    });
    let mut dec = SongDecoder::open(&path).unwrap();
    assert_eq!(dec.seek(Duration::from_millis(1_900)).unwrap(), 91_200);
    let mut out = Vec::new();
    while out.len() < 2 * 9_600 && dec.read(&mut out).unwrap() {}
    let onset = out
        .chunks_exact(2)
        .position(|f| f[0].abs() > 0.05)
        .expect("the tone");
    // 100 ms after the seek point, give or take the resampler's filter ring (< 1 ms).
    assert!(
        (4_752..=4_848).contains(&onset),
        "tone onset {onset} frames after the seek"
    );
}

#[test]
fn garbage_is_unsupported_and_a_truncated_file_plays_what_it_has() {
    let d = dir("bad");
    let junk = d.join("junk.mp3");
    std::fs::write(
        &junk,
        (0..20_000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let err = SongDecoder::open(&junk).err().expect("junk refused");
    assert!(
        matches!(err, SongError::Unsupported(_) | SongError::Corrupt(_)),
        "{err}"
    );
    let empty = d.join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    assert!(SongDecoder::open(&empty).is_err());
    let missing = d.join("missing.wav");
    assert_eq!(
        SongDecoder::open(&missing).err().unwrap().kind(),
        "unreadable"
    );

    let cut = d.join("cut.wav");
    wav(&cut, 48_000, 2, 48_000, |n, _| code(n));
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = decode_all(&mut SongDecoder::open(&cut).unwrap());
    assert!(
        (2 * 23_000..=2 * 24_000).contains(&out.len()),
        "half the frames: {}",
        out.len() / 2
    );
}

#[test]
fn tags_are_cleaned() {
    assert_eq!(clean_tag("  A\u{7}B \n"), Some("AB".into()));
    assert_eq!(clean_tag(" \t "), None);
    assert_eq!(clean_tag(&"x".repeat(500)).unwrap().len(), 200);
}
