//! The certificate of the secure metrics port: a self-signed pair made at start, or the PEM files
//! `tls.crt` and `tls.key` of a folder (a mounted Secret, e.g. cert-manager's), read again when
//! they change. TLS by rustls with the ring provider (the one kube's client already uses).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::operator::error::{Error, Result};

/// The certificate chain file in `--metrics-cert-dir` (the key of a `kubernetes.io/tls` Secret).
pub const CERT_FILE: &str = "tls.crt";
/// The private key file in `--metrics-cert-dir`.
pub const KEY_FILE: &str = "tls.key";
/// How often the files are read again to see whether they changed.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Validity of the self-signed certificate (made again at every start).
pub const SELF_SIGNED_DAYS: i64 = 365;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: &[String]) -> Result<CertifiedKey> {
    let fail = |e: rcgen::Error| Error::Tls(format!("making a self-signed certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(fail)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pss-operator metrics");
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + Duration::from_secs(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        );
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(SELF_SIGNED_DAYS as u64 * 86_400);
    let cert = params.self_signed(&key).map_err(fail)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| Error::Tls(format!("the generated key: {e}")))?;
    CertifiedKey::from_der(vec![cert.der().clone()], key_der, &provider())
        .map_err(|e| Error::Tls(format!("the generated certificate: {e}")))
}

/// The two files of a folder, as read (compared to see whether they changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))
}

impl PemPair {
    pub fn read(dir: &Path) -> Result<PemPair> {
        Ok(PemPair {
            cert: read(&dir.join(CERT_FILE))?,
            key: read(&dir.join(KEY_FILE))?,
        })
    }

    /// The certificate chain and key, checked to belong together; errors name the file.
    pub fn parse(&self, dir: &Path) -> Result<CertifiedKey> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::Tls(format!(
                    "{}: not a PEM certificate: {e}",
                    cert_path.display()
                ))
            })?;
        if chain.is_empty() {
            return Err(Error::Tls(format!(
                "{}: no CERTIFICATE block found",
                cert_path.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| {
            Error::Tls(format!(
                "{}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                key_path.display()
            ))
        })?;
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            Error::Tls(format!(
                "{} and {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })
    }
}

/// The certificate every new TLS connection is served; replaced when the files change.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertStore {
            current: RwLock::new(Arc::new(key)),
        })
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS 1.2 and 1.3, HTTP/1.1, no client certificates (the bearer token authenticates).
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("TLS settings: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Made at start for these names.
    SelfSigned(Vec<String>),
    /// `tls.crt` and `tls.key` of this folder, read again every [`RELOAD_INTERVAL`].
    Dir(PathBuf),
}

/// The store for `source`, and (for a folder) the files as first read. Fails with the path when
/// a file is missing or unreadable, not PEM, or the key does not match the certificate.
pub fn load(source: &CertSource) -> Result<(Arc<CertStore>, Option<PemPair>)> {
    match source {
        CertSource::SelfSigned(names) => Ok((CertStore::new(self_signed(names)?), None)),
        CertSource::Dir(dir) => {
            let pair = PemPair::read(dir)?;
            let key = pair.parse(dir)?;
            Ok((CertStore::new(key), Some(pair)))
        }
    }
}

/// Reads `dir` every `interval`; a changed pair that parses replaces the served one, a broken
/// one (a rotation half written, a key of another certificate) is logged and the old one kept
/// until the files are right. Runs until cancelled.
pub async fn watch(store: Arc<CertStore>, dir: PathBuf, mut last: PemPair, interval: Duration) {
    let mut reported: Option<String> = None;
    loop {
        tokio::time::sleep(interval).await;
        let read = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || PemPair::read(&dir)).await
        };
        let result = match read {
            Ok(Ok(pair)) if pair == last => {
                reported = None;
                continue;
            }
            Ok(Ok(pair)) => pair.parse(&dir).map(|key| (pair, key)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::Tls(format!("reading {}: {e}", dir.display()))),
        };
        match result {
            Ok((pair, key)) => {
                store.replace(key);
                last = pair;
                reported = None;
                tracing::info!(dir = %dir.display(), "metrics certificate reloaded");
            }
            Err(e) => {
                let message = e.to_string();
                if reported.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, "metrics certificate not reloaded; still serving the previous one");
                    reported = Some(message);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, cert: &str, key: &str) {
        std::fs::write(dir.join(CERT_FILE), cert).expect("write cert");
        std::fs::write(dir.join(KEY_FILE), key).expect("write key");
    }

    #[test]
    fn a_self_signed_pair_is_made_for_the_names() {
        let key = self_signed(&["localhost".into(), "127.0.0.1".into()]).expect("self-signed");
        assert_eq!(key.cert.len(), 1);
        key.keys_match().expect("key matches");
    }

    #[test]
    fn a_folder_pair_loads_and_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let err = load(&CertSource::Dir(d.to_path_buf()))
            .expect_err("missing files")
            .to_string();
        assert!(
            err.contains(&d.join(CERT_FILE).display().to_string()),
            "{err}"
        );

        let (cert, key) = pem_pair("metrics.example");
        write(d, "garbage", &key);
        let err = load(&CertSource::Dir(d.to_path_buf()))
            .expect_err("no certificate")
            .to_string();
        assert!(
            err.contains("tls.crt") && err.contains("no CERTIFICATE"),
            "{err}"
        );

        write(d, &cert, "-----BEGIN NOTHING-----\n-----END NOTHING-----\n");
        let err = load(&CertSource::Dir(d.to_path_buf()))
            .expect_err("no key")
            .to_string();
        assert!(
            err.contains("tls.key") && err.contains("private key"),
            "{err}"
        );

        let (_, other_key) = pem_pair("other.example");
        write(d, &cert, &other_key);
        let err = load(&CertSource::Dir(d.to_path_buf()))
            .expect_err("mismatch")
            .to_string();
        assert!(
            err.contains("tls.crt and") && err.contains("tls.key"),
            "{err}"
        );

        write(d, &cert, &key);
        let (store, pair) = load(&CertSource::Dir(d.to_path_buf())).expect("loads");
        assert!(pair.is_some());
        store.current().keys_match().expect("consistent");
    }

    #[tokio::test]
    async fn changed_files_are_served_and_broken_ones_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        let (cert1, key1) = pem_pair("one.example");
        write(&d, &cert1, &key1);
        let (store, pair) = load(&CertSource::Dir(d.clone())).expect("loads");
        let first = store.current().cert[0].clone();
        let interval = Duration::from_millis(20);
        let watcher = tokio::spawn(watch(
            store.clone(),
            d.clone(),
            pair.expect("pair"),
            interval,
        ));

        // A half-written rotation (new certificate, old key) is not served, however long it lasts.
        let (cert2, key2) = pem_pair("two.example");
        std::fs::write(d.join(CERT_FILE), &cert2).expect("write");
        tokio::time::sleep(interval * 10).await;
        assert_eq!(store.current().cert[0], first, "mismatched pair not served");

        // Once both files are new, the new pair is served.
        std::fs::write(d.join(KEY_FILE), &key2).expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.current().cert[0] == first {
            assert!(
                std::time::Instant::now() < deadline,
                "new pair never served"
            );
            tokio::time::sleep(interval).await;
        }
        store.current().keys_match().expect("consistent");
        watcher.abort();
    }

    #[test]
    fn the_server_speaks_http1_over_tls() {
        let store = CertStore::new(self_signed(&["localhost".into()]).expect("cert"));
        let config = server_config(store).expect("config");
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }
}
