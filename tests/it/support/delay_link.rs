//! A slow network between one test's phones and the box: a network namespace whose only
//! link to the machine is a pair of TUN devices, with this process carrying every IP
//! packet between them, `up` late towards the box and `down` late towards the phones.
//! This kernel has no netem (PLATFORM.md §7), so the delay is the test's own: a
//! relay at the IP layer, which delays UDP (the media) and TCP (the page, the
//! WebSocket and its clock pings) alike, as a real network would.
//!
//! The phones (their browsers and the node driver) run inside the namespace
//! ([`DelayLink::exec_prefix`]) and reach the box at [`DelayLink::host_ip`]. Needs root
//! and iproute2 (scripts/setup.sh test). Dropping the link stops the relay and deletes
//! the namespace.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::ip;

/// Links made by this process so far (names and addresses).
static NEXT: AtomicU8 = AtomicU8::new(0);

/// `ioctl` request that makes a `/dev/net/tun` file a TUN device (linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// A layer-3 device, packets without the 4-byte packet-information header.
const IFF_TUN_NO_PI: libc::c_short = 0x0001 | 0x1000;

/// Longest a relay thread sleeps before it looks at its stop flag.
const TICK: Duration = Duration::from_millis(10);

/// The namespace, its link and the relay threads.
pub struct DelayLink {
    /// The namespace's name (for `ip netns exec`).
    pub name: String,
    /// The machine's address on the link (the box listens here).
    pub host_ip: Ipv4Addr,
    stop: Arc<AtomicBool>,
    relays: Vec<JoinHandle<()>>,
}

/// Opens a new TUN device `name` in the calling thread's network namespace.
#[allow(unsafe_code)]
fn open_tun(name: &str) -> File {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap_or_else(|e| panic!("/dev/net/tun: {e} (needs root)"));
    // struct ifreq: the name (16 bytes), then a union whose first member is the flags.
    let mut ifreq = [0u8; 40];
    assert!(name.len() < 16, "interface name {name} too long");
    ifreq[..name.len()].copy_from_slice(name.as_bytes());
    ifreq[16..18].copy_from_slice(&IFF_TUN_NO_PI.to_ne_bytes());
    // SAFETY: a valid descriptor and a 40-byte buffer the size of struct ifreq, which
    // TUNSETIFF reads (name, flags) and writes (the name given) within.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, ifreq.as_mut_ptr()) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}

/// Opens a TUN device `name` inside namespace `ns`: from a thread that joins the
/// namespace (only that thread does) and ends; the file stays the device's.
#[allow(unsafe_code)]
fn open_tun_in(ns: &str, name: &str) -> File {
    let (ns, name) = (ns.to_string(), name.to_string());
    std::thread::spawn(move || {
        let handle = File::open(format!("/var/run/netns/{ns}"))
            .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
        // SAFETY: a namespace file descriptor, valid for the call; setns changes only
        // this thread's namespace, and this thread ends right after.
        let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
        open_tun(&name)
    })
    .join()
    .expect("the thread that opens the namespace's TUN device")
}

/// Waits up to `wait` for `from` to be readable.
#[allow(unsafe_code)]
fn readable(from: &File, wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: from.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let rc = unsafe { libc::ppoll(&mut fd, 1, &timeout, std::ptr::null()) };
    rc > 0 && fd.revents & libc::POLLIN != 0
}

/// Carries packets from `from` to `to`, each `delay` after it was read, in order.
fn relay(from: File, mut to: File, delay: Duration, stop: Arc<AtomicBool>) {
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, packet) = held.pop_front().expect("checked");
            // A packet the other side cannot take (its link went down) is lost, as on
            // a network.
            let _ = to.write(&packet);
        }
        let wait = held
            .front()
            .map_or(TICK, |(due, _)| due.saturating_duration_since(now))
            .min(TICK);
        if readable(&from, wait) {
            if let Ok(n) = (&from).read(&mut buf) {
                held.push_back((Instant::now() + delay, buf[..n].to_vec()));
            }
        }
    }
}

impl DelayLink {
    /// Makes the namespace and its link, and starts relaying: `up` towards the box,
    /// `down` towards the phones.
    pub fn create(up: Duration, down: Duration) -> DelayLink {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 60, "too many delay links in one test process");
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 100_000);
        let name = format!("dbd{tag}");
        let (host_if, ns_if) = (format!("dbdh{tag}"), format!("dbdn{tag}"));
        let x = (pid % 250) as u8;
        let host_ip = Ipv4Addr::new(10, 214, x, 4 * n + 1);
        let ns_ip = Ipv4Addr::new(10, 214, x, 4 * n + 2);
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        ip(&["netns", "add", &name]);
        let stop = Arc::new(AtomicBool::new(false));
        let mut link = DelayLink {
            name,
            host_ip,
            stop: stop.clone(),
            relays: Vec::new(),
        };
        ip(&["-n", &link.name, "link", "set", "lo", "up"]);
        let host_tun = open_tun(&host_if);
        let ns_tun = open_tun_in(&link.name, &ns_if);
        // No IPv6 link-local addresses: one appearing seconds later is a network change
        // to a browser already running (see netns.rs).
        ip(&["link", "set", &host_if, "addrgenmode", "none"]);
        ip(&[
            "-n",
            &link.name,
            "link",
            "set",
            &ns_if,
            "addrgenmode",
            "none",
        ]);
        ip(&[
            "addr",
            "add",
            &host_ip.to_string(),
            "peer",
            &ns_ip.to_string(),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &link.name,
            "addr",
            "add",
            &ns_ip.to_string(),
            "peer",
            &host_ip.to_string(),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &link.name, "link", "set", &ns_if, "up"]);
        let clone = |f: &File| {
            f.try_clone()
                .expect("a second descriptor for the TUN device")
        };
        let (host_reader, ns_reader) = (clone(&host_tun), clone(&ns_tun));
        link.relays.push(std::thread::spawn({
            let stop = stop.clone();
            move || relay(ns_reader, host_tun, up, stop)
        }));
        link.relays.push(std::thread::spawn(move || {
            relay(host_reader, ns_tun, down, stop)
        }));
        link
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for relay in self.relays.drain(..) {
            let _ = relay.join();
        }
        // The TUN devices went with their last descriptors.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
