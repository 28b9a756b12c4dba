//! The only module that knows axum, hyper and rustls: the phone page (embedded), the
//! WebSocket signaling endpoint, WHIP/WHEP, `/health` over HTTPS; the landing page, the
//! CA downloads and the redirect to HTTPS over plain HTTP.
//!
//! `signaling.rs` is the pure wire format; `ws.rs` one phone's session; `whip.rs` the
//! standard HTTP ingest/egress; `landing.rs` the plain-HTTP side. Bad input ends at its sender: an error message or close
//! for a WebSocket, a 4xx with a plain-text body for HTTP.

mod connections;
pub mod landing;
mod recordings;
mod screen;
pub mod signaling;
mod songs;
pub mod whip;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::audio::AudioHandle;
use crate::control::{Control, Refusal};
use crate::limits::Limits;
use crate::trust::Identity;
use connections::ConnectionLimiter;
pub use landing::Site;
use signaling::ErrorCode;

/// The phone page, embedded so the box is one file to deploy.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const HOST_HTML: &str = include_str!("../../web/host.html");

/// JavaScript's MIME type: browsers load ES modules only with it.
const JS: &str = "text/javascript; charset=utf-8";

/// The page's other files: path, body, content type. `/` and `/index.html` serve
/// [`INDEX_HTML`]; nothing else is served.
const ASSETS: [(&str, &str, &str); 13] = [
    (
        "/style.css",
        include_str!("../../web/style.css"),
        "text/css; charset=utf-8",
    ),
    ("/main.js", include_str!("../../web/main.js"), JS),
    ("/session.js", include_str!("../../web/session.js"), JS),
    ("/audio.js", include_str!("../../web/audio.js"), JS),
    ("/view.js", include_str!("../../web/view.js"), JS),
    ("/protocol.js", include_str!("../../web/protocol.js"), JS),
    ("/host.js", include_str!("../../web/host.js"), JS),
    ("/songs.js", include_str!("../../web/songs.js"), JS),
    ("/sync.js", include_str!("../../web/sync.js"), JS),
    ("/sync-tap.js", include_str!("../../web/sync-tap.js"), JS),
    ("/calibrate.js", include_str!("../../web/calibrate.js"), JS),
    (
        "/calibrate-tap.js",
        include_str!("../../web/calibrate-tap.js"),
        JS,
    ),
    ("/lyrics.js", screen::LYRICS_JS, JS),
];

/// An HTTP server problem at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key was refused by rustls.
    #[error("loading the https certificate: {0}")]
    Tls(String),
}

/// Settings of the web server.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// HTTPS listen address (port 0 = any).
    pub https: SocketAddr,
    /// Redirect listen address, if any.
    pub http: Option<SocketAddr>,
    /// Largest WebSocket message / HTTP body, bytes.
    pub max_message_bytes: usize,
    /// WebSocket idle timeout.
    pub idle_timeout: Duration,
    /// What clients may ask (connections, messages, SDP, candidates).
    pub limits: Limits,
    /// Where the songs' recordings are (`None`: the box does not record).
    pub recordings_dir: Option<std::path::PathBuf>,
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) control: Control,
    pub(crate) audio: AudioHandle,
    pub(crate) output: String,
    pub(crate) settings: HttpSettings,
    pub(crate) shutdown: CancellationToken,
    pub(crate) connections: ConnectionLimiter,
    pub(crate) lyrics: songs::LyricsCache,
}

/// The running servers.
pub struct Server {
    /// Where HTTPS listens.
    pub https_addr: SocketAddr,
    /// Where the plain-HTTP side (landing page, CA, screen, redirect) listens.
    pub http_addr: Option<SocketAddr>,
    handle: axum_server::Handle,
    plain: Option<tokio::task::JoinHandle<()>>,
    https: tokio::task::JoinHandle<()>,
    tls: axum_server::tls_rustls::RustlsConfig,
}

/// Swaps the served certificate (new connections get it; open ones keep theirs).
#[derive(Clone)]
pub struct TlsReloader(axum_server::tls_rustls::RustlsConfig);

impl TlsReloader {
    /// Serves `identity` from now on.
    pub async fn reload(&self, identity: &Identity) -> Result<(), Error> {
        self.0
            .reload_from_pem(
                identity.cert_pem.as_bytes().to_vec(),
                identity.key_pem.as_bytes().to_vec(),
            )
            .await
            .map_err(|e| Error::Tls(e.to_string()))
    }
}

impl Server {
    /// What swaps the served certificate.
    pub fn tls(&self) -> TlsReloader {
        TlsReloader(self.tls.clone())
    }

    /// Stops accepting, lets requests in flight finish (up to `grace`), and waits.
    pub async fn stop(self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
        if let Some(r) = self.plain {
            r.abort();
        }
        let _ = self.https.await;
    }
}

/// Binds and starts the HTTPS server (and the plain-HTTP side).
#[allow(clippy::too_many_arguments)]
pub async fn start(
    settings: HttpSettings,
    identity: &Identity,
    site: Site,
    control: Control,
    audio: AudioHandle,
    output: String,
    shutdown: CancellationToken,
) -> Result<Server, Error> {
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        identity.cert_pem.as_bytes().to_vec(),
        identity.key_pem.as_bytes().to_vec(),
    )
    .await
    .map_err(|e| Error::Tls(e.to_string()))?;
    let (inherited_http, inherited_https) = from_systemd();
    let https_listener = listener(inherited_https, settings.https)?;
    let https_addr = https_listener.local_addr().map_err(|source| Error::Bind {
        addr: settings.https,
        source,
    })?;
    let lyrics = songs::LyricsCache::default();
    let limiter = ConnectionLimiter::new(
        settings.limits.connections_per_address,
        settings.limits.connections_total,
        settings.limits.send_buffer_bytes,
    );
    let state = AppState {
        control: control.clone(),
        audio,
        output,
        settings: settings.clone(),
        shutdown,
        connections: limiter.clone(),
        lyrics: lyrics.clone(),
    };
    let app = router(state, settings.max_message_bytes);
    let handle = axum_server::Handle::new();
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls.clone())
        .handshake_timeout(settings.limits.handshake_timeout)
        .acceptor(limiter.clone());
    let server = axum_server::from_tcp(https_listener)
        .acceptor(acceptor)
        .handle(handle.clone());
    let https = tokio::spawn(async move {
        if let Err(e) = server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
        {
            tracing::error!(error = %e, "https server failed");
        }
    });
    let plain_addr = match (&inherited_http, settings.http) {
        (Some(_), configured) => Some(configured.unwrap_or(settings.https)),
        (None, configured) => configured,
    };
    let (plain_task, http_addr) = match plain_addr {
        Some(addr) => {
            let listener = listener(inherited_http, addr)?;
            let local = listener
                .local_addr()
                .map_err(|source| Error::Bind { addr, source })?;
            let https_port = https_addr.port();
            let landing = landing::Landing {
                site,
                lyrics: lyrics.clone(),
                control: control.clone(),
                https_port,
                http_port: local.port(),
            };
            let plain = Router::new()
                .route("/", get(landing::page))
                .route("/ca.crt", get(landing::ca_crt))
                .route("/duetbox.mobileconfig", get(landing::mobileconfig))
                .route("/screen", get(screen::page))
                .route("/screen.js", get(screen::script))
                .route("/lyrics.js", get(screen::lyrics_script))
                .route("/screen/qr.svg", get(screen::qr))
                .route("/screen/state", get(screen::state))
                .route("/songs/{id}/lyrics", get(songs::lyrics_plain))
                .fallback(move |headers: axum::http::HeaderMap, uri: Uri| async move {
                    landing::redirect_to_https(&headers, &uri, https_port)
                })
                .layer(DefaultBodyLimit::max(max_plain_body()))
                .with_state(landing);
            // The same caps count the plain side's connections too.
            let server = axum_server::from_tcp(listener).acceptor(limiter.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = server
                    .serve(plain.into_make_service_with_connect_info::<SocketAddr>())
                    .await
                {
                    tracing::error!(error = %e, "http server failed");
                }
            });
            (Some(task), Some(local))
        }
        None => (None, None),
    };
    tracing::info!(https = %https_addr, http = ?http_addr, "web server listening");
    Ok(Server {
        https_addr,
        http_addr,
        handle,
        plain: plain_task,
        https,
        tls,
    })
}

/// The listening sockets systemd passed (socket activation, `LISTEN_FDS`): the first is
/// the plain HTTP one, the second (if any) the HTTPS one, in the order of the socket
/// unit's `ListenStream=` lines. This is how the box serves ports 80 and 443 with no
/// capability (docs/onboarding.md).
fn from_systemd() -> (Option<std::net::TcpListener>, Option<std::net::TcpListener>) {
    let mut fds = listenfd::ListenFd::from_env();
    let mut take = |index: usize| match fds.take_tcp_listener(index) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(index, error = %e, "ignored a socket from systemd: not a TCP listener");
            None
        }
    };
    let (http, https) = (take(0), take(1));
    for (what, l) in [("http", &http), ("https", &https)] {
        if let Some(addr) = l.as_ref().and_then(|l| l.local_addr().ok()) {
            tracing::info!(%addr, "{what}: listening on the socket systemd passed");
        }
    }
    (http, https)
}

/// `inherited`, or a new listener bound to `addr`; non-blocking either way.
fn listener(
    inherited: Option<std::net::TcpListener>,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, Error> {
    let bind_error = |source| Error::Bind { addr, source };
    let listener = match inherited {
        Some(l) => l,
        None => std::net::TcpListener::bind(addr).map_err(bind_error)?,
    };
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}

/// The plain side takes no bodies worth the name.
const fn max_plain_body() -> usize {
    1024
}

fn router(state: AppState, max_bytes: usize) -> Router {
    let mut router = Router::new()
        .route("/", get(index_html))
        .route("/index.html", get(index_html));
    for (path, body, content_type) in ASSETS {
        router = router.route(path, get(move || async move { asset(body, content_type) }));
    }
    router
        .route("/health", get(health))
        .route("/host", get(host_html))
        .route("/songs/{id}/lyrics", get(songs::lyrics_https))
        .route("/recordings/{id}", get(recordings::page))
        .route("/recordings/{id}/{file}", get(recordings::file))
        .route("/ws", get(ws::upgrade))
        .route("/whip", post(whip::whip_post))
        .route("/whip/{id}", delete(whip::delete_session))
        .route("/whep", post(whip::whep_post))
        .route("/whep/{id}", delete(whip::delete_session))
        .layer(DefaultBodyLimit::max(max_bytes))
        .with_state(state)
}

/// The host page.
async fn host_html() -> Response {
    asset(HOST_HTML, "text/html; charset=utf-8")
}

/// The phone page, served at `/` and `/index.html`.
async fn index_html() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn health(State(state): State<AppState>) -> Response {
    let (singers, listeners) = state.control.counts();
    let c = &state.audio.counters;
    let body = serde_json::json!({
        "status": "ok",
        "output": state.output,
        "period_frames": c.device_period_frames.load(Ordering::Relaxed),
        "engine_period_frames": state.audio.engine_period_frames,
        "singers": singers,
        "listeners": listeners,
        "periods": c.periods.load(Ordering::Relaxed),
        "xruns": c.xruns.load(Ordering::Relaxed),
        "packets_dropped": c.packets_dropped.load(Ordering::Relaxed),
        "backing_underrun_frames": c.backing_underrun_frames.load(Ordering::Relaxed),
        "venue_level_db": state.control.venue_level_db(),
        "connections": state.connections.open_now(),
        "connections_refused": state.connections.refused(),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The signaling code for a refusal of the room (WHIP/WHEP map it to a status).
pub(crate) fn refusal_code(refusal: Refusal) -> ErrorCode {
    match refusal {
        Refusal::WrongPin | Refusal::SlowDown(_) => ErrorCode::WrongPin,
        Refusal::Full(_) => ErrorCode::RoomFull,
        Refusal::ShuttingDown => ErrorCode::Internal,
        Refusal::AlreadyJoined => ErrorCode::AlreadyJoined,
        Refusal::NotJoined => ErrorCode::NotJoined,
        Refusal::NotASinger
        | Refusal::UnknownPeer
        | Refusal::UnknownSlot
        | Refusal::EmptySlot
        | Refusal::OutOfRange(_) => ErrorCode::BadField,
        Refusal::Night(_) => ErrorCode::Refused,
    }
}
