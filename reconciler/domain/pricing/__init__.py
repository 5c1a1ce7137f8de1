"""Money: OpenMeter beta.227's pricing, proration and rounding, and quotes built on them.

Pure code (no I/O, no clock). ``docs/PRICING.md`` lists every rule with its source in OpenMeter.

* :mod:`.currency` — minor units (gobl) and half-away-from-zero rounding.
* :mod:`.prices` — unit, package, tiered (graduated/volume), flat and dynamic prices, discounts
  and minimum/maximum commitments → detailed lines.
* :mod:`.proration` — flat-fee proration (``shouldProrate``, ``PeriodPercentage``).
* :mod:`.quote` — a billing period's lines for a list of item versions, and quote differences.
"""

from reconciler.domain.pricing.currency import (
    MINOR_UNITS,
    UnknownCurrencyError,
    minor_units,
    round_money,
)
from reconciler.domain.pricing.prices import (
    Commitments,
    Component,
    ComponentKind,
    Discounts,
    DynamicPrice,
    FlatPrice,
    PackagePrice,
    PaymentTerm,
    Price,
    PriceError,
    PriceResult,
    Tier,
    TieredPrice,
    UnitPrice,
    evaluate_price,
    package_count,
    parse_discounts,
    parse_price,
    volume_tier_index,
)
from reconciler.domain.pricing.proration import (
    PRORATE_PRICES,
    ProRatingConfig,
    period_percentage,
    prorated_flat_amount,
    should_prorate,
    truncate_to_second,
)
from reconciler.domain.pricing.quote import (
    ItemVersion,
    LineDelta,
    Quote,
    QuoteDifference,
    QuoteLine,
    QuoteRequest,
    build_quote,
    quote_difference,
    service_window,
)

__all__ = [
    "MINOR_UNITS",
    "PRORATE_PRICES",
    "Commitments",
    "Component",
    "ComponentKind",
    "Discounts",
    "DynamicPrice",
    "FlatPrice",
    "ItemVersion",
    "LineDelta",
    "PackagePrice",
    "PaymentTerm",
    "Price",
    "PriceError",
    "PriceResult",
    "ProRatingConfig",
    "Quote",
    "QuoteDifference",
    "QuoteLine",
    "QuoteRequest",
    "Tier",
    "TieredPrice",
    "UnitPrice",
    "UnknownCurrencyError",
    "build_quote",
    "evaluate_price",
    "minor_units",
    "package_count",
    "parse_discounts",
    "parse_price",
    "period_percentage",
    "prorated_flat_amount",
    "quote_difference",
    "round_money",
    "service_window",
    "should_prorate",
    "truncate_to_second",
    "volume_tier_index",
]
