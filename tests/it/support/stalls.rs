//! Whether the machine itself stopped running us: a real-time thread that asks to wake
//! every 5 ms and notes when it woke more than [`STALL`] late.
//!
//! A `SCHED_FIFO` thread at priority 90 outranks everything a test starts (the box's
//! threads, PulseAudio's, the browsers'), so only the host can hold it back: a virtual
//! machine whose CPUs the hypervisor did not run (steal time). Seen on this CI's
//! machine: 25 to 64 ms pauses about once a minute while a full `make test` runs, and in
//! the runs that failed a media test's timing (a phone 25 ms late for three markers
//! after one). A Raspberry Pi has no hypervisor; a real venue's phones have their own
//! CPUs.
//!
//! [`once_more_if_the_machine_stalled`] runs a media test's scenario, and when it fails
//! *and* the machine stalled during it, runs it once more, saying so; a second failure
//! fails the test. A failure without a stall is never retried: the product's own faults
//! (or the test's) still fail at once.
//!
//! A scenario may [`note`] that a part the test stands in for a machine's stopped in
//! the same way: the test's PulseAudio "speakers" (a null sink on two busy cores), whose
//! stream restarts for a second or more now and then, as no real sound card does. Seen
//! in CI: a 1.5 s stop, after which a phone's lyrics ran 45 to 56 ms early for the rest
//! of the song (the night test's bound is 50 ms). Or that the machine ran none of its
//! ordinary threads (the box's network tasks among them) for 100 ms or more: the box
//! shares the two cores with the browsers that stand in for phones, which a Pi never
//! does. Seen after a song's start: the phones' jitter buffers grew to 780 ms.

use std::cell::RefCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much later than asked a wake-up must be to count as the machine stalling.
pub const STALL: Duration = Duration::from_millis(20);

/// How often the probe asks to wake.
const TICK: Duration = Duration::from_millis(5);

/// The probe: running until dropped or [`Probe::stop`]ped.
pub struct Probe {
    stop: Arc<AtomicBool>,
    stalls: Arc<Mutex<Vec<(Duration, Duration)>>>,
    join: Option<JoinHandle<()>>,
}

impl Probe {
    /// Starts the probe thread (real-time: the tests run as root).
    pub fn start() -> Probe {
        #[expect(clippy::disallowed_methods, reason = "the probe measures wall time")]
        let begun = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let stalls = Arc::new(Mutex::new(Vec::new()));
        let join = std::thread::Builder::new()
            .name("stall-probe".into())
            .spawn({
                let (stop, stalls) = (stop.clone(), stalls.clone());
                move || {
                    duetbox::audio::make_realtime(90)
                        .expect("the stall probe runs real-time (the tests run as root)");
                    #[expect(clippy::disallowed_methods, reason = "the probe measures wall time")]
                    let mut last = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        #[expect(clippy::disallowed_methods, reason = "the probe sleeps")]
                        std::thread::sleep(TICK);
                        #[expect(
                            clippy::disallowed_methods,
                            reason = "the probe measures wall time"
                        )]
                        let now = Instant::now();
                        let late = now.duration_since(last).saturating_sub(TICK);
                        if late > STALL {
                            let mut stalls = stalls.lock().expect("the stall list");
                            stalls.push((now.duration_since(begun), late));
                        }
                        last = now;
                    }
                }
            })
            .expect("the stall probe thread starts");
        Probe {
            stop,
            stalls,
            join: Some(join),
        }
    }

    /// Stops the probe; the stalls it saw: (when, since it started; how late).
    pub fn stop(mut self) -> Vec<(Duration, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
        std::mem::take(&mut *self.stalls.lock().expect("the stall list"))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

thread_local! {
    /// What the scenario running on this thread [`note`]d.
    static NOTED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Notes, for the guard around the scenario running on this thread, that a part the
/// test stands in for a machine's stopped as the machine itself may (module docs).
pub fn note(what: String) {
    NOTED.with(|n| n.borrow_mut().push(what));
}

/// Runs `scenario`; when it panics and the machine stalled while it ran, runs it once
/// more (see the module docs). `what` names it in the message.
pub fn once_more_if_the_machine_stalled<T>(what: &str, scenario: impl Fn() -> T) -> T {
    NOTED.with(|n| n.borrow_mut().clear());
    let probe = Probe::start();
    let first = catch_unwind(AssertUnwindSafe(&scenario));
    let stalls = probe.stop();
    let noted = NOTED.with(|n| std::mem::take(&mut *n.borrow_mut()));
    match first {
        Ok(done) => done,
        Err(panic) if !stalls.is_empty() || !noted.is_empty() => {
            let seen: Vec<String> = stalls
                .iter()
                .map(|(at, late)| format!("{} ms at {:.1} s", late.as_millis(), at.as_secs_f64()))
                .chain(noted)
                .collect();
            eprintln!(
                "{what}: failed (above) while the machine itself stalled ({}: a real-time \
                 thread woke that late, or what the scenario noted); once more",
                seen.join(", ")
            );
            drop(panic);
            scenario()
        }
        Err(panic) => resume_unwind(panic),
    }
}

/// [`once_more_if_the_machine_stalled`] for an async scenario, each run on a runtime of
/// its own (two workers, as the other media tests have).
pub fn once_more_if_the_machine_stalled_async<F: std::future::Future<Output = ()>>(
    what: &str,
    scenario: impl Fn() -> F,
) {
    once_more_if_the_machine_stalled(what, || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(scenario())
    });
}
