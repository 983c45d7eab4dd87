//! Settings of the billing services that the services' state holds.

use std::time::Duration;

/// Who Péage's tokens say issued them and whom they are for; the gateway checks both.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub issuer: String,
    pub audience: String,
    pub token_ttl: Duration,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            issuer: "urn:peage:control".into(),
            audience: "urn:peage:gateway".into(),
            token_ttl: Duration::from_secs(3600),
        }
    }
}
