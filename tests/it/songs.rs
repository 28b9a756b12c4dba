//! The karaoke night against a real box (in-process, venue output to a real-time WAV):
//! songs made by the real encoders in every format the box plays, queued by a singer
//! over the WebSocket and started by the host desk (the host PIN's WebSocket session);
//! what the venue output holds is read back and checked window by window.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::songs::{song, tones_by_window};
use crate::support::wss::{Phone, Received};
use crate::support::{box_dir, loopback_box_config, read_wav_left, start_box, SERIAL};

pub(crate) const HOST_PIN: &str = "2468";
/// 100 ms windows at 48 kHz.
pub(crate) const WINDOW: usize = 4_800;

/// A joined singer (no media: the test only queues songs) and the host desk.
pub(crate) struct Night {
    pub(crate) singer: Phone,
    pub(crate) host: Phone,
    pub(crate) queue: Value,
    /// The last `host_room` the host read.
    pub(crate) host_room: Value,
}

impl Night {
    pub(crate) async fn open(addr: std::net::SocketAddr) -> Night {
        let mut singer = Phone::connect(addr).await;
        singer
            .send(json!({"type": "join", "v": 1, "name": "Ana", "role": "singer"}))
            .await;
        singer.expect("welcome").await;
        let mut host = Phone::connect(addr).await;
        host.send(json!({"type": "host", "v": 1, "pin": HOST_PIN}))
            .await;
        host.expect("host_welcome").await;
        let queue = host.expect("queue").await;
        Night {
            singer,
            host,
            queue,
            host_room: Value::Null,
        }
    }

    /// The library's songs, once the indexer has listed `count` of them.
    pub(crate) async fn songs(&mut self, count: usize) -> Vec<Value> {
        let begin = Instant::now();
        loop {
            self.singer
                .send(json!({"type": "songs", "query": ""}))
                .await;
            let reply = self.singer.expect("songs").await;
            if reply["total"].as_u64() == Some(count as u64) {
                return reply["songs"].as_array().expect("songs").clone();
            }
            assert!(
                begin.elapsed() < Duration::from_secs(30),
                "the library never listed {count} songs: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) async fn add(&mut self, song_id: &str) -> u64 {
        self.singer
            .send(json!({"type": "queue_add", "song": song_id}))
            .await;
        loop {
            match self.singer.next().await {
                Received::Json(v) if v["type"] == "queued" => {
                    return v["entry"].as_u64().expect("entry")
                }
                Received::Json(v) if v["type"] == "error" => panic!("queue_add refused: {v}"),
                Received::Json(_) => {}
                Received::Closed(c) => panic!("closed {c:?}"),
            }
        }
    }

    async fn transport(&mut self, command: Value) {
        let mut msg = command;
        msg["type"] = "transport".into();
        self.host.send(msg).await;
    }

    /// Waits (reading the host's messages) until the queue message satisfies `ok`.
    async fn until(&mut self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let begin = Instant::now();
        while !ok(&self.queue) {
            assert!(
                begin.elapsed() < Duration::from_secs(20),
                "{what}: the queue stayed {}",
                self.queue
            );
            match tokio::time::timeout(Duration::from_millis(500), self.host.next()).await {
                Ok(Received::Json(v)) if v["type"] == "queue" => self.queue = v,
                Ok(Received::Json(v)) if v["type"] == "host_room" => self.host_room = v,
                Ok(Received::Json(v)) if v["type"] == "error" => panic!("{what}: refused {v}"),
                Ok(Received::Closed(c)) => panic!("{what}: host closed {c:?}"),
                _ => {}
            }
        }
        self.queue.clone()
    }

    /// Starts `entry` and waits until it plays.
    pub(crate) async fn start(&mut self, entry: u64) {
        self.transport(json!({"do": "start", "entry": entry})).await;
        self.until("the song plays", |q| {
            q["song"]["entry"] == entry && q["song"]["state"] == "playing"
        })
        .await;
    }

    /// Waits until no song plays (it ended or failed with nothing after it).
    pub(crate) async fn ended(&mut self) {
        self.until("the song ends", |q| q["song"].is_null()).await;
    }
}

pub(crate) fn id_of(songs: &[Value], title: &str) -> String {
    songs
        .iter()
        .find(|s| s["title"] == title)
        .unwrap_or_else(|| panic!("no song titled {title} in {songs:?}"))["id"]
        .as_str()
        .expect("id")
        .to_string()
}

pub(crate) fn config(dir: &Path, library: &Path, out: &Path) -> duetbox::config::Config {
    let mut config = loopback_box_config(&dir.join("state"));
    config.audio.output = format!("wav:{}", out.display());
    config.songs.library = library.display().to_string();
    config.room.host_pin = HOST_PIN.into();
    // The test's singer never sends media: keep its place for the whole test.
    config.room.join_deadline_ms = 60_000;
    // These tests time the songs' tones themselves; the count-in has its own test.
    config.songs.count_in_beats = 0;
    config
}

/// Runs of the same dominant tone: (Hz or 0 for none, windows).
pub(crate) fn runs(tones: &[Option<(f32, f32)>]) -> Vec<(f32, usize)> {
    let mut out: Vec<(f32, usize)> = Vec::new();
    for t in tones {
        let hz = t.map_or(0.0, |t| t.0);
        match out.last_mut() {
            Some((last, n)) if *last == hz => *n += 1,
            _ => out.push((hz, 1)),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn songs_in_every_format_play_at_the_backing_level_one_after_another() {
    let _serial = SERIAL.lock().await;
    let dir = box_dir("songs-formats");
    let library = dir.join("library");
    // One tone per format, sources at the rates such files come at.
    let formats: [(&str, u32, f32); 7] = [
        ("Tones - Wave.wav", 44_100, 440.0),
        ("Tones - Flac.flac", 48_000, 550.0),
        ("Tones - Vorbis.ogg", 44_100, 660.0),
        ("Tones - Opus.opus", 48_000, 770.0),
        ("Tones - Mpeg.mp3", 44_100, 880.0),
        ("Tones - Mpeg4.m4a", 48_000, 990.0),
        ("Tones - Adts.aac", 44_100, 1_100.0),
    ];
    for (file, rate, hz) in formats {
        song(&library, file, rate, &[(hz, 1.5)]);
    }
    let out = dir.join("venue.wav");
    let (running, _) = start_box(config(&dir, &library, &out)).await;
    let mut night = Night::open(running.https_addr).await;
    let songs = night.songs(formats.len()).await;
    for (file, _, _) in formats {
        let title = file
            .split_once(" - ")
            .and_then(|(_, t)| t.rsplit_once('.'))
            .map(|(t, _)| t)
            .expect("a title");
        let entry = night.add(&id_of(&songs, title)).await;
        night.start(entry).await;
        night.ended().await;
    }
    assert!(
        night.queue["problems"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{}",
        night.queue
    );
    drop(night);
    running.stop().await.expect("the box stops");

    let left = read_wav_left(&out);
    let candidates: Vec<f32> = formats.iter().map(|f| f.2).collect();
    let tones = tones_by_window(&left, &candidates, WINDOW, 0.05);
    let played: Vec<(f32, usize)> = runs(&tones).into_iter().filter(|r| r.0 > 0.0).collect();
    let order: Vec<f32> = played.iter().map(|r| r.0).collect();
    assert_eq!(order, candidates, "each song once, in order: {played:?}");
    for (hz, windows) in &played {
        // 1.5 s = 15 windows; a run may lose a window at each edge to the split.
        assert!(
            (13..=16).contains(windows),
            "{hz} Hz played for {windows} windows"
        );
    }
    // The backing plays at -6 dB (the default): 0.5 × 0.501, through lossy codecs.
    for (k, t) in tones.iter().enumerate() {
        if let Some((hz, level)) = t {
            let whole = k > 0
                && tones[k - 1].is_some_and(|p| p.0 == *hz)
                && tones
                    .get(k + 1)
                    .is_some_and(|n| n.is_some_and(|n| n.0 == *hz));
            if whole {
                assert!(
                    (0.22..=0.28).contains(level),
                    "{hz} Hz at {level} in window {k}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_and_a_next_leave_no_stale_audio_and_bad_files_are_skipped() {
    let _serial = SERIAL.lock().await;
    let dir = box_dir("songs-transport");
    let library = dir.join("library");
    // Halves: 500 Hz for 3 s, then 1000 Hz for 3 s.
    song(
        &library,
        "A - Halves.flac",
        44_100,
        &[(500.0, 3.0), (1_000.0, 3.0)],
    );
    song(&library, "A - Long.ogg", 48_000, &[(1_500.0, 10.0)]);
    song(&library, "A - After.mp3", 44_100, &[(2_000.0, 1.5)]);
    std::fs::write(library.join("A - Broken.mp3"), pseudo_random(50_000)).expect("junk");
    song(&library, "A - Apple.alac.m4a", 44_100, &[(300.0, 1.0)]);
    song(&library, "A - Good.wav", 48_000, &[(2_500.0, 1.0)]);
    let out = dir.join("venue.wav");
    let (running, _) = start_box(config(&dir, &library, &out)).await;
    let mut night = Night::open(running.https_addr).await;
    let songs = night.songs(6).await;

    // Seek from about 1 s to 4.5 s: the 500 Hz half must stop at once.
    let halves = night.add(&id_of(&songs, "Halves")).await;
    night.start(halves).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    night.transport(json!({"do": "seek", "ms": 4_500})).await;
    night.ended().await;

    // Next from the long song to the short one.
    let long = night.add(&id_of(&songs, "Long")).await;
    let after = night.add(&id_of(&songs, "After")).await;
    night.start(long).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    night.transport(json!({"do": "next"})).await;
    night
        .until("the next song plays", |q| q["song"]["entry"] == after)
        .await;
    night.ended().await;

    // A corrupt file and an unsupported one, then a good one: two problems, the good
    // one plays.
    let broken = night.add(&id_of(&songs, "Broken")).await;
    night.add(&id_of(&songs, "Apple.alac")).await;
    let good = night.add(&id_of(&songs, "Good")).await;
    night
        .transport(json!({"do": "start", "entry": broken}))
        .await;
    let q = night
        .until("the good song after two bad ones", |q| {
            q["song"]["entry"] == good || q["problems"].as_array().is_some_and(|p| p.len() >= 2)
        })
        .await;
    night.ended().await;
    let problems = night.queue["problems"]
        .as_array()
        .expect("problems")
        .clone();
    let kinds: Vec<&str> = problems
        .iter()
        .map(|p| p["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.len(), 2, "{q}");
    assert!(
        kinds.contains(&"corrupt") || kinds.contains(&"unsupported"),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"unsupported"),
        "ALAC is not decoded: {problems:?}"
    );
    drop(night);
    running.stop().await.expect("the box stops");

    let left = read_wav_left(&out);
    let tones = tones_by_window(
        &left,
        &[500.0, 1_000.0, 1_500.0, 2_000.0, 2_500.0, 300.0],
        WINDOW,
        0.05,
    );
    let played: Vec<(f32, usize)> = runs(&tones).into_iter().filter(|r| r.0 > 0.0).collect();
    let order: Vec<f32> = played.iter().map(|r| r.0).collect();
    assert_eq!(
        order,
        [500.0, 1_000.0, 1_500.0, 2_000.0, 2_500.0],
        "no stale audio after the seek or the next, nothing of the bad files: {played:?}"
    );
    // About 1 s of 500 Hz before the seek, then 1.5 s (4.5 to 6 s) of 1000 Hz.
    assert!((8..=13).contains(&played[0].1), "{played:?}");
    assert!((13..=16).contains(&played[1].1), "{played:?}");
}

/// Bytes that are no audio format.
fn pseudo_random(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

pub(crate) fn curl(url: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sk", "--path-as-is", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_run_the_night_and_lyrics_come_only_from_the_index() {
    let dir = box_dir("songs-strangers");
    let library = dir.join("library");
    song(&library, "A - Lyrics.wav", 48_000, &[(440.0, 0.5)]);
    std::fs::write(
        library.join("A - Lyrics.lrc"),
        "[00:00.50]First <00:00.75>line\n[00:01.00]Second\n",
    )
    .expect("lrc");
    let mut config = config(&dir, &library, &dir.join("venue.wav"));
    config.audio.output = "null".into();
    config.http.http_port = crate::support::free_port();
    let plain = config.http.http_port;
    let (running, base) = start_box(config).await;
    let addr = running.https_addr;
    let mut night = Night::open(addr).await;
    let songs = night.songs(1).await;
    let id = id_of(&songs, "Lyrics");
    assert_eq!(songs[0]["lyrics"], true);

    // A phone sending the host's commands is refused, and nothing happens.
    let entry = night.add(&id).await;
    for msg in [
        json!({"type": "transport", "do": "start", "entry": entry}),
        json!({"type": "queue_remove", "entry": entry}),
        json!({"type": "kick", "peer": "p1"}),
        json!({"type": "master", "gain_db": 12}),
        json!({"type": "mode", "entry": entry, "mode": "in_ear"}),
    ] {
        night.singer.send(msg).await;
        let error = night.singer.expect("error").await;
        assert_eq!(error["code"], "forbidden", "{error}");
    }
    // A song id that is not in the index is refused.
    night
        .singer
        .send(json!({"type": "queue_add", "song": "0000000000000000"}))
        .await;
    assert_eq!(night.singer.expect("error").await["code"], "bad_field");
    // A singer cannot log in as the host on the same connection.
    night
        .singer
        .send(json!({"type": "host", "v": 1, "pin": HOST_PIN}))
        .await;
    assert_eq!(night.singer.expect("error").await["code"], "already_joined");
    night
        .until("nothing started", |q| {
            q["song"].is_null()
                && q["entries"][0]["entry"] == entry
                && q["entries"][0]["mode"] == "stage"
        })
        .await;
    // The host makes it an in-ear song; an unknown entry is refused.
    night
        .host
        .send(json!({"type": "mode", "entry": entry, "mode": "in_ear"}))
        .await;
    night
        .until("the song is in-ear", |q| {
            q["entries"][0]["mode"] == "in_ear"
        })
        .await;
    night
        .host
        .send(json!({"type": "mode", "entry": entry + 100, "mode": "stage"}))
        .await;
    let error = night.host.expect("error").await;
    assert_eq!(error["code"], "refused", "{error}");
    assert_eq!(error["message"], "no such queue entry", "{error}");

    // Guessing the host PIN: refused and closed; the sixth guess from this address
    // waits even with the right PIN.
    for _ in 0..5 {
        let mut guesser = Phone::connect(addr).await;
        guesser
            .send(json!({"type": "host", "v": 1, "pin": "0000"}))
            .await;
        assert_eq!(guesser.expect("error").await["code"], "wrong_pin");
        assert!(guesser.expect_close().await.is_some());
    }
    let mut late = Phone::connect(addr).await;
    late.send(json!({"type": "host", "v": 1, "pin": HOST_PIN}))
        .await;
    let error = late.expect("error").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("try again"),
        "{error}"
    );
    // The desk that was already open is not disturbed.
    night
        .transport(json!({"do": "start", "entry": entry}))
        .await;
    night
        .until("the host still runs the night", |q| {
            q["song"]["entry"] == entry
        })
        .await;

    // Lyrics: by id, from the index's file, on both sides; nothing else.
    let (code, body) = curl(&format!("{base}/songs/{id}/lyrics"));
    assert_eq!(code, "200", "{body}");
    let lyrics: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(lyrics["lines"][0]["start_ms"], 500);
    assert_eq!(lyrics["lines"][0]["syllables"][1]["at_ms"], 750);
    let (code, _) = curl(&format!("http://127.0.0.1:{plain}/songs/{id}/lyrics"));
    assert_eq!(code, "200");
    for bad in [
        "0000000000000000",
        "..%2F..%2Fetc%2Fpasswd",
        "../../../../etc/passwd",
        "AF63DC4C8601EC8",
    ] {
        let (code, body) = curl(&format!("{base}/songs/{bad}/lyrics"));
        assert!(code == "404", "{bad}: {code} {body}");
        assert!(!body.contains("root:"), "{bad}: {body}");
    }
    drop(night);
    running.stop().await.expect("the box stops");
}

/// Where the venue output gets loud (above 0.1) after at least 0.3 s below 0.01 (the
/// recording's start counts as quiet).
fn onsets(left: &[f32]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut quiet = 14_400usize;
    for (k, v) in left.iter().enumerate() {
        if v.abs() > 0.1 {
            if quiet >= 14_400 {
                out.push(k);
            }
            quiet = 0;
        } else if v.abs() < 0.01 {
            quiet += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_in_of_clicks_leads_into_the_song_on_the_beat() {
    let _serial = SERIAL.lock().await;
    let dir = box_dir("songs-count-in");
    let library = dir.join("library");
    song(&library, "A - Counted.wav", 48_000, &[(440.0, 1.0)]);
    let out = dir.join("venue.wav");
    let mut config = config(&dir, &library, &out);
    // Four clicks at 120 beats a minute: two seconds, a click every half second.
    config.songs.count_in_beats = 4;
    config.songs.count_in_bpm = 120.0;
    let (running, _) = start_box(config).await;
    let mut night = Night::open(running.https_addr).await;
    let songs = night.songs(1).await;
    let entry = night.add(&id_of(&songs, "Counted")).await;
    night.start(entry).await;
    let q = night.queue.clone();
    assert_eq!(q["song"]["count_in_ms"], 2_000, "{q}");
    assert_eq!(q["song"]["beats"], 4, "{q}");
    night.ended().await;
    drop(night);
    running.stop().await.expect("the box stops");

    let left = read_wav_left(&out);
    let at = onsets(&left);
    // Four clicks half a second apart (each dies away within 0.1 s), then the song two
    // seconds after the first: five onsets, to a few frames (a wave's rise to 0.1).
    assert_eq!(at.len(), 5, "four clicks and the song: {at:?}");
    let first = at[0];
    for (k, &onset) in at.iter().enumerate() {
        let expected = first + k * 24_000;
        assert!(
            onset.abs_diff(expected) <= 10,
            "onset {k} at frame {onset}, expected {expected}: {at:?}"
        );
    }
    let click = |k: usize| &left[first + k * 24_000..first + k * 24_000 + 480];
    let peak = |x: &[f32]| x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let accent = duetbox::engine::testkit::tone_level(click(0), 1_500.0);
    let plain = duetbox::engine::testkit::tone_level(click(1), 1_000.0);
    assert!(
        accent > 0.05 && plain > 0.05,
        "the first click is higher: {accent} / {plain}"
    );
    let song_start = first + 96_000;
    assert!(
        peak(&left[song_start - 240..song_start - 10]) < 0.01,
        "nothing before the song"
    );
    let tone = duetbox::engine::testkit::tone_level(&left[song_start..song_start + 9_600], 440.0);
    assert!(
        (0.2..=0.3).contains(&tone),
        "the song from its first frame: {tone}"
    );
}

/// A test singer's packets this far apart (three 20 ms frames) mean its sender was not
/// run: its voice dips in the venue for a reason of the test's own.
const SENDER_STOPPED: Duration = Duration::from_millis(60);

/// The venue's own karaoke player on the line-in: a tone played into a PulseAudio null
/// sink, whose monitor the box captures through ALSA (`audio.line_in`), chosen by the
/// host as the backing. It must reach the venue output and both singers' returns at the
/// backing level, whole (drift-corrected, no gaps), beside the voices.
#[test]
fn the_line_in_chosen_by_the_host_reaches_the_venue_and_both_returns() {
    crate::support::stalls::once_more_if_the_machine_stalled_async(
        "the_line_in_chosen_by_the_host_reaches_the_venue_and_both_returns",
        the_line_in_chosen_by_the_host_reaches_the_venue_and_both_returns_once,
    );
}

async fn the_line_in_chosen_by_the_host_reaches_the_venue_and_both_returns_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use duetbox::audio::Sink;
    use duetbox::engine::testkit::tone_level;

    use crate::support::{alsa_config, pcm, raw, PulseAudio};
    use crate::whip::{singer, tone, wait_more};

    const LINE_HZ: f32 = 330.0;
    let _serial = SERIAL.lock().await;
    let alsa = alsa_config();
    let _pulse = PulseAudio::start(&alsa.pulse_e2e_dir());
    // The karaoke player: a stereo tone at half scale into the line's sink, paced by
    // PulseAudio's clock (the box's output runs on another sink's). It stands for
    // another machine, so it runs real-time: a gap it leaves when this busy process
    // (the box and both singers' codecs on two cores) starves it is no gap of the box's.
    let playing = Arc::new(AtomicBool::new(true));
    let player = std::thread::spawn({
        let playing = playing.clone();
        move || {
            duetbox::audio::make_realtime(60).expect("the tests run as root");
            let mut sink = duetbox::output::AlsaSink::open(pcm::LINE_PLAYER, 480, 1_920)
                .expect("the line's player opens");
            let period = sink.period_frames();
            let mut buf = vec![0.0f32; 2 * period];
            let mut n = 0u64;
            while playing.load(Ordering::Relaxed) {
                for f in 0..period {
                    let t = n as f64 / 48_000.0;
                    let v = (0.5 * (std::f64::consts::TAU * f64::from(LINE_HZ) * t).sin()) as f32;
                    buf[2 * f] = v;
                    buf[2 * f + 1] = v;
                    n += 1;
                }
                sink.write(&buf).expect("the line's player writes");
            }
        }
    });

    let dir = box_dir("songs-line-in");
    let mut config = loopback_box_config(&dir.join("state"));
    config.audio.output = format!("alsa:{}", pcm::VENUE_E2E);
    config.audio.line_in = pcm::LINE_IN.into();
    // As shipped: the audio and line-in threads real-time (the test boxes otherwise run
    // at normal priority). The capture keeps 10 ms of slack ahead of the output; at
    // normal priority beside two singers' codecs on two cores it is not promised.
    config.audio.realtime_priority = duetbox::config::Config::default().audio.realtime_priority;
    config.room.host_pin = HOST_PIN.into();
    let (running, base) = start_box(config).await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let ben = singer(&base, "ben", None, tone(660.0)).await;

    let mut host = Phone::connect(running.https_addr).await;
    host.send(json!({"type": "host", "v": 1, "pin": HOST_PIN}))
        .await;
    host.expect("host_welcome").await;
    host.send(json!({"type": "backing", "source": "line_in"}))
        .await;
    let begin = Instant::now();
    loop {
        assert!(
            begin.elapsed() < Duration::from_secs(15),
            "the line-in did not go live"
        );
        match tokio::time::timeout(Duration::from_millis(500), host.next()).await {
            Ok(Received::Json(v)) if v["type"] == "host_room" => {
                assert_eq!(v["line_in_configured"], true, "{v}");
                let problem = &v["live_source"]["problem"];
                assert!(problem.is_null(), "the line-in failed: {problem}");
                if v["backing_source"] == "line_in" && v["live_source"]["live"] == true {
                    break;
                }
            }
            Ok(Received::Json(v)) if v["type"] == "error" => panic!("refused: {v}"),
            Ok(Received::Closed(c)) => panic!("host closed {c:?}"),
            _ => {}
        }
    }
    // Past the feed's settling (3 s, in which it trims the capture's opening burst
    // rather than steer it away for many seconds): the last 2 s judged are steady.
    let live = Instant::now();
    wait_more(&ana, 6.0, "6 s of ana's return over the line-in").await;
    wait_more(&ben, 0.5, "ben's return").await;
    // A test singer sending late (its task not run by this busy process) leaves a gap
    // in its voice that is not the box's: evidence for the guard.
    for (who, singer) in [("ana", &ana), ("ben", &ben)] {
        let gap = singer.sent().longest_gap(live, Instant::now());
        eprintln!("{who}'s sender: longest gap between packets {gap:?}");
        if gap >= SENDER_STOPPED {
            crate::support::stalls::note(format!("{who}'s sender stopped {gap:?}"));
        }
    }
    assert_backing_in_returns(
        "the line-in",
        LINE_HZ,
        [("ana", &ana, 660.0, 440.0), ("ben", &ben, 440.0, 660.0)],
    );
    let periods = running.audio.counters.periods.load(Ordering::Relaxed);
    let period = running
        .audio
        .counters
        .device_period_frames
        .load(Ordering::Relaxed);
    let dry = running
        .audio
        .counters
        .backing_underrun_frames
        .load(Ordering::Relaxed);
    ana.close().await;
    ben.close().await;
    drop(host);
    running.stop().await.expect("the box stops");
    playing.store(false, Ordering::Relaxed);
    player.join().expect("the player thread");

    // The venue output's last 3 s of the duet: the line-in whole in every window,
    // beside both voices.
    let venue = read_wav_left(&alsa.file(raw::VENUE_E2E));
    let end = (periods * period) as usize;
    let end = end.min(venue.len()).saturating_sub(24_000);
    let duet = &venue[end - 144_000..end];
    let levels: Vec<f32> = duet
        .chunks(WINDOW)
        .map(|w| tone_level(w, LINE_HZ))
        .collect();
    eprintln!("venue: the line-in at {levels:.3?}; the engine's backing ran dry for {dry} frames");
    for (w, window) in duet.chunks(WINDOW).enumerate() {
        let line = levels[w];
        assert!(
            (0.22..=0.28).contains(&line),
            "venue: the line-in at {line} in window {w} of the last 3 s \
             (the engine's backing ran dry for {dry} frames)"
        );
        let voices = (tone_level(window, 440.0), tone_level(window, 660.0));
        // Present beside it (0.25 each): a dip is a test singer's sender, sharing this
        // busy process, sending late (noted above), and the box concealing it as it
        // should.
        assert!(
            voices.0 > 0.1 && voices.1 > 0.1,
            "venue: the voices at {voices:?} in window {w}"
        );
    }
}

/// Asserts that the last 2 s of each singer's return hold the live backing at `hz` at
/// the backing level in every 100 ms window (0.5 at -6 dB, through Opus: 0.2 to 0.3),
/// with the partner and without the singer's own voice.
fn assert_backing_in_returns(
    what: &str,
    hz: f32,
    singers: [(&str, &crate::support::whip_client::WhipClient, f32, f32); 2],
) {
    use duetbox::engine::testkit::tone_level;
    for (who, client, partner_hz, own_hz) in singers {
        let received = client.received();
        let left = received.left();
        let last = &left[left.len() - 96_000..];
        let levels: Vec<f32> = last.chunks(WINDOW).map(|w| tone_level(w, hz)).collect();
        // Packets that never came (the client conceals them): lost on the way, not a
        // gap in the mix.
        let concealed = received.concealed_frames;
        eprintln!("{who}'s return: {what} at {levels:.3?}; {concealed} frames concealed");
        for (w, &level) in levels.iter().enumerate() {
            assert!(
                (0.2..=0.3).contains(&level),
                "{who}'s return: {what} at {level} in window {w} of the last 2 s \
                 ({concealed} frames of it concealed by the client)"
            );
        }
        let (partner, own) = (tone_level(last, partner_hz), tone_level(last, own_hz));
        assert!(
            partner > 0.1 && own < 0.01,
            "{who} hears the partner at {partner}, themselves at {own}"
        );
    }
}

/// Reads the host desk's messages until a `host_room` satisfies `ok`.
pub(crate) async fn host_room_until(
    host: &mut Phone,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let begin = Instant::now();
    loop {
        assert!(
            begin.elapsed() < Duration::from_secs(15),
            "{what}: not in time"
        );
        match tokio::time::timeout(Duration::from_millis(500), host.next()).await {
            Ok(Received::Json(v)) if v["type"] == "host_room" && ok(&v) => return v,
            Ok(Received::Json(v)) if v["type"] == "error" => panic!("{what}: refused {v}"),
            Ok(Received::Closed(c)) => panic!("{what}: host closed {c:?}"),
            _ => {}
        }
    }
}

/// A PC's audio sent over WHIP in the `backing` role (OBS's use): admitted only with the
/// host PIN, one at a time, silent until the host chooses it, then the backing in both
/// singers' returns at the backing level; when it hangs up the songs have the backing
/// again and its audio is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_backing_feed_needs_the_host_pin_and_plays_once_the_host_chooses_it() {
    use duetbox::engine::testkit::tone_level;

    use crate::support::whip_client::{Role, WhipClient};
    use crate::whip::{singer, tone, wait_more};

    const FEED_HZ: f32 = 330.0;
    let _serial = SERIAL.lock().await;
    let dir = box_dir("songs-whip-feed");
    let mut config = loopback_box_config(&dir.join("state"));
    config.room.host_pin = HOST_PIN.into();
    let (running, base) = start_box(config).await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let ben = singer(&base, "ben", None, tone(660.0)).await;

    for pin in [None, Some("0000")] {
        let refused = WhipClient::connect(&base, Role::Backing, "OBS", pin, Some(tone(FEED_HZ)))
            .await
            .err()
            .unwrap_or_else(|| panic!("a feed with PIN {pin:?} was admitted"));
        assert_eq!(refused.status, Some(401), "{}", refused.message);
    }
    let feed = WhipClient::connect(
        &base,
        Role::Backing,
        "OBS",
        Some(HOST_PIN),
        Some(tone(FEED_HZ)),
    )
    .await
    .unwrap_or_else(|e| panic!("the feed could not connect: {e:?}"));
    let second = WhipClient::connect(
        &base,
        Role::Backing,
        "OBS 2",
        Some(HOST_PIN),
        Some(tone(550.0)),
    )
    .await;
    assert_eq!(
        second.err().and_then(|e| e.status),
        Some(409),
        "one feed at a time"
    );

    // Connected but not chosen: nobody hears it.
    wait_more(&ana, 2.0, "2 s of ana's return").await;
    let left = ana.received().left();
    let heard = tone_level(&left[left.len() - 48_000..], FEED_HZ);
    assert!(
        heard < 0.01,
        "the feed is heard before the host chose it: {heard}"
    );

    let mut host = Phone::connect(running.https_addr).await;
    host.send(json!({"type": "host", "v": 1, "pin": HOST_PIN}))
        .await;
    host.expect("host_welcome").await;
    host_room_until(&mut host, "the feed listed", |v| {
        v["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["role"] == "backing" && p["name"] == "OBS")
        })
    })
    .await;
    host.send(json!({"type": "backing", "source": "whip"}))
        .await;
    host_room_until(&mut host, "the feed chosen", |v| {
        v["backing_source"] == "whip" && v["live_source"]["live"] == true
    })
    .await;
    wait_more(&ana, 3.0, "3 s of ana's return over the feed").await;
    wait_more(&ben, 0.5, "ben's return").await;
    assert_backing_in_returns(
        "the WHIP feed",
        FEED_HZ,
        [("ana", &ana, 660.0, 440.0), ("ben", &ben, 440.0, 660.0)],
    );

    // The feed hangs up: the backing goes back to the songs, its audio with it.
    let status = feed.delete().await.expect("DELETE the feed's session");
    assert_eq!(status, 200);
    feed.close().await;
    host_room_until(&mut host, "the songs back", |v| {
        v["backing_source"] == "songs"
    })
    .await;
    wait_more(&ana, 1.0, "ana's return after the feed").await;
    let left = ana.received().left();
    let heard = tone_level(&left[left.len() - 24_000..], FEED_HZ);
    assert!(
        heard < 0.01,
        "the feed is still heard after it left: {heard}"
    );
    ana.close().await;
    ben.close().await;
    drop(host);
    running.stop().await.expect("the box stops");
}
