//! Found and trusted (P7), on a LAN of two network namespaces the test makes: the box
//! (a real `duetbox serve` process, next to an avahi-daemon as on Raspberry Pi OS) in
//! one, the clients in the other.
//!
//! - avahi-browse (a client we did not write) resolves `_duetbox._tcp` with its TXT and
//!   the box's address; `duetbox find` (mdns-sd) agrees; both see the goodbye at stop;
//!   avahi keeps its own host name next to the box's.
//! - openssl validates the served certificate against the box's CA for its `.local`
//!   name and for its IP, and again for an address added while it runs; a name the
//!   certificate does not carry fails, so the check can fail.
//! - The landing page (plain HTTP), rendered by Chromium and decoded by zbarimg, shows
//!   the join URL at the address the visitor reached and the CA download, which is the
//!   CA in DER with the MIME type phones expect.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::e2e::artifacts;
use crate::support::lan::{parse_browse, Avahi, Killed, Lan};
use crate::support::{scratch_dir, BoxProcess, INSTALL_HINT};

const HTTPS_PORT: u16 = 8443;
const HTTP_PORT: u16 = 8080;
const NAME: &str = "Stage left";

/// Starts `duetbox serve` in the box's namespace with mDNS on; waits for READY's log line.
fn start_box(lan: &Lan, dir: &Path) -> BoxProcess {
    let config = format!(
        "[http]\nhttps_port = {HTTPS_PORT}\nhttp_port = {HTTP_PORT}\n\
         [rtc]\nudp_bind = [\"0.0.0.0\"]\n[box]\nname = \"{NAME}\"\n"
    );
    let the_box = BoxProcess::start_with(dir, &[], &config, HTTPS_PORT, &Lan::exec(&lan.box_ns));
    the_box.wait_logged("duetbox is ready", Duration::from_secs(20));
    the_box
}

fn box_id(the_box: &BoxProcess) -> String {
    std::fs::read_to_string(the_box.dir.join("state/box-id"))
        .expect("box-id")
        .trim()
        .to_string()
}

/// Retries `f` every 200 ms until it gives `Some` or `deadline` passes.
fn poll<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    crate::support::poll(deadline, Duration::from_millis(200), f, || {
        format!("{what}: not within {deadline:?}")
    })
}

#[test]
fn avahi_and_mdns_sd_find_the_box_and_see_its_goodbye() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let lan = Lan::create();
    let dir = scratch_dir("onb-mdns");
    // The Pi's own avahi-daemon (it answers for the machine's name) and a client's.
    let pi = Avahi::start(&dir.join("avahi-pi"), &lan.box_ns, &lan.box_if, "pi");
    let phone = Avahi::start(
        &dir.join("avahi-phone"),
        &lan.phone_ns,
        &lan.phone_if,
        "phone",
    );
    let mut the_box = start_box(&lan, &dir.join("box"));
    let id = box_id(&the_box);
    let host = format!("duetbox-{}.local", &id[..6]);

    let resolved = poll(
        "avahi-browse resolves _duetbox._tcp",
        Duration::from_secs(15),
        || {
            let out = phone
                .command("avahi-browse", &["-r", "-t", "-p", "_duetbox._tcp"])
                .output()
                .expect("avahi-browse");
            parse_browse(&String::from_utf8_lossy(&out.stdout))
                .into_iter()
                .find(|r| r.name == NAME)
        },
    );
    assert_eq!(resolved.address, lan.box_ip.to_string(), "{resolved:?}");
    assert_eq!(resolved.port, HTTPS_PORT);
    assert_eq!(resolved.host, host);
    for want in [
        format!("id={id}"),
        format!("name={NAME}"),
        format!("v={}", env!("CARGO_PKG_VERSION")),
        "ws=/ws".to_string(),
        format!("https={HTTPS_PORT}"),
        "path=/".to_string(),
    ] {
        assert!(
            resolved.txt.contains(&want),
            "TXT lacks {want}: {resolved:?}"
        );
    }
    let page = phone
        .command("avahi-browse", &["-r", "-t", "-p", "_https._tcp"])
        .output()
        .expect("avahi-browse _https._tcp");
    let page = parse_browse(&String::from_utf8_lossy(&page.stdout));
    assert!(
        page.iter()
            .any(|r| r.name == NAME && r.port == HTTPS_PORT && r.txt == ["path=/"]),
        "the page's _https._tcp: {page:?}"
    );

    // Two names, two owners: the Pi's avahi keeps pi.local, the box answers its own.
    for (name, owner) in [("pi.local", "avahi"), (host.as_str(), "the box")] {
        let out = phone
            .command("avahi-resolve", &["-4", "-n", name])
            .output()
            .expect("avahi-resolve");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&lan.box_ip.to_string()),
            "{name} ({owner}) did not resolve: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !pi.log_text().to_lowercase().contains("conflict"),
        "avahi on the box saw a name conflict:\n{}",
        pi.log_text()
    );

    // mdns-sd, from the other namespace, agrees.
    let duetbox = env!("CARGO_BIN_EXE_duetbox");
    let find = Lan::run(
        &lan.phone_ns,
        duetbox,
        &["find", "--first", "--seconds", "10"],
    );
    let found = String::from_utf8_lossy(&find.stdout);
    assert!(find.status.success(), "duetbox find: {found} {:?}", find);
    assert!(
        found.contains(&format!(
            "https://{}:{HTTPS_PORT}/ \"{NAME}\" id={id} host={host}.",
            lan.box_ip
        )),
        "duetbox find: {found}"
    );

    // The goodbye: both watchers running, then the box stops.
    let browse_out = dir.join("browse.out");
    let find_out = dir.join("find.out");
    let _browse = Killed(
        phone
            .command("avahi-browse", &["-r", "-p", "_duetbox._tcp"])
            .stdout(std::fs::File::create(&browse_out).expect("browse.out"))
            .spawn()
            .expect("avahi-browse"),
    );
    let _finder = Killed(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lan.phone_ns,
                duetbox,
                "find",
                "--goodbyes",
            ])
            .args(["--seconds", "30"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&find_out).expect("find.out"))
            .spawn()
            .expect("duetbox find --goodbyes"),
    );
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    poll("both watchers see the box", Duration::from_secs(15), || {
        (read(&browse_out).contains("\n=;") || read(&browse_out).starts_with("=;"))
            .then_some(())
            .filter(|_| read(&find_out).contains(&id))
    });
    let stopped = Instant::now();
    the_box.terminate();
    assert!(the_box.wait_exit(Duration::from_secs(10)).success());
    poll(
        "avahi-browse sees the goodbye",
        Duration::from_secs(5),
        || {
            read(&browse_out)
                .lines()
                .any(|l| l.starts_with("-;") && l.contains("Stage\\032left"))
                .then_some(())
        },
    );
    let avahi_saw = stopped.elapsed();
    poll(
        "duetbox find sees the goodbye",
        Duration::from_secs(5),
        || {
            read(&find_out)
                .contains(&format!("gone {NAME}._duetbox._tcp.local."))
                .then_some(())
        },
    );
    eprintln!(
        "mdns: resolved by avahi and mdns-sd; goodbye seen by avahi-browse {:.0} ms after SIGTERM",
        avahi_saw.as_secs_f64() * 1000.0
    );
}

/// A self-signed P-256 certificate and key made by openssl (an older version's pair,
/// or an operator's own).
fn self_signed(cert: &Path, key: &Path, subject: &str, extra: &[&str]) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj", subject])
        .args(extra)
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): {INSTALL_HINT}"));
    assert!(out.status.success(), "openssl req: {out:?}");
}

/// `openssl s_client` from the phones' namespace: whether the chain verified, and the
/// whole output for a failure message.
fn s_client(lan: &Lan, ca: &Path, connect: Ipv4Addr, check: &[&str]) -> (bool, String) {
    let target = format!("{connect}:{HTTPS_PORT}");
    let mut args = vec![
        "s_client",
        "-connect",
        &target,
        "-CAfile",
        ca.to_str().expect("utf-8 path"),
        "-verify_return_error",
        "-brief",
    ];
    args.extend_from_slice(check);
    let out = Command::new("ip")
        .args(["netns", "exec", &lan.phone_ns, "openssl"])
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): {INSTALL_HINT}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = out.status.success() && text.contains("Verification: OK");
    (ok, text)
}

#[test]
fn the_certificate_verifies_for_the_local_name_and_the_ip_and_follows_a_new_address() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let lan = Lan::create();
    let dir = scratch_dir("onb-cert");
    let state = dir.join("box/state");
    std::fs::create_dir_all(&state).expect("state dir");
    // An older version's self-signed pair: replaced, not kept.
    self_signed(
        &state.join("https-cert.pem"),
        &state.join("https-key.pem"),
        "/CN=old",
        &[],
    );
    let old_pem = std::fs::read_to_string(state.join("https-cert.pem")).unwrap();

    let the_box = start_box(&lan, &dir.join("box"));
    let ca = state.join("ca-cert.pem");
    let id = box_id(&the_box);
    let host = format!("duetbox-{}.local", &id[..6]);
    assert_ne!(
        std::fs::read_to_string(state.join("https-cert.pem")).unwrap(),
        old_pem
    );

    let ip = lan.box_ip.to_string();
    let (ok, text) = s_client(&lan, &ca, lan.box_ip, &["-verify_ip", &ip]);
    assert!(ok, "the IP {ip}:\n{text}");
    let (ok, text) = s_client(
        &lan,
        &ca,
        lan.box_ip,
        &["-servername", &host, "-verify_hostname", &host],
    );
    assert!(ok, "the name {host}:\n{text}");
    let (ok, text) = s_client(&lan, &ca, lan.box_ip, &["-verify_hostname", "example.com"]);
    assert!(
        !ok,
        "a name the certificate does not carry must fail:\n{text}"
    );

    // DHCP gives the box a second address: a new certificate names it, without a restart.
    let added = Ipv4Addr::new(10, 214, lan.box_ip.octets()[2], 9);
    let before = Instant::now();
    lan.add_box_address(added);
    let added_s = added.to_string();
    let waited = poll(
        "a certificate for the new address",
        Duration::from_secs(15),
        || {
            let (ok, _) = s_client(&lan, &ca, added, &["-verify_ip", &added_s]);
            ok.then(|| before.elapsed())
        },
    );
    let (ok, text) = s_client(&lan, &ca, lan.box_ip, &["-verify_ip", &ip]);
    assert!(ok, "the first address after the reissue:\n{text}");
    assert!(
        the_box
            .log_text()
            .matches("issued the https certificate")
            .count()
            >= 2,
        "{}",
        the_box.log_text()
    );
    // mDNS follows too: a finder on the LAN sees both addresses.
    let duetbox = env!("CARGO_BIN_EXE_duetbox");
    let both = poll(
        "mDNS announces the new address",
        Duration::from_secs(15),
        || {
            let out = Lan::run(
                &lan.phone_ns,
                duetbox,
                &["find", "--first", "--seconds", "5"],
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains(&format!("addresses={ip},{added}"))
                .then_some(text)
        },
    );
    // The join URLs and the QR code are in the log at start and again after the change.
    let log = the_box.log_text();
    assert!(
        log.contains(&format!("phones join at https://{ip}:{HTTPS_PORT}/")),
        "{log}"
    );
    assert!(
        log.contains("\u{2580}") || log.contains("\u{2584}"),
        "no QR code in the log"
    );
    eprintln!(
        "cert: verified for {host} and {ip}; a new address served {:.1} s after it was added; \
         mDNS: {}",
        waited.as_secs_f64(),
        both.trim()
    );
}

#[test]
fn the_ca_cannot_vouch_for_a_public_name_or_address() {
    // Even with the CA's key (a stolen SD card), a certificate for an internet name or
    // a public address fails verification: the CA's name constraints.
    let dir = scratch_dir("onb-constraints");
    let ca = duetbox::trust::Authority::load_or_create(&dir, "0123456789ab").expect("CA");
    let ca_path = dir.join(duetbox::trust::CA_CERT_FILE);
    let forged = duetbox::trust::Names {
        dns: vec!["bank.example.com".into(), "duetbox-012345.local".into()],
        ips: vec!["8.8.8.8".parse().unwrap(), "192.168.1.5".parse().unwrap()],
    };
    let leaf = ca
        .issue(&forged, time::OffsetDateTime::now_utc())
        .expect("rcgen signs anything it is asked to");
    let leaf_path = dir.join("forged.pem");
    std::fs::write(&leaf_path, &leaf.cert_pem).unwrap();
    let verify = |check: &[&str]| {
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca_path)
            .args(check)
            .arg(&leaf_path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): {INSTALL_HINT}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = verify(&["-verify_hostname", "bank.example.com"]);
    assert!(!ok, "a public name passed:\n{text}");
    assert!(text.contains("subtree violation"), "{text}");
    // A leaf with only allowed names verifies: the failure above is the constraint.
    let fair = duetbox::trust::Names {
        dns: vec!["duetbox-012345.local".into()],
        ips: vec!["192.168.1.5".parse().unwrap()],
    };
    let leaf = ca.issue(&fair, time::OffsetDateTime::now_utc()).unwrap();
    std::fs::write(&leaf_path, &leaf.cert_pem).unwrap();
    let (ok, text) = verify(&["-verify_ip", "192.168.1.5"]);
    assert!(ok, "{text}");
}

#[test]
fn an_operators_own_certificate_is_served_and_no_ca_is_offered() {
    // Takes its turn (see `support::SERIAL`).
    let _serial = crate::support::SERIAL.blocking_lock();
    let dir = scratch_dir("onb-own");
    let (cert, key) = (dir.join("own-cert.pem"), dir.join("own-key.pem"));
    self_signed(
        &cert,
        &key,
        "/CN=karaoke.example.org",
        &[
            "-addext",
            "subjectAltName=DNS:karaoke.example.org,IP:127.0.0.1",
        ],
    );
    let (https_port, http_port) = (crate::support::free_port(), crate::support::free_port());
    let config = format!(
        "[http]\nbind = \"127.0.0.1\"\nhttps_port = {https_port}\nhttp_port = {http_port}\n\
         cert_file = \"{}\"\nkey_file = \"{}\"\n[discovery]\nmdns = false\n",
        cert.display(),
        key.display()
    );
    let the_box = BoxProcess::start_with(&dir.join("box"), &[], &config, https_port, &[]);
    the_box.wait_logged("duetbox is ready", Duration::from_secs(20));
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{https_port}")])
        .arg("-CAfile")
        .arg(&cert)
        .args([
            "-verify_return_error",
            "-brief",
            "-verify_hostname",
            "karaoke.example.org",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(!the_box.dir.join("state/ca-key.pem").exists(), "no CA made");
    let ca = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{http_port}/ca.crt"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&ca.stdout), "404");
}

#[test]
fn the_landing_page_shows_the_join_qr_code_and_serves_the_ca() {
    // Its Chromium takes a core for a second: not while a real-time test measures.
    let _serial = crate::support::SERIAL.blocking_lock();
    let lan = Lan::create();
    let dir = scratch_dir("onb-landing");
    let the_box = start_box(&lan, &dir.join("box"));
    let ip = lan.box_ip;

    // The CA download: DER, with the MIME type Android and iOS expect.
    let headers = dir.join("ca.headers");
    let body = dir.join("ca.der");
    let curl = Lan::run(
        &lan.phone_ns,
        "curl",
        &[
            "-sS",
            "-D",
            headers.to_str().unwrap(),
            "-o",
            body.to_str().unwrap(),
            &format!("http://{ip}:{HTTP_PORT}/ca.crt"),
        ],
    );
    assert!(curl.status.success(), "{curl:?}");
    let headers = std::fs::read_to_string(&headers).unwrap().to_lowercase();
    assert!(
        headers.contains("content-type: application/x-x509-ca-cert"),
        "{headers}"
    );
    let der = Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(the_box.dir.join("state/ca-cert.pem"))
        .output()
        .expect("openssl x509");
    assert_eq!(
        std::fs::read(&body).unwrap(),
        der.stdout,
        "/ca.crt is the CA"
    );
    let profile = Lan::run(
        &lan.phone_ns,
        "curl",
        &[
            "-sS",
            "-i",
            &format!("http://{ip}:{HTTP_PORT}/duetbox.mobileconfig"),
        ],
    );
    let profile = String::from_utf8_lossy(&profile.stdout).to_lowercase();
    assert!(profile.contains("content-type: application/x-apple-aspen-config"));
    assert!(profile.contains("com.apple.security.root"));

    // Chromium renders the page as a phone would; zbarimg reads its QR codes.
    let shot = artifacts().join("landing.png");
    let _ = std::fs::remove_file(&shot);
    let landing = format!("http://{ip}:{HTTP_PORT}/");
    screenshot(&lan.phone_ns, ip, &dir, &landing, &shot, (430, 1500));
    let codes = decode_qr(&shot);
    assert!(
        codes.contains(&format!("https://{ip}:{HTTPS_PORT}/")),
        "the join QR code: {codes:?}"
    );
    assert!(
        codes.contains(&format!("http://{ip}:{HTTP_PORT}/ca.crt")),
        "the CA QR code: {codes:?}"
    );
    // A stranger's inputs: a lying Host header changes nothing but the address choice
    // among the box's own (nothing of it is echoed), a body is refused, the state the
    // screen polls carries no ids or secrets.
    let landing_url = format!("http://{ip}:{HTTP_PORT}/");
    let hostile = Lan::run(
        &lan.phone_ns,
        "curl",
        &["-sS", "-H", "Host: <script>alert(1)</script>", &landing_url],
    );
    let page = String::from_utf8_lossy(&hostile.stdout);
    assert!(!page.contains("<script>"), "the Host header was echoed");
    assert!(
        page.contains(&format!("https://{ip}:{HTTPS_PORT}/")),
        "{page}"
    );
    let big = "x".repeat(64 * 1024);
    let posted = Lan::run(
        &lan.phone_ns,
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data",
            &big,
            &landing_url,
        ],
    );
    let status = String::from_utf8_lossy(&posted.stdout).into_owned();
    assert!(
        status == "405" || status == "413",
        "a 64 KiB POST got {status}"
    );
    let state = Lan::run(
        &lan.phone_ns,
        "curl",
        &["-sS", &format!("http://{ip}:{HTTP_PORT}/screen/state")],
    );
    let state = String::from_utf8_lossy(&state.stdout);
    assert!(state.contains("\"slots\""), "{state}");
    for secret in ["token", "\"peer\"", "pin"] {
        assert!(
            !state.contains(secret),
            "{secret} in the screen's state: {state}"
        );
    }
    eprintln!(
        "landing: QR codes {codes:?}; a 64 KiB POST got {status}; screenshot {}",
        shot.display()
    );
}

/// A headless Chromium screenshot of `url`, taken from the phones' namespace.
fn screenshot(ns: &str, box_ip: Ipv4Addr, dir: &Path, url: &str, out: &Path, size: (u32, u32)) {
    let profile = dir.join("chromium-profile");
    let file = out;
    let out = Lan::run(
        ns,
        "chromium",
        &[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {box_ip}"),
            &format!("--user-data-dir={}", profile.display()),
            &format!("--window-size={},{}", size.0, size.1),
            &format!("--screenshot={}", out.display()),
            url,
        ],
    );
    assert!(
        out.status.success() && file.exists(),
        "chromium --screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The texts of the QR codes zbarimg finds in `png`.
pub fn decode_qr(png: &Path) -> Vec<String> {
    let out = Command::new("zbarimg")
        .args(["--raw", "-q", "-Sdisable", "-Sqrcode.enable"])
        .arg(png)
        .output()
        .unwrap_or_else(|e| panic!("cannot run zbarimg ({e}): {INSTALL_HINT}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A `$HOME` whose NSS database (where Chromium on Linux keeps the trust a user added)
/// trusts `ca` as a website CA, or trusts nothing when `ca` is `None`.
fn nss_home(dir: &Path, ca: Option<&Path>) -> PathBuf {
    let home = dir.to_path_buf();
    let db = home.join(".pki/nssdb");
    let _ = std::fs::remove_dir_all(&db);
    std::fs::create_dir_all(&db).expect("nssdb dir");
    let db_arg = format!("sql:{}", db.display());
    let run = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run certutil ({e}): {INSTALL_HINT}"));
        assert!(out.status.success(), "certutil {args:?}: {out:?}");
    };
    run(&["-N", "-d", &db_arg, "--empty-password"]);
    if let Some(ca) = ca {
        let ca = ca.to_str().expect("utf-8 path");
        run(&[
            "-A",
            "-d",
            &db_arg,
            "-n",
            "duetbox CA",
            "-t",
            "C,,",
            "-i",
            ca,
        ]);
    }
    home
}

#[test]
fn chromium_that_trusts_the_ca_sings_with_no_certificate_error_and_the_screen_shows_the_stage() {
    use crate::support::e2e::{write_tone_wav, Driver};
    use std::sync::{Arc, Mutex};
    let _serial = crate::support::SERIAL.blocking_lock();
    let lan = Lan::create();
    let dir = scratch_dir("onb-chromium");
    let the_box = start_box(&lan, &dir.join("box"));
    let ca = the_box.dir.join("state/ca-cert.pem");
    let url = format!("https://{}:{HTTPS_PORT}/", lan.box_ip);
    let phones_in = |home: &Path| {
        let mut prefix = Lan::exec(&lan.phone_ns);
        prefix.extend(["env".to_string(), format!("HOME={}", home.display())]);
        prefix
    };

    // Without the CA in its NSS database, Chromium refuses the page: the check can fail.
    let stranger = nss_home(&dir.join("home-untrusting"), None);
    let refused = Driver::new(&url, 1)
        .prefix(phones_in(&stranger))
        .flag("--strict-tls")
        .phone("Nobody", "listener", None, "chromium")
        .run(Duration::from_secs(90), |_| {});
    assert!(
        !refused.status.success(),
        "an untrusting Chromium joined:\n{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("ERR_CERT_AUTHORITY_INVALID"),
        "why it failed:\n{}",
        refused.stderr
    );

    // With it: two singers through the page, getUserMedia and all, no flag to ignore errors.
    let home = nss_home(&dir.join("home-trusting"), Some(&ca));
    let (mia, theo) = (dir.join("mia.wav"), dir.join("theo.wav"));
    write_tone_wav(&mia, 440.0, 0.5, 20);
    write_tone_wav(&theo, 660.0, 0.5, 20);
    let screen_url = format!("http://{}:{HTTP_PORT}/screen", lan.box_ip);
    let state_url = format!("http://{}:{HTTP_PORT}/screen/state", lan.box_ip);
    // What the screen showed: its QR codes and its state JSON.
    type Seen = Option<(Vec<String>, String)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (lan_ref, seen_in, shot_dir) = (
        (lan.phone_ns.clone(), lan.box_ip),
        seen.clone(),
        dir.clone(),
    );
    let shot = artifacts().join("screen.png");
    let _ = std::fs::remove_file(&shot);
    let shot_in = shot.clone();
    let run = Driver::new(&url, 4)
        .prefix(phones_in(&home))
        .flag("--strict-tls")
        .phone("Mia", "singer", Some(&mia), "chromium")
        .phone("Theo", "singer", Some(&theo), "chromium")
        .run(Duration::from_secs(180), move |mark| {
            if mark.name != "all live" {
                return;
            }
            // Both on stage: let the levels arrive, then look at the venue screen.
            std::thread::sleep(Duration::from_millis(1500));
            let state = Lan::run(&lan_ref.0, "curl", &["-sS", &state_url]);
            let state = String::from_utf8_lossy(&state.stdout).into_owned();
            screenshot(
                &lan_ref.0,
                lan_ref.1,
                &shot_dir,
                &screen_url,
                &shot_in,
                (1280, 720),
            );
            *seen_in.lock().unwrap() = Some((decode_qr(&shot_in), state));
        });
    run.assert_success();
    for phone in ["Mia", "Theo"] {
        let result = run.result(phone);
        assert_eq!(result["state"], "live", "{phone}: {result}");
        let tls = &result["tls"];
        assert!(
            tls["issuer"]
                .as_str()
                .unwrap_or("")
                .starts_with("duetbox local CA"),
            "{phone}'s page was not served by the box's CA: {tls}"
        );
        assert_eq!(tls["secure"], true, "{phone}: {tls}");
    }
    let (codes, state) = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the screen was looked at");
    assert!(codes.contains(&url), "the screen's QR code: {codes:?}");
    let state: serde_json::Value = serde_json::from_str(&state).expect("screen state JSON");
    assert_eq!(state["name"], NAME);
    for name in ["Mia", "Theo"] {
        // The phones join at once: either may get slot A.
        let slot = state["slots"]
            .as_array()
            .and_then(|slots| slots.iter().find(|s| s["name"] == name))
            .unwrap_or_else(|| panic!("{name} is not on the screen: {state}"));
        assert_eq!(slot["presence"], "live", "{state}");
        let level = slot["level_db"].as_f64().unwrap_or(-200.0);
        assert!(
            level > -30.0,
            "{name} sings a tone at -6 dBFS, the screen shows {level} dB"
        );
    }
    eprintln!(
        "chromium: trusted through NSS, both live; screen QR {codes:?}; screenshot {}",
        shot.display()
    );
}
