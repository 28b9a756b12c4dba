//! A network namespace for one test's phones, joined to the machine by a veth pair:
//! the phones (their browsers and the node driver) run inside it and reach the box at
//! the host side's address; the test can take the phones' link down and up again, as a
//! phone whose Wi-Fi drops. Firefox runs here too: it never offers 127.0.0.1 and would
//! otherwise use the machine's own addresses (PLATFORM.md §6).
//!
//! Needs root and iproute2 (scripts/setup.sh test). Every namespace is deleted on drop,
//! which also deletes its veth pair. Addresses are 10.213.X.Y/30, X from this
//! process's id and Y from a per-process counter, so parallel test processes do not
//! collide.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use super::INSTALL_HINT;

/// Namespaces made by this process so far (names and subnets).
static NEXT: AtomicU8 = AtomicU8::new(0);

/// One namespace and its link to the machine.
pub struct Netns {
    /// The namespace's name (for `ip netns exec`).
    pub name: String,
    /// The machine's end of the veth pair.
    pub host_if: String,
    /// The namespace's end.
    pub ns_if: String,
    /// The machine's address on the link (the box listens here).
    pub host_ip: Ipv4Addr,
}

/// Runs `ip ARGS`, panicking with its error output when it fails.
pub(super) fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip ({e}): {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `dev` (in namespace `ns`, or the machine's) has carrier and a link-local
/// IPv6 address that is past duplicate-address detection. The kernel adds that address
/// about two seconds after the link comes up; a browser already running in the
/// namespace sees it as a network change and fails its requests in flight with
/// ERR_NETWORK_CHANGED (seen once in CI), so phones start only on a settled link.
pub(super) fn wait_settled(ns: Option<&str>, dev: &str) {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return;
    }
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-6", "addr", "show", "dev", dev, "scope", "link"]);
    super::poll(
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(50),
        || {
            let out = Command::new("ip").args(&args).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let settled = text.contains("inet6")
                && !text.contains("tentative")
                && !text.contains("NO-CARRIER");
            settled.then_some(())
        },
        || format!("{dev} in {ns:?}: no settled link-local address within 15 s"),
    )
}

impl Netns {
    /// Creates a namespace with loopback up and a veth link to the machine, both ends
    /// up and addressed.
    pub fn create() -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 60, "too many namespaces in one test process");
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 100_000);
        let name = format!("dbx{tag}");
        let host_if = format!("dbxh{tag}");
        let ns_if = format!("dbxn{tag}");
        let x = (pid % 250) as u8;
        let host_ip = Ipv4Addr::new(10, 213, x, 4 * n + 1);
        let ns_ip = Ipv4Addr::new(10, 213, x, 4 * n + 2);
        // A namespace left by a crashed earlier run with this name goes first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            host_if,
            ns_if,
            host_ip,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
            "netns",
            &ns.name,
        ]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns.ns_if,
        ]);
        ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"]);
        wait_settled(None, &ns.host_if);
        wait_settled(Some(&ns.name), &ns.ns_if);
        ns
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Takes the phones' side of the link down, as a phone whose Wi-Fi drops: its
    /// sockets get "network unreachable", nothing reaches the box either way.
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]);
    }

    /// Brings the phones' side back up (address and route come back with it).
    pub fn restore(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair (both ends).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
