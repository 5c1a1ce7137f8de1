"""100,000 customers with a subscription each load through /_emulator/bulk and serve GETs."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from .conftest import T0, Api


@pytest.mark.slow
async def test_bulk_100k_customers(api: Api) -> None:
    started = time.perf_counter()
    out = await api.post(
        "/_emulator/bulk",
        {
            "customers": 100_000,
            "plan": "free",
            "keyPrefix": "cust-",
            "usage": {"type": "api_call", "data": {"credits": 1}},
        },
    )
    elapsed = time.perf_counter() - started
    assert out["customers"] == 100_000
    assert elapsed < 60, f"bulk load of 100k took {elapsed:.1f}s"
    await api.set_time(T0 + timedelta(minutes=1))
    started = time.perf_counter()
    for i in range(0, 100_000, 5_000):
        v = await api.value(f"cust-{i}")
        assert (v["usage"], v["balance"]) == (1, 49999)
        subs = await api.get(f"/api/v1/customers/cust-{i}/subscriptions")
        assert subs["totalCount"] == 1
    page = await api.get("/api/v1/customers", params={"page": 100, "pageSize": 1000})
    assert page["totalCount"] == 100_000 and page["items"][-1]["key"] == "cust-99999"
    assert time.perf_counter() - started < 10
