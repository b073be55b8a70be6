"""DRA device attribute values and limits: what a ResourceSlice device may carry.

DRA attribute values are bool, int, string or semver only: there are no floats, so quality
figures are published as integers in fixed units (parts per million, microseconds). The
limits are the apiserver's ResourceSlice validation; the model, the CRD and the slice
builder all check against these.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable
from typing import Any

from pydantic import StrictBool, StrictInt, StrictStr

AttributeValue = StrictBool | StrictInt | StrictStr

ATTR_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{0,31}$")
MAX_DEVICE_ATTRIBUTES = 32  # attributes + capacities of one device
MAX_ATTRIBUTE_STRING = 64
PPM = 1_000_000


def finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.median(vals) if vals else None


def ppm(error: float | None) -> int | None:
    return None if error is None else round(error * PPM)
