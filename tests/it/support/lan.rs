//! A small venue LAN for one test: two network namespaces, "box" and "phone", joined by
//! a veth pair, never touching the machine's own namespace (mDNS there would reach the
//! machine's real network, PLATFORM.md §3). The box runs in one, the clients (avahi,
//! `duetbox find`, openssl, Chromium) in the other.
//!
//! Also [`Avahi`]: a real avahi-daemon (the client we did not write) on a private D-Bus
//! system bus of its own, in one namespace, with `avahi-browse` and `avahi-resolve`.
//!
//! Needs root, iproute2, avahi-daemon, avahi-utils and dbus (scripts/setup.sh test).
//! Everything started is stopped by PID on drop; the namespaces are deleted (and with
//! them the veth pair). Addresses: 10.214.X.0/24, X from this process's id and a
//! per-process counter, so parallel test processes do not collide.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use super::netns::{ip, wait_settled};
use super::INSTALL_HINT;

static NEXT: AtomicU8 = AtomicU8::new(0);

/// Two namespaces on one /24.
pub struct Lan {
    /// The box's namespace.
    pub box_ns: String,
    /// The clients' namespace.
    pub phone_ns: String,
    /// The box's interface (in `box_ns`).
    pub box_if: String,
    /// The clients' interface (in `phone_ns`).
    pub phone_if: String,
    /// The box's address.
    pub box_ip: Ipv4Addr,
    /// The clients' address.
    pub phone_ip: Ipv4Addr,
}

impl Lan {
    /// Creates both namespaces (loopback up) and the link between them.
    pub fn create() -> Lan {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 100_000);
        let x = ((pid as usize * 7 + n as usize) % 250) as u8;
        let lan = Lan {
            box_ns: format!("dbxbox{tag}"),
            phone_ns: format!("dbxph{tag}"),
            box_if: format!("lanb{tag}"),
            phone_if: format!("lanp{tag}"),
            box_ip: Ipv4Addr::new(10, 214, x, 1),
            phone_ip: Ipv4Addr::new(10, 214, x, 2),
        };
        for ns in [&lan.box_ns, &lan.phone_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &lan.box_ns,
            "link",
            "add",
            &lan.box_if,
            "type",
            "veth",
            "peer",
            "name",
            &lan.phone_if,
            "netns",
            &lan.phone_ns,
        ]);
        for (ns, dev, addr) in [
            (&lan.box_ns, &lan.box_if, lan.box_ip),
            (&lan.phone_ns, &lan.phone_if, lan.phone_ip),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        wait_settled(Some(&lan.box_ns), &lan.box_if);
        wait_settled(Some(&lan.phone_ns), &lan.phone_if);
        lan
    }

    /// `ip netns exec <ns>` as a command prefix.
    pub fn exec(ns: &str) -> Vec<String> {
        ["ip", "netns", "exec", ns]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Runs `program args` in `ns` to completion.
    pub fn run(ns: &str, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {ns} ({e}): {INSTALL_HINT}"))
    }

    /// Adds `addr/24` to the box's interface (a second address, as DHCP may give).
    pub fn add_box_address(&self, addr: Ipv4Addr) {
        ip(&[
            "-n",
            &self.box_ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &self.box_if,
        ]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in [&self.box_ns, &self.phone_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A child process killed (and reaped) on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// avahi-daemon in one namespace, on a D-Bus system bus of its own.
pub struct Avahi {
    bus: String,
    ns: String,
    log: PathBuf,
    _daemon: Killed,
    dbus_pid: u32,
}

impl Avahi {
    /// Starts a bus and avahi-daemon in `ns`, on interface `iface` only, calling itself
    /// `host_name`.local; waits until it says its start-up is complete.
    pub fn start(dir: &Path, ns: &str, iface: &str, host_name: &str) -> Avahi {
        std::fs::create_dir_all(dir).expect("avahi dir");
        let socket = dir.join("bus");
        let _ = std::fs::remove_file(&socket);
        let bus_conf = dir.join("bus.conf");
        std::fs::write(
            &bus_conf,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
                 <allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n",
                socket.display()
            ),
        )
        .expect("bus config");
        let out = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", bus_conf.display()))
            .args(["--fork", "--print-pid"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run dbus-daemon ({e}): {INSTALL_HINT}"));
        assert!(out.status.success(), "dbus-daemon: {out:?}");
        let dbus_pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("dbus-daemon's pid");
        let avahi_conf = dir.join("avahi-daemon.conf");
        std::fs::write(
            &avahi_conf,
            format!(
                "[server]\nhost-name={host_name}\nuse-ipv4=yes\nuse-ipv6=no\n\
                 allow-interfaces={iface}\nratelimit-interval-usec=1000000\nratelimit-burst=1000\n\
                 [wide-area]\nenable-wide-area=no\n\
                 [publish]\npublish-hinfo=no\npublish-workstation=no\n"
            ),
        )
        .expect("avahi config");
        let bus = format!("unix:path={}", socket.display());
        let log = dir.join("avahi.log");
        let log_file = std::fs::File::create(&log).expect("avahi log");
        // Its pid file lives in /run/avahi-daemon: a tmpfs of its own there (`ip netns
        // exec` gives it a mount namespace), so several daemons never see each other's.
        let daemon = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg(format!(
                "mkdir -p /run/avahi-daemon && mount -t tmpfs tmpfs /run/avahi-daemon && \
                 exec avahi-daemon -f {} --no-drop-root --no-chroot --no-rlimits",
                avahi_conf.display()
            ))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run avahi-daemon ({e}): {INSTALL_HINT}"));
        let avahi = Avahi {
            bus,
            ns: ns.to_string(),
            log,
            _daemon: Killed(daemon),
            dbus_pid,
        };
        super::poll(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                avahi
                    .log_text()
                    .contains("Server startup complete")
                    .then_some(())
            },
            || format!("avahi-daemon did not start:\n{}", avahi.log_text()),
        );
        avahi
    }

    /// What the daemon logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An avahi client command (`avahi-browse`, `avahi-resolve`) in this namespace, on
    /// this daemon's bus.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program])
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Avahi {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.dbus_pid.to_string()).output();
    }
}

/// One line of `avahi-browse -p -r`: `=;iface;IPv4;name;type;domain;host;address;port;txt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The instance name (avahi's escapes undone for spaces).
    pub name: String,
    /// The host name.
    pub host: String,
    /// The address.
    pub address: String,
    /// The port.
    pub port: u16,
    /// The TXT record, `key=value` strings.
    pub txt: Vec<String>,
}

/// The resolved (`=`) lines of `avahi-browse -p -r` output.
pub fn parse_browse(text: &str) -> Vec<Resolved> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.splitn(10, ';').collect();
            if fields.len() < 10 || fields[0] != "=" {
                return None;
            }
            let txt = fields[9]
                .split("\" \"")
                .map(|t| t.trim_matches('"').to_string())
                .filter(|t| !t.is_empty())
                .collect();
            Some(Resolved {
                name: fields[3].replace("\\032", " "),
                host: fields[6].to_string(),
                address: fields[7].to_string(),
                port: fields[8].parse().unwrap_or(0),
                txt,
            })
        })
        .collect()
}
