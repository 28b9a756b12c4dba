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
