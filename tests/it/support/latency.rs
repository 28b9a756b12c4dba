//! Latency by clicks, for the WHIP tests: a click source, finding a click in a recording
//! (onset, then cross-correlation against the click as sent), the venue WAV, and the
//! audio thread's heartbeat as the clock of that WAV.
//!
//! Convention (both ends of every measurement): a sample's instant is the instant of
//! the packet or period that carries it plus its offset in it. A sender hands a packet
//! over when its last sample is captured; a receiver can start playing a packet when
//! it arrives. With this anchor the difference of two instants is the delay a listener
//! who plays every packet on arrival would hear, independent of where in its packet the
//! click sits; packetisation and codec look-ahead on the box's side count, the
//! sending client's do not (its clicks are located in its own packets, decoded).
//!
//! Knows no box internals beyond the public heartbeat counter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use duetbox::audio::Counters;
use duetbox::engine::testkit::best_lag;
use duetbox::engine::SAMPLE_RATE_HZ;

use super::whip_client::{Recording, Source, FRAME_SAMPLES};

/// Length of one click: 2 ms.
pub const CLICK_SAMPLES: usize = 96;

/// Peak of a click, linear.
pub const CLICK_AMPLITUDE: f32 = 0.8;

/// The click's carrier: 3 kHz, six periods in 2 ms, well inside Opus' band.
const CLICK_HZ: f32 = 3000.0;

/// How far around the onset the cross-correlation looks: 10 ms either side.
const REFINE_FRAMES: usize = 480;

/// How often the heartbeat sampler looks (transitions come every period, 5 ms).
const HEARTBEAT_POLL: Duration = Duration::from_micros(500);

/// Sample `n` of the click: a Hann-windowed 3 kHz burst.
pub fn click_sample(n: usize) -> f32 {
    let phase = n as f32 / CLICK_SAMPLES as f32;
    let window = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * phase).cos();
    let carrier = (2.0 * std::f32::consts::PI * CLICK_HZ * n as f32 / SAMPLE_RATE_HZ as f32).sin();
    CLICK_AMPLITUDE * window * carrier
}

/// The frame index of click `i` of a [`click_source`].
pub fn click_frame(first_frame: u64, every_frames: u64, i: u64) -> u64 {
    first_frame + i * every_frames
}

/// Silence with `count` clicks, the first in frame `first_frame`, then one every
/// `every_frames` frames; each click is the last 2 ms of its 20 ms frame, so it is
/// captured just before its packet leaves (packetisation adds ~0).
pub fn click_source(first_frame: u64, every_frames: u64, count: u64) -> Source {
    Box::new(move |k| {
        let mut frame = vec![0.0; FRAME_SAMPLES];
        let is_click = k >= first_frame
            && (k - first_frame).is_multiple_of(every_frames)
            && (k - first_frame) / every_frames < count;
        if is_click {
            for (n, v) in frame[FRAME_SAMPLES - CLICK_SAMPLES..]
                .iter_mut()
                .enumerate()
            {
                *v = click_sample(n);
            }
        }
        frame
    })
}

/// The first index in `from..to` where `|x|` exceeds `threshold`.
pub fn onset(x: &[f32], from: usize, to: usize, threshold: f32) -> Option<usize> {
    let to = to.min(x.len());
    (from..to).find(|&i| x[i].abs() > threshold)
}

/// Where `template` starts in `x`: the onset (first `|x| > threshold` in `from..to`)
/// locates it roughly (`template_onset` is the onset's index in `template`), and
/// cross-correlation within ±10 ms of that pins it to the sample. Returns where
/// `template` starts in `x` and the normalised correlation there.
pub fn find_template(
    template: &[f32],
    template_onset: usize,
    x: &[f32],
    from: usize,
    to: usize,
    threshold: f32,
) -> Option<(usize, f32)> {
    let rough = onset(x, from, to, threshold)?;
    let lo = rough
        .saturating_sub(template_onset)
        .saturating_sub(REFINE_FRAMES);
    let window = x.get(lo..(lo + 2 * REFINE_FRAMES + template.len()).min(x.len()))?;
    let (lag, corr) = best_lag(template, window, 2 * REFINE_FRAMES);
    Some((lo + lag, corr))
}

/// Where the click template starts before the click's onset in the sender's audio.
pub const TEMPLATE_PRE: usize = 48;

/// Template length after the onset (5 ms).
pub const TEMPLATE_POST: usize = 240;

/// Normalised correlation a found click must reach against the click as sent.
pub const MATCH_MIN: f32 = 0.6;

/// The partner-return latency of each click a [`click_source`] sent (`first`, `every`,
/// `count` as given to it), in ms: from the click in the sender's own decoded packets
/// (`sent`) to the same click in what the partner received (`received`), looked for up
/// to `window` frames after the click's packet left. Clicks not found (or found below
/// [`MATCH_MIN`]) are left out.
pub fn partner_latencies_ms(
    sent: &Recording,
    received: &Recording,
    first: u64,
    every: u64,
    count: u64,
    window: usize,
) -> Vec<f64> {
    let received_left = received.left();
    let mut out = Vec::new();
    for i in 0..count {
        let frame = click_frame(first, every, i) as usize;
        // The click as the box decodes it: in the sender's own packets, after its
        // encoder's look-ahead, so possibly in the next packet.
        let Some(a_onset) = onset(
            &sent.pcm,
            frame * FRAME_SAMPLES,
            (frame + 2) * FRAME_SAMPLES,
            0.2,
        ) else {
            continue;
        };
        if a_onset < TEMPLATE_PRE || a_onset + TEMPLATE_POST > sent.pcm.len() {
            continue;
        }
        let template = &sent.pcm[a_onset - TEMPLATE_PRE..a_onset + TEMPLATE_POST];
        let (Some(a_at), Some(carrier_at)) = (
            sent.instant_of(a_onset - TEMPLATE_PRE),
            sent.instant_of(a_onset / FRAME_SAMPLES * FRAME_SAMPLES),
        ) else {
            continue;
        };
        let from = received.first_frame_at_or_after(carrier_at);
        if let Some((b_start, corr)) = find_template(
            template,
            TEMPLATE_PRE,
            &received_left,
            from,
            from + window,
            0.1,
        ) {
            if corr >= MATCH_MIN {
                if let Some(b_at) = received.instant_of(b_start) {
                    out.push(signed_ms(b_at, a_at));
                }
            }
        }
    }
    out
}

/// The audio thread's heartbeat (`counters.periods`) observed from a helper thread:
/// the instants at which the count was first seen at each new value.
pub struct HeartbeatSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, u64)>>,
}

impl HeartbeatSampler {
    /// Starts watching `counters` every [`HEARTBEAT_POLL`].
    pub fn start(counters: Arc<Counters>) -> HeartbeatSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = u64::MAX;
            while !stop_flag.load(Ordering::Relaxed) {
                let periods = counters.periods.load(Ordering::Relaxed);
                let at = Instant::now();
                if periods != last {
                    seen.push((at, periods));
                    last = periods;
                }
                std::thread::sleep(HEARTBEAT_POLL);
            }
            seen
        });
        HeartbeatSampler { stop, thread }
    }

    /// Stops and returns what was seen.
    pub fn stop(self) -> Heartbeat {
        self.stop.store(true, Ordering::Relaxed);
        Heartbeat {
            seen: self
                .thread
                .join()
                .expect("the heartbeat sampler does not panic"),
        }
    }
}

/// Heartbeat observations: (instant first seen, periods completed).
pub struct Heartbeat {
    seen: Vec<(Instant, u64)>,
}

impl Heartbeat {
    /// The instant the output's timeline starts, from the observations in `from..=to`;
    /// then period `n` (0-based) is written at `origin + (n - 1) * period`.
    ///
    /// Why: a paced sink (`null`, `wav`) writes period 0 and 1 at its start `t0`, then
    /// sleeps until `t0 + n * period` after writing period `n`, and the thread counts a
    /// period after its write returns, so the count becomes `n` at `t0 + (n - 1) *
    /// period`, just before period `n` is written. Each observation `(t, n)` bounds
    /// `t0 <= t - (n - 1) * period` (the count was seen after it changed, never before);
    /// the smallest bound over many polls is `t0` to a fraction of a millisecond. A sink
    /// that falls more than four periods behind restarts its timeline later, which only
    /// raises the bounds, so the minimum belongs to the timeline in force at `from`:
    /// start the window where the sample of interest cannot yet have been written.
    pub fn origin(&self, from: Instant, to: Instant, period: Duration) -> Option<Instant> {
        self.seen
            .iter()
            .filter(|(t, n)| *n >= 1 && *t >= from && *t <= to)
            .filter_map(|(t, n)| t.checked_sub(period * (*n as u32 - 1)))
            .min()
    }
}

/// `later - earlier` in milliseconds, negative if `later` is earlier.
pub fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        later.duration_since(earlier).as_secs_f64() * 1000.0
    } else {
        -(earlier.duration_since(later).as_secs_f64() * 1000.0)
    }
}

/// The median of `values` (sorted in place); `NaN` for none.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        // Four markers judged are common: the upper middle alone would be one marker.
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
