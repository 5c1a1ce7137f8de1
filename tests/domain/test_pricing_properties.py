"""Invariants of the pricing functions (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.domain.pricing import (
    ItemVersion,
    ProRatingConfig,
    QuoteRequest,
    build_quote,
    evaluate_price,
    minor_units,
    round_money,
)

CURRENCIES = st.sampled_from(["JPY", "USD", "KWD"])


def decimals(max_value: int, places: int) -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=0, max_value=max_value, places=places, allow_nan=False)


def amounts() -> st.SearchStrategy[str]:
    return decimals(100, 4).map(str)


@st.composite
def tier_tables(draw: st.DrawFn) -> list[dict[str, Any]]:
    bounds = draw(st.lists(decimals(10_000, 2).filter(lambda d: d > 0), unique=True, max_size=4))
    tiers = []
    for bound in [*sorted(bounds), None]:
        has_flat, has_unit = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
        tiers.append(
            {
                "upToAmount": str(bound) if bound is not None else None,
                "flatPrice": {"type": "flat", "amount": draw(amounts())} if has_flat else None,
                "unitPrice": {"type": "unit", "amount": draw(amounts())} if has_unit else None,
            }
        )
    return tiers


@st.composite
def any_price(draw: st.DrawFn) -> dict[str, Any]:
    commitments: dict[str, Any] = {}
    lo = draw(st.none() | decimals(500, 2))
    hi = draw(st.none() | decimals(5_000, 2))
    if lo is not None:
        commitments["minimumAmount"] = str(lo)
    if hi is not None and (lo is None or hi >= lo):
        commitments["maximumAmount"] = str(hi)
    kind = draw(st.sampled_from(["unit", "package", "dynamic", "graduated", "volume"]))
    if kind == "unit":
        return {"type": "unit", "amount": draw(amounts()), **commitments}
    if kind == "package":
        per = draw(decimals(1_000, 2).filter(lambda d: d > 0))
        return {
            "type": "package",
            "amount": draw(amounts()),
            "quantityPerPackage": str(per),
            **commitments,
        }
    if kind == "dynamic":
        return {"type": "dynamic", "multiplier": draw(amounts()), **commitments}
    return {"type": "tiered", "mode": kind, "tiers": draw(tier_tables()), **commitments}


QUANTITIES = decimals(50_000, 3)


@settings(max_examples=300)
@given(tiers=tier_tables(), a=QUANTITIES, b=QUANTITIES, currency=CURRENCIES)
def test_graduated_total_is_monotonic_in_quantity(
    tiers: list[dict[str, Any]], a: Decimal, b: Decimal, currency: str
) -> None:
    price = {"type": "tiered", "mode": "graduated", "tiers": tiers}
    lo, hi = sorted((a, b))
    assert evaluate_price(price, lo, currency).amount <= evaluate_price(price, hi, currency).amount


@settings(max_examples=300)
@given(
    flat=st.none() | amounts(),
    unit=st.none() | amounts(),
    quantity=QUANTITIES,
    currency=CURRENCIES,
)
def test_volume_and_graduated_agree_with_a_single_tier(
    flat: str | None, unit: str | None, quantity: Decimal, currency: str
) -> None:
    if flat is None and unit is None:
        unit = "1"
    tier = {
        "upToAmount": None,
        "flatPrice": {"type": "flat", "amount": flat} if flat is not None else None,
        "unitPrice": {"type": "unit", "amount": unit} if unit is not None else None,
    }
    g = evaluate_price({"type": "tiered", "mode": "graduated", "tiers": [tier]}, quantity, currency)
    v = evaluate_price({"type": "tiered", "mode": "volume", "tiers": [tier]}, quantity, currency)
    assert g.amount == v.amount


@settings(max_examples=500)
@given(
    price=any_price(),
    quantity=QUANTITIES,
    currency=CURRENCIES,
    pct=st.none() | st.integers(0, 100),
    free=st.none() | decimals(1_000, 1),
)
def test_breakdown_sums_to_the_amount(
    price: dict[str, Any],
    quantity: Decimal,
    currency: str,
    pct: int | None,
    free: Decimal | None,
) -> None:
    discounts: dict[str, Any] = {}
    if pct is not None:
        discounts["percentage"] = {"percentage": pct}
    if free is not None:
        discounts["usage"] = {"quantity": str(free)}
    r = evaluate_price(price, quantity, currency, discounts=discounts)
    places = minor_units(currency)
    assert sum((c.total for c in r.components), Decimal(0)) == r.amount
    assert r.amount >= 0
    for c in r.components:
        assert c.amount.as_tuple().exponent == -places
        assert 0 <= c.discount <= c.amount
    if "maximumAmount" in price and pct is None:
        assert (
            r.amount
            <= max(Decimal(price["maximumAmount"]), Decimal(price.get("minimumAmount", 0))) + 1
        )


@settings(max_examples=200)
@given(
    amount=decimals(10_000, 2),
    cut=st.integers(min_value=1, max_value=30 * 86400 - 1),
    currency=CURRENCIES,
)
def test_prorated_pieces_add_up_to_the_fee_within_one_minor_unit(
    amount: Decimal, cut: int, currency: str
) -> None:
    start, end = datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)
    t = start + timedelta(seconds=cut)
    price = {"type": "flat", "amount": str(amount), "paymentTerm": "in_arrears"}
    items = [
        ItemVersion("base", "Base", start, t, price, "P1M", version=0),
        ItemVersion("base", "Base", t, None, price, "P1M", version=1),
    ]
    q = build_quote(QuoteRequest(currency, (start, end), items, pro_rating=ProRatingConfig(True)))
    whole = round_money(amount, currency)
    assert abs(q.total - whole) <= Decimal(1).scaleb(-minor_units(currency))
