//! The two-phone duet in real browsers: the box runs in-process with its ALSA output
//! through the `file` plugin (a WAV recording, paced by a private PulseAudio null sink),
//! and three headless Chromium phones (tests/e2e/phones.mjs) join through the real page
//! by tapping its controls: singer A with a 440 Hz fake microphone, singer B with 660 Hz,
//! and a listener. Asserted: the venue recording holds both voices at the expected
//! level; A hears B and not itself, B hears A and not itself (measured inside each page
//! from the received track); the listener hears both. Then a Firefox ESR singer and a
//! Chromium singer, the same way. Screenshots are saved under target/e2e-artifacts/.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duetbox::config::Config;

use crate::support::e2e::{
    artifacts, level_db, write_tone_wav, Driver, DriverRun, FIREFOX_TONE_HZ,
};
use crate::support::netns::Netns;
use crate::support::{self, alsa_config, pcm, raw, read_wav_left, PulseAudio};

/// Seconds the phones stay live before they measure. The venue check needs one second
/// of it written by the output, and PulseAudio on a busy machine can stall that for a
/// second or two (seen: 1.35 s of a 4 s duet lost), so give it room.
const LISTEN_SECONDS: u32 = 6;

/// Deadline for the whole browser run (three Chromium starts, joins, listening).
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

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

/// A box whose venue output is recorded (the e2e PulseAudio "speakers"), a run of the
/// phones against it, and the recording with the output's period count at each of the
/// driver's marks.
struct Recorded {
    run: DriverRun,
    venue: Vec<f32>,
    /// (mark, periods written by then).
    marks: Vec<(String, u64)>,
    period_frames: usize,
    periods_written: usize,
    xruns: u64,
    /// (singers, listeners) while the phones were still there.
    room_at_end: (usize, usize),
}

/// Starts the box with `config`, runs the driver `phones(url)` builds, stops the box and
/// reads the venue recording.
fn record(config: Config, host: &str, phones: impl FnOnce(&str) -> Driver) -> Recorded {
    let alsa = alsa_config();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let period_frames = (48_000.0 * config.audio.period_ms / 1000.0) as usize;
    let running = runtime
        .block_on(duetbox::app::start(config))
        .expect("the box starts");
    assert_eq!(running.output, format!("alsa:{}", pcm::VENUE_E2E));
    let url = format!("https://{host}:{}/", running.https_addr.port());
    let counters = running.audio.counters.clone();
    let marks: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let run = phones(&url).run(BROWSER_DEADLINE, {
        let (counters, marks) = (counters.clone(), marks.clone());
        move |mark| {
            let periods = counters.periods.load(Ordering::Relaxed);
            marks
                .lock()
                .expect("marks")
                .push((mark.name.clone(), periods));
        }
    });
    let room_at_end = running.control.counts();
    runtime
        .block_on(running.stop())
        .expect("the box stops cleanly");
    run.assert_success();
    eprintln!("phones: {}", run.stdout);
    let marks = marks.lock().expect("marks").clone();
    Recorded {
        run,
        // Flushed when the box closed its PCM at shutdown.
        venue: read_wav_left(&alsa.file(raw::VENUE_E2E)),
        marks,
        period_frames,
        // The audio thread has ended: these are final.
        periods_written: counters.periods.load(Ordering::Relaxed) as usize,
        xruns: counters.xruns.load(Ordering::Relaxed),
        room_at_end,
    }
}

impl Recorded {
    /// The duet in the recording: from half a second after all were live (for the
    /// voices to settle) until the phones started measuring. The recording holds
    /// exactly the periods the audio thread wrote, and a busy machine stalls the
    /// PulseAudio "speakers" now and then (seconds, at browser starts): so the duet is
    /// found by the period counter at the driver's marks, not by time.
    fn duet(&self) -> &[f32] {
        let (pf, written) = (self.period_frames, self.periods_written);
        assert!(
            self.venue.len().abs_diff(written * pf) <= 2 * pf,
            "the recording ({} frames) is the {written} periods written",
            self.venue.len()
        );
        let mark = |name: &str| -> usize {
            self.marks
                .iter()
                .find(|(m, _)| m == name)
                .map(|&(_, periods)| periods as usize * pf)
                .unwrap_or_else(|| panic!("no '{name}' mark from the driver:\n{}", self.run.stderr))
        };
        let from = mark("all live") + 24_000;
        let to = mark("measuring").min(self.venue.len());
        assert!(
            to >= from + 48_000,
            "the output wrote only {:.2} s of the {LISTEN_SECONDS} s duet (xruns {})",
            to.saturating_sub(from) as f64 / 48_000.0,
            self.xruns
        );
        &self.venue[from..to]
    }
}

/// A fresh work directory with a fake microphone WAV per (file name, Hz).
fn mics(area: &str, tones: &[(&str, f32)]) -> Vec<PathBuf> {
    let work = alsa_config().dir.join(area);
    std::fs::create_dir_all(&work).expect("work dir");
    tones
        .iter()
        .map(|&(name, hz)| {
            let path = work.join(name);
            write_tone_wav(&path, hz, 0.5, 10);
            path
        })
        .collect()
}

#[test]
fn two_phones_sing_a_duet_through_the_box() {
    let _serial = crate::support::SERIAL.blocking_lock();
    duetbox::telemetry::init("duetbox=info,warn");
    let _pulse = PulseAudio::start(&alsa_config().pulse_e2e_dir());
    let mics = mics("phones", &[("a440.wav", 440.0), ("b660.wav", 660.0)]);
    let (mic_a, mic_b) = (&mics[0], &mics[1]);
    let config = box_config(&alsa_config().dir.join("phones").join("state"));
    let rec = record(config, "127.0.0.1", |url| {
        Driver::new(url, LISTEN_SECONDS)
            .phone("A", "singer", Some(mic_a), "chromium")
            .phone("B", "singer", Some(mic_b), "chromium")
            .phone("L", "listener", None, "chromium")
            .phone("C", "singer", Some(mic_a), "chromium")
            .arg("--expect-error", "room_full")
    });
    eprintln!(
        "room at the end (singers, listeners): {:?}, periods {}, xruns {}",
        rec.room_at_end, rec.periods_written, rec.xruns
    );

    // Each phone, measured inside its page from the track it received.
    let run = &rec.run;
    let (a, b, l, c) = (
        run.result("A"),
        run.result("B"),
        run.result("L"),
        run.result("C"),
    );
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
    let (a440, a660) = (level_db(&a, 440), level_db(&a, 660));
    let (b440, b660) = (level_db(&b, 440), level_db(&b, 660));
    assert!(
        a660 > -45.0 && a660 - a440 >= 30.0,
        "A hears B (660 Hz {a660} dB) and not itself (440 Hz {a440} dB)"
    );
    assert!(
        b440 > -45.0 && b440 - b660 >= 30.0,
        "B hears A (440 Hz {b440} dB) and not itself (660 Hz {b660} dB)"
    );
    let (l440, l660) = (level_db(&l, 440), level_db(&l, 660));
    assert!(
        l440 > -45.0 && l660 > -45.0 && (l440 - l660).abs() < 10.0,
        "the listener hears both: {l440} / {l660} dB"
    );
    for name in ["A", "B", "L"] {
        assert!(
            artifacts().join(format!("{name}.png")).exists(),
            "screenshot of {name}"
        );
    }

    // The venue speakers: both voices, panned centre (-3 dB), at their phones' level.
    support::assert_two_voices("venue", rec.duet(), [440.0, 660.0], 0.15..=0.6, 0.15);
    let peak = rec.venue.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        peak <= 0.9,
        "the limiter keeps the venue under its ceiling: peak {peak}"
    );
}

/// A Firefox ESR singer and a Chromium singer through the box's own page: each hears
/// the other and not themselves, and the venue holds both voices. Firefox offers Opus
/// on payload type 109 (Chromium 111), so this also checks that each phone's mix goes
/// out on its own payload type. Both browsers run in a network namespace (Firefox never
/// offers 127.0.0.1; PLATFORM.md §6), the box listens on the namespace's link.
#[test]
fn a_firefox_singer_and_a_chromium_singer_sing_a_duet() {
    let _serial = crate::support::SERIAL.blocking_lock();
    duetbox::telemetry::init("duetbox=info,warn");
    let alsa = alsa_config();
    let _pulse = PulseAudio::start(&alsa.pulse_e2e_dir());
    let mics = mics("firefox", &[("a440.wav", 440.0)]);
    let ns = Netns::create();
    let mut config = box_config(&alsa.dir.join("firefox").join("state"));
    config.http.bind = ns.host_ip.to_string();
    config.rtc.udp_bind = vec![ns.host_ip.to_string()];
    config.rtc.include_loopback = false;
    // A Firefox start that hangs (about 1 in 10, PLATFORM.md §6) is started again; a
    // spare slot keeps a hang after its join from costing the retry its seat.
    config.room.max_singers = 3;
    let pulse_socket = alsa.pulse_e2e_dir().join("native");
    let rec = record(config, &ns.host_ip.to_string(), |url| {
        Driver::new(url, LISTEN_SECONDS)
            .prefix(ns.exec_prefix())
            .arg("--pulse-server", pulse_socket.display().to_string())
            .arg("--freqs", format!("440,{FIREFOX_TONE_HZ}"))
            .phone("F", "singer", None, "firefox")
            .phone("A", "singer", Some(&mics[0]), "chromium")
    });
    let run = &rec.run;
    let (f, a) = (run.result("F"), run.result("A"));
    assert_eq!(
        (f["state"].as_str(), a["state"].as_str()),
        (Some("live"), Some("live"))
    );
    let (f440, f1000) = (level_db(&f, 440), level_db(&f, FIREFOX_TONE_HZ));
    let (a440, a1000) = (level_db(&a, 440), level_db(&a, FIREFOX_TONE_HZ));
    assert!(
        f440 > -45.0 && f440 - f1000 >= 30.0,
        "Firefox hears Chromium (440 Hz {f440} dB) and not itself (1000 Hz {f1000} dB)"
    );
    assert!(
        a1000 > -45.0 && a1000 - a440 >= 30.0,
        "Chromium hears Firefox (1000 Hz {a1000} dB) and not itself (440 Hz {a440} dB)"
    );
    assert_eq!(
        f["stats"]["codec"]["payloadType"].as_u64(),
        Some(109),
        "Firefox's Opus payload type: {}",
        f["stats"]
    );
    // Firefox's fake tone is its own level (about 0.07 here); Chromium's is the 0.5
    // file at -3 dB, centred.
    support::assert_two_voices(
        "venue, Chromium and Firefox",
        rec.duet(),
        [440.0, FIREFOX_TONE_HZ as f32],
        0.03..=0.6,
        0.03,
    );
}
