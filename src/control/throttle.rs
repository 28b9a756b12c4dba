//! Slows down PIN guessing, per client address.
//!
//! A 4-digit PIN has 10,000 values; answered as fast as the box can (thousands a
//! second), it falls in seconds. So each address gets [`FREE_FAILURES`] wrong PINs,
//! then has to wait before the next attempt: 1 s, 2 s, 4 s, … up to [`LOCKOUT`], the
//! wait growing with every further failure; attempts made while it waits are refused
//! without looking at the PIN (and do not count). A right PIN from that address clears
//! its record; other addresses are not slowed at all. An address that stops failing
//! is forgotten after [`FORGET_AFTER`].
//!
//! Pure (time is an argument) and bounded: at most [`MAX_ADDRESSES`] records; when
//! full, the one idle the longest makes room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Wrong PINs an address may send before it has to wait.
pub const FREE_FAILURES: u32 = 5;

/// The first wait after [`FREE_FAILURES`]; it doubles with each further failure.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);

/// The longest wait: an address that keeps guessing is locked out this long each time.
pub const LOCKOUT: Duration = Duration::from_secs(60);

/// A record with no failure for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Addresses remembered at most (a venue has a few hundred phones; a flood of spoofed
/// addresses cannot grow memory past this).
pub const MAX_ADDRESSES: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    last_failure: Duration,
    wait_until: Duration,
}

/// The failed-PIN records of every address.
#[derive(Debug, Default)]
pub struct PinThrottle {
    records: HashMap<IpAddr, Record>,
}

impl PinThrottle {
    /// No records.
    pub fn new() -> PinThrottle {
        PinThrottle::default()
    }

    /// `Err(wait)` when `addr` must wait that long before its next attempt.
    pub fn check(&self, addr: IpAddr, now: Duration) -> Result<(), Duration> {
        match self.records.get(&addr) {
            Some(r) if r.wait_until > now => Err(r.wait_until - now),
            _ => Ok(()),
        }
    }

    /// A wrong PIN from `addr` at `now`.
    pub fn failed(&mut self, addr: IpAddr, now: Duration) {
        self.forget_old(now);
        if !self.records.contains_key(&addr) && self.records.len() >= MAX_ADDRESSES {
            let idlest = self
                .records
                .iter()
                .min_by_key(|(_, r)| r.last_failure)
                .map(|(&a, _)| a);
            if let Some(a) = idlest {
                self.records.remove(&a);
            }
        }
        let r = self.records.entry(addr).or_insert(Record {
            failures: 0,
            last_failure: now,
            wait_until: now,
        });
        r.failures += 1;
        r.last_failure = now;
        if r.failures >= FREE_FAILURES {
            let doublings = (r.failures - FREE_FAILURES).min(16);
            let wait = FIRST_WAIT.saturating_mul(1 << doublings).min(LOCKOUT);
            r.wait_until = now + wait;
        }
    }

    /// A right PIN from `addr`: its record is cleared.
    pub fn succeeded(&mut self, addr: IpAddr) {
        self.records.remove(&addr);
    }

    /// Addresses on record.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no address is on record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn forget_old(&mut self, now: Duration) {
        self.records
            .retain(|_, r| now.saturating_sub(r.last_failure) < FORGET_AFTER || r.wait_until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn five_free_failures_then_waits_that_double_up_to_the_lockout() {
        let mut t = PinThrottle::new();
        let mut now = secs(0.0);
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(t.check(ip(1), now), Ok(()));
            t.failed(ip(1), now);
            now += secs(0.01);
        }
        assert_eq!(t.check(ip(1), now), Ok(()));
        t.failed(ip(1), now);
        assert_eq!(
            t.check(ip(1), now),
            Err(secs(1.0)),
            "the 5th failure costs a second"
        );
        let mut waits = Vec::new();
        for _ in 0..10 {
            let wait = t.check(ip(1), now).expect_err("waiting");
            waits.push(wait.as_secs());
            now += wait;
            assert_eq!(t.check(ip(1), now), Ok(()));
            t.failed(ip(1), now);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn other_addresses_are_not_slowed_and_a_right_pin_clears_the_record() {
        let mut t = PinThrottle::new();
        for k in 0..20 {
            t.failed(ip(1), secs(f64::from(k) * 0.001));
        }
        assert!(t.check(ip(1), secs(0.1)).is_err());
        assert_eq!(t.check(ip(2), secs(0.1)), Ok(()));
        t.succeeded(ip(1));
        assert_eq!(t.check(ip(1), secs(0.1)), Ok(()));
        assert!(t.is_empty());
    }

    #[test]
    fn the_record_is_forgotten_and_memory_is_bounded() {
        let mut t = PinThrottle::new();
        t.failed(ip(1), secs(0.0));
        t.failed(ip(2), FORGET_AFTER + secs(1.0));
        assert_eq!(t.len(), 1, "the old record went");
        let mut t = PinThrottle::new();
        for k in 0..(MAX_ADDRESSES as u32 + 100) {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k));
            t.failed(addr, secs(f64::from(k) * 0.001));
        }
        assert_eq!(t.len(), MAX_ADDRESSES);
    }
}
