//! Coupons (docs/pricing.md, "Coupons"): finance creates them by code and attaches them to
//! partners; invoices take the discount of those that apply to their period
//! (`peage_core::coupon` has the rules; invoicing picks them).

use chrono::Utc;
use peage_billing_store::{CouponRecord, Partner, PartnerCoupon};
use peage_core::coupon::{Coupon, Discount};
use peage_core::ids::PartnerCouponId;
use serde::Serialize;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;

/// Every coupon.
#[derive(Debug, Serialize, ToSchema)]
pub struct CouponList {
    pub coupons: Vec<CouponRecord>,
}

/// A partner's coupons, removed ones included, in the order they were attached.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerCouponList {
    pub coupons: Vec<PartnerCoupon>,
}

impl Billing {
    /// `POST /v1/coupons`.
    pub async fn create_coupon(
        &self,
        coupon: Coupon,
        by: &str,
    ) -> Result<CouponRecord, ServiceError> {
        coupon
            .validate()
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let catalog = self.catalog();
        for plan in &coupon.plans {
            if catalog.plan(plan).is_none() {
                return Err(ServiceError::Invalid(format!(
                    "the catalog has no plan {plan:?}"
                )));
            }
        }
        for meter in &coupon.meters {
            if catalog.meter(meter).is_none() {
                return Err(ServiceError::Invalid(format!(
                    "the catalog has no meter {meter:?}"
                )));
            }
        }
        Ok(self.store.create_coupon(&coupon, Utc::now(), by).await?)
    }

    pub async fn coupons(&self) -> Result<CouponList, ServiceError> {
        Ok(CouponList {
            coupons: self.store.coupons().await?,
        })
    }

    /// `POST /v1/partners/{id}/coupons`: refused for an expired coupon, one limited to other
    /// plans, or a fixed amount in another currency than the partner's plan.
    pub async fn attach_coupon(
        &self,
        partner: &Partner,
        code: &str,
        by: &str,
    ) -> Result<PartnerCoupon, ServiceError> {
        let record = self
            .store
            .coupon(code)
            .await?
            .ok_or_else(|| ServiceError::not_found("coupon", code))?;
        let coupon = &record.coupon;
        let now = Utc::now();
        if coupon.expires_at.is_some_and(|e| e <= now) {
            return Err(ServiceError::WrongState(format!(
                "coupon {code} expired; it can no longer be attached"
            )));
        }
        let plan_id = &partner.subscription.plan_id;
        if !coupon.plans.is_empty() && !coupon.plans.contains(plan_id) {
            return Err(ServiceError::WrongState(format!(
                "coupon {code} is for plans {}, and the partner is on {plan_id}",
                coupon.plans.join(", ")
            )));
        }
        if let (Discount::Amount { currency, .. }, Some(plan)) =
            (&coupon.discount, self.catalog().plan(plan_id))
        {
            if *currency != plan.currency {
                return Err(ServiceError::WrongState(format!(
                    "coupon {code} is in {}, and the partner is billed in {}",
                    currency.code(),
                    plan.currency.code()
                )));
            }
        }
        let id = PartnerCouponId::from_random(rand::random());
        Ok(self
            .store
            .attach_coupon(&id, &partner.id, code, now, by)
            .await?)
    }

    pub async fn partner_coupons(
        &self,
        partner: &Partner,
    ) -> Result<PartnerCouponList, ServiceError> {
        Ok(PartnerCouponList {
            coupons: self.store.partner_coupons(&partner.id).await?,
        })
    }

    /// `DELETE /v1/partners/{id}/coupons/{coupon_id}`: it discounts no period that ends after
    /// now (finalized invoices keep theirs).
    pub async fn remove_coupon(
        &self,
        partner: &Partner,
        id: &str,
        by: &str,
    ) -> Result<PartnerCoupon, ServiceError> {
        let missing = || ServiceError::not_found("partner coupon", id);
        let id = PartnerCouponId::parse(id).map_err(|_| missing())?;
        Ok(self
            .store
            .remove_coupon(&partner.id, &id, Utc::now(), by)
            .await?)
    }
}
