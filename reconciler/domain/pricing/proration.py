"""Flat-fee proration, as OpenMeter beta.227's subscription→billing sync computes it.

Sources (tag ``v1.0.0-beta.227``, ``subscriptionsync`` = ``openmeter/billing/worker/
subscriptionsync/service/``):

* Only flat prices are prorated, only when the subscription's ``proRatingConfig`` is enabled
  with mode ``prorate_prices``, and *not* when the service period is cut by the subscription
  ending (``subscription.activeTo <= servicePeriod.end``): ``sync.go`` ``shouldProrate``.
* The prorated per-unit amount is ``RoundToPrecision(amount × PeriodPercentage())``, unprorated
  ``RoundToPrecision(amount)``; an empty service period is never prorated (``sync.go``
  ``lineFromSubscriptionRateCard``: ``!item.ServicePeriod.IsEmpty() && s.shouldProrate(...)``).
* ``PeriodPercentage`` = ``servicePeriod.Duration() / fullServicePeriod.Duration()`` in
  nanoseconds, as ``alpacadecimal`` ``Div`` (half-up to 16 decimals); 1 when the full period is
  empty (``phaseiterator.go`` ``subscriptionItemWithPeriods.PeriodPercentage``).
* Before that, the service, billing and full service periods are truncated to whole seconds
  (``phaseiterator.go`` ``truncateItemsIfNeeded``, ``streaming.MinimumWindowSizeDuration`` =
  1 s): the ratio is a ratio of whole seconds — not days — so a month of 28, 29, 30 or 31 days
  and a cut in the middle of a day all prorate to the second.
* The full service period is the item's billing-cadence period around the item's start, from
  the subscription's billing anchor, *not* clipped to the phase or the subscription
  (``openmeter/subscription/subscriptionspec.go`` ``GetFullServicePeriodAt``); the service
  period is its intersection with the item version's active window (``phaseiterator.go``
  ``generateForAlignedItemVersionPeriod``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from reconciler.domain.pricing.currency import div_round, exact, round_money

__all__ = [
    "PRORATE_PRICES",
    "ProRatingConfig",
    "period_percentage",
    "prorated_flat_amount",
    "seconds",
    "should_prorate",
    "truncate_to_second",
]

PRORATE_PRICES = "prorate_prices"  # the only ``ProRatingMode`` (``productcatalog/pro_rating.go``)

_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class ProRatingConfig:
    """The subscription's ``proRatingConfig`` (copied from the plan at create time)."""

    enabled: bool
    mode: str = PRORATE_PRICES


def truncate_to_second(at: datetime) -> datetime:
    """Go ``time.Truncate(time.Second)`` on an aware time: drop the sub-second part."""
    if at.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return at.replace(microsecond=0)


def seconds(start: datetime, end: datetime) -> int:
    """Whole seconds from ``start`` to ``end`` after truncating both (``Period.Truncate``)."""
    return (truncate_to_second(end) - truncate_to_second(start)) // _SECOND


def period_percentage(
    service: tuple[datetime, datetime], full_service: tuple[datetime, datetime]
) -> Decimal:
    """``PeriodPercentage``: truncated service seconds / truncated full-period seconds.

    Rounded half-up to 16 decimals like ``alpacadecimal.Div`` (durations in nanoseconds exceed
    its fixed-point range, so shopspring's ``DivRound(…, 16)`` runs). 1 if the full period is
    empty.
    """
    full = seconds(*full_service)
    if full == 0:
        return Decimal(1)
    return div_round(seconds(*service), full)


def should_prorate(
    config: ProRatingConfig | None,
    *,
    price_type: str,
    service_end: datetime,
    subscription_end: datetime | None,
) -> bool:
    """``sync.go`` ``shouldProrate``.

    ``service_end`` is the (second-truncated) service period end; ``subscription_end`` the
    subscription's ``activeTo`` as stored (not truncated): a subscription ending at or before
    the end of the service period disables proration ("We do not prorate due to the
    subscription ending").
    """
    if config is None or not config.enabled:
        return False
    if price_type != "flat":
        return False
    if subscription_end is not None and subscription_end <= service_end:
        return False
    return config.mode == PRORATE_PRICES


def prorated_flat_amount(
    amount: Decimal,
    currency: str,
    *,
    service: tuple[datetime, datetime],
    full_service: tuple[datetime, datetime],
    prorate: bool,
) -> tuple[Decimal, Decimal | None]:
    """The per-unit amount OpenMeter puts on a flat line and the ratio used (``None`` = none).

    ``lineFromSubscriptionRateCard``: ``round(amount × PeriodPercentage)`` when ``prorate`` and
    the (truncated) service period is not empty, else ``round(amount)``.
    """
    start, end = (truncate_to_second(t) for t in service)
    if prorate and end > start:
        ratio = period_percentage(service, full_service)
        with exact():
            return round_money(amount * ratio, currency), ratio
    return round_money(amount, currency), None
