//! `/screen`, the venue TV page (plain HTTP, like the landing page: a TV has no
//! microphone to unlock and may not trust the box's CA). The page and its script are
//! embedded from `web/`; it draws the join QR code (`/screen/qr.svg`, for the address
//! the TV reached) and polls `/screen/state` for who is on stage and their levels.
//!
//! What it shows is what the TV shows to the whole room anyway: slot letters, singers'
//! names, presence and levels. Never a peer id, a token or a setting.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::landing::{qr_svg, url, Landing};
use crate::control::{Presence, RoomView, SongClock};

const SCREEN_HTML: &str = include_str!("../../web/screen.html");
const SCREEN_JS: &str = include_str!("../../web/screen.js");
/// The lyrics module, shared by the screen and the phone page.
pub(crate) const LYRICS_JS: &str = include_str!("../../web/lyrics.js");

/// `body` as `content_type`, never cached.
pub(crate) fn with_type(body: impl IntoResponse, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// `GET /screen`.
pub(crate) async fn page() -> Response {
    with_type(SCREEN_HTML, "text/html; charset=utf-8")
}

/// `GET /screen.js`.
pub(crate) async fn script() -> Response {
    with_type(SCREEN_JS, "text/javascript; charset=utf-8")
}

/// `GET /lyrics.js` (plain side; the HTTPS side serves it with the phone page).
pub(crate) async fn lyrics_script() -> Response {
    with_type(LYRICS_JS, "text/javascript; charset=utf-8")
}

/// The join URL for a visitor, or `None` when the box has no address to give.
fn join_url(state: &Landing, headers: &HeaderMap, visitor: SocketAddr) -> Option<String> {
    state
        .join_ip_for(headers, visitor)
        .map(|ip| url("https", ip, state.https_port, "/"))
}

/// `GET /screen/qr.svg`: the join QR code for the address the screen reached.
pub(crate) async fn qr(
    State(state): State<Landing>,
    ConnectInfo(visitor): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match join_url(&state, &headers, visitor) {
        Some(join) => with_type(qr_svg(&join, 600), "image/svg+xml"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no LAN address yet").into_response(),
    }
}

/// `GET /screen/state`.
pub(crate) async fn state(
    State(state): State<Landing>,
    ConnectInfo(visitor): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let view = state.control.view();
    let mut body = state_json(
        &state.site.name,
        join_url(&state, &headers, visitor).as_deref(),
        &view,
        state.control.venue_level_db(),
    );
    body["song"] = song_json(&view, state.control.song_clock(), state.control.audio_now());
    with_type(axum::Json(body), "application/json")
}

/// The song playing, for the screen: what it is, who sings it, and where the speakers
/// are in it now (`position_ms`, from the audio thread's latest report moved on to this
/// instant; negative during the count-in of `beats` clicks over `count_in_ms`), or
/// `null`.
pub(crate) fn song_json(view: &RoomView, clock: SongClock, now: std::time::Duration) -> Value {
    let Some(song) = view.song.as_ref() else {
        return Value::Null;
    };
    json!({
        "id": song.entry.song.id.to_string(),
        "title": song.entry.song.title,
        "artist": song.entry.song.artist,
        "singers": song.entry.singers.iter().map(|(_, name)| name.clone()).collect::<Vec<_>>(),
        "state": song.now.state.as_str(),
        "generation": song.now.generation,
        "position_ms": clock.speakers_ms(&song.now, now),
        "count_in_ms": song.now.count_in.as_millis() as u64,
        "beats": song.now.beats,
        "duration_ms": song.now.duration.map(|d| d.as_millis() as u64),
    })
}

/// The screen's state: the box name, the join URL, each slot and who is in it.
pub(crate) fn state_json(name: &str, join: Option<&str>, view: &RoomView, venue_db: f32) -> Value {
    let slots: Vec<Value> = view
        .slots
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let holder = view.holder(s);
            json!({
                "slot": s.slot.to_string(),
                "open": k < view.singer_limit,
                "name": holder.map(|p| p.name.clone()),
                "presence": holder.map(|p| p.presence.as_str()),
                "level_db": holder
                    .filter(|p| p.presence == Presence::Live && !s.settings.muted)
                    .map(|p| (f64::from(p.level_db) * 10.0).round() / 10.0),
                "muted": s.settings.muted,
            })
        })
        .collect();
    let (singers, listeners) = view.counts();
    json!({
        "name": name,
        "join": join,
        "slots": slots,
        "singers": singers,
        "listeners": listeners,
        "venue_db": (f64::from(venue_db) * 10.0).round() / 10.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::room::{ParticipantView, SlotView};
    use crate::control::{PeerId, Role, SlotId};
    use crate::engine::SingerSettings;

    #[test]
    fn the_screen_shows_names_and_levels_and_nothing_more() {
        let singer = |peer, name: &str, slot, presence| ParticipantView {
            peer: PeerId(peer),
            name: name.into(),
            role: Role::Singer,
            slot: Some(SlotId(slot)),
            presence,
            level_db: -12.04,
            delay_ms: 20.0,
            loss_pct: 1.0,
            sync_ms: None,
            round_trip_ms: None,
            one_way_ms: None,
        };
        let view = RoomView {
            recordings: Default::default(),
            backing_source: crate::control::night::BackingSource::Songs,
            live: None,
            line_in_configured: false,
            queue: Vec::new(),
            song: None,
            problems: Vec::new(),
            participants: vec![
                singer(7, "Mia", 0, Presence::Live),
                singer(9, "Theo", 1, Presence::Reconnecting),
            ],
            slots: vec![
                SlotView {
                    slot: SlotId(0),
                    peer: Some(PeerId(7)),
                    settings: SingerSettings::default(),
                },
                SlotView {
                    slot: SlotId(1),
                    peer: Some(PeerId(9)),
                    settings: SingerSettings::default(),
                },
                SlotView {
                    slot: SlotId(2),
                    peer: None,
                    settings: SingerSettings::default(),
                },
            ],
            master_gain_db: 0.0,
            backing_gain_db: -6.0,
            backing_muted: false,
            singer_limit: 2,
            pin_set: true,
            lead_ms: 0.0,
            venue_delay_ms: 0.0,
        };
        let s = state_json("Stage left", Some("https://10.0.0.2:8443/"), &view, -3.0);
        assert_eq!(s["slots"][0]["name"], "Mia");
        assert_eq!(s["slots"][0]["level_db"], -12.0);
        assert_eq!(s["slots"][1]["presence"], "reconnecting");
        assert!(
            s["slots"][1]["level_db"].is_null(),
            "no level without live media"
        );
        assert_eq!(s["slots"][2]["open"], false);
        assert!(s["slots"][2]["name"].is_null());
        let text = s.to_string();
        for secret in ["\"peer\"", "pin", "delay", "loss", "gain"] {
            assert!(!text.contains(secret), "{secret} on the screen: {text}");
        }
    }
}
