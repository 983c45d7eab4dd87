//! The pricing engine: plans, charges and their models, applied to metered quantities.
//!
//! Conventions (also in docs/pricing.md):
//! - `free` units are the first units of the period; they cost nothing and are shown as a line.
//! - Tier bounds (`up_to`) are absolute quantities of the period, free units included, so a plan
//!   reads the way partners read it: "first 10k free, up to 100k at 0.001, then 0.0006".
//! - `graduated`: each unit is priced by the tier it falls in (one line per tier touched).
//! - `volume`: the tier the *total* quantity reaches prices every billable unit (one line).
//! - `package`: billable units are sold in packages of `size`, rounded up.
//! - `flat`: a fixed amount for the period, due once the meter has any billable usage.
//! - Every line amount is rounded once, by `Currency::round`; nothing else rounds.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invoice::{InvoiceLine, LineKind};
use crate::money::{Currency, Overflow};
use crate::period::PeriodRule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub id: String,
    pub name: String,
    /// Content hash of the plan as loaded: any change to the plan gives a new version.
    pub version: String,
    pub currency: Currency,
    pub period: PeriodRule,
    #[serde(with = "rust_decimal::serde::str")]
    pub base_fee: Decimal,
    pub tax: Option<TaxRate>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub minimum_commitment: Option<Decimal>,
    pub charges: Vec<Charge>,
    pub quotas: Vec<Quota>,
    pub rate_limit: Option<RateLimit>,
    /// Payment terms: days from finalization to the due date (a partner's billing profile may
    /// say otherwise; [`crate::payment::DEFAULT_NET_DAYS`] when neither does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_days: Option<u32>,
    /// The APIs the plan grants (docs/catalog.md, "Entitlements"); every API when `None`. Left
    /// out of the plan's hash when absent, so plans written before it keep their versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apis: Option<Vec<ApiGrant>>,
    /// Boolean features the plan includes (`sso`, `priority_support`…), for the company's own
    /// services to check (`GET /v1/partners/{id}/entitlements`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Partners may move to this plan themselves from the dashboard (docs/pricing.md,
    /// "Self-service plan changes"). Left out of the hash when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_serve: bool,
}

/// One API a plan grants: all of it, some versions, or some operations of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiGrant {
    pub api: String,
    /// The versions granted; every version when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// The operations granted, by the names calls are metered under (`GET /forecast/{city}`);
    /// every operation when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<String>,
}

/// What a plan grants of one API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted<'p> {
    /// Every operation.
    All,
    /// These operations only.
    Operations(&'p [String]),
    /// Nothing: calls are refused (403).
    No,
}

impl Plan {
    /// What the plan grants of `api` `version`.
    pub fn granted(&self, api: &str, version: &str) -> Granted<'_> {
        granted(self.apis.as_deref(), api, version)
    }
}

/// What `grants` (a plan's `apis`; every API when `None`) grant of `api` `version`.
pub fn granted<'g>(grants: Option<&'g [ApiGrant]>, api: &str, version: &str) -> Granted<'g> {
    let Some(grants) = grants else {
        return Granted::All;
    };
    // The catalog lets an API appear once in a plan's grants.
    match grants.iter().find(|g| g.api == api) {
        Some(g) if g.versions.is_empty() || g.versions.iter().any(|v| v == version) => {
            if g.operations.is_empty() {
                Granted::All
            } else {
                Granted::Operations(&g.operations)
            }
        }
        _ => Granted::No,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaxRate {
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub meter: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub free: Decimal,
    #[serde(flatten)]
    pub model: ChargeModel,
}

/// A charge in JSON is one object: `meter`, `free`, `model` and the model's fields. Described as
/// one named schema per model (`ChargeFlat`, `ChargeGraduated`…) told apart by `model`, since
/// generated clients cannot take `allOf` over a `oneOf` or unions of inline objects.
fn charge_variants() -> Vec<(String, utoipa::openapi::schema::Object)> {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;
    use utoipa::PartialSchema;
    let RefOr::T(Schema::OneOf(models)) = ChargeModel::schema() else {
        return Vec::new();
    };
    models
        .items
        .into_iter()
        .filter_map(|model| match model {
            RefOr::T(Schema::Object(o)) => Some(o),
            _ => None,
        })
        .map(|mut o| {
            let tag = match o.properties.get("model") {
                Some(RefOr::T(Schema::Object(m))) => m
                    .enum_values
                    .iter()
                    .flatten()
                    .find_map(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let name: String = std::iter::once("Charge".to_string())
                .chain(tag.split('_').map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                }))
                .collect();
            o.properties.insert(
                "meter".into(),
                ObjectBuilder::new().schema_type(Type::String).into(),
            );
            o.properties.insert(
                "free".into(),
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("Free units of the period, a decimal string"))
                    .into(),
            );
            o.required.extend(["meter".to_string(), "free".to_string()]);
            o.description = Some(format!("A `{tag}` charge on one meter"));
            (name, o)
        })
        .collect()
}

impl utoipa::PartialSchema for Charge {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{Discriminator, OneOfBuilder};
        use utoipa::openapi::Ref;
        let mut discriminator = Discriminator::new("model");
        let mut charge = OneOfBuilder::new().description(Some(
            "A charge on one meter: `free` units first, then priced by `model`",
        ));
        for (name, o) in charge_variants() {
            if let Some(tag) = o.description.as_deref().and_then(|d| d.split('`').nth(1)) {
                discriminator
                    .mapping
                    .insert(tag.to_string(), format!("#/components/schemas/{name}"));
            }
            charge = charge.item(Ref::from_schema_name(name));
        }
        charge.discriminator(Some(discriminator)).into()
    }
}

impl utoipa::ToSchema for Charge {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        for (name, o) in charge_variants() {
            schemas.push((name, o.into()));
        }
        schemas.push(("Tier".into(), Tier::schema()));
        schemas.push(("PercentageTier".into(), PercentageTier::schema()));
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ChargeModel {
    Flat {
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
    },
    PerUnit {
        #[serde(with = "rust_decimal::serde::str")]
        unit_price: Decimal,
    },
    Graduated {
        tiers: Vec<Tier>,
    },
    Volume {
        tiers: Vec<Tier>,
    },
    /// A rate of the amount a `sum` meter measures (payment volume), tier by tier, each tier
    /// with its own rate and flat fee (Lago's graduated percentage).
    GraduatedPercentage {
        tiers: Vec<PercentageTier>,
    },
    /// A share `rate` of the amount the meter measures beyond `free` (an amount), plus a
    /// `fixed_fee` per event beyond `free_events`, events counted by `events_meter` (a `count`
    /// meter over the same events). With `min_per_event` or `max_per_event` (Lago's
    /// per-transaction minimum and maximum), each event's charge is held between them, which
    /// reads each event's amount ([`Charge::price_each_event`]).
    Percentage {
        #[serde(with = "rust_decimal::serde::str")]
        rate: Decimal,
        #[serde(
            default,
            with = "optional_amount",
            skip_serializing_if = "Option::is_none"
        )]
        #[schema(value_type = Option<String>)]
        fixed_fee: Option<Decimal>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events_meter: Option<String>,
        #[serde(
            default,
            with = "optional_amount",
            skip_serializing_if = "Option::is_none"
        )]
        #[schema(value_type = Option<String>)]
        free_events: Option<Decimal>,
        #[serde(
            default,
            with = "optional_amount",
            skip_serializing_if = "Option::is_none"
        )]
        #[schema(value_type = Option<String>)]
        min_per_event: Option<Decimal>,
        #[serde(
            default,
            with = "optional_amount",
            skip_serializing_if = "Option::is_none"
        )]
        #[schema(value_type = Option<String>)]
        max_per_event: Option<Decimal>,
    },
    /// Each event carries its own price (`data.price`, read by a `sum` meter): the charge is
    /// the exact sum of those prices beyond `free`, in the plan's currency, rounded once (Lago's
    /// dynamic pricing).
    Dynamic {},
    Package {
        #[serde(with = "rust_decimal::serde::str")]
        size: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        price: Decimal,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tier {
    /// Inclusive upper bound on the period's quantity; `None` is infinity (last tier only).
    #[serde(
        serialize_with = "rust_decimal::serde::str_option::serialize",
        deserialize_with = "optional_decimal"
    )]
    pub up_to: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Due once when billable units fall in the tier (graduated), or once for the tier the
    /// quantity selects (volume): Stripe's `flat_amount`, Lago's flat fee. Left out of the
    /// plan's hash when absent, so plans written before it keep their versions.
    #[serde(
        default,
        with = "optional_amount",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub flat_fee: Option<Decimal>,
}

/// A tier of a `graduated_percentage` charge: the share `rate` (0.014 for 1.4 %) of the amount
/// within the tier, and a flat fee once the tier is entered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PercentageTier {
    /// Inclusive upper bound on the period's amount; `None` is infinity (last tier only).
    #[serde(
        serialize_with = "rust_decimal::serde::str_option::serialize",
        deserialize_with = "optional_decimal"
    )]
    pub up_to: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    #[serde(
        default,
        with = "optional_amount",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub flat_fee: Option<Decimal>,
}

/// An optional decimal string that may be absent (left out when `None`, so a plan written
/// before the field existed keeps its hash).
mod optional_amount {
    pub use rust_decimal::serde::str_option::serialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<rust_decimal::Decimal>, D::Error> {
        super::optional_decimal(d)
    }
}

/// An optional decimal string. A tier sits inside a charge, whose model is flattened into it:
/// serde hands a flattened field's `null` over as a unit, which rust_decimal's own
/// `str_option` refuses, so a stored plan with an unbounded last tier could not be read back.
fn optional_decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| s.parse::<Decimal>().map_err(serde::de::Error::custom))
        .transpose()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaKind {
    Hard,
    Soft,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quota {
    pub meter: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub limit: Decimal,
    pub kind: QuotaKind,
    /// Shadow mode: the limit is counted and calls past it are flagged, never refused, so a
    /// new limit can be watched before it is enforced. Left out of the plan's hash when off,
    /// so plans written before it keep their versions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// The fraction of the limit at which the partner is told it is near (default 0.8).
    #[serde(
        default,
        with = "rust_decimal::serde::str_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub near_limit: Option<Decimal>,
}

/// The near-limit fraction when a quota does not set one.
pub const DEFAULT_NEAR_LIMIT: Decimal = Decimal::from_parts(8, 0, 0, false, 1);

impl Quota {
    /// Whether a call past the limit is refused: a hard quota not in shadow mode.
    pub fn enforced(&self) -> bool {
        self.kind == QuotaKind::Hard && !self.shadow
    }

    /// The fraction of the limit that is "near" it.
    pub fn near_fraction(&self) -> Decimal {
        self.near_limit.unwrap_or(DEFAULT_NEAR_LIMIT)
    }

    /// The usage at which the partner is near the limit.
    pub fn near_threshold(&self) -> Decimal {
        self.limit
            .checked_mul(self.near_fraction())
            .unwrap_or(self.limit)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
    /// Shadow mode: calls over the rate are flagged (`rate_limit_shadow_exceeded`), not refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

fn line(
    kind: LineKind,
    meter: &str,
    tier: Option<u32>,
    quantity: Decimal,
    unit_price: Decimal,
    description: String,
    currency: Currency,
) -> Result<InvoiceLine, Overflow> {
    let amount = quantity.checked_mul(unit_price).ok_or(Overflow)?;
    Ok(InvoiceLine {
        kind,
        description,
        meter: Some(meter.to_string()),
        group: None,
        tier,
        quantity: quantity.normalize(),
        unit_price: unit_price.normalize(),
        amount: currency.round(amount),
        adjusts: None,
    })
}

fn bound(up_to: Option<Decimal>) -> String {
    up_to.map_or_else(|| "∞".to_string(), |b| b.normalize().to_string())
}

/// A tier as graduated pricing walks it: its bound, its price per unit (or rate), its flat fee.
struct Step {
    up_to: Option<Decimal>,
    price: Decimal,
    flat_fee: Option<Decimal>,
}

/// The flat-fee line of tier `i` (0-based), when it has one.
fn tier_fee(
    m: &str,
    i: usize,
    flat_fee: Option<Decimal>,
    currency: Currency,
) -> Result<Option<InvoiceLine>, Overflow> {
    match flat_fee {
        Some(fee) if !fee.is_zero() => Ok(Some(line(
            LineKind::Usage,
            m,
            Some(i as u32 + 1),
            Decimal::ONE,
            fee,
            format!("{m}: tier {} flat fee", i + 1),
            currency,
        )?)),
        _ => Ok(None),
    }
}

/// Graduated pricing: each tier prices the billable units within it (units above `free`);
/// a tier's flat fee is due once billable units fall in it. `what` names a tier's price in
/// its line ("tier 2 (100 – 200)", or with a rate, "tier 2 at 2 % (1000 – 10000)").
fn graduated(
    m: &str,
    quantity: Decimal,
    free: Decimal,
    steps: &[Step],
    what: impl Fn(usize, &Step, Decimal) -> String,
    currency: Currency,
    lines: &mut Vec<InvoiceLine>,
) -> Result<(), Overflow> {
    let billable = (quantity - free).max(Decimal::ZERO);
    let mut lower = Decimal::ZERO;
    for (i, step) in steps.iter().enumerate() {
        let upper = step.up_to.unwrap_or(Decimal::MAX);
        // Units of (lower, upper] that are also in (free, quantity].
        let in_tier = (quantity.min(upper) - lower.max(free)).max(Decimal::ZERO);
        if in_tier > Decimal::ZERO || (i == 0 && billable.is_zero()) {
            lines.push(line(
                LineKind::Usage,
                m,
                Some(i as u32 + 1),
                in_tier,
                step.price,
                what(i, step, lower),
                currency,
            )?);
        }
        if in_tier > Decimal::ZERO {
            lines.extend(tier_fee(m, i, step.flat_fee, currency)?);
        }
        if quantity <= upper {
            break;
        }
        lower = upper;
    }
    Ok(())
}

impl Charge {
    /// The meter whose quantity counts the events of a per-event fee, if the charge has one.
    pub fn events_meter(&self) -> Option<&str> {
        match &self.model {
            ChargeModel::Percentage {
                events_meter: Some(m),
                ..
            } => Some(m),
            _ => None,
        }
    }

    /// Whether pricing needs each event's amount ([`Charge::price_each_event`]): a percentage
    /// with a per-event minimum or maximum.
    pub fn prices_each_event(&self) -> bool {
        matches!(
            &self.model,
            ChargeModel::Percentage { min_per_event, max_per_event, .. }
                if min_per_event.is_some() || max_per_event.is_some()
        )
    }

    /// The lines of a charge that prices each event ([`Charge::prices_each_event`]), from the
    /// amounts of the period's events in time order: the rate and fee lines of
    /// [`Charge::price_with_events`] over their sum and count, then one line that brings the
    /// total to the sum of each event's charge held between the minimum and the maximum.
    ///
    /// An event's charge is `rate` × its amount beyond what is left of `free` (used up in time
    /// order) + `fixed_fee` unless it is among the first `free_events`; an event with neither
    /// is free and owes no minimum. The sum is exact and rounded once.
    pub fn price_each_event(
        &self,
        amounts: &[Decimal],
        currency: Currency,
    ) -> Result<Vec<InvoiceLine>, Overflow> {
        let total = crate::money::checked_total(amounts.iter().copied()).ok_or(Overflow)?;
        let mut lines = self.price_with_events(total, Decimal::from(amounts.len()), currency)?;
        let ChargeModel::Percentage {
            rate,
            fixed_fee,
            free_events,
            min_per_event,
            max_per_event,
            ..
        } = &self.model
        else {
            return Ok(lines);
        };
        if min_per_event.is_none() && max_per_event.is_none() {
            return Ok(lines);
        }
        let free_events = free_events.unwrap_or_default();
        let mut free_left = self.free.max(Decimal::ZERO);
        let mut held = Decimal::ZERO;
        for (i, amount) in amounts.iter().enumerate() {
            let waived = free_left.min((*amount).max(Decimal::ZERO));
            free_left -= waived;
            let billable = *amount - waived;
            let fee = match fixed_fee {
                Some(f) if Decimal::from(i) >= free_events => *f,
                _ => Decimal::ZERO,
            };
            if billable.is_zero() && fee.is_zero() {
                continue;
            }
            let mut each = rate
                .checked_mul(billable)
                .and_then(|r| r.checked_add(fee))
                .ok_or(Overflow)?;
            if let Some(min) = min_per_event {
                each = each.max(*min);
            }
            if let Some(max) = max_per_event {
                each = each.min(*max);
            }
            held = held.checked_add(each).ok_or(Overflow)?;
        }
        let charged = crate::money::checked_total(
            lines
                .iter()
                .filter(|l| l.kind == LineKind::Usage)
                .map(|l| l.amount),
        )
        .ok_or(Overflow)?;
        let adjustment = currency.round(held).checked_sub(charged).ok_or(Overflow)?;
        if !adjustment.is_zero() {
            let bounds = [("minimum", min_per_event), ("maximum", max_per_event)]
                .iter()
                .filter_map(|(w, v)| v.map(|v| format!("{w} {}", v.normalize())))
                .collect::<Vec<_>>()
                .join(", ");
            let m = self.meter.as_str();
            lines.push(line(
                LineKind::Usage,
                m,
                None,
                Decimal::ONE,
                adjustment,
                format!("{m}: each event held to its {bounds}"),
                currency,
            )?);
        }
        Ok(lines)
    }

    /// The invoice lines this charge yields for a period's metered `quantity`.
    /// Always at least one line, so every charge of the plan is visible on the invoice.
    /// [`Overflow`] when quantity × price is beyond `Decimal`, never a panic.
    pub fn price(
        &self,
        quantity: Decimal,
        currency: Currency,
    ) -> Result<Vec<InvoiceLine>, Overflow> {
        self.price_with_events(quantity, Decimal::ZERO, currency)
    }

    /// [`Charge::price`], with the period's number of events for a per-event fee (the
    /// quantity of [`Charge::events_meter`]).
    pub fn price_with_events(
        &self,
        quantity: Decimal,
        events: Decimal,
        currency: Currency,
    ) -> Result<Vec<InvoiceLine>, Overflow> {
        let quantity = quantity.max(Decimal::ZERO);
        let free = self.free.max(Decimal::ZERO);
        let billable = (quantity - free).max(Decimal::ZERO);
        let m = self.meter.as_str();
        let mut lines = Vec::new();
        if free > Decimal::ZERO {
            lines.push(line(
                LineKind::FreeAllowance,
                m,
                None,
                quantity.min(free),
                Decimal::ZERO,
                format!("{m}: free allowance of {}", free.normalize()),
                currency,
            )?);
        }
        match &self.model {
            ChargeModel::Flat { amount } => {
                let due = if billable > Decimal::ZERO {
                    Decimal::ONE
                } else {
                    Decimal::ZERO
                };
                lines.push(line(
                    LineKind::Usage,
                    m,
                    None,
                    due,
                    *amount,
                    format!("{m}: flat fee"),
                    currency,
                )?);
            }
            ChargeModel::PerUnit { unit_price } => {
                lines.push(line(
                    LineKind::Usage,
                    m,
                    None,
                    billable,
                    *unit_price,
                    format!("{m}: per unit"),
                    currency,
                )?);
            }
            ChargeModel::Graduated { tiers } => {
                let steps: Vec<Step> = tiers
                    .iter()
                    .map(|t| Step {
                        up_to: t.up_to,
                        price: t.unit_price,
                        flat_fee: t.flat_fee,
                    })
                    .collect();
                let what = |i: usize, t: &Step, lower: Decimal| {
                    format!(
                        "{m}: tier {} ({} – {})",
                        i + 1,
                        lower.normalize(),
                        bound(t.up_to)
                    )
                };
                graduated(m, quantity, free, &steps, what, currency, &mut lines)?;
            }
            ChargeModel::GraduatedPercentage { tiers } => {
                let steps: Vec<Step> = tiers
                    .iter()
                    .map(|t| Step {
                        up_to: t.up_to,
                        price: t.rate,
                        flat_fee: t.flat_fee,
                    })
                    .collect();
                let what = |i: usize, t: &Step, lower: Decimal| {
                    let pct = (t.price * Decimal::ONE_HUNDRED).normalize();
                    format!(
                        "{m}: tier {} at {pct} % ({} – {})",
                        i + 1,
                        lower.normalize(),
                        bound(t.up_to)
                    )
                };
                graduated(m, quantity, free, &steps, what, currency, &mut lines)?;
            }
            ChargeModel::Volume { tiers } => {
                let idx = tiers
                    .iter()
                    .position(|t| t.up_to.is_none_or(|u| quantity <= u))
                    .unwrap_or(tiers.len().saturating_sub(1));
                if let Some(tier) = tiers.get(idx) {
                    lines.push(line(
                        LineKind::Usage,
                        m,
                        Some(idx as u32 + 1),
                        billable,
                        tier.unit_price,
                        format!("{m}: volume tier {} (up to {})", idx + 1, bound(tier.up_to)),
                        currency,
                    )?);
                    // The selected tier's flat fee, once, when any unit is billable.
                    if billable > Decimal::ZERO {
                        lines.extend(tier_fee(m, idx, tier.flat_fee, currency)?);
                    }
                }
            }
            ChargeModel::Percentage {
                rate,
                fixed_fee,
                free_events,
                ..
            } => {
                let pct = (*rate * Decimal::ONE_HUNDRED).normalize();
                lines.push(line(
                    LineKind::Usage,
                    m,
                    None,
                    billable,
                    *rate,
                    format!("{m}: {pct} % of the amount"),
                    currency,
                )?);
                if let Some(fee) = fixed_fee {
                    let free = free_events.unwrap_or_default().max(Decimal::ZERO);
                    let charged = (events.max(Decimal::ZERO) - free).max(Decimal::ZERO);
                    lines.push(line(
                        LineKind::Usage,
                        m,
                        None,
                        charged,
                        *fee,
                        format!("{m}: fixed fee per event"),
                        currency,
                    )?);
                }
            }
            ChargeModel::Dynamic {} => {
                lines.push(line(
                    LineKind::Usage,
                    m,
                    None,
                    billable,
                    Decimal::ONE,
                    format!("{m}: priced by each event"),
                    currency,
                )?);
            }
            ChargeModel::Package { size, price } => {
                let packages = if size.is_zero() {
                    Decimal::ZERO
                } else {
                    billable.checked_div(*size).ok_or(Overflow)?.ceil()
                };
                lines.push(line(
                    LineKind::Usage,
                    m,
                    None,
                    packages,
                    *price,
                    format!("{m}: packages of {}", size.normalize()),
                    currency,
                )?);
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    /// A plan is stored as JSON for the periods it priced (plan versions): it must read back
    /// as it was, an unbounded last tier and an absent commitment included.
    #[test]
    fn a_plan_reads_back_from_its_stored_json() {
        let plan = Plan {
            id: "growth".into(),
            name: "Growth".into(),
            version: "v".into(),
            currency: eur(),
            period: crate::period::PeriodRule::Month { anchor_day: 1 },
            base_fee: d("49.00"),
            tax: None,
            minimum_commitment: None,
            charges: vec![Charge {
                meter: "calls".into(),
                free: d("100"),
                model: ChargeModel::Graduated {
                    tiers: tiers(&[(Some("1000"), "0.01"), (None, "0.005")]),
                },
            }],
            quotas: vec![],
            rate_limit: None,
            net_days: None,
            apis: None,
            features: Vec::new(),
            self_serve: false,
        };
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"up_to\":null"), "{json}");
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
        let mut committed = plan.clone();
        committed.minimum_commitment = Some(d("100"));
        let json = serde_json::to_string(&committed).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), committed);
    }

    fn tiers(spec: &[(Option<&str>, &str)]) -> Vec<Tier> {
        spec.iter()
            .map(|(u, p)| Tier {
                up_to: u.map(d),
                unit_price: d(p),
                flat_fee: None,
            })
            .collect()
    }

    fn charge(free: &str, model: ChargeModel) -> Charge {
        Charge {
            meter: "calls".into(),
            free: d(free),
            model,
        }
    }

    fn amounts(lines: &[InvoiceLine]) -> Vec<String> {
        lines.iter().map(|l| l.amount.to_string()).collect()
    }

    fn total(lines: &[InvoiceLine]) -> Decimal {
        lines.iter().map(|l| l.amount).sum()
    }

    #[test]
    fn a_quantity_times_price_beyond_decimal_is_an_overflow_not_a_panic() {
        let huge = Decimal::MAX;
        let per_unit = charge(
            "0",
            ChargeModel::PerUnit {
                unit_price: d("1000000000000000"),
            },
        );
        assert_eq!(per_unit.price(huge, eur()), Err(Overflow));
        let package = charge(
            "0",
            ChargeModel::Package {
                size: d("0.000000001"),
                price: d("1"),
            },
        );
        assert_eq!(package.price(huge, eur()), Err(Overflow));
        // The same charge at a real quantity prices as always.
        assert_eq!(
            amounts(&per_unit.price(d("2"), eur()).unwrap()),
            ["2000000000000000.00"]
        );
    }

    #[test]
    fn per_unit_1500_calls_at_0_002_is_3_00() {
        let c = charge(
            "0",
            ChargeModel::PerUnit {
                unit_price: d("0.002"),
            },
        );
        assert_eq!(amounts(&c.price(d("1500"), eur()).unwrap()), ["3.00"]);
    }

    #[test]
    fn per_unit_rounds_half_even_once_per_line_0_125_to_0_12() {
        let c = charge(
            "0",
            ChargeModel::PerUnit {
                unit_price: d("0.0005"),
            },
        );
        assert_eq!(amounts(&c.price(d("250"), eur()).unwrap()), ["0.12"]);
    }

    #[test]
    fn graduated_150k_calls_with_10k_free_tiers_100k_at_0_001_then_0_0006_is_120_00() {
        // Free: 10,000. Tier 1: 10,001–100,000 = 90,000 × 0.001 = 90.00.
        // Tier 2: 100,001–150,000 = 50,000 × 0.0006 = 30.00.
        let c = charge(
            "10000",
            ChargeModel::Graduated {
                tiers: tiers(&[(Some("100000"), "0.0010"), (None, "0.0006")]),
            },
        );
        let lines = c.price(d("150000"), eur()).unwrap();
        assert_eq!(amounts(&lines), ["0.00", "90.00", "30.00"]);
        assert_eq!(lines[1].quantity, d("90000"));
        assert_eq!(lines[2].quantity, d("50000"));
        assert_eq!(total(&lines), d("120.00"));
    }

    #[test]
    fn graduated_free_allowance_spanning_a_tier_boundary_5_free_tiers_3_at_1_then_2() {
        // 10 units, 5 free: tier 1 (0–3] is all free, tier 2 bills units 6–10 = 5 × 2 = 10.
        let c = charge(
            "5",
            ChargeModel::Graduated {
                tiers: tiers(&[(Some("3"), "1"), (None, "2")]),
            },
        );
        let lines = c.price(d("10"), eur()).unwrap();
        assert_eq!(total(&lines), d("10.00"));
        assert_eq!(lines.last().unwrap().tier, Some(2));
    }

    #[test]
    fn volume_150_units_tiers_100_at_1_then_0_5_prices_all_at_0_5_is_75_00() {
        let c = charge(
            "0",
            ChargeModel::Volume {
                tiers: tiers(&[(Some("100"), "1"), (None, "0.5")]),
            },
        );
        assert_eq!(amounts(&c.price(d("150"), eur()).unwrap()), ["75.00"]);
        assert_eq!(amounts(&c.price(d("100"), eur()).unwrap()), ["100.00"]);
    }

    #[test]
    fn package_of_1000_at_5_rounds_2001_calls_up_to_3_packages_15_00() {
        let c = charge(
            "0",
            ChargeModel::Package {
                size: d("1000"),
                price: d("5"),
            },
        );
        let lines = c.price(d("2001"), eur()).unwrap();
        assert_eq!(lines[0].quantity, d("3"));
        assert_eq!(amounts(&lines), ["15.00"]);
        assert_eq!(amounts(&c.price(d("2000"), eur()).unwrap()), ["10.00"]);
    }

    #[test]
    fn package_with_1000_free_and_1500_used_is_one_package() {
        let c = charge(
            "1000",
            ChargeModel::Package {
                size: d("1000"),
                price: d("5"),
            },
        );
        assert_eq!(total(&c.price(d("1500"), eur()).unwrap()), d("5.00"));
    }

    #[test]
    fn flat_25_is_due_only_beyond_the_free_allowance() {
        let c = charge("100", ChargeModel::Flat { amount: d("25") });
        assert_eq!(total(&c.price(d("100"), eur()).unwrap()), d("0.00"));
        assert_eq!(total(&c.price(d("101"), eur()).unwrap()), d("25.00"));
    }

    #[test]
    fn jpy_has_no_minor_unit_1001_units_at_0_5_yen_is_500() {
        let jpy = Currency::parse("JPY").unwrap();
        let c = charge(
            "0",
            ChargeModel::PerUnit {
                unit_price: d("0.5"),
            },
        );
        // 500.5 rounds half to even: 500.
        assert_eq!(amounts(&c.price(d("1001"), jpy).unwrap()), ["500"]);
    }

    // ---- worked examples from Lago's public documentation (getlago.com/docs, "Charge
    // models"), with their numbers, so our semantics match theirs ------------------------------

    #[test]
    fn lago_graduated_1_per_unit_for_100_then_0_50_for_100_then_0_10_at_250_units_is_155() {
        // Lago, "Graduated": "$1 per unit for the first 100 units, then $0.50 per unit for the
        // next 100 calls and finally, $0.10 for any additional unit."
        // 250 units: 100 × 1 + 100 × 0.50 + 50 × 0.10 = 155.00.
        let c = charge(
            "0",
            ChargeModel::Graduated {
                tiers: tiers(&[(Some("100"), "1"), (Some("200"), "0.50"), (None, "0.10")]),
            },
        );
        let lines = c.price(d("250"), usd()).unwrap();
        assert_eq!(amounts(&lines), ["100.00", "50.00", "5.00"]);
        assert_eq!(total(&lines), d("155.00"));
    }

    #[test]
    fn lago_volume_65_000_api_calls_in_the_third_tier_cost_49_with_its_flat_fee() {
        // Lago, "Volume": tiers 0–10,000 at $0.0010, 10,001–50,000 at $0.0008, 50,001–100,000
        // at $0.0006 with a $10 flat fee, then $0.0004: "65,000 API calls would cost
        // 65,000 x $0.0006 + $10 = $49".
        let mut t = tiers(&[
            (Some("10000"), "0.0010"),
            (Some("50000"), "0.0008"),
            (Some("100000"), "0.0006"),
            (None, "0.0004"),
        ]);
        t[2].flat_fee = Some(d("10"));
        let c = charge("0", ChargeModel::Volume { tiers: t });
        let lines = c.price(d("65000"), usd()).unwrap();
        assert_eq!(amounts(&lines), ["39.00", "10.00"]);
        assert_eq!((lines[0].tier, lines[1].tier), (Some(3), Some(3)));
        assert_eq!(lines[1].description, "calls: tier 3 flat fee");
        // Nothing billable, no flat fee.
        assert_eq!(amounts(&c.price(Decimal::ZERO, usd()).unwrap()), ["0.00"]);
    }

    fn percentage_tiers(spec: &[(Option<&str>, &str, Option<&str>)]) -> Vec<PercentageTier> {
        spec.iter()
            .map(|(u, r, f)| PercentageTier {
                up_to: u.map(d),
                rate: d(r),
                flat_fee: f.map(d),
            })
            .collect()
    }

    #[test]
    fn lago_graduated_percentage_5050_usd_of_payments_cost_591() {
        // Lago, "Graduated percentage": 0–1,000 at 1 % + $200, 1,001–10,000 at 2 % + $300,
        // beyond at 3 % + $400. "The total is 5,050 USD … Tier 3 is not reached, so its flat
        // fee is not included. The calculated fee is 591 USD": 10 + 200 + 81 + 300.
        let c = charge(
            "0",
            ChargeModel::GraduatedPercentage {
                tiers: percentage_tiers(&[
                    (Some("1000"), "0.01", Some("200")),
                    (Some("10000"), "0.02", Some("300")),
                    (None, "0.03", Some("400")),
                ]),
            },
        );
        let lines = c.price(d("5050"), usd()).unwrap();
        assert_eq!(amounts(&lines), ["10.00", "200.00", "81.00", "300.00"]);
        let total: Decimal = lines.iter().map(|l| l.amount).sum();
        assert_eq!(total, d("591.00"));
        assert_eq!(lines[2].description, "calls: tier 2 at 2 % (1000 – 10000)");
        // Lago's first transaction alone, $500: 500 × 1 % + $200 = $205.
        let first: Decimal = c
            .price(d("500"), usd())
            .unwrap()
            .iter()
            .map(|l| l.amount)
            .sum();
        assert_eq!(first, d("205.00"));
    }

    fn card_fees(free: &str, free_events: Option<&str>) -> Charge {
        charge(
            free,
            ChargeModel::Percentage {
                rate: d("0.029"),
                fixed_fee: Some(d("0.30")),
                events_meter: Some("card_payment_count".into()),
                free_events: free_events.map(d),
                min_per_event: None,
                max_per_event: None,
            },
        )
    }

    #[test]
    fn lago_percentage_2_percent_of_1000_usd_is_20() {
        // Lago, "Percentage rate model": 1,000 USD of transactions at 2 %, no fixed fee.
        let c = charge(
            "0",
            ChargeModel::Percentage {
                rate: d("0.02"),
                fixed_fee: None,
                events_meter: None,
                free_events: None,
                min_per_event: None,
                max_per_event: None,
            },
        );
        let lines = c.price(d("1000"), usd()).unwrap();
        assert_eq!(amounts(&lines), ["20.00"]);
        assert_eq!(lines[0].description, "calls: 2 % of the amount");
    }

    #[test]
    fn stripe_card_pricing_2_9_percent_plus_30_cents_per_payment() {
        // Stripe's online card pricing as Lago's template models it: 2.9 % + $0.30 per
        // payment. Three payments of $100, $250 and $50: 11.60 + 0.90 = $12.50.
        let lines = card_fees("0", None)
            .price_with_events(d("400"), d("3"), usd())
            .unwrap();
        assert_eq!(amounts(&lines), ["11.60", "0.90"]);
        // The first payment free of the fixed fee, the first $100 free of the rate.
        let lines = card_fees("100", Some("1"))
            .price_with_events(d("400"), d("3"), usd())
            .unwrap();
        assert_eq!(amounts(&lines), ["0.00", "8.70", "0.60"]);
        // More free events than events: no fee, never a negative one.
        let lines = card_fees("0", Some("5"))
            .price_with_events(d("400"), d("3"), usd())
            .unwrap();
        assert_eq!(amounts(&lines), ["11.60", "0.00"]);
    }

    #[test]
    fn lago_percentage_1_percent_plus_50_cents_held_between_1_and_5_dollars_per_transaction() {
        // Lago's per-transaction minimum and maximum: 1 % + $0.50, at least $1, at most $5. A
        // $20 transaction costs $1 (0.70 raised to the minimum), a $600 one $5 (6.50 lowered to
        // the maximum).
        let fees = |free: &str, free_events: Option<&str>| {
            charge(
                free,
                ChargeModel::Percentage {
                    rate: d("0.01"),
                    fixed_fee: Some(d("0.50")),
                    events_meter: None,
                    free_events: free_events.map(d),
                    min_per_event: Some(d("1")),
                    max_per_event: Some(d("5")),
                },
            )
        };
        let c = fees("0", None);
        assert!(c.prices_each_event());
        let each = |amounts: &[&str]| {
            let a: Vec<Decimal> = amounts.iter().map(|a| d(a)).collect();
            c.price_each_event(&a, usd()).unwrap()
        };
        assert_eq!(amounts(&each(&["20"])), ["0.20", "0.50", "0.30"]);
        assert_eq!(amounts(&each(&["600"])), ["6.00", "0.50", "-1.50"]);
        let both = each(&["20", "600"]);
        assert_eq!(amounts(&both), ["6.20", "1.00", "-1.20"]);
        assert_eq!(
            both[2].description,
            "calls: each event held to its minimum 1, maximum 5"
        );
        // Nothing to hold: no third line.
        assert_eq!(amounts(&each(&["200"])), ["2.00", "0.50"]);
        assert_eq!(amounts(&each(&[])), ["0.00", "0.00"]);
        // The first $100 free of the rate and the first event free of the fee: the $20 event
        // owes nothing (no minimum either), the $600 one 1 % of $520 + $0.50 = $5.70 → $5.
        let c = fees("100", Some("1"));
        let lines = c.price_each_event(&[d("20"), d("600")], usd()).unwrap();
        let total: Decimal = lines
            .iter()
            .filter(|l| l.kind == LineKind::Usage)
            .map(|l| l.amount)
            .sum();
        assert_eq!(total, d("5.00"), "{lines:?}");
    }

    #[test]
    fn a_dynamic_charge_sums_each_events_price_exactly_and_rounds_once() {
        // Three events priced 0.0042, 0.0131 and 1.2 by the model that served them: 1.2173,
        // rounded once on the line to 1.22; 0.1 + 0.2 stays 0.3.
        let c = charge("0", ChargeModel::Dynamic {});
        let lines = c
            .price(d("0.0042") + d("0.0131") + d("1.2"), usd())
            .unwrap();
        assert_eq!(amounts(&lines), ["1.22"]);
        assert_eq!(lines[0].quantity, d("1.2173"));
        assert_eq!(
            amounts(&c.price(d("0.1") + d("0.2"), usd()).unwrap()),
            ["0.30"]
        );
        // `free` is an amount given away first.
        let c = charge("1", ChargeModel::Dynamic {});
        assert_eq!(amounts(&c.price(d("1.2173"), usd()).unwrap())[1], "0.22");
    }

    #[test]
    fn a_graduated_tier_fee_is_due_once_billable_units_enter_the_tier() {
        let mut t = tiers(&[(Some("100"), "1"), (Some("200"), "0.5"), (None, "0.1")]);
        t[0].flat_fee = Some(d("5"));
        t[1].flat_fee = Some(d("7"));
        t[2].flat_fee = Some(d("9"));
        // 150 units: tiers 1 and 2 entered.
        let c = charge("0", ChargeModel::Graduated { tiers: t.clone() });
        assert_eq!(
            amounts(&c.price(d("150"), usd()).unwrap()),
            ["100.00", "5.00", "25.00", "7.00"]
        );
        // 120 free: tier 1 holds no billable unit, so its fee is not due.
        let c = charge("120", ChargeModel::Graduated { tiers: t });
        let lines = c.price(d("150"), usd()).unwrap();
        assert_eq!(amounts(&lines), ["0.00", "15.00", "7.00"]);
    }

    #[test]
    fn lago_package_of_100_at_5_with_100_free_bills_201_units_10() {
        // Lago, "Package": "$5 per 100 units and offer the first 100 units. In this example, 201
        // units would cost $0 (first 100 units) + $5 (next 100 units) + $5 (last unit) = $10."
        let c = charge(
            "100",
            ChargeModel::Package {
                size: d("100"),
                price: d("5"),
            },
        );
        let lines = c.price(d("201"), usd()).unwrap();
        assert_eq!(total(&lines), d("10.00"));
        assert_eq!(lines.last().unwrap().quantity, d("2"));
    }

    #[test]
    fn graduated_15_000_units_at_0_10_then_0_05_then_0_01_is_600() {
        // The graduated example of Zuplo's pricing-model docs (tiers 0–1,000 at $0.10,
        // 1,001–10,000 at $0.05, then $0.01): 100 + 450 + 50 = $600; volume pricing of the
        // same 15,000 units is 15,000 × $0.01 = $150.
        let t = tiers(&[
            (Some("1000"), "0.10"),
            (Some("10000"), "0.05"),
            (None, "0.01"),
        ]);
        let g = charge("0", ChargeModel::Graduated { tiers: t.clone() });
        assert_eq!(total(&g.price(d("15000"), usd()).unwrap()), d("600.00"));
        let v = charge("0", ChargeModel::Volume { tiers: t });
        assert_eq!(total(&v.price(d("15000"), usd()).unwrap()), d("150.00"));
    }

    #[test]
    fn kwd_keeps_three_decimals_1234_units_at_0_0015_is_1_851() {
        let kwd = Currency::parse("KWD").unwrap();
        let c = charge(
            "0",
            ChargeModel::PerUnit {
                unit_price: d("0.0015"),
            },
        );
        assert_eq!(amounts(&c.price(d("1234"), kwd).unwrap()), ["1.851"]);
    }

    #[test]
    fn zero_usage_shows_the_charge_with_a_zero_amount() {
        let c = charge(
            "0",
            ChargeModel::Graduated {
                tiers: tiers(&[(Some("10"), "1"), (None, "2")]),
            },
        );
        let lines = c.price(Decimal::ZERO, eur()).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].amount, d("0.00"));
    }
}
