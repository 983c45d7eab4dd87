//! The behaviour every `BillingStore` must have, run against SQLite (unit tests) and
//! PostgreSQL (`tests/postgres.rs`) alike, so the two cannot drift apart.

use chrono::{DateTime, Duration, TimeZone, Utc};
use peage_core::Env;

use peage_core::pricing::{Quota, QuotaKind};
use peage_core::quota::QuotaDecision;
use rust_decimal::Decimal;

use crate::{
    BillingStore, BillingStoreError, NewKey, QuotaKey, SigningKey, Subscription, TrustedIssuer,
};

pub fn sub(plan: &str, at: DateTime<Utc>) -> Subscription {
    Subscription {
        plan_id: plan.into(),
        plan_version: "v-".to_string() + plan,
        started_at: at,
        ended_at: None,
    }
}

/// Runs every check on an empty store.
pub async fn run_all(s: &dyn BillingStore) {
    partners_keep_their_plan_history(s).await;
    keys_are_found_by_hash_and_revocation_is_idempotent(s).await;
    times_keep_microseconds(s).await;
    concurrent_quota_grants_never_pass_a_hard_limit(s).await;
    signing_keys_rotate_and_issuers_belong_to_one_partner(s).await;
}

async fn partners_keep_their_plan_history(s: &dyn BillingStore) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let p = s
        .create_partner("prt_a", "Acme", &sub("starter", t0))
        .await
        .unwrap();
    assert_eq!(p.subscription.plan_id, "starter");
    assert!(
        s.create_partner("prt_a", "Again", &sub("starter", t0))
            .await
            .is_err(),
        "ids are unique"
    );
    let t1 = t0 + Duration::days(10);
    let p = s
        .change_subscription("prt_a", &sub("growth", t1))
        .await
        .unwrap();
    assert_eq!(p.subscription.plan_id, "growth");
    let history = s.subscriptions("prt_a").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].ended_at, Some(t1));
    assert_eq!(history[1].ended_at, None);
    assert!(matches!(
        s.change_subscription("prt_zz", &sub("growth", t1)).await,
        Err(BillingStoreError::NotFound { .. })
    ));
    s.create_partner("prt_b", "Beta", &sub("starter", t1))
        .await
        .unwrap();
    let all = s.partners().await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["prt_a", "prt_b"]
    );
    assert!(s.partner("prt_none").await.unwrap().is_none());
}

async fn keys_are_found_by_hash_and_revocation_is_idempotent(s: &dyn BillingStore) {
    let now = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap();
    let key = NewKey {
        key_id: "key_1".into(),
        partner_id: "prt_a".into(),
        env: Env::Live,
        secret_hash: "h1".into(),
        prefix: "pk_live_ab".into(),
        created_at: now,
    };
    s.create_key(&key).await.unwrap();
    s.create_key(&NewKey {
        key_id: "key_t".into(),
        env: Env::Sandbox,
        secret_hash: "h-test".into(),
        ..key.clone()
    })
    .await
    .unwrap();
    let found = s.key_by_hash("h1").await.unwrap().unwrap();
    assert_eq!((found.partner_id.as_str(), found.env), ("prt_a", Env::Live));
    assert!(s.key_by_hash("h2").await.unwrap().is_none());
    assert_eq!(s.keys("prt_a").await.unwrap().len(), 2);
    let revoked = s.revoke_key("key_1", now).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(now));
    let again = s
        .revoke_key("key_1", now + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(again.revoked_at, Some(now), "first revocation time is kept");
    assert!(matches!(
        s.revoke_key("key_x", now).await,
        Err(BillingStoreError::NotFound { .. })
    ));
    let orphan = NewKey {
        partner_id: "prt_none".into(),
        key_id: "key_2".into(),
        secret_hash: "h3".into(),
        ..key.clone()
    };
    assert!(
        s.create_key(&orphan).await.is_err(),
        "no key without a partner"
    );
    let dup_hash = NewKey {
        key_id: "key_3".into(),
        ..key
    };
    assert!(
        s.create_key(&dup_hash).await.is_err(),
        "secret hashes are unique"
    );
}

async fn times_keep_microseconds(s: &dyn BillingStore) {
    let t =
        Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap() + Duration::microseconds(123_456);
    s.create_partner("prt_c", "Gamma", &sub("starter", t))
        .await
        .unwrap();
    let p = s.partner("prt_c").await.unwrap().unwrap();
    assert_eq!((p.created_at, p.subscription.started_at), (t, t));
}

/// Three gateways ask at once, 60 times each, for 7 units of a 500-unit hard quota: the grants
/// add up to exactly 500 and the ledger says so. Periods and envs are separate ledgers.
async fn concurrent_quota_grants_never_pass_a_hard_limit(s: &dyn BillingStore) {
    let period_start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let key = QuotaKey {
        partner_id: "prt_a".into(),
        env: Env::Live,
        meter: "calls".into(),
        period_start,
    };
    let quota = Quota {
        meter: "calls".into(),
        limit: Decimal::from(500),
        kind: QuotaKind::Hard,
    };
    let asks = (0..180).map(|i| {
        let (key, quota) = (&key, &quota);
        async move {
            let gw = format!("gw-{}", i % 3);
            s.grant_quota(key, &gw, quota, Decimal::ZERO, Decimal::from(7))
                .await
                .unwrap()
        }
    });
    let grants = futures::future::join_all(asks).await;
    let total: Decimal = grants.iter().map(|g| g.granted).sum();
    assert_eq!(total, Decimal::from(500));
    assert!(grants
        .iter()
        .any(|g| g.decision == QuotaDecision::HardBlocked));
    let ledger = s.quota_ledger(&key).await.unwrap();
    assert_eq!((ledger.granted, ledger.gateways), (Decimal::from(500), 3));
    let sandbox = QuotaKey {
        env: Env::Sandbox,
        ..key.clone()
    };
    let g = s
        .grant_quota(&sandbox, "gw-0", &quota, Decimal::ZERO, Decimal::from(7))
        .await
        .unwrap();
    assert_eq!(
        g.granted,
        Decimal::from(7),
        "the sandbox has its own ledger"
    );
    let next = QuotaKey {
        period_start: period_start + Duration::days(30),
        ..key
    };
    assert_eq!(s.quota_ledger(&next).await.unwrap().granted, Decimal::ZERO);
}

async fn signing_keys_rotate_and_issuers_belong_to_one_partner(s: &dyn BillingStore) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
    let key = |kid: &str, at| SigningKey {
        kid: kid.into(),
        seed: format!("seed-{kid}"),
        created_at: at,
        retired_at: None,
    };
    assert!(s.signing_keys().await.unwrap().is_empty());
    s.rotate_signing_key(&key("k1", t0)).await.unwrap();
    let t1 = t0 + Duration::days(1);
    s.rotate_signing_key(&key("k2", t1)).await.unwrap();
    let keys = s.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0].kid.as_str(), keys[0].retired_at), ("k2", None));
    assert_eq!((keys[1].kid.as_str(), keys[1].retired_at), ("k1", Some(t1)));
    assert_eq!(keys[1].seed, "seed-k1");

    let found = s.key("key_t").await.unwrap().unwrap();
    assert_eq!(found.env, Env::Sandbox);
    assert!(s.key("key_none").await.unwrap().is_none());

    let issuer = TrustedIssuer {
        id: "iss_1".into(),
        partner_id: "prt_a".into(),
        issuer: "https://idp.acme.example".into(),
        jwks_url: "https://idp.acme.example/jwks".into(),
        algorithm: "RS256".into(),
        audience: "peage".into(),
        env: Env::Live,
        created_at: t0,
    };
    assert_eq!(s.put_issuer(&issuer).await.unwrap(), issuer);
    let moved = TrustedIssuer {
        id: "iss_2".into(),
        jwks_url: "https://idp.acme.example/jwks2".into(),
        ..issuer.clone()
    };
    let updated = s.put_issuer(&moved).await.unwrap();
    assert_eq!(
        (updated.id.as_str(), updated.jwks_url.as_str()),
        ("iss_1", "https://idp.acme.example/jwks2")
    );
    let stolen = TrustedIssuer {
        id: "iss_3".into(),
        partner_id: "prt_b".into(),
        ..issuer.clone()
    };
    assert!(matches!(
        s.put_issuer(&stolen).await,
        Err(BillingStoreError::Conflict(_))
    ));
    assert_eq!(
        s.issuer(&issuer.issuer).await.unwrap().unwrap().partner_id,
        "prt_a"
    );
    assert!(s.issuer("https://other").await.unwrap().is_none());
}
