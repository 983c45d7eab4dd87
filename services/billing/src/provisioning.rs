//! Creating partners and issuing keys: one place for the id, secret and hash rules, used by the
//! control API and by `peage up --demo` alike.

use chrono::Utc;
use peage_billing_store::{ApiKey, BillingStore, NewKey, Partner, Subscription};
use peage_core::ids::api_key;
use peage_core::{Catalog, Env, KeyId, PartnerId};

use crate::ApiError;

/// Creates a partner subscribed, from now, to `plan` as the catalog has it.
pub async fn create_partner(
    store: &dyn BillingStore,
    catalog: &Catalog,
    name: &str,
    plan: &str,
    external_id: Option<&str>,
) -> Result<Partner, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::BadRequest("name must be 1–200 characters".into()));
    }
    let plan_version = plan_version(catalog, plan)?;
    if let Some(ext) = external_id {
        check_external_id(ext)?;
        if store.partner_by_external_id(ext).await?.is_some() {
            return Err(ApiError::Conflict(format!(
                "external_id {ext:?} belongs to another partner"
            )));
        }
    }
    let id = PartnerId::from_random(rand::random());
    let sub = Subscription {
        plan_id: plan.to_string(),
        plan_version,
        started_at: Utc::now(),
        ended_at: None,
    };
    let mut partner = store.create_partner(id.as_str(), name, &sub).await?;
    if let Some(ext) = external_id {
        partner = store.set_external_id(&partner.id, Some(ext)).await?;
    }
    tracing::info!(partner_id = %partner.id, plan = %partner.subscription.plan_id, "partner created");
    Ok(partner)
}

/// An external id: 1–128 visible ASCII characters (what a company's customer ids are), and
/// not of the form of a Péage partner id, so a usage event's `subject` names one partner only.
pub fn check_external_id(ext: &str) -> Result<(), ApiError> {
    if ext.is_empty() || ext.len() > 128 || !ext.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(
            "external_id must be 1–128 visible ASCII characters".into(),
        ));
    }
    if PartnerId::parse(ext).is_ok() {
        return Err(ApiError::BadRequest(format!(
            "external_id {ext:?} has the form of a partner id; usage events could not tell them apart"
        )));
    }
    Ok(())
}

/// The current version of a catalog plan, or a 400 naming the unknown plan.
pub fn plan_version(catalog: &Catalog, plan: &str) -> Result<String, ApiError> {
    catalog
        .plan(plan)
        .map(|p| p.version.clone())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "no plan {plan:?} in the catalog (GET /v1/plans lists them)"
            ))
        })
}

/// Issues a key; returns it with its secret, which exists nowhere else (only the hash is stored).
pub async fn issue_key(
    store: &dyn BillingStore,
    partner_id: &str,
    env: Env,
) -> Result<(ApiKey, String), ApiError> {
    let secret = api_key::secret(env, rand::random());
    let key = NewKey {
        key_id: KeyId::from_random(rand::random()).to_string(),
        partner_id: partner_id.to_string(),
        env,
        secret_hash: api_key::secret_hash(&secret),
        prefix: secret.chars().take(12).collect(),
        created_at: Utc::now(),
    };
    let stored = store.create_key(&key).await?;
    tracing::info!(partner_id = %stored.partner_id, key_id = %stored.key_id, env = env.as_str(), "api key issued");
    Ok((stored, secret))
}
