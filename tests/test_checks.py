"""keras_rmac.checks.check_int against hand-written cases."""

import numpy as np
import pytest

from keras_rmac.checks import check_int


@pytest.mark.parametrize("value", [1, 7, np.int32(3), np.int64(10**12)])
def test_accepts_ints_at_or_above_the_minimum(value):
    result = check_int("n", value)
    assert result == int(value) and type(result) is int


@pytest.mark.parametrize(
    "value, error",
    [(0, ValueError), (-1, ValueError)]
    + [(v, TypeError) for v in (True, False, 1.0, 2.5, "3", [1], None)],
)
def test_refuses_the_rest_naming_the_argument_and_value(value, error):
    with pytest.raises(error) as info:
        check_int("num_leaves", value)
    message = str(info.value)
    assert message.startswith("`num_leaves` must be an int >= 1.")
    assert f"num_leaves={value!r}" in message


def test_minimum_and_none():
    assert check_int("workers", 0, minimum=0) == 0
    assert check_int("max_size", None, allow_none=True) is None
    with pytest.raises(TypeError, match=r"an int >= 1\. Received"):
        check_int("max_size", None)
    with pytest.raises(ValueError, match=r">= 5 or None\. Received: x=4"):
        check_int("x", 4, minimum=5, allow_none=True)
