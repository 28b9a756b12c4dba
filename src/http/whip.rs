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
use crate::control::{Control, Input, JoinRequest, MediaState, Refusal, Role, Token};
use crate::rtc::PeerEvent;

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.into(),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

pub(crate) async fn whip_post(
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let role = match query.get("role").map(String::as_str) {
        None | Some("singer") => Role::Singer,
        Some("listener") => Role::Listener,
        Some(_) => return plain(StatusCode::BAD_REQUEST, "role must be singer or listener"),
    };
    let name = query
        .get("name")
        .cloned()
        .unwrap_or_else(|| "whip".to_string());
    ingest(state, client, &headers, body, name, role, "whip").await
}

pub(crate) async fn whep_post(
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = query
        .get("name")
        .cloned()
        .unwrap_or_else(|| "whep".to_string());
    ingest(state, client, &headers, body, name, Role::Listener, "whep").await
}

async fn ingest(
    state: AppState,
    client: SocketAddr,
    headers: &HeaderMap,
    body: Bytes,
    name: String,
    role: Role,
    base: &str,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/sdp") {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/sdp",
        );
    }
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return plain(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text");
    };
    if let Err(e) = signaling::check_offer(&sdp, state.settings.limits.offer_m_lines) {
        return plain(StatusCode::BAD_REQUEST, e.message);
    }
    let name: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(signaling::MAX_NAME_CHARS)
        .collect();
    let name = if name.is_empty() {
        base.to_string()
    } else {
        name
    };
    let control = state.control.clone();
    let conn = control.conn();
    let request = JoinRequest {
        name,
        role,
        pin: bearer(headers),
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
    let singer = (welcome.role == Role::Singer).then(|| welcome.peer.singer());
    let offered = control
        .offer(conn, singer, sdp, true)
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
                            Some(PeerEvent::LocalCandidate(_)) => continue,
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
