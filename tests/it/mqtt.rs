//! The venue panel over MQTT, against a real mosquitto (anonymous, password and TLS
//! listeners on 127.0.0.1) and real `duetbox serve` processes with WHIP singers: the
//! retained status and state, the last will, every command seen on the state topic and
//! (volume, mute) in the venue recording, bad payloads, a broker restart while two
//! phones sing, a wrong password, and the discovery configs on the wire.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use duetbox::engine::testkit::{tone_level, Signal};

use crate::support::mqtt::{Broker, Watcher, PASSWORD, USER};
use crate::support::whip_client::{signal_source, Role, WhipClient};
use crate::support::{box_dir, health, read_wav_left, scratch_dir, BoxProcess, SERIAL};
use crate::whip::{singer, wait_more};

/// Every topic the box writes.
const BOX_TOPICS: &str = "duetbox/#";

/// How long a message the box sends may take to arrive (it goes out within 100 ms).
const SOON: Duration = Duration::from_secs(3);

/// The voices: quiet enough that two of them never reach the limiter.
const ANA_HZ: f32 = 440.0;
const BO_HZ: f32 = 660.0;
const AMPLITUDE: f32 = 0.2;

fn voice(hz: f32) -> crate::support::whip_client::Source {
    signal_source(Signal::Tone {
        hz,
        amplitude: AMPLITUDE,
    })
}

/// A box process with `env`, answering /health; its base URL and topic
/// (`duetbox/<id>`).
async fn start_box(dir: &Path, env: &[(&str, String)]) -> (BoxProcess, String, String) {
    let (the_box, base) = BoxProcess::start_healthy(dir, env).await;
    let id = std::fs::read_to_string(dir.join("state").join("box-id")).expect("the box id");
    (the_box, base, format!("duetbox/{}", id.trim()))
}

/// The latest state the watcher saw.
fn state(w: &Watcher, topic: &str) -> Value {
    w.on(&format!("{topic}/state"))
        .pop()
        .expect("a state message")
        .json()
}

/// Sends `cmd` with `payload` and returns its result (matched by a fresh `id`).
async fn command(w: &Watcher, topic: &str, cmd: &str, payload: &str) -> Value {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = format!(
        "t{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let body = match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(mut o)) => {
            o.insert("id".into(), Value::from(id.clone()));
            Value::Object(o).to_string()
        }
        _ => payload.to_string(), // Sent as it is: a bad payload has no id to match.
    };
    let mark = w.mark();
    w.publish(&format!("{topic}/cmd/{cmd}"), &body).await;
    let matched = |m: &crate::support::mqtt::Message| {
        let r = m.json();
        r["id"] == id.as_str() || (r.get("id").is_none() && r["cmd"] == cmd)
    };
    w.wait_after(mark, &format!("{topic}/result"), SOON, cmd, matched)
        .await
        .json()
}

async fn ok(w: &Watcher, topic: &str, cmd: &str, payload: &str) {
    let r = command(w, topic, cmd, payload).await;
    assert_eq!(r["ok"], true, "{cmd} {payload}: {r}");
}

/// Waits until the latest state is one that `pred` accepts.
async fn state_where(w: &Watcher, topic: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let topic = format!("{topic}/state");
    let begin = Instant::now();
    loop {
        let latest = w.on(&topic).pop().map(|m| m.json());
        match latest {
            Some(s) if pred(&s) => return s,
            latest => assert!(
                begin.elapsed() < SOON * 3,
                "no state with {what}; the latest: {latest:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Frames in the venue WAV so far (16-bit stereo after a 44-byte header).
fn wav_frames(path: &Path) -> usize {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as usize;
    len.saturating_sub(44) / 4
}

/// The mean 100 ms level of `hz` between two frame marks of the recording, leaving
/// out the first 300 ms (a change takes effect within a period, but the marks are
/// taken around the command's round trip).
fn level(recording: &[f32], from: usize, to: usize, hz: f32) -> f32 {
    let from = from + 14_400;
    assert!(
        to > from + 4_800,
        "a stretch too short to measure: {from}..{to}"
    );
    let windows: Vec<f32> = recording[from..to.min(recording.len())]
        .chunks_exact(4_800)
        .map(|w| tone_level(w, hz))
        .collect();
    windows.iter().sum::<f32>() / windows.len() as f32
}

fn db(ratio: f32) -> f32 {
    20.0 * ratio.max(1e-9).log10()
}

/// Retained `online` and state reach a subscriber that connects late (over TLS, with
/// the test CA); SIGKILL makes the broker send the last will, `offline`; a clean stop
/// sends `offline` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_gets_the_retained_status_and_the_will_tells_a_crash() {
    let _serial = SERIAL.lock().await;
    let scratch = scratch_dir("mqtt").join("will");
    let broker = Broker::start(&scratch.join("broker"));
    let dir = box_dir("mqtt_will");
    let env = [
        (
            "DUETBOX_MQTT__URL",
            format!("mqtts://127.0.0.1:{}", broker.tls_port),
        ),
        (
            "DUETBOX_MQTT__CA_FILE",
            broker.ca_file().display().to_string(),
        ),
        ("DUETBOX_BOX__NAME", "Stage left".to_string()),
    ];
    let (the_box, _base, topic) = start_box(&dir, &env).await;
    // Late: the box has published long before this subscriber exists.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = Watcher::connect(broker.anonymous_port, "late", &[BOX_TOPICS]).await;
    let status = w
        .wait_after(0, &format!("{topic}/status"), SOON, "status", |m| m.retain)
        .await;
    assert_eq!(status.text, "online");
    let s = w
        .wait_after(
            0,
            &format!("{topic}/state"),
            SOON,
            "a retained state",
            |m| m.retain,
        )
        .await
        .json();
    assert_eq!(s["box"]["name"], "Stage left");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["output"]["device"], "null");
    assert_eq!(s["output"]["running"], true);
    assert_eq!(s["slots"].as_array().map(Vec::len), Some(2));
    assert_eq!(s["pin_set"], false);

    let mark = w.mark();
    let killed = Instant::now();
    drop(the_box); // SIGKILL
    let will = w
        .wait_after(
            mark,
            &format!("{topic}/status"),
            SOON,
            "the last will",
            |_| true,
        )
        .await;
    assert_eq!(will.text, "offline");
    eprintln!("last will after SIGKILL: {:?}", will.at - killed);

    // The same box again (same state dir, so the same id and topics), stopped cleanly.
    let mark = w.mark();
    let (mut the_box, _base, again) = start_box(&dir, &env).await;
    assert_eq!(again, topic, "the id is kept");
    w.wait_after(
        mark,
        &format!("{topic}/status"),
        SOON,
        "online again",
        |m| m.text == "online",
    )
    .await;
    let mark = w.mark();
    the_box.terminate();
    let exit = the_box.wait_exit(Duration::from_secs(10));
    assert!(
        exit.success(),
        "a clean stop: {exit:?}\n{}",
        the_box.log_text()
    );
    let offline = w
        .wait_after(mark, &format!("{topic}/status"), SOON, "offline", |_| true)
        .await;
    assert_eq!(offline.text, "offline");
    let log = the_box.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}

/// Every command changes the real mixer: seen in the state and, for volume and mute,
/// in the venue recording of two singing phones. Bad payloads are answered with errors
/// and change nothing. MQTT 5 requests get their answer on their response topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_commands_drive_the_mixer_and_bad_ones_change_nothing() {
    let _serial = SERIAL.lock().await;
    let scratch = scratch_dir("mqtt").join("commands");
    let broker = Broker::start(&scratch.join("broker"));
    let dir = box_dir("mqtt_commands");
    let wav = dir.join("venue.wav");
    let env = [
        (
            "DUETBOX_MQTT__URL",
            format!("mqtt://127.0.0.1:{}", broker.password_port),
        ),
        ("DUETBOX_MQTT__USERNAME", USER.to_string()),
        ("DUETBOX_MQTT__PASSWORD", PASSWORD.to_string()),
        ("DUETBOX_AUDIO__OUTPUT", format!("wav:{}", wav.display())),
        ("DUETBOX_MQTT__METERS_HZ", "5".to_string()),
    ];
    let (the_box, base, topic) = start_box(&dir, &env).await;
    let w = Watcher::connect(broker.anonymous_port, "panel", &[BOX_TOPICS, "reply/#"]).await;
    let watching = Instant::now();
    let ana = singer(&base, "ana", None, voice(ANA_HZ)).await;
    let bo = singer(&base, "bo", None, voice(BO_HZ)).await;
    state_where(&w, &topic, "both singers live", |s| {
        s["slots"][0]["connected"] == true && s["slots"][1]["connected"] == true
    })
    .await;
    assert_eq!(state(&w, &topic)["slots"][0]["name"], "ana");
    wait_more(&ana, 1.0, "a second of the duet").await;

    // Each step: the command, then 1.5 s of the venue recording to measure.
    let mut marks = vec![wav_frames(&wav)];
    let step = |marks: &mut Vec<usize>| marks.push(wav_frames(&wav));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    step(&mut marks); // 0: both at 0 dB
    ok(&w, &topic, "mute", r#"{"slot": "A"}"#).await;
    step(&mut marks);
    state_where(&w, &topic, "A muted", |s| s["slots"][0]["muted"] == true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    step(&mut marks); // 1: A muted
    ok(&w, &topic, "unmute", r#"{"slot": "A"}"#).await;
    ok(&w, &topic, "slot", r#"{"slot": "B", "gain_db": -20}"#).await;
    step(&mut marks);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    step(&mut marks); // 2: B at -20 dB
    ok(&w, &topic, "slot", r#"{"slot": "B", "gain_db": 0}"#).await;
    ok(&w, &topic, "master", r#"{"gain_db": -12}"#).await;
    step(&mut marks);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    step(&mut marks); // 3: master at -12 dB
    ok(&w, &topic, "master", r#"{"gain_db": 0}"#).await;

    let s = state_where(&w, &topic, "the volumes back", |s| {
        s["master_gain_db"] == 0.0
    })
    .await;
    assert_eq!(s["slots"][1]["gain_db"], 0.0);

    // The rest, seen on the state topic.
    ok(&w, &topic, "backing", r#"{"gain_db": -10, "muted": true}"#).await;
    ok(
        &w,
        &topic,
        "slot",
        r#"{"slot": "A", "monitor": 0.5, "reverb": 0.25, "pan": -0.5}"#,
    )
    .await;
    ok(&w, &topic, "singer_limit", r#"{"limit": 1}"#).await;
    ok(&w, &topic, "pin", r#"{"pin": "2580"}"#).await;
    let s = state_where(&w, &topic, "every setting", |s| s["pin_set"] == true).await;
    assert_eq!(
        (s["backing_gain_db"].clone(), s["backing_muted"].clone()),
        (Value::from(-10.0), Value::from(true))
    );
    assert_eq!(s["slots"][0]["monitor"], 0.5);
    assert_eq!(s["slots"][0]["reverb"], 0.25);
    assert_eq!(s["slots"][0]["pan"], -0.5);
    assert_eq!(s["singer_limit"], 1);
    assert_eq!(s["slots"][1]["open"], false);
    assert!(
        !w.seen()
            .iter()
            .any(|m| !m.topic.contains("/cmd/") && m.text.contains("2580")),
        "the box never publishes the PIN"
    );
    let stranger = WhipClient::connect(&base, Role::Listener, "cleo", None, None).await;
    assert!(
        stranger.is_err(),
        "the PIN set over MQTT applies to new joins"
    );
    ok(&w, &topic, "clear_pin", "").await;
    ok(&w, &topic, "singer_limit", r#"{"limit": 2}"#).await;

    // MQTT 5: the answer also goes to the response topic, with the correlation data;
    // a response topic inside the box's own tree is not written to.
    let mark = w.mark();
    w.request(
        &format!("{topic}/cmd/master"),
        r#"{"gain_db": -1}"#,
        "reply/panel",
        b"req-42",
    )
    .await;
    let reply = w
        .wait_after(mark, "reply/panel", SOON, "the MQTT 5 response", |_| true)
        .await;
    assert_eq!(reply.json()["ok"], true);
    assert_eq!(reply.correlation.as_deref(), Some(&b"req-42"[..]));
    w.request(
        &format!("{topic}/cmd/master"),
        r#"{"gain_db": 0}"#,
        &format!("{topic}/status"),
        b"x",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        w.on(&format!("{topic}/status"))
            .iter()
            .all(|m| m.text == "online"),
        "the box wrote a result over its own status"
    );

    // Bad payloads: each answered with an error, and nothing changes.
    let before = state_where(&w, &topic, "settled", |s| {
        s["master_gain_db"] == 0.0 && s["pin_set"] == false
    })
    .await;
    let bad = [
        ("master", "not json", "bad_json"),
        ("master", "[1, 2]", "bad_json"),
        ("master", r#"{"gain_db": 40}"#, "out_of_range"),
        ("master", r#"{"gain_db": "loud"}"#, "bad_field"),
        ("master", r#"{"gain": -6}"#, "bad_field"),
        ("slot", r#"{"slot": "Q", "muted": true}"#, "unknown_slot"),
        ("slot", r#"{"slot": "A", "pan": 3}"#, "out_of_range"),
        (
            "slot",
            r#"{"slot": "A", "monitor": -1, "gain_db": -3}"#,
            "out_of_range",
        ),
        ("mute", "{}", "bad_field"),
        ("kick", r#"{"peer": "p999"}"#, "unknown_peer"),
        ("singer_limit", r#"{"limit": 9}"#, "out_of_range"),
        ("singer_limit", r#"{"limit": 0}"#, "out_of_range"),
        ("pin", r#"{"pin": ""}"#, "out_of_range"),
        ("mode", r#"{"entry": 99, "mode": "in_ear"}"#, "refused"),
        ("mode", r#"{"entry": 1, "mode": "loud"}"#, "bad_field"),
        ("reboot", "{}", "unknown_command"),
    ];
    for (cmd, payload, code) in bad {
        let r = command(&w, &topic, cmd, payload).await;
        assert_eq!(r["ok"], false, "{cmd} {payload}: {r}");
        assert_eq!(r["error"], code, "{cmd} {payload}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    }
    let big = format!(r#"{{"gain_db": 0, "pad": "{}"}}"#, "x".repeat(5000));
    let r = command(&w, &topic, "master", &big).await;
    assert_eq!(r["error"], "too_large", "{r}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = state(&w, &topic);
    let structure = |s: &Value| duetbox::mqtt::report::structure_of(s);
    assert_eq!(
        structure(&after),
        structure(&before),
        "a refused command changed the state"
    );

    // A panel that floods: beyond the burst, commands are refused `rate_limited`, the
    // box goes on answering, and a command goes through again once the rate allows.
    let mark = w.mark();
    for _ in 0..120 {
        w.publish(&format!("{topic}/cmd/master"), r#"{"gain_db": 0}"#)
            .await;
    }
    let results = format!("{topic}/result");
    let begin = Instant::now();
    while w.seen()[mark..]
        .iter()
        .filter(|m| m.topic == results)
        .count()
        < 120
    {
        assert!(
            begin.elapsed() < SOON * 3,
            "not every flooded command was answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limited = w.seen()[mark..]
        .iter()
        .filter(|m| m.topic == results && m.json()["error"] == "rate_limited")
        .count();
    eprintln!("120 commands at once: {limited} rate_limited");
    assert!(
        (1..=80).contains(&limited),
        "{limited} of 120 refused (burst 40)"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Remove a singer from the panel.
    ok(&w, &topic, "kick", r#"{"slot": "B"}"#).await;
    state_where(&w, &topic, "slot B empty", |s| {
        s["slots"][1]["peer"].is_null()
    })
    .await;
    assert_eq!(
        command(&w, &topic, "kick", r#"{"slot": "B"}"#).await["error"],
        "empty_slot"
    );

    // Meters: 5 a second as configured, never retained, a level for a live voice.
    let meters = w.on(&format!("{topic}/meters"));
    let rate = meters.len() as f64 / watching.elapsed().as_secs_f64();
    eprintln!(
        "{} meters in {:?}: {rate:.2}/s",
        meters.len(),
        watching.elapsed()
    );
    assert!(
        (3.0..=5.5).contains(&rate),
        "meters at {rate:.2}/s, configured 5"
    );
    assert!(meters.iter().all(|m| !m.retain), "meters are not retained");
    assert!(
        meters.iter().any(|m| m.json()["slots"][0]["level_db"]
            .as_f64()
            .is_some_and(|l| l > -40.0)),
        "a singing voice shows on the meters"
    );

    // The recording: mute and volumes acted on the venue output.
    let rec = read_wav_left(&wav);
    // Marks: [start, end0, cmd1, end1, cmd2, end2, cmd3, end3].
    let stretch = |k: usize, hz: f32| match k {
        0 => level(&rec, marks[0], marks[1], hz),
        k => level(&rec, marks[2 * k], marks[2 * k + 1], hz),
    };
    let (a0, b0) = (stretch(0, ANA_HZ), stretch(0, BO_HZ));
    let (a1, b1) = (stretch(1, ANA_HZ), stretch(1, BO_HZ));
    let (a2, b2) = (stretch(2, ANA_HZ), stretch(2, BO_HZ));
    let (a3, b3) = (stretch(3, ANA_HZ), stretch(3, BO_HZ));
    eprintln!(
        "venue levels: both {a0:.4}/{b0:.4}; A muted {a1:.4}/{b1:.4}; \
         B -20 dB {a2:.4}/{b2:.4}; master -12 dB {a3:.4}/{b3:.4}"
    );
    assert!(
        a0 > 0.05 && b0 > 0.05,
        "both voices in the venue: {a0} {b0}"
    );
    assert!(db(a1 / a0) < -40.0, "mute A: {:.1} dB", db(a1 / a0));
    assert!(
        db(b1 / b0).abs() < 1.5,
        "B untouched by A's mute: {:.1} dB",
        db(b1 / b0)
    );
    assert!(
        (db(b2 / b0) + 20.0).abs() < 2.0,
        "B at -20 dB: {:.1} dB",
        db(b2 / b0)
    );
    assert!(db(a2 / a0).abs() < 1.5, "A back: {:.1} dB", db(a2 / a0));
    assert!(
        (db(a3 / a0) + 12.0).abs() < 2.0,
        "master -12 dB on A: {:.1} dB",
        db(a3 / a0)
    );
    assert!(
        (db(b3 / b0) + 12.0).abs() < 2.0,
        "master -12 dB on B: {:.1} dB",
        db(b3 / b0)
    );
    drop(bo);
    drop(ana);
    drop(the_box);
}

/// The broker goes away for 3 s and comes back empty while two phones sing: the box
/// reconnects and publishes its retained topics again within 5 s of the broker's
/// return, and the venue output never stops (no xrun, both voices in every 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_box_rides_out_a_broker_restart_while_two_phones_sing() {
    let _serial = SERIAL.lock().await;
    let scratch = scratch_dir("mqtt").join("restart");
    let mut broker = Broker::start(&scratch.join("broker"));
    let dir = box_dir("mqtt_restart");
    let wav = dir.join("venue.wav");
    let env = [
        (
            "DUETBOX_MQTT__URL",
            format!("mqtt://127.0.0.1:{}", broker.anonymous_port),
        ),
        ("DUETBOX_AUDIO__OUTPUT", format!("wav:{}", wav.display())),
    ];
    let (the_box, base, topic) = start_box(&dir, &env).await;
    let w = Watcher::connect(
        broker.anonymous_port,
        "panel",
        &[BOX_TOPICS, "homeassistant/#"],
    )
    .await;
    let ana = singer(&base, "ana", None, voice(ANA_HZ)).await;
    let bo = singer(&base, "bo", None, voice(BO_HZ)).await;
    state_where(&w, &topic, "both singers live", |s| {
        s["slots"][0]["connected"] == true && s["slots"][1]["connected"] == true
    })
    .await;
    wait_more(&ana, 1.0, "a second of the duet").await;
    let xruns_before = health(&base).await.expect("/health")["xruns"].clone();
    let from = wav_frames(&wav);

    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mark = w.mark();
    broker.restart();
    let back = Instant::now();
    let status = w
        .wait_after(
            mark,
            &format!("{topic}/status"),
            Duration::from_secs(10),
            "online",
            |m| m.text == "online",
        )
        .await;
    let state = w
        .wait_after(
            mark,
            &format!("{topic}/state"),
            Duration::from_secs(10),
            "the state",
            |_| true,
        )
        .await;
    let discovery = w
        .wait_after(
            mark,
            &format!(
                "homeassistant/number/duetbox_{}/master/config",
                topic.trim_start_matches("duetbox/")
            ),
            Duration::from_secs(10),
            "discovery",
            |_| true,
        )
        .await;
    assert_eq!(
        discovery.json()["unique_id"],
        format!("{}_master", topic.replace('/', "_"))
    );
    let republished = status.at.max(state.at) - back;
    eprintln!(
        "after the broker's return: online in {:?}, state in {:?}",
        status.at - back,
        state.at - back
    );
    assert!(
        republished < Duration::from_secs(5),
        "republished {republished:?} after the broker's return"
    );
    // The watcher itself reconnects; what it reads after a restart of an empty broker
    // was sent again by the box.
    let late = Watcher::connect(broker.anonymous_port, "late", &[BOX_TOPICS]).await;
    late.wait_after(
        0,
        &format!("{topic}/status"),
        SOON,
        "retained online",
        |m| m.retain && m.text == "online",
    )
    .await;

    wait_more(&ana, 1.0, "a second after the return").await;
    let to = wav_frames(&wav);
    let xruns_after = health(&base).await.expect("/health")["xruns"].clone();
    assert_eq!(
        xruns_after, xruns_before,
        "the output underran during the outage"
    );
    let rec = read_wav_left(&wav);
    crate::support::assert_two_voices(
        "venue, across the broker's outage",
        &rec[from..to.min(rec.len())],
        [ANA_HZ, BO_HZ],
        0.02..=1.0,
        0.02,
    );
    drop((ana, bo, the_box));
}

/// A wrong password: the broker refuses every attempt, the box says so once, and
/// phones join and sing as if there were no panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_logged_once_and_the_box_serves_phones() {
    let _serial = SERIAL.lock().await;
    let scratch = scratch_dir("mqtt").join("password");
    let broker = Broker::start(&scratch.join("broker"));
    let dir = box_dir("mqtt_password");
    let env = [
        (
            "DUETBOX_MQTT__URL",
            format!("mqtt://127.0.0.1:{}", broker.password_port),
        ),
        ("DUETBOX_MQTT__USERNAME", USER.to_string()),
        ("DUETBOX_MQTT__PASSWORD", "wrong horse".to_string()),
    ];
    let (the_box, base, _topic) = start_box(&dir, &env).await;
    let ana = singer(&base, "ana", None, voice(ANA_HZ)).await;
    let bo = singer(&base, "bo", None, voice(BO_HZ)).await;
    wait_more(&ana, 6.0, "six seconds of singing").await;
    crate::whip::assert_hears(&ana, "ana", BO_HZ, Some(ANA_HZ), 1.0);
    let h = health(&base).await.expect("/health");
    assert_eq!(h["singers"], 2, "{h}");
    let attempts = broker
        .log_text()
        .lines()
        .filter(|l| l.contains("not authorised") || l.contains("bad user name or password"))
        .count();
    let log = the_box.log_text();
    let said = log
        .lines()
        .filter(|l| l.contains("refused the box"))
        .count();
    assert!(
        attempts >= 3,
        "the box should have retried (broker saw {attempts} refusals):\n{}",
        broker.log_text()
    );
    assert_eq!(said, 1, "one clear line for {attempts} refusals:\n{log}");
    eprintln!(
        "{attempts} refusals, logged as: {}",
        log.lines()
            .find(|l| l.contains("refused the box"))
            .unwrap_or("")
    );
    assert!(
        log.contains("mqtt.password"),
        "the line says what to check:\n{log}"
    );
    drop((ana, bo, the_box));
}
