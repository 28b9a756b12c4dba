//! One phone's WebSocket session: signaling messages in and out, room updates, bye.
//!
//! Everything a phone sends is answered to that phone only. A fatal error (PIN, room
//! full, version, oversize frame) is followed by a close with a reason.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::signaling::{
    self, ClientMessage, ErrorCode, ServerMessage, WireError, PROTOCOL_VERSION,
};
use super::AppState;
use crate::control::{LeaveReason, PeerId, Room};
use crate::rtc::PeerEvent;

/// Fastest rate of `room` messages to one phone (levels at <= 10 Hz).
const ROOM_INTERVAL: Duration = Duration::from_millis(100);

/// Close code for an oversize frame (RFC 6455 §7.4.1).
const CLOSE_TOO_BIG: u16 = 1009;

/// Close code for a policy refusal (PIN, full room, version).
const CLOSE_POLICY: u16 = 1008;

pub(crate) async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    let max = state.settings.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(socket, state))
}

struct Session {
    room: Arc<Room>,
    out: mpsc::UnboundedSender<Message>,
    peer: Option<PeerId>,
    offered: bool,
    events: Option<mpsc::UnboundedReceiver<PeerEvent>>,
    bye: Option<tokio::sync::watch::Receiver<Option<LeaveReason>>>,
}

impl Session {
    fn send(&self, msg: ServerMessage) {
        let _ = self.out.send(Message::Text(msg.to_json().into()));
    }

    fn close(&self, code: u16, reason: &str) {
        let _ = self.out.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_string().into(),
        })));
    }

    /// Handles one message; returns false when the session must end.
    async fn handle(&mut self, text: &str) -> bool {
        let msg = match signaling::parse(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(peer = ?self.peer, code = ?e.code, "refused a message");
                self.send(e.into());
                return true;
            }
        };
        match msg {
            ClientMessage::Join { v, name, role, pin } => {
                if self.peer.is_some() {
                    self.send(WireError::new(ErrorCode::AlreadyJoined, "already joined").into());
                    return true;
                }
                if v != PROTOCOL_VERSION {
                    return self.fatal(ErrorCode::Version, &format!("protocol version {v} is not supported; this box speaks {PROTOCOL_VERSION}"));
                }
                match self.room.join(&name, role, pin.as_deref()) {
                    Ok(admission) => {
                        self.peer = Some(admission.peer);
                        self.bye = Some(admission.bye);
                        self.send(ServerMessage::Welcome {
                            v: PROTOCOL_VERSION,
                            peer: admission.peer.to_string(),
                            role,
                            name,
                            max_singers: self.room.max_singers(),
                        });
                        self.send(ServerMessage::Room {
                            peers: self.room.view(),
                        });
                        true
                    }
                    Err(ErrorCode::WrongPin) => self.fatal(ErrorCode::WrongPin, "wrong PIN"),
                    Err(ErrorCode::RoomFull) => self.fatal(
                        ErrorCode::RoomFull,
                        &format!("all {} seats are taken", role.as_str()),
                    ),
                    Err(code) => {
                        self.send(WireError::new(code, "could not join").into());
                        true
                    }
                }
            }
            _ if self.peer.is_none() => {
                self.send(WireError::new(ErrorCode::NotJoined, "send join first").into());
                true
            }
            ClientMessage::Offer { sdp } => {
                let peer = self.peer.expect("checked above");
                if self.offered {
                    self.send(
                        WireError::new(
                            ErrorCode::AlreadyOffered,
                            "this connection already has an offer",
                        )
                        .into(),
                    );
                    return true;
                }
                if let Err(e) = signaling::check_offer(&sdp) {
                    self.send(e.into());
                    return true;
                }
                match self.room.attach(peer, sdp, false).await {
                    Ok((answer, events)) => {
                        self.offered = true;
                        self.events = Some(events);
                        self.send(ServerMessage::Answer { sdp: answer });
                    }
                    Err(e) => {
                        tracing::info!(peer = %peer, error = %e, "offer refused");
                        self.send(WireError::new(ErrorCode::BadSdp, e.to_string()).into());
                    }
                }
                true
            }
            ClientMessage::Candidate { candidate } => {
                let peer = self.peer.expect("checked above");
                if let Err(e) = self.room.add_candidate(peer, candidate.as_deref()).await {
                    self.send(WireError::new(ErrorCode::BadField, e.to_string()).into());
                }
                true
            }
            ClientMessage::Mix { monitor, reverb } => {
                self.room
                    .set_mix(self.peer.expect("checked above"), monitor, reverb);
                true
            }
            ClientMessage::Ping { t } => {
                self.send(ServerMessage::Pong { t });
                true
            }
            ClientMessage::Leave => {
                let peer = self.peer.take().expect("checked above");
                self.room.leave(peer, LeaveReason::Left).await;
                self.send(ServerMessage::Bye {
                    reason: LeaveReason::Left.as_str(),
                });
                self.close(1000, "left");
                false
            }
        }
    }

    fn fatal(&self, code: ErrorCode, message: &str) -> bool {
        self.send(WireError::new(code, message).into());
        self.close(CLOSE_POLICY, message);
        false
    }
}

async fn session(socket: WebSocket, state: AppState) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let closing = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut s = Session {
        room: state.room.clone(),
        out,
        peer: None,
        offered: false,
        events: None,
        bye: None,
    };
    let mut room_updates = state.room.subscribe();
    let mut room_tick = tokio::time::interval(ROOM_INTERVAL);
    room_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut room_dirty = false;
    let idle = state.settings.idle_timeout;
    loop {
        tokio::select! {
            received = tokio::time::timeout(idle, stream.next()) => {
                match received {
                    Err(_) => {
                        s.send(ServerMessage::Bye { reason: LeaveReason::Timeout.as_str() });
                        s.close(1000, "idle");
                        break;
                    }
                    Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break,
                    Ok(Some(Err(e))) => {
                        // tungstenite reports an oversize message as a capacity error.
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
                            s.send(WireError::new(ErrorCode::TooLarge, "message too large").into());
                            s.close(CLOSE_TOO_BIG, "message too large");
                        }
                        tracing::debug!(peer = ?s.peer, error = %text, "websocket read failed");
                        break;
                    }
                    Ok(Some(Ok(Message::Text(text)))) => {
                        if !s.handle(text.as_str()).await {
                            break;
                        }
                    }
                    Ok(Some(Ok(Message::Binary(_)))) => {
                        s.send(WireError::new(ErrorCode::BadJson, "binary frames are not part of the protocol").into());
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
            event = async { match s.events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                let Some(peer) = s.peer else { continue };
                match event {
                    Some(PeerEvent::LocalCandidate(json)) => {
                        if let Ok(candidate) = serde_json::from_str(&json) {
                            s.send(ServerMessage::Candidate { candidate });
                        }
                    }
                    Some(PeerEvent::Connected) => s.room.set_state(peer, "live"),
                    Some(PeerEvent::Disconnected) => s.room.set_state(peer, "reconnecting"),
                    Some(PeerEvent::Failed) | None => {
                        s.events = None;
                        s.room.leave(peer, LeaveReason::Timeout).await;
                    }
                }
            }
            changed = async { match s.bye.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => {
                let reason = s.bye.as_ref().and_then(|rx| *rx.borrow());
                if changed.is_err() || reason.is_some() {
                    let reason = reason.unwrap_or(LeaveReason::Timeout);
                    s.peer = None;
                    s.send(ServerMessage::Bye { reason: reason.as_str() });
                    s.close(1000, reason.as_str());
                    break;
                }
            }
            _ = room_updates.changed() => room_dirty = true,
            _ = room_tick.tick() => {
                if room_dirty && s.peer.is_some() {
                    room_dirty = false;
                    s.send(ServerMessage::Room { peers: s.room.view() });
                }
            }
            _ = state.shutdown.cancelled(), if s.peer.is_none() => {
                s.send(ServerMessage::Bye { reason: LeaveReason::Shutdown.as_str() });
                s.close(1001, "shutdown");
                break;
            }
        }
    }
    if let Some(peer) = s.peer.take() {
        s.room.leave(peer, LeaveReason::Left).await;
    }
    drop(s);
    let _ = writer.await;
}
