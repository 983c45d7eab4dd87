//! Plan changes, now or scheduled (docs/pricing.md, "Changing a partner's plan"): a change that
//! keeps the currency and the billing period may happen at any time (the period is cut there
//! and each part priced by its plan); one that changes either happens only where a period of
//! the current plan ends and one of the new plan starts, so every instant is billed once, in
//! one currency per invoice. A pending change can be cancelled until it takes effect; billing
//! applies due changes every second, at their time (late, they still take effect at `at`).

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use peage_billing_store::{Partner, PlanChange, PlanChangeStatus, Subscription};
use peage_core::ids::PlanChangeId;
use peage_core::period::{first_shared_boundary, start_of_day};
use peage_core::pricing::Plan;
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;
use super::invoicing::{partner_time_zone, Invoicing};
use super::principal::Principal;

/// How far ahead a change of currency or billing period looks for a boundary both plans share.
const HORIZON_YEARS: u32 = 10;

/// When a plan change takes effect, as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAt {
    Now,
    /// When the partner's current billing period ends.
    NextPeriod,
    /// The start of that day in the partner's billing time zone.
    Date(NaiveDate),
    At(DateTime<Utc>),
}

impl ChangeAt {
    /// `now`, `next_period`, a date (`2027-01-01`) or an RFC 3339 time.
    pub fn parse(s: &str) -> Result<ChangeAt, ServiceError> {
        match s {
            "now" => Ok(ChangeAt::Now),
            "next_period" => Ok(ChangeAt::NextPeriod),
            _ => {
                if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                    return Ok(ChangeAt::Date(d));
                }
                DateTime::parse_from_rfc3339(s)
                    .map(|t| ChangeAt::At(t.with_timezone(&Utc)))
                    .map_err(|_| {
                        ServiceError::Invalid(format!(
                            "at must be now, next_period, a date (2027-01-01) or an RFC 3339 time, not {s:?}"
                        ))
                    })
            }
        }
    }
}

/// What a plan change request did.
#[derive(Debug, Clone)]
pub enum SubscriptionOutcome {
    /// The partner is on that plan version already (nothing pending changed either).
    Unchanged(Partner),
    /// Moved now; a change that was pending is cancelled.
    Changed {
        before: Partner,
        after: Partner,
        cancelled: Option<PlanChange>,
    },
    /// Recorded for later; it replaced the one pending, if any.
    Scheduled {
        partner: Partner,
        change: PlanChange,
        replaced: Option<PlanChange>,
    },
}

/// A partner and the plan change waiting for them, if any.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartnerView {
    #[serde(flatten)]
    pub partner: Partner,
    /// A scheduled plan change not yet in effect (cancel it with
    /// `DELETE /v1/partners/{id}/plan-changes/{change_id}`).
    pub pending_change: Option<PlanChange>,
}

/// A partner's plan changes, the latest scheduled first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanChangeList {
    pub plan_changes: Vec<PlanChange>,
}

/// Why a move from `from` to `to` at `t` would leave time billed twice or not at all, if it
/// would: a change of currency or billing period happens only where a period of `from` ends
/// and one of `to` starts.
fn refuse_terms(
    from: &Plan,
    to: &Plan,
    tz: Tz,
    t: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), ServiceError> {
    if from.currency == to.currency && from.period == to.period {
        return Ok(());
    }
    if from.period.starts_at(tz, t) && to.period.starts_at(tz, t) {
        return Ok(());
    }
    let terms = |p: &Plan| format!("{} {}", p.currency.code(), p.period.describe());
    let why = format!(
        "plan {:?} bills in {} and plan {:?} in {}: a change of currency or billing period \
         takes effect where a billing period of both plans starts, never within one",
        from.id,
        terms(from),
        to.id,
        terms(to)
    );
    let next_end = from.period.containing_in(tz, now).end;
    Err(ServiceError::WrongState(
        match first_shared_boundary(&from.period, &to.period, tz, now, HORIZON_YEARS) {
            Some(b) if b == next_end => format!(
                "{why}. Schedule it for the end of this period: at next_period ({})",
                b.to_rfc3339()
            ),
            Some(b) => format!(
                "{why}. The first boundary both plans share is {}: schedule it at {:?}",
                b.to_rfc3339(),
                b.to_rfc3339()
            ),
            None => format!(
                "{why}, and their periods do not meet within {HORIZON_YEARS} years \
                 ({:?} and {:?} in {tz}): choose a plan whose periods start where this one's end",
                from.period, to.period
            ),
        },
    ))
}

impl Invoicing {
    /// The instant `at` names for `partner` (on `from`), checked for a move to `to`.
    async fn change_time(
        &self,
        partner: &Partner,
        from: &Plan,
        to: &Plan,
        at: ChangeAt,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, ServiceError> {
        let tz = partner_time_zone(self.store.as_ref(), &partner.id).await?;
        let t = match at {
            ChangeAt::Now => now,
            ChangeAt::NextPeriod => from.period.containing_in(tz, now).end,
            ChangeAt::Date(d) => start_of_day(tz, d),
            ChangeAt::At(t) => t,
        };
        if at != ChangeAt::Now && t <= now {
            return Err(ServiceError::Invalid(format!(
                "at {} is not in the future: use \"now\" to change the plan at once",
                t.to_rfc3339()
            )));
        }
        refuse_terms(from, to, tz, t, now)?;
        Ok(t)
    }

    /// When a move of `partner` to the catalog's `plan` asked for `at` would take effect, or
    /// why it would be refused (a dry run of [`Invoicing::change_subscription`]).
    pub async fn check_change(
        &self,
        partner: &Partner,
        plan: &str,
        at: ChangeAt,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, ServiceError> {
        let to = self.catalog_plan(plan)?;
        let from = self.current_plan(partner).await?;
        self.change_time(partner, &from, &to, at, now).await
    }

    fn catalog_plan(&self, plan: &str) -> Result<Plan, ServiceError> {
        self.catalog.plan(plan).cloned().ok_or_else(|| {
            ServiceError::Invalid(format!(
                "no plan {plan:?} in the catalog (GET /v1/plans lists them)"
            ))
        })
    }

    /// The plan the partner is on, at the version they are on.
    async fn current_plan(&self, partner: &Partner) -> Result<Plan, ServiceError> {
        let sub = &partner.subscription;
        self.plan_version(&sub.plan_id, &sub.plan_version).await
    }

    /// Moves `partner` to the catalog's `plan` at `at`: now, or scheduled. `by` names who
    /// asked, for the change's record.
    pub async fn change_subscription(
        &self,
        partner: Partner,
        plan: &str,
        at: ChangeAt,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionOutcome, ServiceError> {
        let to = self.catalog_plan(plan)?;
        let from = self.current_plan(&partner).await?;
        let t = self.change_time(&partner, &from, &to, at, now).await?;
        let sub = &partner.subscription;
        if at == ChangeAt::Now {
            if sub.plan_id == to.id && sub.plan_version == to.version {
                return Ok(SubscriptionOutcome::Unchanged(partner));
            }
            let next = Subscription {
                plan_id: to.id.clone(),
                plan_version: to.version.clone(),
                started_at: t,
                ended_at: None,
            };
            let after = self.store.change_subscription(&partner.id, &next).await?;
            let cancelled = match self.store.pending_plan_change(&partner.id).await? {
                Some(p) => Some(
                    self.store
                        .settle_plan_change(
                            &partner.id,
                            &p.id,
                            PlanChangeStatus::Cancelled,
                            &format!("{by}: changed the plan at once"),
                            None,
                            now,
                        )
                        .await?,
                ),
                None => None,
            };
            tracing::info!(partner_id = %after.id, plan = %after.subscription.plan_id, "subscription changed");
            return Ok(SubscriptionOutcome::Changed {
                before: partner,
                after,
                cancelled,
            });
        }
        if sub.plan_id == to.id {
            return Err(ServiceError::WrongState(format!(
                "the partner is on plan {:?} already{}",
                to.id,
                if self.store.pending_plan_change(&partner.id).await?.is_some() {
                    "; to drop the change pending, cancel it (DELETE /v1/partners/{id}/plan-changes/{change_id})"
                } else {
                    ""
                }
            )));
        }
        let change = PlanChange {
            id: PlanChangeId::from_random(rand::random()),
            partner_id: partner.id.clone(),
            plan_id: to.id.clone(),
            at: t,
            scheduled_at: now,
            scheduled_by: by.to_string(),
            status: PlanChangeStatus::Pending,
            settled_at: None,
            settled_by: None,
            error: None,
        };
        let replaced = self.store.schedule_plan_change(&change).await?;
        tracing::info!(partner_id = %partner.id, plan = %to.id, at = %t, change = %change.id, "plan change scheduled");
        Ok(SubscriptionOutcome::Scheduled {
            partner,
            change,
            replaced,
        })
    }

    /// Applies every pending change due at `now`, each from its own `at`; answers those
    /// applied here. One that can no longer be applied (its plan left the catalog, its terms
    /// no longer meet at `at`) is marked failed with the reason, and the partner stays.
    pub async fn apply_due_plan_changes(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<PlanChange>, ServiceError> {
        let mut applied = Vec::new();
        for change in self.store.due_plan_changes(now).await? {
            match self.apply_one(&change, now).await {
                Ok(Some(done)) => applied.push(done),
                Ok(None) => {}
                Err(ServiceError::Invalid(reason) | ServiceError::WrongState(reason)) => {
                    tracing::error!(partner_id = %change.partner_id, change = %change.id, %reason, "scheduled plan change failed; the partner stays on their plan");
                    self.store
                        .settle_plan_change(
                            &change.partner_id,
                            &change.id,
                            PlanChangeStatus::Failed,
                            "schedule",
                            Some(&reason),
                            now,
                        )
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(applied)
    }

    async fn apply_one(
        &self,
        change: &PlanChange,
        now: DateTime<Utc>,
    ) -> Result<Option<PlanChange>, ServiceError> {
        let partner = self
            .store
            .partner(&change.partner_id)
            .await?
            .ok_or_else(|| ServiceError::Invalid("the partner is gone".into()))?;
        let to = self.catalog.plan(&change.plan_id).cloned().ok_or_else(|| {
            ServiceError::Invalid(format!(
                "plan {:?} is not in the catalog in force",
                change.plan_id
            ))
        })?;
        let from = self.current_plan(&partner).await?;
        let tz = partner_time_zone(self.store.as_ref(), &partner.id).await?;
        refuse_terms(&from, &to, tz, change.at, change.at)?;
        // Never before the subscription it ends (a reload may have moved the partner to a new
        // version of their plan after `at`, while this change waited to be applied).
        let started_at = change.at.max(partner.subscription.started_at);
        let next = Subscription {
            plan_id: to.id.clone(),
            plan_version: to.version.clone(),
            started_at,
            ended_at: None,
        };
        let Some(after) = self.store.apply_plan_change(change, &next, now).await? else {
            return Ok(None);
        };
        tracing::info!(partner_id = %after.id, plan = %to.id, at = %started_at, change = %change.id, "scheduled plan change applied");
        Ok(Some(PlanChange {
            status: PlanChangeStatus::Applied,
            settled_at: Some(now),
            settled_by: Some("schedule".into()),
            ..change.clone()
        }))
    }
}

/// A partner sees what changes and when, not which staff member did it.
fn hide_staff<'a>(who: &Principal, changes: impl Iterator<Item = &'a mut PlanChange>) {
    if who.own_partner().is_some() {
        for c in changes {
            c.scheduled_by = "staff".into();
            c.settled_by = c.settled_by.as_ref().map(|_| "staff".into());
        }
    }
}

impl Billing {
    /// `PUT /v1/partners/{id}/subscription`.
    pub async fn change_subscription(
        &self,
        partner: Partner,
        plan: &str,
        at: ChangeAt,
        by: &str,
    ) -> Result<SubscriptionOutcome, ServiceError> {
        self.invoicing()
            .change_subscription(partner, plan, at, by, Utc::now())
            .await
    }

    /// The partner with their pending change.
    pub async fn partner_view(
        &self,
        who: &Principal,
        partner: Partner,
    ) -> Result<PartnerView, ServiceError> {
        let mut pending_change = self.store.pending_plan_change(&partner.id).await?;
        hide_staff(who, pending_change.iter_mut());
        Ok(PartnerView {
            partner,
            pending_change,
        })
    }

    pub async fn plan_changes(
        &self,
        who: &Principal,
        partner: &Partner,
    ) -> Result<PlanChangeList, ServiceError> {
        let mut plan_changes = self.store.plan_changes(&partner.id).await?;
        hide_staff(who, plan_changes.iter_mut());
        Ok(PlanChangeList { plan_changes })
    }

    /// Cancels a pending change; `WrongState` once it took effect or was cancelled.
    pub async fn cancel_plan_change(
        &self,
        partner: &Partner,
        id: &str,
        by: &str,
    ) -> Result<PlanChange, ServiceError> {
        let missing = || ServiceError::not_found("plan change", id);
        let id = PlanChangeId::parse(id).map_err(|_| missing())?;
        let cancelled = self
            .store
            .settle_plan_change(
                &partner.id,
                &id,
                PlanChangeStatus::Cancelled,
                by,
                None,
                Utc::now(),
            )
            .await?;
        tracing::info!(partner_id = %partner.id, change = %cancelled.id, "scheduled plan change cancelled");
        Ok(cancelled)
    }

    /// Applies the pending changes due now (billing's upkeep, every second).
    pub async fn apply_due_plan_changes(&self) -> Result<Vec<PlanChange>, ServiceError> {
        self.invoicing().apply_due_plan_changes(Utc::now()).await
    }
}
