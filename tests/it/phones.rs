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
use serde_json::Value;

use crate::support::delay_link::DelayLink;
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
    /// (epoch ms, periods written by then, the device's delay in frames), every 10 ms
    /// through the run.
    timeline: Vec<(u64, u64, u64)>,
    /// The same at each period's write, to a millisecond ([`speaker_edges`]).
    edges: Vec<(f64, u64, u64)>,
    /// (singers, listeners) while the phones were still there.
    room_at_end: (usize, usize),
    /// Each singer's calibrated round trip as the box kept it, when all were live.
    round_trips: Vec<Option<f32>>,
    /// At the driver's last mark: each singer's one-way network time as the box
    /// measured it, and how long the speakers held the backing back, ms.
    one_ways: Vec<Option<f32>>,
    venue_delay_ms: f32,
    /// (epoch ms, ms) each time the speakers' hold on the backing moved (in-ear mode).
    venue_delays: Vec<(u64, f32)>,
}

impl Recorded {
    /// How long the speakers held the backing back at `epoch` ms.
    fn venue_delay_at(&self, epoch: f64) -> f64 {
        self.venue_delays
            .iter()
            .take_while(|&&(at, _)| at as f64 <= epoch)
            .last()
            .map_or(0.0, |&(_, d)| f64::from(d))
    }
}

impl Recorded {
    /// The speakers' writes more than 30 ms apart (a period is 10 ms): (epoch ms, gap
    /// ms). The box's mixes wait with them, so every phone's stream gaps as long.
    fn write_gaps(&self) -> Vec<(f64, f64)> {
        self.edges
            .windows(2)
            .filter(|w| w[1].0 - w[0].0 > 30.0)
            .map(|w| (w[0].0, w[1].0 - w[0].0))
            .collect()
    }

    /// Where the speakers stopped: (epoch ms, ms) of each stretch of the run's timeline
    /// longer than 100 ms in which the audio thread wrote nothing (a PulseAudio stream
    /// restarting after an underrun stalls for a second or more).
    fn stalls(&self) -> Vec<(u64, u64)> {
        let mut stalls = Vec::new();
        let mut since: Option<(u64, u64)> = None;
        for &(at, periods, _) in &self.timeline {
            match since {
                Some((t, p)) if p == periods => {
                    if at - t > 100 && stalls.last().is_none_or(|&(s, _)| s != t) {
                        stalls.push((t, 0));
                    }
                    if let Some(last) = stalls.last_mut().filter(|(s, _)| *s == t) {
                        last.1 = at - t;
                    }
                }
                _ => since = Some((at, periods)),
            }
        }
        stalls
    }
}

/// When the audio thread wrote each period, to a millisecond, until `sampling` ends:
/// (epoch ms, periods written, the device's delay after the write in frames). A real-time
/// thread polls the period count every millisecond and keeps a change seen within 2 ms
/// of the poll before (the midpoint of the two). The 10 ms ordinary sampler's readings
/// place a write up to its interval plus its own lateness after it happened: the
/// speakers read 5 ms late on a quiet machine and 10-15 ms late in CI, which the sync
/// tests took for phones playing early.
fn speaker_edges(
    counters: Arc<duetbox::audio::Counters>,
    sampling: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(f64, u64, u64)>> {
    std::thread::spawn(move || {
        duetbox::audio::make_realtime(80).expect("the tests run as root");
        let mut edges = Vec::new();
        let mut last = (
            crate::support::e2e::epoch_ms_f64(),
            counters.periods.load(Ordering::Relaxed),
        );
        while sampling.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
            let periods = counters.periods.load(Ordering::Relaxed);
            let at = crate::support::e2e::epoch_ms_f64();
            if periods != last.1 && at - last.0 <= 2.0 {
                let delay = counters.output_delay_frames.load(Ordering::Relaxed);
                edges.push(((at + last.0) / 2.0, periods, delay));
            }
            last = (at, periods);
        }
        edges
    })
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
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (counters, sampling) = (counters.clone(), sampling.clone());
        let control = running.control.clone();
        std::thread::spawn(move || {
            let (mut timeline, mut venue_delays) = (Vec::new(), Vec::new());
            while sampling.load(Ordering::Relaxed) {
                let periods = counters.periods.load(Ordering::Relaxed);
                let delay = counters.output_delay_frames.load(Ordering::Relaxed);
                let at = crate::support::e2e::epoch_ms();
                timeline.push((at, periods, delay));
                let held = control.view().venue_delay_ms;
                if venue_delays.last().is_none_or(|&(_, d)| d != held) {
                    venue_delays.push((at, held));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (timeline, venue_delays)
        })
    };
    let edges = speaker_edges(counters.clone(), sampling.clone());
    let round_trips: Arc<Mutex<Vec<Option<f32>>>> = Arc::default();
    let last_view: Arc<Mutex<(Vec<Option<f32>>, f32)>> = Arc::default();
    let run = phones(&url).run(BROWSER_DEADLINE, {
        let (counters, marks) = (counters.clone(), marks.clone());
        let (control, round_trips) = (running.control.clone(), round_trips.clone());
        let last_view = last_view.clone();
        move |mark| {
            let view = control.view();
            *last_view.lock().expect("last view") = (
                view.participants
                    .iter()
                    .filter(|p| p.role == duetbox::control::Role::Singer)
                    .map(|p| p.one_way_ms)
                    .collect(),
                view.venue_delay_ms,
            );
            if mark.name == "all live" {
                // The phones calibrate (if asked to) before this mark.
                *round_trips.lock().expect("round trips") = control
                    .view()
                    .participants
                    .iter()
                    .filter(|p| p.role == duetbox::control::Role::Singer)
                    .map(|p| p.round_trip_ms)
                    .collect();
            }
            let periods = counters.periods.load(Ordering::Relaxed);
            marks
                .lock()
                .expect("marks")
                .push((mark.name.clone(), periods));
        }
    });
    sampling.store(false, Ordering::Relaxed);
    let (timeline, venue_delays) = sampler.join().expect("the sampler");
    let edges = edges.join().expect("the speakers' edge sampler");
    let room_at_end = running.control.counts();
    let round_trips = round_trips.lock().expect("round trips").clone();
    let (one_ways, venue_delay_ms) = last_view.lock().expect("last view").clone();
    runtime
        .block_on(running.stop())
        .expect("the box stops cleanly");
    run.assert_success();
    eprintln!("phones: {}", run.stdout);
    let marks = marks.lock().expect("marks").clone();
    let rec = Recorded {
        run,
        // Flushed when the box closed its PCM at shutdown.
        venue: read_wav_left(&alsa.file(raw::VENUE_E2E)),
        marks,
        period_frames,
        // The audio thread has ended: these are final.
        periods_written: counters.periods.load(Ordering::Relaxed) as usize,
        xruns: counters.xruns.load(Ordering::Relaxed),
        timeline,
        edges,
        room_at_end,
        round_trips,
        one_ways,
        venue_delay_ms,
        venue_delays,
    };
    // The test's PulseAudio "speakers" restart their stream for a second or more now
    // and then, as no sound card does: the stall guard counts it as the machine's, from
    // when all phones were live (the browsers' starts stall them most, before any test
    // judges anything).
    let live = rec
        .marks
        .iter()
        .find(|(name, _)| name == "all live")
        .and_then(|&(_, periods)| rec.timeline.iter().find(|t| t.1 >= periods))
        .map_or(u64::MAX, |t| t.0);
    for (at, ms) in rec.stalls() {
        if ms >= 1000 && at + ms >= live {
            crate::support::stalls::note(format!(
                "the test's PulseAudio speakers stopped {ms} ms at epoch {at} ms"
            ));
        }
    }
    // So does a stretch in which the machine ran none of its ordinary threads (the
    // sampler above, every 10 ms, is one; the box's network tasks are others): the box
    // shares two cores with the browsers and PulseAudio here, as it never does on a Pi.
    // Seen: 60 to 350 ms while the browsers start, and 150 ms mid-song in a passing
    // run; a phone's jitter buffer grew to 780 ms after one at a song's start.
    for pair in rec.timeline.windows(2) {
        let (from, gap) = (pair[0].0, pair[1].0.saturating_sub(pair[0].0));
        if from >= live && gap >= 10 + STARVED_MS {
            crate::support::stalls::note(format!(
                "an ordinary thread of the test's woke {} ms late at epoch {from} ms",
                gap - 10
            ));
        }
    }
    // And a phone whose output underran (its renderer got no CPU in time; the page
    // notes it, `tests/e2e/phones.mjs`): it then plays later until the sync loop pulls
    // it back, as a phone with a CPU of its own seldom needs.
    for result in rec.run.results() {
        for u in result["night"]["underruns"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (Some(at), Some(n)) = (u[0].as_f64(), u[1].as_u64()) else {
                continue;
            };
            eprintln!(
                "{}: its output underran {n} time(s) by epoch {at:.0} ms",
                result["phone"]
            );
            if at >= live as f64 {
                crate::support::stalls::note(format!(
                    "{}'s output underran {n} time(s) by epoch {at:.0} ms",
                    result["phone"]
                ));
            }
        }
    }
    rec
}

/// How much later than asked the test's sampler must wake (every 10 ms, an ordinary
/// thread as the box's network tasks are) to count as the machine starving the box.
const STARVED_MS: u64 = 100;

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

/// A fresh work directory with a fake microphone WAV per (file name, Hz), each made by
/// `write(path, hz)`.
fn mic_files(area: &str, tones: &[(&str, f32)], write: impl Fn(&Path, f32)) -> Vec<PathBuf> {
    let work = alsa_config().dir.join(area);
    std::fs::create_dir_all(&work).expect("work dir");
    tones
        .iter()
        .map(|&(name, hz)| {
            let path = work.join(name);
            write(&path, hz);
            path
        })
        .collect()
}

/// Fake microphones of a steady tone at 0.5, 10 s.
fn mics(area: &str, tones: &[(&str, f32)]) -> Vec<PathBuf> {
    mic_files(area, tones, |path, hz| write_tone_wav(path, hz, 0.5, 10))
}

/// Fake microphones that sing syllables: `hz` at 0.5 for 180 ms, then 130 ms of rest
/// (10 ms ramps), 10 s: a voice whose level moves, as a singer's does.
fn syllable_mics(area: &str, tones: &[(&str, f32)]) -> Vec<PathBuf> {
    mic_files(area, tones, |path, hz| {
        let samples: Vec<i16> = (0..480_000)
            .map(|i| {
                let t = f64::from(i) / 48_000.0;
                let in_note = t % 0.31;
                let gate = (in_note / 0.01).min(1.0) * ((0.18 - in_note) / 0.01).clamp(0.0, 1.0);
                let v = 0.5 * gate * (2.0 * std::f64::consts::PI * f64::from(hz) * t).sin();
                (v * 32767.0) as i16
            })
            .collect();
        crate::support::songs::write_wav16(path, 48_000, 1, &samples);
    })
}

#[test]
fn two_phones_sing_a_duet_through_the_box() {
    crate::support::stalls::once_more_if_the_machine_stalled(
        "two_phones_sing_a_duet_through_the_box",
        two_phones_sing_a_duet_through_the_box_once,
    );
}

fn two_phones_sing_a_duet_through_the_box_once() {
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
    crate::support::stalls::once_more_if_the_machine_stalled(
        "a_firefox_singer_and_a_chromium_singer_sing_a_duet",
        a_firefox_singer_and_a_chromium_singer_sing_a_duet_once,
    );
}

fn a_firefox_singer_and_a_chromium_singer_sing_a_duet_once() {
    // Each phone's speaker-to-mic round trip (the harness's acoustic path), which it
    // measures with the page's calibration before the duet.
    const F_ROUND_TRIP_MS: f64 = 45.0;
    const A_ROUND_TRIP_MS: f64 = 72.0;
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
            .arg("--loopback", format!("F:{F_ROUND_TRIP_MS}"))
            .arg("--loopback", format!("A:{A_ROUND_TRIP_MS}"))
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
    for (phone, known) in [(&f, F_ROUND_TRIP_MS), (&a, A_ROUND_TRIP_MS)] {
        let calibration = &phone["calibration"];
        let measured = calibration["last"]["ms"].as_f64();
        let engine = &phone["engine"];
        eprintln!("{engine}: calibration of a {known} ms round trip: {calibration}");
        assert!(
            measured.is_some_and(|ms| (ms - known).abs() <= 3.0),
            "{engine} measures its {known} ms round trip within 3 ms: {calibration}"
        );
        assert_eq!(
            calibration["roundTripMs"].as_f64(),
            measured,
            "the page keeps what it measured"
        );
    }
    // The box keeps each singer's round trip (the host page shows it).
    let mut kept: Vec<f32> = rec.round_trips.iter().flatten().copied().collect();
    kept.sort_by(f32::total_cmp);
    assert!(
        kept.len() == 2
            && (f64::from(kept[0]) - F_ROUND_TRIP_MS).abs() <= 3.0
            && (f64::from(kept[1]) - A_ROUND_TRIP_MS).abs() <= 3.0,
        "the box keeps both round trips: {:?}",
        rec.round_trips
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

/// Seconds the night's phones sing over the song before they measure.
const NIGHT_SECONDS: u32 = 18;

/// The night's song: a 330 Hz backing at 0.4 with a 120 ms burst of 1760 Hz at the
/// start of every lyric line (at 3, 5, 7, … 19 s), 21 s long, as Ogg Vorbis at
/// 44.1 kHz (so it is resampled); its LRC names the lines.
fn marked_song(library: &Path) -> Vec<u64> {
    marked_song_with(library, false)
}

/// [`marked_song`], with the backing `pulsed` like music (a beat every 250 ms that
/// falls from 0.4 to 0.1): something for the phones' level matching (`docs/sync.md`)
/// to find, which a steady tone is not.
fn marked_song_with(library: &Path, pulsed: bool) -> Vec<u64> {
    use crate::support::songs::encode;
    std::fs::create_dir_all(library).expect("library");
    let rate = 44_100usize;
    let lines: Vec<u64> = (0..9).map(|k| 3_000 + 2_000 * k).collect();
    let n = 21 * rate;
    let mut samples = Vec::with_capacity(2 * n);
    for i in 0..n {
        let t = i as f64 / rate as f64;
        let ms = (t * 1000.0) as u64;
        let beat = if pulsed {
            0.1 + 0.3 * (-(t % 0.25) / 0.06).exp()
        } else {
            0.4
        };
        let mut v = beat * (2.0 * std::f64::consts::PI * 330.0 * t).sin();
        if lines.iter().any(|&l| ms >= l && ms < l + 120) {
            v += 0.4 * (2.0 * std::f64::consts::PI * 1760.0 * t).sin();
        }
        let s = (v * 32767.0) as i16;
        samples.extend_from_slice(&[s, s]);
    }
    let wav = library.join(".marked.wav");
    crate::support::songs::write_wav16(&wav, rate as u32, 2, &samples);
    encode(&wav, &library.join("Duetbox - Marked.ogg"));
    std::fs::remove_file(&wav).expect("remove the source");
    let lrc: String = lines
        .iter()
        .enumerate()
        .map(|(k, ms)| {
            format!(
                "[{:02}:{:02}.{:02}]Line number {}\n",
                ms / 60_000,
                ms / 1000 % 60,
                ms % 1000 / 10,
                k + 1
            )
        })
        .collect();
    std::fs::write(library.join("Duetbox - Marked.lrc"), lrc).expect("lrc");
    lines
}

/// How far (ms) each lyric line appeared from the audible start of its marker, for the
/// lines seen: (line, error).
fn lyric_errors(appeared: &[Value], onsets: &[f64], lines: &[u64]) -> Vec<(usize, f64)> {
    appeared
        .iter()
        .filter_map(|a| {
            let line = a["line"].as_u64()? as usize;
            let at = a["at"].as_f64()?;
            // The onset nearest to when the line appeared, if it is that line's (the
            // markers are 2 s apart).
            let onset = onsets
                .iter()
                .copied()
                .min_by(|x, y| (x - at).abs().total_cmp(&(y - at).abs()))?;
            ((onset - at).abs() < 500.0 && line < lines.len()).then_some((line, at - onset))
        })
        .collect()
}

/// Every `(what, error)` within `bound` ms, but one at most, within `outlier`: on this
/// host (20–50 % of the CPU stolen by the hypervisor, measured with vmstat) a headless
/// renderer now and then gets no frame or no audio callback for 100 ms or more, and
/// one marker or line of a run lands there. The one let through is printed.
fn assert_within_but_one(who: &str, what: &str, errors: &[(usize, f64)], bound: f64, outlier: f64) {
    let off: Vec<&(usize, f64)> = errors.iter().filter(|(_, e)| e.abs() > bound).collect();
    if let [(k, e)] = off.as_slice() {
        eprintln!("{who}: {what} {k} off by {e:+.1} ms, the one let through");
    }
    assert!(
        off.len() <= 1 && off.iter().all(|(_, e)| e.abs() <= outlier),
        "{who}: {what}s beyond {bound} ms (one may be, within {outlier} ms): {off:?} of {errors:?}"
    );
}

/// The night in browsers: a singer picks the song on her phone with her partner, the
/// host desk starts it, both sing over it; the venue and the returns hold the backing,
/// each lyric line appears on each phone within 50 ms of the line's marker as that
/// phone plays it. Screenshots: the phone's song list, the host desk, the screen.
#[test]
fn two_chromium_singers_sing_over_a_song_the_host_started_with_lyrics_in_time() {
    crate::support::stalls::once_more_if_the_machine_stalled(
        "two_chromium_singers_sing_over_a_song_the_host_started_with_lyrics_in_time",
        two_chromium_singers_sing_over_a_song_the_host_started_with_lyrics_in_time_once,
    );
}

fn two_chromium_singers_sing_over_a_song_the_host_started_with_lyrics_in_time_once() {
    let _serial = crate::support::SERIAL.blocking_lock();
    duetbox::telemetry::init("duetbox=info,warn");
    let _pulse = PulseAudio::start(&alsa_config().pulse_e2e_dir());
    let mics = mics("night", &[("mia440.wav", 440.0), ("theo660.wav", 660.0)]);
    let dir = alsa_config().dir.join("night");
    let library = dir.join("library");
    let lines = marked_song(&library);
    let mut config = box_config(&dir.join("state"));
    config.songs.library = library.display().to_string();
    config.room.host_pin = "2468".into();
    config.http.http_port = support::free_port();
    let screen = format!("http://127.0.0.1:{}/screen", config.http.http_port);
    for shot in [
        "Mia-songs.png",
        "host.png",
        "screen.png",
        "Mia-recordings.png",
    ] {
        let _ = std::fs::remove_file(artifacts().join(shot));
    }
    let rec = record(config, "127.0.0.1", |url| {
        Driver::new(url, NIGHT_SECONDS)
            .arg("--freqs", "330,440,660")
            .arg("--night", "Marked")
            .arg("--host-pin", "2468")
            .arg("--screen", screen)
            .arg("--marker-hz", "1760")
            .phone("Mia", "singer", Some(&mics[0]), "chromium")
            .phone("Theo", "singer", Some(&mics[1]), "chromium")
    });
    let run = &rec.run;
    eprintln!(
        "the speakers stalled (epoch ms, ms): {:?}; xruns {}",
        rec.stalls(),
        rec.xruns
    );
    let (mia, theo) = (run.result("Mia"), run.result("Theo"));
    // Each return holds the backing and the partner, not the singer; the backing sits
    // at its level under the voice: a 0.4 tone at -6 dB (0.2) against a 0.5 voice
    // panned centre (0.354), 5 dB apart.
    for (who, r, own, partner) in [("Mia", &mia, 440, 660), ("Theo", &theo, 660, 440)] {
        let (backing, p, o) = (level_db(r, 330), level_db(r, partner), level_db(r, own));
        assert!(
            backing > -45.0 && p > -45.0,
            "{who} hears the backing ({backing} dB) and the partner ({p} dB)"
        );
        assert!(
            p - o >= 30.0,
            "{who} does not hear themselves: {o} dB against {p} dB"
        );
        assert!(
            (2.0..=8.0).contains(&(p - backing)),
            "{who}: the partner {p} dB, the backing {backing} dB"
        );
    }
    // The venue: backing and both voices, from the song's start to the measuring.
    let pf = rec.period_frames;
    let mark = |name: &str| {
        rec.marks
            .iter()
            .find(|(m, _)| m == name)
            .map(|&(_, p)| p as usize * pf)
            .unwrap_or_else(|| panic!("no '{name}' mark:\n{}", run.stderr))
    };
    let (from, to) = (
        mark("song playing") + 24_000,
        mark("measuring").min(rec.venue.len()),
    );
    assert!(
        to > from + 96_000,
        "two seconds of the song in the recording"
    );
    let venue = &rec.venue[from..to];
    support::assert_two_voices("venue", venue, [440.0, 660.0], 0.15..=0.6, 0.15);
    let backing = duetbox::engine::testkit::tone_level(venue, 330.0);
    assert!(
        (0.16..=0.24).contains(&backing),
        "the venue's backing at 0.2 (0.4 at -6 dB): {backing}"
    );
    // Lyrics on the phones: every line seen appeared within 50 ms of its marker as the
    // phone played it.
    for (who, r) in [("Mia", &mia), ("Theo", &theo)] {
        let night = &r["night"];
        let appeared = night["lyrics"].as_array().cloned().unwrap_or_default();
        let onsets: Vec<f64> = numbers(&night["onsets"]);
        let errors = lyric_errors(&appeared, &onsets, &lines);
        eprintln!("{who}: lyric line errors (line, ms): {errors:?}");
        let gaps: Vec<f64> = onsets.windows(2).map(|w| w[1] - w[0]).collect();
        eprintln!("{who}: marker onsets {} apart (ms): {gaps:?}", onsets.len());
        let believed: Vec<f64> = numbers(&night["believed"]);
        let ahead: Vec<f64> = onsets
            .iter()
            .filter_map(|o| {
                believed
                    .iter()
                    .find(|b| (*b - o).abs() < 500.0)
                    .map(|b| b - o)
            })
            .collect();
        eprintln!("{who}: believed − heard per marker (ms): {ahead:?}");
        eprintln!("{who}: sync {}", night["sync"]);
        assert!(
            errors.len() >= 5,
            "{who}: at least five lines timed, got {errors:?} from {appeared:?} and {onsets:?}"
        );
        assert_within_but_one(who, "line", &errors, 50.0, 200.0);
    }
    // Lyrics on the venue screen: each line within 50 ms of its marker as the speakers
    // played it: the marker's frame in the recording, when the audio thread wrote it
    // (the run's timeline), plus the device's delay then (ALSA's snd_pcm_delay).
    let screen_line = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["kind"] == "screen")
        .expect("the screen's line");
    // The count-in (4 clicks at 100 beats a minute, the default) was counted down on
    // the screen before the first line.
    let counted: Vec<(u64, f64)> = screen_line["counted"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| Some((c["count"].as_u64()?, c["at"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let first_line = screen_line["lyrics"][0]["at"].as_f64().unwrap_or(0.0);
    assert!(
        counted
            .iter()
            .any(|&(count, at)| count == 1 && at < first_line && first_line - at < 4_000.0),
        "the screen counted the last beat before the first line: {counted:?}"
    );
    let played = venue_marker_epochs(&rec, 1760.0);
    let mut screen_errors = Vec::new();
    for a in screen_line["lyrics"].as_array().expect("lyrics") {
        let at = a["at"].as_f64().expect("at");
        if let Some(onset) = played
            .iter()
            .copied()
            .filter(|o| (o - at).abs() < 500.0)
            .min_by(|x, y| (x - at).abs().total_cmp(&(y - at).abs()))
        {
            screen_errors.push((a["line"].as_u64().unwrap_or(0), at - onset));
        }
    }
    eprintln!("screen: lyric line errors (line, ms): {screen_errors:?}");
    assert!(
        screen_errors.len() >= 5,
        "at least five lines timed on the screen: {screen_errors:?} ({} markers in the venue)",
        played.len()
    );
    for (line, error) in &screen_errors {
        assert!(
            error.abs() <= 50.0,
            "screen: line {line} appeared {error:.1} ms from its marker"
        );
    }
    // The song's recording: after the host stopped the song both singers' pages got
    // its one link and downloaded its page and its mix (an Ogg file) from the box;
    // each voice's track holds that singer's voice and not the partner's.
    let (rm, rt) = (&mia["night"]["recording"], &theo["night"]["recording"]);
    let url = rm["url"]
        .as_str()
        .unwrap_or_else(|| panic!("Mia's recording: {rm}"));
    assert_eq!(rt["url"], url, "one recording for both: {rt}");
    assert_eq!(
        rm["files"],
        serde_json::json!([
            "mix.opus",
            "backing.opus",
            "voice-a-mia.opus",
            "voice-b-theo.opus"
        ]),
        "{rm}"
    );
    for (who, r) in [("Mia", rm), ("Theo", rt)] {
        assert_eq!(r["page"], 200, "{who}: {r}");
        assert_eq!(
            (&r["mix_status"], &r["magic"]),
            (&200.into(), &"OggS".into()),
            "{who}: {r}"
        );
        assert!(r["mix_bytes"].as_u64().unwrap_or(0) > 20_000, "{who}: {r}");
        assert_eq!(r["shown"][0], url, "{who}'s page shows the link: {r}");
    }
    let kept = dir
        .join("state")
        .join("recordings")
        .join(url.trim_start_matches("/recordings/"));
    for (file, own, partner) in [
        ("voice-a-mia.opus", 440.0, 660.0),
        ("voice-b-theo.opus", 660.0, 440.0),
    ] {
        let voice = crate::recordings::decode(&kept.join(file));
        assert!(voice.len() > 96_000, "{file}: {} frames", voice.len());
        let middle = &voice[voice.len() / 4..voice.len() * 3 / 4];
        let (o, p) = (
            duetbox::engine::testkit::tone_level(middle, own),
            duetbox::engine::testkit::tone_level(middle, partner),
        );
        assert!(o > 0.1 && p < o / 30.0, "{file}: own {o}, partner {p}");
    }
    for shot in [
        "Mia-songs.png",
        "host.png",
        "screen.png",
        "Mia-recordings.png",
    ] {
        assert!(artifacts().join(shot).exists(), "screenshot {shot}");
    }
}

/// When (epoch ms) the speakers played the start of each `hz` burst in the venue
/// recording ([`burst_onsets`] above 0.08), the moment the audio thread wrote that frame's period
/// (from the run's timeline), plus what the device still held before that frame.
fn venue_marker_epochs(rec: &Recorded, hz: f32) -> Vec<f64> {
    let pf = rec.period_frames as f64;
    // When the speakers played `frame`: its period was written when the frame count
    // reached the period's end E (interpolated between the writes seen); just after
    // that write the device held `d` frames, the last of them E - 1, so `frame` played
    // (d - (E - frame)) frames after the write.
    let played_at = |frame: usize| -> Option<f64> {
        let end = (frame as f64 / pf).floor() * pf + pf;
        rec.edges.windows(2).find_map(|w| {
            let ((e1, p1, _), (e2, p2, d2)) = (w[0], w[1]);
            let (a, b) = (p1 as f64 * pf, p2 as f64 * pf);
            (end > a && end <= b).then(|| {
                let written = e1 + (end - a) / (b - a) * (e2 - e1);
                written + (d2 as f64 - (end - frame as f64)) / 48.0
            })
        })
    };
    burst_onsets(&rec.venue, hz, 0.08)
        .into_iter()
        .filter_map(played_at)
        .collect()
}

/// A box for a night of the pulsed marked song ([`marked_song_with`]): its state and
/// library under `area` (the song made afresh, no recordings left from before), the
/// host PIN 2468.
fn marked_night_box(area: &str) -> Config {
    let dir = alsa_config().dir.join(area);
    let library = dir.join("library");
    let _ = std::fs::remove_dir_all(&library);
    let _ = std::fs::remove_dir_all(dir.join("state").join("recordings"));
    marked_song_with(&library, true);
    let mut config = box_config(&dir.join("state"));
    config.songs.library = library.display().to_string();
    config.room.host_pin = "2468".into();
    config
}

/// The phones' night on [`marked_night_box`]: the host starts the song, every phone
/// taps the 1760 Hz markers and measures `freqs`.
fn marked_night(url: &str, freqs: &str) -> Driver {
    Driver::new(url, NIGHT_SECONDS)
        .arg("--freqs", freqs)
        .arg("--night", "Marked")
        .arg("--host-pin", "2468")
        .arg("--marker-hz", "1760")
}

/// Where each burst of `hz` in `samples` starts (frames): found in 256-frame blocks
/// (above `floor` for 4 blocks after 40 quiet ones), refined as [`refined_onset`] does.
fn burst_onsets(samples: &[f32], hz: f32, floor: f32) -> Vec<usize> {
    const BLOCK: usize = 256;
    let mut found = Vec::new();
    let (mut quiet, mut loud, mut candidate) = (0usize, 0usize, 0usize);
    for (k, block) in samples.chunks_exact(BLOCK).enumerate() {
        if duetbox::engine::testkit::tone_level(block, hz) > floor {
            if loud == 0 {
                candidate = k * BLOCK;
            }
            loud += 1;
            if loud == 4 && quiet >= 40 {
                found.push(refined_onset(samples, candidate, hz));
            }
            if loud >= 4 {
                quiet = 0;
            }
        } else {
            if loud < 4 {
                quiet += loud;
            }
            loud = 0;
            quiet += 1;
        }
    }
    found
}

/// The song's recording, stage mode (`docs/sync.md`): a Chromium singer who sings
/// exactly what their phone plays (an acoustic round trip of 60 ms, which the page's
/// calibration measures; the microphone adds that less the output latency), over a
/// song with a marker burst every 2 s, with 40 ms more downlink than usual. In the
/// recording the box shifts the voice back by what it measured (speakers, capture,
/// packet, one-way time, jitter buffer): each marker the voice sang must sit on the
/// backing's marker, within the phone's own distance from the speakers (what stage
/// mode assumes is zero, and the sync loop keeps within ±10 ms), and within ±5 ms by
/// the median, raw and less that distance (the backing as its singer heard it).
#[test]
fn a_singer_on_the_beat_they_hear_is_on_the_beat_in_the_recording() {
    crate::support::stalls::once_more_if_the_machine_stalled(
        "a_singer_on_the_beat_they_hear_is_on_the_beat_in_the_recording",
        a_singer_on_the_beat_they_hear_is_on_the_beat_in_the_recording_once,
    );
}

fn a_singer_on_the_beat_they_hear_is_on_the_beat_in_the_recording_once() {
    const CAPTURE_MS: f64 = 60.0;
    /// Markers not judged: the sync loop settles meanwhile.
    const SETTLING: usize = 4;
    let _serial = crate::support::SERIAL.blocking_lock();
    duetbox::telemetry::init("duetbox=info,warn");
    let _pulse = PulseAudio::start(&alsa_config().pulse_e2e_dir());
    let mics = syllable_mics("echo", &[("echo440.wav", 440.0)]);
    let rec = record(marked_night_box("echo"), "127.0.0.1", |url| {
        marked_night(url, "330,1760")
            .arg("--delay", "Echo:40")
            .arg("--loopback", format!("Echo:{CAPTURE_MS}"))
            .arg("--echo", format!("Echo:{CAPTURE_MS}"))
            .phone("Echo", "singer", Some(&mics[0]), "chromium")
    });
    let echo = rec.run.result("Echo");
    let (backing, voice) = echo_recording(&echo, "echo");
    assert_eq!(backing.len(), voice.len(), "one length");
    let (b, v) = (
        burst_onsets(&backing, 1760.0, 0.08),
        burst_onsets(&voice, 1760.0, 0.04),
    );
    eprintln!("recording: backing markers {b:?}, voice markers {v:?}");
    // The phone's own distance from the speakers for each marker (stage mode takes it
    // as zero): when it played the marker less when the speakers did.
    let speakers = venue_marker_epochs(&rec, 1760.0);
    let played: Vec<f64> = numbers(&echo["night"]["onsets"]);
    let phone_late: Vec<Option<f64>> = speakers
        .iter()
        .map(|&s| nearest(&played, s).map(|p| p - s))
        .collect();
    let rows: Vec<(f64, Option<f64>)> = b
        .iter()
        .filter_map(|&at| {
            let sung = v.iter().copied().find(|&x| x.abs_diff(at) < 9_600)?;
            let error = (sung as f64 - at as f64) / 48.0;
            // The k-th marker of the recording is the k-th the speakers played, counted
            // from the song's first (the recording starts with the song).
            let k = b.iter().position(|&x| x == at)?;
            Some((
                error,
                speakers
                    .len()
                    .checked_sub(b.len())
                    .and_then(|skip| phone_late.get(k + skip).copied().flatten()),
            ))
        })
        .collect();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    eprintln!(
        "recording: (voice − backing, phone − speakers) per marker, ms: {:?}",
        rows.iter()
            .map(|&(e, p)| (round(e), p.map(round)))
            .collect::<Vec<_>>()
    );
    assert!(
        rows.len() >= SETTLING + 3,
        "at least seven markers sung and recorded: backing {b:?}, voice {v:?}"
    );
    // Once the loop settled. The singer follows the phone, which plays each marker a
    // few ms off the speakers (stage mode takes it as zero; the sync loop keeps it
    // within ±15 ms, the sync test's bound, and moves it now and then: the phone −
    // speakers column, a reading with a few ms of noise of its own), and the voice
    // sits off the backing's beat by as much. With the shift fixed at the song's start
    // (before the recording followed the jitter buffer) the voice moved by 15 ms here
    // as the buffer adapted.
    //
    // Each marker's error less the phone's own distance from the speakers for it is
    // judged within ±15 ms (the recorder's own part, apart from the sync loop's), each
    // raw error within 30 ms (the sync test's bound and this one's: a voice not
    // shifted back at all sits 100 ms late here), and the raw errors' median within
    // ±10 ms. The bound for a recording's tracks, ±5 ms, is judged on the
    // median less the phone's distance: the voice against the backing *as its singer
    // heard it*, which is what the recording lines up. The raw median also carries
    // the sync loop's error, and on a busier machine the phone's playout moved ±15 ms
    // between markers (the voice with it): raw medians −5.0 and +6.4 ms in two of six
    // runs, while the medians less the phone's distance were −1.9 to +5.4 ms. (Judged
    // raw before: with a steadier phone the raw column was the steadier one, −3.8 to
    // −4.8 ms per marker in one run, and the phone − speakers reading carries the
    // test's own reading of the speakers, about 5 ms late of the box's: the median
    // less it came out +3.3 to +4.7 ms where the raw median was −4.1 to −0.4.)
    //
    // One marker's "less the phone's distance" may be within 40 ms instead (as the
    // sync test lets one through): in a CI run a marker sung −5.9 ms off the beat read
    // the phone 24 ms late of the speakers, while the markers beside it agreed.
    let judged = &rows[SETTLING..];
    for &(error, phone) in judged {
        assert!(
            error.abs() <= 30.0,
            "a marker sung on the beat sits {error:+.1} ms from the backing's in the recording (the phone played it {phone:?} ms from the speakers)"
        );
    }
    let less_phone: Vec<(usize, f64)> = judged
        .iter()
        .enumerate()
        .filter_map(|(k, &(error, phone))| Some((k + SETTLING, error - phone?)))
        .collect();
    assert_within_but_one(
        "recording",
        "marker less the phone's distance",
        &less_phone,
        15.0,
        40.0,
    );
    let mut errors: Vec<f64> = judged.iter().map(|r| r.0).collect();
    let median = crate::support::latency::median(&mut errors);
    let mut own: Vec<f64> = less_phone.iter().map(|&(_, e)| e).collect();
    assert!(
        own.len() >= 3,
        "the phone's own distance from the speakers for at least three judged markers: {rows:?}"
    );
    let recorder = crate::support::latency::median(&mut own);
    eprintln!(
        "recording: voice − backing, median {median:+.1} ms; less the phone's distance from the speakers, median {recorder:+.1} ms"
    );
    assert!(
        recorder.abs() <= 5.0 && median.abs() <= 5.0,
        "the voice sits {recorder:+.1} ms from the backing as its singer heard it, by the median ({median:+.1} ms from the backing in the recording)"
    );
}

/// A JSON array's numbers (none when it is not one).
fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The time in `list` nearest to `at`, if one is within 400 ms (epoch ms; the markers
/// are 2 s apart).
fn nearest(list: &[f64], at: f64) -> Option<f64> {
    list.iter()
        .copied()
        .filter(|o| (o - at).abs() < 400.0)
        .min_by(|x, y| (x - at).abs().total_cmp(&(y - at).abs()))
}

/// The song's recording the singer "Echo" (its driver result `echo`) got a link to, on
/// the box of `area`: its backing and its voice track, decoded.
fn echo_recording(echo: &Value, area: &str) -> (Vec<f32>, Vec<f32>) {
    let recording = &echo["night"]["recording"];
    let url = recording["url"]
        .as_str()
        .unwrap_or_else(|| panic!("the singer's recording: {recording}"));
    let kept = alsa_config()
        .dir
        .join(area)
        .join("state")
        .join("recordings")
        .join(url.trim_start_matches("/recordings/"));
    (
        crate::recordings::decode(&kept.join("backing.opus")),
        crate::recordings::decode(&kept.join("voice-a-echo.opus")),
    )
}

/// Each `sung` burst's onset less the `beats` onset it answers (within 200 ms), ms.
fn sung_against_beats(beats: &[usize], sung: &[usize]) -> Vec<(usize, f64)> {
    beats
        .iter()
        .enumerate()
        .filter_map(|(k, &at)| {
            let s = sung.iter().copied().find(|&x| x.abs_diff(at) < 9_600)?;
            Some((k, (s as f64 - at as f64) / 48.0))
        })
        .collect()
}

/// In-ear mode (`docs/sync.md`), the case: a Chromium singer in headphones
/// whose network adds 80 ms towards the box and 60 ms back (every packet, the page's
/// and its WebSocket's too, through a relay at the IP layer: [`DelayLink`]) and whose
/// acoustic round trip is 45 ms (calibrated; its microphone adds that less the page's
/// output latency) sings exactly what the phone plays, each 1760 Hz marker as heard,
/// ring-modulated to 2860 Hz (so the venue's output tells it from the backing's), into
/// a track fed in real time as a microphone's (tests/e2e/phones.mjs, `echo()`). The
/// host makes the song in-ear on the host page. The speakers hold the backing back by
/// the stage timeline and the singer's uplink (capture, packet, the one-way time the
/// box measured from the phone's sender reports and wall clock, the phone's own
/// playout offset, jitter buffer): in the venue's output each marker the voice sang
/// starts with the backing's, and in the recording too.
///
/// What holds here, from the fifth marker (the loops settle before): the box measures
/// the one-way time within 50 to 100 ms (70.5 to 72.3 measured: the link's 80 less
/// the page's clock error, half the link's asymmetry, which the phone's playout
/// carries too and so cancels); the median within ±5 ms (the bound), each
/// marker within 25 ms (one may stray to 100: a host stall moves the phone's playout
/// and the singer with it). Four runs with the phone's jitter floor and the voice's
/// packet and encoder look-ahead counted (docs/sync.md): medians venue −2.2 to −0.5 ms,
/// recording −1.4 to +0.3 ms; settled markers venue −3.5 to +1.7 ms, recording −1.5
/// to +1.1 ms.
#[test]
fn an_in_ear_singer_on_a_slow_network_sings_on_the_beat_in_the_venue_and_the_recording() {
    crate::support::stalls::once_more_if_the_machine_stalled(
        "an_in_ear_singer_on_a_slow_network_sings_on_the_beat_in_the_venue_and_the_recording",
        an_in_ear_singer_on_a_slow_network_sings_on_the_beat_in_the_venue_and_the_recording_once,
    );
}

fn an_in_ear_singer_on_a_slow_network_sings_on_the_beat_in_the_venue_and_the_recording_once() {
    const CAPTURE_MS: f64 = 45.0;
    const SHIFT_HZ: f32 = 1100.0;
    const SUNG_HZ: f32 = 1760.0 + SHIFT_HZ;
    const SETTLING: usize = 4;
    let _serial = crate::support::SERIAL.blocking_lock();
    duetbox::telemetry::init("duetbox=info,warn");
    let _pulse = PulseAudio::start(&alsa_config().pulse_e2e_dir());
    let link = DelayLink::create(Duration::from_millis(80), Duration::from_millis(60));
    let mics = syllable_mics("in_ear", &[("inear440.wav", 440.0)]);
    let mut config = marked_night_box("in_ear");
    config.http.bind = link.host_ip.to_string();
    config.rtc.udp_bind = vec![link.host_ip.to_string()];
    let rec = record(config, &link.host_ip.to_string(), |url| {
        marked_night(url, "330,1760")
            .prefix(link.exec_prefix())
            .flag("--in-ear")
            .arg("--loopback", format!("Echo:{CAPTURE_MS}"))
            .arg("--echo", format!("Echo:{CAPTURE_MS}:{SHIFT_HZ}"))
            .phone("Echo", "singer", Some(&mics[0]), "chromium")
    });
    eprintln!(
        "in-ear: round trip {:?} ms, one way {:?} ms (the link adds 80 up, 60 down), speakers held back {:.1} ms",
        rec.round_trips, rec.one_ways, rec.venue_delay_ms
    );
    // The box measured the network: 80 ms up, less half the asymmetry (the page's
    // clock, from round trips, cannot see it: 10 ms), within the jitter of a busy host.
    let one_way = rec.one_ways.first().copied().flatten();
    assert!(
        one_way.is_some_and(|ms| (50.0..=100.0).contains(&ms)),
        "the singer's one-way time as the box measured it: {one_way:?} ms"
    );
    assert!(
        rec.venue_delay_ms > 150.0,
        "the speakers hold the backing back for the uplink: {} ms",
        rec.venue_delay_ms
    );

    // The venue.
    let backing = burst_onsets(&rec.venue, 1760.0, 0.08);
    let sung = burst_onsets(&rec.venue, SUNG_HZ, 0.05);
    let venue = sung_against_beats(&backing, &sung);
    eprintln!("in-ear: venue, voice − backing per marker, ms: {venue:?}");
    // The recording.
    let echo = rec.run.result("Echo");
    let (recorded_backing, recorded_voice) = echo_recording(&echo, "in_ear");
    let recorded = sung_against_beats(
        &burst_onsets(&recorded_backing, 1760.0, 0.08),
        &burst_onsets(&recorded_voice, SUNG_HZ, 0.05),
    );
    eprintln!("in-ear: recording, voice − backing per marker, ms: {recorded:?}");
    // The phone's own distance from the stage timeline for each venue marker (the
    // sync loop's error, which the sync test judges; the singer follows the phone, so
    // the voice moves with it): when it played the marker less when the speakers did,
    // less what the speakers held the backing back by then.
    let played: Vec<f64> = numbers(&echo["night"]["onsets"]);
    let speakers = venue_marker_epochs(&rec, 1760.0);
    let phone: Vec<Option<f64>> = speakers
        .iter()
        .map(|&s| {
            let stage = s - rec.venue_delay_at(s);
            nearest(&played, stage).map(|p| p - stage)
        })
        .collect();
    eprintln!(
        "in-ear: the phone's distance from the stage timeline per venue marker, ms: {phone:?}"
    );
    // What the page believed of its own playout against what it played (its lyric
    // lines start on the markers): the box steers the phone by that belief.
    let believed: Vec<f64> = numbers(&echo["night"]["believed"]);
    let belief: Vec<Option<f64>> = played
        .iter()
        .map(|&p| nearest(&believed, p).map(|b| b - p))
        .collect();
    eprintln!("in-ear: the phone's belief less what it played per marker, ms: {belief:?}");
    eprintln!("in-ear: the phone's sync: {}", echo["night"]["sync"]);
    eprintln!(
        "in-ear: the singer's track, 10 ms chunks: {}",
        echo["night"]["diag"]["echo"]
    );
    // The recording's k-th marker is the k-th the speakers played from the song's first.
    let skip = speakers.len().saturating_sub(recorded.len().max(1));
    for (what, errors, offset) in [("venue", &venue, 0), ("recording", &recorded, skip)] {
        let judged: Vec<(usize, f64)> = errors
            .iter()
            .copied()
            .filter(|&(k, _)| k >= SETTLING)
            .collect();
        assert!(
            judged.len() >= 3,
            "at least three settled markers sung and found in the {what}: {errors:?}"
        );
        // Not judged, for the record: each error less the phone's own distance.
        let mut own: Vec<f64> = judged
            .iter()
            .filter_map(|&(k, e)| Some(e - phone.get(k + offset).copied().flatten()?))
            .collect();
        let own = (!own.is_empty()).then(|| crate::support::latency::median(&mut own));
        assert_within_but_one("in-ear", &format!("{what} marker"), &judged, 25.0, 100.0);
        let mut raw: Vec<f64> = judged.iter().map(|&(_, e)| e).collect();
        let median = crate::support::latency::median(&mut raw);
        eprintln!(
            "in-ear: {what}, voice − backing, median {median:+.1} ms; less the phone's distance from the stage, median {own:+.1?} ms"
        );
        assert!(
            median.abs() <= 5.0,
            "in the {what} the voice sits {median:+.1} ms from the backing's beat, by the median"
        );
    }
}

/// Where a burst of `hz` that the 256-frame blocks found at `coarse` really starts: the
/// first 128-frame window (sliding by 4) at half the burst's amplitude, by its middle.
/// The phones' marker tap (tests/e2e/phones.mjs) applies the same rule to what they
/// play, so both readings carry the same small bias.
fn refined_onset(samples: &[f32], coarse: usize, hz: f32) -> usize {
    let k = 2.0 * (2.0 * std::f64::consts::PI * f64::from(hz) / 48_000.0).cos();
    // Goertzel over a Hann window, as the phones' tap computes it.
    let amp = |from: usize| {
        let Some(w) = samples.get(from..from + 128) else {
            return 0.0;
        };
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for (i, &v) in w.iter().enumerate() {
            let hann = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / 127.0).cos();
            let s0 = f64::from(v) * hann + k * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        4.0 * (s1 * s1 + s2 * s2 - k * s1 * s2).max(0.0).sqrt() / 128.0
    };
    let half = 0.5 * amp(coarse + 512);
    (coarse.saturating_sub(256)..=coarse + 256)
        .step_by(4)
        .find(|&s| amp(s) >= half)
        .map_or(coarse, |s| s + 64)
}

/// Stage-mode sync (`docs/sync.md`): two Chromium singers whose return mixes reach them
/// 20 and 80 ms later than usual (each packet delayed before the jitter buffer) sing
/// syllables over a song with a beat and a marker burst every 2 s. Judged by the test's own
/// ears, not only the phones' reports: each marker as the phone's Web Audio output
/// played it (its own clock and output timestamp), and as the speakers played it (the
/// recording, when the audio thread wrote it, plus what the device still held).
///
/// What holds, from the fifth marker on (the first four, 9 s of the song, leave the
/// loop and the level matching time to settle):
/// - each phone knows when it plays: its belief (the box's song clock, its receiver,
///   and the correction it found by setting the levels it played against the box's
///   levels of its mix) is within ±10 ms of what its output really played once its
///   level matches agree (±2 ms once a few do), within ±20 ms before (14 ms seen
///   while they gather). Without the
///   levels, Chromium's gap between WebRTC's playout and the Web Audio output (−19 to
///   +17 ms per session here, −100 ms once after a stall) went unseen;
/// - the two phones play every marker within ±10 ms of each other;
/// - both play it within ±10 ms of the speakers (the bound; −2.4 to +1.5 ms in
///   four runs since the page holds a floor under its jitter buffer for the song);
/// - the box made up for the injected delays: the 20 ms phone waits about 60 ms more
///   than the 80 ms one (its extra delay and jitter buffer), and the loop settled.
#[test]
fn two_phones_with_different_network_delays_play_each_marker_with_the_speakers() {
    crate::support::stalls::once_more_if_the_machine_stalled(
        "two_phones_with_different_network_delays_play_each_marker_with_the_speakers",
        two_phones_with_different_network_delays_play_each_marker_with_the_speakers_once,
    );
}

fn two_phones_with_different_network_delays_play_each_marker_with_the_speakers_once() {
    /// Markers not judged: the loop settles meanwhile.
    const SETTLING: usize = 4;
    let _serial = crate::support::SERIAL.blocking_lock();
    duetbox::telemetry::init("duetbox=info,warn");
    let _pulse = PulseAudio::start(&alsa_config().pulse_e2e_dir());
    let mics = syllable_mics("sync", &[("mia440.wav", 440.0), ("theo660.wav", 660.0)]);
    let rec = record(marked_night_box("sync"), "127.0.0.1", |url| {
        marked_night(url, "330,440,660")
            .arg("--delay", "Mia:20")
            .arg("--delay", "Theo:80")
            .phone("Mia", "singer", Some(&mics[0]), "chromium")
            .phone("Theo", "singer", Some(&mics[1]), "chromium")
    });
    let speakers = venue_marker_epochs(&rec, 1760.0);
    eprintln!(
        "sync: the speakers' writes more than 30 ms apart (epoch ms, ms): {:?}",
        rec.write_gaps()
    );
    let (mia, theo) = (rec.run.result("Mia"), rec.run.result("Theo"));
    let round = |x: f64| (x * 10.0).round() / 10.0;
    eprintln!("sync: Mia {} Theo {}", mia["sync"], theo["sync"]);
    // Per phone, per marker the speakers played: (heard − speakers, believed −
    // speakers). A belief the page did not place (its 5 ms reader starved across the
    // line's start, or its account jumped there) leaves that marker's belief out, not
    // the marker.
    let mut heard = Vec::new();
    for (who, r) in [("Mia", &mia), ("Theo", &theo)] {
        let (on, believed) = (
            numbers(&r["night"]["onsets"]),
            numbers(&r["night"]["believed"]),
        );
        type Marker = (f64, f64, Option<f64>);
        let rows: Vec<Marker> = speakers
            .iter()
            .filter_map(|&s| {
                Some((
                    s,
                    nearest(&on, s)? - s,
                    nearest(&believed, s).map(|b| b - s),
                ))
            })
            .collect();
        eprintln!(
            "sync: {who} (heard − speakers, believed − speakers), ms: {:?}",
            rows.iter()
                .map(|&(_, h, b)| (round(h), b.map(round)))
                .collect::<Vec<_>>()
        );
        assert!(
            rows.len() >= SETTLING + 3,
            "{who}: at least seven markers heard: speakers {speakers:?}, {}",
            r["night"]
        );
        let settled = &rows[SETTLING..];
        let marker = |f: fn(&Marker) -> Option<f64>| -> Vec<(usize, f64)> {
            settled
                .iter()
                .enumerate()
                .filter_map(|(k, r)| Some((k + SETTLING, f(r)?)))
                .collect()
        };
        let placed = marker(|r| r.2);
        assert!(
            placed.len() >= 2,
            "{who}: beliefs placed for at least two settled markers: {placed:?}, {}",
            r["night"]
        );
        assert_within_but_one(who, "believed marker", &placed, 15.0, 40.0);
        assert_within_but_one(who, "heard marker", &marker(|r| Some(r.1)), 10.0, 40.0);
        // Until its level matches agree (the history's correction leaves zero), a
        // phone cannot see Chromium's gap between WebRTC's playout and its Web Audio
        // output: within 20 ms then, 10 ms after.
        let agreed = r["sync"]["history"].as_array().and_then(|h| {
            h.iter()
                .find(|e| e[4].as_f64().is_some_and(|c| c != 0.0))
                .and_then(|e| e[0].as_f64())
        });
        type Row<'a> = (usize, &'a Marker);
        let (after, before): (Vec<Row>, Vec<Row>) = settled
            .iter()
            .enumerate()
            .map(|(k, r)| (k + SETTLING, r))
            .partition(|(_, r)| agreed.is_some_and(|a| r.0 >= a));
        let belief = |v: Vec<Row>| -> Vec<(usize, f64)> {
            v.into_iter()
                .filter_map(|(k, r)| Some((k, r.1 - r.2?)))
                .collect()
        };
        eprintln!("{who}: level matches agreed at {agreed:?}");
        assert_within_but_one(
            who,
            "belief-to-heard marker before the levels agreed",
            &belief(before),
            20.0,
            40.0,
        );
        assert_within_but_one(who, "belief-to-heard marker", &belief(after), 10.0, 40.0);
        let matches = r["sync"]["matches"].as_array().map_or(0, Vec::len);
        assert!(
            matches >= 1,
            "{who} matched its levels against the box's: {}",
            r["sync"]
        );
        heard.push(rows);
    }
    let apart: Vec<(usize, f64)> = heard[0][SETTLING..]
        .iter()
        .enumerate()
        .filter_map(|(k, &(at, m, _))| {
            let &(_, t, _) = heard[1].iter().find(|&&(s, _, _)| s == at)?;
            Some((k + SETTLING, m - t))
        })
        .collect();
    eprintln!("sync: Mia − Theo per settled marker (ms): {apart:?}");
    assert_within_but_one("Mia and Theo", "marker", &apart, 10.0, 40.0);
    // The injected delays are what the box made up for: Mia (20 ms) waits about 60 ms
    // longer than Theo (80 ms) after the injected delay: in her jitter buffer (its
    // average from getStats) and the extra delay the box steers (each browser's NetEq
    // picks its own buffer, tens of ms apart now and then, so the extra delays alone
    // need not differ by 60). And the loop has settled: medians over the judged markers
    // (a PulseAudio stall of the "speakers" on two busy cores unsettles it for a few
    // seconds now and then, and it settles again). History entries: [t, offset, extra,
    // lead, correction, jitter buffer].
    let (from, to) = (heard[0][SETTLING].0, heard[0].last().expect("markers").0);
    let median_of = |r: &Value, value: &dyn Fn(&Value) -> Option<f64>| -> f64 {
        let mut v: Vec<f64> = r["sync"]["history"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e[0].as_f64().is_some_and(|t| t >= from && t <= to))
                    .filter_map(value)
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            v.len() >= 8,
            "sync reports between the markers: {}",
            r["sync"]
        );
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let median = |r: &Value, k: usize| median_of(r, &|e: &Value| e[k].as_f64());
    let waits = |r: &Value| median_of(r, &|e: &Value| Some(e[2].as_f64()? + e[5].as_f64()?));
    let (me, te) = (waits(&mia), waits(&theo));
    eprintln!(
        "sync: extra delay + jitter buffer, median: Mia {me:.1} ms (extra {:.1}), Theo {te:.1} ms (extra {:.1})",
        median(&mia, 2),
        median(&theo, 2)
    );
    assert!(
        (35.0..=85.0).contains(&(me - te)),
        "Mia waits {me:.1} ms, Theo {te:.1} ms (extra delay + jitter buffer): about 60 ms apart, as injected"
    );
    for (who, r) in [("Mia", &mia), ("Theo", &theo)] {
        let offset = median(r, 1);
        assert!(
            offset.abs() <= 3.0,
            "{who}'s offsets, median {offset} ms: settled"
        );
    }
}
