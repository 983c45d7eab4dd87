//! The behaviour every `BillingStore` must have, run against SQLite (unit tests) and
//! PostgreSQL (`tests/postgres.rs`) alike, so the two cannot drift apart: one test per behaviour
//! per backend ([`conformance_tests!`]), each on an empty store.

use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};
use peage_core::ids::{InvoiceId, PartnerCouponId, PartnerId};
use peage_core::Env;

use peage_core::pricing::{Quota, QuotaKind};
use peage_core::quota::QuotaDecision;
use rust_decimal::Decimal;

use crate::{
    BillingStore, BillingStoreError, NewKey, QuotaKey, SigningKey, Subscription, TrustedIssuer,
};

/// An id of the suite's, as the stores take it (`prt_…`, `key_…`, `inv_…`).
pub fn typed<T: std::str::FromStr<Err = peage_core::ids::IdError>>(text: &str) -> T {
    text.parse().unwrap()
}

pub fn sub(plan: &str, at: DateTime<Utc>) -> Subscription {
    Subscription {
        plan_id: plan.into(),
        plan_version: "v-".to_string() + plan,
        started_at: at,
        ended_at: None,
    }
}

/// Webhook message ids, unique across a run.
pub fn msg_ids() -> impl Iterator<Item = String> + Send {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    std::iter::repeat_with(|| {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("msg_{n:020}")
    })
}

/// One test per behaviour, each on a store of its own: `$fixture` is an async fn that makes an
/// empty store and returns something that derefs to it and has an async `done(self)` (which
/// cleans up). Attributes before the fixture go on every test (such as the real-server switch).
#[macro_export]
macro_rules! conformance_tests {
    ($(#[$attr:meta])* $fixture:path) => {
        $crate::conformance_tests!(@each [$(#[$attr])*] $fixture;
            partners_keep_their_plan_history,
            keys_are_found_by_hash_and_revocation_is_idempotent,
            times_keep_microseconds,
            concurrent_quota_grants_never_pass_a_hard_limit,
            signing_keys_rotate_and_issuers_belong_to_one_partner,
            invoices_go_draft_finalized_void_with_gapless_numbers,
            credits_are_taken_by_finalization_and_given_back_by_void,
            plan_versions_and_profiles_are_kept,
            webhooks_are_queued_once_per_event_and_logged,
            sign_in_links_are_used_once_and_sessions_end,
            idempotency_keys_are_claimed_once_answered_and_expire,
            service_tokens_are_found_by_hash_and_revoked_once,
            audit_records_are_appended_and_read_in_order,
            staff_are_unique_by_email_and_changes_keep_before_and_after,
            external_ids_name_one_partner_each,
            sums_of_stored_credits_that_overflow_are_errors_not_panics,
            partners_follow_a_plan_to_its_new_version_once,
            the_catalog_in_force_is_one_and_roles_report_theirs,
            a_scheduled_plan_change_applies_once_and_is_cancelled_only_while_pending,
            coupons_are_created_once_and_attached_once_at_a_time,
            credit_notes_are_numbered_apart_and_never_credit_more_than_the_invoice,
            payments_never_pay_more_than_is_due_and_overdue_is_reported_once,
            a_job_lease_has_one_holder_until_it_expires,
            alerts_are_listed_until_deleted_and_each_notice_is_kept_once,
            erasure_removes_personal_data_and_keeps_invoices,
        );
    };
    (@each $attrs:tt $fixture:path; $($name:ident,)*) => {
        $($crate::conformance_tests!(@one $attrs $fixture; $name);)*
    };
    (@one [$($attr:tt)*] $fixture:path; $name:ident) => {
        #[tokio::test]
        $($attr)*
        async fn $name() {
            let fixture = $fixture().await;
            $crate::conformance::$name(&*fixture).await;
            fixture.done().await;
        }
    };
}

pub async fn external_ids_name_one_partner_each(s: &dyn BillingStore) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 6, 0, 0, 0).unwrap();
    s.create_partner(&typed("prt_6578745f610000000000"), "A", &sub("basic", t0))
        .await
        .unwrap();
    s.create_partner(&typed("prt_6578745f620000000000"), "B", &sub("basic", t0))
        .await
        .unwrap();
    assert_eq!(
        s.partner(&typed("prt_6578745f610000000000"))
            .await
            .unwrap()
            .unwrap()
            .external_id,
        None
    );
    let a = s
        .set_external_id(&typed("prt_6578745f610000000000"), Some("cust-42"))
        .await
        .unwrap();
    assert_eq!(a.external_id.as_deref(), Some("cust-42"));
    let found = s.partner_by_external_id("cust-42").await.unwrap().unwrap();
    assert_eq!(found.id, "prt_6578745f610000000000");
    assert!(s.partner_by_external_id("cust-43").await.unwrap().is_none());
    match s
        .set_external_id(&typed("prt_6578745f620000000000"), Some("cust-42"))
        .await
    {
        Err(BillingStoreError::Conflict(m)) => assert!(m.contains("cust-42"), "{m}"),
        other => panic!("a taken external id must conflict: {other:?}"),
    }
    assert!(matches!(
        s.set_external_id(&typed("prt_6e6f626f647900000000"), Some("x"))
            .await,
        Err(BillingStoreError::NotFound { .. })
    ));
    // Cleared, it is free for another partner.
    s.set_external_id(&typed("prt_6578745f610000000000"), None)
        .await
        .unwrap();
    let b = s
        .set_external_id(&typed("prt_6578745f620000000000"), Some("cust-42"))
        .await
        .unwrap();
    assert_eq!(b.external_id.as_deref(), Some("cust-42"));
}

pub async fn audit_records_are_appended_and_read_in_order(s: &dyn BillingStore) {
    use crate::audit::AuditRecord;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 5, 0, 0, 0).unwrap();
    let record = |id: &str, at| AuditRecord {
        id: id.into(),
        at,
        actor: "admin".into(),
        action: "POST /v1/partners/{id}/credits".into(),
        target: "id=prt_a".into(),
        status: 201,
        request_id: format!("req-{id}"),
        before: Some("{\"amount\":\"0.00\"}".into()),
        after: Some("{\"amount\":\"10.00\"}".into()),
    };
    s.append_audit(&record("aud_01", t0)).await.unwrap();
    s.append_audit(&record("aud_02", t0 + Duration::seconds(1)))
        .await
        .unwrap();
    let all = s.audit_records(None, 10).await.unwrap();
    assert_eq!(
        all,
        [
            record("aud_01", t0),
            record("aud_02", t0 + Duration::seconds(1))
        ]
    );
    let next = s.audit_records(Some("aud_01"), 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, "aud_02");
    assert!(
        s.append_audit(&record("aud_01", t0)).await.is_err(),
        "ids are unique"
    );
}

pub async fn service_tokens_are_found_by_hash_and_revoked_once(s: &dyn BillingStore) {
    use crate::service_tokens::ServiceToken;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 4, 0, 0, 0).unwrap();
    let token = |id: &str, scope: &str, at| ServiceToken {
        id: typed(id),
        name: format!("{scope} token"),
        scope: scope.into(),
        token_hash: format!("hash-{id}"),
        created_at: at,
        revoked_at: None,
    };
    s.create_service_token(&token("svc_31000000000000000000", "gateway", t0))
        .await
        .unwrap();
    s.create_service_token(&token(
        "svc_32000000000000000000",
        "read-only",
        t0 + Duration::seconds(1),
    ))
    .await
    .unwrap();
    let listed = s.service_tokens().await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["svc_31000000000000000000", "svc_32000000000000000000"]
    );
    assert_eq!(
        s.service_token_by_hash("hash-svc_31000000000000000000")
            .await
            .unwrap(),
        Some(listed[0].clone())
    );
    assert_eq!(s.service_token_by_hash("hash-none").await.unwrap(), None);
    let t1 = t0 + Duration::hours(1);
    let revoked = s
        .revoke_service_token(&typed("svc_31000000000000000000"), t1)
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(t1));
    let again = s
        .revoke_service_token(&typed("svc_31000000000000000000"), t1 + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(t1),
        "the first revocation's time stays"
    );
    assert!(matches!(
        s.revoke_service_token(&typed("svc_6e6f6e65000000000000"), t1)
            .await,
        Err(BillingStoreError::NotFound { .. })
    ));
    // Scopes are a closed list in both schemas.
    assert!(s
        .create_service_token(&token("svc_33000000000000000000", "root", t0))
        .await
        .is_err());
}

pub async fn idempotency_keys_are_claimed_once_answered_and_expire(s: &dyn BillingStore) {
    use crate::idempotency::{ClaimOutcome, IdempotencyClaim, KeptAnswer};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 3, 0, 0, 0).unwrap();
    let claim = |scope: &str, key: &str, hash: &str, at| IdempotencyClaim {
        scope: scope.into(),
        key: key.into(),
        request_hash: hash.into(),
        at,
    };
    let c = claim("admin", "k1", "h1", t0);
    assert_eq!(
        s.claim_idempotency_key(&c).await.unwrap(),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        s.claim_idempotency_key(&claim("admin", "k1", "h2", t0))
            .await
            .unwrap(),
        ClaimOutcome::InFlight {
            request_hash: "h1".into()
        }
    );
    // Another caller's key of the same name is its own.
    assert_eq!(
        s.claim_idempotency_key(&claim("partner:prt_a", "k1", "h1", t0))
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    let answer = KeptAnswer {
        status: 201,
        content_type: Some("application/json".into()),
        body: "{\"id\":\"x\"}".into(),
    };
    s.complete_idempotency_key("admin", "k1", &answer)
        .await
        .unwrap();
    let later = t0 + Duration::hours(23);
    assert_eq!(
        s.claim_idempotency_key(&claim("admin", "k1", "h1", later))
            .await
            .unwrap(),
        ClaimOutcome::Answered {
            request_hash: "h1".into(),
            answer: answer.clone()
        }
    );
    // After 24 hours the key is new again.
    let next_day = t0 + Duration::hours(25);
    assert_eq!(
        s.claim_idempotency_key(&claim("admin", "k1", "h3", next_day))
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    // Released (a server error): a retry runs afresh; a claim abandoned for a minute too.
    s.release_idempotency_key("admin", "k1").await.unwrap();
    assert_eq!(
        s.claim_idempotency_key(&claim("admin", "k1", "h3", next_day))
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        s.claim_idempotency_key(&claim(
            "admin",
            "k1",
            "h3",
            next_day + Duration::seconds(61)
        ))
        .await
        .unwrap(),
        ClaimOutcome::Claimed
    );
}

/// Rows stored before amounts were bounded (a credit of `Decimal::MAX` was once accepted) make
/// the sums fail with an error naming them; they never panic.
pub async fn sums_of_stored_credits_that_overflow_are_errors_not_panics(s: &dyn BillingStore) {
    use crate::ledger::CreditEntry;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    s.create_partner(
        &typed("prt_68756765000000000000"),
        "Huge",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    for (id, amount) in [("crd_huge1", Decimal::MAX), ("crd_huge2", Decimal::ONE)] {
        s.add_credit(&CreditEntry {
            id: id.into(),
            partner_id: typed("prt_68756765000000000000"),
            currency: "EUR".into(),
            amount,
            description: "from before the bound".into(),
            invoice_id: None,
            created_at: t0,
        })
        .await
        .unwrap();
    }
    let e = s
        .credit_balance(&typed("prt_68756765000000000000"), "EUR")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    let e = s.credit_balances().await.unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    s.save_draft(&draft(
        "inv_68756765000000000000",
        "prt_68756765000000000000",
        "12.50",
    ))
    .await
    .unwrap();
    let e = s
        .finalize_invoice(
            &typed("inv_68756765000000000000"),
            "HUGE",
            t0 + Duration::days(31),
            "admin",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
}

pub async fn sign_in_links_are_used_once_and_sessions_end(s: &dyn BillingStore) {
    use crate::{DashboardGrant, DashboardRole};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap();
    s.create_partner(
        &typed("prt_64617368000000000000"),
        "Dash",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    let link = |hash: &str, role: DashboardRole| DashboardGrant {
        token_hash: hash.into(),
        role,
        created_at: t0,
        expires_at: t0 + Duration::minutes(15),
    };
    let partner = DashboardRole::Partner {
        partner_id: typed("prt_64617368000000000000"),
    };
    s.create_sign_in_link(&link("l1", partner.clone()))
        .await
        .unwrap();
    let ann = staff_member("stf_00000000000000000a01", "Ann@Example.com", t0);
    s.create_staff(&ann).await.unwrap();
    let staff = DashboardRole::Staff {
        staff_id: ann.id.clone(),
    };
    s.create_sign_in_link(&link("l2", staff.clone()))
        .await
        .unwrap();
    s.create_sign_in_link(&link("l3", staff.clone()))
        .await
        .unwrap();
    let later = t0 + Duration::hours(8);
    let session = s
        .redeem_sign_in_link("l1", t0 + Duration::minutes(1), "s1", later)
        .await
        .unwrap()
        .expect("a fresh link opens a session");
    assert_eq!(session.role, partner);
    // Used once: the same link again, and an unknown one, open nothing.
    for hash in ["l1", "nope"] {
        assert!(s
            .redeem_sign_in_link(hash, t0 + Duration::minutes(2), "s2", later)
            .await
            .unwrap()
            .is_none());
    }
    // Expired: a staff link after its 15 minutes opens nothing.
    assert!(s
        .redeem_sign_in_link("l2", t0 + Duration::minutes(15), "s3", later)
        .await
        .unwrap()
        .is_none());
    let now = t0 + Duration::minutes(3);
    let found = s.dashboard_session("s1", now).await.unwrap().unwrap();
    assert_eq!((found.role, found.expires_at), (partner, later));
    assert!(s.dashboard_session("s2", now).await.unwrap().is_none());
    assert!(s.dashboard_session("s1", later).await.unwrap().is_none());
    s.end_dashboard_session("s1", now).await.unwrap();
    s.end_dashboard_session("s1", now).await.unwrap();
    assert!(s.dashboard_session("s1", now).await.unwrap().is_none());

    // A staff session belongs to its person; disabling them ends it and spends their links.
    let mine = s
        .redeem_sign_in_link("l3", t0 + Duration::minutes(1), "s4", later)
        .await
        .unwrap()
        .expect("a staff link opens a session");
    assert_eq!(mine.role, staff);
    s.create_sign_in_link(&link("l4", staff.clone()))
        .await
        .unwrap();
    s.update_staff(
        &ann.id,
        &crate::StaffChange {
            disabled: Some(true),
            ..Default::default()
        },
        now,
    )
    .await
    .unwrap();
    assert!(s.dashboard_session("s4", now).await.unwrap().is_none());
    assert!(s
        .redeem_sign_in_link("l4", now, "s5", later)
        .await
        .unwrap()
        .is_none());
}

fn staff_member(id: &str, email: &str, at: DateTime<Utc>) -> crate::StaffMember {
    crate::StaffMember {
        id: typed(id),
        email: email.to_lowercase(),
        name: "Ann Example".into(),
        role: crate::StaffRole::Finance,
        created_at: at,
        disabled_at: None,
    }
}

pub async fn staff_are_unique_by_email_and_changes_keep_before_and_after(s: &dyn BillingStore) {
    use crate::{StaffChange, StaffRole};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 6, 0, 0, 0).unwrap();
    let bob = crate::StaffMember {
        name: "Bob".into(),
        role: StaffRole::Viewer,
        ..staff_member("stf_00000000000000000b01", "bob@example.com", t0)
    };
    s.create_staff(&bob).await.unwrap();
    let again = crate::StaffMember {
        id: typed("stf_00000000000000000b02"),
        email: "BOB@example.com".into(),
        ..bob.clone()
    };
    assert!(matches!(
        s.create_staff(&again).await,
        Err(BillingStoreError::Conflict(_))
    ));
    assert_eq!(
        s.staff_member("Bob@Example.com").await.unwrap().unwrap(),
        bob
    );
    assert_eq!(s.staff_member(bob.id.as_str()).await.unwrap().unwrap(), bob);
    assert!(s
        .staff_member("nobody@example.com")
        .await
        .unwrap()
        .is_none());
    let at = t0 + Duration::hours(1);
    let (before, after) = s
        .update_staff(
            &bob.id,
            &StaffChange {
                role: Some(StaffRole::Admin),
                name: Some("Robert".into()),
                disabled: Some(true),
            },
            at,
        )
        .await
        .unwrap();
    assert_eq!(before, bob);
    assert_eq!(
        (after.role, after.name.as_str(), after.disabled_at),
        (StaffRole::Admin, "Robert", Some(at))
    );
    assert_eq!(
        s.staff_member(bob.id.as_str()).await.unwrap().unwrap(),
        after
    );
    let (_, enabled) = s
        .update_staff(
            &bob.id,
            &StaffChange {
                disabled: Some(false),
                ..Default::default()
            },
            at,
        )
        .await
        .unwrap();
    assert_eq!(enabled.disabled_at, None);
    assert!(matches!(
        s.update_staff(
            &typed("stf_6e6f7065000000000000"),
            &StaffChange::default(),
            at
        )
        .await,
        Err(BillingStoreError::NotFound { .. })
    ));
    assert!(s.staff().await.unwrap().iter().any(|m| m.id == bob.id));
}

/// A draft invoice for `partner` over November 2026 with `base` as its only line.
pub fn draft(id: &str, partner: &str, base: &str) -> peage_core::InvoiceRecord {
    use peage_core::pricing::Plan;
    let t = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let plan: Plan = serde_json::from_value(serde_json::json!({
        "id": "growth", "name": "Growth", "version": "v1", "currency": "EUR",
        "period": {"every": "month", "anchor_day": 1}, "base_fee": base, "tax": null,
        "minimum_commitment": null, "charges": [], "quotas": [], "rate_limit": null
    }))
    .unwrap();
    let period = peage_core::BillingPeriod {
        start: t,
        end: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
    };
    peage_core::InvoiceRecord {
        id: id.into(),
        number: None,
        status: peage_core::InvoiceStatus::Draft,
        partner_id: partner.into(),
        period_label: "2026-11".into(),
        created_at: t,
        updated_at: t,
        finalized_at: None,
        voided_at: None,
        finalized_by: None,
        voided_by: None,
        payment: Default::default(),
        state: Default::default(),
        invoice: peage_core::Invoice::compute(partner, &plan, period, &[]).unwrap(),
    }
}

pub async fn invoices_go_draft_finalized_void_with_gapless_numbers(s: &dyn BillingStore) {
    // Given partners prt_a (with two plans) and prt_b.
    partners_keep_their_plan_history(s).await;
    use crate::ledger::{DraftOutcome, InvoiceFilter};
    use peage_core::InvoiceStatus;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    s.create_partner(
        &typed("prt_696e7631000000000000"),
        "Inv One",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    s.create_partner(
        &typed("prt_696e7632000000000000"),
        "Inv Two",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    let d1 = draft("inv_31000000000000000000", "prt_696e7631000000000000", "10");
    assert!(matches!(
        s.save_draft(&d1).await.unwrap(),
        DraftOutcome::Created(_)
    ));
    assert!(matches!(
        s.save_draft(&d1).await.unwrap(),
        DraftOutcome::Unchanged(_)
    ));
    // A re-run with other usage replaces the draft's document and keeps its id.
    let mut d1b = draft("inv_6f746865720000000000", "prt_696e7631000000000000", "12");
    d1b.updated_at = t0 + Duration::hours(1);
    match s.save_draft(&d1b).await.unwrap() {
        DraftOutcome::Updated(r) => {
            assert_eq!(r.id, "inv_31000000000000000000");
            assert_eq!(r.invoice.total, Decimal::new(1200, 2));
        }
        other => panic!("{other:?}"),
    }
    s.save_draft(&draft(
        "inv_32000000000000000000",
        "prt_696e7632000000000000",
        "20",
    ))
    .await
    .unwrap();

    let at = Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap();
    // Finalizing something that is not there takes no number.
    assert!(matches!(
        s.finalize_invoice(
            &typed("inv_6e6f7065000000000000"),
            "TEST",
            at,
            "admin",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids()
        )
        .await,
        Err(BillingStoreError::NotFound { .. })
    ));
    let f2 = s
        .finalize_invoice(
            &typed("inv_32000000000000000000"),
            "TEST",
            at,
            "staff:ann@example.com",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids(),
        )
        .await
        .unwrap();
    assert_eq!(f2.number.as_deref(), Some("TEST-2026-000001"));
    assert_eq!(f2.status, InvoiceStatus::Finalized);
    assert_eq!(f2.finalized_by.as_deref(), Some("staff:ann@example.com"));
    assert_eq!(
        s.invoice(&typed("inv_32000000000000000000"))
            .await
            .unwrap()
            .unwrap(),
        f2,
        "who is stored"
    );
    // A second finalization is refused and takes no number either.
    assert!(matches!(
        s.finalize_invoice(
            &typed("inv_32000000000000000000"),
            "TEST",
            at,
            "staff:ann@example.com",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids()
        )
        .await,
        Err(BillingStoreError::Conflict(_))
    ));
    let f1 = s
        .finalize_invoice(
            &typed("inv_31000000000000000000"),
            "TEST",
            at,
            "admin",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids(),
        )
        .await
        .unwrap();
    assert_eq!(f1.number.as_deref(), Some("TEST-2026-000002"));
    assert_eq!(f1.invoice.total, Decimal::new(1200, 2));

    // A finalized invoice is never replaced by a later run.
    match s
        .save_draft(&draft(
            "inv_616761696e0000000000",
            "prt_696e7631000000000000",
            "99",
        ))
        .await
        .unwrap()
    {
        DraftOutcome::AlreadyFinal(r) => assert_eq!(r.invoice.total, Decimal::new(1200, 2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.invoice(&typed("inv_31000000000000000000"))
            .await
            .unwrap()
            .unwrap(),
        f1
    );

    let finals = s
        .invoices(&InvoiceFilter {
            period_label: Some("2026-11".into()),
            status: Some(InvoiceStatus::Finalized),
            partner_id: None,
            ended_after: None,
        })
        .await
        .unwrap();
    assert_eq!(finals.len(), 2);
    // By the end of their period: November's end is not after itself.
    let nov_end = finals[0].invoice.period.end;
    for (after, n) in [(nov_end - Duration::seconds(1), 2), (nov_end, 0)] {
        let ended = s
            .invoices(&InvoiceFilter {
                period_label: Some("2026-11".into()),
                status: Some(InvoiceStatus::Finalized),
                ended_after: Some(after),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ended.len(), n, "ended after {after}");
    }
    let one = s
        .invoices(&InvoiceFilter {
            partner_id: Some(typed("prt_696e7632000000000000")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);

    // Void keeps the number; voiding twice is refused; the period can then be drafted again.
    let v = s
        .void_invoice(
            &typed("inv_32000000000000000000"),
            at,
            "staff:bob@example.com",
        )
        .await
        .unwrap();
    assert_eq!(v.status, InvoiceStatus::Void);
    assert_eq!(v.voided_by.as_deref(), Some("staff:bob@example.com"));
    assert_eq!(v.finalized_by.as_deref(), Some("staff:ann@example.com"));
    assert_eq!(v.number.as_deref(), Some("TEST-2026-000001"));
    assert!(matches!(
        s.void_invoice(&typed("inv_32000000000000000000"), at, "admin")
            .await,
        Err(BillingStoreError::Conflict(_))
    ));
    assert!(matches!(
        s.save_draft(&draft(
            "inv_33000000000000000000",
            "prt_696e7632000000000000",
            "20"
        ))
        .await
        .unwrap(),
        DraftOutcome::Created(_)
    ));
    // A batch in one transaction: a finalized period stays, a draft is updated, a new one created.
    s.create_partner(
        &typed("prt_696e7633000000000000"),
        "Inv Three",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    let outcomes = s
        .save_drafts(&[
            draft("inv_62310000000000000000", "prt_696e7631000000000000", "99"),
            draft("inv_62320000000000000000", "prt_696e7632000000000000", "21"),
            draft("inv_62330000000000000000", "prt_696e7633000000000000", "30"),
        ])
        .await
        .unwrap();
    assert!(
        matches!(outcomes[0], DraftOutcome::AlreadyFinal(_)),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], DraftOutcome::Updated(r) if r.id == "inv_33000000000000000000"),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], DraftOutcome::Created(r) if r.id == "inv_62330000000000000000"),
        "{outcomes:?}"
    );
    let all = s.all_subscriptions().await.unwrap();
    assert_eq!(all["prt_696e7633000000000000"].len(), 1);
    assert_eq!(
        all["prt_61000000000000000000"].len(),
        2,
        "plan history, oldest first"
    );
    assert!(
        all["prt_61000000000000000000"][0].started_at
            < all["prt_61000000000000000000"][1].started_at
    );
    // Next year starts at 1 again.
    let next_year = Utc.with_ymd_and_hms(2027, 1, 2, 0, 0, 0).unwrap();
    let f3 = s
        .finalize_invoice(
            &typed("inv_33000000000000000000"),
            "TEST",
            next_year,
            "admin",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids(),
        )
        .await
        .unwrap();
    assert_eq!(f3.number.as_deref(), Some("TEST-2027-000001"));
}

pub async fn credits_are_taken_by_finalization_and_given_back_by_void(s: &dyn BillingStore) {
    use crate::ledger::CreditEntry;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    s.create_partner(
        &typed("prt_63726564000000000000"),
        "Cred",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    s.add_credit(&CreditEntry {
        id: "crd_grant1".into(),
        partner_id: typed("prt_63726564000000000000"),
        currency: "EUR".into(),
        amount: Decimal::new(3000, 2),
        description: "prepaid".into(),
        invoice_id: None,
        created_at: t0,
    })
    .await
    .unwrap();
    s.save_draft(&draft(
        "inv_63310000000000000000",
        "prt_63726564000000000000",
        "12.50",
    ))
    .await
    .unwrap();
    let at = t0 + Duration::days(31);
    let f = s
        .finalize_invoice(
            &typed("inv_63310000000000000000"),
            "CRED",
            at,
            "admin",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids(),
        )
        .await
        .unwrap();
    assert_eq!(f.invoice.credits_applied, Decimal::new(1250, 2));
    assert_eq!(f.invoice.amount_due, Decimal::new(0, 2));
    assert_eq!(
        s.credit_balance(&typed("prt_63726564000000000000"), "EUR")
            .await
            .unwrap(),
        Decimal::new(1750, 2)
    );
    assert_eq!(
        s.credit_balance(&typed("prt_63726564000000000000"), "USD")
            .await
            .unwrap(),
        Decimal::ZERO
    );
    s.void_invoice(&typed("inv_63310000000000000000"), at, "admin")
        .await
        .unwrap();
    assert_eq!(
        s.credit_balance(&typed("prt_63726564000000000000"), "EUR")
            .await
            .unwrap(),
        Decimal::new(3000, 2)
    );
    assert_eq!(
        s.credit_entries(&typed("prt_63726564000000000000"))
            .await
            .unwrap()
            .len(),
        3
    );
    let balances = s.credit_balances().await.unwrap();
    assert_eq!(
        balances[&(typed("prt_63726564000000000000"), "EUR".to_string())],
        Decimal::new(3000, 2)
    );
}

pub async fn plan_versions_and_profiles_are_kept(s: &dyn BillingStore) {
    use crate::ledger::BillingProfile;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    s.put_plan_version("growth", "abc", "{\"first\":1}", t0)
        .await
        .unwrap();
    s.put_plan_version("growth", "abc", "{\"second\":2}", t0)
        .await
        .unwrap();
    assert_eq!(
        s.plan_version("growth", "abc").await.unwrap().as_deref(),
        Some("{\"first\":1}")
    );
    assert_eq!(s.plan_version("growth", "zzz").await.unwrap(), None);
    s.create_partner(
        &typed("prt_70726f66000000000000"),
        "Prof",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    assert_eq!(
        s.billing_profile(&typed("prt_70726f66000000000000"))
            .await
            .unwrap(),
        None
    );
    let p = BillingProfile {
        partner_id: typed("prt_70726f66000000000000"),
        timezone: "Asia/Tokyo".into(),
        tax: Some(peage_core::pricing::TaxRate {
            rate: Decimal::new(10, 2),
            label: "JCT".into(),
        }),
        net_days: Some(45),
        details: None,
        updated_at: t0,
    };
    s.put_billing_profile(&p).await.unwrap();
    assert_eq!(
        s.billing_profile(&typed("prt_70726f66000000000000"))
            .await
            .unwrap(),
        Some(p.clone())
    );
    let q = BillingProfile {
        tax: None,
        net_days: None,
        ..p
    };
    s.put_billing_profile(&q).await.unwrap();
    assert_eq!(
        s.billing_profile(&typed("prt_70726f66000000000000"))
            .await
            .unwrap(),
        Some(q.clone())
    );
    assert_eq!(s.billing_profiles().await.unwrap(), vec![q.clone()]);
    // Billing details are set apart: finance's next profile change keeps them, and a partner
    // without a profile gets one in UTC.
    let details = peage_core::invoice::BillTo {
        legal_name: Some("Profile SAS".into()),
        address: vec!["1 rue Neuve".into(), "75001 Paris".into()],
        tax_id: Some("FR123".into()),
        email: Some("billing@profile.example".into()),
    };
    let id = typed("prt_70726f66000000000000");
    s.put_billing_details(&id, &details, t0).await.unwrap();
    s.put_billing_profile(&BillingProfile {
        net_days: Some(10),
        ..q.clone()
    })
    .await
    .unwrap();
    let after = s.billing_profile(&id).await.unwrap().unwrap();
    assert_eq!(
        (after.details.as_ref(), after.net_days),
        (Some(&details), Some(10))
    );
    s.create_partner(&typed("prt_70726f66000000000001"), "B", &sub("growth", t0))
        .await
        .unwrap();
    let other = typed("prt_70726f66000000000001");
    s.put_billing_details(&other, &details, t0).await.unwrap();
    let fresh = s.billing_profile(&other).await.unwrap().unwrap();
    assert_eq!(
        (fresh.timezone.as_str(), fresh.tax.is_none()),
        ("UTC", true)
    );
    assert_eq!(fresh.details, Some(details));
}

pub async fn webhooks_are_queued_once_per_event_and_logged(s: &dyn BillingStore) {
    use crate::ledger::{Attempt, WebhookEndpoint};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    for (id, events) in [
        ("ep_61000000000000000000", "invoice.finalized"),
        ("ep_62000000000000000000", "*"),
        ("ep_63000000000000000000", "quota.hard_blocked"),
    ] {
        s.add_webhook_endpoint(&WebhookEndpoint {
            id: typed(id),
            url: format!("http://127.0.0.1:9/{id}"),
            secret: "whsec_x".into(),
            events: crate::ledger::endpoint_events(events),
            created_at: t0,
            disabled_at: None,
        })
        .await
        .unwrap();
    }
    s.replace_webhook_secret(&typed("ep_62000000000000000000"), "enc:v1:x:b")
        .await
        .unwrap();
    let secrets: Vec<(String, String)> = s
        .webhook_endpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id.to_string(), e.secret))
        .collect();
    assert!(
        secrets.contains(&("ep_62000000000000000000".into(), "enc:v1:x:b".into())),
        "{secrets:?}"
    );
    assert!(
        secrets.contains(&("ep_61000000000000000000".into(), "whsec_x".into())),
        "{secrets:?}"
    );
    assert!(matches!(
        s.replace_webhook_secret(&typed("ep_6e6f6e65000000000000"), "x")
            .await,
        Err(BillingStoreError::NotFound { .. })
    ));
    let mut n = 0;
    let mut ids = std::iter::from_fn(move || {
        n += 1;
        Some(format!("msg_a{n:019}"))
    });
    let queued = s
        .enqueue_webhook(
            "invoice.finalized",
            "invoice.finalized:inv_1",
            "{}",
            &mut ids,
            t0,
        )
        .await
        .unwrap();
    assert_eq!(queued, 2, "ep_a and the wildcard ep_b");
    let again = s
        .enqueue_webhook(
            "invoice.finalized",
            "invoice.finalized:inv_1",
            "{}",
            &mut ids,
            t0,
        )
        .await
        .unwrap();
    assert_eq!(again, 0, "the same event is queued once");
    let due = s.due_webhooks(t0, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].1.secret, "whsec_x");
    let (first, second) = (&due[0].0.id, &due[1].0.id);
    s.record_webhook_attempt(first, t0, &Attempt::Delivered { status: 204 })
        .await
        .unwrap();
    s.record_webhook_attempt(
        second,
        t0,
        &Attempt::Retry {
            next: t0 + Duration::seconds(5),
            status: Some(503),
            error: "HTTP 503".into(),
        },
    )
    .await
    .unwrap();
    assert!(s.due_webhooks(t0, 10).await.unwrap().is_empty());
    assert_eq!(
        s.due_webhooks(t0 + Duration::seconds(5), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let log = s.webhook_deliveries(10).await.unwrap();
    assert_eq!(log.len(), 2);
    let retried = log.iter().find(|d| &d.id == second).unwrap();
    assert_eq!((retried.attempts, retried.last_status), (1, Some(503)));
    assert_eq!(retried.status, "pending");
    let delivered = log.iter().find(|d| &d.id == first).unwrap();
    assert_eq!(delivered.status, "delivered");
    // Finalizing queues its invoice.finalized in the same transaction (an outbox), once; a
    // refused finalization queues nothing.
    s.create_partner(
        &typed("prt_6f7574626f7800000000"),
        "Outbox",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    s.save_draft(&draft(
        "inv_6f7574626f7800000000",
        "prt_6f7574626f7800000000",
        "10",
    ))
    .await
    .unwrap();
    let at = t0 + Duration::days(31);
    let f = s
        .finalize_invoice(
            &typed("inv_6f7574626f7800000000"),
            "OUT",
            at,
            "admin",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids(),
        )
        .await
        .unwrap();
    assert!(s
        .finalize_invoice(
            &typed("inv_6f7574626f7800000000"),
            "OUT",
            at,
            "admin",
            peage_core::payment::DEFAULT_NET_DAYS,
            &mut msg_ids()
        )
        .await
        .is_err());
    let queued: Vec<_> = s
        .webhook_deliveries(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.event_key == "invoice.finalized:inv_6f7574626f7800000000")
        .collect();
    assert_eq!(queued.len(), 2, "ep_a and the wildcard ep_b, once each");
    let payload: serde_json::Value = serde_json::from_str(&queued[0].payload).unwrap();
    assert_eq!(payload["type"], "invoice.finalized");
    assert_eq!(payload["data"]["number"], f.number.clone().unwrap());
    assert_eq!(payload["data"]["total"], "10.00");
}

pub async fn partners_keep_their_plan_history(s: &dyn BillingStore) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let p = s
        .create_partner(
            &typed("prt_61000000000000000000"),
            "Acme",
            &sub("starter", t0),
        )
        .await
        .unwrap();
    assert_eq!(p.subscription.plan_id, "starter");
    assert!(
        s.create_partner(
            &typed("prt_61000000000000000000"),
            "Again",
            &sub("starter", t0)
        )
        .await
        .is_err(),
        "ids are unique"
    );
    let t1 = t0 + Duration::days(10);
    let p = s
        .change_subscription(&typed("prt_61000000000000000000"), &sub("growth", t1))
        .await
        .unwrap();
    assert_eq!(p.subscription.plan_id, "growth");
    let history = s
        .subscriptions(&typed("prt_61000000000000000000"))
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].ended_at, Some(t1));
    assert_eq!(history[1].ended_at, None);
    assert!(matches!(
        s.change_subscription(&typed("prt_7a7a0000000000000000"), &sub("growth", t1))
            .await,
        Err(BillingStoreError::NotFound { .. })
    ));
    s.create_partner(
        &typed("prt_62000000000000000000"),
        "Beta",
        &sub("starter", t1),
    )
    .await
    .unwrap();
    let all = s.partners().await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["prt_61000000000000000000", "prt_62000000000000000000"]
    );
    assert!(s
        .partner(&typed("prt_6e6f6e65000000000000"))
        .await
        .unwrap()
        .is_none());
}

pub async fn keys_are_found_by_hash_and_revocation_is_idempotent(s: &dyn BillingStore) {
    // Given partners prt_a and prt_b.
    partners_keep_their_plan_history(s).await;
    let now = Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap();
    let key = NewKey {
        key_id: typed("key_31000000000000000000"),
        partner_id: typed("prt_61000000000000000000"),
        env: Env::Live,
        secret_hash: "h1".into(),
        prefix: "pk_live_ab".into(),
        name: Some("production".into()),
        created_at: now,
    };
    s.create_key(&key).await.unwrap();
    s.create_key(&NewKey {
        key_id: typed("key_74000000000000000000"),
        env: Env::Sandbox,
        secret_hash: "h-test".into(),
        ..key.clone()
    })
    .await
    .unwrap();
    let found = s.key_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(
        (found.partner_id.as_str(), found.env, found.name.as_deref()),
        ("prt_61000000000000000000", Env::Live, Some("production"))
    );
    assert!(s.key_by_hash("h2").await.unwrap().is_none());
    assert_eq!(
        s.keys(&typed("prt_61000000000000000000"))
            .await
            .unwrap()
            .len(),
        2
    );
    let revoked = s
        .revoke_key(&typed("key_31000000000000000000"), now)
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(now));
    let again = s
        .revoke_key(&typed("key_31000000000000000000"), now + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(again.revoked_at, Some(now), "first revocation time is kept");
    // The feed gateways follow: revocations after a point in time, oldest first.
    let feed = s
        .keys_revoked_since(now - Duration::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(
        feed.iter()
            .map(|r| (r.key_id.as_str(), r.revoked_at))
            .collect::<Vec<_>>(),
        [("key_31000000000000000000", now)]
    );
    assert!(s.keys_revoked_since(now, 10).await.unwrap().is_empty());
    // A rotation's overlap: revoked in the future, out of the feed until then; revoking it
    // during the window ends the window at once.
    let later = Utc::now()
        .duration_trunc(Duration::microseconds(1))
        .unwrap()
        + Duration::hours(24);
    let sandbox = typed("key_74000000000000000000");
    let overlapping = s.revoke_key(&sandbox, later).await.unwrap();
    assert_eq!(overlapping.revoked_at, Some(later));
    assert!(s.keys_revoked_since(now, 10).await.unwrap().is_empty());
    let cut = Utc::now() - Duration::seconds(1);
    let ended = s.revoke_key(&sandbox, cut).await.unwrap();
    assert_eq!(
        ended.revoked_at.map(|t| t.timestamp_micros()),
        Some(cut.timestamp_micros())
    );
    assert_eq!(s.keys_revoked_since(now, 10).await.unwrap().len(), 1);
    assert!(matches!(
        s.revoke_key(&typed("key_78000000000000000000"), now).await,
        Err(BillingStoreError::NotFound { .. })
    ));
    let orphan = NewKey {
        partner_id: typed("prt_6e6f6e65000000000000"),
        key_id: typed("key_32000000000000000000"),
        secret_hash: "h3".into(),
        ..key.clone()
    };
    assert!(
        s.create_key(&orphan).await.is_err(),
        "no key without a partner"
    );
    let dup_hash = NewKey {
        key_id: typed("key_33000000000000000000"),
        ..key
    };
    assert!(
        s.create_key(&dup_hash).await.is_err(),
        "secret hashes are unique"
    );
}

pub async fn times_keep_microseconds(s: &dyn BillingStore) {
    let t =
        Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap() + Duration::microseconds(123_456);
    s.create_partner(
        &typed("prt_63000000000000000000"),
        "Gamma",
        &sub("starter", t),
    )
    .await
    .unwrap();
    let p = s
        .partner(&typed("prt_63000000000000000000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.created_at, p.subscription.started_at), (t, t));
}

/// Three gateways ask at once, 60 times each, for 7 units of a 500-unit hard quota: the grants
/// add up to exactly 500 and the ledger says so. Periods and envs are separate ledgers.
pub async fn concurrent_quota_grants_never_pass_a_hard_limit(s: &dyn BillingStore) {
    // Given partners prt_a and prt_b.
    partners_keep_their_plan_history(s).await;
    let period_start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let key = QuotaKey {
        partner_id: typed("prt_61000000000000000000"),
        env: Env::Live,
        meter: "calls".into(),
        period_start,
    };
    let quota = Quota {
        meter: "calls".into(),
        limit: Decimal::from(500),
        kind: QuotaKind::Hard,
        shadow: false,
        near_limit: None,
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

pub async fn signing_keys_rotate_and_issuers_belong_to_one_partner(s: &dyn BillingStore) {
    // Given partners prt_a and prt_b, and prt_a's sandbox key key_t.
    keys_are_found_by_hash_and_revocation_is_idempotent(s).await;
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
    // Re-encryption replaces a seed and nothing else.
    s.replace_signing_seed("k1", "enc:v1:x:k1").await.unwrap();
    let keys = s.signing_keys().await.unwrap();
    assert_eq!(
        (keys[1].seed.as_str(), keys[1].retired_at),
        ("enc:v1:x:k1", Some(t1))
    );
    assert_eq!(keys[0].seed, "seed-k2");
    assert!(matches!(
        s.replace_signing_seed("k9", "x").await,
        Err(BillingStoreError::NotFound { .. })
    ));

    let found = s
        .key(&typed("key_74000000000000000000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.env, Env::Sandbox);
    assert!(s
        .key(&typed("key_6e6f6e65000000000000"))
        .await
        .unwrap()
        .is_none());

    let issuer = TrustedIssuer {
        id: typed("iss_31000000000000000000"),
        partner_id: typed("prt_61000000000000000000"),
        issuer: "https://idp.acme.example".into(),
        jwks_url: "https://idp.acme.example/jwks".into(),
        algorithm: "RS256".into(),
        audience: "peage".into(),
        env: Env::Live,
        created_at: t0,
    };
    assert_eq!(s.put_issuer(&issuer).await.unwrap(), issuer);
    let moved = TrustedIssuer {
        id: typed("iss_32000000000000000000"),
        jwks_url: "https://idp.acme.example/jwks2".into(),
        ..issuer.clone()
    };
    let updated = s.put_issuer(&moved).await.unwrap();
    assert_eq!(
        (updated.id.as_str(), updated.jwks_url.as_str()),
        ("iss_31000000000000000000", "https://idp.acme.example/jwks2")
    );
    let stolen = TrustedIssuer {
        id: typed("iss_33000000000000000000"),
        partner_id: typed("prt_62000000000000000000"),
        ..issuer.clone()
    };
    assert!(matches!(
        s.put_issuer(&stolen).await,
        Err(BillingStoreError::Conflict(_))
    ));
    assert_eq!(
        s.issuer(&issuer.issuer).await.unwrap().unwrap().partner_id,
        "prt_61000000000000000000"
    );
    assert!(s.issuer("https://other").await.unwrap().is_none());
}

/// Creates a finalized invoice `inv_raw` for tests that then try to change it with raw SQL.
pub async fn finalized_for_raw_sql(s: &dyn BillingStore) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    s.create_partner(
        &typed("prt_72617700000000000000"),
        "Raw",
        &sub("growth", t0),
    )
    .await
    .unwrap();
    s.save_draft(&draft(
        "inv_72617700000000000000",
        "prt_72617700000000000000",
        "10",
    ))
    .await
    .unwrap();
    s.finalize_invoice(
        &typed("inv_72617700000000000000"),
        "RAW",
        t0 + Duration::days(31),
        "admin",
        peage_core::payment::DEFAULT_NET_DAYS,
        &mut msg_ids(),
    )
    .await
    .unwrap();
}

/// Statements that must all fail on a finalized invoice, whoever runs them.
/// What raw SQL may not do to the audit log (the schema's triggers), once it holds a record.
pub const RAW_AUDIT_TAMPERING: &[&str] = &[
    "UPDATE audit_log SET actor = 'nobody'",
    "DELETE FROM audit_log",
];

pub const RAW_TAMPERING: &[&str] = &[
    "UPDATE invoices SET total = '0.00' WHERE id = 'inv_72617700000000000000'",
    "UPDATE invoices SET document = '{}' WHERE id = 'inv_72617700000000000000'",
    "UPDATE invoices SET status = 'draft' WHERE id = 'inv_72617700000000000000'",
    "UPDATE invoices SET number = 'RAW-2026-000999' WHERE id = 'inv_72617700000000000000'",
    "UPDATE invoices SET finalized_by = 'someone else' WHERE id = 'inv_72617700000000000000'",
    "DELETE FROM invoices WHERE id = 'inv_72617700000000000000'",
];

/// A reloaded plan: its partners move to the new version from the reload, once each, and the
/// partners of other plans (and those already on it) stay as they are.
pub async fn partners_follow_a_plan_to_its_new_version_once(s: &dyn BillingStore) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let on = |plan: &str, version: &str| Subscription {
        plan_id: plan.into(),
        plan_version: version.into(),
        started_at: t0,
        ended_at: None,
    };
    let (a, b, c) = (
        typed::<PartnerId>("prt_a0000000000000000001"),
        typed::<PartnerId>("prt_a0000000000000000002"),
        typed::<PartnerId>("prt_a0000000000000000003"),
    );
    s.create_partner(&a, "A", &on("growth", "v1"))
        .await
        .unwrap();
    s.create_partner(&b, "B", &on("growth", "v2"))
        .await
        .unwrap();
    s.create_partner(&c, "C", &on("starter", "v1"))
        .await
        .unwrap();
    let at = t0 + Duration::days(10);
    let moved = s.follow_plan_version("growth", "v2", at).await.unwrap();
    assert_eq!(moved, vec![a.clone()]);
    assert!(s
        .follow_plan_version("growth", "v2", at)
        .await
        .unwrap()
        .is_empty());
    let history = s.subscriptions(&a).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].ended_at, Some(at));
    assert_eq!(
        (history[1].plan_version.as_str(), history[1].started_at),
        ("v2", at)
    );
    assert_eq!(s.subscriptions(&b).await.unwrap().len(), 1);
    assert_eq!(s.subscriptions(&c).await.unwrap().len(), 1);
    assert_eq!(
        s.partner(&a)
            .await
            .unwrap()
            .unwrap()
            .subscription
            .plan_version,
        "v2"
    );
}

/// The catalog of record: each version kept once, one in force at a time, and each role
/// instance's last report.
pub async fn the_catalog_in_force_is_one_and_roles_report_theirs(s: &dyn BillingStore) {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    assert_eq!(s.catalog_in_force().await.unwrap(), None);
    assert!(s
        .put_catalog_in_force("v1", "[[plan]]", "test", t0)
        .await
        .unwrap());
    assert!(!s
        .put_catalog_in_force("v1", "[[plan]]", "test", t0)
        .await
        .unwrap());
    let t1 = t0 + Duration::minutes(5);
    assert!(s
        .put_catalog_in_force("v2", "# v2", "billing:b1", t1)
        .await
        .unwrap());
    let now = s.catalog_in_force().await.unwrap().unwrap();
    assert_eq!((now.version.as_str(), now.text.as_str()), ("v2", "# v2"));
    assert_eq!((now.since, now.accepted_by.as_str()), (t1, "billing:b1"));
    // Back to a version seen before: in force again, from then.
    let t2 = t1 + Duration::minutes(5);
    assert!(s
        .put_catalog_in_force("v1", "[[plan]]", "test", t2)
        .await
        .unwrap());
    let back = s.catalog_in_force().await.unwrap().unwrap();
    assert_eq!(
        (back.version.as_str(), back.since, back.accepted_at),
        ("v1", t2, t0)
    );
    // Every accepted version stays, the latest first, its text kept for previews.
    let accepted: Vec<String> = s
        .accepted_catalogs()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.version)
        .collect();
    assert_eq!(accepted, ["v2", "v1"]);
    assert_eq!(
        s.accepted_catalog_text("v2").await.unwrap().as_deref(),
        Some("# v2")
    );
    assert_eq!(s.accepted_catalog_text("v3").await.unwrap(), None);

    s.report_catalog("gateway", "gw-2", "v1", t0).await.unwrap();
    s.report_catalog("gateway", "gw-1", "v1", t0).await.unwrap();
    s.report_catalog("gateway", "gw-1", "v2", t1).await.unwrap();
    let roles = s.catalog_roles().await.unwrap();
    let seen: Vec<(&str, &str)> = roles
        .iter()
        .map(|r| (r.instance.as_str(), r.version.as_str()))
        .collect();
    assert_eq!(seen, [("gw-1", "v2"), ("gw-2", "v1")]);
    assert_eq!(roles[0].seen_at, t1);
}

pub async fn a_scheduled_plan_change_applies_once_and_is_cancelled_only_while_pending(
    s: &dyn BillingStore,
) {
    use crate::{PlanChange, PlanChangeStatus};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 6, 0, 0, 0).unwrap();
    let boundary = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let pid: PartnerId = typed("prt_706c616e6368616e6765");
    let other: PartnerId = typed("prt_6f746865727061727400");
    s.create_partner(&pid, "A", &sub("monthly", t0))
        .await
        .unwrap();
    s.create_partner(&other, "B", &sub("monthly", t0))
        .await
        .unwrap();
    let change = |id: &str, plan: &str, at| PlanChange {
        id: typed(id),
        partner_id: pid.clone(),
        plan_id: plan.into(),
        at,
        scheduled_at: t0 + Duration::hours(1),
        scheduled_by: "test".into(),
        status: PlanChangeStatus::Pending,
        settled_at: None,
        settled_by: None,
        error: None,
    };
    let first = change("pch_00000000000000000001", "yearly", boundary);
    assert_eq!(s.schedule_plan_change(&first).await.unwrap(), None);
    assert_eq!(
        s.pending_plan_change(&pid).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(s.pending_plan_change(&other).await.unwrap(), None);
    // Another one replaces it: one pending per partner.
    let second = change("pch_00000000000000000002", "yearly-pro", boundary);
    let replaced = s.schedule_plan_change(&second).await.unwrap().unwrap();
    assert_eq!(
        (replaced.id.as_str(), replaced.status),
        (first.id.as_str(), PlanChangeStatus::Cancelled)
    );
    assert_eq!(
        s.pending_plan_change(&pid).await.unwrap().unwrap().id,
        second.id
    );
    // Not due before its time; due from it.
    assert!(s
        .due_plan_changes(boundary - Duration::microseconds(1))
        .await
        .unwrap()
        .is_empty());
    let due = s.due_plan_changes(boundary).await.unwrap();
    assert_eq!(due.len(), 1);
    // Another partner cannot cancel it.
    assert!(matches!(
        s.settle_plan_change(
            &other,
            &second.id,
            PlanChangeStatus::Cancelled,
            "x",
            None,
            t0
        )
        .await,
        Err(BillingStoreError::NotFound { .. })
    ));
    // Applied once: the second claim finds it applied and moves no one.
    let next = Subscription {
        plan_id: "yearly-pro".into(),
        plan_version: "v-yearly-pro".into(),
        started_at: boundary,
        ended_at: None,
    };
    let applied_at = boundary + Duration::seconds(1);
    let moved = s
        .apply_plan_change(&due[0], &next, applied_at)
        .await
        .unwrap();
    assert_eq!(moved.unwrap().subscription, next);
    assert_eq!(
        s.apply_plan_change(&due[0], &next, applied_at)
            .await
            .unwrap(),
        None
    );
    let subs = s.subscriptions(&pid).await.unwrap();
    assert_eq!(subs.len(), 2, "{subs:?}");
    assert_eq!(subs[0].ended_at, Some(boundary));
    // Once applied it can no longer be cancelled, and nothing is pending or due.
    match s
        .settle_plan_change(&pid, &second.id, PlanChangeStatus::Cancelled, "x", None, t0)
        .await
    {
        Err(BillingStoreError::Conflict(m)) => assert!(m.contains("applied"), "{m}"),
        other => panic!("an applied change cannot be cancelled: {other:?}"),
    }
    assert_eq!(s.pending_plan_change(&pid).await.unwrap(), None);
    assert!(s.due_plan_changes(applied_at).await.unwrap().is_empty());
    let history = s.plan_changes(&pid).await.unwrap();
    let seen: Vec<(&str, PlanChangeStatus)> =
        history.iter().map(|c| (c.id.as_str(), c.status)).collect();
    assert_eq!(
        seen,
        [
            (second.id.as_str(), PlanChangeStatus::Applied),
            (first.id.as_str(), PlanChangeStatus::Cancelled)
        ]
    );
    assert_eq!(history[0].settled_at, Some(applied_at));
}

pub async fn coupons_are_created_once_and_attached_once_at_a_time(s: &dyn BillingStore) {
    use peage_core::coupon::{Coupon, CouponDuration, Discount};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 6, 0, 0, 0).unwrap();
    let pid: PartnerId = typed("prt_636f75706f6e70617274");
    let other: PartnerId = typed("prt_6f746865727061727401");
    s.create_partner(&pid, "A", &sub("monthly", t0))
        .await
        .unwrap();
    s.create_partner(&other, "B", &sub("monthly", t0))
        .await
        .unwrap();
    let launch = Coupon {
        code: "LAUNCH20".into(),
        name: "Launch".into(),
        discount: Discount::Percent {
            rate: Decimal::new(2, 1),
        },
        duration: CouponDuration::Periods { count: 3 },
        plans: vec!["monthly".into()],
        meters: vec![],
        expires_at: Some(t0 + Duration::days(30)),
    };
    let made = s.create_coupon(&launch, t0, "admin").await.unwrap();
    assert_eq!(made.coupon, launch);
    assert!(matches!(
        s.create_coupon(&launch, t0, "admin").await,
        Err(BillingStoreError::Conflict(_))
    ));
    assert_eq!(s.coupon("LAUNCH20").await.unwrap().unwrap().coupon, launch);
    assert!(s.coupon("NOPE").await.unwrap().is_none());
    assert_eq!(s.coupons().await.unwrap().len(), 1);

    let first: PartnerCouponId = typed("pcp_00000000000000000001");
    let a = s
        .attach_coupon(&first, &pid, "LAUNCH20", t0 + Duration::hours(1), "admin")
        .await
        .unwrap();
    assert_eq!((a.coupon.code.as_str(), a.removed_at), ("LAUNCH20", None));
    assert!(matches!(
        s.attach_coupon(
            &typed("pcp_00000000000000000002"),
            &pid,
            "LAUNCH20",
            t0,
            "admin"
        )
        .await,
        Err(BillingStoreError::Conflict(_))
    ));
    // Removing is for the partner's own coupon, once.
    assert!(matches!(
        s.remove_coupon(&other, &first, t0, "admin").await,
        Err(BillingStoreError::NotFound { .. })
    ));
    let removed = s
        .remove_coupon(&pid, &first, t0 + Duration::days(2), "admin")
        .await
        .unwrap();
    assert_eq!(removed.removed_at, Some(t0 + Duration::days(2)));
    assert!(matches!(
        s.remove_coupon(&pid, &first, t0, "admin").await,
        Err(BillingStoreError::Conflict(_))
    ));
    // Once removed it can be attached again; history keeps both, in order.
    s.attach_coupon(
        &typed("pcp_00000000000000000003"),
        &pid,
        "LAUNCH20",
        t0 + Duration::days(3),
        "admin",
    )
    .await
    .unwrap();
    s.attach_coupon(
        &typed("pcp_00000000000000000004"),
        &other,
        "LAUNCH20",
        t0,
        "admin",
    )
    .await
    .unwrap();
    let mine = s.partner_coupons(&pid).await.unwrap();
    assert_eq!(
        mine.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["pcp_00000000000000000001", "pcp_00000000000000000003"]
    );
    assert_eq!(s.all_partner_coupons().await.unwrap().len(), 3);
}

pub async fn credit_notes_are_numbered_apart_and_never_credit_more_than_the_invoice(
    s: &dyn BillingStore,
) {
    use crate::ledger::credit_notes::CreditNoteRefusal;
    use peage_core::credit_note::{CreditMethod, CreditNoteRequest, CreditedLineRequest};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let pid = "prt_63726564697470617274";
    s.create_partner(&typed(pid), "A", &sub("growth", t0))
        .await
        .unwrap();
    let inv_id: InvoiceId = typed("inv_63726564697400000000");
    s.save_draft(&draft(inv_id.as_str(), pid, "30"))
        .await
        .unwrap();
    let at = Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap();
    let req = |line: Option<&str>, amount: Option<&str>, method| CreditNoteRequest {
        reason: "outage".into(),
        method,
        lines: line
            .map(|a| {
                vec![CreditedLineRequest {
                    line: 0,
                    amount: Some(a.parse().unwrap()),
                }]
            })
            .unwrap_or_default(),
        amount: amount.map(|a| a.parse().unwrap()),
    };
    // A draft takes no note (and no number).
    assert!(matches!(
        s.create_credit_note(
            &typed("cn_00000000000000000001"),
            &inv_id,
            &req(None, Some("1"), CreditMethod::Refund),
            "TEST",
            at,
            "admin",
            &mut msg_ids()
        )
        .await,
        Err(CreditNoteRefusal::Store(BillingStoreError::Conflict(_)))
    ));
    s.finalize_invoice(&inv_id, "TEST", at, "admin", 30, &mut msg_ids())
        .await
        .unwrap();
    let first = s
        .create_credit_note(
            &typed("cn_00000000000000000002"),
            &inv_id,
            &req(Some("10"), None, CreditMethod::Credit),
            "TEST",
            at,
            "staff:ann@example.com",
            &mut msg_ids(),
        )
        .await
        .unwrap();
    assert_eq!(
        first.number, "TEST-CN-2026-000001",
        "its own series, from 1"
    );
    assert_eq!(first.note.total, Decimal::from(10));
    // Credited to the balance, in the same transaction.
    assert_eq!(
        s.credit_balance(&typed(pid), "EUR").await.unwrap(),
        Decimal::from(10)
    );
    // 20.00 left of the line: 25 is refused (no number taken), 20 is taken.
    assert!(matches!(
        s.create_credit_note(
            &typed("cn_00000000000000000003"),
            &inv_id,
            &req(Some("25"), None, CreditMethod::Refund),
            "TEST",
            at,
            "admin",
            &mut msg_ids()
        )
        .await,
        Err(CreditNoteRefusal::Rule(_))
    ));
    let second = s
        .create_credit_note(
            &typed("cn_00000000000000000004"),
            &inv_id,
            &req(None, Some("20"), CreditMethod::Refund),
            "TEST",
            at,
            "admin",
            &mut msg_ids(),
        )
        .await
        .unwrap();
    assert_eq!(
        second.number, "TEST-CN-2026-000002",
        "gapless after a refusal"
    );
    assert_eq!(
        s.credit_balance(&typed(pid), "EUR").await.unwrap(),
        Decimal::from(10),
        "a refund leaves the balance alone"
    );
    let notes = s.credit_notes_of(&inv_id).await.unwrap();
    assert_eq!(notes, [first.clone(), second]);
    assert_eq!(s.credit_note(&first.id).await.unwrap(), Some(first));
}

pub async fn payments_never_pay_more_than_is_due_and_overdue_is_reported_once(
    s: &dyn BillingStore,
) {
    use crate::ledger::payments::PaymentRefusal;
    use peage_core::payment::{InvoiceState, PaymentError, PaymentRequest};
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let pid = "prt_7061796d656e74730000";
    s.create_partner(&typed(pid), "A", &sub("growth", t0))
        .await
        .unwrap();
    let inv_id: InvoiceId = typed("inv_7061796d656e74000000");
    s.save_draft(&draft(inv_id.as_str(), pid, "30"))
        .await
        .unwrap();
    let at = Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap();
    let req = |amount: i64| PaymentRequest {
        amount: Decimal::from(amount),
        paid_on: None,
        reference: "wire".into(),
    };
    let id = |i: u32| typed::<peage_core::ids::PaymentId>(&format!("pay_{i:020x}"));
    // A draft takes none.
    assert!(matches!(
        s.record_payment(&id(0), &inv_id, &req(10), at, "admin", &mut msg_ids())
            .await,
        Err(PaymentRefusal::Rule(PaymentError::NotPayable("draft")))
    ));
    let fin = s
        .finalize_invoice(&inv_id, "TEST", at, "admin", 10, &mut msg_ids())
        .await
        .unwrap();
    assert_eq!(fin.payment.due_at, Some(at + Duration::days(10)));
    assert_eq!(fin.state, InvoiceState::Open);
    // Eight concurrent payments of 10 against 30 due: three pass, one settles it.
    let payments = (1..=8u32).map(|i| {
        let (inv_id, req) = (&inv_id, req(10));
        async move {
            s.record_payment(&id(i), inv_id, &req, at, "admin", &mut msg_ids())
                .await
        }
    });
    let answers = futures::future::join_all(payments).await;
    let passed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    assert_eq!(passed.len(), 3, "{answers:?}");
    assert_eq!(
        passed
            .iter()
            .filter(|(_, r)| r.state == InvoiceState::Paid)
            .count(),
        1
    );
    assert_eq!(s.payments_of(&inv_id).await.unwrap().len(), 3);
    let paid = s.invoice(&inv_id).await.unwrap().unwrap();
    assert_eq!(paid.payment.amount_paid, Decimal::new(3000, 2));
    assert_eq!(paid.payment.paid_at.map(|t| t >= at), Some(true));
    // A paid invoice is not voided, nor reported overdue.
    assert!(matches!(
        s.void_invoice(&inv_id, at, "admin").await,
        Err(BillingStoreError::Conflict(_))
    ));
    let later = at + Duration::days(11);
    assert!(s
        .mark_overdue(later, 10, &mut msg_ids())
        .await
        .unwrap()
        .is_empty());

    // Another invoice, unpaid past its due date: reported once by two scans at once.
    let other_partner = "prt_7061796d656e74730001";
    s.create_partner(&typed(other_partner), "B", &sub("growth", t0))
        .await
        .unwrap();
    let other: InvoiceId = typed("inv_7061796d656e74000001");
    s.save_draft(&draft(other.as_str(), other_partner, "40"))
        .await
        .unwrap();
    s.finalize_invoice(&other, "TEST", at, "admin", 10, &mut msg_ids())
        .await
        .unwrap();
    let (a, b) = futures::future::join(
        s.mark_overdue(later, 10, &mut msg_ids()),
        s.mark_overdue(later, 10, &mut msg_ids()),
    )
    .await;
    let marked: Vec<_> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0].state, InvoiceState::Overdue);
    assert!(s
        .mark_overdue(later, 10, &mut msg_ids())
        .await
        .unwrap()
        .is_empty());
    let written_off = s.mark_uncollectible(&other, later, "admin").await.unwrap();
    assert_eq!(written_off.state, InvoiceState::Uncollectible);
    assert!(s.mark_uncollectible(&other, later, "admin").await.is_err());
}

pub async fn a_job_lease_has_one_holder_until_it_expires(s: &dyn BillingStore) {
    let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let ttl = Duration::minutes(5);
    assert!(s.try_lease("auto-finalize", "a", t0, ttl).await.unwrap());
    assert!(!s.try_lease("auto-finalize", "b", t0, ttl).await.unwrap());
    // Renewed by its holder; another job is another lease.
    let t1 = t0 + Duration::minutes(4);
    assert!(s.try_lease("auto-finalize", "a", t1, ttl).await.unwrap());
    assert!(s.try_lease("other", "b", t1, ttl).await.unwrap());
    assert!(!s
        .try_lease("auto-finalize", "b", t0 + Duration::minutes(8), ttl)
        .await
        .unwrap());
    // Its holder gone, taken over once expired.
    let t2 = t1 + ttl + Duration::seconds(1);
    assert!(s.try_lease("auto-finalize", "b", t2, ttl).await.unwrap());
    assert!(!s.try_lease("auto-finalize", "a", t2, ttl).await.unwrap());
}

pub async fn alerts_are_listed_until_deleted_and_each_notice_is_kept_once(s: &dyn BillingStore) {
    use crate::{AlertNotice, AlertRecord};
    use peage_core::alert::{AlertMetric, AlertRule};
    let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let (pa, pb) = ("prt_616c65727473000000a1", "prt_616c65727473000000b2");
    for p in [pa, pb] {
        s.create_partner(&typed(p), "A", &sub("growth", t0))
            .await
            .unwrap();
    }
    let alert = |i: u32, partner: &str, metric, meter: Option<&str>| AlertRecord {
        id: typed(&format!("alr_{i:020x}")),
        partner_id: typed(partner),
        rule: AlertRule {
            metric,
            meter: meter.map(str::to_string),
            budget: Decimal::new(12345, 2),
            thresholds: vec![50, 80, 100],
        },
        created_at: t0 + Duration::seconds(i.into()),
        created_by: "partner:a".into(),
    };
    let (a1, a2, b1) = (
        alert(1, pa, AlertMetric::Spend, None),
        alert(2, pa, AlertMetric::Usage, Some("calls")),
        alert(3, pb, AlertMetric::Spend, None),
    );
    for a in [&a1, &a2, &b1] {
        s.create_alert(a).await.unwrap();
    }
    assert_eq!(
        s.alerts(Some(&typed(pa))).await.unwrap(),
        [a1.clone(), a2.clone()]
    );
    assert_eq!(s.alerts(None).await.unwrap().len(), 3);
    let notice = |threshold: u32, period_start: DateTime<Utc>| AlertNotice {
        alert_id: a1.id.clone(),
        partner_id: typed(pa),
        period_start,
        threshold,
        level: Decimal::new(6173, 2),
        value: Decimal::new(700, 1),
        unit: "EUR".into(),
        reached_at: t0 + Duration::days(3),
    };
    // Once per alert, period and threshold.
    assert!(s.record_alert_notice(&notice(50, t0)).await.unwrap());
    assert!(!s.record_alert_notice(&notice(50, t0)).await.unwrap());
    assert!(s.record_alert_notice(&notice(80, t0)).await.unwrap());
    let next = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    assert!(s.record_alert_notice(&notice(50, next)).await.unwrap());
    let this_period = s.alert_notices(&typed(pa), t0).await.unwrap();
    assert_eq!(this_period.len(), 3);
    assert_eq!(
        s.alert_notices(&typed(pa), next).await.unwrap(),
        [notice(50, next)]
    );
    assert!(s.alert_notices(&typed(pb), t0).await.unwrap().is_empty());
    // Deleted by its own partner only, once; its notices stay.
    assert!(!s
        .delete_alert(&typed(pb), &a1.id, t0, "partner:b")
        .await
        .unwrap());
    assert!(s
        .delete_alert(&typed(pa), &a1.id, t0, "partner:a")
        .await
        .unwrap());
    assert!(!s
        .delete_alert(&typed(pa), &a1.id, t0, "partner:a")
        .await
        .unwrap());
    assert_eq!(s.alerts(Some(&typed(pa))).await.unwrap(), [a2]);
    assert_eq!(s.alert_notices(&typed(pa), t0).await.unwrap().len(), 3);
}

pub async fn erasure_removes_personal_data_and_keeps_invoices(s: &dyn BillingStore) {
    use peage_core::InvoiceStatus;
    // prt_a (two plans, keys "production" and a sandbox one) and prt_b.
    keys_are_found_by_hash_and_revocation_is_idempotent(s).await;
    let a: PartnerId = typed("prt_61000000000000000000");
    let b: PartnerId = typed("prt_62000000000000000000");
    let at = Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 0).unwrap();
    s.set_external_id(&a, Some("crm-42")).await.unwrap();
    let details = peage_core::invoice::BillTo {
        legal_name: Some("Acme SAS".into()),
        address: vec!["1 rue de la Paix".into(), "75002 Paris".into()],
        tax_id: Some("FR12345678901".into()),
        email: Some("billing@acme.example".into()),
    };
    s.put_billing_details(&a, &details, at).await.unwrap();
    s.put_billing_details(&b, &details, at).await.unwrap();
    // A finalized invoice issued to those details, and a draft.
    let mut issued = draft("inv_65726173650000000000", a.as_str(), "10");
    issued.invoice.bill_to = Some(details.clone());
    s.save_draft(&issued).await.unwrap();
    s.finalize_invoice(
        &typed("inv_65726173650000000000"),
        "TEST",
        at,
        "admin",
        peage_core::payment::DEFAULT_NET_DAYS,
        &mut msg_ids(),
    )
    .await
    .unwrap();
    let mut open = draft("inv_6f70656e000000000000", a.as_str(), "5");
    open.invoice.period.start += Duration::days(30);
    open.invoice.period.end += Duration::days(31);
    open.period_label = "2026-12".into();
    s.save_draft(&open).await.unwrap();

    // Refused while a draft is open, naming it; nothing changed.
    match s.erase_partner(&a, at).await {
        Err(BillingStoreError::Conflict(m)) => {
            assert!(m.contains("inv_6f70656e000000000000"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.partner(&a).await.unwrap().unwrap().name, "Acme");
    s.void_invoice(&typed("inv_6f70656e000000000000"), at, "admin")
        .await
        .unwrap();

    let erased = s.erase_partner(&a, at).await.unwrap();
    assert_eq!(erased.partner_id, a.as_str());
    assert_eq!(erased.invoices_kept, 2);
    assert!(erased.keys_revoked >= 1, "{erased:?}");
    let p = s.partner(&a).await.unwrap().unwrap();
    assert_eq!(p.name, crate::erasure::ERASED_NAME);
    assert_eq!(p.external_id, None);
    assert!(s.partner_by_external_id("crm-42").await.unwrap().is_none());
    assert_eq!(p.subscription.ended_at, Some(at));
    assert_eq!(
        s.billing_profile(&a).await.unwrap().and_then(|p| p.details),
        None
    );
    for k in s.keys(&a).await.unwrap() {
        assert_eq!(k.name, None);
        assert!(k.revoked_at.is_some_and(|r| r <= at), "{k:?}");
    }
    // The finalized invoice is kept as issued, billing details included.
    let kept = s
        .invoice(&typed("inv_65726173650000000000"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.status, InvoiceStatus::Finalized);
    assert_eq!(kept.invoice.bill_to, Some(details.clone()));
    // Once only; another partner is untouched; an unknown one is not found.
    assert!(matches!(
        s.erase_partner(&a, at).await,
        Err(BillingStoreError::Conflict(_))
    ));
    assert_eq!(s.partner(&b).await.unwrap().unwrap().name, "Beta");
    assert_eq!(
        s.billing_profile(&b).await.unwrap().and_then(|p| p.details),
        Some(details)
    );
    assert!(matches!(
        s.erase_partner(&typed("prt_6e6f6e65000000000000"), at)
            .await,
        Err(BillingStoreError::NotFound { .. })
    ));
}
