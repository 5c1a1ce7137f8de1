"""Price models, commitments, discounts and rounding (OpenMeter beta.227 lineservice)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from reconciler.domain.pricing import (
    ComponentKind,
    PriceError,
    UnknownCurrencyError,
    evaluate_price,
    minor_units,
    package_count,
    parse_price,
    round_money,
)

D = Decimal


def unit(amount: str) -> dict[str, Any]:
    return {"type": "unit", "amount": amount}


def flat(amount: str) -> dict[str, Any]:
    return {"type": "flat", "amount": amount}


def tiered(
    mode: str, *tiers: tuple[str | None, str | None, str | None], **extra: Any
) -> dict[str, Any]:
    """tiers as (upToAmount, flat amount, unit amount)."""
    return {
        "type": "tiered",
        "mode": mode,
        "tiers": [
            {
                "upToAmount": up,
                "flatPrice": flat(f) if f is not None else None,
                "unitPrice": unit(u) if u is not None else None,
            }
            for up, f, u in tiers
        ],
        **extra,
    }


LADDER = (("100", None, "1.00"), ("500", "10", "0.80"), (None, "20", "0.50"))


# ------------------------------------------------------------------ graduated vs volume


@pytest.mark.parametrize(
    ("quantity", "graduated", "volume"),
    [
        ("0", "0.00", "0.00"),
        ("1", "1.00", "1.00"),
        ("100", "100.00", "100.00"),  # exactly on the bound: stays in tier 1
        ("100.001", "110.00", "90.00"),  # just above: tier 2 entered, its flat price charged
        ("101", "110.80", "90.80"),
        ("500", "430.00", "410.00"),  # on tier 2's bound
        ("501", "450.50", "270.50"),
        ("1234.5", "817.25", "637.25"),
    ],
)
def test_graduated_and_volume_on_the_same_table(quantity: str, graduated: str, volume: str) -> None:
    g = evaluate_price(tiered("graduated", *LADDER), D(quantity), "USD")
    v = evaluate_price(tiered("volume", *LADDER), D(quantity), "USD")
    assert (g.amount, v.amount) == (D(graduated), D(volume))


def test_graduated_breakdown_per_tier() -> None:
    r = evaluate_price(tiered("graduated", *LADDER), D("1234.5"), "USD")
    assert [(c.kind, c.tier, c.quantity, c.unit_amount, c.amount) for c in r.components] == [
        (ComponentKind.TIER_USAGE, 1, D("100"), D("1.00"), D("100.00")),
        (ComponentKind.TIER_USAGE, 2, D("400"), D("0.80"), D("320.00")),
        (ComponentKind.TIER_FLAT, 2, D("1"), D("10"), D("10.00")),
        (ComponentKind.TIER_USAGE, 3, D("734.5"), D("0.50"), D("367.25")),
        (ComponentKind.TIER_FLAT, 3, D("1"), D("20"), D("20.00")),
    ]
    assert [c.reference for c in r.components] == [
        "graduated-tiered-1-price-usage",
        "graduated-tiered-2-price-usage",
        "graduated-tiered-2-flat-price",
        "graduated-tiered-3-price-usage",
        "graduated-tiered-3-flat-price",
    ]


def test_volume_breakdown_flat_then_unit() -> None:
    r = evaluate_price(tiered("volume", *LADDER), D("501"), "USD")
    assert [(c.kind, c.tier, c.quantity, c.amount) for c in r.components] == [
        (ComponentKind.TIER_FLAT, 3, D("1"), D("20.00")),
        (ComponentKind.TIER_USAGE, 3, D("501"), D("250.50")),
    ]


FLAT_FIRST = (("10", "5", None), (None, None, "1"))


@pytest.mark.parametrize(
    ("quantity", "graduated", "volume"),
    [
        # Zero usage still bills the first tier's flat price in both modes.
        ("0", "5.00", "5.00"),
        ("10", "5.00", "5.00"),
        ("11", "6.00", "11.00"),
    ],
)
def test_first_tier_flat_price_and_zero_usage(quantity: str, graduated: str, volume: str) -> None:
    g = evaluate_price(tiered("graduated", *FLAT_FIRST), D(quantity), "USD")
    v = evaluate_price(tiered("volume", *FLAT_FIRST), D(quantity), "USD")
    assert (g.amount, v.amount) == (D(graduated), D(volume))


FLAT_ONLY = (("10", "5", None), ("100", "20", None), (None, "50", None))


@pytest.mark.parametrize(
    ("quantity", "graduated", "volume"),
    [
        ("0", "5.00", "5.00"),
        ("10", "5.00", "5.00"),
        ("50", "25.00", "20.00"),
        ("101", "75.00", "50.00"),
    ],
)
def test_flat_only_tiers(quantity: str, graduated: str, volume: str) -> None:
    g = evaluate_price(tiered("graduated", *FLAT_ONLY), D(quantity), "USD")
    v = evaluate_price(tiered("volume", *FLAT_ONLY), D(quantity), "USD")
    assert (g.amount, v.amount) == (D(graduated), D(volume))


def test_tiers_are_sorted_open_ended_last() -> None:
    shuffled = (LADDER[2], LADDER[0], LADDER[1])
    g = evaluate_price(tiered("graduated", *shuffled), D("1234.5"), "USD")
    assert g.amount == D("817.25")
    sorted_tiers = parse_price(tiered("graduated", *shuffled)).sorted_tiers()  # type: ignore[union-attr]
    assert [t.up_to for t in sorted_tiers] == [D("100"), D("500"), None]


def test_volume_quirk_unsorted_tiers_read_by_sorted_index() -> None:
    # findTierForQuantity returns &price.Tiers[i] with i counted in the sorted tiers.
    price = tiered("volume", (None, None, "0.5"), ("100", None, "1"))
    r = evaluate_price(price, D("50"), "USD")
    assert r.amount == D("25.00")  # the open-ended tier's 0.5, not the 0..100 tier's 1
    assert any("volume quirk" in n for n in r.notes)


def test_graduated_zero_usage_uses_first_stored_tier() -> None:
    price = tiered("graduated", (None, "7", "0.5"), ("100", None, "1"))
    assert evaluate_price(price, D("0"), "USD").amount == D("7.00")
    assert evaluate_price(price, D("50"), "USD").amount == D("50.00")


# ------------------------------------------------------------------ unit, package, dynamic


@pytest.mark.parametrize(
    ("price", "quantity", "expected", "lines"),
    [
        (unit("0.01"), "12345", "123.45", 1),
        (unit("0.01"), "0", "0.00", 0),
        (unit("0.015"), "1", "0.02", 1),  # half away from zero
        (unit("0.0149"), "1", "0.01", 1),
        ({"type": "package", "amount": "5", "quantityPerPackage": "100"}, "0", "0.00", 0),
        ({"type": "package", "amount": "5", "quantityPerPackage": "100"}, "1", "5.00", 1),
        ({"type": "package", "amount": "5", "quantityPerPackage": "100"}, "100", "5.00", 1),
        ({"type": "package", "amount": "5", "quantityPerPackage": "100"}, "101", "10.00", 1),
        ({"type": "package", "amount": "5", "quantityPerPackage": "100"}, "250.5", "15.00", 1),
        ({"type": "package", "amount": "2.5", "quantityPerPackage": "0.5"}, "1.2", "7.50", 1),
        ({"type": "dynamic", "multiplier": "1.2"}, "10.125", "12.15", 1),
        ({"type": "dynamic", "multiplier": "1.2"}, "0", "0.00", 0),
        ({"type": "dynamic"}, "3.333", "3.33", 1),  # default multiplier 1
    ],
)
def test_usage_prices(price: dict[str, Any], quantity: str, expected: str, lines: int) -> None:
    r = evaluate_price(price, D(quantity), "USD")
    assert r.amount == D(expected)
    assert len(r.components) == lines


def test_package_count_rounds_up() -> None:
    assert [package_count(D(q), D("10")) for q in ("0", "0.1", "10", "10.000001", "30")] == [
        D(0),
        D(1),
        D(1),
        D(2),
        D(3),
    ]


# ------------------------------------------------------------------ commitments and discounts


@pytest.mark.parametrize(
    ("price", "quantity", "expected", "minimum_spend"),
    [
        ({**unit("0.10"), "minimumAmount": "50"}, "100", "50.00", "40.00"),
        ({**unit("0.10"), "minimumAmount": "50"}, "0", "50.00", "50.00"),  # also without usage
        ({**unit("0.10"), "minimumAmount": "50"}, "1000", "100.00", None),
        ({**unit("0.10"), "maximumAmount": "75"}, "1000", "75.00", None),
        ({**unit("0.10"), "maximumAmount": "75"}, "10", "1.00", None),
        ({**unit("1"), "minimumAmount": "10", "maximumAmount": "20"}, "5", "10.00", "5.00"),
        ({**unit("1"), "minimumAmount": "10", "maximumAmount": "20"}, "30", "20.00", None),
        ({**unit("1"), "minimumAmount": "10.005"}, "0", "10.01", "10.01"),  # charge rounded
        (tiered("graduated", *LADDER, maximumAmount="425"), "501", "425.00", None),
        (tiered("volume", *LADDER, minimumAmount="300"), "501", "300.00", "29.50"),
        (
            {"type": "package", "amount": "5", "quantityPerPackage": "100", "minimumAmount": "12"},
            "150",
            "12.00",
            "2.00",
        ),
    ],
)
def test_commitments(
    price: dict[str, Any], quantity: str, expected: str, minimum_spend: str | None
) -> None:
    r = evaluate_price(price, D(quantity), "USD")
    assert r.amount == D(expected)
    charges = [c.amount for c in r.components if c.kind is ComponentKind.MINIMUM_SPEND]
    assert charges == ([D(minimum_spend)] if minimum_spend else [])


def test_maximum_spend_discounts_lines_in_order() -> None:
    r = evaluate_price(tiered("graduated", *LADDER, maximumAmount="425"), D("501"), "USD")
    assert [(c.amount, c.discount) for c in r.components] == [
        (D("100.00"), D("0")),
        (D("320.00"), D("0")),
        (D("10.00"), D("5.00")),  # crosses the cap
        (D("0.50"), D("0.50")),  # wholly above the cap
        (D("20.00"), D("20.00")),
    ]


@pytest.mark.parametrize(
    ("price", "quantity", "discounts", "expected"),
    [
        (unit("1"), "100", {"percentage": {"percentage": 10}}, "90.00"),
        ({**unit("1"), "maximumAmount": "50"}, "100", {"percentage": {"percentage": 10}}, "50.00"),
        (unit("1"), "150", {"usage": {"quantity": "100"}}, "50.00"),
        (unit("1"), "80", {"usage": {"quantity": "100"}}, "0.00"),
        # usage discount happens before the ladder: 1234.5 − 734.5 = 500 units → 430.00
        (tiered("graduated", *LADDER), "1234.5", {"usage": {"quantity": "734.5"}}, "430.00"),
        (flat("29"), None, {"percentage": {"percentage": "12.5"}}, "25.37"),  # 3.625 → 3.63
        (unit("0.333"), "1", {"percentage": {"percentage": 50}}, "0.16"),  # 0.33 − round(0.165)
    ],
)
def test_discounts(
    price: dict[str, Any], quantity: str | None, discounts: dict[str, Any], expected: str
) -> None:
    q = D(quantity) if quantity is not None else None
    assert evaluate_price(price, q, "USD", discounts=discounts).amount == D(expected)


# ------------------------------------------------------------------ currencies and rounding


@pytest.mark.parametrize(
    ("currency", "price", "quantity", "expected"),
    [
        ("JPY", unit("0.5"), "3", "2"),  # 1.5 → 2
        ("JPY", unit("0.5"), "5", "3"),  # 2.5 → 3, not banker's 2
        ("JPY", unit("120"), "7", "840"),
        ("USD", unit("0.005"), "1", "0.01"),
        ("USD", unit("0.0049"), "1", "0.00"),
        ("KWD", unit("0.0005"), "1", "0.001"),
        ("KWD", unit("0.0125"), "3", "0.038"),  # 0.0375 → 0.038
        ("BHD", unit("1.2345"), "1", "1.235"),
        ("HUF", unit("10.5"), "1", "11"),  # gobl: HUF has 0 subunits (ISO says 2)
    ],
)
def test_currency_rounding(
    currency: str, price: dict[str, Any], quantity: str, expected: str
) -> None:
    r = evaluate_price(price, D(quantity), currency)
    assert r.amount == D(expected)
    assert r.amount.as_tuple().exponent == -minor_units(currency)


def test_round_money_half_away_from_zero() -> None:
    assert round_money(D("-0.125"), "USD") == D("-0.13")
    assert round_money(D("0.125"), "USD") == D("0.13")
    assert round_money(D("2.5"), "JPY") == D("3")
    assert round_money(D("0.0005"), "BHD") == D("0.001")


def test_minor_units() -> None:
    assert [minor_units(c) for c in ("JPY", "USD", "EUR", "KWD", "BHD")] == [0, 2, 2, 3, 3]


@pytest.mark.parametrize("code", ["XYZ", "usd", "", "EURO"])
def test_unknown_currency(code: str) -> None:
    with pytest.raises(UnknownCurrencyError, match="unknown currency"):
        evaluate_price(unit("1"), D("1"), code)


def test_unknown_currency_hint_for_lower_case() -> None:
    with pytest.raises(UnknownCurrencyError, match="did you mean 'USD'"):
        round_money(D(1), "usd")


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"type": "tiered", "mode": "graduated", "tiers": []}, "at least one tier"),
        (tiered("graduated", ("10", None, "1")), "open-ended"),
        (
            tiered("graduated", ("10", None, "1"), ("10", None, "2"), (None, None, "1")),
            "same upToAmount",
        ),
        (tiered("graduated", ("10", None, None), (None, None, "1")), "flatPrice or unitPrice"),
        (tiered("stairstep", (None, None, "1")), "mode"),
        ({"type": "package", "amount": "1", "quantityPerPackage": "0"}, "quantityPerPackage"),
        ({**unit("1"), "minimumAmount": "10", "maximumAmount": "5"}, "greater than"),
        ({"type": "unit", "amount": "-1"}, "negative"),
        ({"type": "flat", "amount": "1", "paymentTerm": "weekly"}, "payment term"),
        ({"type": "percentage"}, "unsupported price type"),
        ({"type": "unit", "amount": "abc"}, "not a decimal"),
    ],
)
def test_invalid_prices(price: dict[str, Any], message: str) -> None:
    with pytest.raises(PriceError, match=message):
        evaluate_price(price, D(1), "USD")


def test_usage_price_needs_quantity() -> None:
    with pytest.raises(PriceError, match="metered quantity"):
        evaluate_price(unit("1"), None, "USD")


def test_negative_quantity_rejected() -> None:
    with pytest.raises(PriceError, match="negative"):
        evaluate_price(unit("1"), D("-1"), "USD")


def test_flat_price_defaults_to_in_advance_and_drops_zero() -> None:
    p = parse_price(flat("10"))
    assert p.payment_term == "in_advance"  # type: ignore[union-attr]
    assert evaluate_price(flat("0.004"), None, "USD").components == ()


def test_matches_openmeter_graduated_fixture() -> None:
    """``pricegraduatedtiered_test.go`` "tiered graduated, single period multiple tier usage"."""
    price = tiered(
        "graduated", ("5", "100", "0"), ("10", "50", None), ("15", None, "5"), (None, None, "1")
    )
    r = evaluate_price(price, D("22"), "USD")
    assert [(c.reference, c.quantity, c.unit_amount) for c in r.components] == [
        ("graduated-tiered-1-price-usage", D("5"), D("0")),
        ("graduated-tiered-1-flat-price", D("1"), D("100")),
        ("graduated-tiered-2-flat-price", D("1"), D("50")),
        ("graduated-tiered-3-price-usage", D("5"), D("5")),
        ("graduated-tiered-4-price-usage", D("7"), D("1")),
    ]
    assert r.amount == D("182.00")
