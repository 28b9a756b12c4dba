//! `/recordings/{id}`: a song's recording, for its singers and the host (HTTPS side).
//!
//! The id is the capability: 128 random bits the box shows only to the song's singers
//! and the host (`docs/protocol.md`). Everything a request names is checked before any
//! file is touched: the id is 32 lowercase hex digits, a file is `mix.opus`,
//! `backing.opus` or `voice-<label>.opus` with a label of lowercase letters, digits,
//! `_` and `-`; the file must be a regular file (no link) in the recordings folder.
//! A file is streamed in 64 KiB pieces, never read whole.
//!
//! - `GET /recordings/{id}`: a small page listing the files, with the page's QR code
//!   (so a friend's phone can take the recording too).
//! - `GET /recordings/{id}/qr.svg`: that QR code, for the address the client used.
//! - `GET /recordings/{id}/{file}`: one file, `audio/ogg`, as a download.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use super::landing::qr_svg;
use super::screen::with_type;
use super::AppState;
use crate::control::recorder::is_recording_id;

/// Bytes read per piece of a download.
const PIECE: usize = 64 * 1024;

/// Longest `Host` header the QR code takes.
const MAX_HOST_CHARS: usize = 100;

/// Whether `file` may name a file of a recording.
pub fn is_recording_file(file: &str) -> bool {
    match file {
        "mix.opus" | "backing.opus" => true,
        _ => file
            .strip_prefix("voice-")
            .and_then(|f| f.strip_suffix(".opus"))
            .is_some_and(|label| {
                (1..=40).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
            }),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such recording").into_response()
}

/// The recording's folder, if the id is well formed and recording is on.
fn folder(state: &AppState, id: &str) -> Option<PathBuf> {
    let dir = state.settings.recordings_dir.as_ref()?;
    is_recording_id(id).then(|| dir.join(id))
}

/// The recording's files, mix first, then the backing and the voices.
fn files(dir: &Path) -> Option<Vec<String>> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|f| is_recording_file(f))
        .collect();
    files.sort_by_key(|f| (f != "mix.opus", f != "backing.opus", f.clone()));
    Some(files)
}

/// `GET /recordings/{id}`.
pub(crate) async fn page(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(dir) = folder(&state, &id) else {
        return not_found();
    };
    let Some(files) = tokio::task::spawn_blocking(move || files(&dir))
        .await
        .ok()
        .flatten()
        .filter(|f| !f.is_empty())
    else {
        return not_found();
    };
    let title = super::landing::escape(&state.control.recording_title(&id).unwrap_or_default());
    let items: String = files
        .iter()
        .map(|f| format!("<li><a href=\"/recordings/{id}/{f}\" download>{f}</a></li>"))
        .collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Recording · duetbox</title><link rel=\"stylesheet\" href=\"/style.css\"></head>\
         <body><main><h1>Your song</h1><p>{title}</p>\
         <p>The mix, the backing and each voice (Ogg Opus):</p><ul id=\"files\">{items}</ul>\
         <p>Scan to take it on another phone:</p>\
         <img id=\"qr\" src=\"/recordings/{id}/qr.svg\" alt=\"QR code of this page\" width=\"240\" height=\"240\">\
         </main></body></html>"
    );
    with_type(html, "text/html; charset=utf-8")
}

/// `GET /recordings/{id}/{file}` (and `qr.svg`).
pub(crate) async fn file(
    State(state): State<AppState>,
    UrlPath((id, file)): UrlPath<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let Some(dir) = folder(&state, &id) else {
        return not_found();
    };
    if file == "qr.svg" {
        return qr(&id, &uri, &headers);
    }
    if !is_recording_file(&file) {
        return not_found();
    }
    let path = dir.join(&file);
    // No link is followed: the file must be a regular file where the name says.
    match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) if meta.is_file() => {}
        _ => return not_found(),
    }
    let Ok(opened) = tokio::fs::File::open(&path).await else {
        return not_found();
    };
    let length = opened.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = futures_util::stream::unfold(Some(opened), |file| async move {
        let mut file = file?;
        let mut piece = vec![0u8; PIECE];
        match file.read(&mut piece).await {
            Ok(0) => None,
            Ok(n) => {
                piece.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(piece)),
                    Some(file),
                ))
            }
            Err(err) => Some((Err(err), None)),
        }
    });
    let disposition = format!("attachment; filename=\"duetbox-{}-{file}\"", &id[..8]);
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/ogg"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// The QR code of the recording's page, for the address the client reached (HTTP/1's
/// `Host`, HTTP/2's `:authority`).
fn qr(id: &str, uri: &axum::http::Uri, headers: &HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            (1..=MAX_HOST_CHARS).contains(&h.len())
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let Some(host) = host else {
        return (StatusCode::BAD_REQUEST, "a Host header is needed").into_response();
    };
    let svg = qr_svg(&format!("https://{host}/recordings/{id}"), 480);
    with_type(svg, "image/svg+xml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recorders_file_names_are_served() {
        for ok in [
            "mix.opus",
            "backing.opus",
            "voice-a-ana.opus",
            "voice-b-zo_max.opus",
        ] {
            assert!(is_recording_file(ok), "{ok}");
        }
        for bad in [
            "",
            "mix.wav",
            "voice-.opus",
            "voice-../../etc.opus",
            "voice-A.opus",
            "voice-a/b.opus",
            "../mix.opus",
            "qr.svg.opus",
            &format!("voice-{}.opus", "a".repeat(41)),
        ] {
            assert!(!is_recording_file(bad), "{bad}");
        }
    }
}
