//! The line-in: the venue's own karaoke player as the backing source.
//!
//! A thread of its own reads the capture PCM (`audio.line_in`, ALSA, in
//! [`output`](crate::output)) one period at a time, paced by the capture device's clock,
//! and hands each period to a [`LiveFeed`]: rubato's asynchronous resampler brings it to
//! the engine's 48 kHz, and its ratio is steered by how much backing audio waits ahead
//! of playout, so the capture clock and the output's (two crystals that never agree)
//! cannot drift apart; the queue stays at [`LiveFeed::target_frames`], a few periods.
//! This is the same thing a phone's jitter buffer does to its voice, for a source that
//! delivers evenly.
//!
//! The room starts it with a generation (the engine plays only that one) and stops it;
//! it opens the device only while started, so another program can use it otherwise. A
//! device that fails (unplugged, busy) is reported and tried again every
//! [`RETRY`]. Nothing here runs on the audio thread or the async runtime.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Adjustable, Async, FixedAsync, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use crate::audio::{AudioHandle, BackingChunk, BACKING_CHUNK_SAMPLES};
use crate::engine::SAMPLE_RATE_HZ;
use crate::output::AlsaCapture;

/// The capture period asked of the device, frames (5 ms at 48 kHz).
pub const CAPTURE_PERIOD_FRAMES: usize = 240;

/// Reads at most thrown away as the backlog of a device just opened (1 s).
const MAX_BACKLOG_READS: usize = 200;

/// How long a failed device waits before it is opened again.
pub const RETRY: Duration = Duration::from_secs(2);

/// How far the resampling ratio may stray from the nominal one: ±0.2 %, 3.5 cents of
/// pitch at most (crystals differ by 0.01 % or so; a source 0.2 % off is broken).
const MAX_RATIO_DEVIATION: f64 = 0.002;

/// Seconds over which the measured fill is averaged (the queue's level jumps by a chunk
/// at every push and pull; the average is the level).
const FILL_AVERAGE_S: f64 = 0.5;

/// Proportional gain: relative ratio change per frame of fill error. A period's error
/// (240 frames) moves the ratio by 0.05 %, which removes it in about ten seconds: slow
/// enough to be inaudible, fast enough for any crystal.
const GAIN_P: f64 = 0.0005 / 240.0;

/// Integral gain, per frame of error per second: what holds a constant drift.
const GAIN_I: f64 = GAIN_P / 8.0;

/// How long after a start the feed trims instead of steering: a capture often starts
/// with a burst (what the device or sound server buffered while it opened), and
/// steering it away at 0.2 % would take many seconds of late backing.
const SETTLE_S: f64 = 3.0;

/// Fill above the target at which the feed stops steering and drops input until the
/// queue is back (the output stopped taking backing, or stalled), frames (200 ms).
const OVERFLOW_FRAMES: usize = 9_600;

/// What the room asks of the line-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineInCommand {
    /// Capture, as this generation.
    Start {
        /// The generation its audio carries.
        generation: u32,
    },
    /// Stop capturing and close the device.
    Stop,
}

/// What the line-in tells the room.
#[derive(Clone, Debug, PartialEq)]
pub enum LineInEvent {
    /// The device is open and its audio on the way.
    Started {
        /// For which generation.
        generation: u32,
        /// The device's rate.
        rate: u32,
    },
    /// The device failed (it is tried again every [`RETRY`]).
    Failed {
        /// For which generation.
        generation: u32,
        /// Why, naming the device and the step.
        detail: String,
    },
}

/// Counts of what a [`LiveFeed`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FeedStats {
    /// Frames pushed.
    pub frames_out: u64,
    /// Input frames thrown away because the queue was far too full.
    pub frames_dropped: u64,
    /// Input frames thrown away while settling after a start (a burst at the start).
    pub frames_trimmed: u64,
    /// Chunks the backing queue refused (it was full).
    pub chunks_refused: u64,
    /// The current ratio relative to nominal (above 1: stretching, the queue was low).
    pub ratio: f64,
    /// The averaged queue level, frames.
    pub fill: f64,
}

/// Drift correction for a live source: see the module docs. Pure: time is the frames it
/// is given; the queue's level is what the caller measures.
pub struct LiveFeed {
    resampler: Async<f32>,
    chunk_frames: usize,
    target_frames: usize,
    fill_average: Option<f64>,
    integral: f64,
    position: u64,
    resampled: Vec<f32>,
    stats: FeedStats,
    dropping: bool,
    /// Input frames since the last start (the settling time is counted in them).
    since_start: u64,
}

impl LiveFeed {
    /// A feed for a source at `rate` Hz delivering `chunk_frames` at a time, that keeps
    /// about `target_frames` queued ahead of playout.
    pub fn new(rate: u32, chunk_frames: usize, target_frames: usize) -> Result<LiveFeed, String> {
        let params = SincInterpolationParameters {
            sinc_len: 128,
            f_cutoff: None,
            oversampling_factor: 128,
            interpolation: SincInterpolationType::Cubic,
            window: WindowFunction::BlackmanHarris2,
        };
        let resampler = Async::<f32>::new_sinc(
            f64::from(SAMPLE_RATE_HZ) / f64::from(rate.max(1)),
            1.0 + 2.0 * MAX_RATIO_DEVIATION,
            &params,
            chunk_frames,
            2,
            FixedAsync::Input,
        )
        .map_err(|e| format!("line-in resampler for {rate} Hz: {e}"))?;
        let resampled = vec![0.0; 2 * resampler.output_frames_max()];
        Ok(LiveFeed {
            resampler,
            chunk_frames,
            target_frames,
            fill_average: None,
            integral: 0.0,
            position: 0,
            resampled,
            stats: FeedStats {
                ratio: 1.0,
                ..FeedStats::default()
            },
            dropping: false,
            since_start: 0,
        })
    }

    /// The level the feed steers the queue to, frames.
    pub fn target_frames(&self) -> usize {
        self.target_frames
    }

    /// What it did so far.
    pub fn stats(&self) -> FeedStats {
        self.stats
    }

    /// Takes one chunk of the source (`2 * chunk_frames` interleaved stereo samples),
    /// given `queued` frames already waiting ahead of playout at this instant (measured
    /// continuously: what the output last left queued less what it has played since, so
    /// that the level does not beat between the source's pushes and the output's pulls),
    /// and hands the resampled audio of `generation` to `push` (which returns false when
    /// the queue is full).
    pub fn feed(
        &mut self,
        generation: u32,
        stereo: &[f32],
        queued: f64,
        mut push: impl FnMut(BackingChunk) -> bool,
    ) -> Result<(), String> {
        let prime = self.steer(queued)?;
        if self.dropping {
            self.stats.frames_dropped += self.chunk_frames as u64;
            return Ok(());
        }
        let settling = (self.since_start as f64) < SETTLE_S * f64::from(SAMPLE_RATE_HZ);
        self.since_start += self.chunk_frames as u64;
        if settling && queued > (self.target_frames + 2 * self.chunk_frames) as f64 {
            self.stats.frames_trimmed += self.chunk_frames as u64;
            return Ok(());
        }
        // Starting (or restarting) with the queue short of the target: silence up to
        // it, so the latency is the target's from the first frame and the steering has
        // only drift to follow, never a fill to build.
        if prime > 0 {
            let silence = [0.0f32; BACKING_CHUNK_SAMPLES];
            let mut left = prime;
            while left > 0 {
                let frames = left.min(BACKING_CHUNK_SAMPLES / 2);
                let chunk =
                    BackingChunk::new(generation, self.position, &silence[..2 * frames], false);
                self.position += frames as u64;
                left -= frames;
                if !push(chunk) {
                    self.stats.chunks_refused += 1;
                }
            }
        }
        let frames_in = self.chunk_frames;
        let frames_out = self.resampled.len() / 2;
        let input = InterleavedSlice::new(&stereo[..2 * frames_in], 2, frames_in)
            .map_err(|e| format!("line-in resampler input: {e}"))?;
        let mut output = InterleavedSlice::new_mut(&mut self.resampled, 2, frames_out)
            .map_err(|e| format!("line-in resampler output: {e}"))?;
        let (_, written) = self
            .resampler
            .process_into_buffer(&input, &mut output, None)
            .map_err(|e| format!("line-in resampling: {e}"))?;
        for piece in self.resampled[..2 * written].chunks(BACKING_CHUNK_SAMPLES) {
            let chunk = BackingChunk::new(generation, self.position, piece, false);
            self.position += (piece.len() / 2) as u64;
            self.stats.frames_out += (piece.len() / 2) as u64;
            if !push(chunk) {
                self.stats.chunks_refused += 1;
            }
        }
        Ok(())
    }

    /// Updates the ratio from the queue's level (one call per chunk); returns the
    /// frames of silence to queue first (when starting short of the target).
    fn steer(&mut self, queued: f64) -> Result<usize, String> {
        let dt = self.chunk_frames as f64 / f64::from(SAMPLE_RATE_HZ);
        let alpha = (dt / FILL_AVERAGE_S).min(1.0);
        let mut prime = 0;
        // Too full: the output stopped taking backing (paused, stalled). Steering cannot
        // fix that; dropping input until the level is back can, without growing latency.
        let target = self.target_frames as f64;
        if queued > target + OVERFLOW_FRAMES as f64 {
            self.dropping = true;
        } else if self.dropping && queued <= target {
            self.dropping = false;
            self.fill_average = None;
        }
        let average = match self.fill_average {
            // Starting: the level is made the target's (see `feed`).
            None => {
                prime = (target - queued.max(0.0)).max(0.0) as usize;
                self.integral = 0.0;
                self.since_start = 0;
                queued.max(target)
            }
            Some(a) => a + alpha * (queued - a),
        };
        self.fill_average = Some(average);
        self.stats.fill = average;
        let error = average - target;
        // Windup guard: the integral alone never asks for more than the ratio may do.
        self.integral = (self.integral + error * dt)
            .clamp(-MAX_RATIO_DEVIATION / GAIN_I, MAX_RATIO_DEVIATION / GAIN_I);
        let ratio = (1.0 - GAIN_P * error - GAIN_I * self.integral)
            .clamp(1.0 - MAX_RATIO_DEVIATION, 1.0 + MAX_RATIO_DEVIATION);
        self.stats.ratio = ratio;
        self.resampler
            .set_resample_ratio_relative(ratio, true)
            .map_err(|e| format!("line-in ratio {ratio}: {e}"))?;
        Ok(prime)
    }
}

/// The line-in thread's handle; dropping it stops the thread.
pub struct LineIn {
    commands: std::sync::mpsc::Sender<LineInCommand>,
    join: Option<JoinHandle<()>>,
}

impl LineIn {
    /// Starts the thread for ALSA capture PCM `pcm`, feeding `audio`'s backing queue.
    /// It opens nothing until told to start. With a `realtime_priority` (the audio
    /// thread's, `audio.realtime_priority`) it runs under `SCHED_FIFO` one below the
    /// audio thread: it keeps only two capture periods (10 ms) of slack ahead of the
    /// output, which a thread at normal priority loses to the network's tasks on a busy
    /// Pi, and every such loss is a gap in the venue's backing.
    pub fn spawn(
        pcm: String,
        realtime_priority: u8,
        audio: AudioHandle,
        events: tokio::sync::mpsc::UnboundedSender<LineInEvent>,
    ) -> std::io::Result<LineIn> {
        let (tx, rx) = std::sync::mpsc::channel();
        let join = std::thread::Builder::new()
            .name("duetbox-line-in".into())
            .spawn(move || {
                if realtime_priority > 0 {
                    let priority = realtime_priority.saturating_sub(1).max(1);
                    match crate::audio::make_realtime(priority) {
                        Ok(()) => tracing::info!(priority, "line-in thread is real-time"),
                        Err(e) => tracing::warn!(priority, error = %e,
                            "real-time scheduling refused; the line-in runs at normal priority"),
                    }
                }
                run(&pcm, &rx, &audio, &events)
            })?;
        Ok(LineIn {
            commands: tx,
            join: Some(join),
        })
    }

    /// Hands a command to the thread (never blocks).
    pub fn send(&self, command: LineInCommand) {
        let _ = self.commands.send(command);
    }
}

impl Drop for LineIn {
    fn drop(&mut self) {
        let (tx, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

/// The level a live source keeps queued: what the audio thread holds back anyway (it
/// tops its own queue up to four engine periods) and two of the source's deliveries
/// (`chunk_frames`: a capture period, a feed's packet) of slack.
pub(crate) fn target_frames(audio: &AudioHandle, chunk_frames: usize) -> usize {
    4 * audio.engine_period_frames + 2 * chunk_frames
}

fn run(
    pcm: &str,
    commands: &Receiver<LineInCommand>,
    audio: &AudioHandle,
    events: &tokio::sync::mpsc::UnboundedSender<LineInEvent>,
) {
    let mut started: Option<u32> = None;
    loop {
        let Some(generation) = started else {
            match commands.recv() {
                Ok(LineInCommand::Start { generation }) => started = Some(generation),
                Ok(LineInCommand::Stop) => {}
                Err(_) => return,
            }
            continue;
        };
        started = match capture(pcm, generation, commands, audio, events) {
            Next::Stop => None,
            Next::Quit => return,
        };
    }
}

enum Next {
    Stop,
    Quit,
}

/// Captures as `generation` until told otherwise; reopens a failed device every
/// [`RETRY`].
fn capture(
    pcm: &str,
    mut generation: u32,
    commands: &Receiver<LineInCommand>,
    audio: &AudioHandle,
    events: &tokio::sync::mpsc::UnboundedSender<LineInEvent>,
) -> Next {
    let mut last_failure: Option<String> = None;
    loop {
        let opened = AlsaCapture::open(pcm, CAPTURE_PERIOD_FRAMES).and_then(|device| {
            let target = target_frames(audio, device.period_frames());
            let feed = LiveFeed::new(device.rate(), device.period_frames(), target)?;
            Ok((device, feed))
        });
        let failure = match opened {
            Ok((mut device, mut feed)) => {
                last_failure = None;
                tracing::info!(
                    pcm,
                    generation,
                    rate = device.rate(),
                    period_frames = device.period_frames(),
                    target_frames = feed.target_frames(),
                    "line-in capturing"
                );
                let _ = events.send(LineInEvent::Started {
                    generation,
                    rate: device.rate(),
                });
                let mut stereo = vec![0.0; 2 * device.period_frames()];
                // What the device (or its sound server) buffered while it opened comes
                // first, in a burst: read it away until a read has to wait for its
                // period, so the feed starts in step with real time.
                let period = Duration::from_secs_f64(
                    device.period_frames() as f64 / f64::from(device.rate().max(1)),
                );
                let mut drained = 0usize;
                while drained < MAX_BACKLOG_READS {
                    let before = audio.clock.now();
                    if device.read(&mut stereo).is_err() {
                        break;
                    }
                    drained += 1;
                    if audio.clock.now().saturating_sub(before) >= period / 2 {
                        break;
                    }
                }
                // What the resampler makes of one capture period.
                let chunk_frames = device.period_frames() * SAMPLE_RATE_HZ as usize
                    / device.rate().max(1) as usize;
                let mut result = None;
                let mut reads = 0u64;
                while result.is_none() {
                    match commands.try_recv() {
                        Ok(LineInCommand::Start { generation: g }) => {
                            // A new generation (a switch back and forth): same device,
                            // the engine drops what is left of the old one.
                            generation = g;
                        }
                        Ok(LineInCommand::Stop) => return stopped(pcm, &device, &feed, Next::Stop),
                        Err(TryRecvError::Disconnected) => {
                            return stopped(pcm, &device, &feed, Next::Quit)
                        }
                        Err(TryRecvError::Empty) => {}
                    }
                    if let Err(e) = device.read(&mut stereo) {
                        result = Some(e);
                        break;
                    }
                    let queued = queued_frames(audio, chunk_frames);
                    reads += 1;
                    if reads.is_multiple_of(200) {
                        let stats = feed.stats();
                        tracing::debug!(
                            generation,
                            queued,
                            fill = stats.fill,
                            ratio = stats.ratio,
                            "line-in"
                        );
                    }
                    if let Err(e) = feed.feed(generation, &stereo, queued, |chunk| {
                        audio.backing.push(chunk).is_ok()
                    }) {
                        result = Some(e);
                    }
                }
                let _ = stopped(pcm, &device, &feed, Next::Stop);
                result.unwrap_or_default()
            }
            Err(e) => e,
        };
        // The same failure again (the device is still missing) is not news.
        if last_failure.as_deref() != Some(failure.as_str()) {
            tracing::warn!(pcm, generation, error = %failure, "line-in failed; retrying every 2 s");
            let _ = events.send(LineInEvent::Failed {
                generation,
                detail: failure.clone(),
            });
            last_failure = Some(failure);
        }
        match commands.recv_timeout(RETRY) {
            Ok(LineInCommand::Start { generation: g }) => generation = g,
            Ok(LineInCommand::Stop) => return Next::Stop,
            Err(RecvTimeoutError::Disconnected) => return Next::Quit,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Logs what a capture run did and passes `next` on (the device closes when dropped).
fn stopped(pcm: &str, device: &AlsaCapture, feed: &LiveFeed, next: Next) -> Next {
    let stats = feed.stats();
    tracing::info!(
        pcm,
        frames = stats.frames_out,
        dropped = stats.frames_dropped,
        trimmed = stats.frames_trimmed,
        refused = stats.chunks_refused,
        overruns = device.overruns(),
        ratio = stats.ratio,
        "line-in stopped"
    );
    next
}

/// Backing frames waiting ahead of playout now: what the engine held after its last
/// period, less what has played since, and the chunks not yet taken (a line-in's are
/// about `chunk_frames` each).
pub(crate) fn queued_frames(audio: &AudioHandle, chunk_frames: usize) -> f64 {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &audio.counters;
    // The two are stored one after the other: read until a period did not end between.
    let (engine, at_us) = loop {
        let at_us = counters.backing_queued_at_us.load(Relaxed);
        let engine = counters.backing_queued_frames.load(Relaxed);
        if counters.backing_queued_at_us.load(Relaxed) == at_us {
            break (engine, at_us);
        }
    };
    let played = audio
        .clock
        .now()
        .saturating_sub(Duration::from_micros(at_us))
        .as_secs_f64()
        * f64::from(SAMPLE_RATE_HZ);
    engine as f64 + (audio.backing.len() * chunk_frames) as f64 - played
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testkit::tone_level;

    /// Runs a source at `source_rate` (as the consumer's clock sees it) into a queue
    /// drained at 48 kHz for `seconds`; returns the queue levels seen once a second, the
    /// feed's stats and the consumed audio's left channel.
    fn simulate(
        source_rate: f64,
        nominal_rate: u32,
        seconds: usize,
    ) -> (Vec<usize>, FeedStats, Vec<f32>) {
        let chunk = 240;
        let target = 4 * 240 + 2 * 240;
        let mut feed = LiveFeed::new(nominal_rate, chunk, target).expect("feed");
        let mut queue: std::collections::VecDeque<f32> = std::collections::VecDeque::new();
        let mut consumed = Vec::new();
        let mut levels = Vec::new();
        // Virtual time in consumer frames; the source delivers a chunk every
        // chunk / source_rate seconds, the consumer takes 240 frames every 5 ms.
        let mut next_source = 0.0f64;
        let mut phase = 0.0f64;
        let step = chunk as f64 / source_rate * 48_000.0;
        let mut period = 0usize;
        let periods = seconds * 200;
        let mut stereo = vec![0.0f32; 2 * chunk];
        while period < periods {
            let now = (period * 240) as f64;
            if next_source <= now {
                for f in 0..chunk {
                    let v = (0.25 * (phase * std::f64::consts::TAU).sin()) as f32;
                    phase = (phase + 440.0 / f64::from(nominal_rate)).fract();
                    stereo[2 * f] = v;
                    stereo[2 * f + 1] = v;
                }
                // The consumer took its last period at the multiple of 240 before this
                // instant, and has been playing it out since.
                let last_period = (period.max(1) - 1) as f64 * 240.0;
                let played = (next_source - last_period).max(0.0);
                let queued = (queue.len() / 2) as f64 - played;
                feed.feed(1, &stereo, queued, |c| {
                    queue.extend(c.audio().samples.iter().copied());
                    true
                })
                .expect("feed");
                next_source += step;
                continue;
            }
            for _ in 0..240 {
                let (l, _r) = match (queue.pop_front(), queue.pop_front()) {
                    (Some(l), Some(r)) => (l, r),
                    _ => (0.0, 0.0),
                };
                consumed.push(l);
            }
            period += 1;
            if period.is_multiple_of(200) {
                levels.push(queue.len() / 2);
            }
        }
        (levels, feed.stats(), consumed)
    }

    fn assert_steady(name: &str, levels: &[usize], consumed: &[f32], target: usize) {
        // After the first ten seconds the level sits near the target...
        for (s, &level) in levels.iter().enumerate().skip(10) {
            assert!(
                level.abs_diff(target) <= 480,
                "{name}: at {s} s the queue held {level} frames (target {target}): {levels:?}"
            );
        }
        // ...and the tone plays whole: every 100 ms window after the start holds it at
        // its level (a gap or a glitch would show as a weak window).
        for (w, window) in consumed.chunks(4_800).enumerate().skip(10) {
            let level = tone_level(window, 440.0);
            assert!(
                (0.23..=0.27).contains(&level),
                "{name}: window {w} holds the tone at {level}"
            );
        }
    }

    #[test]
    fn a_capture_clock_half_a_permille_fast_or_slow_is_followed_without_a_gap() {
        for ppm in [-500.0, 0.0, 500.0] {
            let (levels, stats, consumed) = simulate(48_000.0 * (1.0 + ppm * 1e-6), 48_000, 60);
            let name = format!("{ppm} ppm");
            assert_steady(&name, &levels, &consumed, 1_440);
            assert_eq!(stats.frames_dropped, 0, "{name}");
            // The ratio found is the drift's: a fast source is shrunk.
            assert!(
                (stats.ratio - (1.0 - ppm * 1e-6)).abs() < 2e-4,
                "{name}: ratio {}",
                stats.ratio
            );
        }
    }

    #[test]
    fn a_44_1_khz_line_in_is_resampled_to_the_engine_rate() {
        let (levels, stats, consumed) = simulate(44_100.0, 44_100, 40);
        assert_steady("44.1 kHz", &levels, &consumed, 1_440);
        assert_eq!(stats.frames_dropped, 0);
    }

    #[test]
    fn a_queue_that_stops_draining_is_not_grown_without_end() {
        let mut feed = LiveFeed::new(48_000, 240, 1_440).expect("feed");
        let stereo = vec![0.1f32; 480];
        let mut queued = 0usize;
        // Nobody drains: the feed pushes until the overflow mark, then drops.
        for _ in 0..1_000 {
            feed.feed(1, &stereo, queued as f64, |c| {
                queued += c.audio().samples.len() / 2;
                true
            })
            .expect("feed");
        }
        let stats = feed.stats();
        assert!(
            queued <= 1_440 + OVERFLOW_FRAMES + 2 * 240,
            "the queue grew to {queued} frames"
        );
        assert!(stats.frames_dropped > 0, "{stats:?}");
    }
}
