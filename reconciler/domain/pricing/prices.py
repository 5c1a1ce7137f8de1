"""Price models → amounts, the way OpenMeter beta.227's billing line service computes them.

Every rule cites the OpenMeter source at tag ``v1.0.0-beta.227`` (paths relative to the
repository root). ``lineservice`` means ``openmeter/billing/service/lineservice/``.

How one usage-based invoice line is priced (``lineservice/usagebasedline.go`` ``newPricerFor``):

1. pre-calculation: the metered quantity is reduced by the rate card's usage discount
   (``discountusage.go`` ``discountUsageMutator``);
2. the pricer for the price type emits *detailed lines* (quantity × per-unit amount) — our
   :class:`Component`;
3. post-calculation, in this order: percentage discount on every detailed line
   (``discountpercentage.go``), maximum-spend commitment as a discount
   (``commitments.go`` ``maxAmountCommitmentMutator``), minimum-spend commitment as an extra
   charge line (``commitments.go`` ``minAmountCommitmentMutator``).

Flat prices use only the flat pricer and the percentage discount (no usage discount, no
commitments: ``newPricerFor``).

Rounding happens per detailed line, never on the line sum: each detailed line's amount is
``RoundToPrecision(perUnitAmount × quantity)`` (``detailedlines.go`` ``TotalAmount``,
``calculateDetailedLineTotals``), each discount is rounded on its own
(``openmeter/billing/invoicelinediscount.go`` ``AmountLineDiscountsManaged.SumAmount``), and the
line total is the sum (``lineservice/service.go`` ``UpdateTotalsFromDetailedLines``;
``openmeter/billing/totals.go`` ``Totals.CalculateTotal`` = amount + charges − discounts).

The quantity is the line's whole service-period quantity. Progressive billing (one line split
over several invoices) is not modelled: it changes when money is invoiced, not how much, except
for volume tiers which OpenMeter refuses to split (``pricevolumetiered.go``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from reconciler.domain.pricing.currency import div_round, exact, floor, round_money

__all__ = [
    "Commitments",
    "Component",
    "ComponentKind",
    "Discounts",
    "DynamicPrice",
    "FlatPrice",
    "PackagePrice",
    "PaymentTerm",
    "Price",
    "PriceError",
    "PriceResult",
    "Tier",
    "TieredPrice",
    "UnitPrice",
    "evaluate_price",
    "package_count",
    "parse_discounts",
    "parse_price",
    "volume_tier_index",
]

ZERO = Decimal(0)
ONE = Decimal(1)


class PriceError(ValueError):
    """A price or discount object OpenMeter would reject, or an input it cannot price."""


class PaymentTerm(StrEnum):
    IN_ADVANCE = "in_advance"
    IN_ARREARS = "in_arrears"


class ComponentKind(StrEnum):
    """What a detailed line charges for (its OpenMeter ``childUniqueReferenceID`` differs)."""

    FLAT = "flat"  # flat price (``flat-price``)
    USAGE = "usage"  # unit / package / dynamic usage (``unit-price-usage`` / ``usage``)
    TIER_USAGE = "tier_usage"  # graduated tier unit price, volume unit price
    TIER_FLAT = "tier_flat"  # graduated tier flat price, volume tier flat price
    MINIMUM_SPEND = "minimum_spend"  # commitment charge (``min-spend``)


@dataclass(frozen=True, slots=True)
class Commitments:
    """``productcatalog/price.go`` ``Commitments`` (unit, tiered, dynamic and package prices)."""

    minimum_amount: Decimal | None = None
    maximum_amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class FlatPrice:
    amount: Decimal
    # ``productcatalog/price.go`` ``DefaultPaymentTerm = InAdvancePaymentTerm``; the flat pricer
    # applies it when the term is empty (``lineservice/priceflat.go`` ``Calculate``).
    payment_term: PaymentTerm = PaymentTerm.IN_ADVANCE
    type: str = "flat"


@dataclass(frozen=True, slots=True)
class UnitPrice:
    amount: Decimal
    commitments: Commitments = Commitments()
    type: str = "unit"


@dataclass(frozen=True, slots=True)
class PackagePrice:
    amount: Decimal
    quantity_per_package: Decimal
    commitments: Commitments = Commitments()
    type: str = "package"


@dataclass(frozen=True, slots=True)
class DynamicPrice:
    """Cost-based price: the meter's value (a cost in the invoice currency) × ``multiplier``."""

    multiplier: Decimal
    commitments: Commitments = Commitments()
    type: str = "dynamic"


@dataclass(frozen=True, slots=True)
class Tier:
    """``productcatalog/price.go`` ``PriceTier``: ``up_to`` is inclusive, ``None`` = open-ended."""

    up_to: Decimal | None
    flat_amount: Decimal | None
    unit_amount: Decimal | None


@dataclass(frozen=True, slots=True)
class TieredPrice:
    mode: str  # "graduated" | "volume"
    tiers: tuple[Tier, ...]  # as given (OpenMeter stores them unsorted)
    commitments: Commitments = Commitments()
    type: str = "tiered"

    def sorted_tiers(self) -> tuple[Tier, ...]:
        """``TieredPrice.WithSortedTiers``: ascending ``up_to``, open-ended tiers last.

        Go's ``slices.SortFunc`` is an insertion sort (stable) for fewer than 12 elements; Python's
        sort is stable, so equal keys keep their order either way.
        """
        bounded = sorted((t for t in self.tiers if t.up_to is not None), key=_up_to)
        return (*bounded, *(t for t in self.tiers if t.up_to is None))

    @property
    def is_sorted(self) -> bool:
        return self.sorted_tiers() == self.tiers


def _up_to(tier: Tier) -> Decimal:
    assert tier.up_to is not None
    return tier.up_to


Price = FlatPrice | UnitPrice | PackagePrice | DynamicPrice | TieredPrice


@dataclass(frozen=True, slots=True)
class Discounts:
    """A rate card's ``discounts``.

    JSON: ``{"percentage": {"percentage": 10}, "usage": {"quantity": 100}}``.
    """

    percentage: Decimal | None = None
    usage_quantity: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Component:
    """One OpenMeter *detailed line*: ``amount = round(quantity × unit_amount)``.

    ``discount`` is the sum of the rounded amount discounts OpenMeter attaches to that detailed
    line (rate-card percentage discount, maximum-spend discount). For a minimum-spend commitment
    ``amount`` is booked by OpenMeter as a *charge* (``totals.ChargesTotal``), not as ``Amount``.
    """

    kind: ComponentKind
    name: str  # OpenMeter's detailed-line name suffix, e.g. "usage price for tier 2"
    reference: str  # OpenMeter's ``childUniqueReferenceID``
    tier: int | None  # 1-based tier number as OpenMeter names it
    quantity: Decimal
    unit_amount: Decimal
    amount: Decimal
    discount: Decimal = ZERO
    discount_notes: tuple[str, ...] = ()

    @property
    def total(self) -> Decimal:
        with exact():
            return self.amount - self.discount


@dataclass(frozen=True, slots=True)
class PriceResult:
    """A priced line: components (detailed lines) and their total."""

    price_type: str
    mode: str | None
    currency: str
    metered_quantity: Decimal | None  # as given (None for flat prices)
    quantity: Decimal | None  # after the usage discount: what the pricer rated
    components: tuple[Component, ...]
    amount: Decimal
    notes: tuple[str, ...] = ()

    @property
    def gross(self) -> Decimal:
        """Sum of component amounts before discounts."""
        with exact():
            return sum((c.amount for c in self.components), ZERO)

    @property
    def discounts(self) -> Decimal:
        with exact():
            return sum((c.discount for c in self.components), ZERO)


# --------------------------------------------------------------------------------------------
# Parsing (the API's JSON shapes: ``api/openapi.yaml`` ``RateCardUsageBasedPrice``, ``FlatPrice*``)
# --------------------------------------------------------------------------------------------


def _dec(value: Any, what: str, *, optional: bool = False) -> Decimal | None:
    if value is None:
        if optional:
            return None
        raise PriceError(f"{what} is required")
    if isinstance(value, bool):
        raise PriceError(f"{what}: expected a decimal, got {value!r}")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        # JSON numbers decoded as float: go through the shortest repr, never binary expansion.
        d = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise PriceError(f"{what}: not a decimal: {value!r}") from None
    else:
        raise PriceError(f"{what}: expected a decimal, got {type(value).__name__}")
    if not d.is_finite():
        raise PriceError(f"{what}: must be finite, got {value!r}")
    return d


def _req(value: Any, what: str) -> Decimal:
    d = _dec(value, what)
    assert d is not None
    return d


def _non_negative(d: Decimal | None, what: str) -> None:
    if d is not None and d < 0:
        raise PriceError(f"{what} must not be negative")


def _commitments(obj: Mapping[str, Any]) -> Commitments:
    """``productcatalog/price.go`` ``Commitments.Validate``: both ≥ 0 and minimum ≤ maximum."""
    lo = _dec(obj.get("minimumAmount"), "minimumAmount", optional=True)
    hi = _dec(obj.get("maximumAmount"), "maximumAmount", optional=True)
    _non_negative(lo, "minimumAmount")
    _non_negative(hi, "maximumAmount")
    if lo is not None and hi is not None and lo > hi:
        raise PriceError("minimumAmount must not be greater than maximumAmount")
    return Commitments(lo, hi)


def _nested_amount(obj: Any, what: str) -> Decimal | None:
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise PriceError(f"{what}: expected an object")
    d = _req(obj.get("amount"), f"{what}.amount")
    _non_negative(d, f"{what}.amount")
    return d


def parse_price(obj: Mapping[str, Any] | Price) -> Price:
    """A price JSON object (as OpenMeter's plan/rate card has it) → a typed price.

    Validation follows ``productcatalog/price.go`` (``FlatPrice.Validate``, ``UnitPrice``,
    ``PackagePrice.Validate`` (quantity per package > 0), ``DynamicPrice.Validate``,
    ``TieredPrice.Validate``: at least one tier, at least one open-ended tier, no duplicate
    non-zero ``upToAmount``, every tier has a flat and/or unit price, ``upToAmount`` ≥ 0).
    """
    if isinstance(obj, FlatPrice | UnitPrice | PackagePrice | DynamicPrice | TieredPrice):
        return obj
    if not isinstance(obj, Mapping):
        raise PriceError(f"price must be an object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "flat":
        amount = _req(obj.get("amount"), "amount")
        _non_negative(amount, "amount")
        term_raw = obj.get("paymentTerm") or PaymentTerm.IN_ADVANCE.value
        try:
            term = PaymentTerm(term_raw)
        except ValueError:
            raise PriceError(f"flat price payment term {term_raw!r} is not supported") from None
        return FlatPrice(amount, term)
    if kind == "unit":
        amount = _req(obj.get("amount"), "amount")
        _non_negative(amount, "amount")
        return UnitPrice(amount, _commitments(obj))
    if kind == "package":
        amount = _req(obj.get("amount"), "amount")
        per = _req(obj.get("quantityPerPackage"), "quantityPerPackage")
        _non_negative(amount, "amount")
        if per <= 0:
            raise PriceError("quantityPerPackage must be greater than zero")
        return PackagePrice(amount, per, _commitments(obj))
    if kind == "dynamic":
        # ``DynamicPriceDefaultMultiplier`` is 1 (``productcatalog/price.go``).
        mult = _dec(obj.get("multiplier"), "multiplier", optional=True)
        mult = ONE if mult is None else mult
        _non_negative(mult, "multiplier")
        return DynamicPrice(mult, _commitments(obj))
    if kind == "tiered":
        mode = obj.get("mode")
        if mode not in ("graduated", "volume"):
            raise PriceError(f"invalid tiered price mode: {mode!r}")
        raw_tiers = obj.get("tiers")
        if not isinstance(raw_tiers, list | tuple) or not raw_tiers:
            raise PriceError("at least one tier must be provided")
        tiers: list[Tier] = []
        seen: set[Decimal] = set()
        for i, raw in enumerate(raw_tiers):
            if not isinstance(raw, Mapping):
                raise PriceError(f"tiers[{i}]: expected an object")
            up_to = _dec(raw.get("upToAmount"), f"tiers[{i}].upToAmount", optional=True)
            _non_negative(up_to, f"tiers[{i}].upToAmount")
            if up_to is not None and up_to != 0:
                if up_to in seen:
                    raise PriceError("multiple tiers with the same upToAmount are not allowed")
                seen.add(up_to)
            flat = _nested_amount(raw.get("flatPrice"), f"tiers[{i}].flatPrice")
            unit = _nested_amount(raw.get("unitPrice"), f"tiers[{i}].unitPrice")
            if flat is None and unit is None:
                raise PriceError(f"tiers[{i}]: either flatPrice or unitPrice must be provided")
            tiers.append(Tier(up_to, flat, unit))
        if all(t.up_to is not None for t in tiers):
            raise PriceError("at least one tier must be open-ended (upToAmount null)")
        return TieredPrice(mode, tuple(tiers), _commitments(obj))
    raise PriceError(f"unsupported price type: {kind!r}")


def parse_discounts(obj: Mapping[str, Any] | Discounts | None) -> Discounts:
    """A rate card's ``discounts`` object → :class:`Discounts` (``None`` = no discounts).

    Percentage must be within 0..100 (``lineservice/discountpercentage.go`` ``getLineDiscount``).
    """
    if obj is None:
        return Discounts()
    if isinstance(obj, Discounts):
        return obj
    if not isinstance(obj, Mapping):
        raise PriceError("discounts must be an object")
    pct: Decimal | None = None
    usage: Decimal | None = None
    if (p := obj.get("percentage")) is not None:
        pct = _dec(p.get("percentage") if isinstance(p, Mapping) else p, "percentage")
        assert pct is not None
        if pct < 0 or pct > 100:
            raise PriceError("discount percentage must be between 0 and 100")
    if (u := obj.get("usage")) is not None:
        usage = _dec(u.get("quantity") if isinstance(u, Mapping) else u, "usage.quantity")
        _non_negative(usage, "usage.quantity")
    return Discounts(pct, usage)


# --------------------------------------------------------------------------------------------
# Pricers
# --------------------------------------------------------------------------------------------


def _component(
    kind: ComponentKind,
    name: str,
    reference: str,
    tier: int | None,
    quantity: Decimal,
    unit_amount: Decimal,
    currency: str,
) -> Component:
    with exact():
        amount = round_money(unit_amount * quantity, currency)
    return Component(kind, name, reference, tier, quantity, unit_amount, amount)


def _unit(price: UnitPrice, qty: Decimal, currency: str) -> list[Component]:
    """``lineservice/priceunit.go`` ``unitPricer.Calculate``: one line, only if quantity > 0."""
    if qty <= 0:
        return []
    return [
        _component(
            ComponentKind.USAGE,
            "usage in period",
            "unit-price-usage",
            None,
            qty,
            price.amount,
            currency,
        )
    ]


def package_count(quantity: Decimal, per_package: Decimal) -> Decimal:
    """``lineservice/pricepackage.go`` ``getNumberOfPackages``: partial packages round up.

    ``floor(qty.Div(size)) + (1 if qty.Mod(size) != 0)``; ``Div`` rounds to 16 decimals first
    (see :func:`~reconciler.domain.pricing.currency.div_round`), reproduced here.
    """
    with exact():
        packages = floor(div_round(quantity, per_package))
        if quantity % per_package != 0:
            packages += 1
    return packages


def _package(price: PackagePrice, qty: Decimal, currency: str) -> list[Component]:
    """``pricepackage.go`` ``packagePricer.Calculate``: packages × amount, none if 0 packages."""
    packages = package_count(qty, price.quantity_per_package)
    if packages == 0:
        return []
    return [
        _component(
            ComponentKind.USAGE, "usage in period", "usage", None, packages, price.amount, currency
        )
    ]


def _dynamic(price: DynamicPrice, qty: Decimal, currency: str) -> list[Component]:
    """``lineservice/pricedynamic.go``: ``round(quantity × multiplier)`` as one unit, if qty > 0."""
    if qty <= 0:
        return []
    with exact():
        per_unit = round_money(qty * price.multiplier, currency)
    return [
        _component(ComponentKind.USAGE, "usage in period", "usage", None, ONE, per_unit, currency)
    ]


def _graduated(price: TieredPrice, qty: Decimal, currency: str) -> list[Component]:
    """``lineservice/pricegraduatedtiered.go`` ``tieredPriceCalculator`` + ``Calculate``.

    * Tiers are walked in ``WithSortedTiers`` order; tier *k* covers ``(up_to[k-1], up_to[k]]``
      (the previous bound exclusive, its own bound inclusive).
    * A tier is entered only if the quantity is strictly greater than the previous tier's bound
      (the loop stops when ``previousTierQty >= ToQty``): a quantity exactly on a bound stays in
      the lower tier and the next tier's flat price is not charged.
    * Each entered tier emits a unit line (quantity inside the tier × unit price, possibly 0)
      and then, if it has one, its flat price once (``AtTierBoundary``).
    * Zero quantity: the ``ToQty == 0`` branch still emits the first tier — ``Tiers[0]`` of the
      *unsorted* list — so that tier's flat price is charged even with no usage.
    """
    comps: list[Component] = []
    ranges: list[tuple[Tier, int, Decimal, Decimal]] = []
    previous = ZERO
    for idx, tier in enumerate(price.sorted_tiers()):
        if previous >= qty:
            break
        upper = tier.up_to if tier.up_to is not None else qty
        # ``splitTierRangeAtBoundary``: the part above ``qty`` is never billed.
        ranges.append((tier, idx, previous, min(upper, qty)))
        previous = upper
    if qty == 0:
        ranges.append((price.tiers[0], 0, ZERO, ZERO))
    for tier, idx, lo, hi in ranges:
        n = idx + 1
        if tier.unit_amount is not None:
            with exact():
                in_tier = hi - lo
            comps.append(
                _component(
                    ComponentKind.TIER_USAGE,
                    f"usage price for tier {n}",
                    f"graduated-tiered-{n}-price-usage",
                    n,
                    in_tier,
                    tier.unit_amount,
                    currency,
                )
            )
        if tier.flat_amount is not None:
            comps.append(
                _component(
                    ComponentKind.TIER_FLAT,
                    f"flat price for tier {n}",
                    f"graduated-tiered-{n}-flat-price",
                    n,
                    ONE,
                    tier.flat_amount,
                    currency,
                )
            )
        if hi >= qty:
            break
    return comps


def volume_tier_index(price: TieredPrice, qty: Decimal) -> int:
    """``pricevolumetiered.go`` ``findTierForQuantity``: first sorted tier with ``qty <= up_to``.

    Returns the index into the *sorted* tiers; OpenMeter then reads ``price.Tiers[i]`` — the
    tier at that index of the list as stored (unsorted). See :func:`_volume`.
    """
    for i, tier in enumerate(price.sorted_tiers()):
        if tier.up_to is None or qty <= tier.up_to:
            return i
    raise PriceError(f"no tier for quantity {qty}: the price has no open-ended tier")


def _volume(price: TieredPrice, qty: Decimal, currency: str) -> list[Component]:
    """``lineservice/pricevolumetiered.go`` ``volumeTieredPricer.Calculate``.

    The tier containing the whole quantity (bounds inclusive) sets the unit price for all units,
    plus that tier's flat price — charged even at zero quantity; the unit line only when the
    quantity is non-zero. Quirk kept on purpose: the index found in the sorted tiers is applied
    to the stored (unsorted) list (``&price.Tiers[i]``), so tiers stored out of order price with
    a different tier than their bounds suggest. Sorted input (the normal case) is unaffected.
    """
    i = volume_tier_index(price, qty)
    tier = price.tiers[i]
    n = i + 1
    comps: list[Component] = []
    if tier.flat_amount is not None:
        comps.append(
            _component(
                ComponentKind.TIER_FLAT,
                f"flat price for tier {n}",
                "volume-flat-price",
                n,
                ONE,
                tier.flat_amount,
                currency,
            )
        )
    if tier.unit_amount is not None and qty != 0:
        comps.append(
            _component(
                ComponentKind.TIER_USAGE,
                f"unit price for tier {n}",
                "volume-tiered-price",
                n,
                qty,
                tier.unit_amount,
                currency,
            )
        )
    return comps


def _flat(price: FlatPrice, currency: str) -> list[Component]:
    """``lineservice/priceflat.go``: one line of quantity 1 at the (already prorated) amount.

    The subscription sync drops a flat line whose rounded amount is zero
    (``subscriptionsync/service/sync.go`` ``lineFromSubscriptionRateCard``: "We don't need to
    bill the customer for zero amount items").
    """
    per_unit = round_money(price.amount, currency)
    if per_unit == 0:
        return []
    return [_component(ComponentKind.FLAT, "flat fee", "flat-price", None, ONE, per_unit, currency)]


# --------------------------------------------------------------------------------------------
# Mutators: discounts and commitments
# --------------------------------------------------------------------------------------------


def _apply_percentage(comps: list[Component], pct: Decimal, currency: str) -> list[Component]:
    """``discountpercentage.go``: per detailed line, ``round(total × pct / 100)``.

    ``models.Percentage.ApplyTo`` is ``value.Mul(p).Div(100)`` (16-decimal division) and the
    result is rounded with ``RoundToPrecision``.
    """
    out = []
    for c in comps:
        with exact():
            d = round_money(div_round(c.total * pct, 100), currency)
            out.append(
                Component(
                    c.kind,
                    c.name,
                    c.reference,
                    c.tier,
                    c.quantity,
                    c.unit_amount,
                    c.amount,
                    c.discount + d,
                    (*c.discount_notes, f"{pct}% rate card discount"),
                )
            )
    return out


def _apply_maximum(comps: list[Component], maximum: Decimal, currency: str) -> list[Component]:
    """Maximum spend as a discount (``commitments.go`` ``maxAmountCommitmentMutator``).

    Per detailed line via ``detailedlines.go`` ``newDetailedLineInput.AddDiscountForOverage``.

    Walking the detailed lines in order with ``billed`` = sum of the previous lines' totals
    (after percentage discounts, before the maximum-spend discount):

    * ``round(billed) + total <= round(maximum)`` → nothing;
    * ``billed >= round(maximum)`` → a discount of the whole line total;
    * otherwise a discount of ``round(billed) + total − round(maximum)``.
    """
    out = []
    billed = ZERO
    with exact():
        cap = round_money(maximum, currency)
        for c in comps:
            line_total = c.total
            billable = round_money(billed, currency) + line_total
            extra = ZERO
            if billable > cap:
                extra = line_total if billed >= cap else billable - cap
            if extra:
                c = Component(
                    c.kind,
                    c.name,
                    c.reference,
                    c.tier,
                    c.quantity,
                    c.unit_amount,
                    c.amount,
                    c.discount + round_money(extra, currency),
                    (*c.discount_notes, f"maximum spend discount for charges over {cap}"),
                )
            out.append(c)
            billed += line_total
    return out


def _apply_minimum(comps: list[Component], minimum: Decimal, currency: str) -> list[Component]:
    """``commitments.go`` ``minAmountCommitmentMutator``: top up to the minimum, per line.

    If the sum of the line's detailed totals is below ``minimum`` (compared unrounded), a
    "minimum spend" charge of ``round(minimum − sum)`` is appended — also at zero usage. It is
    applied to each invoice line on its own (per item version and service period) and is not
    prorated when the service period is partial.
    """
    with exact():
        billed = sum((c.total for c in comps), ZERO)
        if billed >= minimum:
            return comps
        charge = round_money(minimum - billed, currency)
    return [
        *comps,
        _component(
            ComponentKind.MINIMUM_SPEND, "minimum spend", "min-spend", None, ONE, charge, currency
        ),
    ]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def evaluate_price(
    price: Mapping[str, Any] | Price,
    quantity: Decimal | None,
    currency: str,
    *,
    discounts: Mapping[str, Any] | Discounts | None = None,
) -> PriceResult:
    """Price ``quantity`` with ``price`` in ``currency`` as one OpenMeter invoice line.

    ``quantity`` is the metered quantity of the line's service period (ignored, may be ``None``,
    for flat prices). Flat prices are taken as given: prorate first (see
    :mod:`reconciler.domain.pricing.proration`). Returns the detailed lines and their total.
    """
    p = parse_price(price)
    disc = parse_discounts(discounts)
    round_money(ZERO, currency)  # unknown currency → UnknownCurrencyError, before anything else
    notes: list[str] = []
    if isinstance(p, FlatPrice):
        comps = _flat(p, currency)
        if disc.usage_quantity is not None:
            notes.append("usage discount ignored: OpenMeter applies it to usage-based prices only")
        if disc.percentage is not None:
            comps = _apply_percentage(comps, disc.percentage, currency)
        return _result(p, currency, None, None, comps, notes)

    if quantity is None:
        raise PriceError(f"a {p.type} price needs the metered quantity")
    metered = _req(quantity, "quantity")
    if metered < 0:
        raise PriceError("quantity must not be negative")
    qty = metered
    if disc.usage_quantity is not None and disc.usage_quantity > 0 and qty > 0:
        # ``discountusage.go``: the first ``quantity`` units of the line are free.
        free = min(disc.usage_quantity, qty)
        with exact():
            qty = qty - free
        notes.append(f"usage discount: first {free} units free")

    if isinstance(p, UnitPrice):
        comps = _unit(p, qty, currency)
    elif isinstance(p, PackagePrice):
        comps = _package(p, qty, currency)
    elif isinstance(p, DynamicPrice):
        comps = _dynamic(p, qty, currency)
        notes.append(
            "dynamic price: the meter's value is taken as a cost in the invoice currency, "
            f"billed as round(quantity × {p.multiplier}) (lineservice/pricedynamic.go)"
        )
    elif p.mode == "graduated":
        comps = _graduated(p, qty, currency)
    else:
        comps = _volume(p, qty, currency)
    if isinstance(p, TieredPrice) and not p.is_sorted:
        notes.append(
            "tiers are not stored in ascending order: OpenMeter sorts them for the bounds but "
            + (
                "reads the tier at the sorted position from the unsorted list (volume quirk)"
                if p.mode == "volume"
                else "bills the unsorted first tier's flat price at zero usage"
            )
        )
    if disc.percentage is not None:
        comps = _apply_percentage(comps, disc.percentage, currency)
    if p.commitments.maximum_amount is not None:
        comps = _apply_maximum(comps, p.commitments.maximum_amount, currency)
    if p.commitments.minimum_amount is not None:
        before = len(comps)
        comps = _apply_minimum(comps, p.commitments.minimum_amount, currency)
        if len(comps) > before:
            notes.append(f"minimum spend {p.commitments.minimum_amount} applies to this line")
    return _result(p, currency, metered, qty, comps, notes)


def _result(
    p: Price,
    currency: str,
    metered: Decimal | None,
    qty: Decimal | None,
    comps: list[Component],
    notes: list[str],
) -> PriceResult:
    with exact():
        total = sum((c.total for c in comps), round_money(ZERO, currency))
    return PriceResult(
        price_type=p.type,
        mode=p.mode if isinstance(p, TieredPrice) else None,
        currency=currency,
        metered_quantity=metered,
        quantity=qty,
        components=tuple(comps),
        amount=total,
        notes=tuple(notes),
    )
