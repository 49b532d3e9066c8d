"""Sizes as users write them ("16G", "2M", "64T") and as reports print them."""

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
    """The largest binary unit that divides ``nbytes`` exactly: ``format_size(2 << 20) == "2M"``."""
    for unit in ("E", "P", "T", "G", "M", "K"):
        if nbytes and nbytes % _SUFFIX[unit] == 0:
            return f"{nbytes // _SUFFIX[unit]}{unit}"
    return str(nbytes)


def human_size(nbytes) -> str:
    """``nbytes`` in the largest binary unit it reaches: "256M", "15.75G", "-32K", "0"."""
    if nbytes < 0:
        return "-" + human_size(-nbytes)
    for unit in ("E", "P", "T", "G", "M", "K"):
        scale = _SUFFIX[unit]
        if nbytes >= scale:
            if nbytes % scale == 0:
                return f"{nbytes // scale}{unit}"
            return f"{nbytes / scale:.2f}".rstrip("0").rstrip(".") + unit
    return f"{nbytes}B" if nbytes else "0"
