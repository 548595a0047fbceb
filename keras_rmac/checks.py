"""Argument checks shared by the package (standard library only, so light
modules such as the index settings can use them)."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_int", "validate_anchor_args"]


def check_int(
    name: str, value: Any, minimum: int = 1, allow_none: bool = False
) -> int | None:
    """`value` as an int >= `minimum` (or None when allowed).

    Bools and floats are refused, even integral ones: `max_size=512.0`
    usually means a computation went wrong upstream.

    Args:
        name: str. The argument's name, for the message.
        value: the value to check.
        minimum: int. The smallest accepted value. Defaults to 1.
        allow_none: bool. Whether None is accepted (and returned).

    Returns:
        `int(value)`, or None.

    Raises:
        TypeError: not an int (bools and floats included), or
        ValueError: below `minimum`; both name the argument, the accepted
            range and the value.

    Example:

    >>> import numpy as np
    >>> check_int("k", np.int64(3))
    3
    >>> check_int("k", 0)
    Traceback (most recent call last):
    ...
    ValueError: `k` must be an int >= 1. Received: k=0
    """
    if value is None and allow_none:
        return None
    accepted = f"an int >= {minimum}" + (" or None" if allow_none else "")
    message = f"`{name}` must be {accepted}. Received: {name}={value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(message)
    if value < minimum:
        raise ValueError(message)
    return int(value)


def validate_anchor_args(
    sizes: Any, ratios: Any
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`(sizes, ratios)` as tuples of positive floats, else ValueError."""
    out = []
    for name, values in (("sizes", sizes), ("ratios", ratios)):
        try:
            values = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ValueError(
                f"`{name}` must be a sequence of positive numbers, got "
                f"{name}={values!r}."
            ) from None
        if not values or min(values) <= 0:
            raise ValueError(
                f"`{name}` must be a non-empty sequence of positive numbers, "
                f"got {name}={values!r}."
            )
        out.append(values)
    return tuple(out)
