//! Coupons and the partners they are attached to. A coupon's definition is stored whole (JSON)
//! under its code and never changes; attaching and removing are rows of their own, so which
//! periods a coupon discounts follows from their times (`peage_core::coupon`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use peage_core::coupon::Coupon;
use peage_core::ids::{PartnerCouponId, PartnerId};
use serde::Serialize;

use super::db::{args, LedgerDb, Row};
use super::ts;
use crate::BillingStoreError;

/// A coupon as created.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CouponRecord {
    #[serde(flatten)]
    pub coupon: Coupon,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// A coupon attached to a partner.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PartnerCoupon {
    pub id: PartnerCouponId,
    pub partner_id: PartnerId,
    pub coupon: Coupon,
    pub attached_at: DateTime<Utc>,
    pub attached_by: String,
    /// Removed coupons stay as history; they discount no period that ends after this.
    pub removed_at: Option<DateTime<Utc>>,
    pub removed_by: Option<String>,
}

fn definition(r: &Row) -> Result<Coupon, BillingStoreError> {
    serde_json::from_str(&r.text("definition")?).map_err(|e| BillingStoreError::Corrupt {
        what: "coupon",
        reason: e.to_string(),
    })
}

fn record_from(r: &Row) -> Result<CouponRecord, BillingStoreError> {
    Ok(CouponRecord {
        coupon: definition(r)?,
        created_at: r.time("coupon", "created_at")?,
        created_by: r.text("created_by")?,
    })
}

fn attached_from(r: &Row) -> Result<PartnerCoupon, BillingStoreError> {
    Ok(PartnerCoupon {
        id: r.id("partner coupon", "id")?,
        partner_id: r.id("partner coupon", "partner_id")?,
        coupon: definition(r)?,
        attached_at: r.time("partner coupon", "attached_at")?,
        attached_by: r.text("attached_by")?,
        removed_at: r.opt_time("partner coupon", "removed_at")?,
        removed_by: r.opt_text("removed_by")?,
    })
}

const ATTACHED: &str = "SELECT pc.id, pc.partner_id, c.definition, pc.attached_at, \
     pc.attached_by, pc.removed_at, pc.removed_by \
     FROM partner_coupons pc JOIN coupons c ON c.code = pc.code";

#[async_trait]
pub trait CouponStore: Send + Sync + 'static {
    /// `Conflict` if the code exists already.
    async fn create_coupon(
        &self,
        coupon: &Coupon,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<CouponRecord, BillingStoreError>;
    /// Every coupon, by code.
    async fn coupons(&self) -> Result<Vec<CouponRecord>, BillingStoreError>;
    async fn coupon(&self, code: &str) -> Result<Option<CouponRecord>, BillingStoreError>;
    /// `Conflict` if the partner has it attached already.
    async fn attach_coupon(
        &self,
        id: &PartnerCouponId,
        partner_id: &PartnerId,
        code: &str,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<PartnerCoupon, BillingStoreError>;
    /// The partner's coupons, removed ones included, in the order they were attached.
    async fn partner_coupons(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Vec<PartnerCoupon>, BillingStoreError>;
    /// Every partner's, for an invoice run.
    async fn all_partner_coupons(&self) -> Result<Vec<PartnerCoupon>, BillingStoreError>;
    /// `NotFound` for another partner's or an unknown id, `Conflict` once removed.
    async fn remove_coupon(
        &self,
        partner_id: &PartnerId,
        id: &PartnerCouponId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<PartnerCoupon, BillingStoreError>;
}

async fn attached(
    db: &impl LedgerDb,
    id: &PartnerCouponId,
) -> Result<Option<PartnerCoupon>, BillingStoreError> {
    db.sql()
        .fetch_optional(&format!("{ATTACHED} WHERE pc.id = $1"), args![id.as_str()])
        .await?
        .as_ref()
        .map(attached_from)
        .transpose()
}

#[async_trait]
impl<D: LedgerDb> CouponStore for D {
    async fn create_coupon(
        &self,
        coupon: &Coupon,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<CouponRecord, BillingStoreError> {
        let json = serde_json::to_string(coupon).map_err(|e| BillingStoreError::Corrupt {
            what: "coupon",
            reason: e.to_string(),
        })?;
        let mut tx = self.begin().await?;
        let exists = tx
            .fetch_optional(
                "SELECT code FROM coupons WHERE code = $1",
                args![coupon.code.as_str()],
            )
            .await?;
        if exists.is_some() {
            return Err(BillingStoreError::Conflict(format!(
                "coupon {} exists already",
                coupon.code
            )));
        }
        tx.execute(
            "INSERT INTO coupons (code, definition, created_at, created_by) VALUES ($1, $2, $3, $4)",
            args![coupon.code.as_str(), json, ts(at), by],
        )
        .await?;
        tx.commit().await?;
        Ok(CouponRecord {
            coupon: coupon.clone(),
            created_at: at,
            created_by: by.to_string(),
        })
    }

    async fn coupons(&self) -> Result<Vec<CouponRecord>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                "SELECT code, definition, created_at, created_by FROM coupons ORDER BY code",
                args![],
            )
            .await?;
        rows.iter().map(record_from).collect()
    }

    async fn coupon(&self, code: &str) -> Result<Option<CouponRecord>, BillingStoreError> {
        self.sql()
            .fetch_optional(
                "SELECT code, definition, created_at, created_by FROM coupons WHERE code = $1",
                args![code],
            )
            .await?
            .as_ref()
            .map(record_from)
            .transpose()
    }

    async fn attach_coupon(
        &self,
        id: &PartnerCouponId,
        partner_id: &PartnerId,
        code: &str,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<PartnerCoupon, BillingStoreError> {
        let mut tx = self.begin().await?;
        let active = tx
            .fetch_optional(
                "SELECT id FROM partner_coupons WHERE partner_id = $1 AND code = $2 \
                 AND removed_at IS NULL",
                args![partner_id, code],
            )
            .await?;
        if active.is_some() {
            return Err(BillingStoreError::Conflict(format!(
                "partner {partner_id} has coupon {code} already"
            )));
        }
        tx.execute(
            "INSERT INTO partner_coupons (id, partner_id, code, attached_at, attached_by, \
             removed_at, removed_by) VALUES ($1, $2, $3, $4, $5, NULL, NULL)",
            args![id.as_str(), partner_id, code, ts(at), by],
        )
        .await?;
        tx.commit().await?;
        attached(self, id)
            .await?
            .ok_or_else(|| super::not_found("partner coupon", id))
    }

    async fn partner_coupons(
        &self,
        partner_id: &PartnerId,
    ) -> Result<Vec<PartnerCoupon>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                &format!("{ATTACHED} WHERE pc.partner_id = $1 ORDER BY pc.attached_at, pc.id"),
                args![partner_id],
            )
            .await?;
        rows.iter().map(attached_from).collect()
    }

    async fn all_partner_coupons(&self) -> Result<Vec<PartnerCoupon>, BillingStoreError> {
        let rows = self
            .sql()
            .fetch(
                &format!("{ATTACHED} ORDER BY pc.partner_id, pc.attached_at, pc.id"),
                args![],
            )
            .await?;
        rows.iter().map(attached_from).collect()
    }

    async fn remove_coupon(
        &self,
        partner_id: &PartnerId,
        id: &PartnerCouponId,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<PartnerCoupon, BillingStoreError> {
        let changed = self
            .sql()
            .execute(
                "UPDATE partner_coupons SET removed_at = $1, removed_by = $2 \
                 WHERE id = $3 AND partner_id = $4 AND removed_at IS NULL",
                args![ts(at), by, id.as_str(), partner_id],
            )
            .await?;
        let found = attached(self, id)
            .await?
            .filter(|c| &c.partner_id == partner_id)
            .ok_or_else(|| super::not_found("partner coupon", id))?;
        if changed == 0 {
            return Err(BillingStoreError::Conflict(format!(
                "coupon {id} was removed already"
            )));
        }
        Ok(found)
    }
}
