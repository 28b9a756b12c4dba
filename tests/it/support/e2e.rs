//! The browser phones of the end-to-end tests: fake microphone files, and a runner for
//! the driver (tests/e2e/phones.mjs) that reads its marker lines as they come (so a
//! test can act at them: cut a network, note a counter) and parses its JSON lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{within, INSTALL_HINT};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where screenshots go.
pub fn artifacts() -> PathBuf {
    let dir = repo().join("target").join("e2e-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Milliseconds since the Unix epoch: the driver's sample times are on this clock.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Milliseconds since 1970, to the microsecond.
pub fn epoch_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1000.0
}

/// Firefox's fake microphone: a 1000 Hz tone (media.navigator.streams.fake).
pub const FIREFOX_TONE_HZ: u32 = 1000;

/// Writes a 48 kHz mono 16-bit WAV of a tone, long enough to loop without a seam
/// mattering (Chromium loops the fake capture file).
pub fn write_tone_wav(path: &Path, hz: f32, amplitude: f32, seconds: u32) {
    super::songs::tone_wav(path, 48_000, 1, &[(hz, seconds as f32)], amplitude);
}

/// One marker line of the driver and when it was read.
#[derive(Clone, Debug)]
pub struct Mark {
    /// The text after `mark: `.
    pub name: String,
    /// When the test read it.
    pub at: Instant,
    /// The same moment in epoch milliseconds.
    pub epoch_ms: u64,
}

/// What a driver run left.
pub struct DriverRun {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout (JSON lines).
    pub stdout: String,
    /// Its stderr (logs and marks).
    pub stderr: String,
}

impl DriverRun {
    /// Panics with the driver's output unless it succeeded.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "phones failed ({}):\n{}\n{}",
            self.status,
            self.stderr,
            self.stdout
        );
    }

    fn lines(&self) -> impl Iterator<Item = Value> + '_ {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    }

    /// The result line of `phone`.
    pub fn result(&self, phone: &str) -> Value {
        self.lines()
            .find(|v| v["kind"] == "result" && v["phone"] == phone)
            .unwrap_or_else(|| panic!("no result for phone {phone}:\n{}", self.stdout))
    }

    /// Every phone's result line.
    pub fn results(&self) -> Vec<Value> {
        self.lines().filter(|v| v["kind"] == "result").collect()
    }

    /// The --watch samples of `phone`, in order.
    pub fn samples(&self, phone: &str) -> Vec<Value> {
        self.lines()
            .filter(|v| v["kind"] == "sample" && v["phone"] == phone)
            .collect()
    }
}

/// A phone's measured level of `hz` (dB) in a result or sample line.
pub fn level_db(line: &Value, hz: u32) -> f64 {
    line["levels"][hz.to_string()]
        .as_f64()
        .unwrap_or_else(|| panic!("no {hz} Hz level in {line}"))
}

/// The driver and its arguments. `prefix` runs it through something (`ip netns exec`).
pub struct Driver {
    prefix: Vec<String>,
    args: Vec<String>,
}

impl Driver {
    /// A driver for the box at `url`, measuring after `seconds` of singing.
    pub fn new(url: &str, seconds: u32) -> Driver {
        assert!(
            repo()
                .join("tests/e2e/node_modules/playwright-core")
                .exists()
                && repo()
                    .join("tests/e2e/node_modules/puppeteer-core")
                    .exists(),
            "the e2e driver's packages are missing: {INSTALL_HINT}"
        );
        let args = vec![
            repo().join("tests/e2e/phones.mjs").display().to_string(),
            "--url".into(),
            url.into(),
            "--out".into(),
            artifacts().display().to_string(),
            "--seconds".into(),
            seconds.to_string(),
        ];
        Driver {
            prefix: Vec::new(),
            args,
        }
    }

    /// Runs the driver through `prefix` (e.g. inside a network namespace).
    pub fn prefix(mut self, prefix: Vec<String>) -> Driver {
        self.prefix = prefix;
        self
    }

    /// Adds `flag value`.
    pub fn arg(mut self, flag: &str, value: impl Into<String>) -> Driver {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// Adds a flag without a value.
    pub fn flag(mut self, flag: &str) -> Driver {
        self.args.push(flag.into());
        self
    }

    /// Adds a phone: `NAME:ROLE:WAV[:ENGINE]` (`wav` None = no file).
    pub fn phone(self, name: &str, role: &str, wav: Option<&Path>, engine: &str) -> Driver {
        let wav = wav.map_or("-".to_string(), |p| p.display().to_string());
        self.arg("--phone", format!("{name}:{role}:{wav}:{engine}"))
    }

    /// Runs it (within `deadline`), calling `on_mark` with each marker as it is read.
    pub fn run(
        self,
        deadline: Duration,
        mut on_mark: impl FnMut(&Mark) + Send + 'static,
    ) -> DriverRun {
        let (program, args) = match self.prefix.split_first() {
            Some((program, rest)) => (
                program.clone(),
                rest.iter()
                    .cloned()
                    .chain(std::iter::once("node".to_string()))
                    .chain(self.args)
                    .collect::<Vec<_>>(),
            ),
            None => ("node".to_string(), self.args),
        };
        within("the browser phones", deadline, move || {
            let mut child = Command::new(&program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {INSTALL_HINT}"));
            let lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
            // Read as the lines come, so each marker is seen at its moment.
            let reader = std::thread::spawn(move || {
                let mut stderr = String::new();
                for line in lines.map_while(Result::ok) {
                    if let Some(name) = line.strip_prefix("mark: ") {
                        let mark = Mark {
                            name: name.to_string(),
                            at: Instant::now(),
                            epoch_ms: epoch_ms(),
                        };
                        on_mark(&mark);
                    }
                    stderr.push_str(&line);
                    stderr.push('\n');
                }
                stderr
            });
            let output = child.wait_with_output().expect("the driver's output");
            let stderr = reader.join().expect("the stderr reader");
            DriverRun {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr,
            }
        })
    }
}
