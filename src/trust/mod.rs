//! The box's HTTPS identity: a self-signed certificate made on first start and kept in
//! the state directory. No sockets here.
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
}
