//! The box's identity, made on first start and kept in the state directory: its id
//! ([`box_id`]: MQTT topics, Home Assistant's unique ids, later mDNS) and its HTTPS
//! certificate ([`load_or_create`]). No sockets here.
//!
//! Phones need a secure context for the microphone, so the page is served over HTTPS
//! from the first start. The certificate names `localhost`, the loopback addresses, the
//! host name and `<hostname>.local`.

use std::path::{Path, PathBuf};

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
    /// rcgen refused.
    #[error("generating the certificate: {0}")]
    Generate(String),
}

/// PEM text of the server certificate and its private key.
pub struct Identity {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
    /// Where the certificate lives.
    pub cert_path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the identity from `dir`, or makes and saves a new one.
pub fn load_or_create(dir: &Path, hostname: &str) -> Result<Identity, Error> {
    let cert_path = dir.join("https-cert.pem");
    let key_path = dir.join("https-key.pem");
    if cert_path.exists() && key_path.exists() {
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        return Ok(Identity {
            cert_pem,
            key_pem,
            cert_path,
        });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !hostname.is_empty() && hostname != "localhost" {
        names.push(hostname.to_string());
        names.push(format!("{hostname}.local"));
    }
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| Error::Generate(e.to_string()))?;
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    write_private(&key_path, &key_pem)?;
    std::fs::write(&cert_path, &cert_pem).map_err(io(&cert_path))?;
    tracing::info!(path = %cert_path.display(), "created a self-signed https certificate");
    Ok(Identity {
        cert_pem,
        key_pem,
        cert_path,
    })
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

    #[test]
    fn a_certificate_is_made_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("duetbox-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create(&dir, "box").expect("created");
        let second = load_or_create(&dir, "box").expect("loaded");
        assert_eq!(first.cert_pem, second.cert_pem);
        assert!(first.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
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
