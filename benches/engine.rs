//! Cost of the engine's audio path, printed as a table.
//!
//! `cargo bench --bench engine`. For every combination of singers and listeners it runs
//! the real period loop (packets in, render, encoded frames out) on pre-encoded Opus
//! packets and reports the mean and 99th-percentile time per 5 ms period and the mean
//! as a percentage of real time on one core. Listeners all share the venue encode, so
//! they cost one encode whatever their number; the fan-out of frames to their sockets
//! happens in the network tasks and is not part of this loop.
//!
//! A second table gives the same in in-ear mode (`docs/sync.md`): the speakers hold the
//! backing back 230 ms and each voice by its own part of that, and the phones' mixes
//! carry the backing 60 ms ahead (the lead), so every delay line and the lead bus run.
//!
//! A third line gives the receive cost per source: one singer's packets in and PCM out
//! (jitter buffer + Opus decode), without mixing or encoding.

use std::hint::black_box;
use std::time::{Duration, Instant};

use duetbox::engine::receiver::{Receiver, ReceiverConfig};
use duetbox::engine::testkit::{phone_packets, Signal, PHONE_FRAME_SAMPLES};
use duetbox::engine::{
    BackingAudio, Command, Engine, EngineConfig, JitterConfig, Output, RtpAudio, SingerId,
    SingerSettings,
};

const PERIOD_SAMPLES: usize = 240;
/// One period of [`PERIOD_SAMPLES`] at 48 kHz.
const PERIOD: Duration = Duration::from_micros(5_000);
const WARMUP_PERIODS: u64 = 400;
const MEASURED_PERIODS: u64 = 2000;

#[expect(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn clock() -> Instant {
    Instant::now()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// The speakers' hold on the backing in the in-ear rows, frames (230 ms).
const IN_EAR_VENUE_FRAMES: u32 = 11_040;

/// The phones' lead in the in-ear rows, frames (60 ms).
const IN_EAR_LEAD_FRAMES: u32 = 2_880;

fn bench_engine(singers: usize, listeners: u32, in_ear: bool) -> (Duration, Duration) {
    let config = EngineConfig {
        period_samples: PERIOD_SAMPLES,
        max_singers: singers,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config);
    let packets: Vec<Vec<Vec<u8>>> = (0..singers)
        .map(|s| phone_packets(Signal::tone(220.0 + 37.0 * s as f32), 50))
        .collect();
    // Gain staging as an engineer would set it: the voices' sum peaks below full scale,
    // so the limiter idles as it does at normal levels (its busy path is tested, not
    // benchmarked here).
    let voice_gain_db = 20.0 * (0.8 / (0.5 * singers as f32 + 0.1)).log10();
    for s in 0..singers {
        let settings = SingerSettings {
            pan: (s as f32 / singers as f32) * 2.0 - 1.0,
            gain_db: voice_gain_db.min(0.0),
            ..Default::default()
        };
        engine.handle_command(Command::AddSinger {
            singer: SingerId(s as u32),
            settings,
        });
    }
    engine.handle_command(Command::SetListeners(listeners));
    if in_ear {
        engine.handle_command(Command::SetLead {
            frames: IN_EAR_LEAD_FRAMES,
        });
        engine.handle_command(Command::SetVenueDelay {
            frames: IN_EAR_VENUE_FRAMES,
        });
        // Each voice waits for the slowest by its own share (0 to 100 ms).
        for s in 0..singers {
            engine.handle_command(Command::SetVoiceDelay {
                singer: SingerId(s as u32),
                frames: (s as u32 * 37 % 100) * 48,
            });
        }
    }
    let backing = vec![0.1f32; 2 * 48_000];
    let mut venue = vec![0.0f32; 2 * PERIOD_SAMPLES];
    let mut sent = 0u64;
    let mut times = Vec::with_capacity(MEASURED_PERIODS as usize);
    let mut sink = 0usize;
    for p in 0..WARMUP_PERIODS + MEASURED_PERIODS {
        let now = Duration::from_micros(p * 5_000);
        let start = clock();
        // A 20 ms packet from every phone every fourth period.
        while (sent + 1) * 20_000 <= p * 5_000 {
            for (s, list) in packets.iter().enumerate() {
                let payload = &list[sent as usize % list.len()];
                let rtp = RtpAudio {
                    ssrc: s as u32,
                    sequence: sent as u16,
                    timestamp: (sent * PHONE_FRAME_SAMPLES as u64) as u32,
                    payload,
                };
                engine.handle_packet(SingerId(s as u32), rtp, now);
            }
            sent += 1;
        }
        while engine.backing_queued() < engine.backing_wanted() {
            engine.push_backing(BackingAudio {
                generation: 0,
                position: 0,
                samples: &backing[..8 * PERIOD_SAMPLES],
                last: false,
            });
        }
        engine.render_period(now, &mut venue);
        while let Some(out) = engine.poll_output() {
            if let Output::Frame { payload, .. } = out {
                sink += payload.len();
            }
        }
        if p >= WARMUP_PERIODS {
            times.push(start.elapsed());
        }
    }
    black_box(sink);
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    (mean, percentile(&times, 0.99))
}

fn bench_receiver() -> Duration {
    let mut rx = Receiver::new(ReceiverConfig {
        jitter: JitterConfig::default(),
        period_samples: PERIOD_SAMPLES,
    });
    let packets = phone_packets(Signal::tone(440.0), 50);
    let mut out = vec![0.0f32; PERIOD_SAMPLES];
    let periods = 20_000u64;
    let mut sent = 0u64;
    let start = clock();
    for p in 0..periods {
        let now = Duration::from_micros(p * 5_000);
        while (sent + 1) * 20_000 <= p * 5_000 {
            let payload = &packets[sent as usize % packets.len()];
            rx.handle_packet(1, sent as u16, (sent * 960) as u32, payload, now);
            sent += 1;
        }
        rx.render(now, &mut out);
        black_box(&out);
    }
    start.elapsed() / periods as u32
}

/// Runs one combination and prints its row.
fn row(singers: usize, listeners: u32, in_ear: bool) {
    let (mean, p99) = bench_engine(singers, listeners, in_ear);
    let pct = mean.as_secs_f64() / PERIOD.as_secs_f64() * 100.0;
    println!(
        "| {singers:>7} | {listeners:>9} | {:>10.1} µs | {:>9.1} µs | {pct:>12.2} % |",
        mean.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without
    // it, as a smoke test: one short run, no table.
    if !std::env::args().any(|a| a == "--bench") {
        let _ = bench_engine(2, 0, false);
        let _ = bench_engine(2, 0, true);
        return;
    }
    println!(
        "duetbox engine, one {} ms period = {} frames at 48 kHz",
        5, PERIOD_SAMPLES
    );
    println!("return mixes: Opus stereo, 10 ms frames, 128 kbit/s, complexity 5");
    println!();
    println!("| singers | listeners | mean / period | p99 / period | % of one core |");
    println!("|--------:|----------:|--------------:|-------------:|--------------:|");
    // DUETBOX_BENCH_ONLY=32x100 (or in-ear:32x100) runs one row (for profilers).
    let only = std::env::var("DUETBOX_BENCH_ONLY").ok();
    for singers in [2usize, 8, 32] {
        for listeners in [0u32, 30, 100] {
            if only
                .as_ref()
                .is_some_and(|o| *o != format!("{singers}x{listeners}"))
            {
                continue;
            }
            row(singers, listeners, false);
        }
    }
    println!();
    println!(
        "in-ear mode: the speakers hold the backing {} ms, each voice 0 to 100 ms; the phones' backing leads by {} ms",
        IN_EAR_VENUE_FRAMES / 48,
        IN_EAR_LEAD_FRAMES / 48
    );
    println!();
    println!("| singers | listeners | mean / period | p99 / period | % of one core |");
    println!("|--------:|----------:|--------------:|-------------:|--------------:|");
    for singers in [2usize, 8, 32] {
        for listeners in [0u32, 100] {
            if only
                .as_ref()
                .is_some_and(|o| *o != format!("in-ear:{singers}x{listeners}"))
            {
                continue;
            }
            row(singers, listeners, true);
        }
    }
    println!();
    let per_source = bench_receiver();
    println!(
        "receive cost per source (jitter buffer + Opus decode): {:.1} µs per 5 ms period = {:.2} % of one core",
        per_source.as_secs_f64() * 1e6,
        per_source.as_secs_f64() / PERIOD.as_secs_f64() * 100.0
    );
}
