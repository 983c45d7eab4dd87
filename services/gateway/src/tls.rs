//! TLS termination at the gateway (rustls): a certificate chain and key from PEM files,
//! reloaded when either file changes, without a restart and without touching connections
//! already open (a new certificate serves new handshakes; sessions in progress keep theirs).
//!
//! The files are looked at once a second (their size and modification time, following
//! symlinks), which also catches the atomic symlink swaps of Kubernetes secrets and
//! cert-manager. A pair that does not load (half written, or a key that does not match the
//! certificate) is logged and skipped; the running certificate serves on until a good pair
//! arrives. ALPN offers `h2` and `http/1.1`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where the gateway's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the leaf certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("gateway TLS certificate {path}: {why}")]
    Cert { path: String, why: String },
    #[error("gateway TLS key {path}: {why}")]
    Key { path: String, why: String },
    #[error("gateway TLS: the key {key} does not belong to the certificate {cert}: {why}")]
    Mismatch {
        cert: String,
        key: String,
        why: String,
    },
}

/// Reload counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TlsStats {
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

/// The certificate in force, swapped whole by a reload.
pub(crate) struct Certificates {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    pub stats: TlsStats,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let (cert_path, key_path) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let cert_err = |why: String| TlsError::Cert {
        path: cert_path.clone(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        why: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
        cert: cert_path,
        key: key_path,
        why: e.to_string(),
    })
}

/// What identifies a version of the files: size and modification time of each.
fn stamp(files: &TlsFiles) -> Option<[(u64, SystemTime); 2]> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.len(), m.modified().ok()?))
    };
    Some([one(&files.cert)?, one(&files.key)?])
}

impl Certificates {
    /// Loads the pair, refusing to start on a bad one.
    pub fn load(files: TlsFiles) -> Result<Arc<Certificates>, TlsError> {
        let key = load(&files)?;
        Ok(Arc::new(Certificates {
            files,
            current: ArcSwap::from_pointee(key),
            stats: TlsStats::default(),
        }))
    }

    /// A rustls server configuration resolving to the certificate in force.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Watches the files every `every` on a thread of its own until `stop` says so, and
    /// swaps in a pair that changed and loads.
    pub fn watch(self: &Arc<Self>, every: Duration, stop: tokio::sync::watch::Receiver<bool>) {
        let certs = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("peage-gw-tls".into())
            .spawn(move || {
                let mut seen = stamp(&certs.files);
                // A pair seen changing but not loading is retried once it changes again.
                while !*stop.borrow() {
                    std::thread::sleep(every);
                    let now = stamp(&certs.files);
                    if now.is_none() || now == seen {
                        continue;
                    }
                    seen = now;
                    certs.reload();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "gateway: cannot watch the TLS certificate files");
        }
    }

    /// Loads the files now; the running certificate stays if they do not load.
    pub fn reload(&self) -> bool {
        match load(&self.files) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.files.cert.display(), "gateway: TLS certificate reloaded; new connections use it");
                true
            }
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "gateway: the new TLS certificate does not load; the running one serves on");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> TlsFiles {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, c.cert.pem()).unwrap();
        std::fs::write(&files.key, c.signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_bad_pair_is_refused_at_start_and_skipped_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a.test");
        let b = pair(dir.path(), "b.test");
        let mixed = TlsFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        assert!(matches!(
            Certificates::load(mixed),
            Err(TlsError::Mismatch { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = Certificates::load(TlsFiles {
            cert: empty,
            key: a.key.clone(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");

        let certs = Certificates::load(a.clone()).unwrap();
        let before = certs.current.load_full();
        // The key is overwritten with another one: refused, the old pair serves on.
        std::fs::copy(&b.key, &a.key).unwrap();
        assert!(!certs.reload());
        assert!(Arc::ptr_eq(&before, &certs.current.load_full()));
        // Then the matching certificate arrives: taken.
        std::fs::copy(&b.cert, &a.cert).unwrap();
        assert!(certs.reload());
        assert_eq!(certs.current.load().cert, certs_of(&b));
        assert_eq!(certs.stats.reload_failures.load(Ordering::Relaxed), 1);
    }

    fn certs_of(files: &TlsFiles) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}
