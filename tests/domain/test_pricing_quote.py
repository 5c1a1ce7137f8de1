"""Proration, quote assembly and quote differences (OpenMeter beta.227 subscription sync)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from reconciler.domain.model import ObservedItem
from reconciler.domain.pricing import (
    ItemVersion,
    PriceError,
    ProRatingConfig,
    QuoteRequest,
    UnknownCurrencyError,
    build_quote,
    period_percentage,
    prorated_flat_amount,
    quote_difference,
    service_window,
)

D = Decimal
ON = ProRatingConfig(enabled=True)


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def flat(amount: str, term: str = "in_arrears") -> dict[str, Any]:
    return {"type": "flat", "amount": amount, "paymentTerm": term}


def fee(
    amount: str,
    start: datetime,
    end: datetime | None = None,
    *,
    term: str = "in_arrears",
    key: str = "base",
    version: int = 0,
    invoiced: str | None = None,
) -> ItemVersion:
    return ItemVersion(
        key=key,
        name=f"Base fee {amount}",
        active_from=start,
        active_to=end,
        price=flat(amount, term),
        billing_cadence="P1M",
        version=version,
        invoiced_amount=D(invoiced) if invoiced is not None else None,
    )


APRIL = (at(2026, 4, 1), at(2026, 5, 1))


# ------------------------------------------------------------------ proration


@pytest.mark.parametrize(
    ("period", "start", "ratio", "amount"),
    [
        ((at(2026, 2, 1), at(2026, 3, 1)), at(2026, 2, 15), "0.5", "50.00"),  # 28-day month
        ((at(2028, 2, 1), at(2028, 3, 1)), at(2028, 2, 15), "0.5172413793103448", "51.72"),  # 29
        ((at(2026, 4, 1), at(2026, 5, 1)), at(2026, 4, 11), "0.6666666666666667", "66.67"),  # 30
        ((at(2026, 1, 1), at(2026, 2, 1)), at(2026, 1, 21), "0.3548387096774194", "35.48"),  # 31
    ],
)
def test_flat_fee_prorated_by_seconds(
    period: tuple[datetime, datetime], start: datetime, ratio: str, amount: str
) -> None:
    q = build_quote(QuoteRequest("USD", period, [fee("100", start)], pro_rating=ON))
    (line,) = q.lines
    assert line.proration == D(ratio)
    assert line.amount == D(amount)
    assert (line.period_from, line.period_to) == (start, period[1])


def test_period_cut_mid_day_truncates_to_the_second() -> None:
    end = datetime(2026, 4, 10, 13, 37, 21, 750000, tzinfo=UTC)
    q = build_quote(QuoteRequest("USD", APRIL, [fee("100", APRIL[0], end)], pro_rating=ON))
    (line,) = q.lines
    assert line.period_to == at(2026, 4, 10, 13, 37, 21)
    # 826641 s of 2592000 s
    assert line.proration == D("0.3189201388888889")
    assert line.amount == D("31.89")


def test_ratio_is_rounded_to_16_decimals_before_multiplying() -> None:
    # 25/30 → 0.8333333333333333; × 0.03 = 0.0249999… → 0.02 (the exact 0.025 would give 0.03).
    amount, ratio = prorated_flat_amount(
        D("0.03"),
        "USD",
        service=(at(2026, 4, 1), at(2026, 4, 26)),
        full_service=APRIL,
        prorate=True,
    )
    assert (amount, ratio) == (D("0.02"), D("0.8333333333333333"))


def test_period_percentage_of_an_empty_full_period_is_one() -> None:
    assert period_percentage((APRIL[0], APRIL[0]), (APRIL[0], APRIL[0])) == 1


@pytest.mark.parametrize(
    ("pro_rating", "subscription_end", "amount", "note"),
    [
        (None, None, "100.00", "pro-rating is disabled"),
        (ProRatingConfig(enabled=False), None, "100.00", "pro-rating is disabled"),
        # The subscription ends at the cut: beta.227 bills the full fee.
        (ON, at(2026, 4, 11), "100.00", "subscription ends"),
        # Sub-second subscription end after the truncated service end: prorated (10 of 30 days).
        (ON, datetime(2026, 4, 11, 0, 0, 0, 500000, tzinfo=UTC), "33.33", "prorated"),
    ],
)
def test_when_not_to_prorate(
    pro_rating: ProRatingConfig | None, subscription_end: datetime | None, amount: str, note: str
) -> None:
    q = build_quote(
        QuoteRequest(
            "USD",
            APRIL,
            [fee("100", APRIL[0], at(2026, 4, 11))],
            pro_rating=pro_rating,
            subscription_end=subscription_end,
        )
    )
    (line,) = q.lines
    assert line.amount == D(amount)
    assert any(note in n for n in line.notes)


def test_usage_prices_are_never_prorated() -> None:
    item = ItemVersion(
        key="api",
        name="API calls",
        active_from=at(2026, 4, 11),
        active_to=None,
        price={"type": "unit", "amount": "0.01"},
        billing_cadence="P1M",
        feature_key="api_calls",
        quantity=D("1000"),
    )
    (line,) = build_quote(QuoteRequest("USD", APRIL, [item], pro_rating=ON)).lines
    assert (line.amount, line.proration) == (D("10.00"), None)


# ------------------------------------------------------------------ A → B upgrade


T = at(2026, 4, 13)  # 12 of 30 days into April


def test_mid_period_upgrade_by_edit_prorates_both_fees() -> None:
    """A·t/T + B·(T−t)/T with A = 10, B = 40, t = 12 d, T = 30 d → 4 + 24 = 28."""
    before = build_quote(QuoteRequest("USD", APRIL, [fee("10", APRIL[0])], pro_rating=ON))
    after = build_quote(
        QuoteRequest(
            "USD",
            APRIL,
            [fee("10", APRIL[0], T, version=0), fee("40", T, version=1)],
            pro_rating=ON,
        )
    )
    assert before.total == D("10.00")
    assert [(ln.period_from, ln.period_to, ln.amount) for ln in after.lines] == [
        (APRIL[0], T, D("4.00")),
        (T, APRIL[1], D("24.00")),
    ]
    assert after.totals_by_currency == {"USD": D("28.00")}

    diff = quote_difference(before, after)
    assert diff.total == D("18.00")
    assert diff.by_item == {"base": D("18.00")}
    assert [(d.period_from, d.period_to, d.delta) for d in diff.lines] == [
        (APRIL[0], T, D("4.00")),  # added: A for [start, t)
        (APRIL[0], APRIL[1], D("-10.00")),  # removed: A for the whole month
        (T, APRIL[1], D("24.00")),  # added: B for [t, end)
    ]


def test_upgrade_keeps_an_invoiced_in_advance_fee() -> None:
    after = build_quote(
        QuoteRequest(
            "USD",
            APRIL,
            [
                fee("10", APRIL[0], T, term="in_advance", invoiced="10"),
                fee("40", T, term="in_advance", version=1),
            ],
            pro_rating=ON,
        )
    )
    a, b = after.lines
    assert (a.amount, b.amount, after.total) == (D("10.00"), D("24.00"), D("34.00"))
    assert any("already invoiced" in n and "not credited back" in n for n in a.notes)
    assert any("would be 4.00" in n for n in a.notes)


def test_upgrade_by_change_bills_the_old_fee_in_full() -> None:
    """``change`` ends the subscription at t: the old fee is not prorated at beta.227."""
    old = build_quote(
        QuoteRequest("USD", APRIL, [fee("10", APRIL[0], T)], pro_rating=ON, subscription_end=T)
    )
    assert old.total == D("10.00")


# ------------------------------------------------------------------ usage versions


LADDER = {
    "type": "tiered",
    "mode": "graduated",
    "tiers": [
        {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0"}},
        {"upToAmount": None, "unitPrice": {"type": "unit", "amount": "0.01"}},
    ],
}


def usage(
    start: datetime, end: datetime | None, qty: str, version: int, price: Any = None
) -> ItemVersion:
    return ItemVersion(
        key="api",
        name="API calls",
        active_from=start,
        active_to=end,
        price=price or LADDER,
        billing_cadence="P1M",
        feature_key="api_calls",
        quantity=D(qty),
        version=version,
    )


def test_two_version_usage_item_restarts_the_tier_ladder() -> None:
    one = build_quote(QuoteRequest("USD", APRIL, [usage(APRIL[0], None, "1500", 0)]))
    two = build_quote(
        QuoteRequest("USD", APRIL, [usage(APRIL[0], T, "800", 0), usage(T, None, "700", 1)])
    )
    assert one.total == D("5.00")  # 500 units above the free 1000
    assert [ln.amount for ln in two.lines] == [D("0.00"), D("0.00")]  # each version starts at 0
    assert two.total == D("0.00")
    assert all(any("tier ladder starts at zero" in n for n in ln.notes) for ln in two.lines)


def test_minimum_commitment_applies_per_version() -> None:
    price = {"type": "unit", "amount": "0.10", "minimumAmount": "50"}
    q = build_quote(
        QuoteRequest(
            "USD", APRIL, [usage(APRIL[0], T, "100", 0, price), usage(T, None, "100", 1, price)]
        )
    )
    assert [ln.amount for ln in q.lines] == [D("50.00"), D("50.00")]


def test_service_window_for_meter_queries() -> None:
    req = QuoteRequest("USD", APRIL, [], subscription_end=at(2026, 4, 20))
    v = usage(datetime(2026, 4, 13, 8, 0, 0, 999999, tzinfo=UTC), None, "0", 1)
    assert service_window(req, v) == (at(2026, 4, 13, 8), at(2026, 4, 20))
    assert service_window(req, usage(at(2026, 3, 1), APRIL[0], "0", 0)) is None


def test_quote_skips_unpriced_versions_outside_and_empty_ones() -> None:
    unpriced = ItemVersion("ent", "Entitlement only", APRIL[0], None, None, "P1M")
    outside = usage(at(2026, 3, 1), APRIL[0], "5", 0)
    tiny = usage(
        datetime(2026, 4, 2, 0, 0, 0, 100, tzinfo=UTC),
        datetime(2026, 4, 2, 0, 0, 0, 900, tzinfo=UTC),
        "5",
        1,
    )
    q = build_quote(QuoteRequest("USD", APRIL, [unpriced, outside, tiny]))
    assert q.lines == ()
    assert len(q.skipped) == 2 and "no price" in q.skipped[0] and "empty" in q.skipped[1]


def test_quote_errors() -> None:
    with pytest.raises(UnknownCurrencyError):
        build_quote(QuoteRequest("ZZZ", APRIL, []))
    no_qty = ItemVersion("api", "API", APRIL[0], None, {"type": "unit", "amount": "1"}, "P1M")
    with pytest.raises(PriceError, match="metered quantity"):
        build_quote(QuoteRequest("USD", APRIL, [no_qty]))
    with pytest.raises(PriceError, match="in-advance"):
        build_quote(QuoteRequest("USD", APRIL, [fee("10", APRIL[0], invoiced="10")]))
    with pytest.raises(ValueError, match="timezone-aware"):
        build_quote(QuoteRequest("USD", (datetime(2026, 4, 1), APRIL[1]), []))


def test_quote_in_jpy_and_kwd() -> None:
    jpy = build_quote(QuoteRequest("JPY", APRIL, [fee("1000", at(2026, 4, 11))], pro_rating=ON))
    kwd = build_quote(QuoteRequest("KWD", APRIL, [fee("10", at(2026, 4, 11))], pro_rating=ON))
    assert (jpy.total, kwd.total) == (D("667"), D("6.667"))


def test_one_time_fee_in_the_period_is_billed_in_full() -> None:
    setup = ItemVersion("setup", "Setup", at(2026, 4, 20), None, flat("99"), None)
    q = build_quote(QuoteRequest("USD", APRIL, [setup], pro_rating=ON))
    assert q.total == D("99.00")
    later = build_quote(QuoteRequest("USD", (APRIL[1], at(2026, 6, 1)), [setup], pro_rating=ON))
    assert later.lines == ()


def test_item_version_from_observed() -> None:
    observed = ObservedItem(
        id="it_1",
        key="base",
        name="Base",
        feature_key=None,
        billing_cadence="P1M",
        price=flat("10"),
        discounts={"percentage": {"percentage": 50}},
        entitlement=None,
        active_from=APRIL[0],
        active_to=None,
    )
    v = ItemVersion.from_observed(observed, version=0)
    (line,) = build_quote(QuoteRequest("USD", APRIL, [v], pro_rating=ON)).lines
    assert line.amount == D("5.00")


def test_difference_of_identical_quotes_is_empty() -> None:
    q = build_quote(QuoteRequest("USD", APRIL, [fee("10", APRIL[0])]))
    diff = quote_difference(q, q)
    assert (diff.lines, diff.total) == ((), D("0.00"))
    with pytest.raises(ValueError, match="cannot compare"):
        quote_difference(q, build_quote(QuoteRequest("EUR", APRIL, [])))
