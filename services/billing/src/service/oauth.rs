//! OAuth2 client credentials (RFC 6749 §4.4) issuing JWTs signed by Péage (Ed25519, `EdDSA`),
//! the JWKS that verifies them, signing-key rotation, and partners' own issuers.
//!
//! The client is an API key: `client_id` is its key id, `client_secret` its secret. A token
//! names the partner (`sub`), the key (`key_id`), the env and, when asked for, scopes
//! (`{api}` or `{api}:{version}`) that limit which APIs the gateway lets it call.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use peage_billing_store::{Partner, SigningKey, TrustedIssuer};
use peage_core::ids::{api_key, IssuerId};
use peage_core::Env;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::billing::Billing;
use super::error::ServiceError;
use super::secrets::{signing_row, SecretBox};

pub use super::settings::OAuthConfig;

/// The claims of a token Péage issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeageClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub key_id: String,
    pub env: Env,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): a fixed prefix, then the 32 bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The seed of a stored key, opened with the key-encryption key.
fn seed_of(secrets: &SecretBox, key: &SigningKey) -> Result<[u8; 32], ServiceError> {
    let stored = secrets
        .open(&signing_row(&key.kid), &key.seed)
        .map_err(|e| ServiceError::Corrupt(format!("signing key {}: {e}", key.kid)))?;
    URL_SAFE_NO_PAD
        .decode(stored)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| ServiceError::Corrupt(format!("signing key {} is unreadable", key.kid)))
}

fn public_x(seed: &[u8; 32]) -> String {
    let public = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key();
    URL_SAFE_NO_PAD.encode(public.to_bytes())
}

/// A new signing key, its seed sealed for the store.
fn new_signing_key(secrets: &SecretBox, now: DateTime<Utc>) -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let x = public_x(&seed);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(x.as_bytes());
    let kid = format!("pk-{}-{}", now.format("%Y%m%d"), &hex::encode(digest)[..12]);
    SigningKey {
        seed: secrets.seal(&signing_row(&kid), &URL_SAFE_NO_PAD.encode(seed)),
        kid,
        created_at: now,
        retired_at: None,
    }
}

impl Billing {
    /// The key that signs new tokens, created on first use.
    async fn active_signing_key(&self) -> Result<SigningKey, ServiceError> {
        let keys = self.store.signing_keys().await?;
        if let Some(k) = keys.into_iter().find(|k| k.retired_at.is_none()) {
            return Ok(k);
        }
        let key = new_signing_key(&self.secrets, Utc::now());
        self.store.rotate_signing_key(&key).await?;
        tracing::info!(kid = %key.kid, "first token-signing key created");
        Ok(key)
    }
}

/// Why no token was issued (RFC 6749 §5.2's error codes).
#[derive(Debug, thiserror::Error)]
pub enum TokenRefusal {
    /// Unknown client, wrong secret, or a revoked key (`invalid_client`).
    #[error("{0}")]
    InvalidClient(&'static str),
    /// A scope that is not an API (or API:version) of the catalog (`invalid_scope`).
    #[error("{0}")]
    InvalidScope(String),
    /// The server failed.
    #[error(transparent)]
    Failed(#[from] ServiceError),
}

/// An access token (RFC 6749 §5.1).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenGrant {
    pub access_token: String,
    /// `Bearer`.
    #[schema(value_type = String)]
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// One public key of the JWKS (RFC 8037: an Ed25519 `OKP` key).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Jwk {
    /// `OKP`.
    #[schema(value_type = String)]
    pub kty: &'static str,
    /// `Ed25519`.
    #[schema(value_type = String)]
    pub crv: &'static str,
    /// The public key, base64url.
    pub x: String,
    pub kid: String,
    /// `EdDSA`.
    #[schema(value_type = String)]
    pub alg: &'static str,
    /// `sig`.
    #[serde(rename = "use")]
    #[schema(value_type = String)]
    pub use_: &'static str,
}

/// The token-signing public keys.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// A new token-signing key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewSigningKey {
    pub kid: String,
    pub created_at: DateTime<Utc>,
}

/// `PUT /v1/partners/{id}/issuer`: the partner's own identity provider.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerRequest {
    pub issuer: String,
    pub jwks_url: String,
    pub algorithm: String,
    pub audience: String,
    /// `live` (default) or `sandbox`.
    pub env: Option<String>,
}

impl Billing {
    /// Issues a token to the client whose id is an API key id and whose secret is the key's
    /// secret, limited to `scope` (space-separated `{api}` or `{api}:{version}`) when given.
    pub async fn issue_token(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Result<TokenGrant, TokenRefusal> {
        let bad_client = || TokenRefusal::InvalidClient("unknown client or wrong secret");
        if api_key::env_of(secret).is_none() {
            return Err(bad_client());
        }
        let key = self
            .store
            .key_by_hash(&api_key::secret_hash(secret))
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(bad_client)?;
        if key.key_id != client_id {
            return Err(bad_client());
        }
        if key.revoked_at.is_some() {
            return Err(TokenRefusal::InvalidClient("this API key has been revoked"));
        }
        let catalog = self.catalog();
        let scope = match scope.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                for item in s.split_whitespace() {
                    let (name, version) = match item.split_once(':') {
                        Some((a, v)) => (a, Some(v)),
                        None => (item, None),
                    };
                    let known = catalog.apis.iter().any(|a| {
                        a.name == name
                            && version.is_none_or(|v| a.versions.iter().any(|x| x.id == v))
                    });
                    if !known {
                        return Err(TokenRefusal::InvalidScope(format!(
                            "{item:?} is not an API (or API:version) of the catalog"
                        )));
                    }
                }
                Some(s.split_whitespace().collect::<Vec<_>>().join(" "))
            }
        };
        let signing = self.active_signing_key().await?;
        let seed = seed_of(&self.secrets, &signing)?;
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let now = Utc::now().timestamp();
        let ttl = self.oauth.token_ttl.as_secs() as i64;
        let claims = PeageClaims {
            iss: self.oauth.issuer.clone(),
            sub: key.partner_id.to_string(),
            aud: self.oauth.audience.clone(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::now_v7().to_string(),
            key_id: key.key_id.to_string(),
            env: key.env,
            scope: scope.clone(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signing.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der))
            .map_err(|e| ServiceError::Corrupt(format!("signing a token: {e}")))?;
        Ok(TokenGrant {
            access_token: token,
            token_type: "Bearer",
            expires_in: ttl,
            scope,
        })
    }

    /// The signing key and those retired less than a token lifetime ago (their tokens may
    /// still be in use).
    pub async fn jwks(&self) -> Result<Jwks, ServiceError> {
        self.active_signing_key().await?;
        let horizon = Utc::now()
            - chrono::Duration::from_std(self.oauth.token_ttl).unwrap_or_default()
            - chrono::Duration::minutes(5);
        let mut keys = Vec::new();
        for k in self.store.signing_keys().await? {
            if k.retired_at.is_some_and(|r| r < horizon) {
                continue;
            }
            let x = public_x(&seed_of(&self.secrets, &k)?);
            keys.push(Jwk {
                kty: "OKP",
                crv: "Ed25519",
                x,
                kid: k.kid,
                alg: "EdDSA",
                use_: "sig",
            });
        }
        Ok(Jwks { keys })
    }

    /// New tokens are signed with a new key; the old one stays in the JWKS until its tokens
    /// have expired.
    pub async fn rotate_signing_key(&self) -> Result<NewSigningKey, ServiceError> {
        let key = new_signing_key(&self.secrets, Utc::now());
        self.store.rotate_signing_key(&key).await?;
        tracing::info!(kid = %key.kid, "token-signing key rotated");
        Ok(NewSigningKey {
            kid: key.kid,
            created_at: key.created_at,
        })
    }

    /// Trusts JWTs from the partner's own identity provider: the issuer before (if it was
    /// registered) and as stored.
    pub async fn put_issuer(
        &self,
        partner: Partner,
        req: IssuerRequest,
    ) -> Result<(Option<TrustedIssuer>, TrustedIssuer), ServiceError> {
        if req.issuer.trim().is_empty() || req.issuer == self.oauth.issuer {
            return Err(ServiceError::Invalid(
                "issuer must be the partner's own, non-empty `iss`".into(),
            ));
        }
        self.check_outbound_url("jwks_url", &req.jwks_url).await?;
        if !PARTNER_ALGORITHMS.contains(&req.algorithm.as_str()) {
            return Err(ServiceError::Invalid(format!(
                "algorithm must be one of {}, not {:?}",
                PARTNER_ALGORITHMS.join(", "),
                req.algorithm
            )));
        }
        if req.audience.trim().is_empty() {
            return Err(ServiceError::Invalid("audience must not be empty".into()));
        }
        let env = super::values::env(req.env.as_deref())?;
        let before = self.store.issuer(&req.issuer).await?;
        let stored = self
            .store
            .put_issuer(&TrustedIssuer {
                id: IssuerId::from_random(rand::random()),
                partner_id: partner.id,
                issuer: req.issuer,
                jwks_url: req.jwks_url,
                algorithm: req.algorithm,
                audience: req.audience,
                env,
                created_at: Utc::now(),
            })
            .await?;
        Ok((before, stored))
    }
}

/// Algorithms a partner's issuer may be pinned to: public-key signatures only (an HMAC secret
/// cannot be published in a JWKS).
pub const PARTNER_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
