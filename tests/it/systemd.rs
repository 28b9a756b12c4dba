//! The box as systemd runs it: the real `duetbox serve` binary with the test playing the
//! service manager (its own NOTIFY_SOCKET and WATCHDOG_USEC), SIGTERM with a phone
//! connected, and the unit file checked by systemd's own tools.
//!
//! Asserted: READY=1 arrives only once the HTTPS port accepts (and /health answers);
//! WATCHDOG=1 keeps coming while the audio thread runs and stops when it is stalled on
//! purpose (the test-only switch DUETBOX_TEST_STALL_AUDIO_AFTER_MS); SIGTERM tells a
//! joined WebSocket phone `bye`/`shutdown` and the process exits 0 within 5 s;
//! `systemd-analyze verify` prints nothing for the unit and `systemd-analyze security`
//! rates its exposure at most 2.0; under socket activation (systemd-socket-activate,
//! as a `.socket` unit for ports 80 and 443 would do) the box serves the landing page
//! and HTTPS on the sockets it was given and binds none itself.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::wss::Phone;
use crate::support::{self, BoxProcess, INSTALL_HINT};

/// WATCHDOG_USEC the tests hand the box: pings every 200 ms.
const WATCHDOG_USEC: u64 = 400_000;

/// How long the box may take from exec to READY (first start creates a certificate).
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Pings the box must send in the first 1.5 s after READY (it should send about 7).
const MIN_PINGS_IN_1500_MS: usize = 3;

/// When the fault switch stalls the audio thread, after READY.
const STALL_AFTER_MS: u64 = 2500;

/// The exit deadline after SIGTERM (the unit allows TimeoutStopSec=10s).
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// The highest exposure `systemd-analyze security` may report.
const MAX_EXPOSURE: f64 = 2.0;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test's end of the notify protocol.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Manager {
    fn bind(dir: &Path) -> Manager {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Manager { socket, path }
    }

    /// The next datagram, or `None` when nothing came within `wait`.
    fn recv(&self, wait: Duration) -> Option<(Instant, String)> {
        self.socket
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .expect("read timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }

    /// Every datagram until `until`.
    fn collect_until(&self, until: Instant) -> Vec<(Instant, String)> {
        let mut got = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(m) => got.push(m),
                None => break,
            }
        }
        got
    }

    /// Waits for READY=1, returning what came before it.
    fn wait_ready(&self, the_box: &mut BoxProcess) -> (Instant, Vec<String>) {
        let start = Instant::now();
        let mut before = Vec::new();
        loop {
            if let Some(status) = the_box.exited() {
                panic!(
                    "the box exited ({status}) before READY:\n{}",
                    the_box.log_text()
                );
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "no READY=1 within {READY_DEADLINE:?} (got {before:?}):\n{}",
                the_box.log_text()
            );
            if let Some((at, msg)) = self.recv(Duration::from_millis(100)) {
                if msg.lines().any(|l| l == "READY=1") {
                    return (at, before);
                }
                before.push(msg);
            }
        }
    }
}

fn pings(messages: &[(Instant, String)]) -> Vec<Instant> {
    messages
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(at, _)| *at)
        .collect()
}

/// A rustls client that trusts exactly the box's self-signed certificate (the /health
/// check also proves the box serves the certificate in its state directory).
fn tls_trusting(cert_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("the box's certificate as a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    port: u16,
    cert_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the box's HTTPS port");
    tls_trusting(cert_pem)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with the box (its own certificate trusted)")
}

/// GET /health over HTTPS; returns the status line.
async fn health(port: u16, cert_pem: &str) -> String {
    let mut tls = tls_connect(port, cert_pem).await;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn ready_after_the_port_answers_then_pings_only_while_audio_runs() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let dir = support::scratch_dir("systemd-notify");
    let manager = Manager::bind(&dir);
    let mut the_box = BoxProcess::start(
        &dir,
        &[
            ("NOTIFY_SOCKET", manager.path.display().to_string()),
            ("WATCHDOG_USEC", WATCHDOG_USEC.to_string()),
            (
                duetbox::app::TEST_STALL_AUDIO_ENV,
                STALL_AFTER_MS.to_string(),
            ),
        ],
    );
    let (ready_at, before) = manager.wait_ready(&mut the_box);
    assert!(
        before.iter().all(|m| !m.contains("WATCHDOG=1")),
        "no pings before READY: {before:?}"
    );
    // READY means the web server accepts: connect right now, before anything else.
    let connected = std::net::TcpStream::connect(("127.0.0.1", the_box.https_port));
    assert!(
        connected.is_ok(),
        "READY=1 came but port {} refused: {:?}\n{}",
        the_box.https_port,
        connected.err(),
        the_box.log_text()
    );
    let status = runtime().block_on(health(the_box.https_port, &the_box.cert_pem()));
    assert!(status.contains(" 200 "), "/health after READY: {status}");

    let first = manager.collect_until(ready_at + Duration::from_millis(1500));
    assert!(
        pings(&first).len() >= MIN_PINGS_IN_1500_MS,
        "WATCHDOG=1 while audio runs: {:?}",
        first.iter().map(|(_, m)| m).collect::<Vec<_>>()
    );
    assert!(
        first
            .iter()
            .any(|(_, m)| m == "STATUS=0 singers, 0 listeners, output null"),
        "STATUS line: {:?}",
        first.iter().map(|(_, m)| m).collect::<Vec<_>>()
    );

    // The switch stalls the audio thread STALL_AFTER_MS after READY; keep listening
    // until 2 s after that.
    let stall_at = ready_at + Duration::from_millis(STALL_AFTER_MS);
    let rest = manager.collect_until(stall_at + Duration::from_secs(2));
    let rest_pings = pings(&rest);
    assert!(
        rest_pings
            .iter()
            .any(|at| *at + Duration::from_millis(500) >= stall_at),
        "pings went on until the stall (last {:?} before it)",
        rest_pings
            .last()
            .map(|at| stall_at.saturating_duration_since(*at))
    );
    let last_ping = *rest_pings.last().expect("pings before the stall");
    let silent = (stall_at + Duration::from_secs(2)).saturating_duration_since(last_ping);
    assert!(
        silent >= Duration::from_secs(1),
        "no WATCHDOG=1 for at least 1 s once the audio thread stalled (silent {silent:?}):\n{}",
        the_box.log_text()
    );
    let log = the_box.log_text();
    assert!(
        log.contains("audio thread stalled on purpose")
            && log.contains("audio thread made no progress; watchdog pings withheld"),
        "the box logs the stall and the withheld pings:\n{log}"
    );

    // A stalled box still stops cleanly and says so.
    the_box.terminate();
    let stop = manager.collect_until(Instant::now() + STOP_DEADLINE);
    assert!(
        stop.iter().any(|(_, m)| m == "STOPPING=1"),
        "STOPPING=1 on SIGTERM: {:?}",
        stop.iter().map(|(_, m)| m).collect::<Vec<_>>()
    );
    let status = the_box.wait_exit(STOP_DEADLINE);
    assert!(status.success(), "exit {status}:\n{}", the_box.log_text());
}

#[test]
fn sigterm_tells_a_connected_phone_and_exits_zero_within_5s() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let dir = support::scratch_dir("systemd-sigterm");
    let manager = Manager::bind(&dir);
    let mut the_box = BoxProcess::start(
        &dir,
        &[("NOTIFY_SOCKET", manager.path.display().to_string())],
    );
    manager.wait_ready(&mut the_box);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], the_box.https_port));
    let rt = runtime();
    let mut phone = rt.block_on(async {
        let mut phone = Phone::connect(addr).await;
        phone
            .send(
                serde_json::json!({"type": "join", "v": 1, "name": "Listener", "role": "listener"}),
            )
            .await;
        phone.expect("welcome").await;
        phone
    });

    let terminated = Instant::now();
    the_box.terminate();
    // Phone::expect waits at most wss::REPLY_DEADLINE (5 s) for each message.
    let bye = rt.block_on(phone.expect("bye"));
    assert!(
        terminated.elapsed() <= STOP_DEADLINE,
        "bye within {STOP_DEADLINE:?}"
    );
    assert_eq!(
        bye,
        serde_json::json!({"type": "bye", "reason": "shutdown"}),
        "the phone is told why"
    );
    let status = the_box.wait_exit(STOP_DEADLINE.saturating_sub(terminated.elapsed()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status:\n{}",
        the_box.log_text()
    );
    assert!(
        the_box.log_text().contains("SIGTERM received"),
        "{}",
        the_box.log_text()
    );
}

/// The unit with ExecStart pointed at this build's binary, in `dir` under its own name.
fn unit_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("systemd/duetbox.service"))
        .expect("systemd/duetbox.service");
    let exec = "ExecStart=/usr/bin/duetbox ";
    assert!(text.contains(exec), "the unit starts /usr/bin/duetbox");
    let text = text.replace(
        exec,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_duetbox")),
    );
    let path = dir.join("duetbox.service");
    std::fs::write(&path, text).expect("write the unit copy");
    path
}

fn systemd_analyze(args: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze ({e}): {INSTALL_HINT}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_unit_verifies_without_a_word() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let dir = support::scratch_dir("systemd-verify");
    let unit = unit_copy(&dir);
    let (ok, text) = systemd_analyze(&["verify", "--man=no", &unit.display().to_string()]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn the_unit_exposure_is_at_most_2() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let dir = support::scratch_dir("systemd-security");
    let unit = unit_copy(&dir);
    let (_, text) = systemd_analyze(&["security", "--offline=yes", &unit.display().to_string()]);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{text}"));
    let exposure: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{text}"
    );
}

#[test]
fn the_unit_keeps_its_promises() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let text = std::fs::read_to_string(repo().join("systemd/duetbox.service"))
        .expect("systemd/duetbox.service");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for wanted in [
        "Type=notify",
        "Restart=on-failure",
        "User=duetbox",
        "SupplementaryGroups=audio",
        "StateDirectory=duetbox",
        "ConfigurationDirectory=duetbox",
        "LimitRTPRIO=70",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "DeviceAllow=char-alsa rw",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
    ] {
        assert!(lines.contains(&wanted), "the unit lacks {wanted:?}");
    }
    let watchdog = lines
        .iter()
        .find_map(|l| l.strip_prefix("WatchdogSec="))
        .expect("WatchdogSec=");
    let stop = lines
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec=");
    assert!(
        !watchdog.is_empty() && stop.ends_with('s'),
        "{watchdog} {stop}"
    );
    // The audio thread's real-time request must fit the unit's limit.
    let default = duetbox::config::Config::default();
    assert!(u32::from(default.audio.realtime_priority) <= 70);
    // The connection cap and the peers' sockets must fit the file limit, with room for
    // ALSA, the state files and the runtime's own.
    let nofile: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE=")
        .parse()
        .expect("a number");
    let peers = default.room.max_singers + default.room.max_listeners;
    let needed = default.limits.connections_total + 2 * peers + 256;
    assert!(
        nofile >= needed,
        "LimitNOFILE={nofile} but the defaults need {needed}"
    );
}

#[test]
fn socket_activation_serves_on_the_sockets_systemd_passes_and_binds_none() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let dir = support::scratch_dir("socket-activation");
    let (http_port, https_port) = (support::free_port(), support::free_port());
    // The configured port is held here: binding it would fail, so the box must use
    // what it was given.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let taken = held.local_addr().expect("held port").port();
    let config = format!(
        "[http]\nbind = \"127.0.0.1\"\nhttps_port = {taken}\nhttp_port = {taken}\n\
         [discovery]\nmdns = false\n"
    );
    let prefix: Vec<String> = [
        "systemd-socket-activate".to_string(),
        "-l".to_string(),
        format!("127.0.0.1:{http_port}"),
        "-l".to_string(),
        format!("127.0.0.1:{https_port}"),
    ]
    .to_vec();
    let the_box = BoxProcess::start_with(&dir, &[], &config, https_port, &prefix);
    // systemd-socket-activate starts the box on the first connection, as systemd would.
    let begin = Instant::now();
    let landing = loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{http_port}/"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl ({e}): {INSTALL_HINT}"));
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if body.contains("Open the stage") {
            break body;
        }
        assert!(
            begin.elapsed() < Duration::from_secs(20),
            "no landing page on the passed socket: {body}\n{}",
            the_box.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        landing.contains(&format!("https://127.0.0.1:{https_port}/")),
        "{landing}"
    );
    let status = runtime().block_on(health(https_port, &the_box.cert_pem()));
    assert_eq!(
        status, "HTTP/1.1 200 OK",
        "HTTPS on the passed socket, verified by the CA"
    );
    let log = the_box.log_text();
    assert!(
        log.contains("listening on the socket systemd passed"),
        "{log}"
    );
    drop(held);
}
