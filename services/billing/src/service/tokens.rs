//! Péage's own bearer credentials (service tokens, sign-in links, sessions): random, shown
//! once, and stored only as their SHA-256.

use sha2::{Digest, Sha256};

/// Service tokens are `pst_` and 64 hex digits.
pub const SERVICE_TOKEN_PREFIX: &str = "pst_";

/// The SHA-256 (hex) of a token, as stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new token: `prefix` and 32 random bytes in hex.
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 32]>()))
}
