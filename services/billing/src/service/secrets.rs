//! Secrets at rest: token-signing seeds and webhook secrets are stored encrypted with a
//! key-encryption key (KEK) the operator holds outside the database (`secrets.key_file` or
//! `PEAGE_SECRETS__KEY`; `peage up` makes `<data-dir>/secrets.key`, mode 0600). A copy of the
//! database alone, a backup or a read-only SQL injection, yields no usable secret.
//!
//! A sealed value is `enc:v1:<kid>:<base64(nonce ‖ ciphertext ‖ tag)>`: XChaCha20-Poly1305 with
//! a random 192-bit nonce (random nonces never collide in practice at that size), the KEK's id
//! (`kid`, the first 8 bytes of its SHA-256, hex) so a value names the key that opens it, and
//! the row it belongs to as associated data, so a sealed secret copied onto another row does not
//! open. Rotation: make the new KEK current, keep the old one in `secrets.previous_key_files`,
//! run `peage secrets rotate`; every value is opened with whichever key it names and sealed
//! again with the current one. Values stored before encryption existed are plain text; they
//! are read as they are and sealed by the same pass, which every billing start runs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use peage_billing_store::BillingStore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a key-encryption key must be 32 bytes (base64 of them in a file or PEAGE_SECRETS__KEY), not {0} bytes")]
    KeyLength(usize),
    #[error("the key-encryption key is not base64: {0}")]
    KeyEncoding(String),
    #[error("a stored secret was sealed with key {0}, which is neither the current key-encryption key nor one of secrets.previous_key_files")]
    UnknownKey(String),
    #[error("a stored secret does not open with its key (corrupt, or moved from another row)")]
    Corrupt,
}

/// One key-encryption key.
struct Kek {
    kid: String,
    cipher: XChaCha20Poly1305,
}

impl Kek {
    fn new(bytes: &[u8]) -> Result<Kek, SecretError> {
        if bytes.len() != 32 {
            return Err(SecretError::KeyLength(bytes.len()));
        }
        Ok(Kek {
            kid: hex::encode(&Sha256::digest(bytes)[..8]),
            cipher: XChaCha20Poly1305::new_from_slice(bytes)
                .map_err(|_| SecretError::KeyLength(bytes.len()))?,
        })
    }
}

/// Seals and opens stored secrets with the current KEK, and opens with previous ones.
pub struct SecretBox {
    current: Kek,
    previous: Vec<Kek>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("kid", &self.current.kid)
            .field("previous", &self.previous.len())
            .finish()
    }
}

/// A key file's or variable's text: base64 of 32 bytes, whitespace around it ignored.
pub fn parse_key(text: &str) -> Result<Vec<u8>, SecretError> {
    STANDARD
        .decode(text.trim())
        .map_err(|e| SecretError::KeyEncoding(e.to_string()))
}

/// A new key-encryption key, as a key file holds it.
pub fn new_key_text() -> String {
    STANDARD.encode(rand::random::<[u8; 32]>())
}

impl SecretBox {
    pub fn new(current: &[u8], previous: &[Vec<u8>]) -> Result<SecretBox, SecretError> {
        Ok(SecretBox {
            current: Kek::new(current)?,
            previous: previous
                .iter()
                .map(|k| Kek::new(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The current KEK's id, as sealed values name it.
    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// `plain`, sealed with the current KEK for the row `row` (e.g. `webhook:<id>`).
    pub fn seal(&self, row: &str, plain: &str) -> String {
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        let sealed = self
            .current
            .cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: row.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message under 256 GiB");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", self.current.kid, STANDARD.encode(out))
    }

    /// The plain secret of a stored value of row `row`: a sealed one opened with the key it
    /// names, a plain one (stored before encryption) as it is.
    pub fn open(&self, row: &str, stored: &str) -> Result<String, SecretError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (kid, data) = rest.split_once(':').ok_or(SecretError::Corrupt)?;
        let kek = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.kid == kid)
            .ok_or_else(|| SecretError::UnknownKey(kid.to_string()))?;
        let data = STANDARD.decode(data).map_err(|_| SecretError::Corrupt)?;
        if data.len() < 24 {
            return Err(SecretError::Corrupt);
        }
        let (nonce, sealed) = data.split_at(24);
        let plain = kek
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: row.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SecretError::Corrupt)
    }

    /// Whether a stored value is already sealed with the current KEK.
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(kid, _)| kid == self.current.kid)
    }
}

/// The associated data of a webhook endpoint's secret.
pub fn webhook_row(id: &str) -> String {
    format!("webhook:{id}")
}

/// The associated data of a signing key's seed.
pub fn signing_row(kid: &str) -> String {
    format!("signing-key:{kid}")
}

/// What [`reseal_all`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Values sealed again with the current KEK (plain ones, or under a previous KEK).
    pub resealed: usize,
    /// Values already sealed with the current KEK.
    pub current: usize,
}

/// Seals every stored secret with the current KEK: plain values (from before encryption) and
/// values under a previous KEK. Idempotent; run at every billing start and by
/// `peage secrets rotate`. A value that opens with no known key stops it with an error naming
/// the key it needs.
pub async fn reseal_all(
    store: &dyn BillingStore,
    secrets: &SecretBox,
) -> Result<Resealed, super::error::ServiceError> {
    let failed = |what: &str, id: &str, e: SecretError| {
        super::error::ServiceError::Corrupt(format!("{what} {id}: {e}"))
    };
    let mut done = Resealed::default();
    for key in store.signing_keys().await? {
        if secrets.is_current(&key.seed) {
            done.current += 1;
            continue;
        }
        let row = signing_row(&key.kid);
        let plain = secrets
            .open(&row, &key.seed)
            .map_err(|e| failed("signing key", &key.kid, e))?;
        store
            .replace_signing_seed(&key.kid, &secrets.seal(&row, &plain))
            .await?;
        done.resealed += 1;
    }
    for ep in store.webhook_endpoints().await? {
        if secrets.is_current(&ep.secret) {
            done.current += 1;
            continue;
        }
        let row = webhook_row(ep.id.as_str());
        let plain = secrets
            .open(&row, &ep.secret)
            .map_err(|e| failed("webhook endpoint", ep.id.as_str(), e))?;
        store
            .replace_webhook_secret(&ep.id, &secrets.seal(&row, &plain))
            .await?;
        done.resealed += 1;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Vec<u8> {
        vec![b; 32]
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_on_its_row() {
        let b = SecretBox::new(&key(1), &[]).unwrap();
        let sealed = b.seal("webhook:wh_1", "whsec_abc");
        assert!(sealed.starts_with(&format!("enc:v1:{}:", b.kid())));
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(sealed, b.seal("webhook:wh_1", "whsec_abc"), "random nonces");
        assert_eq!(b.open("webhook:wh_1", &sealed).unwrap(), "whsec_abc");
        assert!(matches!(
            b.open("webhook:wh_2", &sealed),
            Err(SecretError::Corrupt)
        ));
        let mut tampered = sealed.clone();
        tampered.replace_range(tampered.len() - 4.., "AAAA");
        assert!(b.open("webhook:wh_1", &tampered).is_err());
        // Stored before encryption: read as it is.
        assert_eq!(b.open("webhook:wh_1", "whsec_old").unwrap(), "whsec_old");
        let other = SecretBox::new(&key(2), &[]).unwrap();
        assert!(matches!(
            other.open("webhook:wh_1", &sealed),
            Err(SecretError::UnknownKey(k)) if k == b.kid()
        ));
    }

    #[test]
    fn after_rotation_old_values_open_with_the_previous_key() {
        let old = SecretBox::new(&key(1), &[]).unwrap();
        let sealed = old.seal("signing-key:k1", "seed");
        let new = SecretBox::new(&key(2), &[key(1)]).unwrap();
        assert!(!new.is_current(&sealed));
        assert_eq!(new.open("signing-key:k1", &sealed).unwrap(), "seed");
        assert!(new.is_current(&new.seal("signing-key:k1", "seed")));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(matches!(
            SecretBox::new(&[0; 16], &[]),
            Err(SecretError::KeyLength(16))
        ));
        assert!(parse_key("not base64!").is_err());
        let text = new_key_text();
        assert_eq!(parse_key(&format!("  {text}\n")).unwrap().len(), 32);
    }
}
