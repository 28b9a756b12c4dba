//! The real-time thread with a real (timer-paced) sink: packets in from another thread
//! through the lock-free queue, frames and reports out, heartbeat moving, and the
//! test-only stall switch stopping the heartbeat.

use std::sync::atomic::Ordering;
use std::time::Duration;

use duetbox::audio::{self, Report, Sink};
use duetbox::engine::{EngineConfig, MixId, SingerId};
use duetbox::output::NullSink;

fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let step = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    while !f() {
        assert!(
            waited < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(step);
        waited += step;
    }
}

#[test]
fn packets_from_another_thread_come_back_as_frames_and_reports() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let (handle, join) = audio::spawn(EngineConfig::default(), || {
        Ok(Box::new(NullSink::new(240)) as Box<dyn Sink>)
    })
    .expect("spawn audio thread");
    let singer = SingerId(1);
    // One second of a phone singing 440 Hz, sent in real time from this thread.
    crate::support::seat_and_sing_in_real_time(&handle, singer, 440.0, 50);
    let mut personal_frames = 0;
    while let Some(frame) = handle.frames.pop() {
        if frame.mix == MixId::Personal(singer) {
            personal_frames += 1;
            assert!(!frame.payload().is_empty());
        }
    }
    assert!(personal_frames > 50, "frames {personal_frames}");
    let mut singer_reports = Vec::new();
    while let Some(report) = handle.reports.pop() {
        if let Report::Singer(r) = report {
            singer_reports.push(r);
        }
    }
    let last = singer_reports.last().expect("reports arrive");
    assert!(last.stats.packets >= 45, "{:?}", last.stats);
    assert_eq!(handle.counters.packets_dropped.load(Ordering::Relaxed), 0);
    // Heartbeat: periods advance in real time; stalled on purpose, they stop.
    let periods = || handle.counters.periods.load(Ordering::Relaxed);
    let before = periods();
    wait_until("heartbeat", Duration::from_secs(2), || {
        periods() > before + 10
    });
    handle.counters.stall.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    let frozen = periods();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(periods(), frozen, "a stalled thread has no heartbeat");
    handle.counters.stall.store(false, Ordering::Relaxed);
    wait_until("heartbeat after stall", Duration::from_secs(2), || {
        periods() > frozen + 5
    });
    handle.stop();
    join.join().expect("thread exits").expect("no sink error");
}
