//! The plain-HTTP side: what a phone reaches before it trusts the box. The landing page
//! (`/`) shows the join QR code (the HTTPS page at the box's IP address) and the steps
//! to trust the box's CA; `/ca.crt` and `/duetbox.mobileconfig` serve that CA. Every
//! other path redirects to HTTPS.
//!
//! **Which address goes in the QR code.** Android does not always resolve `.local`
//! names, so the join URL uses an IP address: the one the visitor reached when it is one
//! of the box's LAN addresses, else the box's address on the visitor's network, else its
//! first LAN address. The Host header only selects among the box's own addresses: a
//! visitor who lies in it changes nothing but its own page.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::lan::LanAddr;

/// What the landing page, the CA downloads and the venue screen show of the box.
#[derive(Clone)]
pub struct Site {
    /// The box's display name.
    pub name: String,
    /// The box id (the iOS profile's identifiers).
    pub box_id: String,
    /// The box's CA, DER; `None` when the operator brought a certificate.
    pub ca_der: Option<Arc<Vec<u8>>>,
    /// The box's LAN addresses, kept current by the app.
    pub lan: tokio::sync::watch::Receiver<Vec<LanAddr>>,
}

/// The landing server's state.
#[derive(Clone)]
pub(crate) struct Landing {
    pub(crate) site: Site,
    pub(crate) lyrics: super::songs::LyricsCache,
    pub(crate) control: crate::control::Control,
    pub(crate) https_port: u16,
    pub(crate) http_port: u16,
}

impl Landing {
    /// The box address for a visitor's join URL ([`join_ip`] over the current LAN
    /// addresses); `None` while the box has none to give.
    pub(crate) fn join_ip_for(&self, headers: &HeaderMap, visitor: SocketAddr) -> Option<IpAddr> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        join_ip(host, visitor.ip(), &self.site.lan.borrow())
    }
}

/// The host part of a Host header (without port or IPv6 brackets).
fn host_of(header: &str) -> &str {
    if let Some(rest) = header.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match header.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => header,
    }
}

/// The address to put in a visitor's join URL (module doc); `None` when the box has no
/// LAN address and the visitor did not reach it by one.
pub(crate) fn join_ip(
    host_header: Option<&str>,
    visitor: IpAddr,
    lan: &[LanAddr],
) -> Option<IpAddr> {
    let reached = host_header.and_then(|h| host_of(h).parse::<IpAddr>().ok());
    if let Some(ip) = reached {
        if lan.iter().any(|a| a.ip == ip) || (ip.is_loopback() && visitor.is_loopback()) {
            return Some(ip);
        }
    }
    let on_network = lan.iter().filter(|a| a.same_network(visitor));
    let lan_first = |v4: bool| lan.iter().find(|a| a.ip.is_ipv4() == v4);
    on_network
        .clone()
        .find(|a| a.ip.is_ipv4())
        .or_else(|| on_network.clone().next())
        .or_else(|| lan_first(true))
        .or_else(|| lan_first(false))
        .map(|a| a.ip)
}

/// `scheme://ip:port/` with IPv6 in brackets.
pub fn url(scheme: &str, ip: IpAddr, port: u16, path: &str) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}{path}"),
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}{path}"),
    }
}

/// A QR code of `text` as an SVG element, `size` pixels square at least.
pub fn qr_svg(text: &str, size: u32) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(size, size)
            .dark_color(qrcode::render::svg::Color("#000000"))
            .light_color(qrcode::render::svg::Color("#ffffff"))
            .build()
            // The XML declaration is not allowed inside HTML.
            .split_once("?>")
            .map_or_else(String::new, |(_, svg)| svg.trim().to_string()),
        Err(_) => String::new(),
    }
}

/// A QR code of `text` for a terminal: two rows per line, dark modules as spaces on a
/// light quiet zone (readable in dark and light terminals alike).
pub fn qr_text(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build(),
        Err(_) => String::new(),
    }
}

/// Text for HTML: `<`, `>`, `&`, quotes escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const LANDING_CSS: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:0 auto;\
padding:1rem;background:#111;color:#eee;line-height:1.4}h1{margin:.2rem 0 1rem}\
section{background:#1d1d1d;border-radius:12px;padding:1rem;margin:0 0 1rem}\
.qr{background:#fff;padding:8px;border-radius:8px;display:inline-block}.qr svg{display:block}\
a.big{display:block;text-align:center;background:#e0407a;color:#fff;padding:.9rem;\
border-radius:10px;font-size:1.3rem;text-decoration:none;margin:.8rem 0}\
code{word-break:break-all;color:#ffd27a}details{margin:.5rem 0}summary{cursor:pointer;\
font-weight:600}li{margin:.25rem 0}a{color:#8ecbff}";

/// `GET /` on the HTTP port.
pub(crate) async fn page(
    State(state): State<Landing>,
    ConnectInfo(visitor): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(ip) = state.join_ip_for(&headers, visitor) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the box has no LAN address yet; try again in a few seconds",
        )
            .into_response();
    };
    let join = url("https", ip, state.https_port, "/");
    let name = escape(&state.site.name);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{name}: sing</title><style>{LANDING_CSS}</style></head><body>\
<h1>{name}</h1><section id=\"join\"><h2>Sing</h2>\
<p>Scan with the phone you will sing with, or tap:</p>\
<div class=\"qr\" id=\"join-qr\">{qr}</div>\
<a class=\"big\" id=\"join-link\" href=\"{join_attr}\">Open the stage</a>\
<p><code>{join_text}</code></p><p>Venue TV: open <a href=\"/screen\">/screen</a> on it.</p>",
        qr = qr_svg(&join, 260),
        join_attr = escape(&join),
        join_text = escape(&join),
    );
    if state.site.ca_der.is_some() {
        let ca = url("http", ip, state.http_port, "/ca.crt");
        let profile = url("http", ip, state.http_port, "/duetbox.mobileconfig");
        let _ = write!(
            html,
            "<p>Your phone may warn that the connection is not private the first time: \
the box lives on this Wi-Fi, where no public authority can vouch for it. Trust the box \
once (below), or choose <i>Advanced → Proceed</i> (Android) or <i>Show details → visit \
this website</i> (iPhone) on the warning.</p></section>\
<section id=\"trust\"><h2>Trust this box (once per phone)</h2>\
<div class=\"qr\" id=\"ca-qr\">{qr}</div>\
<details open><summary>iPhone and iPad</summary><ol>\
<li>Open <a href=\"{profile_attr}\">the duetbox profile</a> in Safari and tap <i>Allow</i>.</li>\
<li>Settings → General → VPN &amp; Device Management → <i>{name} CA</i> → Install.</li>\
<li>Settings → General → About → Certificate Trust Settings: switch on full trust for \
<i>duetbox local CA</i>. (iOS needs this switch; without it the warning stays.)</li>\
</ol></details>\
<details open><summary>Android (11 and later)</summary><ol>\
<li>Download <a href=\"{ca_attr}\">the box's certificate</a> (ca.crt).</li>\
<li>Settings → Security &amp; privacy → More security settings → Encryption &amp; \
credentials → Install a certificate → CA certificate → Install anyway → pick \
<i>ca.crt</i>.</li><li>Firefox for Android also needs: Settings → About Firefox, tap \
the logo five times, then Settings → Secret settings → Use third party CA \
certificates.</li></ol></details>\
<details><summary>Why is this safe?</summary><p>This certificate can vouch only for \
names ending in <code>.local</code> and for private addresses like 192.168.x.x: it \
cannot be used to impersonate any website on the internet.</p></details></section>",
            qr = qr_svg(&ca, 200),
            profile_attr = escape(&profile),
            ca_attr = escape(&ca),
        );
    } else {
        html.push_str("</section>");
    }
    html.push_str("</body></html>");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        html,
    )
        .into_response()
}

fn no_ca() -> Response {
    (
        StatusCode::NOT_FOUND,
        "this box serves an operator's certificate: there is no box CA to install",
    )
        .into_response()
}

/// `GET /ca.crt`: the CA in DER, as Android and iOS expect a CA download.
pub(crate) async fn ca_crt(State(state): State<Landing>) -> Response {
    let Some(der) = state.site.ca_der.clone() else {
        return no_ca();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-x509-ca-cert"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"duetbox-ca.crt\""),
            ),
        ],
        der.as_ref().clone(),
    )
        .into_response()
}

/// `GET /duetbox.mobileconfig`: an iOS configuration profile holding the CA (a root
/// certificate payload). Unsigned: iOS shows it as "Not Verified", which is honest.
pub(crate) async fn mobileconfig(State(state): State<Landing>) -> Response {
    let Some(der) = state.site.ca_der.clone() else {
        return no_ca();
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-apple-aspen-config"),
        )],
        profile(&state.site.name, &state.site.box_id, &der),
    )
        .into_response()
}

/// The profile's XML (a property list).
pub(crate) fn profile(name: &str, box_id: &str, ca_der: &[u8]) -> String {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(ca_der);
    let name = escape(name);
    // UUIDs derived from the box id: the same box gives the same profile, so a second
    // install replaces the first instead of piling up.
    let uuid = |n: u8| {
        let id = format!("{box_id:0>12}");
        format!("D0E7B0C5-0000-4000-8{n:03X}-{}", &id[..12]).to_uppercase()
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
<plist version=\"1.0\"><dict>\
<key>PayloadContent</key><array><dict>\
<key>PayloadCertificateFileName</key><string>duetbox-ca.crt</string>\
<key>PayloadContent</key><data>{data}</data>\
<key>PayloadDescription</key><string>Lets this device trust the karaoke box {name} on the local network.</string>\
<key>PayloadDisplayName</key><string>{name} CA</string>\
<key>PayloadIdentifier</key><string>local.duetbox.{box_id}.ca</string>\
<key>PayloadType</key><string>com.apple.security.root</string>\
<key>PayloadUUID</key><string>{inner}</string>\
<key>PayloadVersion</key><integer>1</integer></dict></array>\
<key>PayloadDisplayName</key><string>{name} (duetbox)</string>\
<key>PayloadIdentifier</key><string>local.duetbox.{box_id}</string>\
<key>PayloadRemovalDisallowed</key><false/>\
<key>PayloadType</key><string>Configuration</string>\
<key>PayloadUUID</key><string>{outer}</string>\
<key>PayloadVersion</key><integer>1</integer></dict></plist>\n",
        inner = uuid(1),
        outer = uuid(2),
    )
}

/// Everything else on the HTTP port: to the same path over HTTPS.
pub(crate) fn redirect_to_https(headers: &HeaderMap, uri: &Uri, https_port: u16) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            let host = host_of(h);
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            }
        })
        .unwrap_or_else(|| "localhost".to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}:{https_port}{path}");
    match HeaderValue::from_str(&location) {
        Ok(value) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, value)]).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "bad host header").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan() -> Vec<LanAddr> {
        vec![
            LanAddr {
                interface: "wlan0".into(),
                ip: "192.168.4.10".parse().unwrap(),
                prefix: 24,
            },
            LanAddr {
                interface: "eth0".into(),
                ip: "10.0.0.5".parse().unwrap(),
                prefix: 8,
            },
        ]
    }

    #[test]
    fn the_join_address_is_the_one_reached_when_it_is_ours() {
        let visitor: IpAddr = "192.168.4.77".parse().unwrap();
        let ip = join_ip(Some("10.0.0.5:8080"), visitor, &lan());
        assert_eq!(ip, Some("10.0.0.5".parse().unwrap()));
    }

    #[test]
    fn a_name_or_a_foreign_host_header_gives_the_address_on_the_visitors_network() {
        let visitor: IpAddr = "192.168.4.77".parse().unwrap();
        for host in [Some("duetbox-3f2a9c.local:8080"), Some("203.0.113.9"), None] {
            assert_eq!(
                join_ip(host, visitor, &lan()),
                Some("192.168.4.10".parse().unwrap()),
                "{host:?}"
            );
        }
        let elsewhere: IpAddr = "172.20.0.3".parse().unwrap();
        assert_eq!(
            join_ip(None, elsewhere, &lan()),
            Some("192.168.4.10".parse().unwrap())
        );
        assert_eq!(join_ip(None, elsewhere, &[]), None);
        // Whatever a visitor puts in Host, the answer is one of the box's addresses.
        for hostile in [
            "<script>alert(1)</script>",
            "[::1",
            "a:b:c",
            "",
            "10.0.0.5:99999x",
        ] {
            let ip = join_ip(Some(hostile), visitor, &lan());
            assert_eq!(ip, Some("192.168.4.10".parse().unwrap()), "{hostile}");
        }
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(join_ip(Some("127.0.0.1:8080"), local, &[]), Some(local));
    }

    #[test]
    fn urls_bracket_ipv6_and_the_qr_is_inline_svg() {
        assert_eq!(
            url("https", "fd00::5".parse().unwrap(), 8443, "/"),
            "https://[fd00::5]:8443/"
        );
        let svg = qr_svg("https://192.168.4.10:8443/", 200);
        assert!(svg.starts_with("<svg"), "{svg:.40}");
        assert!(qr_text("https://192.168.4.10:8443/").lines().count() > 10);
        assert_eq!(host_of("[fd00::5]:8080"), "fd00::5");
        assert_eq!(host_of("box.local"), "box.local");
    }

    #[test]
    fn the_profile_carries_the_ca_and_escapes_the_name() {
        let xml = profile("Joe's <Bar>", "0123456789ab", &[1, 2, 3]);
        assert!(xml.contains("<data>AQID</data>"));
        assert!(xml.contains("Joe&#39;s &lt;Bar&gt;"));
        assert!(xml.contains("com.apple.security.root"));
        assert!(!xml.contains("<Bar>"));
    }
}
