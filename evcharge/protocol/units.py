"""Money, energy and power as exact integers: watt-hours, micro-euros, watts.

Pure. Every figure that is billed or compared is an `int`; decimals appear only
when a person reads one (`kwh_text`, `eur_text`) or types one (`parse_price`).
The meter truncates to the whole Wh delivered, and a cost is rounded half up to
the micro-euro, so the engine, central and the driver compute the same numbers.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO = 1_000_000
MS_PER_HOUR = 3_600_000

Wh = int  # energy, watt-hours
MicroEur = int  # money, millionths of a euro
Watts = int  # power
MicroEurPerKwh = int  # a price


def energy_wh(power_w: Watts, elapsed_ms: int) -> Wh:
    """Energy delivered at `power_w` for `elapsed_ms`, truncated to the whole Wh."""
    return power_w * elapsed_ms // MS_PER_HOUR


def cost_micro_eur(wh: Wh, price: MicroEurPerKwh) -> MicroEur:
    """What `wh` cost at `price`, rounded half up to the micro-euro."""
    return (wh * price + 500) // 1000


def parse_price(text: str | float | Decimal) -> MicroEurPerKwh:
    """A price a person typed in EUR/kWh ("0.32") as micro-euros per kWh (320000)."""
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a price in EUR/kWh") from None
    micro = value * MICRO
    if not value.is_finite() or micro != micro.to_integral_value():
        raise ValueError(f"{text!r}: a price has at most 6 decimals of a euro")
    if not 0 <= micro <= 100 * MICRO:
        raise ValueError(f"{text!r}: a price is between 0 and 100 EUR/kWh")
    return int(micro)


def parse_power(text: str | float | Decimal) -> Watts:
    """A power a person typed in kW ("22" or "7.4") as whole watts."""
    try:
        value = Decimal(str(text)) * 1000
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a power in kW") from None
    if not value.is_finite() or value != value.to_integral_value() or not 0 < value <= 10_000_000:
        raise ValueError(f"{text!r}: a power is up to 10000 kW, to the watt")
    return int(value)


def kwh_text(wh: Wh) -> str:
    """0.048 for 48 Wh: exact, three decimals."""
    return f"{wh // 1000}.{wh % 1000:03d}"


def eur_text(micro_eur: MicroEur, decimals: int = 4) -> str:
    """A sum in euros for a person, rounded half up to `decimals` (2 for cents)."""
    step = MICRO // 10**decimals
    rounded = (micro_eur + step // 2) // step
    whole, part = divmod(rounded, 10**decimals)
    return f"{whole}.{part:0{decimals}d}" if decimals else str(whole)


def price_text(price: MicroEurPerKwh) -> str:
    """0.32 for 320000: the shortest exact form, at least two decimals."""
    whole, part = divmod(price, MICRO)
    digits = f"{part:06d}".rstrip("0")
    return f"{whole}.{digits.ljust(2, '0')}"


def kw_text(power_w: Watts) -> str:
    """22.0 for 22000 W."""
    return f"{power_w / 1000:.1f}"
