//! Identifiers that parse on construction, so an invalid one cannot travel.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Builds an id from random bytes (the caller owns the randomness: core does no I/O).
            pub fn from_random(bytes: [u8; 10]) -> Self {
                Self(format!("{}{}", $prefix, hex::encode(bytes)))
            }

            /// Accepts `<prefix><20 lowercase hex digits>` and nothing else.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let body = s.strip_prefix($prefix).ok_or(IdError {
                    kind: stringify!($name),
                    value: s.to_string(),
                })?;
                if body.len() == 20
                    && body
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    Ok(Self(s.to_string()))
                } else {
                    Err(IdError {
                        kind: stringify!($name),
                        value: s.to_string(),
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Maps keyed by id are read with a `&str` (the hash is the text's).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        /// In JSON an id is its text: the prefix and 20 lowercase hex digits.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "[0-9a-f]{20}$")))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

prefixed_id!(PartnerId, "prt_");
prefixed_id!(KeyId, "key_");
prefixed_id!(IssuerId, "iss_");
prefixed_id!(InvoiceId, "inv_");
prefixed_id!(CreditId, "crd_");
prefixed_id!(WebhookEndpointId, "ep_");
prefixed_id!(ServiceTokenId, "svc_");
prefixed_id!(WebhookMessageId, "msg_");
prefixed_id!(StaffId, "stf_");
prefixed_id!(PlanChangeId, "pch_");
prefixed_id!(PartnerCouponId, "pcp_");
prefixed_id!(CreditNoteId, "cn_");
prefixed_id!(PaymentId, "pay_");
prefixed_id!(AlertId, "alr_");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_their_own_shape() {
        let p = PartnerId::from_random([7; 10]);
        assert_eq!(PartnerId::parse(p.as_str()).unwrap(), p);
        assert!(PartnerId::parse("key_07070707070707070707").is_err());
        assert!(PartnerId::parse("prt_XYZ").is_err());
        assert!(PartnerId::parse("prt_../../etc/passwd0000").is_err());
        assert!(KeyId::parse("key_0707070707070707070a").is_ok());
    }
}

/// API key secrets: `pk_live_…` / `pk_test_…` followed by 32 random base62 characters
/// (≈190 bits). Only [`secret_hash`] of a secret is ever stored.
pub mod api_key {
    use sha2::{Digest, Sha256};

    use crate::event::Env;

    pub const LIVE_PREFIX: &str = "pk_live_";
    pub const TEST_PREFIX: &str = "pk_test_";
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    /// Builds a secret from 32 random bytes supplied by the caller.
    pub fn secret(env: Env, random: [u8; 32]) -> String {
        let prefix = match env {
            Env::Live => LIVE_PREFIX,
            Env::Sandbox => TEST_PREFIX,
        };
        // 256 is a multiple of 62 only approximately; the bias (≈3 %) costs < 1 bit in total.
        let body: String = random
            .iter()
            .map(|b| ALPHABET[*b as usize % 62] as char)
            .collect();
        format!("{prefix}{body}")
    }

    /// The environment a presented secret claims, or `None` if it is not shaped like a key.
    pub fn env_of(secret: &str) -> Option<Env> {
        let (env, body) = if let Some(b) = secret.strip_prefix(LIVE_PREFIX) {
            (Env::Live, b)
        } else {
            (Env::Sandbox, secret.strip_prefix(TEST_PREFIX)?)
        };
        (body.len() == 32 && body.bytes().all(|c| c.is_ascii_alphanumeric())).then_some(env)
    }

    /// SHA-256 (hex) of the secret. A fast hash is right here: secrets are long and random, so
    /// there is nothing to brute-force, and the gateway hashes on every call.
    pub fn secret_hash(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn secrets_are_shaped_and_hashed() {
            let s = secret(Env::Live, [200; 32]);
            assert!(s.starts_with("pk_live_") && s.len() == 40, "{s}");
            assert_eq!(env_of(&s), Some(Env::Live));
            assert_eq!(env_of(&secret(Env::Sandbox, [1; 32])), Some(Env::Sandbox));
            assert_eq!(env_of("pk_live_short"), None);
            assert_eq!(env_of("Bearer x"), None);
            assert_eq!(secret_hash(&s).len(), 64);
            assert_ne!(secret_hash(&s), secret_hash(&secret(Env::Live, [201; 32])));
        }
    }
}
