//! Process and environment helpers shared by the integration tests (STYLE.md §7).
//!
//! Owns the test binary's one hermetic ALSA configuration (ALSA_CONFIG_PATH is
//! process-wide, so it is written and set exactly once, before any test opens a PCM;
//! each test uses its own PCM names in it), the private PulseAudio daemon, and a
//! real-time pacer for ALSA PCMs that have no clock. Every child process is stopped by
//! its PID, also when the test panics; every wait has a deadline and names what it
//! waited for. The box under test runs in-process on 127.0.0.1 ([`start_box`]); the
//! WHIP/WHEP client that talks to it lives in `whip_client.rs`.

pub mod delay_link;
pub mod e2e;
pub mod lan;
pub mod latency;
pub mod mqtt;
pub mod netns;
pub mod songs;
pub mod stalls;
pub mod whip_client;
pub mod wss;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use duetbox::app::Running;
use duetbox::audio::{Sink, SinkError};
use duetbox::config::Config;
use duetbox::engine::SAMPLE_RATE_HZ;

/// Tests that run a box, an audio thread, a daemon, a browser or a CPU-heavy tool take
/// turns on this: two of them at once (three Chromiums, several peers, a pulse daemon,
/// systemd-analyze) starve each other's audio on two cores and make a dropout that
/// neither caused (the JACK duet lost part of a voice beside the audio-thread test and
/// beside the pulse clock test). Only light tests (file PCMs, parsing, the tidy checks)
/// run beside them. Async tests `.lock().await`; plain tests `blocking_lock()`.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How the test binary's failures tell a person to install a missing real part.
pub const INSTALL_HINT: &str = "run scripts/setup.sh test";

/// PCMs of the hermetic ALSA config, one (or more) per test.
pub mod pcm {
    /// `file` over `null`: records every sample written, no clock.
    pub const VENUE_TONE: &str = "duetbox_venue_tone";
    /// `linear` (converting to S16_LE) over `file` over `null`: refuses FLOAT_LE, so the
    /// sink must fall back to S32_LE.
    pub const VENUE_S32: &str = "duetbox_venue_s32";
    /// `pulse`, pointed at the private daemon's null sink: a real clock.
    pub const PULSE_CLOCK: &str = "duetbox_pulse_clock";
    /// `multi` over one mono `null`: a device with one channel, so stereo cannot be set.
    pub const MONO: &str = "duetbox_mono";
    /// The config's `default`: its slave does not exist, so it never opens.
    pub const BROKEN_DEFAULT: &str = "default";
    /// `plug` (to S32_LE) over `file` (WAV) over `pulse` (the e2e daemon's null sink):
    /// paced by a real clock and sample-exact, the venue "speakers" of the phone tests.
    /// The plug fixes the recorded format to integers: alsa-lib's file plugin labels
    /// FLOAT_LE data as integer PCM in its WAV header (seen when the sink got FLOAT_LE).
    /// This plug accepts FLOAT_LE in the test but not when applied, so the sink's
    /// fallback to the next format is exercised too.
    pub const VENUE_E2E: &str = "duetbox_venue_e2e";
    /// `plug` (to S32_LE, see [`VENUE_E2E`]) over `file` (WAV) over `plug` over `jack`
    /// (the test's JACK server, dummy driver, 1024 frames): a device that grants only
    /// its own period, as JACK's and PipeWire's ALSA plugins (and dmix) do, paced by the
    /// server's clock.
    pub const VENUE_JACK: &str = "duetbox_venue_jack";
    /// `pulse` capture from the monitor of the e2e daemon's second null sink
    /// ([`super::PULSE_LINE_SINK`]): the box's line-in in the tests.
    pub const LINE_IN: &str = "duetbox_line_in";
    /// `pulse` playback into that sink: the venue's karaoke player.
    pub const LINE_PLAYER: &str = "duetbox_line_player";
}

/// The null-sink name inside the private PulseAudio daemon.
pub const PULSE_SINK: &str = "duetbox_test";

/// A second null sink in each daemon: the line the venue's karaoke player plays into,
/// whose monitor the box captures.
pub const PULSE_LINE_SINK: &str = "duetbox_line";

/// File names (in [`AlsaConfig::dir`]) the file PCMs record to.
pub mod raw {
    /// Raw interleaved stereo of [`super::pcm::VENUE_TONE`], in the negotiated format.
    pub const VENUE_TONE: &str = "venue_tone.raw";
    /// Raw interleaved S16_LE stereo of [`super::pcm::VENUE_S32`].
    pub const VENUE_S32: &str = "venue_s32.raw";
    /// WAV recording of [`super::pcm::VENUE_E2E`].
    pub const VENUE_E2E: &str = "venue_e2e.wav";
    /// WAV recording of [`super::pcm::VENUE_JACK`].
    pub const VENUE_JACK: &str = "venue_jack.wav";
}

/// Where the hermetic ALSA config lives and what it refers to.
pub struct AlsaConfig {
    /// This test process's scratch directory (removed by the next run once we exit).
    pub dir: PathBuf,
}

impl AlsaConfig {
    /// A file in [`AlsaConfig::dir`].
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The private PulseAudio daemon's directory; its socket is `native` inside.
    pub fn pulse_dir(&self) -> PathBuf {
        self.dir.join("pulse")
    }

    /// The phone tests' own PulseAudio directory (a second daemon, so the ALSA tests and
    /// the phone tests can run at the same time).
    pub fn pulse_e2e_dir(&self) -> PathBuf {
        self.dir.join("pulse-e2e")
    }
}

/// Writes the hermetic ALSA config and sets ALSA_CONFIG_PATH, once per test binary;
/// every ALSA test calls this before touching ALSA.
pub fn alsa_config() -> &'static AlsaConfig {
    static CONFIG: OnceLock<AlsaConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let dir = scratch_dir("alsa");
        let conf = dir.join("asound.conf");
        let file = |name: &str| dir.join(name).display().to_string();
        let socket = dir.join("pulse").join("native").display().to_string();
        let socket_e2e = dir.join("pulse-e2e").join("native").display().to_string();
        // ALSA_CONFIG_PATH replaces alsa.conf entirely, so this is the whole config:
        // nothing of the machine's (its pulse hooks, its default card) leaks in. `type
        // pulse` needs no pcm_type entry: alsa-lib finds libasound_module_pcm_pulse.so
        // in its own plugin directory, which is also right under qemu for other arches.
        let text = format!(
            r#"# Written by tests/it/support/mod.rs for one test run.
pcm.null {{ type null }}
pcm.{venue_tone} {{
    type file
    slave.pcm "null"
    file "{venue_tone_file}"
    format "raw"
}}
pcm.{venue_s32} {{
    type linear
    slave {{ pcm "duetbox_venue_s32_file"; format S16_LE }}
}}
pcm.duetbox_venue_s32_file {{
    type file
    slave.pcm "null"
    file "{venue_s32_file}"
    format "raw"
}}
pcm.{pulse_clock} {{
    type pulse
    server "unix:{socket}"
    device "{pulse_sink}"
}}
pcm.{venue_e2e} {{
    type plug
    slave {{ pcm "duetbox_venue_e2e_file"; format S32_LE }}
}}
pcm.duetbox_venue_e2e_file {{
    type file
    slave.pcm "duetbox_pulse_e2e"
    file "{venue_e2e_file}"
    format "wav"
}}
pcm.{venue_jack} {{
    type plug
    slave {{ pcm "duetbox_venue_jack_file"; format S32_LE }}
}}
pcm.duetbox_venue_jack_file {{
    type file
    slave.pcm "duetbox_jack_plug"
    file "{venue_jack_file}"
    format "wav"
}}
pcm.duetbox_jack_plug {{
    type plug
    slave.pcm "duetbox_jack"
}}
pcm.duetbox_jack {{
    type jack
    playback_ports {{ 0 system:playback_1 1 system:playback_2 }}
}}
pcm.duetbox_pulse_e2e {{
    type pulse
    server "unix:{socket_e2e}"
    device "{pulse_sink}"
    # An underrun restarts a pulse stream, which stalled the box's writes for up to two
    # seconds on a busy machine (half its CPU stolen by the host); a sound card's driver
    # recovers at once. So these speakers play silence where data was missing.
    handle_underrun false
}}
pcm.{line_in} {{
    type pulse
    server "unix:{socket_e2e}"
    device "{line_sink}.monitor"
}}
pcm.{line_player} {{
    type pulse
    server "unix:{socket_e2e}"
    device "{line_sink}"
}}
pcm.{mono} {{
    type multi
    slaves.a {{ pcm "null"; channels 1 }}
    bindings.0 {{ slave a; channel 0 }}
}}
pcm.!{broken_default} {{
    type plug
    slave.pcm "duetbox_no_such_pcm"
}}
"#,
            venue_tone = pcm::VENUE_TONE,
            venue_tone_file = file(raw::VENUE_TONE),
            venue_s32 = pcm::VENUE_S32,
            venue_s32_file = file(raw::VENUE_S32),
            pulse_clock = pcm::PULSE_CLOCK,
            pulse_sink = PULSE_SINK,
            mono = pcm::MONO,
            venue_e2e = pcm::VENUE_E2E,
            venue_e2e_file = file(raw::VENUE_E2E),
            venue_jack = pcm::VENUE_JACK,
            venue_jack_file = file(raw::VENUE_JACK),
            broken_default = pcm::BROKEN_DEFAULT,
            line_in = pcm::LINE_IN,
            line_player = pcm::LINE_PLAYER,
            line_sink = PULSE_LINE_SINK,
        );
        fs::write(&conf, text).expect("write the hermetic ALSA config");
        // Process-wide and read by alsa-lib at every open: set once, here, before any
        // test can open a PCM (they all come through this function first).
        std::env::set_var("ALSA_CONFIG_PATH", &conf);
        // The ALSA jack plugin finds its server by this name only (it has no option for
        // it); one per test process, so nothing of the machine's is touched.
        std::env::set_var(JACK_SERVER_ENV, jack_server_name());
        AlsaConfig { dir }
    })
}

/// A fresh directory for this test process under the system temp dir (short, because
/// unix socket paths are limited to 107 bytes). Directories of earlier test processes
/// that are gone are removed first.
pub fn scratch_dir(area: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("duetbox-it-{area}"));
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let alive = name
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
            if !alive {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test scratch dir");
    dir
}

/// Calls `f` every `every` until it gives `Some`; after `deadline`, panics with
/// `failure()` (which may read a log at that moment).
pub fn poll<T>(
    deadline: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
    failure: impl Fn() -> String,
) -> T {
    let begin = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(begin.elapsed() < deadline, "{}", failure());
        thread::sleep(every);
    }
}

/// Runs `f` on its own thread and waits at most `deadline` for it: device writes block,
/// and a hung device must fail the test, not hang it. A panic in `f` is re-raised here.
pub fn within<T: Send + 'static>(
    what: &str,
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(deadline) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it returns"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("timed out after {deadline:?} waiting for {what}")
        }
    }
}

/// A private PulseAudio daemon with two null sinks ([`PULSE_SINK`] and
/// [`PULSE_LINE_SINK`], 48 kHz) and an anonymous native socket in
/// [`AlsaConfig::pulse_dir`]. Killed by PID on drop.
pub struct PulseAudio {
    child: Child,
    log: PathBuf,
}

impl PulseAudio {
    /// How long the daemon may take to create its socket.
    pub const START_DEADLINE: Duration = Duration::from_secs(10);

    /// Starts the daemon with HOME and XDG_RUNTIME_DIR inside `dir`, so it touches
    /// nothing of the machine's, and waits for its socket. Panics with the install hint
    /// if pulseaudio is missing.
    pub fn start(dir: &Path) -> PulseAudio {
        let home = dir.join("home");
        let runtime = dir.join("runtime");
        for d in [&home, &runtime] {
            fs::create_dir_all(d).expect("create the pulse dirs");
        }
        // PulseAudio refuses a runtime dir others can read.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700))
            .expect("chmod the pulse runtime dir");
        let socket = dir.join("native");
        // A daemon of an earlier test was killed and left its socket file: ready is when
        // the new one accepts, and the old file must not look like it.
        let _ = fs::remove_file(&socket);
        let log = dir.join("pulseaudio.log");
        let child = Command::new("pulseaudio")
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &runtime)
            .args([
                "--daemonize=no",
                "-n",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
            ])
            .arg(format!(
                "--load=module-null-sink sink_name={PULSE_SINK} rate={SAMPLE_RATE_HZ}"
            ))
            .arg(format!(
                "--load=module-null-sink sink_name={PULSE_LINE_SINK} rate={SAMPLE_RATE_HZ}"
            ))
            .arg(format!(
                "--load=module-native-protocol-unix auth-anonymous=1 socket={}",
                socket.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create the pulseaudio log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pulseaudio ({e}): {INSTALL_HINT}"));
        let mut daemon = PulseAudio { child, log };
        wait_started(
            &mut daemon.child,
            &daemon.log,
            &format!("the pulseaudio socket {}", socket.display()),
            Self::START_DEADLINE,
            || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        );
        daemon
    }

    /// What the daemon has logged so far, for failure messages.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PulseAudio {
    fn drop(&mut self) {
        // Child::kill signals this PID only (SIGKILL); wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `ready()` for a daemon just started: panics with its log if it exits
/// first or `deadline` passes.
fn wait_started(
    child: &mut Child,
    log: &Path,
    what: &str,
    deadline: Duration,
    ready: impl Fn() -> bool,
) {
    let start = Instant::now();
    let log_text = || fs::read_to_string(log).unwrap_or_default();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited ({status}) before {what}:\n{}", log_text());
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}:\n{}",
            log_text()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The variable JACK clients read their server's name from.
const JACK_SERVER_ENV: &str = "JACK_DEFAULT_SERVER";

/// This test process's JACK server name.
fn jack_server_name() -> String {
    format!("duetbox-it-{}", std::process::id())
}

/// A private JACK server on the dummy driver (no sound card): 48 kHz, `period_frames`
/// per cycle, which is the only period its ALSA plugin grants. Killed by PID on drop.
pub struct JackServer {
    child: Child,
    log: PathBuf,
}

impl JackServer {
    /// How long the server may take to accept clients.
    pub const START_DEADLINE: Duration = Duration::from_secs(10);

    /// Starts `jackd` under this process's server name and waits until it runs.
    pub fn start(dir: &Path, period_frames: usize) -> JackServer {
        fs::create_dir_all(dir).expect("create the jack dir");
        clean_stale_jack_files();
        let log = dir.join("jackd.log");
        let child = Command::new("jackd")
            .env("JACK_NO_AUDIO_RESERVATION", "1")
            .args(["--no-realtime", "-n"])
            .arg(jack_server_name())
            .args(["-d", "dummy", "-r", "48000", "-p"])
            .arg(period_frames.to_string())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).expect("create the jackd log"))
            .stderr(
                fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("open the jackd log"),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start jackd ({e}): {INSTALL_HINT}"));
        let mut server = JackServer { child, log };
        // The server is up once its driver client ("system", which owns the playback
        // ports) has its semaphore in /dev/shm: `jack_sem.<uid>_<name>_system`.
        let marker = format!("_{}_system", jack_server_name());
        wait_started(
            &mut server.child,
            &server.log,
            "jackd to start",
            Self::START_DEADLINE,
            || {
                fs::read_dir("/dev/shm").is_ok_and(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(&marker))
                })
            },
        );
        server
    }
}

impl Drop for JackServer {
    fn drop(&mut self) {
        // SIGTERM lets jackd unregister from JACK's shared registry, which holds only a
        // few servers: killed ones stay in it and later starts fail with "Too many
        // servers already active".
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes what earlier test servers left in /dev/shm when they were killed, but only
/// while no JACK server runs at all: the registry is shared by every server.
fn clean_stale_jack_files() {
    let running = Command::new("pgrep")
        .args(["-x", "jackd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if running {
        return;
    }
    if let Ok(entries) = fs::read_dir("/dev/shm") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("jack") {
                let path = entry.path();
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
    }
}

/// Paces a sink that has no clock (ALSA's `null`, `file` over `null`) to real time, so
/// the audio thread renders periods as fast as phones send packets, as it would with a
/// sound card. Test-only: the library's sinks are paced by their devices or by
/// `NullSink`.
pub struct RealTime<S> {
    inner: S,
    period: Duration,
    next: Option<Instant>,
}

impl<S: Sink> RealTime<S> {
    /// Wraps `inner`, one period per `inner.period_frames()` frames of wall time.
    pub fn new(inner: S) -> RealTime<S> {
        let period =
            Duration::from_secs_f64(inner.period_frames() as f64 / f64::from(SAMPLE_RATE_HZ));
        RealTime {
            inner,
            period,
            next: None,
        }
    }
}

impl<S: Sink> Sink for RealTime<S> {
    fn period_frames(&self) -> usize {
        self.inner.period_frames()
    }

    fn write(&mut self, stereo: &[f32]) -> Result<(), SinkError> {
        self.inner.write(stereo)?;
        let next = *self.next.get_or_insert_with(Instant::now) + self.period;
        self.next = Some(next);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Ok(())
    }

    fn xruns(&self) -> u64 {
        self.inner.xruns()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A free TCP port on 127.0.0.1: bound, read, released. Another process could take it
/// before the box binds it; the box then fails to start and says which address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A real `duetbox serve` process of this build (as systemd runs it), on loopback, with
/// the `null` output and its own state directory. Killed by PID on drop.
pub struct BoxProcess {
    child: Child,
    /// This box's scratch directory (config, state, log, notify socket).
    pub dir: PathBuf,
    /// Its HTTPS port.
    pub https_port: u16,
    log: PathBuf,
}

impl BoxProcess {
    /// Writes a config into `dir` and starts the binary with `env` added to a cleaned
    /// environment (no inherited NOTIFY_SOCKET, WATCHDOG_*, RUST_LOG or DUETBOX_*).
    pub fn start(dir: &Path, env: &[(&str, String)]) -> BoxProcess {
        let https_port = free_port();
        // mDNS off: this box runs in the machine's own namespace (PLATFORM.md §3).
        let config = format!(
            "[http]\nbind = \"127.0.0.1\"\nhttps_port = {https_port}\nhttp_port = 0\n\
             [rtc]\nudp_bind = [\"127.0.0.1\"]\ninclude_loopback = true\n\
             [discovery]\nmdns = false\n"
        );
        BoxProcess::start_with(dir, env, &config, https_port, &[])
    }

    /// Starts the binary with `config` (TOML: the test's own sections; `[audio]`,
    /// `[state]` and `[log]` are added), behind the command `prefix` (e.g. `ip netns
    /// exec <ns>`), listening for HTTPS on `https_port`.
    pub fn start_with(
        dir: &Path,
        env: &[(&str, String)],
        config: &str,
        https_port: u16,
        prefix: &[String],
    ) -> BoxProcess {
        let state = dir.join("state");
        let config_path = dir.join("duetbox.toml");
        fs::create_dir_all(dir).expect("make the box dir");
        fs::write(
            &config_path,
            format!(
                "{config}[audio]\noutput = \"null\"\nrealtime_priority = 0\n\
                 [state]\ndir = \"{}\"\n[log]\nfilter = \"info\"\n",
                state.display()
            ),
        )
        .expect("write the box config");
        let log = dir.join("duetbox.log");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_duetbox"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_duetbox")),
        };
        command.args(["serve", "--config"]).arg(&config_path);
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("DUETBOX_")
                || n.starts_with("WATCHDOG_")
                || n == "NOTIFY_SOCKET"
                || n == "RUST_LOG"
                || n == "JOURNAL_STREAM"
            {
                command.env_remove(&name);
            }
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let log_file = fs::File::create(&log).expect("create the box log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start the duetbox binary");
        BoxProcess {
            child,
            dir: dir.to_path_buf(),
            https_port,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the box has logged so far, for failure messages.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The box's certificate authority (PEM), made at its first start: what a phone
    /// that trusts the box has installed.
    pub fn cert_pem(&self) -> String {
        let path = self.dir.join("state").join("ca-cert.pem");
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Sends SIGTERM, as systemd does on stop (the `kill` command: no unsafe here).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit; panics with its log after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the box") {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "the box did not exit within {deadline:?}:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the box has logged `text`; panics with its log after `deadline`
    /// (for a box whose port the test cannot reach, e.g. in another namespace).
    pub fn wait_logged(&self, text: &str, deadline: Duration) {
        poll(
            deadline,
            Duration::from_millis(50),
            || self.log_text().contains(text).then_some(()),
            || format!("the box did not log {text:?}:\n{}", self.log_text()),
        );
    }

    /// Exited already?
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("poll the box")
    }
}

impl Drop for BoxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the box may take to start (certificate generation, audio thread, sockets).
pub const BOX_START_DEADLINE: Duration = Duration::from_secs(20);

/// `/health` of the box at `base` (`https://127.0.0.1:<port>`), or `None` when it does
/// not answer 200.
pub async fn health(base: &str) -> Option<serde_json::Value> {
    let r = whip_client::https_request(base, "GET", "/health", &[], b"")
        .await
        .ok()?;
    (r.status == 200).then(|| serde_json::from_str(&r.body).expect("/health is JSON"))
}

impl BoxProcess {
    /// [`BoxProcess::start`], then waits (at most [`BOX_START_DEADLINE`]) until it
    /// answers /health; returns it with its base URL.
    pub async fn start_healthy(dir: &Path, env: &[(&str, String)]) -> (BoxProcess, String) {
        let the_box = BoxProcess::start(dir, env);
        let base = format!("https://127.0.0.1:{}", the_box.https_port);
        let begin = Instant::now();
        while health(&base).await.is_none() {
            assert!(
                begin.elapsed() < BOX_START_DEADLINE,
                "the box did not answer /health:\n{}",
                the_box.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (the_box, base)
    }
}

/// A box config for tests on loopback: HTTPS on 127.0.0.1 with any free port, no HTTP
/// redirect, WebRTC bound to 127.0.0.1 (WEBRTC.md §5: loopback needs an explicit bind),
/// a timer-paced `null` output (no sound card needed), two singer seats, state in
/// `state_dir`.
pub fn loopback_box_config(state_dir: &Path) -> Config {
    let mut config = Config::default();
    config.http.bind = "127.0.0.1".into();
    config.http.https_port = 0;
    config.http.http_port = 0;
    config.rtc.udp_bind = vec!["127.0.0.1".into()];
    config.rtc.include_loopback = true;
    config.audio.output = "null".into();
    // Tests run as root, where SCHED_FIFO would be granted: keep the test boxes' audio
    // threads at normal priority on a shared machine.
    config.audio.realtime_priority = 0;
    config.room.max_singers = 2;
    config.state.dir = state_dir.display().to_string();
    // Never mDNS in the machine's own network namespace (PLATFORM.md §3): the tests that
    // announce run the box in a namespace they made (tests/it/onboarding.rs).
    config.discovery.mdns = false;
    config
}

/// A fresh state directory for one in-process box, named after its test, inside this
/// test process's scratch directory.
pub fn box_dir(test: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let dir = ROOT.get_or_init(|| scratch_dir("box")).join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the box's state dir");
    dir
}

/// Starts the box in-process (within [`BOX_START_DEADLINE`]) and returns it with its
/// base URL, `https://127.0.0.1:<port>`. Logs go to stderr only when RUST_LOG is set.
pub async fn start_box(config: Config) -> (Running, String) {
    if std::env::var_os("RUST_LOG").is_some() {
        duetbox::telemetry::init("warn");
    }
    config.validate().expect("the test config is valid");
    let running = tokio::time::timeout(BOX_START_DEADLINE, duetbox::app::start(config))
        .await
        .unwrap_or_else(|_| {
            panic!("timed out after {BOX_START_DEADLINE:?} waiting for the box to start")
        })
        .unwrap_or_else(|e| panic!("the box did not start: {e:#}"));
    let base_url = format!("https://{}", running.https_addr);
    (running, base_url)
}

/// Seats `singer` (default settings) in a running audio thread, then sings `hz` for
/// `frames` 20 ms frames, sent in real time from the calling thread (real Opus, stamped
/// on the thread's clock).
pub fn seat_and_sing_in_real_time(
    handle: &duetbox::audio::AudioHandle,
    singer: duetbox::engine::SingerId,
    hz: f32,
    frames: u64,
) {
    use duetbox::engine::testkit::{phone_packets, Signal, PHONE_FRAME_SAMPLES};
    use duetbox::engine::{Command, SingerSettings};
    handle
        .command(Command::AddSinger {
            singer,
            settings: SingerSettings::default(),
        })
        .expect("queue has room");
    for (k, payload) in (0u64..).zip(phone_packets(Signal::tone(hz), frames)) {
        let at = handle.clock.now();
        let ts = (k * PHONE_FRAME_SAMPLES as u64) as u32;
        let slot =
            duetbox::audio::PacketSlot::new(singer, 7, k as u16, ts, at, &payload).expect("fits");
        handle.push_packet(slot);
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the left channel of a stereo WAV, as f32: the box's `WavSink` (16-bit) and
/// ALSA's file plugin (16-bit, 32-bit int or 32-bit float).
pub fn read_wav_left(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        bytes.len() > 44 && &bytes[0..4] == b"RIFF",
        "{} is not a WAV",
        path.display()
    );
    let format = u16::from_le_bytes([bytes[20], bytes[21]]);
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]) as usize;
    let bits = u16::from_le_bytes([bytes[34], bytes[35]]) as usize;
    // Find the data chunk (the plugin writes the canonical 44-byte header, but be exact).
    let mut pos = 12;
    let mut data = &bytes[44..];
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        if id == b"data" {
            data = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
            break;
        }
        pos += 8 + len;
    }
    let width = bits / 8;
    data.chunks_exact(width * channels)
        .map(|frame| {
            let s = &frame[..width];
            match (format, bits) {
                (3, 32) => f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                (1, 32) | (0xFFFE, 32) => {
                    i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as f32 / 2_147_483_648.0
                }
                (1, 16) | (0xFFFE, 16) => i16::from_le_bytes([s[0], s[1]]) as f32 / 32_768.0,
                other => panic!("unexpected WAV format {other:?}"),
            }
        })
        .collect()
}

/// Asserts that a stretch of the venue recording holds two voices, `hz`, all along:
/// each voice's level (the mean of its 100 ms window levels: one Goertzel over a whole
/// stretch would not be a level, since a splice or a catch-up shifts a tone's phase and
/// the parts before and after cancel) within `mean_range`, and both voices at least
/// `window_min` in at least 90 % of the windows (a dropout shows as weak windows).
/// Prints the per-window profile either way.
pub fn assert_two_voices(
    what: &str,
    duet: &[f32],
    hz: [f32; 2],
    mean_range: std::ops::RangeInclusive<f32>,
    window_min: f32,
) {
    use duetbox::engine::testkit::tone_level;
    let windows: Vec<[f32; 2]> = duet
        .chunks_exact(4_800)
        .map(|w| [tone_level(w, hz[0]), tone_level(w, hz[1])])
        .collect();
    assert!(!windows.is_empty(), "{what}: no 100 ms window to measure");
    let profile: Vec<String> = windows
        .iter()
        .map(|[a, b]| format!("{a:.2}/{b:.2}"))
        .collect();
    let mean = |k: usize| windows.iter().map(|w| w[k]).sum::<f32>() / windows.len() as f32;
    let means = [mean(0), mean(1)];
    eprintln!(
        "{what}, {:.2} s: {} Hz {:.3}, {} Hz {:.3}; per 100 ms: {}",
        duet.len() as f64 / 48_000.0,
        hz[0],
        means[0],
        hz[1],
        means[1],
        profile.join(" ")
    );
    for (h, level) in hz.iter().zip(means) {
        assert!(
            mean_range.contains(&level),
            "{what}: {h} Hz level {level} (expected {mean_range:?})"
        );
    }
    let both = windows
        .iter()
        .filter(|w| w[0] >= window_min && w[1] >= window_min)
        .count();
    assert!(
        both * 10 >= windows.len() * 9,
        "{what}: both voices in only {both} of {} 100 ms windows: {}",
        windows.len(),
        profile.join(" ")
    );
}
