//! Source-tree rules that keep the architecture honest (STYLE.md §1, ARCHITECTURE.md).

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(path).expect("readable source file");
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            !(t.starts_with("//") || t.starts_with("///") || t.starts_with("//!"))
        })
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

#[test]
fn engine_stays_pure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 5);
    let forbidden = [
        "tokio",
        "alsa",
        "webrtc",
        "rumqttc",
        "mdns_sd",
        "axum",
        "hyper",
        "std::net",
        "std::thread",
        "Instant::now",
        "SystemTime::now",
        "Mutex",
        "RwLock",
        "std::sync",
        "tracing",
    ];
    let mut hits = Vec::new();
    for file in &files {
        for (n, line) in code_lines(file) {
            for word in forbidden {
                if line.contains(word) {
                    hits.push(format!("{}:{n}: {word}", file.display()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "engine/ must not do IO, read clocks, lock or log:\n{}",
        hits.join("\n")
    );
}

#[test]
fn no_println_in_the_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut hits = Vec::new();
    for file in files
        .iter()
        .filter(|f| !f.ends_with("main.rs") && !f.ends_with("testkit.rs"))
    {
        for (n, line) in code_lines(file) {
            if line.contains("println!") || line.contains("eprintln!") || line.contains("dbg!(") {
                if file.ends_with("tests.rs") {
                    continue;
                }
                hits.push(format!("{}:{n}", file.display()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "use tracing, not print macros:\n{}",
        hits.join("\n")
    );
}

/// Where each IO crate may be used (ARCHITECTURE.md, STYLE.md §1): one module each, so
/// that its types never leak into another module's signatures (rustls has two: the
/// HTTPS server and the MQTT client). `mdns_sd` is not used yet; its home is reserved.
const IO_CRATES: [(&str, &[&str]); 17] = [
    ("webrtc", &["src/rtc/"]),
    ("rtc", &["src/rtc/"]),
    ("alsa", &["src/output/"]),
    ("axum", &["src/http/"]),
    ("axum_server", &["src/http/"]),
    ("hyper", &["src/http/"]),
    // The two TLS clients of the box: the HTTPS server, and the MQTT client's config.
    ("rustls", &["src/http/", "src/mqtt/"]),
    ("tokio_rustls", &["src/http/"]),
    ("tokio_tungstenite", &["src/http/"]),
    ("rcgen", &["src/trust/"]),
    ("rumqttc", &["src/mqtt/"]),
    ("mdns_sd", &["src/discovery/"]),
    ("if_addrs", &["src/lan.rs"]),
    ("qrcode", &["src/http/"]),
    ("listenfd", &["src/http/"]),
    // Song files: demuxing, decoding and resampling stay in the songs module.
    ("symphonia", &["src/songs/"]),
    ("rubato", &["src/songs/"]),
];

/// Whether `line` names the crate `name` as the first segment of a path (`name::…`,
/// not `other::name::…`, not `crate::name::…`).
fn uses_crate(line: &str, name: &str) -> bool {
    let pattern = format!("{name}::");
    let mut from = 0;
    while let Some(pos) = line[from..].find(&pattern) {
        let at = from + pos;
        let before = line[..at].chars().next_back();
        let starts_path = match before {
            None => true,
            Some(c) => !(c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        };
        // Inside a string ("alsa:hw:1" has one colon; "x::y" in text is rare) we still
        // count it: better a false alarm than a miss.
        if starts_path {
            return true;
        }
        from = at + pattern.len();
    }
    false
}

#[test]
fn each_io_crate_is_used_by_one_module_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut hits = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .expect("under the repo")
            .display()
            .to_string();
        let lines = code_lines(file);
        // Our own `rtc` module is `crate::rtc` (imported as `rtc`); only a file that does
        // not import it can mean the crate by a bare `rtc::`.
        let imports_our_rtc = lines.iter().any(|(_, l)| l.contains("crate::rtc"));
        for (n, line) in &lines {
            for (name, homes) in IO_CRATES {
                if homes.iter().any(|h| rel.starts_with(h)) || !uses_crate(line, name) {
                    continue;
                }
                if name == "rtc" && imports_our_rtc {
                    continue;
                }
                hits.push(format!(
                    "{rel}:{n}: {name} belongs in {}",
                    homes.join(" or ")
                ));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "IO crates used outside their module:\n{}",
        hits.join("\n")
    );
    // The check itself: it sees a use where one is.
    assert!(uses_crate("use alsa::pcm::PCM;", "alsa"));
    assert!(uses_crate(
        "    let x = webrtc::peer_connection::X;",
        "webrtc"
    ));
    assert!(!uses_crate("use crate::rtc::Peer;", "rtc"));
    assert!(!uses_crate("let s = \"alsa:hw:1\";", "alsa"));
}

#[test]
fn control_knows_no_http_and_holds_no_lock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/control");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() >= 3, "control/ has its room, link and driver");
    let mut hits = Vec::new();
    for file in &files {
        for (n, line) in code_lines(file) {
            for word in [
                "crate::http",
                "super::http",
                "signaling::",
                "Mutex",
                "RwLock",
            ] {
                if line.contains(word) {
                    hits.push(format!("{}:{n}: {word}", file.display()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "control/ must not import http (the adapters map the room's refusals) nor lock \
         room state (one task owns it):\n{}",
        hits.join("\n")
    );
}
