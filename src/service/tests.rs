use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn parse(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>) -> Result<ServiceEnv, Error> {
    ServiceEnv::parse(socket.map(OsStr::new), usec, pid, 42)
}

#[test]
fn no_notify_socket_means_no_service_manager() {
    assert_eq!(parse(None, None, None), Ok(ServiceEnv::default()));
    let env = parse(None, Some("400000"), None).expect("valid");
    assert_eq!(env.socket, None);
    let notifier = Notifier::new(env).expect("nothing to open");
    assert!(!notifier.is_enabled());
    assert_eq!(notifier.watchdog(), None, "no socket, no pings");
}

#[test]
fn paths_and_abstract_sockets_are_told_apart() {
    let env = parse(Some("/run/systemd/notify"), None, None).expect("path");
    assert_eq!(
        env.socket,
        Some(NotifySocket::Path("/run/systemd/notify".into()))
    );
    let env = parse(Some("@duetbox/notify"), None, None).expect("abstract");
    assert_eq!(
        env.socket,
        Some(NotifySocket::Abstract(b"duetbox/notify".to_vec()))
    );
    for bad in ["", "@", "relative/path", "vsock:2:1234"] {
        assert_eq!(
            parse(Some(bad), None, None),
            Err(Error::BadSocket { value: bad.into() }),
            "{bad:?}"
        );
    }
}

#[test]
fn the_watchdog_applies_only_to_the_named_pid() {
    let ours = parse(Some("/x"), Some("400000"), Some("42")).expect("ours");
    assert_eq!(ours.watchdog, Some(Duration::from_millis(400)));
    let unnamed = parse(Some("/x"), Some("400000"), None).expect("unnamed");
    assert_eq!(unnamed.watchdog, Some(Duration::from_millis(400)));
    let other = parse(Some("/x"), Some("400000"), Some("7")).expect("someone else's");
    assert_eq!(other.watchdog, None);
    for bad in ["0", "-1", "soon", ""] {
        assert_eq!(
            parse(Some("/x"), Some(bad), None),
            Err(Error::BadWatchdog { value: bad.into() }),
            "{bad:?}"
        );
    }
}

#[test]
fn status_line_counts_in_words() {
    assert_eq!(
        status_line(2, 5, "alsa:hw:1"),
        "2 singers, 5 listeners, output alsa:hw:1"
    );
    assert_eq!(
        status_line(1, 1, "null"),
        "1 singer, 1 listener, output null"
    );
    assert_eq!(
        status_line(0, 0, "null"),
        "0 singers, 0 listeners, output null"
    );
}

#[test]
fn ticks_are_half_the_watchdog_and_at_most_a_second() {
    assert_eq!(tick_interval(None), STATUS_INTERVAL);
    assert_eq!(
        tick_interval(Some(Duration::from_millis(400))),
        Duration::from_millis(200)
    );
    assert_eq!(
        tick_interval(Some(Duration::from_secs(30))),
        STATUS_INTERVAL
    );
}

/// A socket the test reads as the service manager would.
fn manager() -> (tempdir::Dir, UnixDatagram) {
    let dir = tempdir::Dir::new();
    let socket = UnixDatagram::bind(dir.path.join("notify")).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    (dir, socket)
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within 5 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn messages_reach_a_path_socket() {
    let (dir, socket) = manager();
    let env = ServiceEnv::parse(
        Some(dir.path.join("notify").as_os_str()),
        None,
        None,
        std::process::id(),
    )
    .expect("valid");
    let notifier = Notifier::new(env).expect("open");
    notifier.ready();
    notifier.status("1 singer,\n2 listeners");
    notifier.stopping();
    assert_eq!(recv(&socket), "READY=1");
    assert_eq!(recv(&socket), "STATUS=1 singer, 2 listeners");
    assert_eq!(recv(&socket), "STOPPING=1");
}

#[test]
fn messages_reach_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("duetbox-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("abstract address");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let at = format!("@{name}");
    let env = ServiceEnv::parse(Some(OsStr::new(&at)), None, None, 1).expect("valid");
    Notifier::new(env).expect("open").ready();
    assert_eq!(recv(&socket), "READY=1");
}

#[test]
fn a_missing_manager_is_not_an_error() {
    let dir = tempdir::Dir::new();
    let env = ServiceEnv::parse(
        Some(dir.path.join("nobody-listens").as_os_str()),
        Some("1000000"),
        None,
        1,
    )
    .expect("valid");
    let notifier = Notifier::new(env).expect("open");
    notifier.ready();
    notifier.watchdog_ping();
}

#[tokio::test]
async fn pings_follow_the_heartbeat_and_stop_when_it_stops() {
    let (dir, socket) = manager();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    let env = ServiceEnv::parse(
        Some(dir.path.join("notify").as_os_str()),
        Some("40000"),
        None,
        1,
    )
    .expect("valid");
    let notifier = Arc::new(Notifier::new(env).expect("open"));
    let beats = Arc::new(AtomicU64::new(0));
    let moving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The "audio thread": beats while `moving`.
    let (b, m) = (beats.clone(), moving.clone());
    let beater = tokio::spawn(async move {
        loop {
            if m.load(Ordering::Relaxed) {
                b.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let hb = beats.clone();
    let task = tokio::spawn(run_watchdog(
        notifier,
        move || hb.load(Ordering::Relaxed),
        || status_line(0, 0, "null"),
    ));
    let read = move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if got.len() >= 8 {
                break;
            }
        }
        (got, socket)
    };
    let (got, socket) = tokio::task::spawn_blocking(read).await.expect("reader");
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 5,
        "pings while beating: {got:?}"
    );
    assert!(got.contains(&"STATUS=0 singers, 0 listeners, output null".to_string()));
    moving.store(false, Ordering::Relaxed);
    // Drain what was sent before the stop became visible, then expect silence.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (later, _socket) = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 256];
        socket.set_nonblocking(true).expect("nonblocking");
        while socket.recv(&mut buf).is_ok() {}
        socket.set_nonblocking(false).expect("blocking");
        let mut later = Vec::new();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        while let Ok(n) = socket.recv(&mut buf) {
            later.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if later.len() >= 3 {
                break;
            }
        }
        (later, socket)
    })
    .await
    .expect("reader");
    assert!(later.is_empty(), "no pings once stalled: {later:?}");
    task.abort();
    beater.abort();
}

/// A temporary directory removed on drop (no tempfile crate in the tree).
mod tempdir {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct Dir {
        pub path: PathBuf,
    }

    impl Dir {
        pub fn new() -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "duetbox-service-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create a temp dir");
            Dir { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
