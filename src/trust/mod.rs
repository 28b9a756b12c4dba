//! The box's identity, made on first start and kept in the state directory: its id
//! ([`box_id`]: MQTT topics, Home Assistant's unique ids, mDNS) and what makes phones
//! trust its HTTPS page: a local certificate authority ([`Authority`]) and a server
//! certificate it signs ([`Authority::issue`]). No sockets here.
//!
//! Phones need a secure context for the microphone, and a venue LAN has no public DNS
//! name, so no public CA can vouch for the box. The box is its own CA: a phone installs
//! `ca.crt` once (the landing page shows how) and from then on every certificate the box
//! issues is trusted, whatever address DHCP gives it. The leaf names `localhost`, the
//! box's `.local` names and every current private LAN address; the box issues a new one
//! when its addresses change (`app` reloads it without a restart).
//!
//! **The CA can vouch only for private names.** A phone that trusts it must not be
//! exposed to someone who steals the CA key from the SD card, so the CA carries name
//! constraints: DNS names under `local` and `localhost`, IP addresses in the private
//! ranges ([`crate::lan::is_private`]). A public address is never put in a leaf.
//!
//! Lifetimes: the leaf is valid 800 days in all (iOS refuses a server certificate valid
//! for more than 825), starting a day before it is made, because a Pi has no real-time
//! clock and may boot with its clock behind until NTP (if any) sets it. The CA is valid
//! ten years, also backdated a day.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the state directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kept box id is not one this box wrote.
    #[error("{path}: not a box id (12 lowercase hex digits); remove the file to make a new one")]
    BadId {
        /// The file.
        path: PathBuf,
    },
    /// A kept CA file could not be read back.
    #[error("{path}: {reason}; remove ca-cert.pem and ca-key.pem to make a new CA (phones must then install it again)")]
    BadAuthority {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rcgen refused.
    #[error("generating a certificate: {0}")]
    Generate(String),
}

fn generate(e: rcgen::Error) -> Error {
    Error::Generate(e.to_string())
}

/// How long a server certificate is valid in all (iOS refuses more than 825 days).
pub const LEAF_VALIDITY_DAYS: i64 = 800;
/// How far back a certificate's validity starts (a Pi has no real-time clock).
pub const BACKDATE_DAYS: i64 = 1;
/// How long the CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;

/// The file names in the state directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
/// The current server certificate (written for operators and tools; the box serves
/// the one it holds in memory).
pub const LEAF_CERT_FILE: &str = "https-cert.pem";
const LEAF_KEY_FILE: &str = "https-key.pem";

/// PEM text of a server certificate and its private key.
#[derive(Clone, Default)]
pub struct Identity {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

/// What a server certificate names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// DNS names (`localhost`, `<name>.local`).
    pub dns: Vec<String>,
    /// IP addresses (private only).
    pub ips: Vec<IpAddr>,
}

impl Names {
    /// The names for a box called `dns` (each a DNS name such as `duetbox-3f2a9c.local`)
    /// at `ips`: `localhost` and the loopback addresses always; public addresses are
    /// left out (the CA may not vouch for them) and returned second.
    pub fn for_box(dns: &[String], ips: &[IpAddr]) -> (Names, Vec<IpAddr>) {
        let mut names = Names {
            dns: vec!["localhost".to_string()],
            ips: vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
        };
        for d in dns {
            if !names.dns.contains(d) {
                names.dns.push(d.clone());
            }
        }
        let mut public = Vec::new();
        for ip in ips {
            if !crate::lan::is_private(*ip) {
                public.push(*ip);
            } else if !names.ips.contains(ip) {
                names.ips.push(*ip);
            }
        }
        (names, public)
    }
}

/// The box's certificate authority: made once, kept in the state directory.
pub struct Authority {
    /// The CA certificate, PEM (what phones install).
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// Loads the CA from `dir`, or makes and saves a new one named after `box_id`.
    pub fn load_or_create(dir: &Path, box_id: &str) -> Result<Authority, Error> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let bad = |path: &Path| {
                let path = path.to_path_buf();
                move |e: rcgen::Error| Error::BadAuthority {
                    path,
                    reason: e.to_string(),
                }
            };
            let key = KeyPair::from_pem(&key_pem).map_err(bad(&key_path))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(bad(&cert_path))?;
            return Ok(Authority { cert_pem, issuer });
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "duetbox");
        dn.push(DnType::CommonName, format!("duetbox local CA {box_id}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - Duration::days(BACKDATE_DAYS);
        params.not_after = params.not_before + Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        params.name_constraints = Some(private_names_only());
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.self_signed(&key).map_err(generate)?;
        let cert_pem = cert.pem();
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, &cert_pem).map_err(io(&cert_path))?;
        tracing::info!(path = %cert_path.display(), "made the box's certificate authority");
        Ok(Authority {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, DER (what `/ca.crt` serves).
    pub fn cert_der(&self) -> Vec<u8> {
        pem_body(&self.cert_pem)
    }

    /// Issues a server certificate for `names`, valid from a day before `now` for
    /// [`LEAF_VALIDITY_DAYS`], with a fresh key.
    pub fn issue(&self, names: &Names, now: OffsetDateTime) -> Result<Identity, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "duetbox");
        if let Some(first) = names.dns.iter().find(|d| d.ends_with(".local")) {
            dn.push(DnType::CommonName, first.clone());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::days(BACKDATE_DAYS);
        params.not_after = params.not_before + Duration::days(LEAF_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        for d in &names.dns {
            let name = d.clone().try_into().map_err(generate)?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for ip in &names.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Saves the current server certificate and key in `dir` (the key readable by the box
/// only). This also replaces the self-signed pair of versions before the CA.
pub fn save_leaf(dir: &Path, identity: &Identity) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_path = dir.join(LEAF_KEY_FILE);
    let cert_path = dir.join(LEAF_CERT_FILE);
    write_private(&key_path, &identity.key_pem)?;
    std::fs::write(&cert_path, &identity.cert_pem).map_err(io(&cert_path))
}

/// An operator's own certificate chain and key (PEM files), e.g. for a real domain.
pub fn load_own(cert: &Path, key: &Path) -> Result<Identity, Error> {
    Ok(Identity {
        cert_pem: std::fs::read_to_string(cert).map_err(io(cert))?,
        key_pem: std::fs::read_to_string(key).map_err(io(key))?,
    })
}

/// The name constraints of the CA: `.local`, `localhost`, private IP ranges.
fn private_names_only() -> NameConstraints {
    let v4 = |a: [u8; 4], prefix: u8| {
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(IpAddr::from(a), prefix))
    };
    let v6 = |a: [u16; 8], prefix: u8| {
        GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(IpAddr::from(a), prefix))
    };
    NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("local".into()),
            GeneralSubtree::DnsName("localhost".into()),
            v4([10, 0, 0, 0], 8),
            v4([172, 16, 0, 0], 12),
            v4([192, 168, 0, 0], 16),
            v4([169, 254, 0, 0], 16),
            v4([127, 0, 0, 0], 8),
            v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
            v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        ],
        excluded_subtrees: Vec::new(),
    }
}

fn random_serial() -> SerialNumber {
    // 16 random bytes, the top bit clear so the DER integer stays positive.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// The DER bytes inside a one-certificate PEM text.
fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_default()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Digits of a box id: 48 random bits as lowercase hex.
pub const BOX_ID_DIGITS: usize = 12;

/// The box's id: read from `dir/box-id`, or made (48 random bits) and saved there on
/// the first start. It never changes afterwards, so a panel's entities stay the same
/// across restarts, upgrades and renames.
pub fn box_id(dir: &Path) -> Result<String, Error> {
    let path = dir.join("box-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let valid = id.len() == BOX_ID_DIGITS
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if valid {
                Ok(id.to_string())
            } else {
                Err(Error::BadId { path })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let bits: [u8; BOX_ID_DIGITS / 2] = rand::random();
            let id: String = bits.iter().map(|b| format!("{b:02x}")).collect();
            // Written aside and renamed, so a power cut never leaves half an id.
            let partial = dir.join("box-id.partial");
            std::fs::write(&partial, format!("{id}\n")).map_err(io(&partial))?;
            std::fs::rename(&partial, &path).map_err(io(&path))?;
            tracing::info!(id, path = %path.display(), "made the box id");
            Ok(id)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    use x509_parser::prelude::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("duetbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_authority_is_made_once_kept_private_and_constrained() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("ca");
        let first = Authority::load_or_create(&dir, "0123456789ab").expect("created");
        let second = Authority::load_or_create(&dir, "0123456789ab").expect("loaded");
        assert_eq!(first.cert_pem, second.cert_pem);
        let mode = std::fs::metadata(dir.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key is the box's alone");
        let der = first.cert_der();
        let (_, ca) = X509Certificate::from_der(&der).expect("DER");
        assert!(ca.is_ca());
        assert!(ca.subject().to_string().contains("0123456789ab"));
        let constraints = ca.name_constraints().expect("parsed").expect("present");
        let permitted = constraints
            .value
            .permitted_subtrees
            .as_ref()
            .expect("permitted");
        assert!(permitted
            .iter()
            .any(|s| matches!(s.base, GeneralName::DNSName("local"))));
        assert!(
            !permitted
                .iter()
                .any(|s| matches!(s.base, GeneralName::DNSName(""))),
            "never every name"
        );
        // A broken key file is a clear error, not a new CA behind the phones' backs.
        std::fs::write(dir.join(CA_KEY_FILE), "not a key").unwrap();
        assert!(matches!(
            Authority::load_or_create(&dir, "0123456789ab"),
            Err(Error::BadAuthority { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_leaf_is_server_auth_only_backdated_and_short_enough_for_ios() {
        let dir = temp("leaf");
        let ca = Authority::load_or_create(&dir, "0123456789ab").expect("created");
        let (names, public) = Names::for_box(
            &["duetbox-012345.local".to_string()],
            &[
                "192.168.4.10".parse().unwrap(),
                "203.0.113.7".parse().unwrap(),
            ],
        );
        assert_eq!(public, vec!["203.0.113.7".parse::<IpAddr>().unwrap()]);
        let now = OffsetDateTime::now_utc();
        let leaf = ca.issue(&names, now).expect("issued");
        let der = pem_body(&leaf.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("DER");
        assert!(!cert.is_ca());
        assert_eq!(
            cert.issuer(),
            X509Certificate::from_der(&ca.cert_der())
                .unwrap()
                .1
                .subject()
        );
        let validity = cert.validity();
        let start = validity.not_before.timestamp();
        let end = validity.not_after.timestamp();
        assert!(
            end - start <= 825 * 86_400,
            "iOS refuses more than 825 days"
        );
        assert!(start <= now.unix_timestamp() - 23 * 3600, "backdated a day");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth && !eku.code_signing && !eku.any);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let dns: Vec<String> = san
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(dns, ["localhost", "duetbox-012345.local"]);
        let ips: Vec<&[u8]> = san
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::IPAddress(b) => Some(*b),
                _ => None,
            })
            .collect();
        assert!(ips.contains(&&[192u8, 168, 4, 10][..]));
        assert!(
            !ips.contains(&&[203u8, 0, 113, 7][..]),
            "never a public address"
        );
        // A new leaf for new addresses; the old self-signed pair's files are replaced.
        std::fs::write(dir.join(LEAF_CERT_FILE), "old self-signed").unwrap();
        save_leaf(&dir, &leaf).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(LEAF_CERT_FILE)).unwrap(),
            leaf.cert_pem
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_box_id_is_made_once_kept_and_checked() {
        let dir = std::env::temp_dir().join(format!("duetbox-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = box_id(&dir).expect("made");
        assert_eq!(first.len(), BOX_ID_DIGITS);
        assert_eq!(box_id(&dir).expect("read"), first);
        let other = std::env::temp_dir().join(format!("duetbox-id2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&other);
        assert_ne!(box_id(&other).expect("made"), first, "48 random bits");
        std::fs::write(dir.join("box-id"), "../../etc\n").unwrap();
        assert!(matches!(box_id(&dir), Err(Error::BadId { .. })));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }
}
