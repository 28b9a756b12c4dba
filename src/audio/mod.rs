//! The real-time audio thread: runs the engine once per period into one [`Sink`].
//!
//! Owns the thread, the lock-free queues between it and the network tasks, and the
//! heartbeat that the service watchdog reads. Knows no device API (the sink does) and
//! no network (the queues carry plain bytes and ids).
//!
//! Invariants: in steady state the loop allocates nothing, takes no lock and logs
//! nothing. Packets and commands arrive through bounded lock-free queues
//! (`crossbeam_queue::ArrayQueue`: preallocated, many producers, slots held by value so
//! a push is a copy, never an allocation); encoded frames, events and stats leave the
//! same way. A full queue drops and counts, never blocks. The only blocking call is the
//! sink's write, which is how the device clock paces the loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::engine::codec::MAX_ENCODED_BYTES;
use crate::engine::jitter::MAX_PAYLOAD_BYTES;
use crate::engine::mixer::MAX_ENVELOPE;
use crate::engine::{
    BackingAudio, BackingPosition, Command, Engine, EngineConfig, Event, Level, MixId, Output,
    ReceiverStats, RtpAudio, SingerId, Tap, SAMPLE_RATE_HZ,
};
use crate::record::{RecordLink, RecordStage};

pub mod bridge;
pub mod pacing;

use bridge::PeriodBridge;

/// Packets the audio thread can have waiting (about 1 s of 20 ms packets from 20 phones).
pub const PACKET_QUEUE: usize = 1024;

/// Encoded frames waiting for the network (a few periods of every mix).
pub const FRAME_QUEUE: usize = 1024;

/// Commands and events waiting either way.
pub const CONTROL_QUEUE: usize = 256;

/// How often the thread publishes stats and levels.
pub const STATS_INTERVAL: Duration = Duration::from_millis(100);

/// Where the audio goes: the only device-facing seam of the thread.
pub trait Sink: Send {
    /// Frames per period the device wants.
    fn period_frames(&self) -> usize;
    /// Writes one period of interleaved stereo, blocking until the device has room:
    /// this is what paces the loop. Recovers from underruns itself (and counts them).
    fn write(&mut self, stereo: &[f32]) -> Result<(), SinkError>;
    /// Underruns recovered so far.
    fn xruns(&self) -> u64;
    /// A short name for logs and status ("alsa:hw:1", "null").
    fn describe(&self) -> String;
    /// How long until a frame written now is heard, frames (ALSA's delay), if the
    /// device says. Called once per write; must not block or allocate.
    fn delay_frames(&mut self) -> Option<u64> {
        None
    }
}

/// A sink failure the thread cannot recover from.
#[derive(Debug, thiserror::Error)]
#[error("audio output failed: {0}")]
pub struct SinkError(pub String);

/// One RTP packet on its way to the audio thread.
#[derive(Clone)]
pub struct PacketSlot {
    /// Who sent it.
    pub singer: SingerId,
    /// RTP SSRC.
    pub ssrc: u32,
    /// RTP sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Arrival, on the thread's clock ([`AudioClock`]).
    pub at: Duration,
    len: u16,
    data: [u8; MAX_PAYLOAD_BYTES],
}

impl PacketSlot {
    /// Copies a payload into a slot; `None` if it is larger than any valid packet
    /// (the caller counts it; the engine would drop it anyway).
    pub fn new(
        singer: SingerId,
        ssrc: u32,
        sequence: u16,
        timestamp: u32,
        at: Duration,
        payload: &[u8],
    ) -> Option<PacketSlot> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return None;
        }
        let mut slot = PacketSlot {
            singer,
            ssrc,
            sequence,
            timestamp,
            at,
            len: payload.len() as u16,
            data: [0; MAX_PAYLOAD_BYTES],
        };
        slot.data[..payload.len()].copy_from_slice(payload);
        Some(slot)
    }
}

/// Interleaved stereo samples in one [`BackingChunk`] (20 ms).
pub const BACKING_CHUNK_SAMPLES: usize = 1920;

/// Up to 20 ms of backing-track audio, by value so queueing never allocates; tagged as
/// [`BackingAudio`] is (generation, song frame, last).
#[derive(Clone)]
pub struct BackingChunk {
    generation: u32,
    position: u64,
    last: bool,
    len: usize,
    data: [f32; BACKING_CHUNK_SAMPLES],
}

impl BackingChunk {
    /// A chunk of up to [`BACKING_CHUNK_SAMPLES`] interleaved stereo samples (the rest
    /// of `stereo` is ignored; the caller splits long buffers) of `generation`, whose
    /// first frame is song frame `position`; `last` if it ends the song.
    pub fn new(generation: u32, position: u64, stereo: &[f32], last: bool) -> BackingChunk {
        let len = stereo.len().min(BACKING_CHUNK_SAMPLES) & !1;
        let mut data = [0.0; BACKING_CHUNK_SAMPLES];
        data[..len].copy_from_slice(&stereo[..len]);
        BackingChunk {
            generation,
            position,
            last: last && len == stereo.len(),
            len,
            data,
        }
    }

    /// Its generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The chunk as the engine takes it.
    pub fn audio(&self) -> BackingAudio<'_> {
        BackingAudio {
            generation: self.generation,
            position: self.position,
            samples: &self.data[..self.len],
            last: self.last,
        }
    }
}

/// One encoded frame of a mix, on its way to the network.
#[derive(Clone)]
pub struct FrameSlot {
    /// Which mix.
    pub mix: MixId,
    /// Mix time of the first frame.
    pub start: u64,
    /// Duration, frames.
    pub samples: u32,
    len: u16,
    data: [u8; MAX_ENCODED_BYTES],
    envelope_len: u8,
    envelope: [u8; MAX_ENVELOPE],
}

impl FrameSlot {
    /// The Opus payload.
    pub fn payload(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }

    /// Its level every 2.5 ms (`engine::mixer::envelope`).
    pub fn envelope(&self) -> &[u8] {
        &self.envelope[..self.envelope_len as usize]
    }
}

/// What the thread reports about one singer every [`STATS_INTERVAL`].
#[derive(Clone, Copy, Debug)]
pub struct SingerReport {
    /// Who.
    pub singer: SingerId,
    /// Receive pipeline stats.
    pub stats: ReceiverStats,
    /// Voice level since the last report.
    pub voice: Level,
}

/// Messages from the audio thread to the control plane.
#[derive(Clone, Copy, Debug)]
pub enum Report {
    /// An engine event (a refused command).
    Event(Event),
    /// One singer's stats.
    Singer(SingerReport),
    /// The venue output level since the last report.
    Venue(Level),
    /// Where the backing was at the start of the period that begins playing at `at`
    /// (on the [`AudioClock`]; the device's own buffer comes on top).
    Backing {
        /// Generation, song frame and mix time.
        position: BackingPosition,
        /// When the period was rendered.
        at: Duration,
        /// How much later the outputs carry it (the limiter's look-ahead), frames.
        latency_frames: u32,
        /// How much later than `at` says the device period holding it is written: a
        /// device period longer than the engine's stamps a burst's renders earlier than
        /// they are written (see the loop), frames.
        bridge_frames: u32,
    },
}

/// Counters the thread keeps in atomics (read by anyone, any time).
#[derive(Debug, Default)]
pub struct Counters {
    /// Periods rendered: the heartbeat the watchdog watches.
    pub periods: AtomicU64,
    /// Output underruns recovered.
    pub xruns: AtomicU64,
    /// Packets dropped because the packet queue was full.
    pub packets_dropped: AtomicU64,
    /// Frames dropped because the frame queue was full.
    pub frames_dropped: AtomicU64,
    /// Reports dropped because nobody read them.
    pub reports_dropped: AtomicU64,
    /// The period the output device granted, frames (0 until it is open). The engine
    /// renders its own configured period; [`bridge::PeriodBridge`] joins the two.
    pub device_period_frames: AtomicU64,
    /// How long until a frame written now is heard, frames, as the device said after
    /// the last write (0 when it does not say: a timer-paced sink plays on write).
    pub output_delay_frames: AtomicU64,
    /// Stereo frames of backing the engine held after the last period (not counting the
    /// chunks still in [`AudioHandle::backing`]), and when ([`AudioClock`] time, µs):
    /// what a live source steers by.
    pub backing_queued_frames: AtomicU64,
    /// See [`Counters::backing_queued_frames`].
    pub backing_queued_at_us: AtomicU64,
    /// Backing frames that were due but missing, played as silence: a live source
    /// (the line-in) that could not keep up ([`crate::engine::EngineStats`]; brought up
    /// to date every [`STATS_INTERVAL`]).
    pub backing_underrun_frames: AtomicU64,
    /// Test-only fault switch: while set, the thread stalls (the watchdog must notice).
    pub stall: AtomicBool,
}

/// The monotonic clock shared by the network tasks (arrival times) and the audio thread
/// (`now`): a `Duration` since one fixed `Instant`.
#[derive(Clone, Copy, Debug)]
pub struct AudioClock {
    epoch: Instant,
}

impl AudioClock {
    /// A clock whose zero is now.
    #[expect(clippy::disallowed_methods, reason = "the driver owns the clock")]
    pub fn start() -> AudioClock {
        AudioClock {
            epoch: Instant::now(),
        }
    }

    /// The instant `at` (a time on this clock) stands for: to sleep until a deadline
    /// computed on this clock.
    pub fn instant_at(&self, at: Duration) -> Instant {
        self.epoch + at
    }

    /// Time since the epoch.
    #[expect(clippy::disallowed_methods, reason = "the driver owns the clock")]
    pub fn now(&self) -> Duration {
        Instant::now().duration_since(self.epoch)
    }
}

/// The handles the rest of the box holds to talk to the audio thread.
#[derive(Clone)]
pub struct AudioHandle {
    /// Packets in.
    pub packets: Arc<ArrayQueue<PacketSlot>>,
    /// Commands in.
    pub commands: Arc<ArrayQueue<Command>>,
    /// Backing-track audio in.
    pub backing: Arc<ArrayQueue<BackingChunk>>,
    /// Encoded frames out.
    pub frames: Arc<ArrayQueue<FrameSlot>>,
    /// Events and stats out.
    pub reports: Arc<ArrayQueue<Report>>,
    /// Counters and the heartbeat.
    pub counters: Arc<Counters>,
    /// The clock arrival times must be measured on.
    pub clock: AudioClock,
    /// The period the engine renders, frames (the configured one; the device's may
    /// differ, see [`Counters::device_period_frames`]).
    pub engine_period_frames: usize,
    /// The recorder's side: chunks of every source, staged while a recording runs
    /// ([`crate::record`]).
    pub record: RecordLink,
    stop: Arc<AtomicBool>,
}

impl AudioHandle {
    /// Queues a packet; counts and drops it if the queue is full.
    pub fn push_packet(&self, slot: PacketSlot) {
        if self.packets.push(slot).is_err() {
            self.counters
                .packets_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a command; returns it if the queue is full.
    pub fn command(&self, command: Command) -> Result<(), Command> {
        self.commands.push(command)
    }

    /// Asks the thread to finish its current period and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// How much nicer than the box's other threads its background workers run (the song
/// decoder, the recorder): both work ahead or behind through buffers of a second or
/// more, while the network tasks that send each phone its mix every 20 ms must not
/// wait for them.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`] (Linux: a thread's
/// own niceness). Seen on two cores shared with two browsers: the decoder filling its
/// first second and the recorder finishing a song held the control task back 40 to
/// 200 ms, so every phone's mix frames went out in a burst (or were dropped) at once,
/// and the phones' jitter buffers grew.
pub fn make_background() -> std::io::Result<()> {
    // SAFETY: setpriority only reads its plain integers, and PRIO_PROCESS with a
    // thread id changes that one thread.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, thread_id(), BACKGROUND_NICE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's kernel id (what `setpriority` takes for one thread).
fn thread_id() -> libc::id_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    #[allow(unsafe_code)]
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    tid as libc::id_t
}

/// Puts the calling thread under `SCHED_FIFO` at `priority` (1 to 99). Call it on the
/// audio thread (for example from the `make_sink` closure of [`spawn`]). Fails with
/// `EPERM` unless the process may: root, `CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of at
/// least `priority` (the systemd unit's `LimitRTPRIO=`).
pub fn make_realtime(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pthread_self() is the calling thread's own valid handle, and `param` is a
    // live, initialised sched_param that the call only reads.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Starts the audio thread. `make_sink` runs on the new thread, so the device handle
/// is created where it is used. Returns the handle and the thread's join handle, whose
/// result is the sink error that ended it (if any).
pub fn spawn<F>(
    config: EngineConfig,
    make_sink: F,
) -> std::io::Result<(AudioHandle, JoinHandle<Result<(), SinkError>>)>
where
    F: FnOnce() -> Result<Box<dyn Sink>, SinkError> + Send + 'static,
{
    let handle = AudioHandle {
        packets: Arc::new(ArrayQueue::new(PACKET_QUEUE)),
        commands: Arc::new(ArrayQueue::new(CONTROL_QUEUE)),
        backing: Arc::new(ArrayQueue::new(CONTROL_QUEUE)),
        frames: Arc::new(ArrayQueue::new(FRAME_QUEUE)),
        reports: Arc::new(ArrayQueue::new(CONTROL_QUEUE * 4)),
        counters: Arc::new(Counters::default()),
        clock: AudioClock::start(),
        engine_period_frames: config.period_samples,
        record: RecordLink::new(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let thread_handle = handle.clone();
    let join = std::thread::Builder::new()
        .name("duetbox-audio".into())
        .spawn(move || run(config, make_sink, thread_handle))?;
    Ok((handle, join))
}

fn run<F>(config: EngineConfig, make_sink: F, handle: AudioHandle) -> Result<(), SinkError>
where
    F: FnOnce() -> Result<Box<dyn Sink>, SinkError>,
{
    let mut sink = make_sink()?;
    let device_period = sink.period_frames();
    handle
        .counters
        .device_period_frames
        .store(device_period as u64, Ordering::Relaxed);
    let engine_period = config.period_samples;
    let mut engine = Engine::new(config);
    let mut bridge = PeriodBridge::new(engine_period, device_period);
    let mut pacing = pacing::DevicePacing::new(device_period);
    let mut stage = RecordStage::new();
    let mut next_report = Duration::ZERO;
    while !handle.stop.load(Ordering::Acquire) {
        while handle.counters.stall.load(Ordering::Relaxed) {
            // Test-only fault: behave like a hung thread (no periods, no heartbeat).
            std::hint::spin_loop();
            if handle.stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        // A device period other than the engine's takes several renders back to back
        // (or none), all from the packets that have arrived by now. Stamping them all
        // with this instant would make every voice's delay swing by a device period
        // within each burst (and the jitter buffers splice at every swing); stamping
        // them with when they will play would count packets as missing that cannot have
        // arrived yet. So the stamps step one engine period per render on a timeline
        // that ends one device period before this instant, where the next write's first
        // frame stands: smooth, and never after this instant, as with a device that
        // takes the engine's own period (one render stamped with the plain instant). A
        // timeline ending at the instant itself put the last render of a burst up to an
        // engine period ahead of what had arrived, which each jitter buffer's one-period
        // allowance does not cover: a voice whose packets came at the edge ran dry every
        // 320 ms (1024 and 960 frames beating). The instant is the device's pace, not
        // the thread's wake-up (see [`pacing`]).
        let woke = handle.clock.now();
        let burst_end = pacing.stamp(woke);
        let lead_frames = if device_period == engine_period {
            0
        } else {
            device_period
        };
        while bridge.needs_render() {
            let now = frames_after(burst_end, bridge.held_frames(), lead_frames);
            render(&mut engine, &handle, now, bridge.render_slot());
            stage.add(&handle.record, &engine.period_sources());
            bridge.rendered();
            if now >= next_report {
                next_report = now + STATS_INTERVAL;
                handle
                    .counters
                    .backing_underrun_frames
                    .store(engine.stats().backing_underrun_frames, Ordering::Relaxed);
                report_levels(&mut engine, &handle);
                let position = engine.backing_position();
                let latency_frames = engine.output_latency_frames() as u32;
                report(
                    &handle,
                    Report::Backing {
                        position,
                        // When the speakers play it goes by the write's real instant
                        // (the device's delay is read after the write), not the
                        // paced stamp.
                        at: now + woke.saturating_sub(burst_end),
                        latency_frames,
                        bridge_frames: lead_frames as u32,
                    },
                );
            }
        }
        sink.write(bridge.device_period())?;
        bridge.written();
        handle.counters.xruns.store(sink.xruns(), Ordering::Relaxed);
        if let Some(delay) = sink.delay_frames() {
            handle
                .counters
                .output_delay_frames
                .store(delay, Ordering::Relaxed);
        }
        handle.counters.periods.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One engine period: what arrived goes in, the period is rendered into `venue`, the
/// encoded frames and events go out.
fn render(engine: &mut Engine, handle: &AudioHandle, now: Duration, venue: &mut [f32]) {
    while let Some(slot) = handle.packets.pop() {
        let rtp = RtpAudio {
            ssrc: slot.ssrc,
            sequence: slot.sequence,
            timestamp: slot.timestamp,
            payload: &slot.data[..slot.len as usize],
        };
        engine.handle_packet(slot.singer, rtp, slot.at);
    }
    while let Some(command) = handle.commands.pop() {
        engine.handle_command(command);
    }
    // The engine's queue holds 2 s, far more than the lead, 4 periods and a chunk: all
    // fits.
    while engine.backing_queued() < engine.backing_wanted() {
        let Some(chunk) = handle.backing.pop() else {
            break;
        };
        engine.push_backing(chunk.audio());
    }
    engine.render_period(now, venue);
    handle
        .counters
        .backing_queued_frames
        .store((engine.backing_queued() / 2) as u64, Ordering::Relaxed);
    handle
        .counters
        .backing_queued_at_us
        .store(now.as_micros() as u64, Ordering::Relaxed);
    while let Some(output) = engine.poll_output() {
        match output {
            Output::Frame {
                mix,
                start,
                samples,
                payload,
                envelope,
            } => {
                let mut slot = FrameSlot {
                    mix,
                    start,
                    samples: samples as u32,
                    len: payload.len() as u16,
                    data: [0; MAX_ENCODED_BYTES],
                    envelope_len: envelope.len() as u8,
                    envelope: [0; MAX_ENVELOPE],
                };
                slot.data[..payload.len()].copy_from_slice(payload);
                slot.envelope[..envelope.len()].copy_from_slice(envelope);
                if handle.frames.push(slot).is_err() {
                    handle
                        .counters
                        .frames_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Output::Event(event) => report(handle, Report::Event(event)),
        }
    }
}

/// `at` moved by `plus` minus `minus` frames of audio (never before zero).
fn frames_after(at: Duration, plus: usize, minus: usize) -> Duration {
    let ns = |frames: usize| frames as u64 * 1_000_000_000 / u64::from(SAMPLE_RATE_HZ);
    (at + Duration::from_nanos(ns(plus))).saturating_sub(Duration::from_nanos(ns(minus)))
}

/// Every seated singer's stats and voice level, and the venue level.
fn report_levels(engine: &mut Engine, handle: &AudioHandle) {
    for seat in 0..engine.seats() {
        if let Some((singer, stats, voice)) = engine.take_seat_report(seat) {
            report(
                handle,
                Report::Singer(SingerReport {
                    singer,
                    stats,
                    voice,
                }),
            );
        }
    }
    if let Some(level) = engine.take_level(Tap::Venue) {
        report(handle, Report::Venue(level));
    }
}

fn report(handle: &AudioHandle, report: Report) {
    if handle.reports.push(report).is_err() {
        handle
            .counters
            .reports_dropped
            .fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's niceness.
    fn niceness() -> i32 {
        // SAFETY: getpriority only reads its plain integers.
        #[allow(unsafe_code)]
        unsafe {
            libc::getpriority(libc::PRIO_PROCESS, thread_id())
        }
    }

    #[test]
    fn a_background_thread_runs_nicer_and_only_it() {
        let before = niceness();
        let (ok, nice) = std::thread::spawn(|| (make_background().is_ok(), niceness()))
            .join()
            .expect("the thread");
        assert!(ok, "lowering one's own priority needs no privilege");
        assert_eq!(nice, BACKGROUND_NICE, "the background thread");
        assert_eq!(
            niceness(),
            before,
            "the thread that spawned it keeps its own"
        );
    }
}
