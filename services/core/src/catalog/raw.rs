//! The catalog as written: serde forms of the TOML that keep source spans.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

// ---- the raw TOML shape -------------------------------------------------------------------

/// A number written as a TOML integer or a decimal string. Floats are refused: `0.1` in TOML
/// is a binary float, and money must not pass through one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawNumber {
    Int(i64),
    Str(String),
    Float(f64),
}

pub(super) type SNum = Spanned<RawNumber>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    #[serde(default)]
    pub(super) api: Vec<RawApi>,
    #[serde(default)]
    pub(super) meter: Vec<RawMeter>,
    #[serde(default)]
    pub(super) plan: Vec<RawPlan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) name: Spanned<String>,
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) versions: Vec<RawVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVersion {
    pub(super) id: Spanned<String>,
    pub(super) status: Option<Spanned<String>>,
    pub(super) deprecated: Option<Spanned<toml::value::Datetime>>,
    pub(super) sunset: Option<Spanned<toml::value::Datetime>>,
    pub(super) successor: Option<Spanned<String>>,
    pub(super) live: Spanned<String>,
    pub(super) sandbox: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) grpc_services: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) operations: BTreeMap<String, Spanned<RawOperation>>,
    pub(super) openapi: Option<Spanned<String>>,
    pub(super) cors: Option<Spanned<RawCors>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    #[serde(default)]
    pub(super) origins: Vec<Spanned<String>>,
    pub(super) methods: Option<Vec<Spanned<String>>>,
    pub(super) headers: Option<Vec<Spanned<String>>>,
    pub(super) expose_headers: Option<Vec<Spanned<String>>>,
    pub(super) max_age: Option<Spanned<u32>>,
    pub(super) credentials: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOperation {
    pub(super) units: Option<SNum>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeter {
    pub(super) name: Spanned<String>,
    pub(super) aggregation: Spanned<String>,
    pub(super) field: Option<Spanned<String>>,
    pub(super) scale: Option<SNum>,
    #[serde(default)]
    pub(super) filter: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) group_by: Vec<Spanned<String>>,
    pub(super) refusals: Option<Spanned<String>>,
    pub(super) event_type: Option<Spanned<String>>,
    pub(super) value: Option<Spanned<String>>,
    pub(super) recurring: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub(super) id: Spanned<String>,
    pub(super) name: Option<String>,
    pub(super) currency: Spanned<String>,
    pub(super) period: Option<Spanned<RawPeriod>>,
    pub(super) base_fee: Option<SNum>,
    pub(super) tax: Option<RawTax>,
    pub(super) minimum_commitment: Option<SNum>,
    #[serde(default)]
    pub(super) charges: Vec<Spanned<RawCharge>>,
    #[serde(default)]
    pub(super) quotas: Vec<RawQuota>,
    pub(super) rate_limit: Option<Spanned<RawRateLimit>>,
    pub(super) net_days: Option<Spanned<i64>>,
    pub(super) apis: Option<Spanned<Vec<RawApiGrant>>>,
    #[serde(default)]
    pub(super) features: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) self_serve: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiGrant {
    pub(super) api: Spanned<String>,
    #[serde(default)]
    pub(super) versions: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) operations: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeriod {
    pub(super) every: Spanned<String>,
    pub(super) anchor_day: Option<Spanned<u32>>,
    pub(super) anchor_month: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTax {
    pub(super) rate: SNum,
    pub(super) label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCharge {
    pub(super) meter: Spanned<String>,
    pub(super) model: Spanned<String>,
    pub(super) free: Option<SNum>,
    pub(super) unit_price: Option<SNum>,
    pub(super) amount: Option<SNum>,
    pub(super) tiers: Option<Vec<RawTier>>,
    pub(super) size: Option<SNum>,
    pub(super) price: Option<SNum>,
    pub(super) rate: Option<SNum>,
    pub(super) fixed_fee: Option<SNum>,
    pub(super) events_meter: Option<Spanned<String>>,
    pub(super) free_events: Option<SNum>,
    pub(super) min_per_event: Option<SNum>,
    pub(super) max_per_event: Option<SNum>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTier {
    pub(super) up_to: SNum,
    /// graduated and volume.
    pub(super) unit_price: Option<SNum>,
    /// graduated_percentage.
    pub(super) rate: Option<SNum>,
    pub(super) flat_fee: Option<SNum>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    pub(super) meter: Spanned<String>,
    pub(super) limit: SNum,
    pub(super) kind: Spanned<String>,
    #[serde(default)]
    pub(super) shadow: bool,
    pub(super) near_limit: Option<SNum>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) per_second: u32,
    pub(super) burst: u32,
    #[serde(default)]
    pub(super) shadow: bool,
}
