//! Phones that lose the box for a while, in real browsers: a Chromium singer whose
//! network drops for 5 s (it runs in a network namespace whose link the test takes
//! down) comes back to its place, and a listener whose browser is frozen (SIGSTOP) for
//! 10 s costs the singers nothing. The partners are WHIP clients in this process, so
//! what they receive is measured packet by packet.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duetbox::control::{Input, Presence, RoomView};

use crate::support::e2e::{epoch_ms, level_db, write_tone_wav, Driver, Mark};
use crate::support::netns::Netns;
use crate::support::whip_client::{https_request, Recording};
use crate::support::{self, box_dir, loopback_box_config, BoxProcess, SERIAL};
use crate::whip::{singer, tone, wait_more};

/// Deadline for a whole browser run.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

/// A partner's tone counts as heard above this, dB (the page's 100 ms level of a
/// 0.5-amplitude tone through the box is about -23 dB; silence is below -100).
const HEARD_DB: f64 = -45.0;

/// Longest a return mix may go without a packet and still count as flowing: packets
/// come every 10 ms; scheduling on a loaded 2-core machine adds tens of ms.
const MAX_PACKET_GAP: Duration = Duration::from_millis(150);

/// The longest gap between consecutive packets received in `[from, to]`.
fn max_gap(rec: &Recording, from: Instant, to: Instant) -> Duration {
    assert!(
        rec.packets_between(from, to) > 10,
        "no packets between the marks"
    );
    rec.longest_gap(from, to)
}

/// The median of `arrival − stream time` of the packets received in `[from, to]`, ms:
/// how late the stream runs (up to a constant). A return path that slowed down would
/// show as this growing.
fn lateness_ms(rec: &Recording, origin: Instant, from: Instant, to: Instant) -> f64 {
    let mut late: Vec<f64> = rec
        .packets
        .iter()
        .filter(|p| p.at >= from && p.at <= to)
        .map(|p| p.at.duration_since(origin).as_secs_f64() * 1000.0 - p.start as f64 / 48.0)
        .collect();
    assert!(late.len() > 10, "no packets to measure");
    late.sort_by(f64::total_cmp);
    late[late.len() / 2]
}

fn participant<'a>(
    view: &'a RoomView,
    name: &str,
) -> Option<&'a duetbox::control::room::ParticipantView> {
    view.participants.iter().find(|p| p.name == name)
}

/// The instant `epoch_ms` (a driver time) stands for on this process's clock, given
/// one moment known on both.
fn instant_of(epoch: u64, anchor: (Instant, u64)) -> Instant {
    if epoch >= anchor.1 {
        anchor.0 + Duration::from_millis(epoch - anchor.1)
    } else {
        anchor.0 - Duration::from_millis(anchor.1 - epoch)
    }
}

/// What the test saw of the box while the phone was away.
#[derive(Default)]
struct Outage {
    before: Option<RoomView>,
    during: Option<RoomView>,
    after: Option<RoomView>,
    cut_ms: u64,
    restored_ms: u64,
    kicked_ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_loses_its_network_comes_back_to_its_slot_and_its_partner() {
    let _serial = SERIAL.lock().await;
    let alsa = support::alsa_config();
    let work = alsa.dir.join("rejoin");
    std::fs::create_dir_all(&work).expect("work dir");
    let mic = work.join("a440.wav");
    write_tone_wav(&mic, 440.0, 0.5, 10);
    let ns = Arc::new(Netns::create());
    let mut config = loopback_box_config(&box_dir("rejoin_cut"));
    config.http.bind = ns.host_ip.to_string();
    config.rtc.udp_bind = vec!["127.0.0.1".into(), ns.host_ip.to_string()];
    let (running, base) = support::start_box(config).await;
    let control = running.control.clone();

    // The partner sings 660 Hz from this process and must never stop hearing the box.
    let ben = singer(&base, "ben", None, tone(660.0)).await;
    wait_more(&ben, 0.5, "ben's first half second").await;

    let outage: Arc<Mutex<Outage>> = Arc::default();
    let scenario: Arc<Mutex<Option<thread::JoinHandle<()>>>> = Arc::default();
    let url = format!("{base}/");
    let driver = Driver::new(&url, 16)
        .prefix(ns.exec_prefix())
        .flag("--watch")
        .arg("--mix", "A:30:20")
        .phone("A", "singer", Some(&mic), "chromium");
    let run = tokio::task::spawn_blocking({
        let (outage, scenario, ns) = (outage.clone(), scenario.clone(), ns.clone());
        let runtime = tokio::runtime::Handle::current();
        move || {
            driver.run(BROWSER_DEADLINE, move |mark| {
                if mark.name != "all live" {
                    return;
                }
                let (outage, ns, control) = (outage.clone(), ns.clone(), control.clone());
                let runtime = runtime.clone();
                // All live: 2 s of duet, the network gone for 5 s, back for 6 s, then
                // the host removes the phone.
                *scenario.lock().expect("scenario") = Some(thread::spawn(move || {
                    thread::sleep(Duration::from_secs(2));
                    outage.lock().expect("outage").before = Some((*control.view()).clone());
                    outage.lock().expect("outage").cut_ms = epoch_ms();
                    ns.cut();
                    thread::sleep(Duration::from_millis(4500));
                    outage.lock().expect("outage").during = Some((*control.view()).clone());
                    thread::sleep(Duration::from_millis(500));
                    ns.restore();
                    outage.lock().expect("outage").restored_ms = epoch_ms();
                    thread::sleep(Duration::from_secs(5));
                    outage.lock().expect("outage").after = Some((*control.view()).clone());
                    thread::sleep(Duration::from_secs(1));
                    let peer = participant(&control.view(), "A").map(|p| p.peer);
                    if let Some(peer) = peer {
                        let _ = runtime.block_on(control.handle(Input::Kick { peer }));
                    }
                    outage.lock().expect("outage").kicked_ms = epoch_ms();
                }));
            })
        }
    })
    .await
    .expect("the driver thread");
    let anchor = (Instant::now(), epoch_ms());
    if let Some(scenario) = scenario.lock().expect("scenario").take() {
        scenario.join().expect("the scenario thread");
    }
    run.assert_success();
    let outage = std::mem::take(&mut *outage.lock().expect("outage"));
    let received = ben.received();
    let counts = running.control.counts();
    ben.close().await;
    running.stop().await.expect("the box stops cleanly");

    // The phone's place while it was away: held, shown as reconnecting.
    let before = outage.before.expect("the view before the cut");
    let during = outage.during.expect("the view during the cut");
    let a_before = participant(&before, "A")
        .expect("A in the room before the cut")
        .clone();
    let a_during = participant(&during, "A")
        .unwrap_or_else(|| panic!("A kept its place during the cut: {during:?}"));
    assert_eq!(a_during.presence, Presence::Reconnecting, "{during:?}");
    assert_eq!(
        (a_during.peer, a_during.slot),
        (a_before.peer, a_before.slot)
    );
    let slot = a_before.slot.expect("A is a singer");
    let settings = before.slots[slot.0].settings;
    assert_eq!(
        (settings.monitor, settings.reverb_wet),
        (0.3, 0.2),
        "the page's sliders reached the box"
    );
    assert_eq!(during.slots[slot.0].peer, Some(a_before.peer));

    // Back, hearing the partner, within 3 s of the network's return.
    let samples = run.samples("A");
    let heard = samples
        .iter()
        .find(|s| {
            s["t"].as_u64().is_some_and(|t| t >= outage.restored_ms)
                && s["state"] == "live"
                && level_db(s, 660) > HEARD_DB
        })
        .unwrap_or_else(|| {
            panic!("A never heard its partner after the network returned: {samples:?}")
        });
    let back_ms = heard["t"].as_u64().expect("t") - outage.restored_ms;
    eprintln!("A heard its partner again {back_ms} ms after its network returned");
    assert!(
        back_ms <= 3000,
        "A heard its partner only {back_ms} ms after the network returned"
    );
    // From a second after the cut: what the phone's jitter buffer held and its
    // concealment's fade may play on for a few hundred ms, and a loaded host's
    // renderer and page timers add their own lateness.
    let deaf: Vec<(u64, f64)> = samples
        .iter()
        .filter_map(|s| {
            let t = s["t"].as_u64().unwrap_or(0);
            (t > outage.cut_ms + 1000 && t < outage.restored_ms)
                .then(|| (t - outage.cut_ms, level_db(s, 660)))
        })
        .filter(|&(_, db)| db > HEARD_DB)
        .collect();
    assert!(
        deaf.is_empty(),
        "the cut really cut A off, but A heard its partner (ms after the cut, dB): {deaf:?}"
    );

    // Same place and settings after the rejoin (the box's word, and the page's).
    let after = outage.after.expect("the view after the rejoin");
    let a_after = participant(&after, "A").unwrap_or_else(|| panic!("A is back: {after:?}"));
    assert_eq!(
        (a_after.peer, a_after.slot, a_after.presence),
        (a_before.peer, a_before.slot, Presence::Live),
        "{after:?}"
    );
    assert_eq!(
        after.slots[slot.0].settings, settings,
        "the slot's settings survived"
    );
    let result = run.result("A");
    assert_eq!(
        result["error"], "kicked",
        "then the host removed A: {result}"
    );
    assert_eq!(
        result["state"], "error",
        "and A did not come back by itself: {result}"
    );
    let rejoined = samples
        .iter()
        .filter(|s| s["t"].as_u64().is_some_and(|t| t > outage.kicked_ms + 300))
        .filter(|s| s["state"] != "error")
        .count();
    assert_eq!(rejoined, 0, "A stayed out after the kick");
    assert_eq!(counts, (1, 0), "only the partner is left");
    assert_eq!(result["mix"]["monitor"], 30);
    assert_eq!(result["mix"]["reverb"], 20);

    // The partner's return mix never stopped, from a second before the cut until well
    // after A was back.
    let from = instant_of(outage.cut_ms - 1000, anchor);
    let to = instant_of(outage.restored_ms + 4000, anchor);
    let gap = max_gap(&received, from, to);
    eprintln!("ben's longest gap between packets around the outage: {gap:?}");
    assert!(gap <= MAX_PACKET_GAP, "ben's mix stopped for {gap:?}");
}

/// The box runs as its own process here (`duetbox serve`), so that its memory is
/// measured alone: the WHIP singers of this process keep everything they receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_listener_costs_the_singers_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = box_dir("rejoin_frozen");
    let (the_box, base) = BoxProcess::start_healthy(&dir, &[]).await;
    let ana = singer(&base, "ana", None, tone(440.0)).await;
    let ben = singer(&base, "ben", None, tone(660.0)).await;
    wait_more(&ana, 1.0, "ana's first second").await;
    let origin = Instant::now();

    let pid = the_box.pid();
    // Each mark of the driver with the box's RSS (KiB) at that moment.
    let rss: Arc<Mutex<Vec<(Mark, u64)>>> = Arc::default();
    let url = format!("{base}/");
    let driver = Driver::new(&url, 24)
        .flag("--watch")
        .arg("--freeze", "L:3:10")
        .phone("L", "listener", None, "chromium");
    let run = tokio::task::spawn_blocking({
        let rss = rss.clone();
        move || {
            driver.run(BROWSER_DEADLINE, move |mark| {
                rss.lock().expect("rss").push((mark.clone(), rss_kib(pid)));
            })
        }
    })
    .await
    .expect("the driver thread");
    let health = https_request(&base, "GET", "/health", &[], b"")
        .await
        .expect("/health answers");
    let health: serde_json::Value = serde_json::from_str(&health.body).expect("JSON");
    let (a_rec, b_rec) = (ana.received(), ben.received());
    ana.close().await;
    ben.close().await;
    drop(the_box);
    run.assert_success();
    let marks = rss.lock().expect("rss").clone();
    let at = |name: &str| {
        marks
            .iter()
            .find(|m| m.0.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} mark: {}", run.stderr))
    };
    let (live, frozen, thawed) = (at("all live"), at("frozen L"), at("thawed L"));
    eprintln!(
        "box RSS: {} KiB when all live, {} KiB at the freeze, {} KiB after 10 s frozen",
        live.1, frozen.1, thawed.1
    );

    // Both singers' mixes kept their pace and their lateness while the listener slept.
    for (who, rec) in [("ana", &a_rec), ("ben", &b_rec)] {
        let gap = max_gap(rec, frozen.0.at, thawed.0.at);
        let calm = lateness_ms(
            rec,
            origin,
            frozen.0.at - Duration::from_secs(3),
            frozen.0.at,
        );
        let during = lateness_ms(
            rec,
            origin,
            frozen.0.at + Duration::from_secs(1),
            thawed.0.at,
        );
        eprintln!(
            "{who}: longest gap while L was frozen {gap:?}; lateness {calm:.1} ms before, {during:.1} ms during"
        );
        assert!(gap <= MAX_PACKET_GAP, "{who}'s mix stopped for {gap:?}");
        assert!(
            (during - calm).abs() <= 10.0,
            "{who}'s mix ran {:.1} ms later while the listener was frozen",
            during - calm
        );
    }
    // Memory stays bounded: what a frozen peer leaves behind is fixed-size (its
    // bounded frame queue, its socket's queue), not something that grows with time.
    let grown_kib = thawed.1.saturating_sub(frozen.1);
    assert!(
        grown_kib < MAX_FROZEN_GROWTH_KIB,
        "the box grew by {grown_kib} KiB while the listener was frozen"
    );

    // The listener came back (it rejoined with its token) and hears both singers.
    let samples = run.samples("L");
    let back = samples.iter().find(|s| {
        s["t"].as_u64().is_some_and(|t| t > thawed.0.epoch_ms)
            && s["state"] == "live"
            && level_db(s, 440) > HEARD_DB
            && level_db(s, 660) > HEARD_DB
    });
    let back = back.unwrap_or_else(|| panic!("the listener did not come back: {samples:?}"));
    eprintln!(
        "the listener heard both singers again {} ms after it was thawed",
        back["t"].as_u64().expect("t") - thawed.0.epoch_ms
    );
    assert_eq!(
        (health["singers"].as_u64(), health["listeners"].as_u64()),
        (Some(2), Some(0)),
        "the listener left at the end, the singers stay: {health}"
    );
}

/// Growth of the box's memory allowed over the 10 s a listener is frozen, KiB. A queue
/// that held the frozen peer's frames, or its room updates, would grow without end;
/// what the box measures is noise from the allocator and the TLS/WebRTC stacks.
const MAX_FROZEN_GROWTH_KIB: u64 = 1024;

/// A process's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
