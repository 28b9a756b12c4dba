//! The audio path's real-time discipline, measured: in steady state, feeding packets,
//! rendering a period and draining the encoded frames allocate nothing.
//!
//! A counting global allocator (this test binary only) counts allocations made on the
//! thread under test while counting is switched on.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use duetbox::engine::testkit::{phone_packets, Signal, PHONE_FRAME_SAMPLES};
use duetbox::engine::{
    BackingAudio, Command, Engine, EngineConfig, RtpAudio, SingerId, SingerSettings,
};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: delegates every call to the system allocator unchanged; the thread-locals are
// const-initialised, so touching them never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

pub(crate) fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCATIONS.with(Cell::get) - before)
}

struct Packet {
    singer: SingerId,
    seq: u16,
    ts: u32,
    at: Duration,
    payload: Vec<u8>,
}

/// Two singers over 20 s: clean, then jitter, loss and a stall, so concealment, FEC,
/// underruns and splices all run while counting.
fn impaired_packets() -> Vec<Packet> {
    let mut packets = Vec::new();
    for (s, hz) in [(1u32, 440.0f32), (2, 660.0)] {
        let encoded = phone_packets(Signal::tone(hz), 1000);
        let mut lcg = 12345u32 + s;
        for (k, payload) in (0u64..).zip(encoded) {
            lcg = lcg.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let secs = k as f64 * 0.02;
            let lost = secs > 8.0 && lcg.is_multiple_of(20);
            if lost {
                continue;
            }
            let mut at_ms = (k + 1) * 20 + 2;
            if secs > 5.0 {
                at_ms += (lcg >> 16) as u64 % 30;
            }
            if (12.0..12.15).contains(&secs) {
                at_ms = 12_152;
            }
            packets.push(Packet {
                singer: SingerId(s),
                seq: k as u16,
                ts: (k * PHONE_FRAME_SAMPLES as u64) as u32,
                at: Duration::from_millis(at_ms),
                payload,
            });
        }
    }
    packets.sort_by_key(|p| p.at);
    packets
}

#[test]
fn the_counter_sees_allocations() {
    let (v, n) = counted(|| vec![1u8; 64]);
    assert_eq!(v.len(), 64);
    assert!(n >= 1);
}

#[test]
fn steady_state_audio_path_allocates_nothing() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let config = EngineConfig::default();
    let period = config.period_samples;
    let mut engine = Engine::new(config);
    engine.handle_command(Command::AddSinger {
        singer: SingerId(1),
        settings: SingerSettings::default(),
    });
    let echo = SingerSettings {
        reverb_wet: 0.3,
        ..SingerSettings::default()
    };
    engine.handle_command(Command::AddSinger {
        singer: SingerId(2),
        settings: echo,
    });
    engine.handle_command(Command::SetListeners(3));
    let backing = vec![0.05f32; 2 * 48_000];
    let packets = impaired_packets();
    let mut venue = vec![0.0f32; 2 * period];
    let mut sink = vec![0u8; 4096];
    let mut next = 0;
    let mut allocations_after_warmup = 0;
    let mut frames = 0u64;
    for p in 0..4000u64 {
        let now = Duration::from_micros(p * 5_000);
        let (_, n) = counted(|| {
            while next < packets.len() && packets[next].at <= now {
                let pk = &packets[next];
                let rtp = RtpAudio {
                    ssrc: 9,
                    sequence: pk.seq,
                    timestamp: pk.ts,
                    payload: &pk.payload,
                };
                engine.handle_packet(pk.singer, rtp, pk.at);
                next += 1;
            }
            if engine.backing_queued() < 4 * period {
                engine.push_backing(BackingAudio {
                    generation: 0,
                    position: 0,
                    samples: &backing[..2 * 4 * period],
                    last: false,
                });
            }
            engine.render_period(now, &mut venue);
            while let Some(out) = engine.poll_output() {
                if let duetbox::engine::Output::Frame { payload, .. } = out {
                    sink[..payload.len()].copy_from_slice(payload);
                    frames += 1;
                }
            }
        });
        if p >= 200 {
            allocations_after_warmup += n;
        }
    }
    let stats = engine.singer_stats(SingerId(1)).expect("seated");
    // The run really went through the hard paths.
    assert!(
        stats.lost > 10 && stats.fec_recovered > 0 && stats.underruns > 0,
        "{stats:?}"
    );
    assert!(
        stats.expanded_samples + stats.compressed_samples > 0,
        "{stats:?}"
    );
    assert!(frames > 3000);
    assert_eq!(
        allocations_after_warmup, 0,
        "the audio path allocated in steady state"
    );
}
