//! The pure audio core: packets and commands in; periods of audio, encoded return frames
//! and events out.
//!
//! # Model
//!
//! The engine holds a fixed number of *seats*, each a singer's receive pipeline
//! ([`receiver::Receiver`]: adaptive jitter buffer, Opus decoder, concealment, time-scale
//! control), personal mix, limiter and encoder; one backing source (stereo, pushed by the
//! caller, see *Backing* below); and the venue mix, which is also what listeners hear. Everything is allocated
//! in [`Engine::new`]; seats are reused.
//!
//! # Call order
//!
//! 1. [`Engine::handle_command`] for joins, leaves and mix changes, and
//!    [`Engine::handle_packet`] for every RTP packet, with its measured arrival time;
//!    [`Engine::push_backing`] for backing-track audio.
//! 2. [`Engine::render_period`] once per output period, with the time at which the
//!    period's first frame will be played: the output device paces this call.
//! 3. [`Engine::poll_output`] until `None`: encoded return frames and events.
//!
//! # Clocks
//!
//! Three clocks meet here. *Media time* is each phone's RTP clock (48 kHz, drifting up to
//! a few hundred ppm). *Mix time* counts frames rendered since start; the output device's
//! crystal advances it, and it stamps the encoded return frames. *Arrival time* (`at`,
//! `now`) is the caller's monotonic clock, passed in as a [`Duration`] since any epoch
//! the caller likes, the same epoch for both. The engine never reads a clock, never
//! sleeps and never spawns: ten simulated minutes run in seconds in the tests.
//!
//! # Backing
//!
//! Backing audio comes in tagged with a *generation* (one per song, seek or stop, from
//! the control plane) and the song frame of its first sample. Audio of a newer
//! generation, or [`Command::Backing`] naming one, flushes whatever is still queued, so a
//! seek or a next never plays stale audio; audio of an older generation is dropped. A
//! paused backing holds its place. [`Engine::backing_position`] says which frame of which
//! generation the last period started with, at which mix time; [`Event::BackingEnded`]
//! comes when the last frame of a song has been rendered.
//!
//! # Lead (sync)
//!
//! The speakers play the venue buffer a device buffer after a period is rendered; a
//! phone plays its return mix a network, a jitter buffer and its own output later.
//! [`Command::SetLead`] lets every encoded mix (the personal mixes and the venue
//! *encode*, not the speakers) carry the backing `lead` frames ahead of the speakers,
//! from audio already queued, so a phone that plays its mix `lead` later than the
//! speakers plays each backing frame when the speakers do. Voices are never led: they
//! cannot be, and the venue's voice stays as early as it is. A change of lead crossfades
//! over one period.
//!
//! # Venue delay (in-ear mode)
//!
//! When the singers follow their phones in headphones, each voice reaches the mix one
//! uplink after the phone played the backing it was sung to. [`Command::SetVenueDelay`]
//! holds the speakers' backing back by the slowest singer's uplink, and
//! [`Command::SetVoiceDelay`] each faster voice by the difference, so the venue hears
//! every voice on its beat. Only the speakers' bus is delayed: the encoded mixes and
//! the recorder's sources are not. Each delay crossfades over one period when it moves.
//!
//! # Real time
//!
//! In steady state [`Engine::render_period`], [`Engine::handle_packet`] and
//! [`Engine::poll_output`] do not allocate, lock or log, and do bounded work.
//!
//! ```
//! use std::time::Duration;
//! use duetbox::engine::{Command, Engine, EngineConfig, SingerId, SingerSettings};
//!
//! let config = EngineConfig::default();
//! let period = config.period_samples;
//! let mut engine = Engine::new(config);
//! engine.handle_command(Command::AddSinger {
//!     singer: SingerId(1),
//!     settings: SingerSettings::default(),
//! });
//! let mut venue = vec![0.0f32; 2 * period];
//! for k in 0..2u64 {
//!     engine.render_period(Duration::from_millis(5 * k), &mut venue);
//!     while let Some(_output) = engine.poll_output() {}
//! }
//! ```

pub mod codec;
pub mod delay;
pub mod jitter;
pub mod limiter;
pub mod meter;
pub mod mixer;
pub mod receiver;
pub mod reverb;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod timescale;

use std::fmt;
use std::time::Duration;

pub use codec::EncoderConfig;
pub use jitter::JitterConfig;
pub use meter::Level;
pub use mixer::SingerSettings;
pub use receiver::{ReceiverConfig, ReceiverStats};

use delay::Delay;
use limiter::Limiter;
use meter::Meter;
use mixer::MixEncoder;
use receiver::Receiver;
use reverb::Reverb;

/// The one sample rate inside the box, Hz (Opus' native rate; WebRTC's Opus clock).
pub const SAMPLE_RATE_HZ: u32 = 48_000;

/// The frames (at [`SAMPLE_RATE_HZ`]) in `d`, rounded to the nearest.
pub fn frames_in(d: Duration) -> u64 {
    (d.as_secs_f64() * f64::from(SAMPLE_RATE_HZ)).round() as u64
}

/// How long `frames` (at [`SAMPLE_RATE_HZ`]) last: [`frames_in`]'s inverse.
pub fn duration_of(frames: u64) -> Duration {
    Duration::from_nanos(frames * 1_000_000_000 / u64::from(SAMPLE_RATE_HZ))
}

/// Seconds of stereo backing audio the engine can hold ahead of playout.
const BACKING_CAPACITY_S: usize = 2;

/// The most the phones' backing may lead the speakers' ([`Command::SetLead`]): 500 ms.
/// The player decodes about 1 s ahead, so this much is always queued while a song plays.
pub const MAX_LEAD_FRAMES: u32 = 24_000;

/// The most the speakers' bus delays the backing or a voice ([`Command::SetVenueDelay`]):
/// 500 ms, a slow phone's whole uplink.
pub const MAX_VENUE_DELAY_FRAMES: u32 = 24_000;

/// Events held until polled; more are dropped and counted (a caller that never polls).
const EVENT_CAPACITY: usize = 64;

/// Who a singer is to the engine: a number the control plane hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SingerId(pub u32);

impl fmt::Display for SingerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Which mix an encoded frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MixId {
    /// The venue mix: speakers, listeners, and singers whose monitor is at 1.
    Venue,
    /// One singer's personal mix.
    Personal(SingerId),
}

/// The fields of one RTP packet the engine needs (RFC 3550 §5.1).
#[derive(Clone, Copy, Debug)]
pub struct RtpAudio<'a> {
    /// Synchronisation source: a new one means a new stream.
    pub ssrc: u32,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp, 48 kHz.
    pub timestamp: u32,
    /// The Opus payload.
    pub payload: &'a [u8],
}

/// Mix and gain changes; joins and leaves. Decided by the control plane.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Command {
    /// Seats a singer (fails with [`Event::Rejected`] when no seat is free).
    AddSinger {
        /// The singer.
        singer: SingerId,
        /// Initial settings.
        settings: SingerSettings,
    },
    /// Frees a singer's seat.
    RemoveSinger(SingerId),
    /// Changes a seated singer's settings.
    SetSinger {
        /// The singer.
        singer: SingerId,
        /// New settings.
        settings: SingerSettings,
    },
    /// Backing-track level.
    SetBacking {
        /// Gain, dB.
        gain_db: f32,
        /// Silences the backing track.
        muted: bool,
    },
    /// Master level of every output, dB.
    SetMaster {
        /// Gain, dB.
        gain_db: f32,
    },
    /// How many listeners receive the venue mix (0 stops its encode).
    SetListeners(u32),
    /// The backing transport: a newer `generation` than the one playing flushes what is
    /// queued (a new song, a seek, a stop); `paused` holds the backing where it is.
    Backing {
        /// The generation that may play from now on.
        generation: u32,
        /// Holds the backing in place (it renders silence and keeps its queue).
        paused: bool,
    },
    /// How many frames ahead of the speakers the encoded mixes carry the backing (see
    /// *Lead* in the module docs); at most [`MAX_LEAD_FRAMES`] (more is clamped).
    SetLead {
        /// Frames, 48 kHz.
        frames: u32,
    },
    /// How long the speakers' bus holds the backing back (in-ear mode, see *Venue
    /// delay* in the module docs); at most [`MAX_VENUE_DELAY_FRAMES`] (more is clamped).
    SetVenueDelay {
        /// Frames, 48 kHz.
        frames: u32,
    },
    /// How long the speakers' bus holds a seated singer's voice back (in-ear mode); at
    /// most [`MAX_VENUE_DELAY_FRAMES`].
    SetVoiceDelay {
        /// The singer.
        singer: SingerId,
        /// Frames, 48 kHz.
        frames: u32,
    },
}

/// Backing-track audio for [`Engine::push_backing`].
#[derive(Clone, Copy, Debug)]
pub struct BackingAudio<'a> {
    /// The song, seek or stop it belongs to (see the module docs).
    pub generation: u32,
    /// The song frame (48 kHz) of its first sample.
    pub position: u64,
    /// Interleaved stereo samples at 48 kHz.
    pub samples: &'a [f32],
    /// Its last sample is the song's last.
    pub last: bool,
}

/// Where the backing was when the last period started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackingPosition {
    /// The generation playing (or last flushed to).
    pub generation: u32,
    /// The song frame the period started with (48 kHz).
    pub position: u64,
    /// The mix time of the period's first frame.
    pub mix_time: u64,
    /// Whether the backing advanced in that period (false: paused, or nothing queued).
    pub playing: bool,
    /// How many frames ahead of `position` the encoded mixes carried the backing.
    pub lead: u32,
    /// How many frames the speakers' bus held the backing back (in-ear mode).
    pub venue_delay: u32,
}

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Every seat is taken.
    NoFreeSeat,
    /// The singer is already seated.
    AlreadySeated,
    /// The singer is not seated.
    UnknownSinger,
}

/// Something the control plane should know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A command was refused (the control plane and the engine disagree about a seat:
    /// a bug in the caller, reported rather than panicked on).
    Rejected {
        /// The singer it named.
        singer: SingerId,
        /// Why.
        reason: Reject,
    },
    /// The last frame of a song was rendered.
    BackingEnded {
        /// The song's generation.
        generation: u32,
    },
}

/// What [`Engine::poll_output`] returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// A control-plane event.
    Event(Event),
    /// One encoded frame of a mix.
    Frame {
        /// Which mix.
        mix: MixId,
        /// Mix time of its first frame (frames since the engine started).
        start: u64,
        /// Its duration, frames at 48 kHz.
        samples: usize,
        /// The Opus payload.
        payload: &'a [u8],
        /// Its level every 2.5 ms ([`mixer::envelope`]).
        envelope: &'a [u8],
    },
}

/// Where a level meter sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tap {
    /// The venue output, after the limiter.
    Venue,
    /// The backing track, after its gain.
    Backing,
    /// A singer's voice as received (before gain).
    Voice(SingerId),
    /// A singer's personal mix, after the limiter.
    Personal(SingerId),
}

/// Settings of the engine, fixed for its lifetime.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineConfig {
    /// Frames per period (the output device's period): 120 (2.5 ms) ..= 960 (20 ms).
    pub period_samples: usize,
    /// Seats, allocated up front.
    pub max_singers: usize,
    /// Jitter-buffer target settings.
    pub jitter: JitterConfig,
    /// Return-mix encoder settings.
    pub encoder: EncoderConfig,
    /// Backing-track gain, dB.
    pub backing_gain_db: f32,
    /// Master gain, dB.
    pub master_gain_db: f32,
    /// Limiter ceiling, dBFS.
    pub limiter_ceiling_db: f32,
    /// Limiter look-ahead (adds this much latency to every output).
    pub limiter_lookahead: Duration,
    /// Limiter release time.
    pub limiter_release: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            period_samples: 240,
            max_singers: 8,
            jitter: JitterConfig::default(),
            encoder: EncoderConfig::default(),
            backing_gain_db: -6.0,
            master_gain_db: 0.0,
            limiter_ceiling_db: -1.0,
            limiter_lookahead: Duration::from_millis(1),
            limiter_release: Duration::from_millis(80),
        }
    }
}

/// Engine-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Periods rendered.
    pub periods: u64,
    /// Encoded frames produced (all mixes).
    pub frames_encoded: u64,
    /// Encodes libopus refused.
    pub encode_failures: u64,
    /// Backing frames that were due but missing (played as silence).
    pub backing_underrun_frames: u64,
    /// Packets for singers who hold no seat.
    pub packets_unseated: u64,
    /// Events dropped because nobody polled.
    pub events_dropped: u64,
}

struct Seat {
    singer: Option<SingerId>,
    settings: SingerSettings,
    receiver: Receiver,
    reverb: Reverb,
    limiter: Limiter,
    encoder: MixEncoder,
    voice: Vec<f32>,
    own: Vec<f32>,
    personal: Vec<f32>,
    voice_meter: Meter,
    personal_meter: Meter,
    route: MixId,
    /// Its voice on the speakers' bus, held back by `venue_delay` (in-ear mode).
    venue: Vec<f32>,
    venue_delay: Delay,
}

/// One period's sources, from [`Engine::period_sources`].
pub struct PeriodSources<'a> {
    /// Mix time of the period's first frame.
    pub start: u64,
    /// The backing as rendered (before the speakers' in-ear delay), interleaved stereo.
    pub backing: &'a [f32],
    seats: &'a [Seat],
}

impl<'a> PeriodSources<'a> {
    /// Each seat's singer (`None`: free) and its voice this period (mono).
    pub fn voices(&self) -> impl Iterator<Item = (Option<SingerId>, &'a [f32])> + 'a {
        self.seats.iter().map(|s| (s.singer, s.voice.as_slice()))
    }

    /// Each seat's jitter-buffer delay now, frames: how long after its fastest arrival
    /// the voice plays (it moves as the buffer adapts; a recording follows it).
    pub fn voice_delays(&self) -> impl Iterator<Item = u32> + 'a {
        self.seats
            .iter()
            .map(|s| frames_in(s.receiver.delay()).min(u64::from(u32::MAX)) as u32)
    }
}

/// The audio core. See the module docs for the call order.
pub struct Engine {
    config: EngineConfig,
    seats: Vec<Seat>,
    backing: Vec<f32>,
    backing_read: usize,
    backing_len: usize,
    backing_gain: f32,
    backing_muted: bool,
    backing_meter: Meter,
    backing_generation: u32,
    backing_paused: bool,
    /// The song frame at the read head.
    backing_head: u64,
    /// The song frame after the song's last, once its last audio is queued.
    backing_end: Option<u64>,
    backing_last: BackingPosition,
    /// Frames the encoded mixes' backing leads the speakers' (and what it was last
    /// period: a change crossfades).
    lead: u32,
    lead_before: u32,
    master: f32,
    listeners: u32,
    /// The speakers' bus: backing at the read head, and the voices.
    bus: Vec<f32>,
    /// The encoded mixes' bus: backing `lead` frames on, and the voices.
    lead_bus: Vec<f32>,
    /// The backing alone as rendered this period, before the speakers' delay (for the
    /// recorder: what the singers sang to).
    backing_played: Vec<f32>,
    /// The speakers' backing, held back for the slowest voice (in-ear mode).
    venue_delay: Delay,
    /// The venue mix as encoded (from `lead_bus`), with its own limiter.
    venue_sent: Vec<f32>,
    venue_sent_limiter: Limiter,
    venue_limiter: Limiter,
    venue_encoder: MixEncoder,
    venue_meter: Meter,
    mix_time: u64,
    events: [Option<Event>; EVENT_CAPACITY],
    events_head: usize,
    events_len: usize,
    /// Next seat whose frame `poll_output` looks at; `None` = the venue frame is next.
    poll_seat: Option<usize>,
    stats: EngineStats,
}

impl Engine {
    /// Builds the engine and everything it will ever allocate.
    ///
    /// Panics if `period_samples` is outside 120..=960 or longer than the encoder frame
    /// (configuration validation rejects both before this point).
    pub fn new(config: EngineConfig) -> Engine {
        assert!(
            (120..=960).contains(&config.period_samples),
            "period must be 2.5..=20 ms, config validation guarantees it"
        );
        assert!(
            config.period_samples <= config.encoder.frame_samples,
            "period must not exceed the encoder frame, config validation guarantees it"
        );
        let period = config.period_samples;
        let receiver_config = ReceiverConfig {
            jitter: config.jitter,
            period_samples: period,
        };
        let limiter = || {
            Limiter::new(
                SAMPLE_RATE_HZ,
                config.limiter_ceiling_db,
                config.limiter_lookahead,
                config.limiter_release,
            )
        };
        let seats = (0..config.max_singers)
            .map(|_| Seat {
                singer: None,
                settings: SingerSettings::default(),
                receiver: Receiver::new(receiver_config),
                reverb: Reverb::new(SAMPLE_RATE_HZ),
                limiter: limiter(),
                encoder: MixEncoder::new(&config.encoder),
                voice: vec![0.0; period],
                own: vec![0.0; 2 * period],
                personal: vec![0.0; 2 * period],
                voice_meter: Meter::new(),
                personal_meter: Meter::new(),
                route: MixId::Venue,
                venue: vec![0.0; 2 * period],
                venue_delay: Delay::new(MAX_VENUE_DELAY_FRAMES),
            })
            .collect();
        Engine {
            seats,
            backing: vec![0.0; 2 * BACKING_CAPACITY_S * SAMPLE_RATE_HZ as usize],
            backing_read: 0,
            backing_len: 0,
            backing_gain: mixer::db_to_gain(config.backing_gain_db),
            backing_muted: false,
            backing_meter: Meter::new(),
            backing_generation: 0,
            backing_paused: false,
            backing_head: 0,
            backing_end: None,
            backing_last: BackingPosition {
                generation: 0,
                position: 0,
                mix_time: 0,
                playing: false,
                lead: 0,
                venue_delay: 0,
            },
            lead: 0,
            lead_before: 0,
            master: mixer::db_to_gain(config.master_gain_db),
            listeners: 0,
            bus: vec![0.0; 2 * period],
            backing_played: vec![0.0; 2 * period],
            venue_delay: Delay::new(MAX_VENUE_DELAY_FRAMES),
            lead_bus: vec![0.0; 2 * period],
            venue_sent: vec![0.0; 2 * period],
            venue_sent_limiter: limiter(),
            venue_limiter: limiter(),
            venue_encoder: MixEncoder::new(&config.encoder),
            venue_meter: Meter::new(),
            mix_time: 0,
            events: [None; EVENT_CAPACITY],
            events_head: 0,
            events_len: 0,
            poll_seat: None,
            stats: EngineStats::default(),
            config,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Applies a command; refusals come out of [`Engine::poll_output`] as events.
    pub fn handle_command(&mut self, command: Command) {
        match command {
            Command::AddSinger { singer, settings } => {
                if self.seat_of(singer).is_some() {
                    self.push_event(Event::Rejected {
                        singer,
                        reason: Reject::AlreadySeated,
                    });
                    return;
                }
                let Some(idx) = self.seats.iter().position(|s| s.singer.is_none()) else {
                    self.push_event(Event::Rejected {
                        singer,
                        reason: Reject::NoFreeSeat,
                    });
                    return;
                };
                let seat = &mut self.seats[idx];
                seat.singer = Some(singer);
                seat.settings = settings;
                seat.receiver.reset();
                seat.reverb.reset();
                seat.limiter.reset();
                seat.encoder.reset();
                seat.voice_meter.take();
                seat.personal_meter.take();
                seat.venue_delay.set(0);
                seat.venue_delay.clear();
                self.update_route(idx);
            }
            Command::RemoveSinger(singer) => match self.seat_of(singer) {
                Some(idx) => self.seats[idx].singer = None,
                None => self.push_event(Event::Rejected {
                    singer,
                    reason: Reject::UnknownSinger,
                }),
            },
            Command::SetSinger { singer, settings } => match self.seat_of(singer) {
                Some(idx) => {
                    self.seats[idx].settings = settings;
                    self.update_route(idx);
                }
                None => self.push_event(Event::Rejected {
                    singer,
                    reason: Reject::UnknownSinger,
                }),
            },
            Command::SetBacking { gain_db, muted } => {
                self.backing_gain = mixer::db_to_gain(gain_db);
                self.backing_muted = muted;
            }
            Command::SetMaster { gain_db } => self.master = mixer::db_to_gain(gain_db),
            Command::SetListeners(n) => self.listeners = n,
            Command::Backing { generation, paused } => {
                if is_newer(generation, self.backing_generation) {
                    self.flush_backing(generation);
                }
                if generation == self.backing_generation {
                    self.backing_paused = paused;
                }
            }
            Command::SetLead { frames } => self.lead = frames.min(MAX_LEAD_FRAMES),
            Command::SetVenueDelay { frames } => self.venue_delay.set(frames),
            Command::SetVoiceDelay { singer, frames } => match self.seat_of(singer) {
                Some(idx) => self.seats[idx].venue_delay.set(frames),
                None => self.push_event(Event::Rejected {
                    singer,
                    reason: Reject::UnknownSinger,
                }),
            },
        }
    }

    /// Takes one RTP packet from `singer` that arrived at `at`. Never fails: garbage is
    /// counted in the singer's stats and dropped; packets of unseated singers are counted.
    pub fn handle_packet(&mut self, singer: SingerId, packet: RtpAudio<'_>, at: Duration) {
        match self.seat_of(singer) {
            Some(idx) => self.seats[idx].receiver.handle_packet(
                packet.ssrc,
                packet.sequence,
                packet.timestamp,
                packet.payload,
                at,
            ),
            None => self.stats.packets_unseated += 1,
        }
    }

    /// Queues backing audio; returns how many samples were taken: all of them, or as
    /// many as fit (offer the rest again later), or none of an older generation (those
    /// count as taken: they are dropped). Audio of a newer generation flushes the queue
    /// first. Within a generation the caller sends consecutive frames; the first frame
    /// queued after the queue ran empty sets the position.
    pub fn push_backing(&mut self, audio: BackingAudio<'_>) -> usize {
        if is_newer(audio.generation, self.backing_generation) {
            self.flush_backing(audio.generation);
        } else if audio.generation != self.backing_generation {
            return audio.samples.len();
        }
        if self.backing_len == 0 {
            self.backing_head = audio.position;
        }
        let cap = self.backing.len();
        let n = (audio.samples.len() & !1).min(cap - self.backing_len);
        for (k, &v) in audio.samples[..n].iter().enumerate() {
            self.backing[(self.backing_read + self.backing_len + k) % cap] = v;
        }
        self.backing_len += n;
        if audio.last && n == audio.samples.len() {
            self.backing_end = Some(self.backing_head + (self.backing_len / 2) as u64);
        }
        n
    }

    /// Where the backing was when the last period started.
    pub fn backing_position(&self) -> BackingPosition {
        self.backing_last
    }

    /// Backing samples queued and not yet played.
    pub fn backing_queued(&self) -> usize {
        self.backing_len
    }

    /// Backing samples the engine should hold before a period: four periods beyond the
    /// lead, so the encoded mixes find theirs.
    pub fn backing_wanted(&self) -> usize {
        2 * (4 * self.config.period_samples + self.lead.max(self.lead_before) as usize)
    }

    /// Renders the period whose first frame plays at `now` into `venue` (interleaved
    /// stereo, exactly `2 * period_samples` long), and feeds every active encoder.
    pub fn render_period(&mut self, now: Duration, venue: &mut [f32]) {
        let period = self.config.period_samples;
        assert_eq!(venue.len(), 2 * period, "venue buffer is one stereo period");
        self.poll_seat = None;
        self.venue_encoder.take();
        self.render_backing();
        self.backing_played.copy_from_slice(&self.bus);
        self.venue_delay.process(&mut self.bus);
        for seat in &mut self.seats {
            seat.encoder.take();
            if seat.singer.is_none() {
                continue;
            }
            seat.receiver.render(now, &mut seat.voice);
            seat.voice_meter.add_mono(&seat.voice);
            seat.own.fill(0.0);
            let settings = seat.settings;
            if !settings.muted {
                let gain = mixer::db_to_gain(settings.gain_db);
                mixer::add_panned(
                    &seat.voice,
                    gain,
                    mixer::pan_gains(settings.pan),
                    &mut seat.own,
                );
                if settings.reverb_wet > 0.0 || !seat.reverb.is_silent() {
                    let wet = settings.reverb_wet.clamp(0.0, 1.0) * gain;
                    seat.reverb.process_add(&seat.voice, wet, &mut seat.own);
                }
            }
            seat.venue.copy_from_slice(&seat.own);
            seat.venue_delay.process(&mut seat.venue);
            for (b, &v) in self.bus.iter_mut().zip(&seat.venue) {
                *b += v;
            }
            for (l, &o) in self.lead_bus.iter_mut().zip(&seat.own) {
                *l += o;
            }
        }
        for (v, &b) in venue.iter_mut().zip(&self.bus) {
            *v = b * self.master;
        }
        self.venue_limiter.process(venue);
        self.venue_meter.add_stereo(venue);
        let venue_needed = self.listeners > 0
            || self
                .seats
                .iter()
                .any(|s| s.singer.is_some() && s.route == MixId::Venue);
        if venue_needed {
            // What phones hear of the venue: the same voices, the backing led. Its own
            // limiter, so a lead of 0 encodes exactly what the speakers play.
            for (v, &b) in self.venue_sent.iter_mut().zip(&self.lead_bus) {
                *v = b * self.master;
            }
            self.venue_sent_limiter.process(&mut self.venue_sent);
            self.venue_encoder.feed(&self.venue_sent, self.mix_time);
        }
        for seat in &mut self.seats {
            if seat.singer.is_none() || seat.route == MixId::Venue {
                continue;
            }
            let minus = 1.0 - seat.settings.monitor.clamp(0.0, 1.0);
            mixer::mix_minus(
                &self.lead_bus,
                &seat.own,
                minus,
                self.master,
                &mut seat.personal,
            );
            seat.limiter.process(&mut seat.personal);
            seat.personal_meter.add_stereo(&seat.personal);
            seat.encoder.feed(&seat.personal, self.mix_time);
        }
        self.mix_time += period as u64;
        self.stats.periods += 1;
    }

    /// What the last period rendered, source by source (for a recorder): its first
    /// frame's mix time, the backing as the speakers got it (interleaved stereo, its
    /// gain applied) and each seated singer's voice (mono, as the jitter buffer gave it:
    /// before its gain, pan and reverb). Allocates nothing.
    pub fn period_sources(&self) -> PeriodSources<'_> {
        PeriodSources {
            start: self.mix_time - self.config.period_samples as u64,
            backing: &self.backing_played,
            seats: &self.seats,
        }
    }

    /// Drains events and the frames encoded by the last period; call until `None`.
    pub fn poll_output(&mut self) -> Option<Output<'_>> {
        if let Some(event) = self.pop_event() {
            return Some(Output::Event(event));
        }
        let mut idx = match self.poll_seat {
            None => {
                self.poll_seat = Some(0);
                if let Some((start, samples, _)) = self.venue_encoder.ready_frame() {
                    self.venue_encoder.take();
                    self.stats.frames_encoded += 1;
                    let payload = self.venue_encoder.last_payload();
                    return Some(Output::Frame {
                        mix: MixId::Venue,
                        start,
                        samples,
                        payload,
                        envelope: self.venue_encoder.last_envelope(),
                    });
                }
                0
            }
            Some(idx) => idx,
        };
        while idx < self.seats.len() {
            let seat = &mut self.seats[idx];
            idx += 1;
            if let (Some(singer), Some((start, samples, _))) =
                (seat.singer, seat.encoder.ready_frame())
            {
                seat.encoder.take();
                self.poll_seat = Some(idx);
                self.stats.frames_encoded += 1;
                let encoder = &self.seats[idx - 1].encoder;
                return Some(Output::Frame {
                    mix: MixId::Personal(singer),
                    start,
                    samples,
                    payload: encoder.last_payload(),
                    envelope: encoder.last_envelope(),
                });
            }
        }
        self.poll_seat = Some(idx);
        None
    }

    /// Seats (seated or free), for [`Engine::take_seat_report`].
    pub fn seats(&self) -> usize {
        self.seats.len()
    }

    /// The singer in seat `seat`, their receive statistics and their voice level since
    /// the last call (which it resets); `None` for a free seat. Allocates nothing.
    pub fn take_seat_report(&mut self, seat: usize) -> Option<(SingerId, ReceiverStats, Level)> {
        let seat = self.seats.get_mut(seat)?;
        let singer = seat.singer?;
        Some((singer, seat.receiver.stats(), seat.voice_meter.take()))
    }

    /// The receive statistics of a seated singer.
    pub fn singer_stats(&self, singer: SingerId) -> Option<ReceiverStats> {
        self.seat_of(singer)
            .map(|idx| self.seats[idx].receiver.stats())
    }

    /// Packets held and decoded samples waiting for a seated singer.
    pub fn buffered(&self, singer: SingerId) -> Option<(usize, usize)> {
        self.seat_of(singer)
            .map(|idx| self.seats[idx].receiver.buffered())
    }

    /// Engine-wide counters.
    pub fn stats(&self) -> EngineStats {
        let mut stats = self.stats;
        stats.encode_failures = self.venue_encoder.failures
            + self.seats.iter().map(|s| s.encoder.failures).sum::<u64>();
        stats
    }

    /// The mix a seated singer currently hears.
    pub fn route(&self, singer: SingerId) -> Option<MixId> {
        self.seat_of(singer).map(|idx| self.seats[idx].route)
    }

    /// The last period of a singer's personal mix (interleaved stereo, after the
    /// limiter); `None` if the singer hears the venue mix or holds no seat.
    pub fn personal_mix(&self, singer: SingerId) -> Option<&[f32]> {
        let seat = &self.seats[self.seat_of(singer)?];
        (seat.route != MixId::Venue).then_some(&seat.personal[..])
    }

    /// The level at `tap` since the last call (peak and RMS), and resets it.
    pub fn take_level(&mut self, tap: Tap) -> Option<Level> {
        Some(match tap {
            Tap::Venue => self.venue_meter.take(),
            Tap::Backing => self.backing_meter.take(),
            Tap::Voice(singer) => {
                let idx = self.seat_of(singer)?;
                self.seats[idx].voice_meter.take()
            }
            Tap::Personal(singer) => {
                let idx = self.seat_of(singer)?;
                let seat = &mut self.seats[idx];
                if seat.route == MixId::Venue {
                    self.venue_meter.peek()
                } else {
                    seat.personal_meter.take()
                }
            }
        })
    }

    /// Latency the output stage adds (limiter look-ahead), frames.
    pub fn output_latency_frames(&self) -> usize {
        self.venue_limiter.latency_frames()
    }

    fn seat_of(&self, singer: SingerId) -> Option<usize> {
        self.seats.iter().position(|s| s.singer == Some(singer))
    }

    /// Which encode the singer's personal mix needs; a change starts it afresh.
    fn update_route(&mut self, idx: usize) {
        let seat = &mut self.seats[idx];
        let Some(singer) = seat.singer else { return };
        let mix = if seat.settings.hears_venue_mix() {
            MixId::Venue
        } else {
            MixId::Personal(singer)
        };
        if mix != seat.route {
            seat.encoder.reset();
            seat.limiter.reset();
        }
        seat.route = mix;
    }

    fn flush_backing(&mut self, generation: u32) {
        self.backing_generation = generation;
        self.backing_len = 0;
        self.backing_head = 0;
        self.backing_end = None;
    }

    fn render_backing(&mut self) {
        let cap = self.backing.len();
        let want = self.bus.len();
        let have = if self.backing_paused {
            0
        } else {
            want.min(self.backing_len)
        };
        self.backing_last = BackingPosition {
            generation: self.backing_generation,
            position: self.backing_head,
            mix_time: self.mix_time,
            playing: have > 0,
            lead: self.lead,
            venue_delay: self.venue_delay.frames(),
        };
        let gain = if self.backing_muted {
            0.0
        } else {
            self.backing_gain
        };
        for (k, b) in self.bus[..have].iter_mut().enumerate() {
            *b = self.backing[(self.backing_read + k) % cap] * gain;
        }
        self.bus[have..].fill(0.0);
        self.render_lead(gain);
        self.backing_read = (self.backing_read + have) % cap;
        self.backing_len -= have;
        self.backing_head += (have / 2) as u64;
        if self.backing_end.is_some_and(|end| self.backing_head >= end) {
            self.backing_end = None;
            self.push_event(Event::BackingEnded {
                generation: self.backing_generation,
            });
        } else if have > 0 && have < want {
            // Only a track that ran dry mid-period is an underrun; no track at all (or
            // a song's end) is silence.
            self.stats.backing_underrun_frames += ((want - have) / 2) as u64;
        }
        self.backing_meter.add_stereo(&self.bus);
    }

    /// The encoded mixes' backing: `lead` frames past the read head, what is queued of
    /// it (silence past the end); a changed lead crossfades from the old one.
    fn render_lead(&mut self, gain: f32) {
        let cap = self.backing.len();
        let len = if self.backing_paused {
            0
        } else {
            self.backing_len
        };
        let (backing, read) = (&self.backing, self.backing_read);
        let at = |offset: usize, k: usize| {
            if offset + k < len {
                backing[(read + offset + k) % cap]
            } else {
                0.0
            }
        };
        let (from, to) = (2 * self.lead_before as usize, 2 * self.lead as usize);
        let frames = self.lead_bus.len() / 2;
        for (k, l) in self.lead_bus.iter_mut().enumerate() {
            let v = if from == to {
                at(to, k)
            } else {
                let w = (k / 2) as f32 / frames as f32;
                (1.0 - w) * at(from, k) + w * at(to, k)
            };
            *l = v * gain;
        }
        self.lead_before = self.lead;
    }

    fn push_event(&mut self, event: Event) {
        if self.events_len == EVENT_CAPACITY {
            self.stats.events_dropped += 1;
            return;
        }
        self.events[(self.events_head + self.events_len) % EVENT_CAPACITY] = Some(event);
        self.events_len += 1;
    }

    fn pop_event(&mut self) -> Option<Event> {
        if self.events_len == 0 {
            return None;
        }
        let event = self.events[self.events_head].take();
        self.events_head = (self.events_head + 1) % EVENT_CAPACITY;
        self.events_len -= 1;
        event
    }
}

/// Whether generation `a` came after `b` (they wrap; half the range apart is the limit).
fn is_newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

#[cfg(test)]
mod tests;
