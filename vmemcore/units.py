"""Sizes as users write them ("16G", "2M", "64T") and as reports print them."""

from decimal import Decimal

from .errors import BadRequest

KiB, MiB, GiB, TiB, PiB, EiB = (1 << s for s in (10, 20, 30, 40, 50, 60))
_SUFFIX = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": PiB, "E": EiB}


def parse_size(value) -> int:
    """Bytes from an int or a string such as ``"16G"``, ``"2MiB"``, ``"0x100000"``."""
    if isinstance(value, bool):
        raise BadRequest(f"size {value!r} is not a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise BadRequest(f"size {value} is negative")
        return value
    if not isinstance(value, str):
        raise BadRequest(f"size {value!r} is neither an integer nor a string like '16G'")
    text = value.strip().upper().replace("_", "")
    for tail in ("IB", "B"):
        if text.endswith(tail) and len(text) > len(tail):
            text = text[: -len(tail)]
            break
    unit = text[-1] if text and text[-1] in _SUFFIX else ""
    number = text[: len(text) - len(unit)]
    try:
        count = int(number, 0)
    except ValueError:
        raise BadRequest(f"size {value!r} is not understood (write e.g. 4096, '2M', '16G', '1T')") from None
    if count < 0:
        raise BadRequest(f"size {value!r} is negative")
    return count * _SUFFIX[unit]


def format_size(nbytes: int) -> str:
    """The largest binary unit that divides ``nbytes`` exactly: ``format_size(2 << 20) == "2M"``;
    from 1024E on (past any 64-bit address) :func:`human_size`'s scientific notation."""
    if nbytes >= 1024 * EiB:
        return human_size(nbytes)
    for unit in ("E", "P", "T", "G", "M", "K"):
        if nbytes and nbytes % _SUFFIX[unit] == 0:
            return f"{nbytes // _SUFFIX[unit]}{unit}"
    return str(nbytes)


def human_size(nbytes) -> str:
    """``nbytes`` in the largest binary unit it reaches, rounded to two decimals: "256M", "15.75G",
    "-32K", "0"; from 1024E on (past any 64-bit address) in scientific notation: "9e+22 bytes"."""
    if nbytes < 0:
        return "-" + human_size(-nbytes)
    if nbytes < KiB:
        return f"{nbytes}B" if nbytes else "0"
    units = ("K", "M", "G", "T", "P", "E")
    unit = next(u for u in reversed(units) if nbytes >= _SUFFIX[u])
    scale = _SUFFIX[unit]
    hundredths, rest = divmod(nbytes * 100, scale)
    hundredths += 2 * rest >= scale  # exact integer rounding: no float artefacts at any magnitude
    if hundredths >= 1024 * 100:  # rounded up into the next unit
        if unit == units[-1]:
            return f"{Decimal(nbytes):.3g} bytes"
        unit, hundredths = units[units.index(unit) + 1], 100
    whole, cents = divmod(hundredths, 100)
    return (f"{whole}.{cents:02d}".rstrip("0").rstrip(".") if cents else str(whole)) + unit


def byte_range(start, end) -> str:
    """A physical address range, labelled: ``bytes [0x1000000000, 0x1040000000)``."""
    return f"bytes [{start:#x}, {end:#x})"


def pfn_range(start_pfn, end_pfn, page_shift=None) -> str:
    """A range of page frame numbers, labelled: ``pfns [0x200000, 0x200200)``; with ``page_shift``
    followed by its addresses: ``pfns [0x200000, 0x200200) (bytes [0x200000000, 0x200200000))``."""
    text = f"pfns [{start_pfn:#x}, {end_pfn:#x})"
    if page_shift is not None:
        text += f" ({byte_range(start_pfn << page_shift, end_pfn << page_shift)})"
    return text
