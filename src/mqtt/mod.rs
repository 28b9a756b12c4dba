//! The venue panel over MQTT: the box's status, state and meters out, the panel's
//! commands in, and Home Assistant discovery. See `docs/mqtt.md` for the topic tree.
//!
//! Two tasks. The *connection* task owns rumqttc's event loop: it polls it, waits out a
//! backoff after every error (the event loop returns at once after one, so polling
//! again would spin), and forwards what arrives. The *panel* task does the rest: on
//! every new connection it subscribes to `<base>/cmd/+` and publishes the retained
//! status, discovery configs and state; it feeds commands to the room through
//! [`Control`] exactly as a phone's messages go, answers each on `<base>/result` (and
//! the MQTT 5 response topic), and publishes the latest state when the [`Pacer`] says
//! so. Publishes never wait: they are queued with `try_publish`, and only while
//! connected, so a broker that is away costs nothing and no stale backlog piles up.
//!
//! The box never waits for the broker, and the audio never depends on it: nothing
//! here touches the audio thread but its counters.

pub mod commands;
pub mod discovery;
pub mod report;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, LastWill, Packet, Publish, PublishProperties, RetainForwardRule,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audio::AudioHandle;
use crate::control::Control;
use crate::limits::TokenBucket;
use report::{BoxInfo, OutputHealth, Pacer};

/// The first wait after a failed connection; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(250);

/// The longest wait between two attempts while the broker is unreachable: a broker
/// that comes back is found within this (plus the connect itself).
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The longest wait after the broker refused us (wrong password, not authorised,
/// banned): that only changes when someone changes a config, so the waits grow on to
/// this instead of knocking every 2 s.
pub const REFUSED_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A failure that goes on is logged again at most this often (a Pi logs to an SD card).
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(600);

/// How often the panel task looks at the room and the output (a change of structure
/// goes out within this).
const LOOK_INTERVAL: Duration = Duration::from_millis(100);

/// Commands per second a panel may send on average, and in a burst; beyond that they
/// are answered `rate_limited` and not carried out.
pub const COMMANDS_PER_S: f64 = 20.0;
/// See [`COMMANDS_PER_S`].
pub const COMMANDS_BURST: f64 = 40.0;

/// Requests rumqttc may hold for the event loop (discovery of 32 slots is 68).
const REQUEST_QUEUE: usize = 256;

/// Largest packet the broker may send us, bytes (commands are tiny).
const MAX_INCOMING_PACKET: u32 = 16 * 1024;

/// How long a clean stop waits for `offline` to reach the broker.
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// `mqtt://host[:port]` or `mqtts://host[:port]`. Parsed by hand: two schemes and an
/// authority, nothing a URL crate would add but its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// TLS (`mqtts`).
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (1883 or 8883 by default).
    pub port: u16,
}

impl BrokerUrl {
    /// Parses a broker URL; the error says what is wrong.
    pub fn parse(text: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err("must start with mqtt:// or mqtts://".into());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err("put credentials in mqtt.username and mqtt.password".into());
        }
        if rest.contains(['/', '?', '#']) {
            return Err("must be mqtt[s]://host[:port], without a path".into());
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("an unclosed [")?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !host_ok {
            return Err("needs a host name or address".into());
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err("the port must be 1 to 65535".into()),
            },
        };
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// Checks a topic prefix (`mqtt.base_topic`, `mqtt.discovery_prefix`).
pub fn check_topic_prefix(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 200 {
        return Err("must be 1 to 200 bytes".into());
    }
    if topic.contains(['+', '#', '\0']) || topic.starts_with('$') {
        return Err("must not hold +, #, NUL or start with $".into());
    }
    if topic.split('/').any(str::is_empty) {
        return Err("must not start or end with / or hold //".into());
    }
    Ok(())
}

/// Everything the panel tasks need, from the config and the box's identity.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The broker.
    pub url: BrokerUrl,
    /// Client id.
    pub client_id: String,
    /// User name and password, if any.
    pub credentials: Option<(String, String)>,
    /// PEM CA file for TLS.
    pub ca_file: String,
    /// Base topic.
    pub base: String,
    /// Home Assistant discovery prefix, `None` = no discovery.
    pub discovery_prefix: Option<String>,
    /// Meters per second (0 = off).
    pub meters_hz: f64,
    /// Slow pace of the state (figures only).
    pub state_interval: Duration,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Who the box is.
    pub info: BoxInfo,
}

impl Settings {
    /// From the config; `None` when MQTT is off.
    pub fn from_config(m: &crate::config::MqttConfig, info: BoxInfo) -> Option<Settings> {
        if m.url.is_empty() {
            return None;
        }
        let url = BrokerUrl::parse(&m.url).ok()?;
        let or = |s: &str, default: String| if s.is_empty() { default } else { s.to_string() };
        Some(Settings {
            url,
            client_id: or(&m.client_id, format!("duetbox-{}", info.id)),
            credentials: (!m.username.is_empty()).then(|| (m.username.clone(), m.password.clone())),
            ca_file: m.ca_file.clone(),
            base: or(&m.base_topic, format!("duetbox/{}", info.id)),
            discovery_prefix: m.discovery.then(|| m.discovery_prefix.clone()),
            meters_hz: m.meters_hz,
            state_interval: Duration::from_millis(m.state_interval_ms),
            keep_alive: Duration::from_secs(m.keep_alive_s),
            info,
        })
    }
}

/// The system's CA bundle (Debian's ca-certificates), used when `ca_file` is "".
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A rustls client config on ring (the provider the HTTPS server uses; see the module
/// docs of `http`) that trusts the CAs in `ca_file`.
fn tls_config(ca_file: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let path = if ca_file.is_empty() {
        SYSTEM_CA_FILE
    } else {
        ca_file
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{path}: {e}"))? {
        let cert = cert.map_err(|e| format!("{path}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{path}: a certificate rustls refuses: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Starts the panel's two tasks; they end at `shutdown` (after publishing `offline`).
/// Fails only for a TLS setup the box cannot use (the CA file); the caller logs it and
/// runs on without MQTT.
pub fn start(
    settings: Settings,
    control: Control,
    audio: AudioHandle,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut options = MqttOptions::new(
        settings.client_id.clone(),
        settings.url.host.clone(),
        settings.url.port,
    );
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_start(true)
        .set_max_packet_size(Some(MAX_INCOMING_PACKET))
        .set_connection_timeout(5)
        .set_last_will(LastWill::new(
            format!("{}/status", settings.base),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
    if let Some((user, password)) = &settings.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if settings.url.tls {
        let config = tls_config(&settings.ca_file)?;
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    }
    let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
    let (events_tx, events) = mpsc::channel(64);
    let span = tracing::info_span!("mqtt", broker = %format!("{}:{}", settings.url.host, settings.url.port));
    let connection_stop = CancellationToken::new();
    tokio::spawn(
        connection(eventloop, events_tx, connection_stop.clone()).instrument(span.clone()),
    );
    let panel = Panel {
        pacer: Pacer::new(LOOK_INTERVAL, settings.state_interval),
        settings,
        client,
        control,
        audio,
        connected: false,
        commands: TokenBucket::new(COMMANDS_PER_S, COMMANDS_BURST),
        heartbeat: (0, Duration::ZERO),
        dropped: 0,
        started: Duration::ZERO,
    };
    Ok(tokio::spawn(
        panel
            .run(events, shutdown, connection_stop)
            .instrument(span),
    ))
}

/// What the connection task tells the panel task.
enum Note {
    Connected,
    Lost,
    Command(Box<Publish>),
    Disconnected,
}

/// Polls the event loop until `stop`; waits out a backoff after each error.
async fn connection(mut eventloop: EventLoop, notes: mpsc::Sender<Note>, stop: CancellationToken) {
    let mut backoff = BACKOFF_START;
    let mut failures = FailureLog::default();
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => return,
            polled = eventloop.poll() => polled,
        };
        let note = match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = BACKOFF_START;
                failures.connected();
                Some(Note::Connected)
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Some(Note::Command(Box::new(p))),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = notes.send(Note::Disconnected).await;
                return;
            }
            Ok(_) => None,
            Err(e) => {
                let refused = matches!(
                    e,
                    ConnectionError::ConnectionRefused(
                        ConnectReturnCode::BadUserNamePassword
                            | ConnectReturnCode::NotAuthorized
                            | ConnectReturnCode::Banned
                            | ConnectReturnCode::BadAuthenticationMethod
                            | ConnectReturnCode::ClientIdentifierNotValid
                    )
                );
                failures.failed(&e, refused);
                let _ = notes.send(Note::Lost).await;
                let cap = if refused {
                    REFUSED_BACKOFF_MAX
                } else {
                    BACKOFF_MAX
                };
                let wait = backoff.min(cap);
                backoff = (wait * 2).min(cap);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                None
            }
        };
        if let Some(note) = note {
            if notes.send(note).await.is_err() {
                return;
            }
        }
    }
}

/// Logs a broker failure once, not once per attempt: the first of each kind, then the
/// same again at most every [`FAILURE_LOG_INTERVAL`] with the attempts meanwhile.
#[derive(Default)]
struct FailureLog {
    last: Option<String>,
    attempts: u64,
    logged_at: Option<tokio::time::Instant>,
    was_connected: bool,
}

impl FailureLog {
    fn failed(&mut self, e: &ConnectionError, refused: bool) {
        let text = e.to_string();
        self.attempts += 1;
        let now = tokio::time::Instant::now();
        let again = self.last.as_deref() == Some(text.as_str())
            && self
                .logged_at
                .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_INTERVAL);
        if again {
            return;
        }
        if refused {
            tracing::error!(
                error = %text,
                attempts = self.attempts,
                "the MQTT broker refused the box: check mqtt.username, mqtt.password and the \
                 broker's ACL; retrying at most every 30 s, phones and audio are not affected"
            );
        } else if self.was_connected {
            tracing::warn!(error = %text, "lost the MQTT broker; reconnecting");
        } else {
            tracing::warn!(
                error = %text,
                attempts = self.attempts,
                "cannot reach the MQTT broker; retrying, phones and audio are not affected"
            );
        }
        self.last = Some(text);
        self.logged_at = Some(now);
        self.was_connected = false;
    }

    fn connected(&mut self) {
        tracing::info!(
            after_attempts = self.attempts,
            "connected to the MQTT broker"
        );
        *self = FailureLog {
            was_connected: true,
            ..FailureLog::default()
        };
    }
}

struct Panel {
    settings: Settings,
    client: AsyncClient,
    control: Control,
    audio: AudioHandle,
    pacer: Pacer,
    connected: bool,
    /// Meters the panel's commands.
    commands: TokenBucket,
    /// The audio heartbeat last seen, and when it moved.
    heartbeat: (u64, Duration),
    /// Publishes rumqttc's queue had no room for.
    dropped: u64,
    started: Duration,
}

impl Panel {
    async fn run(
        mut self,
        mut notes: mpsc::Receiver<Note>,
        shutdown: CancellationToken,
        connection_stop: CancellationToken,
    ) {
        self.started = self.audio.clock.now();
        let mut look = tokio::time::interval(LOOK_INTERVAL);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut meters = (self.settings.meters_hz > 0.0).then(|| {
            let mut t =
                tokio::time::interval(Duration::from_secs_f64(1.0 / self.settings.meters_hz));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            t
        });
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                note = notes.recv() => match note {
                    Some(Note::Connected) => self.on_connect(),
                    Some(Note::Lost) => self.connected = false,
                    Some(Note::Command(p)) => self.command(*p).await,
                    Some(Note::Disconnected) | None => {
                        self.connected = false;
                    }
                },
                _ = look.tick() => self.look(),
                _ = tick(&mut meters) => self.meters(),
            }
        }
        self.stop(notes, connection_stop).await;
    }

    fn topic(&self, leaf: &str) -> String {
        format!("{}/{leaf}", self.settings.base)
    }

    fn publish(&mut self, topic: String, retain: bool, payload: Vec<u8>) {
        self.publish_with(topic, retain, payload, None);
    }

    fn publish_with(
        &mut self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
        properties: Option<PublishProperties>,
    ) {
        if !self.connected {
            return;
        }
        let qos = if retain {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let sent = match properties {
            Some(p) => self
                .client
                .try_publish_with_properties(topic, qos, retain, payload, p),
            None => self.client.try_publish(topic, qos, retain, payload),
        };
        if sent.is_err() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "MQTT messages dropped: the broker connection cannot keep up"
                );
            }
        }
    }

    fn on_connect(&mut self) {
        self.connected = true;
        let filter = Filter {
            retain_forward_rule: RetainForwardRule::Never,
            ..Filter::new(self.topic("cmd/+"), QoS::AtLeastOnce)
        };
        if let Err(e) = self.client.try_subscribe_many([filter]) {
            tracing::warn!(error = %e, "could not subscribe to the command topics");
        }
        self.publish(self.topic("status"), true, b"online".to_vec());
        if let Some(prefix) = self.settings.discovery_prefix.clone() {
            let slots = self.control.max_singers();
            for c in discovery::configs(&self.settings.info, &self.settings.base, &prefix, slots) {
                self.publish(c.topic, true, c.payload.to_string().into_bytes());
            }
        }
        self.pacer.reset();
        self.look();
    }

    fn health(&mut self) -> OutputHealth {
        let c = &self.audio.counters;
        let now = self.audio.clock.now();
        let periods = c.periods.load(Ordering::Relaxed);
        if periods != self.heartbeat.0 {
            self.heartbeat = (periods, now);
        }
        OutputHealth {
            running: now.saturating_sub(self.heartbeat.1) < Duration::from_millis(500),
            period_frames: c.device_period_frames.load(Ordering::Relaxed),
            xruns: c.xruns.load(Ordering::Relaxed),
        }
    }

    /// Publishes the state of now if the pacer says it is due.
    fn look(&mut self) {
        let health = self.health();
        if !self.connected {
            return;
        }
        let now = self.audio.clock.now();
        let view = self.control.view();
        let song_ms = view
            .song
            .as_ref()
            .map(|s| self.control.song_clock().speakers_ms(&s.now, now));
        let state = report::state(
            &self.settings.info,
            &view,
            &health,
            now.saturating_sub(self.started),
            song_ms,
        );
        if self.pacer.due(now, &state) {
            self.publish(self.topic("state"), true, state.to_string().into_bytes());
        }
    }

    fn meters(&mut self) {
        if !self.connected {
            return;
        }
        let m = report::meters(&self.control.view(), self.control.venue_level_db());
        self.publish(self.topic("meters"), false, m.to_string().into_bytes());
    }

    async fn command(&mut self, p: Publish) {
        let topic = String::from_utf8_lossy(&p.topic);
        let Some(name) = topic
            .strip_prefix(&self.settings.base)
            .and_then(|t| t.strip_prefix("/cmd/"))
        else {
            return; // Not ours (a broker bug or a shared subscription).
        };
        if p.retain {
            // A retained command would run again at every reconnect.
            tracing::debug!(cmd = name, "ignored a retained command");
            return;
        }
        let parsed = commands::parse(name, &p.payload);
        let outcome = match parsed.input {
            Err(failure) => Err(failure),
            Ok(_) if !self.commands.take(self.audio.clock.now()) => Err(commands::Failure {
                code: "rate_limited",
                message: format!("at most {COMMANDS_PER_S} commands a second"),
            }),
            Ok(input) => {
                let done = self.control.handle(input).await;
                done.map(|_| ()).map_err(commands::refused)
            }
        };
        match &outcome {
            Ok(()) => tracing::info!(cmd = parsed.name, "panel command"),
            Err(f) => tracing::debug!(cmd = parsed.name, error = f.code, "panel command refused"),
        }
        let result = commands::result(parsed.name, parsed.id.as_ref(), &outcome)
            .to_string()
            .into_bytes();
        if let Some(props) = &p.properties {
            if let Some(response) = props.response_topic.as_deref() {
                if self.response_topic_ok(response) {
                    let properties = PublishProperties {
                        correlation_data: props.correlation_data.clone(),
                        ..PublishProperties::default()
                    };
                    self.publish_with(
                        response.to_string(),
                        false,
                        result.clone(),
                        Some(properties),
                    );
                }
            }
        }
        self.publish(self.topic("result"), false, result);
        // A command's effect goes out with the next look (within LOOK_INTERVAL).
    }

    /// A response topic may not be one of the box's own or Home Assistant's: whoever
    /// can send commands must not make the box overwrite its own topics.
    fn response_topic_ok(&self, topic: &str) -> bool {
        let inside = |prefix: &str| topic == prefix || topic.starts_with(&format!("{prefix}/"));
        !topic.is_empty()
            && topic.len() <= 256
            && !topic.contains(['+', '#', '\0'])
            && !inside(&self.settings.base)
            && !self
                .settings
                .discovery_prefix
                .as_deref()
                .is_some_and(inside)
    }

    /// A clean stop: `offline` (retained), then a proper disconnect, so the broker does
    /// not need the last will.
    async fn stop(mut self, mut notes: mpsc::Receiver<Note>, connection_stop: CancellationToken) {
        if self.connected {
            self.publish(self.topic("status"), true, b"offline".to_vec());
            let _ = self.client.try_disconnect();
            let _ = tokio::time::timeout(STOP_DEADLINE, async {
                while let Some(note) = notes.recv().await {
                    if matches!(note, Note::Disconnected | Note::Lost) {
                        break;
                    }
                }
            })
            .await;
        }
        connection_stop.cancel();
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_read_or_refused_with_a_reason() {
        let url = |t: &str| BrokerUrl::parse(t);
        assert_eq!(
            url("mqtt://broker.local").unwrap(),
            BrokerUrl {
                tls: false,
                host: "broker.local".into(),
                port: 1883
            }
        );
        assert_eq!(url("mqtts://10.0.0.2/").unwrap().port, 8883);
        assert_eq!(url("mqtt://127.0.0.1:1884").unwrap().port, 1884);
        let v6 = url("mqtts://[::1]:8884").unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.tls), ("::1", 8884, true));
        for bad in [
            "",
            "tcp://host",
            "http://host",
            "mqtt://",
            "mqtt://user:pw@host",
            "mqtt://host:0",
            "mqtt://host:65536",
            "mqtt://host:+1",
            "mqtt://host/path",
            "mqtt://ho st",
            "mqtt://[::1",
        ] {
            assert!(url(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn topic_prefixes_have_no_wildcards_or_empty_levels() {
        assert!(check_topic_prefix("duetbox/0123456789ab").is_ok());
        assert!(check_topic_prefix("venue/karaoke").is_ok());
        for bad in ["", "a/+/b", "a/#", "/a", "a/", "a//b", "$SYS/x"] {
            assert!(check_topic_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
