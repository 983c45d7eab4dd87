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
    };
}

prefixed_id!(PartnerId, "prt_");
prefixed_id!(KeyId, "key_");

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
