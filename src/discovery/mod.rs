//! mDNS (DNS-SD): the box announces itself so installers, panels and phones' apps find
//! it without knowing its address, and `duetbox find` looks for boxes. The only module
//! that knows `mdns-sd`, which runs its own thread (no async runtime needed).
//!
//! Two services, one instance each, named after the box's display name:
//! - `_duetbox._tcp`: TXT `v` (version), `id` (box id), `name` (display name), `ws`
//!   (signaling path), `https` (HTTPS port), `path` (the page);
//! - `_https._tcp`: the phone page, TXT `path=/`, so generic browsers of web services
//!   list it too.
//!
//! **Host name.** Raspberry Pi OS runs avahi-daemon, which already answers for
//! `<hostname>.local` on port 5353. Announcing that name a second time would be a name
//! conflict on the box itself, so the services point at a host name of the box's own:
//! `duetbox-<first 6 digits of the box id>.local` (configurable), whose addresses
//! mdns-sd answers. Both names are in the certificate; `<hostname>.local` keeps working
//! through avahi where it runs.
//!
//! Interfaces: those [`crate::lan::LanFilter`] admits (never loopback; docker and VPN
//! interfaces skipped by default). mdns-sd checks the interfaces' addresses every
//! [`IP_CHECK_INTERVAL_S`] and announces changes; [`Announcer::stop`] sends the
//! goodbye packets (TTL 0) before the daemon ends.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, IfPredicate, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::lan::LanFilter;

/// The box's own service type.
pub const SERVICE: &str = "_duetbox._tcp.local.";
/// The page's service type.
pub const PAGE_SERVICE: &str = "_https._tcp.local.";
/// How often mdns-sd looks for address changes, seconds.
pub const IP_CHECK_INTERVAL_S: u32 = 2;
/// How long [`Announcer::stop`] waits for each goodbye to go out.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// An mDNS problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mdns-sd refused (no socket, a malformed name).
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// What to announce.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The instance name people see (the box's display name).
    pub instance: String,
    /// The host name, without `.local` (e.g. `duetbox-3f2a9c`).
    pub host_name: String,
    /// The box id (TXT `id`).
    pub box_id: String,
    /// The version (TXT `v`).
    pub version: String,
    /// The HTTPS port (service port and TXT `https`).
    pub https_port: u16,
    /// Which interfaces.
    pub filter: LanFilter,
}

/// A running announcement.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullnames: Vec<String>,
}

/// The default mDNS host name of a box: `duetbox-` and the first 6 digits of its id.
pub fn default_host_name(box_id: &str) -> String {
    format!("duetbox-{}", &box_id[..box_id.len().min(6)])
}

/// Whether `name` is one DNS label that can take `.local`: letters, digits and '-',
/// 1 to 63 of them, no '-' at either end.
pub fn is_host_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn interfaces(filter: &LanFilter) -> IfKind {
    let filter = filter.clone();
    IfKind::Predicate(IfPredicate::new(move |intf| {
        !intf.is_loopback() && filter.admits_interface(&intf.name)
    }))
}

impl Announcer {
    /// Starts the mDNS daemon on the LAN interfaces and registers both services.
    pub fn start(settings: &Settings) -> Result<Announcer, Error> {
        let daemon = ServiceDaemon::new()?;
        daemon.disable_interface(IfKind::All)?;
        daemon.enable_interface(interfaces(&settings.filter))?;
        daemon.set_ip_check_interval(IP_CHECK_INTERVAL_S)?;
        let host = format!("{}.local.", settings.host_name);
        let port = settings.https_port.to_string();
        let txt: [(&str, &str); 6] = [
            ("v", &settings.version),
            ("id", &settings.box_id),
            ("name", &settings.instance),
            ("ws", "/ws"),
            ("https", &port),
            ("path", "/"),
        ];
        let mut fullnames = Vec::new();
        for (ty, props) in [(SERVICE, &txt[..]), (PAGE_SERVICE, &txt[5..])] {
            let mut info = ServiceInfo::new(
                ty,
                &settings.instance,
                &host,
                (),
                settings.https_port,
                props,
            )?
            .enable_addr_auto();
            info.set_interfaces(vec![interfaces(&settings.filter)]);
            fullnames.push(info.get_fullname().to_string());
            daemon.register(info)?;
        }
        tracing::info!(
            host = %host,
            instance = settings.instance,
            "announcing {SERVICE} and {PAGE_SERVICE} on mDNS"
        );
        Ok(Announcer { daemon, fullnames })
    }

    /// Sends the goodbyes (each service withdrawn with TTL 0) and stops the daemon.
    /// Blocks up to a second per service: call it from a blocking context.
    pub fn stop(self) {
        for name in &self.fullnames {
            match self.daemon.unregister(name) {
                Ok(status) => {
                    if status.recv_timeout(GOODBYE_WAIT).is_err() {
                        tracing::warn!(service = name, "mDNS goodbye not confirmed");
                    }
                }
                Err(e) => tracing::warn!(service = name, error = %e, "mDNS goodbye failed"),
            }
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(GOODBYE_WAIT);
        }
        tracing::info!("mDNS announcement withdrawn");
    }
}

/// A box found on the LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The instance's full name.
    pub fullname: String,
    /// Its host name (`duetbox-….local.`).
    pub host: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its port.
    pub port: u16,
    /// Its TXT record.
    pub txt: BTreeMap<String, String>,
}

impl Found {
    /// The phone page's URL on the first IPv4 address (else the host name).
    pub fn url(&self) -> String {
        let path = self.txt.get("path").map_or("/", String::as_str);
        match self.addresses.iter().find(|a| a.is_ipv4()) {
            Some(ip) => format!("https://{ip}:{}{path}", self.port),
            None => format!(
                "https://{}:{}{path}",
                self.host.trim_end_matches('.'),
                self.port
            ),
        }
    }
}

/// What [`browse`] saw: the boxes resolved, and those that said goodbye meanwhile.
#[derive(Debug, Default)]
pub struct Seen {
    /// Resolved, in the order first seen (a re-resolution updates in place).
    pub found: Vec<Found>,
    /// Full names withdrawn (goodbye packets).
    pub removed: Vec<String>,
}

#[expect(
    clippy::disallowed_methods,
    reason = "a command-line browse that waits on the wall clock"
)]
/// Browses `_duetbox._tcp` over IPv4 on the interfaces `filter` admits for `duration`
/// (or until `stop_when` says so), then stops. Blocking.
pub fn browse(
    filter: &LanFilter,
    duration: Duration,
    mut stop_when: impl FnMut(&Seen) -> bool,
) -> Result<Seen, Error> {
    let daemon = ServiceDaemon::new()?;
    daemon.disable_interface(IfKind::All)?;
    // IPv4 only: a box answers each family on its own, and a resolution that arrives over
    // IPv6 first carries only the (link-local) IPv6 address; the page URL wants IPv4.
    let filter = filter.clone();
    daemon.enable_interface(IfKind::Predicate(IfPredicate::new(move |intf| {
        intf.ip().is_ipv4() && !intf.is_loopback() && filter.admits_interface(&intf.name)
    })))?;
    let events = daemon.browse(SERVICE)?;
    let deadline = Instant::now() + duration;
    let mut seen = Seen::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop_when(&seen) {
            break;
        }
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(r)) => {
                let mut addresses: Vec<IpAddr> =
                    r.get_addresses().iter().map(|a| a.to_ip_addr()).collect();
                addresses.sort();
                let found = Found {
                    fullname: r.get_fullname().to_string(),
                    host: r.get_hostname().to_string(),
                    addresses,
                    port: r.get_port(),
                    txt: r
                        .get_properties()
                        .iter()
                        .map(|p| (p.key().to_string(), p.val_str().to_string()))
                        .collect(),
                };
                match seen.found.iter_mut().find(|f| f.fullname == found.fullname) {
                    Some(old) => *old = found,
                    None => seen.found.push(found),
                }
            }
            Ok(ServiceEvent::ServiceRemoved(_, name)) => seen.removed.push(name),
            Ok(_) => {}
            Err(_) => {}
        }
    }
    let _ = daemon.stop_browse(SERVICE);
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(GOODBYE_WAIT);
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_host_name_is_short_and_from_the_id() {
        assert_eq!(default_host_name("3f2a9c0b1d2e"), "duetbox-3f2a9c");
        assert!(is_host_label(&default_host_name("3f2a9c0b1d2e")));
        for bad in ["", "-a", "a-", "a.b", "a b", &"a".repeat(64)] {
            assert!(!is_host_label(bad), "{bad}");
        }
    }

    #[test]
    fn a_found_box_gives_an_ip_url() {
        let mut found = Found {
            fullname: "Stage._duetbox._tcp.local.".into(),
            host: "duetbox-3f2a9c.local.".into(),
            addresses: vec!["fd00::2".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            port: 8443,
            txt: BTreeMap::from([("path".to_string(), "/".to_string())]),
        };
        assert_eq!(found.url(), "https://10.0.0.2:8443/");
        found.addresses.clear();
        assert_eq!(found.url(), "https://duetbox-3f2a9c.local:8443/");
    }
}
