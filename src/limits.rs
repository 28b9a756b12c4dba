//! The caps on what the network may ask of the box, and the meter that enforces rates.
//!
//! The box sits on a public Wi-Fi: every input from the network has a limit, so that
//! nothing one client sends can disturb another client or the audio. [`Limits`] holds
//! them (typed from the `[limits]` config section, each documented there with its
//! default); the adapters enforce them where the input arrives (`http` for
//! connections, messages, SDP and candidates, `rtc` for a singer's packets).
//! [`TokenBucket`] meters a rate.
//!
//! Pure: no clock (time is an argument), no IO.

use std::time::Duration;

/// Every limit, as configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// TCP connections (HTTPS, WebSocket) one address may hold at once.
    pub connections_per_address: usize,
    /// TCP connections the box holds at once.
    pub connections_total: usize,
    /// How long a TLS handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
    /// Kernel send buffer of each client connection, bytes (fixed, so the kernel does
    /// not grow it to megabytes for a client that does not read).
    pub send_buffer_bytes: usize,
    /// Messages a WebSocket client may send per second, on average.
    pub messages_per_s: f64,
    /// Messages a WebSocket client may send in a burst.
    pub messages_burst: f64,
    /// Messages waiting for one WebSocket client; a client that lets more pile up has
    /// stopped reading and is closed.
    pub out_queue_messages: usize,
    /// Trickled ICE candidates one connection may send.
    pub candidates_per_connection: usize,
    /// Media sections (`m=` lines) an offer may have.
    pub offer_m_lines: usize,
    /// RTP packets a singer may send per second, on average (a phone sends 50 or 100).
    pub packets_per_s: f64,
    /// RTP packets a singer may send in a burst (a Wi-Fi stall releases a backlog).
    pub packets_burst: f64,
    /// `room` messages a WebSocket client gets per second at most.
    pub room_updates_per_s: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_address: 32,
            connections_total: 1024,
            handshake_timeout: Duration::from_secs(5),
            send_buffer_bytes: 65_536,
            messages_per_s: 20.0,
            messages_burst: 40.0,
            out_queue_messages: 64,
            candidates_per_connection: 64,
            offer_m_lines: 4,
            packets_per_s: 200.0,
            packets_burst: 200.0,
            room_updates_per_s: 10.0,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Starts full.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_s: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate_per_s,
            burst,
            tokens: burst,
            last: Duration::ZERO,
        }
    }

    /// Takes one token at `now` (any monotonic time, never going back); false when
    /// there is none (the event is over the rate).
    pub fn take(&mut self, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(10.0, 5.0);
        let first: usize = (0..20).filter(|_| b.take(ms(0))).count();
        assert_eq!(first, 5, "the burst");
        // Ten seconds of one event every 10 ms: only the rate (10/s) gets through.
        let passed = (1..=1000).filter(|k| b.take(ms(10 * k))).count();
        assert!((99..=101).contains(&passed), "{passed} in 10 s");
    }

    #[test]
    fn a_client_under_the_rate_is_never_refused() {
        let mut b = TokenBucket::new(20.0, 40.0);
        assert!((0..1000).all(|k| b.take(ms(60 * k))));
    }

    #[test]
    fn time_going_back_takes_nothing() {
        let mut b = TokenBucket::new(1.0, 1.0);
        assert!(b.take(ms(5000)));
        assert!(!b.take(ms(1000)));
        assert!(!b.take(ms(5500)));
        assert!(b.take(ms(6000)));
    }
}
