//! Caps the TCP connections one address, and everyone together, may hold at once.
//!
//! Sits under TLS in the accept chain: a connection over either cap is closed before
//! its handshake (so it costs one accept and a close), the others are counted until
//! they close. Thousands of idle connections from one address (a script on the venue
//! Wi-Fi) then hold `per_address` slots at most, and the box keeps serving everyone
//! else; the TLS handshake deadline frees the slots of those that never speak.
//!
//! The counting is a small pure table ([`ConnectionTable`]); [`ConnectionLimiter`] is
//! axum-server's `Accept` around it.

use std::collections::HashMap;
use std::future::Ready;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Open connections by address, and in all.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    per_address: usize,
    total: usize,
    open: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// This address holds its share.
    Address,
    /// The box holds all it may.
    Total,
}

impl ConnectionTable {
    /// An empty table with these caps.
    pub fn new(per_address: usize, total: usize) -> ConnectionTable {
        ConnectionTable {
            per_address,
            total,
            ..ConnectionTable::default()
        }
    }

    /// Counts a new connection from `addr`, or says which cap it hits.
    pub fn open(&mut self, addr: IpAddr) -> Result<(), Full> {
        if self.open >= self.total {
            return Err(Full::Total);
        }
        let n = self.by_address.entry(addr).or_insert(0);
        if *n >= self.per_address {
            return Err(Full::Address);
        }
        *n += 1;
        self.open += 1;
        Ok(())
    }

    /// A connection from `addr` closed.
    pub fn close(&mut self, addr: IpAddr) {
        if let Some(n) = self.by_address.get_mut(&addr) {
            *n -= 1;
            self.open -= 1;
            if *n == 0 {
                self.by_address.remove(&addr);
            }
        }
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.open
    }
}

/// What the limiter shares with every connection it let in.
#[derive(Debug)]
struct Shared {
    send_buffer_bytes: usize,
    table: Mutex<ConnectionTable>,
    refused: AtomicU64,
    logged: AtomicU64,
}

/// The accept step that enforces the caps (cheap to clone).
#[derive(Clone, Debug)]
pub struct ConnectionLimiter {
    shared: Arc<Shared>,
}

/// Refusals are logged at the first and then once per this many.
const REFUSED_LOG_EVERY: u64 = 1000;

impl ConnectionLimiter {
    /// A limiter with these caps, fixing each connection's kernel send buffer.
    pub fn new(per_address: usize, total: usize, send_buffer_bytes: usize) -> ConnectionLimiter {
        ConnectionLimiter {
            shared: Arc::new(Shared {
                send_buffer_bytes,
                table: Mutex::new(ConnectionTable::new(per_address, total)),
                refused: AtomicU64::new(0),
                logged: AtomicU64::new(0),
            }),
        }
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.table().open_now()
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, ConnectionTable> {
        // The table is counts only; a panic elsewhere cannot leave it half-written.
        self.shared.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection that gives its slot back when it closes.
pub struct Counted<T> {
    inner: T,
    addr: IpAddr,
    limiter: ConnectionLimiter,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.limiter.table().close(self.addr);
    }
}

impl<S> Accept<TcpStream, S> for ConnectionLimiter {
    type Stream = Counted<TcpStream>;
    type Service = S;
    type Future = Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let addr = match stream.peer_addr() {
            Ok(a) => a.ip(),
            Err(e) => return std::future::ready(Err(e)),
        };
        // TCP_NODELAY: signaling messages are small and latency matters more.
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(self.shared.send_buffer_bytes);
        let opened = self.table().open(addr);
        std::future::ready(match opened {
            Ok(()) => Ok((
                Counted {
                    inner: stream,
                    addr,
                    limiter: self.clone(),
                },
                service,
            )),
            Err(full) => {
                let refused = self.shared.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let logged = self.shared.logged.load(Ordering::Relaxed);
                if refused == 1 || refused >= logged + REFUSED_LOG_EVERY {
                    self.shared.logged.store(refused, Ordering::Relaxed);
                    tracing::warn!(
                        client = %addr,
                        cap = ?full,
                        refused,
                        "connection refused: over the connection cap"
                    );
                }
                Err(io::Error::other("over the connection cap"))
            }
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_in() {
        let mut t = ConnectionTable::new(3, 5);
        for _ in 0..3 {
            assert_eq!(t.open(ip(1)), Ok(()));
        }
        assert_eq!(t.open(ip(1)), Err(Full::Address));
        assert_eq!(t.open(ip(2)), Ok(()));
        assert_eq!(t.open(ip(3)), Ok(()));
        assert_eq!(t.open(ip(4)), Err(Full::Total));
        t.close(ip(1));
        assert_eq!(t.open(ip(4)), Ok(()));
        assert_eq!(t.open_now(), 5);
    }

    #[test]
    fn closing_frees_the_slot_and_the_record() {
        let mut t = ConnectionTable::new(1, 10);
        assert_eq!(t.open(ip(1)), Ok(()));
        t.close(ip(1));
        assert_eq!(t.open_now(), 0);
        assert!(t.by_address.is_empty());
        // A close of something never opened changes nothing.
        t.close(ip(9));
        assert_eq!(t.open_now(), 0);
        assert_eq!(t.open(ip(1)), Ok(()));
    }
}
