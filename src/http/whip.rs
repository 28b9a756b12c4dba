//! WHIP (RFC 9725) and WHEP over HTTPS: one POST with an SDP offer, one 201 with the
//! answer (all candidates in it), one DELETE to leave. Extension: a WHIP singer whose
//! offer is `sendrecv` receives its personal mix on the same transceiver.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::signaling::{self, ErrorCode, Role};
use super::AppState;
use crate::control::{LeaveReason, PeerId};
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
    ingest(state, &headers, body, name, role, "whip").await
}

pub(crate) async fn whep_post(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = query
        .get("name")
        .cloned()
        .unwrap_or_else(|| "whep".to_string());
    ingest(state, &headers, body, name, Role::Listener, "whep").await
}

async fn ingest(
    state: AppState,
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
    let pin = bearer(headers);
    if !state.room.pin_ok(pin.as_deref()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "wrong or missing PIN (Authorization: Bearer <PIN>)",
        )
            .into_response();
    }
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return plain(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text");
    };
    if let Err(e) = signaling::check_offer(&sdp) {
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
    let admission = match state.room.join(&name, role, pin.as_deref()) {
        Ok(a) => a,
        Err(ErrorCode::RoomFull) => {
            return plain(
                StatusCode::CONFLICT,
                format!("all {} seats are taken", role.as_str()),
            )
        }
        Err(code) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("could not join: {code:?}"),
            )
        }
    };
    let peer = admission.peer;
    let (answer, mut events) = match state.room.attach(peer, sdp, true).await {
        Ok(ok) => ok,
        Err(e) => {
            state.room.leave(peer, LeaveReason::Left).await;
            return plain(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let room = state.room.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                PeerEvent::Connected => room.set_state(peer, "live"),
                PeerEvent::Disconnected => room.set_state(peer, "reconnecting"),
                PeerEvent::Failed => break,
                PeerEvent::LocalCandidate(_) => {}
            }
        }
        room.leave(peer, LeaveReason::Timeout).await;
    });
    let location = format!("/{base}/{peer}");
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (header::LOCATION, location),
        ],
        answer,
    )
        .into_response()
}

pub(crate) async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !state.room.pin_ok(bearer(&headers).as_deref()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "wrong or missing PIN (Authorization: Bearer <PIN>)",
        )
            .into_response();
    }
    let Some(peer) = id
        .strip_prefix('p')
        .and_then(|n| n.parse::<u32>().ok())
        .map(PeerId)
    else {
        return plain(StatusCode::NOT_FOUND, "no such session");
    };
    if !state.room.view().iter().any(|p| p.peer == peer.to_string()) {
        return plain(StatusCode::NOT_FOUND, "no such session");
    }
    state.room.leave(peer, LeaveReason::Left).await;
    plain(StatusCode::OK, "session ended")
}
