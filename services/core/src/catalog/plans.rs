//! `[[plan]]`: periods, taxes, charges (models and tiers), quotas and rate limits.

use std::collections::HashSet;
use std::ops::Range;

use rust_decimal::Decimal;
use toml::Spanned;

use crate::catalog::Api;
use crate::meter::Meter;
use crate::money::Currency;
use crate::period::PeriodRule;
use crate::pricing::{
    ApiGrant, Charge, ChargeModel, PercentageTier, Plan, Quota, QuotaKind, RateLimit, TaxRate, Tier,
};

use super::raw::*;
use super::short_hash;
use super::source::Source;

pub(super) fn validate_plans(
    src: &mut Source,
    raw: &[RawPlan],
    meters: &[Meter],
    apis: &[Api],
) -> Vec<Plan> {
    let meter_names: HashSet<&str> = meters.iter().map(|m| m.name.as_str()).collect();
    let mut plans = Vec::new();
    let mut seen = HashSet::new();
    for p in raw {
        let path = format!("plan[{}]", p.id.get_ref());
        src.name(&p.id, &format!("{path}.id"));
        if !seen.insert(p.id.get_ref().clone()) {
            src.issue(p.id.span(), format!("{path}.id"), "duplicate plan id");
        }
        let currency = Currency::parse(p.currency.get_ref());
        if currency.is_none() {
            src.issue(
                p.currency.span(),
                format!("{path}.currency"),
                format!(
                    "{:?} is not an ISO 4217 code Péage knows",
                    p.currency.get_ref()
                ),
            );
        }
        let period = match &p.period {
            None => Some(PeriodRule::Month { anchor_day: 1 }),
            Some(sp) => validate_period(src, sp, &path),
        };
        let base_fee = p.base_fee.as_ref().map_or(Some(Decimal::ZERO), |b| {
            src.decimal(b, &format!("{path}.base_fee"))
        });
        let tax = p.tax.as_ref().and_then(|t| {
            let rate = src.decimal(&t.rate, &format!("{path}.tax.rate"))?;
            if rate > Decimal::ONE {
                src.issue(
                    t.rate.span(),
                    format!("{path}.tax.rate"),
                    "a rate is a fraction: 0.20 for 20 %",
                );
                return None;
            }
            Some(TaxRate {
                rate,
                label: t.label.clone(),
            })
        });
        let minimum_commitment = p
            .minimum_commitment
            .as_ref()
            .and_then(|c| src.decimal(c, &format!("{path}.minimum_commitment")));
        let mut charges = Vec::new();
        for (i, c) in p.charges.iter().enumerate() {
            let cpath = format!("{path}.charges[{i}]");
            let c_ref = c.get_ref();
            if !meter_names.contains(c_ref.meter.get_ref().as_str()) {
                src.issue(
                    c_ref.meter.span(),
                    format!("{cpath}.meter"),
                    format!("no meter named {:?}", c_ref.meter.get_ref()),
                );
            }
            let dynamic_on = |m: &Meter| m.aggregation != crate::meter::Aggregation::Sum;
            if c_ref.model.get_ref() == "dynamic"
                && meters
                    .iter()
                    .find(|m| &m.name == c_ref.meter.get_ref())
                    .is_some_and(dynamic_on)
            {
                src.issue(
                    c_ref.meter.span(),
                    format!("{cpath}.meter"),
                    "a dynamic charge sums the prices its events carry: its meter must be a sum (e.g. value = \"price\")",
                );
            }
            if let Some(model) = validate_model(src, c, &cpath)
                .filter(|m| percentage_meters(src, m, c_ref, meters, &cpath))
            {
                let free = c_ref.free.as_ref().map_or(Some(Decimal::ZERO), |f| {
                    src.decimal(f, &format!("{cpath}.free"))
                });
                charges.push(Charge {
                    meter: c_ref.meter.get_ref().clone(),
                    free: free.unwrap_or_default(),
                    model,
                });
            }
        }
        let mut quotas = Vec::new();
        for (i, q) in p.quotas.iter().enumerate() {
            let qpath = format!("{path}.quotas[{i}]");
            match meters.iter().find(|m| &m.name == q.meter.get_ref()) {
                None => src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    format!("no meter named {:?}", q.meter.get_ref()),
                ),
                Some(m) if m.events.is_some() => src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    format!(
                        "meter {:?} reads usage events, so it cannot carry a quota: gateways enforce quotas on calls",
                        m.name
                    ),
                ),
                // A gateway spends a quota call by call, so it must be additive.
                Some(m) if !m.quotable() => src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    format!(
                        "meter {:?} cannot carry a quota: only count and sum meters can (it is {:?} of {:?})",
                        m.name, m.aggregation, m.field
                    ),
                ),
                // Refused calls give back what they took: a quota counts served calls.
                Some(m) if m.refusals != crate::meter::Refusals::Exclude => src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    format!(
                        "meter {:?} counts refused calls, so it cannot carry a quota",
                        m.name
                    ),
                ),
                Some(_) => {}
            }
            if p.quotas[..i]
                .iter()
                .any(|o| o.meter.get_ref() == q.meter.get_ref())
            {
                src.issue(
                    q.meter.span(),
                    format!("{qpath}.meter"),
                    "a plan has at most one quota per meter",
                );
            }
            let kind = match q.kind.get_ref().as_str() {
                "hard" => QuotaKind::Hard,
                "soft" => QuotaKind::Soft,
                other => {
                    src.issue(
                        q.kind.span(),
                        format!("{qpath}.kind"),
                        format!("{other:?} is not one of hard, soft"),
                    );
                    continue;
                }
            };
            let limit = src.decimal(&q.limit, &format!("{qpath}.limit"));
            if limit.is_some_and(|l| l.is_zero()) {
                src.issue(
                    q.limit.span(),
                    format!("{qpath}.limit"),
                    "a quota limit must be above 0",
                );
                continue;
            }
            let near_limit = match &q.near_limit {
                None => None,
                Some(n) => {
                    let field = format!("{qpath}.near_limit");
                    match src.decimal(n, &field) {
                        Some(f) if f > Decimal::ZERO && f < Decimal::ONE => Some(f),
                        Some(f) => {
                            src.issue(
                                n.span(),
                                field,
                                format!("near_limit is a fraction of the limit, above 0 and below 1, not {f}"),
                            );
                            continue;
                        }
                        None => continue,
                    }
                }
            };
            if let Some(limit) = limit {
                quotas.push(Quota {
                    meter: q.meter.get_ref().clone(),
                    limit,
                    kind,
                    shadow: q.shadow,
                    near_limit,
                });
            }
        }
        let rate_limit = p.rate_limit.as_ref().and_then(|r| {
            let raw = r.get_ref();
            if raw.per_second == 0 || raw.burst == 0 {
                src.issue(
                    r.span(),
                    format!("{path}.rate_limit"),
                    "per_second and burst must both be at least 1",
                );
                return None;
            }
            Some(RateLimit {
                per_second: raw.per_second,
                burst: raw.burst,
                shadow: raw.shadow,
            })
        });
        let net_days = p.net_days.as_ref().and_then(|n| {
            let days = *n.get_ref();
            if days > i64::from(crate::payment::MAX_NET_DAYS) || days < 0 {
                src.issue(
                    n.span(),
                    format!("{path}.net_days"),
                    format!(
                        "payment terms are 0 to {} days after finalization",
                        crate::payment::MAX_NET_DAYS
                    ),
                );
                return None;
            }
            u32::try_from(days).ok()
        });
        let grants = p
            .apis
            .as_ref()
            .map(|g| validate_grants(src, g.get_ref(), apis, &path));
        let features = validate_features(src, &p.features, &path);
        let (Some(currency), Some(period), Some(base_fee)) = (currency, period, base_fee) else {
            continue;
        };
        let mut plan = Plan {
            id: p.id.get_ref().clone(),
            name: p.name.clone().unwrap_or_else(|| p.id.get_ref().clone()),
            version: String::new(),
            currency,
            period,
            base_fee,
            tax,
            minimum_commitment,
            charges,
            quotas,
            rate_limit,
            net_days,
            apis: grants,
            features,
            self_serve: p.self_serve,
        };
        plan.version = short_hash(serde_json::to_string(&plan).unwrap_or_default().as_bytes());
        plans.push(plan);
    }
    plans
}

/// `apis = [{ api, versions?, operations? }]`: each API and version must be the catalog's, and
/// an operation one its versions declare (when they declare any).
fn validate_grants(
    src: &mut Source,
    raw: &[RawApiGrant],
    apis: &[Api],
    path: &str,
) -> Vec<ApiGrant> {
    let mut out: Vec<ApiGrant> = Vec::new();
    for (i, g) in raw.iter().enumerate() {
        let at = format!("{path}.apis[{i}]");
        if raw[..i].iter().any(|x| x.api.get_ref() == g.api.get_ref()) {
            src.issue(
                g.api.span(),
                format!("{at}.api"),
                format!(
                    "{:?} is granted twice: list its versions and operations in one entry",
                    g.api.get_ref()
                ),
            );
            continue;
        }
        let Some(api) = apis.iter().find(|a| &a.name == g.api.get_ref()) else {
            let names: Vec<&str> = apis.iter().map(|a| a.name.as_str()).collect();
            src.issue(
                g.api.span(),
                format!("{at}.api"),
                format!(
                    "no API {:?} in the catalog (its APIs: {})",
                    g.api.get_ref(),
                    names.join(", ")
                ),
            );
            continue;
        };
        let mut ok = true;
        for v in &g.versions {
            if !api.versions.iter().any(|x| &x.id == v.get_ref()) {
                src.issue(
                    v.span(),
                    format!("{at}.versions"),
                    format!("{} has no version {:?}", api.name, v.get_ref()),
                );
                ok = false;
            }
        }
        let covered: Vec<_> = api
            .versions
            .iter()
            .filter(|x| g.versions.is_empty() || g.versions.iter().any(|v| v.get_ref() == &x.id))
            .collect();
        let declared = covered.iter().all(|x| !x.operations.is_empty());
        for o in &g.operations {
            let name = o.get_ref();
            let known = covered
                .iter()
                .any(|x| x.operations.iter().any(|op| &op.name == name));
            if name.trim().is_empty() || (declared && !known) {
                src.issue(
                    o.span(),
                    format!("{at}.operations"),
                    format!("{name:?} is not an operation of the versions granted"),
                );
                ok = false;
            }
        }
        if ok {
            out.push(ApiGrant {
                api: api.name.clone(),
                versions: g.versions.iter().map(|v| v.get_ref().clone()).collect(),
                operations: g.operations.iter().map(|o| o.get_ref().clone()).collect(),
            });
        }
    }
    out
}

/// `features = ["sso", …]`: names of lowercase letters, digits, `_`, `-` and `.`, each once.
fn validate_features(src: &mut Source, raw: &[Spanned<String>], path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in raw {
        let name = f.get_ref();
        let fine = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
        if !fine {
            src.issue(
                f.span(),
                format!("{path}.features"),
                format!("{name:?}: a feature is 1 to 64 lowercase letters, digits, _, - or ."),
            );
        } else if out.contains(name) {
            src.issue(
                f.span(),
                format!("{path}.features"),
                format!("{name:?} is listed twice"),
            );
        } else {
            out.push(name.clone());
        }
    }
    out
}

fn validate_period(src: &mut Source, sp: &Spanned<RawPeriod>, path: &str) -> Option<PeriodRule> {
    let raw = sp.get_ref();
    let day = raw.anchor_day.as_ref().map_or(1, |d| *d.get_ref());
    if !(1..=31).contains(&day) {
        src.issue(
            raw.anchor_day.as_ref().map_or(sp.span(), |d| d.span()),
            format!("{path}.period.anchor_day"),
            "must be 1–31 (29–31 fall back to the month's last day)",
        );
        return None;
    }
    match raw.every.get_ref().as_str() {
        "month" => {
            if let Some(m) = &raw.anchor_month {
                src.issue(
                    m.span(),
                    format!("{path}.period.anchor_month"),
                    "only yearly periods take an anchor month",
                );
                return None;
            }
            Some(PeriodRule::Month { anchor_day: day })
        }
        "year" => {
            let month = raw.anchor_month.as_ref().map_or(1, |m| *m.get_ref());
            if !(1..=12).contains(&month) {
                src.issue(
                    raw.anchor_month.as_ref().map_or(sp.span(), |m| m.span()),
                    format!("{path}.period.anchor_month"),
                    "must be 1–12",
                );
                return None;
            }
            Some(PeriodRule::Year {
                anchor_month: month,
                anchor_day: day,
            })
        }
        other => {
            src.issue(
                raw.every.span(),
                format!("{path}.period.every"),
                format!("{other:?} is not one of month, year"),
            );
            None
        }
    }
}

fn validate_model(src: &mut Source, c: &Spanned<RawCharge>, cpath: &str) -> Option<ChargeModel> {
    let r = c.get_ref();
    let need = |src: &mut Source, v: &Option<SNum>, key: &str| -> Option<Decimal> {
        match v {
            Some(n) => src.decimal(n, &format!("{cpath}.{key}")),
            None => {
                src.issue(
                    r.model.span(),
                    format!("{cpath}.{key}"),
                    format!("model {:?} needs {key}", r.model.get_ref()),
                );
                None
            }
        }
    };
    let model = r.model.get_ref().as_str();
    // Keys that belong to another model are mistakes, not silently ignored.
    let allowed: &[&str] = match model {
        "flat" => &["amount"],
        "per_unit" => &["unit_price"],
        "graduated" | "volume" | "graduated_percentage" => &["tiers"],
        "package" => &["size", "price"],
        "dynamic" => &[],
        "percentage" => &[
            "rate",
            "fixed_fee",
            "events_meter",
            "free_events",
            "min_per_event",
            "max_per_event",
        ],
        other => {
            src.issue(
                r.model.span(),
                format!("{cpath}.model"),
                format!("{other:?} is not one of flat, per_unit, graduated, volume, graduated_percentage, percentage, package, dynamic"),
            );
            return None;
        }
    };
    for (key, present) in [
        ("amount", r.amount.is_some()),
        ("unit_price", r.unit_price.is_some()),
        ("tiers", r.tiers.is_some()),
        ("size", r.size.is_some()),
        ("price", r.price.is_some()),
        ("rate", r.rate.is_some()),
        ("fixed_fee", r.fixed_fee.is_some()),
        ("events_meter", r.events_meter.is_some()),
        ("free_events", r.free_events.is_some()),
        ("min_per_event", r.min_per_event.is_some()),
        ("max_per_event", r.max_per_event.is_some()),
    ] {
        if present && !allowed.contains(&key) {
            src.issue(
                c.span(),
                format!("{cpath}.{key}"),
                format!("model {model:?} does not take {key}"),
            );
        }
    }
    match model {
        "flat" => Some(ChargeModel::Flat {
            amount: need(src, &r.amount, "amount")?,
        }),
        "per_unit" => Some(ChargeModel::PerUnit {
            unit_price: need(src, &r.unit_price, "unit_price")?,
        }),
        "dynamic" => Some(ChargeModel::Dynamic {}),
        "percentage" => {
            let rate = need(src, &r.rate, "rate")?;
            if rate > Decimal::ONE {
                src.issue(
                    r.rate.as_ref().map_or(c.span(), |s| s.span()),
                    format!("{cpath}.rate"),
                    "a rate is a fraction: 0.014 for 1.4 %",
                );
                return None;
            }
            let opt = |src: &mut Source, v: &Option<SNum>, key: &str| match v {
                None => Some(None),
                Some(n) => src.decimal(n, &format!("{cpath}.{key}")).map(Some),
            };
            let fixed_fee = opt(src, &r.fixed_fee, "fixed_fee")?;
            let free_events = opt(src, &r.free_events, "free_events")?;
            let min_per_event = opt(src, &r.min_per_event, "min_per_event")?;
            let max_per_event = opt(src, &r.max_per_event, "max_per_event")?;
            let each_event = min_per_event.is_some() || max_per_event.is_some();
            if let (Some(min), Some(max)) = (min_per_event, max_per_event) {
                if min > max {
                    src.issue(
                        c.span(),
                        format!("{cpath}.min_per_event"),
                        format!("the minimum per event ({min}) is above the maximum ({max})"),
                    );
                    return None;
                }
            }
            if each_event && r.events_meter.is_some() {
                src.issue(
                    c.span(),
                    format!("{cpath}.events_meter"),
                    "with a per-event minimum or maximum, each event's amount is read: the fee counts those events, and events_meter is not used",
                );
                return None;
            }
            // A per-event fee needs its events counted, and counted events need a fee (unless
            // each event is read).
            let pair = [
                (
                    "fixed_fee",
                    fixed_fee.is_some(),
                    "events_meter",
                    r.events_meter.is_some(),
                ),
                (
                    "events_meter",
                    r.events_meter.is_some(),
                    "fixed_fee",
                    fixed_fee.is_some(),
                ),
                (
                    "free_events",
                    free_events.is_some(),
                    "fixed_fee",
                    fixed_fee.is_some(),
                ),
            ];
            for (key, given, needs, has) in pair {
                if given && !has && !(each_event && needs == "events_meter") {
                    src.issue(
                        c.span(),
                        format!("{cpath}.{needs}"),
                        format!("{key} needs {needs} (a fee per event, and the count meter of those events)"),
                    );
                    return None;
                }
            }
            Some(ChargeModel::Percentage {
                rate,
                fixed_fee,
                events_meter: r.events_meter.as_ref().map(|m| m.get_ref().clone()),
                free_events,
                min_per_event,
                max_per_event,
            })
        }
        "package" => {
            let size = need(src, &r.size, "size")?;
            let price = need(src, &r.price, "price")?;
            if size.is_zero() {
                src.issue(
                    r.size.as_ref().map_or(c.span(), |s| s.span()),
                    format!("{cpath}.size"),
                    "must be above zero",
                );
                return None;
            }
            Some(ChargeModel::Package { size, price })
        }
        _ => {
            let Some(raw_tiers) = &r.tiers else {
                src.issue(
                    r.model.span(),
                    format!("{cpath}.tiers"),
                    format!("model {model:?} needs tiers"),
                );
                return None;
            };
            let percentage = model == "graduated_percentage";
            let tiers = validate_tiers(src, raw_tiers, cpath, c.span(), percentage)?;
            Some(match model {
                "graduated" => ChargeModel::Graduated { tiers },
                "volume" => ChargeModel::Volume { tiers },
                _ => ChargeModel::GraduatedPercentage {
                    tiers: tiers
                        .into_iter()
                        .map(|t| PercentageTier {
                            up_to: t.up_to,
                            rate: t.unit_price,
                            flat_fee: t.flat_fee,
                        })
                        .collect(),
                },
            })
        }
    }
}

fn validate_tiers(
    src: &mut Source,
    raw: &[RawTier],
    cpath: &str,
    span: Range<usize>,
    percentage: bool,
) -> Option<Vec<Tier>> {
    if raw.is_empty() {
        src.issue(span, format!("{cpath}.tiers"), "needs at least one tier");
        return None;
    }
    let mut tiers = Vec::new();
    let mut previous = Decimal::ZERO;
    for (i, t) in raw.iter().enumerate() {
        let tpath = format!("{cpath}.tiers[{i}]");
        let last = i + 1 == raw.len();
        let up_to = match t.up_to.get_ref() {
            RawNumber::Str(s) if s == "inf" => {
                if !last {
                    src.issue(
                        t.up_to.span(),
                        format!("{tpath}.up_to"),
                        "only the last tier can be \"inf\"",
                    );
                    return None;
                }
                None
            }
            _ => {
                let b = src.decimal(&t.up_to, &format!("{tpath}.up_to"))?;
                if b <= previous {
                    src.issue(
                        t.up_to.span(),
                        format!("{tpath}.up_to"),
                        format!("must be above the previous tier's bound ({previous})"),
                    );
                    return None;
                }
                if last {
                    src.issue(
                        t.up_to.span(),
                        format!("{tpath}.up_to"),
                        "the last tier must be up_to = \"inf\", so every unit has a price",
                    );
                    return None;
                }
                previous = b;
                Some(b)
            }
        };
        // A tier prices units (`unit_price`), or, for graduated_percentage, takes a share of
        // an amount (`rate`, a fraction from 0 to 1); the other key is a mistake.
        let (key, given, other, wrong) = if percentage {
            ("rate", &t.rate, "unit_price", &t.unit_price)
        } else {
            ("unit_price", &t.unit_price, "rate", &t.rate)
        };
        if let Some(w) = wrong {
            src.issue(
                w.span(),
                format!("{tpath}.{other}"),
                format!("a tier of this model takes {key}, not {other}"),
            );
            return None;
        }
        let Some(given) = given else {
            src.issue(
                span.clone(),
                format!("{tpath}.{key}"),
                format!("a tier needs {key}"),
            );
            return None;
        };
        let unit_price = src.decimal(given, &format!("{tpath}.{key}"))?;
        if percentage && unit_price > Decimal::ONE {
            src.issue(
                given.span(),
                format!("{tpath}.rate"),
                "a rate is a fraction: 0.014 for 1.4 %",
            );
            return None;
        }
        let flat_fee = match &t.flat_fee {
            None => None,
            Some(f) => Some(src.decimal(f, &format!("{tpath}.flat_fee"))?),
        };
        tiers.push(Tier {
            up_to,
            unit_price,
            flat_fee,
        });
    }
    Some(tiers)
}

/// A percentage charge's fee per event counts the events of a `count` meter, and neither meter
/// may be grouped (a count per group would be needed). False after an issue.
fn percentage_meters(
    src: &mut Source,
    model: &ChargeModel,
    raw: &RawCharge,
    meters: &[Meter],
    cpath: &str,
) -> bool {
    let each_event = matches!(
        model,
        ChargeModel::Percentage { min_per_event, max_per_event, .. }
            if min_per_event.is_some() || max_per_event.is_some()
    );
    let priced = meters.iter().find(|m| &m.name == raw.meter.get_ref());
    if let Some(m) = priced.filter(|_| each_event) {
        let readable = m.aggregation == crate::meter::Aggregation::Sum
            && m.events.as_ref().is_some_and(|e| e.group_by.is_empty());
        if !readable {
            src.issue(
                raw.meter.span(),
                format!("{cpath}.meter"),
                format!(
                    "a per-event minimum or maximum reads each event's amount: meter {:?} must be an ungrouped sum over usage events",
                    m.name
                ),
            );
            return false;
        }
    }
    let (
        ChargeModel::Percentage {
            events_meter: Some(events),
            ..
        },
        Some(span),
    ) = (model, raw.events_meter.as_ref().map(|m| m.span()))
    else {
        return true;
    };
    let find = |name: &str| meters.iter().find(|m| m.name == name);
    let grouped = |m: &Meter| {
        !m.group_by.is_empty() || m.events.as_ref().is_some_and(|e| !e.group_by.is_empty())
    };
    let why = match find(events) {
        None => Some(format!("no meter named {events:?}")),
        Some(m) if m.aggregation != crate::meter::Aggregation::Count => Some(format!(
            "meter {events:?} must be a count of the events the fee is per"
        )),
        Some(m) if grouped(m) => Some(format!(
            "meter {events:?} is grouped; a fee per event needs one count"
        )),
        Some(_) if find(raw.meter.get_ref()).is_some_and(grouped) => Some(format!(
            "meter {:?} is grouped; a percentage with a fee per event needs ungrouped meters",
            raw.meter.get_ref()
        )),
        Some(_) => None,
    };
    match why {
        Some(why) => {
            src.issue(span, format!("{cpath}.events_meter"), why);
            false
        }
        None => true,
    }
}
