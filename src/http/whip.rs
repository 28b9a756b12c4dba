//! WHIP (RFC 9725) and WHEP over HTTPS: one POST with an SDP offer, one 201 with the
//! answer (all candidates in it), one DELETE to leave. Extension: a WHIP singer whose
//! offer is `sendrecv` receives its personal mix on the same transceiver.
//!
//! Each resource is a connection of the room that cannot rejoin; its URL carries the
//! participant's secret token, so only the client that created it can DELETE it.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use tracing::Instrument;

use super::signaling;
use super::AppState;
use crate::control::{Control, Input, JoinRequest, MediaState, Refusal, Role, Sends, Token};
use crate::rtc::PeerEvent;

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.into(),
    )
        .into_response()
}

/// A WHIP/WHEP `POST` as the box accepts it.
#[derive(Debug, PartialEq)]
pub struct Post {
    /// Display name (trimmed, printable, at most 32 characters).
    pub name: String,
    /// Singer (WHIP, unless `role=listener`) or listener (WHEP).
    pub role: Role,
    /// The offer.
    pub sdp: String,
    /// The bearer token of `Authorization`, if any (the PIN).
    pub pin: Option<String>,
}

/// The endpoint a `POST` came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/whip`.
    Whip,
    /// `/whep`.
    Whep,
}

impl Endpoint {
    fn base(self) -> &'static str {
        match self {
            Endpoint::Whip => "whip",
            Endpoint::Whep => "whep",
        }
    }
}

/// Checks a `POST` before anything is admitted: content type, role, name, the offer's
/// text and shape. Pure (fuzzed: `fuzz/`); a refusal is an HTTP status and a text.
pub fn parse_post(
    endpoint: Endpoint,
    content_type: Option<&str>,
    authorization: Option<&str>,
    role: Option<&str>,
    name: Option<&str>,
    body: &[u8],
    max_m_lines: usize,
) -> Result<Post, (u16, String)> {
    let role = match (endpoint, role) {
        (Endpoint::Whep, _) => Role::Listener,
        (Endpoint::Whip, None | Some("singer")) => Role::Singer,
        (Endpoint::Whip, Some("listener")) => Role::Listener,
        (Endpoint::Whip, Some("backing")) => Role::Backing,
        (Endpoint::Whip, Some(_)) => {
            return Err((400, "role must be singer, listener or backing".into()));
        }
    };
    if !content_type.unwrap_or("").starts_with("application/sdp") {
        return Err((415, "Content-Type must be application/sdp".into()));
    }
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return Err((400, "the offer is not UTF-8 text".into()));
    };
    if let Err(e) = signaling::check_offer(&sdp, max_m_lines) {
        return Err((400, e.message));
    }
    let name: String = name
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(signaling::MAX_NAME_CHARS)
        .collect();
    let name = if name.trim().is_empty() {
        endpoint.base().to_string()
    } else {
        name
    };
    let pin = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    Ok(Post {
        name,
        role,
        sdp,
        pin,
    })
}

pub(crate) async fn whip_post(
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ingest(state, client, &headers, &query, body, Endpoint::Whip).await
}

pub(crate) async fn whep_post(
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ingest(state, client, &headers, &query, body, Endpoint::Whep).await
}

async fn ingest(
    state: AppState,
    client: SocketAddr,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Bytes,
    endpoint: Endpoint,
) -> Response {
    let header_text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let post = match parse_post(
        endpoint,
        header_text(header::CONTENT_TYPE),
        header_text(header::AUTHORIZATION),
        query.get("role").map(String::as_str),
        query.get("name").map(String::as_str),
        &body,
        state.settings.limits.offer_m_lines,
    ) {
        Ok(post) => post,
        Err((status, text)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return plain(status, text);
        }
    };
    let Post {
        name,
        role,
        sdp,
        pin,
    } = post;
    let base = endpoint.base();
    let control = state.control.clone();
    let conn = control.conn();
    let request = JoinRequest {
        name,
        role,
        pin,
        token: None,
        new_token: Control::new_token(),
        // A WHIP/WHEP client has no way back into a session: when its media fails, it
        // is gone.
        rejoinable: false,
        from: Some(client.ip()),
    };
    let (welcome, bye) = match control.join(conn, request).await {
        Ok(joined) => joined,
        Err(Refusal::WrongPin) => return unauthorized(),
        Err(refusal @ Refusal::SlowDown(wait)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (header::RETRY_AFTER, wait.as_secs_f64().ceil().to_string()),
                    (
                        header::CONTENT_TYPE,
                        "text/plain; charset=utf-8".to_string(),
                    ),
                ],
                refusal.to_string(),
            )
                .into_response()
        }
        Err(refusal @ Refusal::Full(_)) => return plain(StatusCode::CONFLICT, refusal.to_string()),
        Err(refusal) => return plain(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string()),
    };
    let span = tracing::info_span!(
        "peer",
        id = %welcome.peer,
        name = welcome.name.as_str(),
        role = welcome.role.as_str()
    );
    let sends = match welcome.role {
        Role::Singer => Sends::Voice(welcome.peer.singer()),
        Role::Listener => Sends::Nothing,
        Role::Backing => Sends::Backing,
    };
    let offered = control
        .offer(conn, sends, sdp, true)
        .instrument(span.clone())
        .await;
    let media = match offered {
        Ok(media) => media,
        Err(e) => {
            let _ = control.handle(Input::Leave { conn }).await;
            return plain(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let mut events = media.events;
    tokio::spawn(
        async move {
            let mut bye = bye;
            loop {
                tokio::select! {
                    // The room ended the session (DELETE, failure, shutdown): it closes
                    // the media itself.
                    _ = &mut bye => break,
                    event = events.recv() => {
                        let state = match event {
                            Some(PeerEvent::Connected) => MediaState::Connected,
                            Some(PeerEvent::Disconnected) => MediaState::Disconnected,
                            Some(PeerEvent::Failed) | None => MediaState::Failed,
                            // A WHIP client has no page to tell its wall clock: its
                            // one-way time stays unmeasured.
                            Some(PeerEvent::LocalCandidate(_) | PeerEvent::SenderClock(_)) => continue,
                        };
                        let _ = control.handle(Input::Media { conn, state }).await;
                        if state == MediaState::Failed {
                            break;
                        }
                    }
                }
            }
        }
        .instrument(span),
    );
    // The resource URL carries the session's secret token: only whoever got this answer
    // can end the session (peer ids are shown to everyone; they grant nothing).
    let location = format!("/{base}/{}", welcome.token);
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (header::LOCATION, location),
        ],
        media.answer,
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "wrong or missing PIN (Authorization: Bearer <PIN>)",
    )
        .into_response()
}

/// `DELETE` of a WHIP/WHEP resource: its URL's token is the only key.
pub(crate) async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let Some(token) = Token::parse(&id) else {
        return plain(StatusCode::NOT_FOUND, "no such session");
    };
    match state.control.handle(Input::LeaveByToken { token }).await {
        Ok(_) => plain(StatusCode::OK, "session ended"),
        Err(Refusal::UnknownPeer) => plain(StatusCode::NOT_FOUND, "no such session"),
        Err(refusal) => plain(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string()),
    }
}
