"""OpenMeter's ``e2e/multisubject_test.go`` (v1.0.0-beta.227) on the emulator: one customer with
two subjects, a plan with a boolean and a metered feature, a subscription; access through each
subject (``entitlement/driver/entitlement.go`` ``GetEntitlementValue`` resolves the subject's
customer), usage aggregated across both subjects (``streaming/usageattribution.go``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .conftest import T0, Api
from .test_e2e_fidelity import create_meter

SUBJECTS = ["multi_subject_1", "multi_subject_2"]


async def _setup(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    customer = await api.post(
        "/api/v1/customers",
        {
            "name": "Test Customer Multi Subject",
            "currency": "USD",
            "description": "Test Customer Description",
            "primaryEmail": "customer-multi-subject@mail.com",
            "billingAddress": {"city": "City", "country": "US", "line1": "Line 1"},
            "usageAttribution": {"subjectKeys": SUBJECTS},
        },
        expect=201,
    )
    assert customer["usageAttribution"]["subjectKeys"] == SUBJECTS
    await create_meter(
        api,
        {"slug": "multi_subject_meter", "eventType": "multi_subject", "aggregation": "COUNT"},
    )
    await api.post(
        "/api/v1/features",
        {"key": "multi_subject_feature_1", "name": "Test Plan Feature"},
        expect=201,
    )
    await api.post(
        "/api/v1/features",
        {
            "key": "multi_subject_metered_feature_1",
            "name": "Test Plan Metered Feature",
            "meterSlug": "multi_subject_meter",
        },
        expect=201,
    )
    plan = await api.post(
        "/api/v1/plans",
        {
            "currency": "USD",
            "name": "Test Plan",
            "key": "multi_subject_plan",
            "billingCadence": "P1M",
            "alignment": {"billablesMustAlign": True},
            "phases": [
                {
                    "name": "Test Plan Phase 1",
                    "key": "test_plan_phase_1",
                    "duration": None,
                    "rateCards": [
                        {
                            "type": "flat_fee",
                            "name": "Simple Feature",
                            "key": "multi_subject_feature_1",
                            "featureKey": "multi_subject_feature_1",
                            "entitlementTemplate": {"type": "boolean"},
                            "billingCadence": None,
                            "price": None,
                        },
                        {
                            "type": "flat_fee",
                            "name": "Metered Feature",
                            "key": "multi_subject_metered_feature_1",
                            "featureKey": "multi_subject_metered_feature_1",
                            "entitlementTemplate": {"type": "metered", "issueAfterReset": 100},
                            "price": {
                                "type": "flat",
                                "amount": "1000",
                                "paymentTerm": "in_advance",
                            },
                            "billingCadence": "P1M",
                        },
                    ],
                }
            ],
        },
        expect=201,
    )
    assert plan["version"] == 1
    await api.post(f"/api/v1/plans/{plan['id']}/publish", expect=200)
    sub = await api.post(
        "/api/v1/subscriptions",
        {
            "customerId": customer["id"],
            "plan": {"key": "multi_subject_plan", "version": 1},
            "timing": "immediate",
            "name": "Test Subscription Multi Subject",
        },
        expect=201,
    )
    return customer, sub


async def test_multi_subject_access_and_usage(api: Api) -> None:
    customer, _sub = await _setup(api)
    for subject in SUBJECTS:
        v = await api.get(f"/api/v1/subjects/{subject}/entitlements/multi_subject_feature_1/value")
        assert v["hasAccess"] is True
    for i, subject in enumerate(SUBJECTS):
        await api.post(
            "/api/v1/events",
            {
                "specversion": "1.0",
                "id": f"ms-{i}",
                "source": "my-app",
                "type": "multi_subject",
                "subject": subject,
                "time": (T0 + timedelta(seconds=1 + i)).isoformat().replace("+00:00", "Z"),
            },
            expect=204,
        )
    await api.set_time(T0 + timedelta(seconds=5))
    q = await api.get("/api/v1/meters/multi_subject_meter/query")
    assert len(q["data"]) == 1 and q["data"][0]["value"] == len(SUBJECTS)
    ent = await api.get(
        f"/api/v2/customers/{customer['id']}/entitlements/multi_subject_metered_feature_1/value"
    )
    assert ent["hasAccess"] is True and ent["usage"] == 2 and ent["balance"] == 98
    # the same value through either subject (v1 subject route)
    for subject in SUBJECTS:
        v = await api.get(
            f"/api/v1/subjects/{subject}/entitlements/multi_subject_metered_feature_1/value"
        )
        assert (v["usage"], v["balance"]) == (2, 98)
    # per-subject split of the same usage
    q = await api.get(
        "/api/v1/meters/multi_subject_meter/query",
        params={"filterCustomerId": customer["id"], "groupBy": "subject"},
    )
    assert sorted((r["subject"], r["value"]) for r in q["data"]) == [
        ("multi_subject_1", 1),
        ("multi_subject_2", 1),
    ]
    # a subject no customer attributes is not found
    await api.get("/api/v1/subjects/nobody/entitlements/multi_subject_feature_1/value", expect=404)
