"""Currency minor units and rounding, as OpenMeter beta.227 rounds money.

Rules (all from the OpenMeter source at tag ``v1.0.0-beta.227``):

* ``pkg/currencyx/currency.go`` ``Calculator.RoundToPrecision`` rounds with
  ``amount.Round(int32(c.Def.Subunits))``: the number of decimals is the currency's ``subunits``
  from ``github.com/invopop/gobl/currency`` (gobl ``v0.306.0`` per OpenMeter's ``go.mod``), and the
  cash ``smallest_denomination`` is deliberately ignored (comment in ``RoundToPrecision``).
* ``alpacadecimal.Decimal.Round`` (``alpacahq/alpacadecimal`` v0.0.8 ``decimal.go``; its fallback
  ``shopspring/decimal`` v1.4.0 ``Decimal.Round``) rounds half away from zero, i.e. Python's
  ``ROUND_HALF_UP``: ``0.125 -> 0.13``, ``-0.125 -> -0.13``. Not banker's rounding.
* ``Code.Calculator`` (``currencyx``) rejects codes gobl does not define; gobl's ``Get`` is an
  exact (case-sensitive) map lookup, so ``"usd"`` is unknown too.

gobl's table is not ISO 4217's in every row: e.g. ``HUF`` has 0 subunits, ``MGA``/``MRU`` 5,
``CLF`` 4, and it adds ``BTC``/``BCH`` (8) and ``GBX`` (1). We follow gobl, because that is what
OpenMeter rounds with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal, localcontext

__all__ = [
    "MINOR_UNITS",
    "UnknownCurrencyError",
    "div_round",
    "exact",
    "minor_units",
    "round_money",
]


class UnknownCurrencyError(ValueError):
    """The currency code is not one OpenMeter (gobl) knows."""


# ``iso_code -> subunits`` from gobl v0.306.0 ``data/currency/iso.json`` and
# ``data/currency/non-iso.json`` (the definitions ``currency.Get`` loads).
MINOR_UNITS: dict[str, int] = {
    "AED": 2,
    "AFN": 2,
    "ALL": 2,
    "AMD": 2,
    "ANG": 2,
    "AOA": 2,
    "ARS": 2,
    "AUD": 2,
    "AWG": 2,
    "AZN": 2,
    "BAM": 2,
    "BBD": 2,
    "BCH": 8,
    "BDT": 2,
    "BGN": 2,
    "BHD": 3,
    "BIF": 0,
    "BMD": 2,
    "BND": 2,
    "BOB": 2,
    "BRL": 2,
    "BSD": 2,
    "BTC": 8,
    "BTN": 2,
    "BWP": 2,
    "BYN": 2,
    "BYR": 0,
    "BZD": 2,
    "CAD": 2,
    "CDF": 2,
    "CHF": 2,
    "CLF": 4,
    "CLP": 0,
    "CNH": 2,
    "CNY": 2,
    "COP": 2,
    "CRC": 2,
    "CUC": 2,
    "CUP": 2,
    "CVE": 2,
    "CZK": 2,
    "DJF": 0,
    "DKK": 2,
    "DOP": 2,
    "DZD": 2,
    "EGP": 2,
    "ERN": 2,
    "ETB": 2,
    "EUR": 2,
    "FJD": 2,
    "FKP": 2,
    "GBP": 2,
    "GBX": 1,
    "GEL": 2,
    "GGP": 2,
    "GHS": 2,
    "GIP": 2,
    "GMD": 2,
    "GNF": 0,
    "GTQ": 2,
    "GYD": 2,
    "HKD": 2,
    "HNL": 2,
    "HTG": 2,
    "HUF": 0,
    "IDR": 2,
    "ILS": 2,
    "IMP": 2,
    "INR": 2,
    "IQD": 3,
    "IRR": 2,
    "ISK": 0,
    "JEP": 2,
    "JMD": 2,
    "JOD": 3,
    "JPY": 0,
    "KES": 2,
    "KGS": 2,
    "KHR": 2,
    "KMF": 0,
    "KPW": 2,
    "KRW": 0,
    "KWD": 3,
    "KYD": 2,
    "KZT": 2,
    "LAK": 2,
    "LBP": 2,
    "LKR": 2,
    "LRD": 2,
    "LSL": 2,
    "LYD": 3,
    "MAD": 2,
    "MDL": 2,
    "MGA": 5,
    "MKD": 2,
    "MMK": 2,
    "MNT": 2,
    "MOP": 2,
    "MRU": 5,
    "MUR": 2,
    "MVR": 2,
    "MWK": 2,
    "MXN": 2,
    "MYR": 2,
    "MZN": 2,
    "NAD": 2,
    "NGN": 2,
    "NIO": 2,
    "NOK": 2,
    "NPR": 2,
    "NZD": 2,
    "OMR": 3,
    "PAB": 2,
    "PEN": 2,
    "PGK": 2,
    "PHP": 2,
    "PKR": 2,
    "PLN": 2,
    "PYG": 0,
    "QAR": 2,
    "RON": 2,
    "RSD": 2,
    "RUB": 2,
    "RWF": 0,
    "SAR": 2,
    "SBD": 2,
    "SCR": 2,
    "SDG": 2,
    "SEK": 2,
    "SGD": 2,
    "SHP": 2,
    "SKK": 2,
    "SLE": 2,
    "SLL": 2,
    "SOS": 2,
    "SRD": 2,
    "SSP": 2,
    "STD": 2,
    "STN": 2,
    "SVC": 2,
    "SYP": 2,
    "SZL": 2,
    "THB": 2,
    "TJS": 2,
    "TMT": 2,
    "TND": 3,
    "TOP": 2,
    "TRY": 2,
    "TTD": 2,
    "TWD": 2,
    "TZS": 2,
    "UAH": 2,
    "UGX": 0,
    "USD": 2,
    "USDC": 2,
    "UYU": 2,
    "UZS": 2,
    "VES": 2,
    "VND": 0,
    "VUV": 0,
    "WST": 2,
    "XAF": 0,
    "XAG": 0,
    "XAU": 0,
    "XBA": 0,
    "XBB": 0,
    "XBC": 0,
    "XBD": 0,
    "XCD": 2,
    "XDR": 0,
    "XFU": 2,
    "XOF": 0,
    "XPD": 0,
    "XPF": 0,
    "XPT": 0,
    "XTS": 0,
    "YER": 2,
    "ZAR": 2,
    "ZMK": 2,
    "ZMW": 2,
}

# Wide enough that additions and multiplications of realistic amounts are exact, like
# shopspring/decimal's arbitrary-precision ``Add``/``Mul`` (alpacadecimal falls back to it).
_EXACT = Context(prec=200, rounding=ROUND_HALF_UP, Emax=999_999, Emin=-999_999)


@contextmanager
def exact() -> Iterator[None]:
    """Decimal context for money arithmetic: 200 significant digits, half-up rounding."""
    with localcontext(_EXACT):
        yield


def minor_units(currency: str) -> int:
    """Decimals OpenMeter rounds ``currency`` to (gobl ``Def.Subunits``).

    Raises :class:`UnknownCurrencyError` for a code gobl does not define (OpenMeter's
    ``currencyx.Code.Calculator`` fails the same way).
    """
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        hint = ""
        if isinstance(currency, str) and currency.upper() in MINOR_UNITS:
            hint = f" (codes are case-sensitive: did you mean {currency.upper()!r}?)"
        raise UnknownCurrencyError(
            f"unknown currency {currency!r}: OpenMeter (gobl v0.306.0) does not define it{hint}"
        ) from None


def round_money(amount: Decimal, currency: str) -> Decimal:
    """``currencyx.Calculator.RoundToPrecision``: half away from zero to the minor unit.

    The result always carries exactly ``minor_units(currency)`` decimals (``Decimal("1.50")``).
    """
    places = minor_units(currency)
    with exact():
        return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def div_round(numerator: Decimal | int, denominator: Decimal | int, places: int = 16) -> Decimal:
    """``alpacadecimal.Decimal.Div``: the quotient rounded half away from zero to 16 decimals.

    alpacadecimal v0.0.8 ``Div`` returns the exact quotient when it fits its 12-decimal fixed
    point and otherwise ``DivRound(d2, DivisionPrecision)`` with shopspring's
    ``DivisionPrecision = 16`` (half away from zero, ``shopspring/decimal`` ``DivRound``). Both
    equal the exact quotient rounded half-up to 16 decimals, computed here without any
    intermediate rounding.
    """
    num = Decimal(numerator)
    den = Decimal(denominator)
    if not (num.is_finite() and den.is_finite()):
        raise ValueError("div_round needs finite decimals")
    if den == 0:
        raise ZeroDivisionError("division by zero")
    with exact():
        # Scale both to integers, then do integer division with a half-up remainder test.
        scale = max(0, -_exponent(num), -_exponent(den))
        n = int(num.scaleb(scale)) * 10**places
        d = int(den.scaleb(scale))
        negative = (n < 0) != (d < 0)
        q, r = divmod(abs(n), abs(d))
        if 2 * r >= abs(d):
            q += 1
        result = Decimal(-q if negative else q).scaleb(-places)
    return result


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite values only
    return exponent


def floor(value: Decimal) -> Decimal:
    """Largest integer <= ``value`` (``Decimal.Floor``)."""
    with exact():
        return value.to_integral_value(rounding=ROUND_FLOOR)
