//! The service manager's notifications: READY, STATUS, STOPPING and the watchdog.
//!
//! The only module that knows `NOTIFY_SOCKET`. systemd (`Type=notify`, `WatchdogSec=`)
//! passes `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), `WATCHDOG_USEC`
//! and `WATCHDOG_PID`; the protocol is one datagram of `KEY=VALUE` lines per message.
//! That is a few lines over [`std::os::unix::net::UnixDatagram`], so no crate: the
//! `sd-notify`/`libsystemd` crates would add a dependency (or a C library to
//! cross-compile) for what [`Notifier::send`] does, and the part that matters, the
//! watchdog policy, is ours either way.
//!
//! Policy: [`run_watchdog`] pings only while the audio heartbeat (periods rendered)
//! moves, so a stuck audio thread stops the pings and systemd restarts the box; this
//! module never learns why the heartbeat stopped (it knows no ALSA), and the audio
//! thread never learns of systemd.
//!
//! Invariants: without `NOTIFY_SOCKET` every call is a no-op; a failed send is logged,
//! never fatal, and never blocks (the socket is non-blocking).

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often STATUS is refreshed when no watchdog asks for a faster tick.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// A malformed service-manager environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error("NOTIFY_SOCKET {value:?}: expected an absolute path or @name")]
    BadSocket {
        /// The value as given.
        value: String,
    },
    /// `WATCHDOG_USEC` is not a positive integer.
    #[error("WATCHDOG_USEC {value:?}: expected a positive number of microseconds")]
    BadWatchdog {
        /// The value as given.
        value: String,
    },
}

/// Where the service manager listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifySocket {
    /// A socket file.
    Path(PathBuf),
    /// An abstract socket (Linux), the name without the leading `@`.
    Abstract(Vec<u8>),
}

/// What the environment asks of us, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceEnv {
    /// Where to send notifications; `None` when not run by a service manager.
    pub socket: Option<NotifySocket>,
    /// The watchdog timeout (`WATCHDOG_USEC`), when it is meant for this process.
    pub watchdog: Option<Duration>,
}

impl ServiceEnv {
    /// Parses the three variables as sd_notify(3) and sd_watchdog_enabled(3) do: the
    /// watchdog applies only if `WATCHDOG_PID` is unset or equals `own_pid`.
    pub fn parse(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Result<ServiceEnv, Error> {
        let socket = match notify_socket {
            None => None,
            Some(raw) => {
                use std::os::unix::ffi::OsStrExt;
                let bytes = raw.as_bytes();
                match bytes.first() {
                    Some(b'/') => Some(NotifySocket::Path(PathBuf::from(raw))),
                    Some(b'@') if bytes.len() > 1 => {
                        Some(NotifySocket::Abstract(bytes[1..].to_vec()))
                    }
                    _ => {
                        return Err(Error::BadSocket {
                            value: raw.to_string_lossy().into_owned(),
                        })
                    }
                }
            }
        };
        let for_us = match watchdog_pid {
            None => true,
            Some(pid) => pid.trim().parse::<u32>().ok() == Some(own_pid),
        };
        let watchdog = match watchdog_usec {
            Some(usec) if for_us => match usec.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(Duration::from_micros(n)),
                _ => {
                    return Err(Error::BadWatchdog {
                        value: usec.to_string(),
                    })
                }
            },
            _ => None,
        };
        Ok(ServiceEnv { socket, watchdog })
    }
}

/// Sends notifications to the service manager (or nowhere, when there is none).
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    /// Set after the first failed send, so a gone manager is logged once.
    failed: AtomicBool,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            failed: AtomicBool::new(false),
        }
    }

    /// From this process's environment. A malformed environment is logged and the
    /// notifier disabled: the box runs either way.
    pub fn from_env() -> Notifier {
        let parsed = ServiceEnv::parse(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        let env = match parsed {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(error = %e, "bad service-manager environment; not notifying");
                return Notifier::disabled();
            }
        };
        Notifier::new(env).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot open the notify socket; not notifying");
            Notifier::disabled()
        })
    }

    /// A notifier for a parsed environment.
    pub fn new(env: ServiceEnv) -> io::Result<Notifier> {
        let target = match env.socket {
            None => None,
            Some(socket) => {
                let addr = match socket {
                    NotifySocket::Path(path) => SocketAddr::from_pathname(path)?,
                    NotifySocket::Abstract(name) => {
                        use std::os::linux::net::SocketAddrExt;
                        SocketAddr::from_abstract_name(name)?
                    }
                };
                let sock = UnixDatagram::unbound()?;
                // A full receive queue must not stall the runtime: drop the message.
                sock.set_nonblocking(true)?;
                Some((sock, addr))
            }
        };
        Ok(Notifier {
            watchdog: env.watchdog.filter(|_| target.is_some()),
            target,
            failed: AtomicBool::new(false),
        })
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd expects pings within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Startup is complete: the web server accepts and the audio output runs.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line human summary for `systemctl status` (newlines become spaces).
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Tells the watchdog we are alive.
    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    /// Sends one datagram; failures are logged once (debug after that).
    pub fn send(&self, message: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
            if self.failed.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %e, "notify send failed");
            } else {
                tracing::warn!(error = %e, "cannot notify the service manager");
            }
        }
    }
}

/// The status line: "2 singers, 5 listeners, output alsa:hw:1".
pub fn status_line(singers: usize, listeners: usize, output: &str) -> String {
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("1 {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    format!(
        "{}, {}, output {output}",
        plural(singers, "singer"),
        plural(listeners, "listener")
    )
}

/// How often [`run_watchdog`] looks: half the watchdog timeout (as sd_watchdog_enabled(3)
/// advises), at most [`STATUS_INTERVAL`] so the status stays fresh.
pub fn tick_interval(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(STATUS_INTERVAL, |w| (w / 2).min(STATUS_INTERVAL))
}

/// Keeps STATUS fresh and, with a watchdog, sends `WATCHDOG=1` on every tick on which
/// `heartbeat` has moved since the previous tick. Returns at once without a service
/// manager; otherwise runs until aborted.
pub async fn run_watchdog(
    notifier: Arc<Notifier>,
    heartbeat: impl Fn() -> u64,
    status: impl Fn() -> String,
) {
    if !notifier.is_enabled() {
        return;
    }
    let period = tick_interval(notifier.watchdog());
    // The first look is one period from now: the heartbeat needs that long to move.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = heartbeat();
    let mut last_status = status();
    notifier.status(&last_status);
    let mut stalled = false;
    loop {
        tick.tick().await;
        let now_status = status();
        if now_status != last_status {
            notifier.status(&now_status);
            last_status = now_status;
        }
        if notifier.watchdog().is_none() {
            continue;
        }
        let beat = heartbeat();
        if beat != last_beat {
            notifier.watchdog_ping();
            if stalled {
                tracing::info!("audio thread progressing again; watchdog pings resumed");
                stalled = false;
            }
        } else if !stalled {
            tracing::error!(
                periods = beat,
                "audio thread made no progress; watchdog pings withheld"
            );
            stalled = true;
        }
        last_beat = beat;
    }
}

#[cfg(test)]
mod tests;
