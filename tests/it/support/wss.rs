//! A WebSocket "phone" over TLS for the signaling tests: sends raw text (valid or not)
//! and reads the box's JSON replies. Accepts the box's self-signed certificate (the WHIP
//! client's TLS config): these tests check signaling, not the certificate.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long one reply may take.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// One WebSocket connection to the box.
pub struct Phone {
    ws: WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
}

/// What a read returned.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A JSON text message.
    Json(Value),
    /// A close frame with its code.
    Closed(Option<u16>),
}

impl Phone {
    /// Connects to `wss://addr/ws`.
    pub async fn connect(addr: SocketAddr) -> Phone {
        let tcp = TcpStream::connect(addr).await.expect("connect to the box");
        Phone::over(addr, tcp).await
    }

    /// Connects from the local address `from`, with a receive buffer of `rcvbuf` bytes
    /// if given (a small one makes a client that never reads fill up fast).
    pub async fn connect_from(
        addr: SocketAddr,
        from: std::net::IpAddr,
        rcvbuf: Option<u32>,
    ) -> Phone {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind the client's address");
        let tcp = socket.connect(addr).await.expect("connect to the box");
        Phone::over(addr, tcp).await
    }

    async fn over(addr: SocketAddr, tcp: TcpStream) -> Phone {
        let connector = tokio_rustls::TlsConnector::from(super::whip_client::tls_config());
        let tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake with the box");
        let url = format!("wss://localhost:{}/ws", addr.port());
        let (ws, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .expect("WebSocket handshake");
        Phone { ws }
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a JSON value.
    pub async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a JSON value; false if the connection is gone.
    pub async fn try_send(&mut self, value: Value) -> bool {
        self.ws
            .send(Message::Text(value.to_string().into()))
            .await
            .is_ok()
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> bool {
        self.ws.send(Message::Binary(bytes.into())).await.is_ok()
    }

    /// The next JSON message or close (pings and pongs skipped), within the deadline.
    pub async fn next(&mut self) -> Received {
        loop {
            let msg = tokio::time::timeout(REPLY_DEADLINE, self.ws.next())
                .await
                .expect("timed out waiting for a reply from the box");
            match msg {
                None => return Received::Closed(None),
                Some(Err(_)) => return Received::Closed(None),
                Some(Ok(Message::Text(t))) => {
                    return Received::Json(
                        serde_json::from_str(t.as_str()).expect("the box sends JSON"),
                    )
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next message whose `type` is `kind` (others skipped), within the deadline.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            match self.next().await {
                Received::Json(v) if v["type"] == kind => return v,
                Received::Json(_) => continue,
                Received::Closed(code) => panic!("closed ({code:?}) while waiting for `{kind}`"),
            }
        }
    }

    /// Waits for the close (skipping messages), returning its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(code) = self.next().await {
                return code;
            }
        }
    }
}
