//! Wiring and lifecycle: builds the parts from the config, starts the audio thread and
//! the network tasks, and orders shutdown (stop accepting, tell phones, close peers,
//! stop audio).
//!
//! [`run`] also talks to the service manager through [`crate::service`]: READY once
//! [`start`] has returned, STATUS and watchdog pings while running, STOPPING at shutdown.
//!
//! Test-only fault switch: `DUETBOX_TEST_STALL_AUDIO_AFTER_MS=<ms>` makes [`run`] freeze
//! the audio thread (`Counters::stall`) that long after READY, so tests/it/systemd.rs can
//! watch the watchdog pings stop in a real `duetbox serve` process. Unset (always, in
//! production) it does nothing.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::audio::{self, AudioHandle, Sink, SinkError};
use crate::config::Config;
use crate::control::{self, Control, RoomConfig};
use crate::discovery;
use crate::http::{self, HttpSettings, TlsReloader};
use crate::lan::{self, LanAddr, LanFilter};
use crate::mqtt;
use crate::output::{self, OutputSpec};
use crate::rtc::RtcSettings;
use crate::service;
use crate::trust::{self, Authority, Identity, Names};

/// How long requests in flight get at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The test-only fault switch (module doc): stall the audio thread this many ms after
/// READY.
pub const TEST_STALL_AUDIO_ENV: &str = "DUETBOX_TEST_STALL_AUDIO_AFTER_MS";

/// A running box.
pub struct Running {
    /// HTTPS address (the page, /ws, WHIP/WHEP, /health).
    pub https_addr: SocketAddr,
    /// HTTP redirect address.
    pub http_addr: Option<SocketAddr>,
    /// The audio thread's handle (heartbeat, counters).
    pub audio: AudioHandle,
    /// The room's handle (what every surface drives).
    pub control: Control,
    /// What the output is, e.g. "alsa:default" or "null".
    pub output: String,
    server: http::Server,
    audio_join: std::thread::JoinHandle<Result<(), SinkError>>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    announcer: Option<discovery::Announcer>,
}

/// Starts everything; returns once the web server accepts and the audio thread runs.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let engine = config.engine();
    let spec: OutputSpec = config.audio.output.parse().context("audio.output")?;
    let period = engine.period_samples;
    let buffer = period * config.audio.buffer_periods as usize;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let realtime_priority = config.audio.realtime_priority;
    let (audio, audio_join) = audio::spawn(engine, move || {
        if realtime_priority > 0 {
            match audio::make_realtime(realtime_priority) {
                Ok(()) => tracing::info!(priority = realtime_priority, "audio thread is real-time"),
                Err(e) => tracing::warn!(priority = realtime_priority, error = %e,
                    "real-time scheduling refused; the audio thread runs at normal priority"),
            }
        }
        let opened = output::open(&spec, period, buffer);
        match opened {
            Ok((sink, warning)) => {
                let _ = ready_tx.send(Ok(warning.unwrap_or_default() + "\n" + &sink.describe()));
                Ok(sink)
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                Err(e)
            }
        }
    })
    .context("starting the audio thread")?;
    let opened = tokio::task::spawn_blocking(move || ready_rx.recv())
        .await
        .context("waiting for the audio output")?
        .context("the audio thread ended before opening its output")?;
    let output = match opened {
        Ok(text) => {
            let (warning, name) = text.split_once('\n').unwrap_or(("", &text));
            if !warning.is_empty() {
                tracing::warn!(warning, "audio output fell back");
            }
            name.to_string()
        }
        Err(e) => anyhow::bail!("opening the audio output: {e}"),
    };
    tracing::info!(
        output = %output,
        period_frames = audio.counters.device_period_frames.load(Ordering::Relaxed),
        engine_period_frames = period,
        "audio output running"
    );

    let cancel = CancellationToken::new();
    let rtc = RtcSettings {
        udp_bind: config
            .rtc
            .udp_bind
            .iter()
            .map(|a| a.parse::<IpAddr>())
            .collect::<Result<_, _>>()
            .context("rtc.udp_bind")?,
        include_loopback: config.rtc.include_loopback,
        ice_disconnected: Duration::from_millis(config.rtc.ice_disconnected_ms),
        ice_failed: Duration::from_millis(config.rtc.ice_failed_ms),
        ice_keepalive: Duration::from_millis(config.rtc.ice_keepalive_ms),
        uplink_bitrate_bps: config.rtc.uplink_bitrate_bps,
        packets_per_s: config.limits.packets_per_s,
        packets_burst: f64::from(config.limits.packets_burst),
    };
    let state_dir = config.state_dir(std::env::var("STATE_DIRECTORY").ok());
    let library_dir = config.library_dir(&state_dir);
    if config.songs.library.is_empty() {
        // The default library lives in the state directory: make it so songs can be
        // copied in (a configured folder is the operator's to make).
        let _ = std::fs::create_dir_all(&library_dir);
    }
    tracing::info!(library = %library_dir.display(), "song library");
    let recordings_dir = config.recordings_dir(&state_dir);
    let library = crate::songs::library::spawn_indexer(
        library_dir,
        state_dir.join("library.json"),
        Duration::from_secs(config.songs.rescan_s),
    )
    .context("starting the library indexer")?;
    let (control, control_task) = control::start(
        RoomConfig {
            max_singers: config.room.max_singers,
            max_listeners: config.room.max_listeners,
            pin: config.room.pin.clone(),
            host_pin: host_pin(&config.room.host_pin, &state_dir)?,
            rejoin_grace: Duration::from_millis(config.room.rejoin_grace_ms),
            join_deadline: Duration::from_millis(config.room.join_deadline_ms),
            master_gain_db: config.audio.master_gain_db,
            backing_gain_db: config.audio.backing_gain_db,
            count_in_beats: config.songs.count_in_beats,
            count_in: config.songs.count_in(),
            line_in: false,
            max_lead: Duration::from_secs_f64(config.audio.max_lead_ms / 1000.0),
            speaker_latency: Duration::from_secs_f64(config.audio.speaker_latency_ms / 1000.0),
            record: config.songs.record,
        },
        rtc,
        audio.clone(),
        library,
        (!config.audio.line_in.is_empty()).then(|| control::LineInDevice {
            pcm: config.audio.line_in.clone(),
            realtime_priority,
        }),
        config.songs.record.then(|| control::recorder::RecordTo {
            dir: recordings_dir.clone(),
            kept: config.songs.recordings_kept,
        }),
        cancel.clone(),
    )
    .context("starting the song player")?;
    let mut tasks = vec![tokio::spawn(control_task.run())];

    let hostname = std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let box_id = crate::trust::box_id(&state_dir).context("the box id")?;
    let info = mqtt::report::BoxInfo {
        name: match config.identity.name.as_str() {
            "" if hostname.is_empty() => "duetbox".to_string(),
            "" => hostname.clone(),
            name => name.to_string(),
        },
        id: box_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        output: output.clone(),
    };
    tracing::info!(name = info.name, id = info.id, "box identity");
    if let Some(settings) = mqtt::Settings::from_config(&config.mqtt, info.clone()) {
        tracing::info!(
            broker = config.mqtt.url,
            base_topic = settings.base,
            discovery = settings.discovery_prefix.is_some(),
            "MQTT panel on"
        );
        match mqtt::start(settings, control.clone(), audio.clone(), cancel.clone()) {
            Ok(task) => tasks.push(task),
            Err(e) => tracing::error!(error = %e, "MQTT is off: its TLS setup failed"),
        }
    }
    // Trust and discovery: the LAN addresses, the certificate that names them, mDNS.
    let filter = config.discovery.filter();
    let mdns_host = match config.discovery.host_name.as_str() {
        "" => discovery::default_host_name(&info.id),
        name => name.to_string(),
    };
    let mut dns_names = vec![format!("{mdns_host}.local")];
    if discovery::is_host_label(&hostname) && hostname != "localhost" && hostname != mdns_host {
        // avahi-daemon's name for the machine, where it runs.
        dns_names.push(format!("{hostname}.local"));
    }
    let lan_now = lan::addresses(&filter);
    let cert = Certificates::prepare(&config, &state_dir, &info.id, dns_names, &lan_now)?;
    let (lan_tx, lan_rx) = tokio::sync::watch::channel(lan_now.clone());
    let bind: IpAddr = config.http.bind.parse().context("http.bind")?;
    let settings = HttpSettings {
        https: SocketAddr::new(bind, config.http.https_port),
        http: (config.http.http_port != 0).then(|| SocketAddr::new(bind, config.http.http_port)),
        max_message_bytes: config.http.max_message_bytes,
        idle_timeout: Duration::from_millis(config.room.idle_timeout_ms),
        limits: config.limits(),
        recordings_dir: config.songs.record.then(|| recordings_dir.clone()),
    };
    let site = http::Site {
        name: info.name.clone(),
        box_id: info.id.clone(),
        ca_der: cert.authority.as_ref().map(|a| Arc::new(a.cert_der())),
        lan: lan_rx,
    };
    let server = http::start(
        settings,
        &cert.identity,
        site,
        control.clone(),
        audio.clone(),
        output.clone(),
        cancel.clone(),
    )
    .await
    .context("starting the web server")?;
    let join = JoinInfo {
        https_port: server.https_addr.port(),
        http_port: server.http_addr.map(|a| a.port()),
    };
    join.log(&lan_now);
    tasks.push(tokio::spawn(watch_lan(
        filter.clone(),
        lan_tx,
        cert,
        server.tls(),
        join,
        cancel.clone(),
    )));
    let announcer = if config.discovery.mdns {
        let settings = discovery::Settings {
            instance: info.name.clone(),
            host_name: mdns_host,
            box_id: info.id.clone(),
            version: info.version.clone(),
            https_port: server.https_addr.port(),
            filter,
        };
        match discovery::Announcer::start(&settings) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!(error = %e, "mDNS is off: the box cannot be found by name");
                None
            }
        }
    } else {
        None
    };
    Ok(Running {
        https_addr: server.https_addr,
        http_addr: server.http_addr,
        audio,
        control,
        output,
        server,
        audio_join,
        cancel,
        tasks,
        announcer,
    })
}

impl Running {
    /// Stops in order: tell phones and close peers (the control task does both on
    /// cancel, then ends), stop the web server, stop audio.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        if let Some(announcer) = self.announcer {
            // Goodbyes first: finders forget the box before its page goes away.
            let _ = tokio::task::spawn_blocking(move || announcer.stop()).await;
        }
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.server.stop(SHUTDOWN_GRACE).await;
        self.audio.stop();
        let join = self.audio_join;
        let result = tokio::task::spawn_blocking(move || join.join())
            .await
            .context("joining the audio thread")?;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!(e)),
            Err(_) => anyhow::bail!("the audio thread panicked"),
        }
    }
}

/// Runs the box until `shutdown` completes, notifying the service manager (if any).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    tracing::info!(https = %running.https_addr, "duetbox is ready");
    let notifier = Arc::new(service::Notifier::from_env());
    notifier.ready();
    let counters = running.audio.counters.clone();
    let (control, output) = (running.control.clone(), running.output.clone());
    let watchdog = tokio::spawn(service::run_watchdog(
        notifier.clone(),
        move || counters.periods.load(Ordering::Relaxed),
        move || {
            let (singers, listeners) = control.counts();
            service::status_line(singers, listeners, &output)
        },
    ));
    let fault = test_stall_audio(&running.audio);
    shutdown.await;
    notifier.stopping();
    watchdog.abort();
    if let Some(f) = fault {
        f.abort();
    }
    running.stop().await
}

/// The test-only fault switch ([`TEST_STALL_AUDIO_ENV`]); `None` unless it is set.
fn test_stall_audio(audio: &AudioHandle) -> Option<tokio::task::JoinHandle<()>> {
    let text = std::env::var(TEST_STALL_AUDIO_ENV).ok()?;
    let Ok(ms) = text.trim().parse::<u64>() else {
        tracing::warn!(
            value = text,
            "ignored {TEST_STALL_AUDIO_ENV}: not milliseconds"
        );
        return None;
    };
    let counters = audio.counters.clone();
    Some(tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        tracing::warn!("test fault switch: audio thread stalled on purpose");
        counters.stall.store(true, Ordering::Relaxed);
    }))
}

/// Opens an output; used by `start` on the audio thread.
pub fn open_sink(
    spec: &OutputSpec,
    period: usize,
    buffer: usize,
) -> Result<Box<dyn Sink>, SinkError> {
    output::open(spec, period, buffer).map(|(s, _)| s)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// How often the LAN addresses are read for changes.
const LAN_POLL: Duration = Duration::from_secs(2);

/// The served certificate and, unless the operator brought one, the CA that issues it.
struct Certificates {
    identity: Identity,
    authority: Option<Authority>,
    dns_names: Vec<String>,
    names: Names,
    state_dir: std::path::PathBuf,
}

impl Certificates {
    fn prepare(
        config: &Config,
        state_dir: &std::path::Path,
        box_id: &str,
        dns_names: Vec<String>,
        lan_now: &[LanAddr],
    ) -> anyhow::Result<Certificates> {
        let (identity, authority) = if config.http.cert_file.is_empty() {
            let authority = Authority::load_or_create(state_dir, box_id)
                .with_context(|| format!("the box's CA in {}", state_dir.display()))?;
            // Issued below, from the LAN addresses.
            (Identity::default(), Some(authority))
        } else {
            let identity = trust::load_own(
                config.http.cert_file.as_ref(),
                config.http.key_file.as_ref(),
            )
            .context("http.cert_file / http.key_file")?;
            tracing::info!(
                cert = config.http.cert_file,
                "serving the operator's certificate"
            );
            (identity, None)
        };
        let mut cert = Certificates {
            identity,
            authority,
            dns_names,
            names: Names::default(),
            state_dir: state_dir.to_path_buf(),
        };
        cert.reissue(lan_now)?;
        Ok(cert)
    }

    /// Issues a leaf for `lan` if its names differ from the current one's; whether it did.
    fn reissue(&mut self, lan: &[LanAddr]) -> anyhow::Result<bool> {
        let Some(authority) = &self.authority else {
            return Ok(false);
        };
        let ips: Vec<IpAddr> = lan.iter().map(|a| a.ip).collect();
        let (names, public) = Names::for_box(&self.dns_names, &ips);
        if names == self.names {
            return Ok(false);
        }
        if !public.is_empty() {
            tracing::warn!(addresses = ?public,
                "public addresses are not in the certificate: the box's CA vouches only for private ones");
        }
        let identity = authority
            .issue(&names, time::OffsetDateTime::now_utc())
            .context("issuing the https certificate")?;
        if let Err(e) = trust::save_leaf(&self.state_dir, &identity) {
            tracing::warn!(error = %e, "could not save the https certificate (it is served anyway)");
        }
        tracing::info!(dns = ?names.dns, ips = ?names.ips, "issued the https certificate");
        self.identity = identity;
        self.names = names;
        Ok(true)
    }
}

/// The ports of the join URLs.
#[derive(Clone, Copy)]
struct JoinInfo {
    https_port: u16,
    http_port: Option<u16>,
}

impl JoinInfo {
    /// Logs the join URLs and the first one's QR code (terminal and journal).
    fn log(&self, lan: &[LanAddr]) {
        let urls: Vec<String> = lan
            .iter()
            .map(|a| http::landing::url("https", a.ip, self.https_port, "/"))
            .collect();
        let Some(first) = urls.first() else {
            tracing::warn!("no LAN address yet: phones cannot join until the box has one");
            return;
        };
        let help: Vec<String> = match self.http_port {
            Some(port) => lan
                .iter()
                .map(|a| http::landing::url("http", a.ip, port, "/"))
                .collect(),
            None => Vec::new(),
        };
        tracing::info!(
            join = ?urls,
            landing = ?help,
            "phones join at {first}\n{}",
            http::landing::qr_text(first)
        );
    }
}

/// Follows the LAN addresses: tells the landing page, reissues and reloads the
/// certificate, logs the new join URLs. mDNS follows them on its own.
async fn watch_lan(
    filter: LanFilter,
    lan_tx: tokio::sync::watch::Sender<Vec<LanAddr>>,
    mut cert: Certificates,
    tls: TlsReloader,
    join: JoinInfo,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(LAN_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = lan::addresses(&filter);
        if *lan_tx.borrow() == now {
            continue;
        }
        let ips: Vec<IpAddr> = now.iter().map(|a| a.ip).collect();
        tracing::info!(addresses = ?ips, "the LAN addresses changed");
        match cert.reissue(&now) {
            Ok(true) => {
                if let Err(e) = tls.reload(&cert.identity).await {
                    tracing::error!(error = %e, "could not serve the new certificate");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "could not reissue the certificate"
            ),
        }
        join.log(&now);
        lan_tx.send_replace(now);
    }
}

/// The host page's PIN: the configured one, else the one kept in the state directory,
/// else a new 6-digit one kept there (0600). Logged at every start: the venue's
/// installer reads it in the journal (or sets `room.host_pin`).
fn host_pin(configured: &str, state_dir: &std::path::Path) -> anyhow::Result<String> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let file = state_dir.join("host-pin");
    let pin = match std::fs::read_to_string(&file) {
        Ok(text) if text.trim().chars().count() >= 4 => text.trim().to_string(),
        _ => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let pin = format!("{:06}", rand::random::<u32>() % 1_000_000);
            std::fs::create_dir_all(state_dir).context("the state directory")?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("writing {}", file.display()))?;
            f.write_all(pin.as_bytes())
                .with_context(|| format!("writing {}", file.display()))?;
            pin
        }
    };
    tracing::info!(pin, file = %file.display(), "host page PIN (https://<box>/host)");
    Ok(pin)
}
