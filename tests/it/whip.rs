//! WHIP and WHEP end to end: the box in-process on 127.0.0.1 (timer-paced output, no
//! sound card), real `webrtc` 0.21.1 clients sending real Opus, and what comes back:
//! mix-minus for singers, the venue mix for listeners, clear 4xx answers for bad
//! requests, and the box's added latency measured with clicks (reported, not asserted
//! beyond sanity: speed lives in benches/).
//!
//! The tests take turns (`SERIAL`): each runs a box and several peers in real time, and
//! on a 2-core machine two of them at once would measure each other.

use std::time::{Duration, Instant};

use duetbox::engine::testkit::{tone_level, Signal};
use duetbox::engine::SAMPLE_RATE_HZ;

use crate::support::latency::{
    click_frame, click_source, find_template, median, onset, partner_latencies_ms, signed_ms,
    HeartbeatSampler, MATCH_MIN, TEMPLATE_POST, TEMPLATE_PRE,
};
use crate::support::whip_client::{
    https_request, signal_source, silence, Recording, Role, Source, WhipClient, FRAME_SAMPLES,
};
use crate::support::{box_dir, loopback_box_config, read_wav_left, start_box};

/// One whip test at a time (see the module doc).
use crate::support::SERIAL;

/// Frames per second at 48 kHz.
const RATE: usize = SAMPLE_RATE_HZ as usize;

/// A partner's 0.5-amplitude tone must arrive above this (it is panned centre and
/// crosses Opus twice).
const PARTNER_LEVEL_MIN: f32 = 0.1;

/// A singer's own tone must be at least this far below the partner's in their mix.
const OWN_VOICE_REJECTION_DB: f32 = 30.0;

/// How long audio may take to arrive in the amount a test waits for (real time plus
/// a loaded machine's slack).
const AUDIO_DEADLINE: Duration = Duration::from_secs(20);

/// The PIN of the PIN-protected box.
const PIN: &str = "4711";

/// A well-formed audio offer, for requests the box must refuse before any WebRTC.
const AUDIO_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=rtpmap:111 opus/48000/2\r\na=sendrecv\r\n";

/// An offer with only a video m-line.
const VIDEO_ONLY_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=rtpmap:96 VP8/90000\r\na=sendrecv\r\n";

pub(crate) fn tone(hz: f32) -> Source {
    signal_source(Signal::Tone { hz, amplitude: 0.5 })
}

pub(crate) async fn singer(
    base: &str,
    name: &str,
    pin: Option<&str>,
    source: Source,
) -> WhipClient {
    WhipClient::connect(base, Role::Singer, name, pin, Some(source))
        .await
        .unwrap_or_else(|e| panic!("singer {name} could not connect: {e}"))
}

/// The left channel of the last `frames` frames received.
fn last_left(recording: &Recording, frames: usize) -> Vec<f32> {
    let left = recording.left();
    left[left.len().saturating_sub(frames)..].to_vec()
}

/// Waits for `seconds` more of `client`'s received audio.
pub(crate) async fn wait_more(client: &WhipClient, seconds: f64, what: &str) {
    let mark = client.received().frames();
    let more = (seconds * RATE as f64) as usize;
    client
        .wait_received(mark + more, AUDIO_DEADLINE, what)
        .await;
}

fn db(ratio: f32) -> f32 {
    20.0 * ratio.max(1e-9).log10()
}

/// Asserts that the last `seconds` of what `client` received carry `partner_hz` and
/// (if given) not `own_hz`.
pub(crate) fn assert_hears(
    client: &WhipClient,
    who: &str,
    partner_hz: f32,
    own_hz: Option<f32>,
    seconds: f64,
) {
    let last = last_left(&client.received(), (seconds * RATE as f64) as usize);
    let partner = tone_level(&last, partner_hz);
    assert!(
        partner > PARTNER_LEVEL_MIN,
        "{who} should hear {partner_hz} Hz above {PARTNER_LEVEL_MIN}, got {partner:.4}"
    );
    if let Some(own_hz) = own_hz {
        let own = tone_level(&last, own_hz);
        assert!(
            db(own / partner) <= -OWN_VOICE_REJECTION_DB,
            "{who}'s own {own_hz} Hz should be {OWN_VOICE_REJECTION_DB} dB below the partner's \
             {partner_hz} Hz: own {own:.5}, partner {partner:.4} ({:.1} dB)",
            db(own / partner)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_singer_hears_the_partner_but_not_itself() {
    let _serial = SERIAL.lock().await;
    let (running, base) = start_box(loopback_box_config(&box_dir("whip_mix_minus"))).await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let ben = singer(&base, "ben", None, tone(660.0)).await;
    assert_eq!((ana.status(), ben.status()), (201, 201));
    assert_eq!(running.control.counts(), (2, 0));
    wait_more(&ana, 3.0, "3 s of ana's personal mix").await;
    wait_more(&ben, 0.5, "ben's personal mix to catch up").await;
    assert_hears(&ana, "ana", 660.0, Some(440.0), 1.0);
    assert_hears(&ben, "ben", 440.0, Some(660.0), 1.0);

    let status = ana.delete().await.expect("DELETE ana's session");
    assert_eq!(status, 200, "DELETE {} answers 200", ana.location());
    assert_eq!(running.control.counts(), (1, 0), "ana's seat is free");
    ana.close().await;
    let cleo = singer(&base, "cleo", None, tone(550.0)).await;
    assert_eq!(cleo.status(), 201, "a third singer takes the free seat");
    assert_eq!(running.control.counts(), (2, 0));

    cleo.close().await;
    ben.close().await;
    running.stop().await.expect("the box stops cleanly");
}

/// aiortc and GStreamer offer Opus on payload type 96 (Firefox on 109); the box must
/// send their mix on the type they negotiated, or their stack drops every packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_opus_on_payload_type_96_hears_its_partner() {
    let _serial = SERIAL.lock().await;
    let (running, base) = start_box(loopback_box_config(&box_dir("whip_pt96"))).await;
    let gst = WhipClient::connect_with(&base, Role::Singer, "gst", None, Some(tone(440.0)), 96)
        .await
        .unwrap_or_else(|e| panic!("the PT 96 singer could not connect: {e}"));
    let ana = singer(&base, "ana", None, tone(660.0)).await;
    wait_more(&gst, 3.0, "3 s of the PT 96 singer's personal mix").await;
    wait_more(&ana, 0.5, "ana's personal mix").await;
    assert_hears(&gst, "gst (PT 96)", 660.0, Some(440.0), 1.0);
    assert_hears(&ana, "ana", 440.0, Some(660.0), 1.0);
    gst.close().await;
    ana.close().await;
    running.stop().await.expect("the box stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singer_who_vanishes_without_leaving_frees_the_seat_when_ice_consent_fails() {
    let _serial = SERIAL.lock().await;
    let (running, base) = start_box(loopback_box_config(&box_dir("whip_vanish"))).await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let ben = singer(&base, "ben", None, tone(660.0)).await;
    assert_eq!(running.control.counts(), (2, 0));
    // Ana's phone dies: no DELETE, no goodbye, its media tasks just stop.
    ana.close().await;
    // The box notices when ICE consent fails (rtc.ice_failed_ms, 5 s by default).
    let deadline = Instant::now() + Duration::from_secs(15);
    while running.control.counts() != (1, 0) {
        assert!(
            Instant::now() < deadline,
            "timed out after 15 s waiting for ana's seat to be freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ben never noticed: his mix keeps coming.
    wait_more(&ben, 0.5, "ben's mix after ana vanished").await;
    ben.close().await;
    running.stop().await.expect("the box stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_refuses_bad_requests_with_a_clear_4xx() {
    let _serial = SERIAL.lock().await;
    let mut config = loopback_box_config(&box_dir("whip_4xx"));
    config.room.pin = PIN.into();
    let (running, base) = start_box(config).await;
    let ana = singer(&base, "ana", Some(PIN), tone(440.0)).await;
    let ben = singer(&base, "ben", Some(PIN), tone(660.0)).await;
    wait_more(&ana, 1.0, "ana's personal mix before the bad requests").await;
    let before = ana.received_pcm().len() / 2;
    let bearer = || ("Authorization", format!("Bearer {PIN}"));
    let sdp = || ("Content-Type", "application/sdp".to_string());
    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let base = base.clone();
        async move {
            https_request(
                &base,
                "POST",
                "/whip?name=mallory&role=singer",
                &headers,
                body.as_bytes(),
            )
            .await
            .expect("the box answers")
        }
    };

    let wrong_type = post(
        vec![bearer(), ("Content-Type", "text/plain".to_string())],
        AUDIO_OFFER,
    )
    .await;
    assert_eq!(wrong_type.status, 415, "wrong Content-Type: {wrong_type:?}");
    assert!(
        wrong_type.body.contains("application/sdp"),
        "{wrong_type:?}"
    );

    let no_audio = post(vec![bearer(), sdp()], VIDEO_ONLY_OFFER).await;
    assert_eq!(no_audio.status, 400, "video-only offer: {no_audio:?}");
    assert!(
        no_audio.body.contains("no audio m-line"),
        "the 400 names the problem: {no_audio:?}"
    );

    let no_pin = post(vec![sdp()], AUDIO_OFFER).await;
    assert_eq!(no_pin.status, 401, "missing PIN: {no_pin:?}");
    assert_eq!(no_pin.header("www-authenticate"), Some("Bearer"));
    let wrong_pin = post(
        vec![sdp(), ("Authorization", "Bearer 0000".to_string())],
        AUDIO_OFFER,
    )
    .await;
    assert_eq!(wrong_pin.status, 401, "wrong PIN: {wrong_pin:?}");

    let third = WhipClient::connect(&base, Role::Singer, "cleo", Some(PIN), Some(silence())).await;
    match third {
        Ok(client) => panic!(
            "a third singer with max_singers = 2 was admitted at {}",
            client.location()
        ),
        Err(e) => {
            assert_eq!(e.status, Some(409), "third singer: {e}");
            assert!(e.message.contains("taken"), "the 409 says why: {e}");
        }
    }

    for path in ["/whip/p999", "/whep/p999", "/whip/nonsense"] {
        let unknown = https_request(&base, "DELETE", path, &[bearer()], b"")
            .await
            .expect("the box answers");
        assert_eq!(unknown.status, 404, "DELETE {path}: {unknown:?}");
    }

    assert_eq!(
        running.control.counts(),
        (2, 0),
        "the refusals took no seat"
    );
    // The refusals take milliseconds, less than a packet: what matters is that ana's
    // stream goes on after them, with her partner in it.
    ana.wait_received(
        before + RATE,
        AUDIO_DEADLINE,
        "ana's personal mix to keep growing after the bad requests",
    )
    .await;
    wait_more(&ben, 0.2, "ben's personal mix after the bad requests").await;
    assert_hears(&ana, "ana", 660.0, Some(440.0), 0.5);
    assert_hears(&ben, "ben", 440.0, Some(660.0), 0.5);

    ana.close().await;
    ben.close().await;
    running.stop().await.expect("the box stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_singer_with_the_right_pin_is_admitted() {
    let _serial = SERIAL.lock().await;
    let mut config = loopback_box_config(&box_dir("whip_pin"));
    config.room.pin = PIN.into();
    let (running, base) = start_box(config).await;
    let ana = singer(&base, "ana", Some(PIN), tone(440.0)).await;
    assert_eq!(ana.status(), 201);
    assert_eq!(running.control.counts(), (1, 0));
    assert_eq!(ana.delete().await.expect("DELETE ana's session"), 200);
    assert_eq!(running.control.counts(), (0, 0));
    ana.close().await;
    running.stop().await.expect("the box stops cleanly");
}

#[test]
fn whep_listener_hears_the_venue_mix() {
    crate::support::stalls::once_more_if_the_machine_stalled_async(
        "whep_listener_hears_the_venue_mix",
        whep_listener_hears_the_venue_mix_once,
    );
}

async fn whep_listener_hears_the_venue_mix_once() {
    let _serial = SERIAL.lock().await;
    let (running, base) = start_box(loopback_box_config(&box_dir("whep_venue"))).await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let lou = WhipClient::connect(&base, Role::Listener, "lou", None, None)
        .await
        .unwrap_or_else(|e| panic!("listener lou could not connect: {e}"));
    assert_eq!(lou.status(), 201);
    assert!(lou.location().starts_with("/whep/"), "{}", lou.location());
    assert_eq!(running.control.counts(), (1, 1));
    wait_more(&lou, 2.0, "2 s of the venue mix at the listener").await;
    assert_hears(&lou, "lou", 440.0, None, 1.0);

    assert_eq!(lou.delete().await.expect("DELETE lou's session"), 200);
    assert_eq!(running.control.counts(), (1, 0));
    lou.close().await;
    ana.close().await;
    running.stop().await.expect("the box stops cleanly");
}

/// The first click, 1.5 s into the stream (the jitter buffer has settled by then).
const FIRST_CLICK_FRAME: u64 = 75;

/// One click every 500 ms: far longer than any sane latency, so clicks never mix up.
const CLICK_EVERY_FRAMES: u64 = 25;

/// Clicks sent.
const CLICKS: u64 = 10;

/// Of which at least this many must be found on each path.
const CLICKS_FOUND_MIN: usize = 8;

/// How far after its packet left a click is looked for (and the sanity bound).
const LATENCY_SANE_MS: f64 = 200.0;

/// Partner return: A sends clicks, B listens. Venue: the same clicks in the box's WAV
/// output. Method in `support/latency.rs`: every instant is "packet (or period) instant
/// plus offset in it"; the A side is A's own packets decoded locally (so A's codec
/// look-ahead does not count), the B side B's received packets stamped on arrival, the
/// venue side the WAV's sample index on the paced sink's timeline, whose origin comes
/// from the audio thread's public heartbeat counter. Speed is reported, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_click_through_the_box() {
    let _serial = SERIAL.lock().await;
    let dir = box_dir("latency");
    let venue_path = dir.join("venue.wav");
    let mut config = loopback_box_config(&dir);
    config.audio.output = format!("wav:{}", venue_path.display());
    let period_frames = (config.audio.period_ms * RATE as f64 / 1000.0).round() as usize;
    let period = Duration::from_secs_f64(period_frames as f64 / RATE as f64);
    let (running, base) = start_box(config).await;
    let heartbeat = HeartbeatSampler::start(running.audio.counters.clone());
    let ben = singer(&base, "ben", None, silence()).await;
    let ana = singer(
        &base,
        "ana",
        None,
        click_source(FIRST_CLICK_FRAME, CLICK_EVERY_FRAMES, CLICKS),
    )
    .await;

    // Until ana has sent the last click and half a second more, and ben has received
    // past that.
    let last_frame = click_frame(FIRST_CLICK_FRAME, CLICK_EVERY_FRAMES, CLICKS - 1);
    let sent_enough = (last_frame as usize + CLICK_EVERY_FRAMES as usize) * FRAME_SAMPLES;
    ana.wait_sent(sent_enough, AUDIO_DEADLINE, "ana to send her clicks")
        .await;
    wait_more(&ben, 0.3, "ben's mix after the last click").await;
    let sent = ana.sent();
    let received = ben.received();
    assert_eq!(ana.delete().await.expect("DELETE ana"), 200);
    assert_eq!(ben.delete().await.expect("DELETE ben"), 200);
    ana.close().await;
    ben.close().await;
    let heartbeat = heartbeat.stop();
    let xruns = running
        .audio
        .counters
        .xruns
        .load(std::sync::atomic::Ordering::Relaxed);
    running.stop().await.expect("the box stops cleanly");
    let venue = read_wav_left(&venue_path);

    let sane = Duration::from_secs_f64(LATENCY_SANE_MS / 1000.0);
    // Clicks are looked for up to twice the sane latency after they left (still well
    // before the next click), so an insane one is found and reported, not missed.
    let window = 2 * (sane.as_secs_f64() * RATE as f64) as usize;
    let mut partner_ms = partner_latencies_ms(
        &sent,
        &received,
        FIRST_CLICK_FRAME,
        CLICK_EVERY_FRAMES,
        CLICKS,
        window,
    );
    let mut venue_ms = Vec::new();
    for i in 0..CLICKS {
        let frame = click_frame(FIRST_CLICK_FRAME, CLICK_EVERY_FRAMES, i) as usize;
        let a_onset = onset(
            &sent.pcm,
            frame * FRAME_SAMPLES,
            (frame + 2) * FRAME_SAMPLES,
            0.2,
        )
        .unwrap_or_else(|| panic!("click {i} is not in ana's own decoded stream"));
        let template = &sent.pcm[a_onset - TEMPLATE_PRE..a_onset + TEMPLATE_POST];
        let a_at = sent
            .instant_of(a_onset - TEMPLATE_PRE)
            .expect("ana's click was sent");
        let carrier_at = sent
            .instant_of(a_onset / FRAME_SAMPLES * FRAME_SAMPLES)
            .expect("sent");
        // Venue: the WAV's sample index on the sink's timeline.
        let Some(origin) = heartbeat.origin(carrier_at, carrier_at + sane, period) else {
            continue;
        };
        let frame_at = |at: Instant| {
            (at.saturating_duration_since(origin).as_secs_f64() * RATE as f64) as usize
                + period_frames
        };
        let from = frame_at(carrier_at);
        if let Some((v_start, corr)) =
            find_template(template, TEMPLATE_PRE, &venue, from, from + window, 0.1)
        {
            if corr >= MATCH_MIN {
                let offset = (v_start as f64 - period_frames as f64) / RATE as f64;
                let v_at = origin + Duration::from_secs_f64(offset.max(0.0));
                venue_ms.push(signed_ms(v_at, a_at));
            }
        }
    }
    eprintln!(
        "partner return per click (ms): {:?}",
        partner_ms
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "venue per click (ms): {:?}",
        venue_ms
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    let (n_partner, n_venue) = (partner_ms.len(), venue_ms.len());
    let partner = median(&mut partner_ms);
    let venue_median = median(&mut venue_ms);
    eprintln!(
        "box-added latency: partner return {partner:.1} ms (median of {n_partner} clicks), \
         venue {venue_median:.1} ms (median of {n_venue} clicks; to the sink write, \
         a sound card adds its buffer){}",
        if xruns > 0 {
            format!(" [the machine starved the box: its output fell behind {xruns} times]")
        } else {
            String::new()
        }
    );
    assert!(
        n_partner >= CLICKS_FOUND_MIN,
        "found {n_partner} of {CLICKS} clicks in ben's mix"
    );
    assert!(
        n_venue >= CLICKS_FOUND_MIN,
        "found {n_venue} of {CLICKS} clicks in the venue recording"
    );
    for (path, ms) in [("partner return", partner), ("venue", venue_median)] {
        assert!(
            ms > 0.0 && ms < LATENCY_SANE_MS,
            "{path} latency {ms:.1} ms is outside the sanity bounds (0, {LATENCY_SANE_MS}) ms"
        );
    }
}
