//! The only reader of the configuration file: schema, defaults, environment overrides
//! and validation.
//!
//! Text becomes typed sections that cannot hold bad values (`Duration`s, enums,
//! checked ranges); every error names the key and the reason. `default.toml` is the
//! documented default, and a test keeps it equal to `Config::default()`.
//!
//! Not configuration: `DUETBOX_TEST_*` variables are test-only fault switches, read
//! where they act (`DUETBOX_TEST_STALL_AUDIO_AFTER_MS`, see `app.rs`); the
//! `DUETBOX_SECTION__KEY` overrides never match them (they have no `__`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{EncoderConfig, EngineConfig, JitterConfig, SAMPLE_RATE_HZ};
use crate::limits::Limits;

/// The documented default configuration, as shipped.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Prefix of environment overrides: `DUETBOX_SECTION__KEY`.
const ENV_PREFIX: &str = "DUETBOX_";

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML or a key is unknown or of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// A key has a value outside its range.
    #[error("{key} = {value}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `audio.period_ms`.
        key: String,
        /// The value as written.
        value: String,
        /// What is allowed.
        reason: String,
    },
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address.
    pub bind: String,
    /// HTTPS port.
    pub https_port: u16,
    /// HTTP redirect port (0 = off).
    pub http_port: u16,
    /// Largest message/body, bytes.
    pub max_message_bytes: usize,
    /// An operator's own certificate chain, PEM ("" = the box's CA issues one).
    pub cert_file: String,
    /// Its private key, PEM.
    pub key_file: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: "0.0.0.0".into(),
            https_port: 8443,
            http_port: 8080,
            max_message_bytes: 65_536,
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

/// `[rtc]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// UDP bind addresses.
    pub udp_bind: Vec<String>,
    /// Offer loopback candidates.
    pub include_loopback: bool,
    /// ICE disconnected timeout, ms.
    pub ice_disconnected_ms: u64,
    /// ICE failed timeout, ms.
    pub ice_failed_ms: u64,
    /// ICE keepalive interval, ms.
    pub ice_keepalive_ms: u64,
    /// Uplink bitrate signalled to phones, bit/s.
    pub uplink_bitrate_bps: u32,
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            udp_bind: vec!["0.0.0.0".into()],
            include_loopback: false,
            ice_disconnected_ms: 2000,
            ice_failed_ms: 5000,
            ice_keepalive_ms: 1000,
            uplink_bitrate_bps: 64_000,
        }
    }
}

/// `[room]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomConfig {
    /// Singer seats.
    pub max_singers: usize,
    /// Listener limit.
    pub max_listeners: usize,
    /// PIN ("" = none).
    pub pin: String,
    /// The host page's PIN ("" = made at the first start and kept in the state
    /// directory as `host-pin`).
    pub host_pin: String,
    /// WebSocket idle timeout, ms.
    pub idle_timeout_ms: u64,
    /// How long a phone whose connection dropped keeps its place, ms.
    pub rejoin_grace_ms: u64,
    /// How long a join may take to live media before it loses its place, ms.
    pub join_deadline_ms: u64,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            max_singers: 2,
            max_listeners: 100,
            pin: String::new(),
            host_pin: String::new(),
            idle_timeout_ms: 20_000,
            rejoin_grace_ms: 30_000,
            join_deadline_ms: 10_000,
        }
    }
}

/// `[audio]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// Output spec.
    pub output: String,
    /// Period, ms.
    pub period_ms: f64,
    /// Buffer, periods.
    pub buffer_periods: u32,
    /// Backing gain, dB.
    pub backing_gain_db: f32,
    /// Master gain, dB.
    pub master_gain_db: f32,
    /// Limiter ceiling, dBFS.
    pub limiter_ceiling_db: f32,
    /// Limiter look-ahead, ms.
    pub limiter_lookahead_ms: f64,
    /// Limiter release, ms.
    pub limiter_release_ms: f64,
    /// SCHED_FIFO priority the audio thread asks for (0 = normal scheduling).
    pub realtime_priority: u8,
    /// The ALSA capture PCM of the line-in ("" = none).
    pub line_in: String,
    /// What the speaker path adds after the ALSA device (a venue DSP, wireless
    /// speakers), ms: the speakers' time on the box's timeline (`docs/sync.md`).
    pub speaker_latency_ms: f64,
    /// How far ahead of the speakers the phones' backing may play, ms (0 to 500).
    pub max_lead_ms: f64,
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            output: "auto".into(),
            period_ms: 5.0,
            buffer_periods: 3,
            backing_gain_db: -6.0,
            master_gain_db: 0.0,
            limiter_ceiling_db: -1.0,
            limiter_lookahead_ms: 1.0,
            limiter_release_ms: 80.0,
            realtime_priority: 70,
            line_in: String::new(),
            speaker_latency_ms: 0.0,
            max_lead_ms: 400.0,
        }
    }
}

/// `[jitter]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JitterSection {
    /// Floor, ms.
    pub min_delay_ms: f64,
    /// Ceiling, ms.
    pub max_delay_ms: f64,
    /// Percentile, 0.5..=1.
    pub percentile: f64,
    /// Margin, ms.
    pub margin_ms: f64,
    /// Shrink rate, ms per s.
    pub shrink_ms_per_s: f64,
}

impl Default for JitterSection {
    fn default() -> Self {
        JitterSection {
            min_delay_ms: 0.0,
            max_delay_ms: 200.0,
            percentile: 1.0,
            margin_ms: 1.0,
            shrink_ms_per_s: 20.0,
        }
    }
}

/// `[encoder]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderSection {
    /// Frame, ms (10 or 20).
    pub frame_ms: u32,
    /// Bitrate, bit/s.
    pub bitrate_bps: u32,
    /// Complexity, 5..=10.
    pub complexity: u32,
    /// In-band FEC.
    pub inband_fec: bool,
}

impl Default for EncoderSection {
    fn default() -> Self {
        EncoderSection {
            frame_ms: 10,
            bitrate_bps: 128_000,
            complexity: 5,
            inband_fec: false,
        }
    }
}

/// `[limits]`: what the network may ask of the box (see `crate::limits`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// TCP connections per client address.
    pub connections_per_address: usize,
    /// TCP connections in all.
    pub connections_total: usize,
    /// TLS handshake deadline, ms.
    pub handshake_timeout_ms: u64,
    /// Kernel send buffer per connection, bytes.
    pub send_buffer_bytes: usize,
    /// WebSocket messages per second per client.
    pub messages_per_s: f64,
    /// WebSocket message burst per client.
    pub messages_burst: u32,
    /// Messages queued for one WebSocket client before it is closed.
    pub out_queue_messages: usize,
    /// Trickled candidates per connection.
    pub candidates_per_connection: usize,
    /// `m=` lines per offer.
    pub offer_m_lines: usize,
    /// RTP packets per second per singer.
    pub packets_per_s: f64,
    /// RTP packet burst per singer.
    pub packets_burst: u32,
    /// `room` messages per second per WebSocket client.
    pub room_updates_per_s: f64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            connections_per_address: l.connections_per_address,
            connections_total: l.connections_total,
            handshake_timeout_ms: l.handshake_timeout.as_millis() as u64,
            send_buffer_bytes: l.send_buffer_bytes,
            messages_per_s: l.messages_per_s,
            messages_burst: l.messages_burst as u32,
            out_queue_messages: l.out_queue_messages,
            candidates_per_connection: l.candidates_per_connection,
            offer_m_lines: l.offer_m_lines,
            packets_per_s: l.packets_per_s,
            packets_burst: l.packets_burst as u32,
            room_updates_per_s: l.room_updates_per_s,
        }
    }
}

/// `[state]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// State directory ("" = $STATE_DIRECTORY or ./state).
    pub dir: String,
}

/// `[songs]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SongsConfig {
    /// The library folder ("" = `songs` in the state directory).
    pub library: String,
    /// How often the library is walked for new, changed and removed files, seconds.
    pub rescan_s: u64,
    /// Clicks played (and counted on the screens) before a song starts, 0 to 8 (0: none).
    pub count_in_beats: u32,
    /// Their tempo, beats per minute (40 to 240).
    pub count_in_bpm: f64,
    /// Whether every song is recorded (`docs/sync.md`).
    pub record: bool,
    /// Where the recordings go ("" = `recordings` in the state directory).
    pub recordings: String,
    /// How many recordings are kept (the oldest go first), 1 to 1000.
    pub recordings_kept: usize,
}

impl Default for SongsConfig {
    fn default() -> Self {
        SongsConfig {
            library: String::new(),
            rescan_s: 60,
            count_in_beats: 4,
            count_in_bpm: 100.0,
            record: true,
            recordings: String::new(),
            recordings_kept: 50,
        }
    }
}

impl SongsConfig {
    /// The count-in's length.
    pub fn count_in(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(
            f64::from(self.count_in_beats) * 60.0 / self.count_in_bpm,
        )
    }
}

/// `[box]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoxConfig {
    /// The box's name ("" = the host name).
    pub name: String,
}

/// `[discovery]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Announce the box with mDNS.
    pub mdns: bool,
    /// mDNS host name without `.local` ("" = duetbox-<6 digits of the box id>).
    pub host_name: String,
    /// Only these interfaces (names, `*` at the end = prefix); empty = all but `skip_interfaces`.
    pub interfaces: Vec<String>,
    /// Interfaces never used unless named in `interfaces`.
    pub skip_interfaces: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            mdns: true,
            host_name: String::new(),
            interfaces: Vec::new(),
            skip_interfaces: [
                "docker*",
                "br-*",
                "veth*",
                "virbr*",
                "vnet*",
                "lxc*",
                "lxd*",
                "podman*",
                "cni*",
                "flannel*",
                "cali*",
                "tun*",
                "tap*",
                "wg*",
                "tailscale*",
                "zt*",
                "ppp*",
                "ipsec*",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl DiscoveryConfig {
    /// The interface filter these settings describe.
    pub fn filter(&self) -> crate::lan::LanFilter {
        crate::lan::LanFilter {
            only: self.interfaces.clone(),
            skip: self.skip_interfaces.clone(),
        }
    }
}

/// `[mqtt]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker: `mqtt://host[:port]` or `mqtts://host[:port]`; "" = MQTT off.
    pub url: String,
    /// Client id ("" = `duetbox-<box id>`).
    pub client_id: String,
    /// User name ("" = none).
    pub username: String,
    /// Password (never printed).
    pub password: String,
    /// PEM file of the CA(s) that sign the broker's certificate ("" = the system's).
    pub ca_file: String,
    /// Base topic ("" = `duetbox/<box id>`).
    pub base_topic: String,
    /// Home Assistant MQTT discovery.
    pub discovery: bool,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// Meters on `<base>/meters` per second (0 = off, at most 10).
    pub meters_hz: f64,
    /// Shortest interval between two state messages when only levels changed, ms.
    pub state_interval_ms: u64,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: String::new(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            ca_file: String::new(),
            base_topic: String::new(),
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            meters_hz: 0.0,
            state_interval_ms: 1000,
            keep_alive_s: 15,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Web server.
    pub http: HttpConfig,
    /// WebRTC.
    pub rtc: RtcConfig,
    /// Seats, PIN.
    pub room: RoomConfig,
    /// Output and levels.
    pub audio: AudioConfig,
    /// Jitter buffer.
    pub jitter: JitterSection,
    /// Return-mix encoder.
    pub encoder: EncoderSection,
    /// Limits on what the network may ask.
    pub limits: LimitsSection,
    /// State directory.
    pub state: StateConfig,
    /// The box's name.
    #[serde(rename = "box")]
    pub identity: BoxConfig,
    /// mDNS and the LAN interfaces.
    pub discovery: DiscoveryConfig,
    /// The venue panel's broker.
    pub mqtt: MqttConfig,
    /// The song library.
    pub songs: SongsConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Config {
    /// Reads `path` (or the defaults when `None`), applies `DUETBOX_*` overrides from
    /// `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Error> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| Error::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Config::parse(&text, env)
    }

    /// Parses TOML text, applies overrides and validates.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Error> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Parse(e.to_string().trim().to_string()))?;
        // Keys whose default is text take an override that is not a TOML string as
        // the text written: a PIN of 4711 is "4711", not the integer 4711.
        let defaults = toml::Value::try_from(Config::default())
            .expect("the built-in defaults serialise to TOML");
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_lowercase(), key.to_lowercase());
            let is_text = defaults
                .get(&section)
                .and_then(|s| s.get(&key))
                .is_some_and(toml::Value::is_str);
            let parsed = match parse_env_value(&value) {
                toml::Value::String(text) => toml::Value::String(text),
                _ if is_text => toml::Value::String(value),
                parsed => parsed,
            };
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = entry.as_table_mut() else {
                return Err(Error::Parse(format!("{section}: not a section")));
            };
            t.insert(key, parsed);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Parse(e.to_string().trim().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every range; the first violation is returned, naming its key.
    pub fn validate(&self) -> Result<(), Error> {
        fn bad(key: &str, value: impl std::fmt::Display, reason: &str) -> Result<(), Error> {
            Err(Error::Invalid {
                key: key.into(),
                value: value.to_string(),
                reason: reason.into(),
            })
        }
        let a = &self.audio;
        if !(2.5..=20.0).contains(&a.period_ms) {
            return bad("audio.period_ms", a.period_ms, "must be between 2.5 and 20");
        }
        if (a.period_ms * 48.0).fract().abs() > 1e-9 {
            return bad(
                "audio.period_ms",
                a.period_ms,
                "must be a whole number of frames at 48 kHz",
            );
        }
        if !(2..=8).contains(&a.buffer_periods) {
            return bad(
                "audio.buffer_periods",
                a.buffer_periods,
                "must be between 2 and 8",
            );
        }
        if let Err(e) = a.output.parse::<crate::output::OutputSpec>() {
            return bad("audio.output", &a.output, &e.to_string());
        }
        if a.line_in.len() > 200 || a.line_in.chars().any(char::is_control) {
            return bad(
                "audio.line_in",
                a.line_in.escape_debug(),
                "must be an ALSA PCM name (at most 200 characters, no control characters)",
            );
        }
        if !(0.0..=5.0).contains(&a.limiter_lookahead_ms) {
            return bad(
                "audio.limiter_lookahead_ms",
                a.limiter_lookahead_ms,
                "must be between 0 and 5",
            );
        }
        if !(-30.0..=0.0).contains(&a.limiter_ceiling_db) {
            return bad(
                "audio.limiter_ceiling_db",
                a.limiter_ceiling_db,
                "must be between -30 and 0",
            );
        }
        for (key, v) in [
            ("audio.backing_gain_db", a.backing_gain_db),
            ("audio.master_gain_db", a.master_gain_db),
        ] {
            if !(-60.0..=12.0).contains(&v) {
                return bad(key, v, "must be between -60 and 12");
            }
        }
        if !(1.0..=2000.0).contains(&a.limiter_release_ms) {
            return bad(
                "audio.limiter_release_ms",
                a.limiter_release_ms,
                "must be between 1 and 2000",
            );
        }
        if !(0.0..=500.0).contains(&a.speaker_latency_ms) {
            return bad(
                "audio.speaker_latency_ms",
                a.speaker_latency_ms,
                "must be between 0 and 500",
            );
        }
        let most = f64::from(crate::engine::MAX_LEAD_FRAMES) / 48.0;
        if !(0.0..=most).contains(&a.max_lead_ms) {
            return bad(
                "audio.max_lead_ms",
                a.max_lead_ms,
                "must be between 0 and 500",
            );
        }
        if a.realtime_priority > 99 {
            return bad(
                "audio.realtime_priority",
                a.realtime_priority,
                "must be between 0 (off) and 99",
            );
        }
        let j = &self.jitter;
        if !(0.0..=1000.0).contains(&j.max_delay_ms) || j.max_delay_ms < 20.0 {
            return bad(
                "jitter.max_delay_ms",
                j.max_delay_ms,
                "must be between 20 and 1000",
            );
        }
        if !(0.0..=j.max_delay_ms).contains(&j.min_delay_ms) {
            return bad(
                "jitter.min_delay_ms",
                j.min_delay_ms,
                &format!(
                    "must be between 0 and jitter.max_delay_ms ({})",
                    j.max_delay_ms
                ),
            );
        }
        if !(0.5..=1.0).contains(&j.percentile) {
            return bad(
                "jitter.percentile",
                j.percentile,
                "must be between 0.5 and 1.0",
            );
        }
        if !(0.0..=50.0).contains(&j.margin_ms) {
            return bad("jitter.margin_ms", j.margin_ms, "must be between 0 and 50");
        }
        if !(0.1..=1000.0).contains(&j.shrink_ms_per_s) {
            return bad(
                "jitter.shrink_ms_per_s",
                j.shrink_ms_per_s,
                "must be between 0.1 and 1000",
            );
        }
        let e = &self.encoder;
        if e.frame_ms != 10 && e.frame_ms != 20 {
            return bad("encoder.frame_ms", e.frame_ms, "must be 10 or 20");
        }
        if f64::from(e.frame_ms) < a.period_ms {
            return bad(
                "encoder.frame_ms",
                e.frame_ms,
                "must not be shorter than audio.period_ms",
            );
        }
        if !(32_000..=510_000).contains(&e.bitrate_bps) {
            return bad(
                "encoder.bitrate_bps",
                e.bitrate_bps,
                "must be between 32000 and 510000",
            );
        }
        if !(5..=10).contains(&e.complexity) {
            return bad(
                "encoder.complexity",
                e.complexity,
                "must be between 5 and 10 (music quality)",
            );
        }
        let r = &self.room;
        if !(1..=32).contains(&r.max_singers) {
            return bad(
                "room.max_singers",
                r.max_singers,
                "must be between 1 and 32",
            );
        }
        if r.max_listeners > 1000 {
            return bad(
                "room.max_listeners",
                r.max_listeners,
                "must be at most 1000",
            );
        }
        if r.pin.chars().count() > 64 {
            return bad("room.pin", "(hidden)", "must be at most 64 characters");
        }
        let host_chars = r.host_pin.chars().count();
        if host_chars > 64 || (host_chars > 0 && host_chars < 4) {
            return bad("room.host_pin", "(hidden)", "must be 4 to 64 characters");
        }
        if !r.host_pin.is_empty() && r.host_pin == r.pin {
            return bad(
                "room.host_pin",
                "(hidden)",
                "must differ from room.pin: singers must not be able to run the night",
            );
        }
        if r.idle_timeout_ms < 6_000 {
            return bad(
                "room.idle_timeout_ms",
                r.idle_timeout_ms,
                "must be at least 6000 (phones ping every 5 s)",
            );
        }
        if !(2_000..=60_000).contains(&r.join_deadline_ms) {
            return bad(
                "room.join_deadline_ms",
                r.join_deadline_ms,
                "must be between 2000 and 60000",
            );
        }
        if r.rejoin_grace_ms > 600_000 {
            return bad(
                "room.rejoin_grace_ms",
                r.rejoin_grace_ms,
                "must be at most 600000 (10 minutes)",
            );
        }
        let l = &self.limits;
        let ranges: [(&str, f64, f64, f64); 12] = [
            (
                "limits.connections_per_address",
                l.connections_per_address as f64,
                1.0,
                1000.0,
            ),
            (
                "limits.connections_total",
                l.connections_total as f64,
                8.0,
                60_000.0,
            ),
            (
                "limits.handshake_timeout_ms",
                l.handshake_timeout_ms as f64,
                500.0,
                60_000.0,
            ),
            (
                "limits.send_buffer_bytes",
                l.send_buffer_bytes as f64,
                4096.0,
                16_777_216.0,
            ),
            ("limits.messages_per_s", l.messages_per_s, 1.0, 1000.0),
            (
                "limits.messages_burst",
                f64::from(l.messages_burst),
                1.0,
                10_000.0,
            ),
            (
                "limits.out_queue_messages",
                l.out_queue_messages as f64,
                8.0,
                10_000.0,
            ),
            (
                "limits.candidates_per_connection",
                l.candidates_per_connection as f64,
                1.0,
                1000.0,
            ),
            ("limits.offer_m_lines", l.offer_m_lines as f64, 1.0, 64.0),
            ("limits.packets_per_s", l.packets_per_s, 100.0, 10_000.0),
            (
                "limits.packets_burst",
                f64::from(l.packets_burst),
                10.0,
                10_000.0,
            ),
            ("limits.room_updates_per_s", l.room_updates_per_s, 0.5, 50.0),
        ];
        for (key, value, lo, hi) in ranges {
            if !(lo..=hi).contains(&value) || !value.is_finite() {
                return bad(key, value, &format!("must be between {lo} and {hi}"));
            }
        }
        if l.connections_per_address > l.connections_total {
            return bad(
                "limits.connections_per_address",
                l.connections_per_address,
                &format!(
                    "must be at most limits.connections_total ({})",
                    l.connections_total
                ),
            );
        }
        let t = &self.rtc;
        if t.udp_bind.is_empty() {
            return bad("rtc.udp_bind", "[]", "must name at least one address");
        }
        for addr in &t.udp_bind {
            if addr.parse::<std::net::IpAddr>().is_err() {
                return bad(
                    "rtc.udp_bind",
                    addr,
                    "must be IP addresses like \"0.0.0.0\" or \"192.168.1.10\"",
                );
            }
        }
        if t.ice_failed_ms <= t.ice_disconnected_ms {
            return bad(
                "rtc.ice_failed_ms",
                t.ice_failed_ms,
                &format!(
                    "must be above rtc.ice_disconnected_ms ({})",
                    t.ice_disconnected_ms
                ),
            );
        }
        if !(100..=60_000).contains(&t.ice_keepalive_ms) {
            return bad(
                "rtc.ice_keepalive_ms",
                t.ice_keepalive_ms,
                "must be between 100 and 60000",
            );
        }
        if !(16_000..=256_000).contains(&t.uplink_bitrate_bps) {
            return bad(
                "rtc.uplink_bitrate_bps",
                t.uplink_bitrate_bps,
                "must be between 16000 and 256000",
            );
        }
        if self.http.bind.parse::<std::net::IpAddr>().is_err() {
            return bad("http.bind", &self.http.bind, "must be an IP address");
        }
        if self.http.max_message_bytes < 4096 {
            return bad(
                "http.max_message_bytes",
                self.http.max_message_bytes,
                "must be at least 4096",
            );
        }
        let name = &self.identity.name;
        if name.chars().count() > 64 || name.chars().any(char::is_control) {
            return bad(
                "box.name",
                name,
                "must be at most 64 characters, none of them control characters",
            );
        }
        self.validate_discovery()?;
        if self.songs.count_in_beats > 8 {
            return bad(
                "songs.count_in_beats",
                self.songs.count_in_beats,
                "must be 0 to 8",
            );
        }
        if !(40.0..=240.0).contains(&self.songs.count_in_bpm) {
            return bad(
                "songs.count_in_bpm",
                self.songs.count_in_bpm,
                "must be 40 to 240",
            );
        }
        if !(1..=1000).contains(&self.songs.recordings_kept) {
            return bad(
                "songs.recordings_kept",
                self.songs.recordings_kept,
                "must be between 1 and 1000",
            );
        }
        if self.songs.recordings.chars().any(char::is_control) {
            return bad(
                "songs.recordings",
                &self.songs.recordings,
                "must be a path without control characters",
            );
        }
        if !(5..=86_400).contains(&self.songs.rescan_s) {
            return bad(
                "songs.rescan_s",
                self.songs.rescan_s,
                "must be 5 to 86400 seconds",
            );
        }
        if self.http.cert_file.is_empty() != self.http.key_file.is_empty() {
            return bad(
                "http.cert_file",
                &self.http.cert_file,
                "cert_file and key_file go together: set both or neither",
            );
        }
        self.validate_mqtt()
    }

    fn validate_discovery(&self) -> Result<(), Error> {
        let bad = |key: &str, value: &dyn std::fmt::Display, reason: &str| {
            Err(Error::Invalid {
                key: key.to_string(),
                value: value.to_string(),
                reason: reason.to_string(),
            })
        };
        let host = &self.discovery.host_name;
        if !host.is_empty() && !crate::discovery::is_host_label(host) {
            return bad(
                "discovery.host_name",
                host,
                "must be one DNS label: letters, digits and '-', at most 63, without .local",
            );
        }
        for name in self
            .discovery
            .interfaces
            .iter()
            .chain(&self.discovery.skip_interfaces)
        {
            let body = name.strip_suffix('*').unwrap_or(name);
            if body.is_empty() || body.len() > 15 || body.contains(['*', '/', ' ']) {
                return bad(
                    "discovery.interfaces",
                    name,
                    "an interface name (at most 15 characters), '*' only at the end",
                );
            }
        }
        Ok(())
    }

    fn validate_mqtt(&self) -> Result<(), Error> {
        let bad = |key: &str, value: &dyn std::fmt::Display, reason: &str| {
            Err(Error::Invalid {
                key: key.into(),
                value: value.to_string(),
                reason: reason.into(),
            })
        };
        let m = &self.mqtt;
        if !m.url.is_empty() {
            if let Err(reason) = crate::mqtt::BrokerUrl::parse(&m.url) {
                return bad("mqtt.url", &m.url, &reason);
            }
        }
        if m.client_id.len() > 64 || m.client_id.chars().any(|c| !c.is_ascii_graphic()) {
            return bad(
                "mqtt.client_id",
                &m.client_id,
                "must be at most 64 printable ASCII characters",
            );
        }
        if m.username.len() > 256 || m.password.len() > 256 {
            return bad(
                "mqtt.username",
                &"(hidden)",
                "user name and password must be at most 256 bytes",
            );
        }
        if !m.password.is_empty() && m.username.is_empty() {
            return bad("mqtt.password", &"(hidden)", "needs mqtt.username");
        }
        for (key, topic) in [
            ("mqtt.base_topic", &m.base_topic),
            ("mqtt.discovery_prefix", &m.discovery_prefix),
        ] {
            if let Err(reason) = crate::mqtt::check_topic_prefix(topic) {
                if !(key == "mqtt.base_topic" && topic.is_empty()) {
                    return bad(key, topic, &reason);
                }
            }
        }
        if !(0.0..=10.0).contains(&m.meters_hz) {
            return bad("mqtt.meters_hz", &m.meters_hz, "must be between 0 and 10");
        }
        if !(100..=60_000).contains(&m.state_interval_ms) {
            return bad(
                "mqtt.state_interval_ms",
                &m.state_interval_ms,
                "must be between 100 and 60000",
            );
        }
        if !(5..=600).contains(&m.keep_alive_s) {
            return bad(
                "mqtt.keep_alive_s",
                &m.keep_alive_s,
                "must be between 5 and 600",
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.room.pin.is_empty() {
            shown.room.pin = "(set, hidden)".into();
        }
        if !shown.room.host_pin.is_empty() {
            shown.room.host_pin = "(set, hidden)".into();
        }
        if !shown.mqtt.password.is_empty() {
            shown.mqtt.password = "(set, hidden)".into();
        }
        toml::to_string_pretty(&shown).expect("a Config always serialises")
    }

    /// The limits, typed.
    pub fn limits(&self) -> Limits {
        let l = &self.limits;
        Limits {
            connections_per_address: l.connections_per_address,
            connections_total: l.connections_total,
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            send_buffer_bytes: l.send_buffer_bytes,
            messages_per_s: l.messages_per_s,
            messages_burst: f64::from(l.messages_burst),
            out_queue_messages: l.out_queue_messages,
            candidates_per_connection: l.candidates_per_connection,
            offer_m_lines: l.offer_m_lines,
            packets_per_s: l.packets_per_s,
            packets_burst: f64::from(l.packets_burst),
            room_updates_per_s: l.room_updates_per_s,
        }
    }

    /// The engine's section.
    pub fn engine(&self) -> EngineConfig {
        let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
        let j = &self.jitter;
        EngineConfig {
            period_samples: (self.audio.period_ms * f64::from(SAMPLE_RATE_HZ) / 1000.0).round()
                as usize,
            max_singers: self.room.max_singers,
            jitter: JitterConfig {
                min_delay: ms(j.min_delay_ms),
                max_delay: ms(j.max_delay_ms),
                percentile: j.percentile,
                margin: ms(j.margin_ms),
                shrink_per_s: j.shrink_ms_per_s / 1000.0,
            },
            encoder: EncoderConfig {
                frame_samples: (self.encoder.frame_ms * SAMPLE_RATE_HZ / 1000) as usize,
                bitrate_bps: self.encoder.bitrate_bps as i32,
                complexity: self.encoder.complexity as i32,
                inband_fec: self.encoder.inband_fec,
                expected_loss_pct: if self.encoder.inband_fec { 5 } else { 0 },
            },
            backing_gain_db: self.audio.backing_gain_db,
            master_gain_db: self.audio.master_gain_db,
            limiter_ceiling_db: self.audio.limiter_ceiling_db,
            limiter_lookahead: ms(self.audio.limiter_lookahead_ms),
            limiter_release: ms(self.audio.limiter_release_ms),
        }
    }

    /// The song library folder: the configured one, or `songs` in `state_dir`.
    pub fn library_dir(&self, state_dir: &Path) -> PathBuf {
        if self.songs.library.is_empty() {
            state_dir.join("songs")
        } else {
            PathBuf::from(&self.songs.library)
        }
    }

    /// The recordings folder: the configured one, or `recordings` in `state_dir`.
    pub fn recordings_dir(&self, state_dir: &Path) -> PathBuf {
        if self.songs.recordings.is_empty() {
            state_dir.join("recordings")
        } else {
            PathBuf::from(&self.songs.recordings)
        }
    }

    /// The state directory: the configured one, systemd's `$STATE_DIRECTORY`, or ./state.
    pub fn state_dir(&self, state_directory_env: Option<String>) -> PathBuf {
        if !self.state.dir.is_empty() {
            return PathBuf::from(&self.state.dir);
        }
        match state_directory_env {
            // systemd may pass several, colon-separated; the first is ours.
            Some(dirs) if !dirs.is_empty() => {
                PathBuf::from(dirs.split(':').next().unwrap_or(&dirs))
            }
            _ => PathBuf::from("state"),
        }
    }
}

/// Environment values are TOML values when they parse as one (numbers, booleans,
/// arrays), else plain strings.
fn parse_env_value(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn default_toml_equals_the_built_in_defaults() {
        let parsed = Config::parse(DEFAULT_TOML, no_env()).expect("default.toml parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(
            Config::parse("", no_env()).expect("empty"),
            Config::default()
        );
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_reason() {
        let err = Config::parse("[audio]\nperiod_ms = 1.0\n", no_env()).expect_err("too short");
        assert_eq!(
            err.to_string(),
            "audio.period_ms = 1: must be between 2.5 and 20"
        );
        let err =
            Config::parse("[jitter]\nmin_delay_ms = 300.0\n", no_env()).expect_err("above max");
        assert!(
            err.to_string()
                .starts_with("jitter.min_delay_ms = 300: must be between 0 and"),
            "{err}"
        );
        let err = Config::parse("[encoder]\ncomplexity = 2\n", no_env()).expect_err("low");
        assert!(err.to_string().contains("encoder.complexity = 2"), "{err}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let err = Config::parse("[audio]\nperiod = 5\n", no_env()).expect_err("unknown");
        assert!(err.to_string().contains("unknown field `period`"), "{err}");
        let err = Config::parse("[room]\nmax_singers = \"two\"\n", no_env()).expect_err("type");
        assert!(err.to_string().contains("max_singers"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("DUETBOX_ROOM__PIN".to_string(), "4711".to_string()),
            ("DUETBOX_HTTP__HTTPS_PORT".to_string(), "9443".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::parse("[http]\nhttps_port = 1234\n", env).expect("valid");
        assert_eq!(c.room.pin, "4711");
        assert_eq!(c.http.https_port, 9443);
        assert!(!c.to_redacted_toml().contains("4711"));
    }

    #[test]
    fn the_mqtt_section_is_checked_and_its_password_never_printed() {
        let env = vec![(
            "DUETBOX_MQTT__PASSWORD".to_string(),
            "s3cret-horse".to_string(),
        )];
        let text = "[mqtt]\nurl = \"mqtts://broker.local\"\nusername = \"duetbox\"\n";
        let c = Config::parse(text, env).expect("valid");
        assert_eq!(c.mqtt.password, "s3cret-horse");
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("(set, hidden)"));
        for (bad, key) in [
            ("[mqtt]\nurl = \"http://broker\"\n", "mqtt.url"),
            ("[mqtt]\nurl = \"mqtt://u:p@broker\"\n", "mqtt.url"),
            ("[mqtt]\nbase_topic = \"venue/#\"\n", "mqtt.base_topic"),
            ("[mqtt]\ndiscovery_prefix = \"\"\n", "mqtt.discovery_prefix"),
            ("[mqtt]\nmeters_hz = 50.0\n", "mqtt.meters_hz"),
            ("[mqtt]\npassword = \"x\"\n", "mqtt.password"),
            ("[mqtt]\nclient_id = \"a b\"\n", "mqtt.client_id"),
            ("[box]\nname = \"a\\nb\"\n", "box.name"),
        ] {
            match Config::parse(bad, no_env()) {
                Err(Error::Invalid { key: k, value, .. }) => {
                    assert_eq!(k, key, "{bad}");
                    assert!(!value.contains('x') || key != "mqtt.password", "{value}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn engine_section_is_derived_in_frames() {
        let c = Config::default();
        let e = c.engine();
        assert_eq!(e.period_samples, 240);
        assert_eq!(e.encoder.frame_samples, 480);
        assert_eq!(e.max_singers, 2);
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_config_or_a_keyed_error(text in ".{0,200}") {
            match Config::parse(&text, Vec::new()) {
                Ok(c) => proptest::prop_assert!(c.validate().is_ok()),
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
