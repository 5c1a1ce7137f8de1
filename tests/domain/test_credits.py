"""Credits owed for in-advance fees already on an issued invoice when an edit shortens them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from reconciler.domain.invoices import invoiced_for
from reconciler.domain.model import (
    ObservedItem,
    ObservedPhase,
    ObservedSubscription,
    PlanRef,
    SubscriptionStatus,
)
from reconciler.domain.pricing.credits import credits_due
from reconciler.domain.pricing.replay import observed_versions

APR1 = datetime(2027, 4, 1, tzinfo=UTC)
APR16 = datetime(2027, 4, 16, tzinfo=UTC)
MAY1 = datetime(2027, 5, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Line:
    invoice_id: str
    immutable: bool
    line_id: str
    item_id: str | None
    period: tuple[datetime, datetime]
    currency: str
    amount: Decimal
    name: str = "Base"


def item(iid: str, amount: str, start: datetime, end: datetime | None, term: str) -> ObservedItem:
    price = {"type": "flat", "amount": amount, "paymentTerm": term}
    return ObservedItem(iid, "base_fee", "Base", None, "P1M", price, None, None, start, end)


def sub(*versions: ObservedItem) -> ObservedSubscription:
    phase = ObservedPhase("default", "Default", APR1, None, versions, {"base_fee": versions})
    return ObservedSubscription(
        "s1", "c1", SubscriptionStatus.ACTIVE, PlanRef("basic", 1), "Basic", "USD", "P1M",
        APR1, APR1, None, True, (phase,), (APR1, MAY1),
    )  # fmt: skip


def test_issued_in_advance_fee_shortened_by_an_edit_is_owed_back() -> None:
    s = sub(
        item("v1", "150", APR1, APR16, "in_advance"), item("v2", "300", APR16, None, "in_advance")
    )
    issued = Line("inv1", True, "l1", "v1", (APR1, MAY1), "USD", Decimal("150.00"))
    [c] = credits_due(
        s,
        observed_versions(s),
        [issued, Line("inv2", False, "l2", "v2", (APR16, MAY1), "USD", Decimal("150"))],
    )
    assert (c.item, c.amount, c.currency, c.period) == (
        "base_fee",
        Decimal("75.00"),
        "USD",
        (APR16, MAY1),
    )
    assert (c.invoiced, c.due, c.invoice_id, c.line_id) == (
        Decimal("150.00"),
        Decimal("75.00"),
        "inv1",
        "l1",
    )


def test_nothing_is_owed_on_drafts_in_arrears_fees_or_unshortened_versions() -> None:
    def owed(s: ObservedSubscription, line: Line) -> list[object]:
        return list(credits_due(s, observed_versions(s), [line]))

    issued = Line("i", True, "l", "v1", (APR1, MAY1), "USD", Decimal(150))
    draft = Line("inv1", False, "l1", "v1", (APR1, MAY1), "USD", Decimal("150.00"))
    assert owed(sub(item("v1", "150", APR1, APR16, "in_advance")), draft) == []
    assert owed(sub(item("v1", "150", APR1, APR16, "in_arrears")), issued) == []
    assert owed(sub(item("v1", "150", APR1, None, "in_advance")), issued) == []


def test_a_version_recreated_by_the_edit_is_matched_by_name_and_period() -> None:
    """OpenMeter gives the version an edit ended a new id (its cadence changed); the issued line
    keeps the old one, and is matched by the rate card's name and where its period starts."""
    s = sub(
        item("v1-new", "150", APR1, APR16, "in_advance"),
        item("v2", "300", APR16, None, "in_advance"),
    )
    issued = Line("inv1", True, "l1", "v1-old", (APR1, MAY1), "USD", Decimal(150))
    [c] = credits_due(s, observed_versions(s), [issued])
    assert (c.item, c.amount, c.line_id) == ("base_fee", Decimal("75.00"), "l1")
    other = Line("inv1", True, "l1", "v1-old", (APR1, MAY1), "USD", Decimal(150), name="Seats")
    assert credits_due(s, observed_versions(s), [other]) == []


def test_invoiced_for_by_id_or_by_name_and_period_start() -> None:
    assert invoiced_for("a", "Fee", APR1, "a", "Other", APR16, None)  # same id wins
    assert invoiced_for("old", "Fee", APR1, "new", "Fee", APR1, APR16)
    assert not invoiced_for("old", "Fee", APR1, "new", "Fee", APR16, None)  # started later
    assert not invoiced_for("old", "Fee", APR16, "new", "Fee", APR1, APR16)  # ended before
    assert invoiced_for("old", "Fee", MAY1, "new", "Fee", APR1, None)  # a later period
