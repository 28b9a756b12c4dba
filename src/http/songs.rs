//! `GET /songs/{id}/lyrics`: a library song's timed lyrics as JSON (lines with start,
//! end, part and syllables; see `songs::lyrics`), on both the HTTPS side (phones, the
//! host page) and the plain side (the venue screen). Read-only and not secret: what the
//! screen shows the whole room. The id is looked up in the box's own index; the file
//! read is the one the index names, never a path from the request.
//!
//! Parsed lyrics are cached (the few songs being sung), so a client asking again and
//! again costs a map lookup, not a parse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::control::Control;
use crate::songs::library::{LyricsKindName, SongId};
use crate::songs::lyrics;

/// Songs whose lyrics are kept parsed.
const CACHED: usize = 8;

/// The parsed-lyrics cache (shared by both servers).
#[derive(Clone, Default)]
pub(crate) struct LyricsCache(Arc<Mutex<HashMap<SongId, Arc<str>>>>);

impl LyricsCache {
    fn get(&self, id: SongId) -> Option<Arc<str>> {
        self.0.lock().ok()?.get(&id).cloned()
    }

    fn put(&self, id: SongId, json: Arc<str>) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= CACHED {
                map.clear();
            }
            map.insert(id, json);
        }
    }
}

fn json(body: Arc<str>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The lyrics of song `id`, or 404.
pub(crate) async fn lyrics_of(control: &Control, cache: &LyricsCache, id: &str) -> Response {
    let Some(id) = SongId::parse(id) else {
        return (StatusCode::NOT_FOUND, "no such song").into_response();
    };
    if let Some(body) = cache.get(id) {
        return json(body);
    }
    let library = control.library();
    let Some((file, kind)) = library
        .get(id)
        .and_then(|s| s.lyrics.clone())
        .map(|(p, k)| (library.full_path(&p), k))
    else {
        return (StatusCode::NOT_FOUND, "this song has no lyrics").into_response();
    };
    let parsed =
        tokio::task::spawn_blocking(move || lyrics::load(&file, kind == LyricsKindName::UltraStar))
            .await
            .ok()
            .flatten();
    let Some(parsed) = parsed else {
        return (StatusCode::NOT_FOUND, "the lyrics file cannot be read").into_response();
    };
    let body: Arc<str> = match serde_json::to_string(&parsed) {
        Ok(text) => text.into(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    cache.put(id, body.clone());
    json(body)
}

/// `GET /songs/{id}/lyrics` on the HTTPS side.
pub(crate) async fn lyrics_https(
    State(state): State<super::AppState>,
    Path(id): Path<String>,
) -> Response {
    lyrics_of(&state.control, &state.lyrics, &id).await
}

/// `GET /songs/{id}/lyrics` on the plain side (the venue screen).
pub(crate) async fn lyrics_plain(
    State(state): State<super::landing::Landing>,
    Path(id): Path<String>,
) -> Response {
    lyrics_of(&state.control, &state.lyrics, &id).await
}
