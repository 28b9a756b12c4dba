//! The two-phone duet in real browsers: the box runs in-process with its ALSA output
//! through the `file` plugin (a WAV recording, paced by a private PulseAudio null sink),
//! and three headless Chromium phones (tests/e2e/phones.mjs) join through the real page
//! by tapping its controls: singer A with a 440 Hz fake microphone, singer B with 660 Hz,
//! and a listener. Asserted: the venue recording holds both voices at the expected
//! level; A hears B and not itself, B hears A and not itself (measured inside each page
//! from the received track); the listener hears both. Screenshots are saved under
//! target/e2e-artifacts/.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use duetbox::audio::Counters;
use duetbox::config::Config;
use duetbox::engine::testkit::tone_level;
use serde_json::Value;

use crate::support::{self, alsa_config, pcm, raw, read_wav_left, within, PulseAudio};

/// Seconds the phones stay live before they measure. The venue check needs one second
/// of it written by the output, and PulseAudio on a busy machine can stall that for a
/// second or two (seen: 1.35 s of a 4 s duet lost), so give it room.
const LISTEN_SECONDS: u32 = 6;

/// Deadline for the whole browser run (three Chromium starts, joins, listening).
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a 48 kHz mono 16-bit WAV of a tone, long enough to loop without a seam
/// mattering (Chromium loops the fake capture file).
fn write_tone_wav(path: &Path, hz: f32, amplitude: f32, seconds: u32) {
    let n = 48_000 * seconds as usize;
    let mut bytes = Vec::with_capacity(44 + 2 * n);
    let data_len = (2 * n) as u32;
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&48_000u32.to_le_bytes());
    bytes.extend_from_slice(&96_000u32.to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for k in 0..n {
        let v = amplitude * (2.0 * std::f32::consts::PI * hz * k as f32 / 48_000.0).sin();
        bytes.extend_from_slice(&((v * 32767.0) as i16).to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write the fake microphone WAV");
}

fn box_config(state_dir: &Path) -> Config {
    let mut config = support::loopback_box_config(state_dir);
    config.audio.output = format!("alsa:{}", pcm::VENUE_E2E);
    // PulseAudio's null sink on two busy cores (three Chromiums) underruns a 15 ms
    // buffer, and each pulse stream restart stalls for a second or more: give the test's
    // "speakers" a roomy buffer. Latency is measured elsewhere (tests/it/whip.rs).
    config.audio.period_ms = 10.0;
    config.audio.buffer_periods = 8;
    config.validate().expect("the test config is valid");
    config
}

/// What the phones' driver left: its output (stdout), its stderr, and the output's
/// period counter at each of its `mark: ...` lines.
struct DriverRun {
    output: std::process::Output,
    stderr: String,
    marks: Vec<(String, u64)>,
}

fn run_driver(args: &[String], counters: Arc<Counters>) -> DriverRun {
    let mut child = Command::new("node")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): {}", support::INSTALL_HINT));
    let lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    // Read as the lines come, so each marker gets the counter of its moment.
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        let mut marks = Vec::new();
        for line in lines.map_while(Result::ok) {
            if let Some(mark) = line.strip_prefix("mark: ") {
                marks.push((mark.to_string(), counters.periods.load(Ordering::Relaxed)));
            }
            stderr.push_str(&line);
            stderr.push('\n');
        }
        (stderr, marks)
    });
    let output = child.wait_with_output().expect("the driver's output");
    let (stderr, marks) = reader.join().expect("the stderr reader");
    DriverRun {
        output,
        stderr,
        marks,
    }
}

fn level_db(phone: &Value, hz: &str) -> f64 {
    phone["levels"][hz]
        .as_f64()
        .unwrap_or_else(|| panic!("no {hz} Hz level in {phone}"))
}

#[test]
fn two_phones_sing_a_duet_through_the_box() {
    let _serial = crate::support::SERIAL.blocking_lock();
    duetbox::telemetry::init("duetbox=info,warn");
    let alsa = alsa_config();
    let _pulse = PulseAudio::start(&alsa.pulse_e2e_dir());
    let work = alsa.dir.join("phones");
    std::fs::create_dir_all(&work).expect("work dir");
    let mic_a = work.join("a440.wav");
    let mic_b = work.join("b660.wav");
    write_tone_wav(&mic_a, 440.0, 0.5, 10);
    write_tone_wav(&mic_b, 660.0, 0.5, 10);
    let artifacts = repo().join("target").join("e2e-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let driver = repo().join("tests/e2e/phones.mjs");
    assert!(
        repo()
            .join("tests/e2e/node_modules/playwright-core")
            .exists(),
        "the e2e driver's packages are missing: {}",
        support::INSTALL_HINT
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = box_config(&work.join("state"));
    let period_frames = (48_000.0 * config.audio.period_ms / 1000.0) as usize;
    let running = runtime
        .block_on(duetbox::app::start(config))
        .expect("the box starts");
    assert_eq!(running.output, format!("alsa:{}", pcm::VENUE_E2E));
    let url = format!("https://127.0.0.1:{}/", running.https_addr.port());

    let args: Vec<String> = vec![
        driver.display().to_string(),
        "--url".into(),
        url,
        "--out".into(),
        artifacts.display().to_string(),
        "--seconds".into(),
        LISTEN_SECONDS.to_string(),
        "--phone".into(),
        format!("A:singer:{}", mic_a.display()),
        "--phone".into(),
        format!("B:singer:{}", mic_b.display()),
        "--phone".into(),
        "L:listener:-".into(),
        "--phone".into(),
        format!("C:singer:{}", mic_a.display()),
        "--expect-error".into(),
        "room_full".into(),
    ];
    let counters = running.audio.counters.clone();
    let driver = within("the headless phones", BROWSER_DEADLINE, {
        let counters = counters.clone();
        move || run_driver(&args, counters)
    });
    let (output, stderr, marks) = (driver.output, driver.stderr, driver.marks);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let room_at_end = runtime.block_on(async { running.control.counts() });
    runtime
        .block_on(running.stop())
        .expect("the box stops cleanly");
    // The audio thread has ended: these are final, and the recording is closed.
    let periods_written = counters.periods.load(Ordering::Relaxed) as usize;
    let xruns = counters.xruns.load(Ordering::Relaxed);
    assert!(
        output.status.success(),
        "phones failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let phones: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let phone = |name: &str| -> &Value {
        phones
            .iter()
            .find(|p| p["phone"] == name)
            .unwrap_or_else(|| panic!("no result for phone {name}:\n{stdout}"))
    };
    eprintln!("phones: {stdout}");
    eprintln!(
        "room at the end (singers, listeners): {room_at_end:?}, periods {periods_written}, xruns {xruns}"
    );

    // Each phone, measured inside its page from the track it received.
    let (a, b, l, c) = (phone("A"), phone("B"), phone("L"), phone("C"));
    assert_eq!(
        (
            a["state"].as_str(),
            b["state"].as_str(),
            l["state"].as_str()
        ),
        (Some("live"), Some("live"), Some("live"))
    );
    assert_eq!(
        c["error"].as_str(),
        Some("room_full"),
        "a third singer is refused: {c}"
    );
    let (a440, a660) = (level_db(a, "440"), level_db(a, "660"));
    let (b440, b660) = (level_db(b, "440"), level_db(b, "660"));
    assert!(
        a660 > -45.0 && a660 - a440 >= 30.0,
        "A hears B (660 Hz {a660} dB) and not itself (440 Hz {a440} dB)"
    );
    assert!(
        b440 > -45.0 && b440 - b660 >= 30.0,
        "B hears A (440 Hz {b440} dB) and not itself (660 Hz {b660} dB)"
    );
    let (l440, l660) = (level_db(l, "440"), level_db(l, "660"));
    assert!(
        l440 > -45.0 && l660 > -45.0 && (l440 - l660).abs() < 10.0,
        "the listener hears both: {l440} / {l660} dB"
    );
    for name in ["A", "B", "L"] {
        assert!(
            artifacts.join(format!("{name}.png")).exists(),
            "screenshot of {name}"
        );
    }

    // The venue speakers: the WAV the ALSA file plugin wrote (flushed when the box closed
    // its PCM at shutdown). Both voices, panned centre (-3 dB), at their phones' level.
    let venue = read_wav_left(&alsa.file(raw::VENUE_E2E));
    // The recording holds exactly the periods the audio thread wrote, and a busy machine
    // stalls the PulseAudio "speakers" now and then (seconds, at Chromium starts): so
    // find the duet in it by the period counter at the driver's markers, not by time.
    assert!(
        venue.len().abs_diff(periods_written * period_frames) <= 2 * period_frames,
        "the recording ({} frames) is the {periods_written} periods written",
        venue.len()
    );
    let mark = |name: &str| -> usize {
        marks
            .iter()
            .find(|(m, _)| m == name)
            .map(|&(_, periods)| periods as usize * period_frames)
            .unwrap_or_else(|| panic!("no '{name}' marker from the driver:\n{stderr}"))
    };
    // Half a second after the last join for the voices to settle, until the phones
    // start measuring (they stay live through it).
    let from = mark("all live") + 24_000;
    let to = mark("measuring").min(venue.len());
    assert!(
        to >= from + 48_000,
        "the output wrote only {:.2} s of the {LISTEN_SECONDS} s duet (xruns {xruns})",
        to.saturating_sub(from) as f64 / 48_000.0
    );
    let duet = &venue[from..to];
    let windows: Vec<(f32, f32)> = duet
        .chunks_exact(4_800)
        .map(|w| (tone_level(w, 440.0), tone_level(w, 660.0)))
        .collect();
    let profile: Vec<String> = windows
        .iter()
        .map(|(a, b)| format!("{a:.2}/{b:.2}"))
        .collect();
    // The level of each voice is the mean of its 100 ms levels. One Goertzel over the
    // whole stretch would not be a level: a splice or a catch-up shifts the tone's
    // phase, and the parts before and after cancel (seen: 0.150 over 5.5 s whose
    // windows were all 0.36-0.48 but one).
    let mean = |f: fn(&(f32, f32)) -> f32| {
        windows.iter().map(f).sum::<f32>() / windows.len().max(1) as f32
    };
    let (v440, v660) = (mean(|w| w.0), mean(|w| w.1));
    eprintln!(
        "venue, {:.2} s of duet: 440 Hz {v440:.3}, 660 Hz {v660:.3}; per 100 ms: {}",
        duet.len() as f64 / 48_000.0,
        profile.join(" ")
    );
    for (hz, level) in [(440, v440), (660, v660)] {
        assert!(
            (0.15..=0.6).contains(&level),
            "venue {hz} Hz level {level} (expected ~0.35)"
        );
    }
    // Both voices all along, not on average: a dropout would show as weak windows.
    let both = windows
        .iter()
        .filter(|&&(a, b)| a >= 0.15 && b >= 0.15)
        .count();
    assert!(
        both * 10 >= windows.len() * 9,
        "both voices in only {both} of {} 100 ms windows: {}",
        windows.len(),
        profile.join(" ")
    );
    let peak = venue.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        peak <= 0.9,
        "the limiter keeps the venue under its ceiling: peak {peak}"
    );
}
