//! Strangers on the venue Wi-Fi, against a real `duetbox serve` process on 127.0.0.1:
//! each attack a guest's script could make is made, and refused, while the phones that
//! belong there keep singing. Another client is played from 127.0.0.2 (the whole
//! 127/8 is loopback), so that per-address limits see two addresses.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::whip_client::{connect_from, https_request_from, Options, Role, WhipClient};
use crate::support::wss::{Phone, Received};
use crate::support::{box_dir, health, read_wav_left, BoxProcess, SERIAL};
use crate::whip::{assert_hears, singer, tone, wait_more};

/// The stranger's address.
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The venue's PIN in these tests.
const PIN: &str = "4711";

/// A well-formed audio offer, enough for the box to check a PIN on.
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n";

/// A box process and its base URL, answering /health.
async fn start(test: &str, env: &[(&str, String)]) -> (BoxProcess, String) {
    BoxProcess::start_healthy(&box_dir(test), env).await
}

/// The box's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .expect("the box's VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_end_another_participants_session() {
    let _serial = SERIAL.lock().await;
    let (the_box, base) = start("strangers_delete", &[]).await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let ben = singer(&base, "ben", None, tone(660.0)).await;
    // Everyone can see ana's peer id in the room.
    let mut watcher = Phone::connect(
        format!("127.0.0.1:{}", the_box.https_port)
            .parse()
            .expect("addr"),
    )
    .await;
    watcher
        .send(json!({"type": "join", "v": 1, "name": "Eve", "role": "listener"}))
        .await;
    let room = watcher.expect("room").await;
    let ana_id = room["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "ana"))
        .and_then(|p| p["peer"].as_str())
        .unwrap_or_else(|| panic!("ana in the room: {room}"))
        .to_string();
    // What a stranger might try: the visible id, a guessed token, ben's own URL's shape.
    for path in [
        format!("/whip/{ana_id}"),
        format!("/whep/{ana_id}"),
        "/whip/00000000000000000000000000000000".to_string(),
        format!("/whip/{}", "f".repeat(32)),
    ] {
        let r = https_request_from(Some(STRANGER), &base, "DELETE", &path, &[], b"")
            .await
            .expect("the box answers");
        assert_eq!(r.status, 404, "DELETE {path}: {r:?}");
    }
    // Ana was not touched: ben still hears her, and she still hears him.
    wait_more(&ben, 1.0, "ben's mix after the attempts").await;
    wait_more(&ana, 0.2, "ana's mix after the attempts").await;
    assert_hears(&ben, "ben", 440.0, Some(660.0), 0.5);
    assert_hears(&ana, "ana", 660.0, Some(440.0), 0.5);
    // Her own URL still ends her session.
    assert_eq!(ana.delete().await.expect("DELETE"), 200);
    ana.close().await;
    ben.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_guesser_is_slowed_while_the_right_pin_joins_at_once() {
    let _serial = SERIAL.lock().await;
    let (the_box, base) = start("strangers_pin", &[("DUETBOX_ROOM__PIN", PIN.into())]).await;
    let post = |pin: &'static str| {
        let base = base.clone();
        async move {
            https_request_from(
                Some(STRANGER),
                &base,
                "POST",
                "/whep?name=guess",
                &[
                    ("Content-Type", "application/sdp".to_string()),
                    ("Authorization", format!("Bearer {pin}")),
                ],
                OFFER.as_bytes(),
            )
            .await
            .expect("the box answers")
        }
    };
    // Five wrong PINs are answered as usual.
    for _ in 0..5 {
        assert_eq!(post("0000").await.status, 401);
    }
    // Then the guesser may try at most once a second (then every 2 s, 4 s, …): for 3 s
    // it hammers the box, and only the attempts after a wait reach the PIN check.
    let begin = Instant::now();
    let (mut checked, mut slowed) = (0, 0);
    let mut retry_after = Vec::new();
    while begin.elapsed() < Duration::from_secs(3) {
        let r = post("0000").await;
        match r.status {
            401 => checked += 1,
            429 => {
                slowed += 1;
                let after = r
                    .header("retry-after")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"));
                if retry_after.last() != Some(&after) {
                    retry_after.push(after);
                }
            }
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    eprintln!(
        "in 3 s: {checked} attempts checked, {slowed} refused with 429; Retry-After seen: {retry_after:?}"
    );
    assert!(checked <= 2, "{checked} PIN checks in 3 s after 5 failures");
    assert!(slowed > 10, "the guesser kept trying: {slowed}");
    // A phone from another address with the right PIN joins at once.
    let mut phone = Phone::connect(
        format!("127.0.0.1:{}", the_box.https_port)
            .parse()
            .expect("addr"),
    )
    .await;
    phone
        .send(json!({"type": "join", "v": 1, "name": "Ana", "role": "listener", "pin": PIN}))
        .await;
    let welcome = phone.expect("welcome").await;
    assert_eq!(welcome["role"], "listener");
    // And the guesser, even with the right PIN, waits its turn after a failure.
    while post("0000").await.status == 429 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post(PIN).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_never_offers_loses_its_seat_to_a_real_singer() {
    let _serial = SERIAL.lock().await;
    let (the_box, base) = start(
        "strangers_silent_join",
        &[("DUETBOX_ROOM__JOIN_DEADLINE_MS", "3000".into())],
    )
    .await;
    let addr = format!("127.0.0.1:{}", the_box.https_port)
        .parse()
        .expect("addr");
    // Two sockets take both seats and never send an offer (they keep the socket alive).
    let mut squatters = Vec::new();
    for name in ["Sq1", "Sq2"] {
        let mut p = Phone::connect_from(addr, STRANGER, None).await;
        p.send(json!({"type": "join", "v": 1, "name": name, "role": "singer"}))
            .await;
        p.expect("welcome").await;
        squatters.push(p);
    }
    let refused = WhipClient::connect(&base, Role::Singer, "ana", None, None).await;
    assert_eq!(
        refused.err().and_then(|e| e.status),
        Some(409),
        "both seats taken at first"
    );
    // At the deadline each squatter is told and loses its seat...
    for p in &mut squatters {
        p.send(json!({"type": "ping", "t": 1})).await;
        let bye = loop {
            match p.next().await {
                Received::Json(v) if v["type"] == "bye" => break v,
                Received::Json(_) => {}
                Received::Closed(code) => panic!("closed ({code:?}) without a bye"),
            }
        };
        assert_eq!(bye["reason"], "timeout");
    }
    // ...and a real singer gets it.
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    assert_eq!(ana.status(), 201);
    let h = health(&base).await.expect("/health");
    assert_eq!(h["singers"], 1, "{h}");
    ana.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_costs_bounded_memory() {
    let _serial = SERIAL.lock().await;
    // A small send buffer, so that the kernel's buffers fill in seconds (the default,
    // 64 KiB, takes half a minute at these few messages a second).
    let (the_box, base) = start(
        "strangers_no_read",
        &[("DUETBOX_LIMITS__SEND_BUFFER_BYTES", "4096".into())],
    )
    .await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let addr = format!("127.0.0.1:{}", the_box.https_port)
        .parse()
        .expect("addr");
    // A tiny receive buffer, then never a read: the box's messages (pongs to its pings,
    // room updates with ana's levels ten times a second) pile up.
    let mut lazy = Phone::connect_from(addr, STRANGER, Some(2048)).await;
    lazy.send(json!({"type": "join", "v": 1, "name": "Lazy", "role": "listener"}))
        .await;
    let before = rss_kib(the_box.pid());
    let begin = Instant::now();
    let deadline = Duration::from_secs(60);
    // Pings within the message rate (15 a second, under 20), each answered.
    let closed = loop {
        assert!(
            begin.elapsed() < deadline,
            "a client that never reads was still open after {deadline:?}"
        );
        for _ in 0..3 {
            if !lazy.try_send(json!({"type": "ping", "t": 1})).await {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if the_box
            .log_text()
            .contains("phone stopped reading its socket")
        {
            break begin.elapsed();
        }
    };
    let after = rss_kib(the_box.pid());
    eprintln!(
        "closed after {:.1} s; box RSS {before} KiB before, {after} KiB after",
        closed.as_secs_f64()
    );
    assert!(
        after.saturating_sub(before) < 4 * 1024,
        "the box grew by {} KiB for one client that never reads",
        after.saturating_sub(before)
    );
    // The others never noticed.
    wait_more(&ana, 0.5, "ana's mix").await;
    let h = health(&base).await.expect("/health");
    assert_eq!(h["listeners"], 0, "the lazy listener is gone: {h}");
    ana.close().await;
}

#[test]
fn a_flooding_singer_hurts_only_itself() {
    crate::support::stalls::once_more_if_the_machine_stalled_async(
        "a_flooding_singer_hurts_only_itself",
        a_flooding_singer_hurts_only_itself_once,
    );
}

async fn a_flooding_singer_hurts_only_itself_once() {
    let _serial = SERIAL.lock().await;
    let dir = box_dir("strangers_flood");
    let wav = dir.join("venue.wav");
    let (the_box, base) = start(
        "strangers_flood",
        &[("DUETBOX_AUDIO__OUTPUT", format!("wav:{}", wav.display()))],
    )
    .await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    wait_more(&ana, 1.0, "ana's first second").await;
    let flood = WhipClient::connect_options(
        &base,
        Role::Singer,
        "flood",
        None,
        Some(tone(660.0)),
        Options {
            packets_per_frame: 10,
            ..Options::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the flooder connects: {e}"));
    // Five seconds of ten times the packet rate.
    flood
        .wait_sent(10 * 5 * 48_000, Duration::from_secs(30), "5 s of flood")
        .await;
    let h = health(&base).await.expect("/health");
    flood.close().await;
    wait_more(&ana, 0.5, "ana's mix after the flood").await;
    ana.close().await;
    let log = the_box.log_text();
    drop(the_box);
    assert_eq!(h["xruns"], 0, "{h}");
    assert_eq!(
        h["packets_dropped"], 0,
        "the shared packet queue never overflowed: {h}"
    );
    assert!(
        log.contains("singer sends packets faster than allowed"),
        "the flood was metered:\n{log}"
    );
    // Ana's voice in the venue, every 100 ms from her second second on, through the
    // flood: never missing.
    let venue = read_wav_left(&wav);
    let levels: Vec<f32> = venue
        .chunks_exact(4_800)
        .map(|w| duetbox::engine::testkit::tone_level(w, 440.0))
        .collect();
    let first = levels
        .iter()
        .position(|&l| l > 0.2)
        .expect("ana is heard in the venue");
    let last = levels.iter().rposition(|&l| l > 0.2).expect("heard");
    let (from, to) = (first + 10, last.saturating_sub(1));
    // The flood ran for 5 s of it (the last second may miss the file: the box is
    // killed, and its WAV header is rewritten once a second).
    assert!(
        to >= from + 40,
        "ana was heard in windows {first}..={last} only"
    );
    let gaps: Vec<usize> = (from..=to).filter(|&k| levels[k] < 0.2).collect();
    assert!(
        gaps.is_empty(),
        "ana dropped out in windows {gaps:?} of {from}..={to}: {levels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_lock_out_a_phone() {
    let _serial = SERIAL.lock().await;
    let (the_box, base) = start("strangers_idle_tcp", &[]).await;
    let authority = format!("127.0.0.1:{}", the_box.https_port);
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        match connect_from(Some(STRANGER), &authority).await {
            Ok(s) => idle.push(s),
            Err(_) => refused += 1,
        }
    }
    // Give the box a moment to accept (and close) what it will not keep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = health(&base)
        .await
        .expect("/health answers with 2000 idle connections");
    eprintln!(
        "{} connections held, {refused} refused at connect; box: {} open, {} refused",
        idle.len(),
        h["connections"],
        h["connections_refused"]
    );
    assert!(
        h["connections_refused"].as_u64().unwrap_or(0) >= 1900,
        "the box refused the excess: {h}"
    );
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    assert_eq!(ana.status(), 201, "a new phone joins");
    wait_more(&ana, 0.5, "ana's mix").await;
    ana.close().await;
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_at_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let (the_box, base) = start(
        "strangers_idle_ws",
        &[("DUETBOX_ROOM__IDLE_TIMEOUT_MS", "6000".into())],
    )
    .await;
    // A singer keeps the room busy (its levels change it ten times a second).
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let addr = format!("127.0.0.1:{}", the_box.https_port)
        .parse()
        .expect("addr");
    let mut silent = Phone::connect_from(addr, STRANGER, None).await;
    silent
        .send(json!({"type": "join", "v": 1, "name": "Sam", "role": "listener"}))
        .await;
    let begin = Instant::now();
    let bye = loop {
        assert!(
            begin.elapsed() < Duration::from_secs(20),
            "a silent socket was still open after 20 s"
        );
        match silent.next().await {
            Received::Json(v) if v["type"] == "bye" => break v,
            Received::Json(_) => {}
            Received::Closed(code) => panic!("closed ({code:?}) without a bye"),
        }
    };
    assert_eq!(bye["reason"], "timeout");
    assert_eq!(silent.expect_close().await, Some(1000));
    eprintln!(
        "closed {:.1} s after its last frame",
        begin.elapsed().as_secs_f64()
    );
    ana.close().await;
}
