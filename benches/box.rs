//! The real box under load: `duetbox serve` (this build, its own process, timer-paced
//! `null` output) with light WHIP/WHEP clients in this process, written in Rust on the
//! same webrtc stack as the box (tests/it/support/whip_client.rs). Per scenario it
//! prints the box's CPU (% of one core, from /proc over the measured stretch), its
//! memory (RSS), the singers' partner-return latency (clicks, median) and whether their
//! return mixes kept flowing (the longest gap between packets, and the media time the
//! clients had to conceal).
//!
//! `cargo bench --bench box` (`make bench-box`) prints the table; `cargo test
//! --all-targets` runs one short scenario as a smoke test. Speed lives here, never in
//! timed tests. The clients share the two cores with the box: on a Pi the box runs
//! alone, so these are upper bounds for this machine, not Pi figures.

#![allow(clippy::disallowed_methods)]

// The test clients, shared with tests/it (not all of their helpers are used here).
#[allow(dead_code)]
#[path = "../tests/it/support/latency.rs"]
mod latency;
#[allow(dead_code)]
#[path = "../tests/it/support/whip_client.rs"]
mod whip_client;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duetbox::engine::testkit::Signal;
use latency::{click_source, median, partner_latencies_ms};
use whip_client::{https_request, signal_source, silence, Options, Recording, Role, WhipClient};

/// The first click, 1.5 s into ana's stream; then one every 500 ms.
const FIRST_CLICK_FRAME: u64 = 75;
const CLICK_EVERY_FRAMES: u64 = 25;

/// Settling time after everyone joined, before measuring.
const WARM_UP: Duration = Duration::from_secs(3);

/// Listeners connected at once.
const CONNECT_BATCH: usize = 10;

struct Scenario {
    singers: usize,
    listeners: usize,
    seconds: u64,
}

struct Measured {
    cpu_pct: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    latency_ms: Option<f64>,
    clicks: usize,
    longest_gap: Duration,
    concealed_ms: f64,
}

/// A `duetbox serve` process on 127.0.0.1, killed on drop.
struct BoxProcess {
    child: Child,
    base: String,
    _dir: PathBuf,
}

impl Drop for BoxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

async fn start_box(max_singers: usize) -> BoxProcess {
    let dir = std::env::temp_dir().join(format!("duetbox-bench-box-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let port = free_port();
    let config = dir.join("duetbox.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nbind = \"127.0.0.1\"\nhttps_port = {port}\nhttp_port = 0\n\
             [rtc]\nudp_bind = [\"127.0.0.1\"]\ninclude_loopback = true\n\
             [room]\nmax_singers = {max_singers}\nmax_listeners = 100\n\
             [audio]\noutput = \"null\"\nrealtime_priority = 0\n\
             [state]\ndir = \"{}\"\n[log]\nfilter = \"warn\"\n",
            dir.join("state").display()
        ),
    )
    .expect("write the config");
    let child = Command::new(env!("CARGO_BIN_EXE_duetbox"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start duetbox");
    let base = format!("https://127.0.0.1:{port}");
    let begin = Instant::now();
    loop {
        if let Ok(r) = https_request(&base, "GET", "/health", &[], b"").await {
            if r.status == 200 {
                break;
            }
        }
        assert!(
            begin.elapsed() < Duration::from_secs(20),
            "the box did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    BoxProcess {
        child,
        base,
        _dir: dir,
    }
}

/// CPU time of a process so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/pid/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_s())
}

fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (VmRSS, VmHWM) of a process, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/pid/status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The longest gap between packets received in `[from, to]` (the whole span, as
/// `Duration::MAX`, when fewer than two arrived).
fn longest_gap(rec: &Recording, from: Instant, to: Instant) -> Duration {
    if rec.packets_between(from, to) < 2 {
        return Duration::MAX;
    }
    rec.longest_gap(from, to)
}

async fn run(s: &Scenario) -> Measured {
    let the_box = start_box(s.singers.max(2)).await;
    let base = the_box.base.clone();
    let clicks = s.seconds * 2;
    // Ana clicks, ben listens for her clicks (silent), the others sing quiet tones (so
    // that ana's clicks still stand out in ben's mix).
    let mut singers = Vec::new();
    for k in 0..s.singers {
        let source = match k {
            0 => click_source(FIRST_CLICK_FRAME, CLICK_EVERY_FRAMES, clicks + 20),
            1 => silence(),
            _ => signal_source(Signal::Tone {
                hz: 300.0 + 50.0 * k as f32,
                amplitude: 0.01,
            }),
        };
        let name = format!("singer{k}");
        let c = WhipClient::connect(&base, Role::Singer, &name, None, Some(source))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        singers.push(c);
    }
    let mut listeners = Vec::new();
    while listeners.len() < s.listeners {
        let batch = CONNECT_BATCH.min(s.listeners - listeners.len());
        let joins = (0..batch).map(|k| {
            let base = base.clone();
            let name = format!("listener{}", listeners.len() + k);
            async move {
                let options = Options {
                    decode: false,
                    ..Options::default()
                };
                WhipClient::connect_options(&base, Role::Listener, &name, None, None, options)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
            }
        });
        listeners.extend(futures_util::future::join_all(joins).await);
    }
    tokio::time::sleep(WARM_UP).await;
    let pid = the_box.child.id();
    let (cpu0, t0) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(s.seconds)).await;
    let (cpu1, t1) = (cpu_time(pid), Instant::now());
    let (rss, peak) = rss_mib(pid);
    let cpu_pct = (cpu1 - cpu0).as_secs_f64() / (t1 - t0).as_secs_f64() * 100.0;
    let mut longest = Duration::ZERO;
    let mut concealed = 0;
    for c in &singers {
        let rec = c.received();
        longest = longest.max(longest_gap(&rec, t0, t1));
        concealed += rec.concealed_frames;
    }
    let (sent, received) = (singers[0].sent(), singers[1].received());
    let mut lat = partner_latencies_ms(
        &sent,
        &received,
        FIRST_CLICK_FRAME,
        CLICK_EVERY_FRAMES,
        clicks + 20,
        19_200,
    );
    let found = lat.len();
    for c in singers.into_iter().chain(listeners) {
        c.close().await;
    }
    drop(the_box);
    Measured {
        cpu_pct,
        rss_mib: rss,
        peak_rss_mib: peak,
        latency_ms: (found > 0).then(|| median(&mut lat)),
        clicks: found,
        longest_gap: longest,
        concealed_ms: concealed as f64 / 48.0,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it, as
    // a smoke test: one short scenario, no table.
    if !std::env::args().any(|a| a == "--bench") {
        let m = runtime.block_on(run(&Scenario {
            singers: 2,
            listeners: 2,
            seconds: 2,
        }));
        assert!(m.cpu_pct.is_finite() && m.rss_mib > 0.0);
        return;
    }
    println!("duetbox box benchmark: `duetbox serve` (null output, 5 ms periods) with Rust WHIP/WHEP clients on the same 2 cores");
    println!();
    println!("| singers | listeners | seconds | box CPU (% of one core) | box RSS (peak) | partner return (median, clicks) | longest gap in singers' mixes | concealed by the singers |");
    println!("|--------:|----------:|--------:|------------------------:|---------------:|--------------------------------:|------------------------------:|-------------------------:|");
    let only = std::env::var("DUETBOX_BENCH_ONLY").ok();
    for s in [
        Scenario {
            singers: 2,
            listeners: 0,
            seconds: 10,
        },
        Scenario {
            singers: 2,
            listeners: 30,
            seconds: 10,
        },
        Scenario {
            singers: 2,
            listeners: 100,
            seconds: 60,
        },
        Scenario {
            singers: 8,
            listeners: 0,
            seconds: 10,
        },
    ] {
        if only
            .as_ref()
            .is_some_and(|o| *o != format!("{}x{}", s.singers, s.listeners))
        {
            continue;
        }
        let m = runtime.block_on(run(&s));
        println!(
            "| {:>7} | {:>9} | {:>7} | {:>22.1} % | {:>6.1} MiB ({:.1}) | {} ({} clicks) | {:>6.1} ms | {:.0} ms |",
            s.singers,
            s.listeners,
            s.seconds,
            m.cpu_pct,
            m.rss_mib,
            m.peak_rss_mib,
            m.latency_ms.map_or("-".to_string(), |v| format!("{v:.1} ms")),
            m.clicks,
            m.longest_gap.as_secs_f64() * 1000.0,
            m.concealed_ms,
        );
    }
}
