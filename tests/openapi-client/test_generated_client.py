"""The control API through a client generated from the committed OpenAPI document.

deploy/dev/openapi-client.sh generates `peage_client` with openapi-python-client from
schemas/openapi/control-api.yaml, starts a fresh `peage up --demo`, and runs this file against
it. Every answer is parsed by the generated models (`from_dict`): a field the document
promises but the server leaves out, an enum value it does not list, or a status it does not
declare fails here. It walks what a partner integration and a finance script do: partners,
keys, events, usage, quotas, invoices and their exports, credits, tokens, staff and the audit
log.

Usage: python test_generated_client.py DEMO_JSON (the file `peage up --demo` writes)
"""

import datetime
import hashlib
import sys
import uuid

from peage_client import AuthenticatedClient
from peage_client.api.catalog import (
    get_api_document,
    list_apis,
    list_catalog_versions,
    list_plans,
)
from peage_client.api.dashboard import create_sign_in_link, get_session
from peage_client.api.events import cancel_events
from peage_client.api.gateway import gateway_key_by_hash, gateway_revocations
from peage_client.api.invoices import (
    add_credit,
    get_billing_profile,
    get_invoice,
    get_upcoming_invoice,
    list_credits,
    preview_invoice,
    preview_invoice_with_catalog,
    list_invoices,
    put_billing_profile,
    run_invoices,
)
from peage_client.api.oauth import jwks, oauth_token, rotate_signing_key
from peage_client.api.operations import (
    add_staff_member,
    create_service_token,
    list_audit_records,
    list_service_tokens,
    list_staff,
)
from peage_client.api.partners import (
    cancel_plan_change,
    change_subscription,
    create_key,
    create_partner,
    get_partner,
    list_keys,
    list_partners,
    list_plan_changes,
    partners_overview,
    patch_partner,
    rotate_key,
)
from peage_client.api.usage import get_quotas, get_usage, get_usage_series, lease_quota
from peage_client.api.webhooks import list_webhook_deliveries, list_webhooks
from peage_client import models


def ok(response, status, model):
    """The parsed answer of a call that must succeed with `status` as a `model`."""
    assert response.status_code == status, (
        f"{response.status_code} {response.content[:500]!r}"
    )
    assert isinstance(response.parsed, model), (
        f"{type(response.parsed).__name__} is not {model.__name__}: {response.content[:500]!r}"
    )
    return response.parsed


def main(control_url, admin_token, gateway_url, demo_key):
    import httpx

    client = AuthenticatedClient(base_url=control_url, token=admin_token, raise_on_unexpected_status=True)

    me = ok(get_session.sync_detailed(client=client), 200, models.SessionInfo)
    assert me.role == "admin"

    # The catalog, with every charge model's own schema.
    plans = ok(list_plans.sync_detailed(client=client), 200, models.PlansView)
    demo_plan = next(p for p in plans.plans if p.id == "demo")
    assert demo_plan.currency == "EUR"
    assert isinstance(demo_plan.charges[0], models.ChargeGraduated), demo_plan.charges
    assert demo_plan.charges[0].tiers[1].up_to is None
    apis = ok(list_apis.sync_detailed(client=client), 200, models.ApisView)
    demo_api = next(a for a in apis.apis if a.name == "demo")
    assert {v.id for v in demo_api.versions} == {"v0", "v1"}
    document = ok(
        get_api_document.sync_detailed("demo", "v1", client=client), 200, models.ApiDocument
    )
    assert document.openapi.startswith("3.")

    # Some calls through the gateway, so usage, quotas and invoices have something to show.
    for _ in range(3):
        r = httpx.get(f"{gateway_url}/demo/v1/hello", headers={"Authorization": f"Bearer {demo_key}"})
        assert r.status_code == 200, r.text

    # Partners and keys.
    partners = ok(list_partners.sync_detailed(client=client), 200, models.PartnerList)
    demo = next(p for p in partners.partners if p.name == "Demo Partner")
    assert demo.subscription.plan_id == "demo"
    external = f"cust-{uuid.uuid4().hex[:8]}"
    acme = ok(
        create_partner.sync_detailed(
            client=client,
            body=models.NewPartner(name="Acme Corp", plan="demo", external_id=external),
        ),
        201,
        models.Partner,
    )
    assert acme.external_id == external
    got = ok(get_partner.sync_detailed(acme.id, client=client), 200, models.PartnerView)
    assert got.id == acme.id
    assert got.pending_change is None

    # A move to the yearly dollar plan, scheduled for the 1st of January, listed, cancelled.
    new_year = f"{datetime.date.today().year + 1}-01-01"
    scheduled = ok(
        change_subscription.sync_detailed(
            acme.id,
            client=client,
            body=models.SubscriptionRequest(plan="enterprise-yearly", at=new_year),
        ),
        200,
        models.PartnerView,
    )
    assert scheduled.subscription.plan_id == "demo"
    change = scheduled.pending_change
    assert change.plan_id == "enterprise-yearly" and change.status == models.PlanChangeStatus.PENDING
    changes = ok(list_plan_changes.sync_detailed(acme.id, client=client), 200, models.PlanChangeList)
    assert [c.id for c in changes.plan_changes] == [change.id]
    cancelled = ok(
        cancel_plan_change.sync_detailed(acme.id, change.id, client=client), 200, models.PlanChange
    )
    assert cancelled.status == models.PlanChangeStatus.CANCELLED

    # What Acme would pay on the Scale plan, and under an uploaded catalog; nothing is saved.
    preview = ok(
        preview_invoice.sync_detailed(acme.id, client=client, plan="scale"), 200, models.InvoicePreview
    )
    assert preview.plan_id == "scale" and preview.preview.invoice.currency == "EUR"
    assert preview.current.id == "upcoming" and preview.preview.id == "preview"
    versions = ok(list_catalog_versions.sync_detailed(client=client), 200, models.CatalogVersions)
    assert versions.in_force in {v.version for v in versions.versions}
    catalog_text = [c for c in versions.versions if c.version == versions.in_force]
    assert catalog_text, versions
    import io
    from peage_client.types import File

    uploaded_toml = (
        '[[meter]]\nname = "calls"\naggregation = "count"\n\n'
        '[[plan]]\nid = "demo"\nname = "Demo, uploaded"\ncurrency = "EUR"\n'
        'period = { every = "month", anchor_day = 1 }\nbase_fee = "1.00"\n'
    )
    uploaded = ok(
        preview_invoice_with_catalog.sync_detailed(
            acme.id,
            client=client,
            body=File(payload=io.BytesIO(uploaded_toml.encode()), mime_type="application/toml"),
        ),
        200,
        models.InvoicePreview,
    )
    # Acme joined today: the uploaded plan's 1.00 base fee, prorated from then.
    base = uploaded.preview.invoice.lines[0]
    assert base.description.startswith("Demo, uploaded: base fee"), base
    assert float(base.unit_price) == 1.0 and 0 < float(base.amount) <= 1.0, base
    assert uploaded.catalog_version != versions.in_force
    patched = ok(
        patch_partner.sync_detailed(acme.id, client=client, body=models.PartnerChange(external_id=None)),
        200,
        models.Partner,
    )
    assert patched.external_id is None
    key = ok(
        create_key.sync_detailed(acme.id, client=client, body=models.KeyRequest(env="live")),
        201,
        models.CreatedKey,
    )
    assert key.secret.startswith("pk_live_")
    keys = ok(list_keys.sync_detailed(acme.id, client=client), 200, models.KeyList)
    assert [k.key_id for k in keys.keys] == [key.key_id]
    assert keys.keys[0].env == models.Env.LIVE
    rotated = ok(rotate_key.sync_detailed(key.key_id, client=client), 201, models.CreatedKey)
    assert rotated.key_id != key.key_id

    # What a gateway reads.
    gk = ok(
        gateway_key_by_hash.sync_detailed(
            hashlib.sha256(rotated.secret.encode()).hexdigest(), client=client
        ),
        200,
        models.GatewayKey,
    )
    assert gk.partner_id == acme.id and not gk.revoked
    page = ok(gateway_revocations.sync_detailed(client=client), 200, models.RevocationPage)
    assert page.revocations == []
    lease = ok(
        lease_quota.sync_detailed(
            client=client,
            body=models.LeaseRequest(partner_id=demo.id, meter="calls", gateway_id="gw-client-test", want="10"),
        ),
        200,
        models.Lease,
    )
    assert lease.decision == models.QuotaDecision.ALLOW

    # Usage events. The generated post_events cannot send (openapi-python-client 0.29 tests
    # `isinstance(body, list[CloudEvent])`, which Python refuses), so the batch goes through
    # the client's own connection; the answer is read by the generated model all the same.
    now = datetime.datetime.now(datetime.timezone.utc)
    batch = [
        {
            "specversion": "1.0",
            "id": f"evt-{i}",
            "source": "client-test",
            "type": "com.example.tokens",
            "subject": demo.id,
            "time": now.isoformat(),
            "data": {"tokens": 10 + i},
        }
        for i in range(3)
    ]
    raw = client.get_httpx_client().post(
        "/v1/events", json=batch, headers={"Content-Type": "application/cloudevents-batch+json"}
    )
    assert raw.status_code == 200, raw.text
    outcome = models.EventsOutcome.from_dict(raw.json())
    assert outcome.accepted == 3 and outcome.rejected == [], raw.text
    cancelled = ok(
        cancel_events.sync_detailed(
            client=client,
            body=[models.Cancellation(subject=demo.id, source="client-test", id="evt-unknown")],
        ),
        200,
        models.EventsOutcome,
    )
    assert cancelled.accepted == 0 and len(cancelled.rejected) == 1

    usage = ok(get_usage.sync_detailed(demo.id, client=client), 200, models.UsageReport)
    assert usage.env == models.Env.LIVE
    assert {m.meter for m in usage.meters} >= {"calls", "units", "egress_kb"}
    series = ok(
        get_usage_series.sync_detailed(demo.id, client=client, granularity="day"),
        200,
        models.SeriesReport,
    )
    assert len(series.usage.buckets) >= 1
    quotas = ok(get_quotas.sync_detailed(demo.id, client=client), 200, models.QuotaReport)
    assert quotas.quotas[0].meter == "calls"
    overview = ok(partners_overview.sync_detailed(client=client), 200, models.OverviewPage)
    assert overview.total >= 2

    # Billing profile, credits, invoices and their exports.
    profile = ok(
        put_billing_profile.sync_detailed(
            demo.id, client=client, body=models.ProfileRequest(timezone="Europe/Paris")
        ),
        200,
        models.BillingProfile,
    )
    assert profile.timezone == "Europe/Paris"
    assert ok(get_billing_profile.sync_detailed(demo.id, client=client), 200, models.BillingProfile).timezone == "Europe/Paris"
    credit = ok(
        add_credit.sync_detailed(
            demo.id, client=client, body=models.CreditRequest(amount="5.00", currency="EUR", description="welcome")
        ),
        201,
        models.CreditEntry,
    )
    assert credit.amount == "5.00"
    credits = ok(list_credits.sync_detailed(demo.id, client=client), 200, models.Credits)
    assert credits.balances.additional_properties["EUR"] == "5.00"
    upcoming = ok(get_upcoming_invoice.sync_detailed(demo.id, client=client), 200, models.InvoiceRecord)
    assert upcoming.invoice.currency == "EUR"
    assert upcoming.invoice.lines[0].kind == models.LineKind.BASE_FEE
    period = now.astimezone(datetime.timezone(datetime.timedelta(hours=1))).strftime("%Y-%m")
    summary = ok(run_invoices.sync_detailed(client=client, body=models.RunRequest(period=period)), 200, models.RunSummary)
    assert summary.errors == [], summary
    invoices = ok(
        list_invoices.sync_detailed(client=client, partner_id=demo.id), 200, models.InvoiceList
    )
    draft = invoices.invoices[0]
    assert draft.status == models.InvoiceStatus.DRAFT
    one = ok(get_invoice.sync_detailed(draft.id, client=client), 200, models.InvoiceRecord)
    assert one.id == draft.id
    # The generated client parses JSON only; the document declares the CSV and PDF variants,
    # which are fetched through its connection.
    raw_client = client.get_httpx_client()
    csv = raw_client.get(f"/v1/invoices/{draft.id}", params={"format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv"), csv.text
    assert draft.id in csv.text
    pdf = raw_client.get(f"/v1/invoices/{draft.id}", params={"format": "pdf"})
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")

    # Tokens, staff, webhooks and the audit log.
    token = ok(
        create_service_token.sync_detailed(
            client=client, body=models.NewServiceToken(name="client-test", scope="read-only")
        ),
        201,
        models.CreatedServiceToken,
    )
    assert token.token.startswith("pst_")
    tokens = ok(list_service_tokens.sync_detailed(client=client), 200, models.TokenList)
    assert any(t.id == token.id for t in tokens.tokens)
    member = ok(
        add_staff_member.sync_detailed(
            client=client,
            body=models.NewStaffMember(email=f"ann-{uuid.uuid4().hex[:6]}@example.com", name="Ann", role="finance"),
        ),
        201,
        models.StaffMember,
    )
    assert member.role == models.StaffRole.FINANCE
    staff = ok(list_staff.sync_detailed(client=client), 200, models.StaffList)
    assert any(m.id == member.id for m in staff.staff)
    link = ok(
        create_sign_in_link.sync_detailed(client=client, body=models.NewSignInLink(partner_id=demo.id)),
        201,
        models.SignInLink,
    )
    assert link.path.startswith("/sign-in#token=")
    ok(list_webhooks.sync_detailed(client=client), 200, models.EndpointList)
    ok(list_webhook_deliveries.sync_detailed(client=client), 200, models.DeliveryList)
    audit = ok(list_audit_records.sync_detailed(client=client, limit=1000), 200, models.AuditList)
    assert any(r.action == "POST /v1/partners" for r in audit.records)

    # OAuth: Péage's own tokens, and the keys that verify them.
    new_key = ok(rotate_signing_key.sync_detailed(client=client), 201, models.NewSigningKey)
    keyset = ok(jwks.sync_detailed(client=client), 200, models.Jwks)
    assert new_key.kid in {k.kid for k in keyset.keys}
    grant = ok(
        oauth_token.sync_detailed(
            client=client,
            body=models.TokenForm(
                grant_type="client_credentials", client_id=rotated.key_id, client_secret=rotated.secret
            ),
        ),
        200,
        models.TokenGrant,
    )
    assert grant.token_type == "Bearer" and grant.expires_in > 0

    # A refusal is a problem the client reads too.
    missing = get_partner.sync_detailed("prt_00000000000000000000", client=client)
    assert missing.status_code == 404 and isinstance(missing.parsed, models.Problem)
    print("generated client: every call answered as the document says")


if __name__ == "__main__":
    import json

    demo = json.load(open(sys.argv[1]))
    main(demo["control_url"], demo["admin_token"], demo["gateway_url"], demo["api_key"])
