//! Bad input on the signaling channel ends at its sender. A singer sings (a WHIP client
//! at 440 Hz) while another connection sends malformed JSON, unknown types, fields out
//! of range, offers without audio or Opus, a second offer, binary and oversize frames
//! and a wrong protocol version: each gets the documented error (and the fatal ones a
//! close with a reason), and the venue recording shows the singer never dropped out.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use duetbox::config::Config;
use duetbox::engine::testkit::{tone_level, Signal};
use serde_json::json;

use crate::support::loopback_box_config;
use crate::support::read_wav_left;
use crate::support::whip_client::{signal_source, Role, WhipClient};
use crate::support::wss::{Phone, Received};

/// A browser-shaped offer (Chrome's layout, one sendrecv Opus m-line). The box can
/// answer it; no ICE ever completes, which these tests do not need.
const OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:dTbk\r\n\
a=ice-pwd:3ROgbzHu0y2ZM/TSfDr9Bugm\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 9D:9C:2C:7F:6B:0F:76:62:43:38:86:6F:2E:6F:3B:E6:67:7B:AB:4F:D5:65:3D:0A:38:F1:E7:53:F7:4E:76:2C\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n";

fn box_config(dir: &Path) -> Config {
    let mut config = loopback_box_config(&dir.join("state"));
    config.limits.candidates_per_connection = 4;
    config.audio.output = format!("wav:{}", dir.join("venue.wav").display());
    config.validate().expect("valid test config");
    config
}

async fn error_code(phone: &mut Phone) -> String {
    let v = phone.expect("error").await;
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "errors carry a message: {v}"
    );
    v["code"].as_str().expect("code").to_string()
}

/// Sends five envelope requests, then a message of an unknown type as a fence: each
/// request is answered by `refusal` (an error code) or not at all, never by an
/// envelope, and the fence's `unknown_type` comes back after them.
async fn envelopes_without_media(p: &mut Phone, refusal: Option<&str>) {
    for _ in 0..5 {
        p.send(json!({"type": "envelope"})).await;
    }
    p.send(json!({"type": "fence"})).await;
    let mut refused = 0;
    loop {
        match p.next().await {
            Received::Json(v) if v["code"] == "unknown_type" => break,
            Received::Json(v) if v["type"] == "error" && refusal == v["code"].as_str() => {
                refused += 1
            }
            Received::Json(v) => assert!(
                v["type"] != "envelope" && v["type"] != "error",
                "an envelope request without media: {v}"
            ),
            Received::Closed(code) => panic!("closed ({code:?}) after envelope requests"),
        }
    }
    assert_eq!(refused, if refusal.is_some() { 5 } else { 0 });
}

async fn abuse(addr: SocketAddr) {
    let mut p = Phone::connect(addr).await;
    p.send_text("{nope").await;
    assert_eq!(error_code(&mut p).await, "bad_json");
    p.send_text("[1,2,3]").await;
    assert_eq!(error_code(&mut p).await, "bad_json");
    p.send(json!({"type": "dance"})).await;
    assert_eq!(error_code(&mut p).await, "unknown_type");
    p.send(json!({"type": "offer", "sdp": OFFER})).await;
    assert_eq!(error_code(&mut p).await, "not_joined");
    // A calibration (docs/sync.md) is a participant's: before joining it has no one.
    p.send(json!({"type": "calibration", "round_trip_ms": 45, "output_ms": 0}))
        .await;
    assert_eq!(error_code(&mut p).await, "not_joined");
    // Envelope requests (docs/sync.md) before joining: refused; the session goes on.
    envelopes_without_media(&mut p, Some("not_joined")).await;
    p.send(json!({"type": "join", "v": 1, "name": "", "role": "singer"}))
        .await;
    assert_eq!(error_code(&mut p).await, "bad_field");
    p.send(json!({"type": "join", "v": 1, "name": "Mallory", "role": "drummer"}))
        .await;
    assert_eq!(error_code(&mut p).await, "bad_field");
    p.send(json!({"type": "join", "v": 1, "name": "Mallory", "role": "singer"}))
        .await;
    let welcome = p.expect("welcome").await;
    assert_eq!(welcome["role"], "singer");
    p.send(json!({"type": "join", "v": 1, "name": "Mallory", "role": "singer"}))
        .await;
    assert_eq!(error_code(&mut p).await, "already_joined");
    p.send(json!({"type": "mix", "monitor": 7})).await;
    assert_eq!(error_code(&mut p).await, "bad_field");
    // A round trip beyond any phone's, or an output longer than the round trip: refused.
    p.send(json!({"type": "calibration", "round_trip_ms": 1e9, "output_ms": 0}))
        .await;
    assert_eq!(error_code(&mut p).await, "bad_field");
    p.send(json!({"type": "calibration", "round_trip_ms": 45, "output_ms": 46}))
        .await;
    assert_eq!(error_code(&mut p).await, "bad_field");
    // Joined, still without media: nothing to describe, no answer.
    envelopes_without_media(&mut p, None).await;
    // A real one is kept: the room lists it with this phone.
    p.send(json!({"type": "calibration", "round_trip_ms": 45.5, "output_ms": 12}))
        .await;
    let kept = loop {
        let room = p.expect("room").await;
        let me = room["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|q| q["peer"] == welcome["peer"]))
            .map(|q| q["round_trip_ms"].clone());
        if me.as_ref().is_some_and(|v| !v.is_null()) {
            break me.expect("listed");
        }
    };
    assert_eq!(kept, 45.5, "the box keeps the round trip it was told");
    let video = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
    p.send(json!({"type": "offer", "sdp": video})).await;
    assert_eq!(error_code(&mut p).await, "bad_sdp");
    let pcmu = OFFER.replace("opus/48000/2", "PCMU/8000");
    p.send(json!({"type": "offer", "sdp": pcmu})).await;
    assert_eq!(error_code(&mut p).await, "bad_sdp");
    p.send(json!({"type": "offer", "sdp": "v=0\r\nm=audio 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"})).await;
    assert_eq!(
        error_code(&mut p).await,
        "bad_sdp",
        "an unparsable offer is refused by the stack, not a crash"
    );
    let many = format!("{OFFER}{}", "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(4));
    p.send(json!({"type": "offer", "sdp": many})).await;
    let v = p.expect("error").await;
    assert_eq!(v["code"], "bad_sdp", "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("media sections")),
        "{v}"
    );
    p.send(json!({"type": "offer", "sdp": OFFER})).await;
    let answer = p.expect("answer").await;
    assert!(
        answer["sdp"]
            .as_str()
            .is_some_and(|s| s.contains("a=fmtp:111")),
        "{answer}"
    );
    p.send(json!({"type": "offer", "sdp": OFFER})).await;
    assert_eq!(error_code(&mut p).await, "already_offered");
    p.send(json!({"type": "candidate", "candidate": {"candidate": "garbage"}}))
        .await;
    assert_eq!(error_code(&mut p).await, "bad_field");
    // The candidate cap (4 in this box): the fifth of a connection is refused.
    for port in 9..12 {
        let c = format!("candidate:{port} 1 udp 2122260223 127.0.0.1 {port} typ host");
        p.send(json!({"type": "candidate", "candidate": {"candidate": c, "sdpMid": "0"}}))
            .await;
    }
    p.send(json!({"type": "candidate", "candidate": {"candidate": "candidate:13 1 udp 1 127.0.0.1 13 typ host", "sdpMid": "0"}}))
        .await;
    let v = p.expect("error").await;
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 4 candidates")),
        "{v}"
    );
    assert!(p.send_binary(vec![1, 2, 3]).await);
    assert_eq!(error_code(&mut p).await, "bad_json");
    // Still a working session after all that.
    p.send(json!({"type": "ping", "t": 42.5})).await;
    let pong = p.expect("pong").await;
    assert_eq!(pong["t"], 42.5);
    // Playout reports (docs/sync.md) are on the box's clock, which pong tells: one a
    // minute away from it, or with a delay out of range, is refused.
    let now = pong["now"].as_f64().expect("pong carries the box's clock");
    p.send(json!({"type": "playout", "rtp": 1, "at": now + 60_000.0, "extra": 0}))
        .await;
    let v = p.expect("error").await;
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("not near the box's time")),
        "{v}"
    );
    p.send(json!({"type": "playout", "rtp": 1, "at": now, "extra": 5000}))
        .await;
    assert_eq!(error_code(&mut p).await, "bad_field");
    p.send(json!({"type": "leave"})).await;
    assert_eq!(p.expect("bye").await["reason"], "left");

    // Oversize frame: error, then close 1009.
    let mut big = Phone::connect(addr).await;
    big.send_text(&format!(
        "{{\"type\":\"ping\",\"t\":1,\"pad\":\"{}\"}}",
        "x".repeat(70_000)
    ))
    .await;
    match big.next().await {
        Received::Json(v) => {
            assert_eq!(v["code"], "too_large", "{v}");
            assert_eq!(big.expect_close().await, Some(1009));
        }
        Received::Closed(code) => assert_eq!(code, Some(1009)),
    }

    // Faster than the message rate: the burst is answered, then `rate_limited` and a
    // close with a reason.
    let mut chatty = Phone::connect(addr).await;
    chatty
        .send(json!({"type": "join", "v": 1, "name": "Chatty", "role": "listener"}))
        .await;
    for k in 0..60 {
        chatty.send(json!({"type": "ping", "t": k})).await;
    }
    let mut pongs = 0;
    let code = loop {
        match chatty.next().await {
            Received::Json(v) if v["type"] == "pong" => pongs += 1,
            Received::Json(v) if v["type"] == "error" => break v["code"].clone(),
            Received::Json(_) => {} // welcome, room
            Received::Closed(code) => panic!("closed ({code:?}) without an error"),
        }
    };
    assert_eq!(code, "rate_limited");
    assert!(
        (30..=45).contains(&pongs),
        "the burst was answered: {pongs} pongs"
    );
    assert_eq!(chatty.expect_close().await, Some(1008));

    // Unsupported version: fatal, closed with a reason.
    let mut old = Phone::connect(addr).await;
    old.send(json!({"type": "join", "v": 2, "name": "Future", "role": "listener"}))
        .await;
    assert_eq!(error_code(&mut old).await, "version");
    assert_eq!(old.expect_close().await, Some(1008));
}

#[test]
fn bad_signaling_gets_a_clear_error_and_the_singer_keeps_singing() {
    let _serial = crate::support::SERIAL.blocking_lock();
    let dir = std::env::temp_dir().join(format!("duetbox-it-signaling-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let running = runtime
        .block_on(duetbox::app::start(box_config(&dir)))
        .expect("box starts");
    let addr = running.https_addr;
    let base = format!("https://127.0.0.1:{}", addr.port());
    let singer = runtime
        .block_on(WhipClient::connect(
            &base,
            Role::Singer,
            "Ana",
            None,
            Some(signal_source(Signal::tone(440.0))),
        ))
        .expect("the WHIP singer joins");
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        abuse(addr).await;
        // Anything the abuse disturbed would show during it or right after it.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    runtime.block_on(singer.close());
    runtime
        .block_on(running.stop())
        .expect("the box stops cleanly");

    // The venue from 0.8 s after the singer was first heard (her stream has settled; the
    // abuse starts 1 s after she connected) to her last window: the tone never drops out.
    let venue = read_wav_left(&dir.join("venue.wav"));
    let levels: Vec<f32> = venue
        .chunks_exact(4_800)
        .map(|w| tone_level(w, 440.0))
        .collect();
    let heard = levels
        .iter()
        .position(|&l| l > 0.2)
        .expect("the singer is heard in the venue");
    let last = levels.iter().rposition(|&l| l > 0.2).expect("heard");
    let (from, to) = (heard + 8, last.saturating_sub(1));
    assert!(
        to >= from + 5,
        "the singer was heard in windows {heard}..={last} only: {levels:?}"
    );
    let gaps: Vec<usize> = (from..=to).filter(|&k| levels[k] < 0.2).collect();
    assert!(
        gaps.is_empty(),
        "the singer dropped out in windows {gaps:?} of {from}..={to}: {levels:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_http_redirects_to_the_https_page() {
    let dir = std::env::temp_dir().join(format!("duetbox-it-redirect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut config = box_config(&dir);
    config.audio.output = "null".into();
    // A free port for the redirect (the OS picks one; released right before the box binds it).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("probe port")
        .local_addr()
        .expect("addr")
        .port();
    config.http.http_port = free;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let running = runtime
        .block_on(duetbox::app::start(config))
        .expect("box starts");
    let https_port = running.https_addr.port();
    let http = running.http_addr.expect("redirect listens");
    let response = runtime.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
        tcp.write_all(
            b"GET /join?x=1 HTTP/1.1\r\nHost: duetbox.local:8080\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut text))
            .await
            .expect("timed out waiting for the redirect")
            .expect("read");
        text
    });
    runtime.block_on(running.stop()).expect("stops");
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    let location = format!("location: https://duetbox.local:{https_port}/join?x=1");
    assert!(
        response.to_ascii_lowercase().contains(&location),
        "{response}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket that says nothing is closed once `room.idle_timeout_ms` has passed since
/// its last frame, also while room updates keep its session busy (a singer's levels
/// change the room ten times a second). The deadline used to be re-armed by every
/// event of the session, so a joined phone that went silent was never closed. (The
/// join deadline would end this listener's place, which never got media, at 10 s; the
/// idle timeout here is 6 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_closed_after_the_idle_timeout() {
    let _serial = crate::support::SERIAL.lock().await;
    let mut config = loopback_box_config(&crate::support::box_dir("signaling_idle"));
    config.room.idle_timeout_ms = 6_000;
    let (running, base) = crate::support::start_box(config).await;
    let singer = WhipClient::connect(
        &base,
        Role::Singer,
        "Ana",
        None,
        Some(signal_source(Signal::tone(440.0))),
    )
    .await
    .expect("the WHIP singer joins");
    let mut never_joined = Phone::connect(running.https_addr).await;
    let mut silent = Phone::connect(running.https_addr).await;
    silent
        .send(json!({"type": "join", "v": 1, "name": "Sam", "role": "listener"}))
        .await;
    silent.expect("welcome").await;
    // From here on neither sends a frame.
    let start = std::time::Instant::now();
    let deadline = Duration::from_secs(20);
    let mut updates = 0;
    let reason = loop {
        assert!(
            start.elapsed() < deadline,
            "the silent phone was still open after {deadline:?} ({updates} room updates)"
        );
        match silent.next().await {
            Received::Json(v) if v["type"] == "room" => updates += 1,
            Received::Json(v) if v["type"] == "bye" => break v["reason"].clone(),
            Received::Json(_) => {}
            Received::Closed(code) => panic!("closed ({code:?}) without a bye"),
        }
    };
    assert_eq!(reason, "timeout");
    assert!(
        updates > 10,
        "room updates kept the session busy: {updates}"
    );
    assert_eq!(silent.expect_close().await, Some(1000));
    let bye = loop {
        match never_joined.next().await {
            Received::Json(v) if v["type"] == "bye" => break v,
            Received::Json(_) => {}
            Received::Closed(code) => panic!("closed ({code:?}) without a bye"),
        }
    };
    assert_eq!(bye["reason"], "timeout");
    // It never had media, so no place is kept for it. The room hears of the closed
    // socket through the control task's queue: give it a moment (this raced once in CI).
    let gone = std::time::Instant::now();
    while running.control.counts() != (1, 0) && gone.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        running.control.counts(),
        (1, 0),
        "the silent listener is gone"
    );
    singer.close().await;
    running.stop().await.expect("the box stops cleanly");
}
