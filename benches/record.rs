//! Cost of recording a song, printed as a table.
//!
//! `cargo bench --bench record` (`make bench-record`). Feeds the recorder thread a song's
//! worth of 20 ms chunks (a chord with a beat as the backing, a sung-like tone per
//! voice) as the audio thread stages them, for 1, 2 and 8 voices, and reports how long
//! it took to encode and write everything (libopus at complexity 10: the backing and
//! the mix in stereo, each voice in mono) as a share of the song's length on one core.
//! The recorder runs on its own thread beside the audio thread while a song plays; on
//! a Pi the numbers are several times these.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it records 2 s once, so the
//! code stays built and working.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use duetbox::engine::SingerId;
use duetbox::record::{
    RecordChunk, RecordLink, Recorder, RecorderCommand, RecorderEvent, Session, VoicePlan,
    CHUNK_FRAMES,
};

#[expect(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn clock() -> Instant {
    Instant::now()
}

/// A 20 ms chunk at mix time `start` for `voices` seated singers.
fn chunk(template: &RecordChunk, start: u64, voices: usize) -> RecordChunk {
    let mut c = template.clone();
    c.start = start;
    c.frames = CHUNK_FRAMES;
    for k in 0..CHUNK_FRAMES {
        let t = (start + k as u64) as f32 / 48_000.0;
        let beat = 0.2 + 0.3 * (-(t % 0.5) / 0.08).exp();
        let chord: f32 = [220.0f32, 277.2, 329.6]
            .iter()
            .map(|hz| (2.0 * std::f32::consts::PI * hz * t).sin())
            .sum();
        c.backing[2 * k] = 0.2 * beat * chord;
        c.backing[2 * k + 1] = 0.2 * beat * chord;
        for v in 0..voices {
            let hz = 196.0 * (1.0 + v as f32 * 0.25);
            let vibrato = 1.0 + 0.01 * (2.0 * std::f32::consts::PI * 5.0 * t).sin();
            c.voices[v][k] = 0.3 * (2.0 * std::f32::consts::PI * hz * vibrato * t).sin();
        }
    }
    for v in 0..voices {
        c.singers[v] = Some(SingerId(v as u32 + 1));
    }
    c
}

/// Records `seconds` of a song with `voices` voices; the wall time taken.
fn record(seconds: u64, voices: usize) -> Duration {
    let dir = std::env::temp_dir().join(format!(
        "duetbox-bench-record-{}-{voices}",
        std::process::id()
    ));
    let link = RecordLink::new();
    let (tx, events) = std::sync::mpsc::channel();
    let recorder = Recorder::spawn(link.clone(), move |e| {
        let _ = tx.send(e);
    })
    .expect("the recorder starts");
    let started = clock();
    recorder.send(RecorderCommand::Start(Session {
        dir: dir.clone(),
        title: "Bench".into(),
        artist: "duetbox".into(),
        start: 0,
        voices: (0..voices)
            .map(|v| VoicePlan {
                singer: SingerId(v as u32 + 1),
                label: format!("v{v}"),
                shift_frames: 2_400,
                gain_db: 0.0,
                pan: 0.0,
            })
            .collect(),
    }));
    while !link.on.load(Ordering::Relaxed) {
        std::thread::yield_now();
    }
    let template = RecordChunk::default();
    let chunks = seconds * 48_000 / CHUNK_FRAMES as u64;
    for n in 0..chunks {
        let mut c = chunk(&template, n * CHUNK_FRAMES as u64, voices);
        while let Err(back) = link.chunks.push(c) {
            c = back;
            std::thread::yield_now();
        }
    }
    recorder.send(RecorderCommand::Stop);
    let event = events
        .recv_timeout(Duration::from_secs(600))
        .expect("the recording ends");
    let took = started.elapsed();
    let RecorderEvent::Finished { frames, .. } = event else {
        panic!("the recording failed: {event:?}");
    };
    assert_eq!(frames, chunks * CHUNK_FRAMES as u64, "every frame recorded");
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let seconds = if bench { 60 } else { 2 };
    if bench {
        println!("record a {seconds} s song (backing, mix, each voice; Ogg Opus, complexity 10)");
        println!("{:<8} {:>10} {:>12}", "voices", "ms", "% real time");
    }
    for voices in if bench { vec![1, 2, 8] } else { vec![2] } {
        let took = record(seconds, voices);
        if bench {
            let share = took.as_secs_f64() / seconds as f64 * 100.0;
            println!(
                "{voices:<8} {:>10.1} {share:>11.2}%",
                took.as_secs_f64() * 1e3
            );
        }
    }
}
