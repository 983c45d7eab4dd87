//! Self-service plan changes (docs/pricing.md, "Self-service plan changes"): a partner moves
//! itself to a plan the catalog marks `self_serve`, in the same currency. A move to a plan with
//! a higher base fee is an upgrade and takes effect at once, the period cut there and each
//! part priced by its plan (proration); any other move is a downgrade, scheduled for the end
//! of the current period. A quote shows what the period comes to before the partner confirms.

use chrono::{DateTime, Utc};
use peage_billing_store::Partner;
use peage_core::pricing::Plan;
use peage_core::InvoiceRecord;
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;
use super::invoicing::partner_time_zone;
use super::plan_changes::{ChangeAt, SubscriptionOutcome};

/// Which way a move goes, and so when it takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A higher base fee: at once, prorated.
    Upgrade,
    /// Anything else: at the end of the current period.
    Downgrade,
}

/// A plan the partner may move to.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanOption {
    pub plan: Plan,
    pub direction: Direction,
    /// When the move would take effect.
    pub effective_at: DateTime<Utc>,
}

/// The partner's plan and the self-serve plans it may move to.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanOptions {
    pub current: Plan,
    pub options: Vec<PlanOption>,
}

/// What a move would do to the current period, before it is confirmed.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanQuote {
    pub plan_id: String,
    pub direction: Direction,
    pub effective_at: DateTime<Utc>,
    /// The current period's invoice as it stands.
    pub current: InvoiceRecord,
    /// The same period with the move: cut at `effective_at` for an upgrade (each part priced
    /// by its plan, the new plan's base fee prorated); unchanged for a downgrade, which starts
    /// with the next period.
    pub with_change: InvoiceRecord,
}

impl Billing {
    /// The self-serve plans `partner` may move to, each with its direction and time.
    pub async fn plan_options(&self, partner: &Partner) -> Result<PlanOptions, ServiceError> {
        let current = self.partner_plan(partner).await?;
        let now = Utc::now();
        let mut options = Vec::new();
        for plan in self.catalog().plans.iter() {
            if !plan.self_serve || plan.id == current.id || plan.currency != current.currency {
                continue;
            }
            let (direction, effective_at) = self.move_terms(partner, &current, plan, now).await?;
            options.push(PlanOption {
                plan: plan.clone(),
                direction,
                effective_at,
            });
        }
        Ok(PlanOptions { current, options })
    }

    /// `plan` of the catalog, if the partner may move to it by itself.
    fn self_serve_plan(&self, current: &Plan, plan: &str) -> Result<Plan, ServiceError> {
        let catalog = self.catalog();
        let to = catalog.plan(plan).filter(|p| p.self_serve).ok_or_else(|| {
            ServiceError::Invalid(format!(
                "plan {plan:?} is not one partners may choose themselves \
                     (GET /v1/partners/{{id}}/plan-options lists those)"
            ))
        })?;
        if to.id == current.id {
            return Err(ServiceError::WrongState(format!(
                "the partner is on plan {:?} already",
                to.id
            )));
        }
        if to.currency != current.currency {
            return Err(ServiceError::Invalid(format!(
                "plan {:?} bills in {}, not {}: ask your account manager to change currency",
                to.id,
                to.currency.code(),
                current.currency.code()
            )));
        }
        Ok(to.clone())
    }

    /// Upgrade now, prorated, where the terms allow a cut within the period; else (and for a
    /// downgrade) at the end of the current period.
    async fn move_terms(
        &self,
        partner: &Partner,
        from: &Plan,
        to: &Plan,
        now: DateTime<Utc>,
    ) -> Result<(Direction, DateTime<Utc>), ServiceError> {
        let invoicing = self.invoicing();
        let direction = if to.base_fee > from.base_fee {
            Direction::Upgrade
        } else {
            Direction::Downgrade
        };
        if direction == Direction::Upgrade {
            if let Ok(t) = invoicing
                .check_change(partner, &to.id, ChangeAt::Now, now)
                .await
            {
                return Ok((direction, t));
            }
        }
        let t = invoicing
            .check_change(partner, &to.id, ChangeAt::NextPeriod, now)
            .await?;
        Ok((direction, t))
    }

    /// `POST /v1/partners/{id}/plan-options/{plan}/quote`.
    pub async fn quote_plan(
        &self,
        partner: &Partner,
        plan: &str,
    ) -> Result<PlanQuote, ServiceError> {
        let current_plan = self.partner_plan(partner).await?;
        let to = self.self_serve_plan(&current_plan, plan)?;
        let now = Utc::now();
        let (direction, effective_at) = self.move_terms(partner, &current_plan, &to, now).await?;
        let invoicing = self.invoicing();
        let current = invoicing.upcoming(partner, now).await?;
        let tz = partner_time_zone(self.store.as_ref(), &partner.id).await?;
        let period_end = current_plan.period.containing_in(tz, now).end;
        let with_change = if effective_at < period_end {
            invoicing
                .quote_change(partner, &to, effective_at, now)
                .await?
        } else {
            let mut same = current.clone();
            same.id = "quote".into();
            same
        };
        Ok(PlanQuote {
            plan_id: to.id,
            direction,
            effective_at,
            current,
            with_change,
        })
    }

    /// `POST /v1/partners/{id}/plan-options/{plan}`: the move, as quoted.
    pub async fn choose_plan(
        &self,
        partner: Partner,
        plan: &str,
        by: &str,
    ) -> Result<SubscriptionOutcome, ServiceError> {
        let current_plan = self.partner_plan(&partner).await?;
        let to = self.self_serve_plan(&current_plan, plan)?;
        let now = Utc::now();
        let (_, effective_at) = self.move_terms(&partner, &current_plan, &to, now).await?;
        let at = if effective_at <= now {
            ChangeAt::Now
        } else {
            ChangeAt::At(effective_at)
        };
        self.invoicing()
            .change_subscription(partner, &to.id, at, by, now)
            .await
    }
}
