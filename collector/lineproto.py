"""InfluxDB line protocol, written so that no value can break a line or inject a tag.

What InfluxDB 1.6.7 does (checked against the real server, see tests/test_lineproto.py):
commas, equals signs and spaces in tag values are escaped with a backslash; a backslash
itself is stored as written and never unescaped. So a tag value with a newline, or with
a backslash at its end or before a comma, equals sign or space, cannot be carried: such a
value is refused (:class:`Unrepresentable`), and the record that holds it is rejected
with that reason. String fields escape backslashes and double quotes.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Final

_TAG_ESCAPE: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_BAD_TAG: Final = re.compile(r"[\n\r]|\\(?=[ ,=]|$)")

FieldValue = float | int | bool | str


class Unrepresentable(ValueError):
    """A value line protocol cannot carry."""


@functools.lru_cache(maxsize=65536)
def tag_value(name: str, value: str) -> str:
    """The escaped form of a tag value (cached: targets, servers, sites repeat)."""
    return _tag_value(name, value)


def _tag_value(name: str, value: str) -> str:
    m = _BAD_TAG.search(value)
    if m:
        what = (
            "a line break" if m.group() in "\n\r" else "a backslash before , = space or at the end"
        )
        raise Unrepresentable(f"tag {name} has {what}, which line protocol cannot carry")
    return value.translate(_TAG_ESCAPE)


def field(name: str, value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unrepresentable(f"field {name} is {value}")
        return repr(value)
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ")
    return f'"{text}"'


def line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts: int
) -> str:
    """One point. Empty tags are left out (line protocol has no empty tag value)."""
    tag_part = "".join(f",{k}={tag_value(k, v)}" for k, v in sorted(tags.items()) if v != "")
    field_part = ",".join(f"{k}={field(k, v)}" for k, v in fields.items() if v is not None)
    if not field_part:
        raise Unrepresentable("a point needs at least one field")
    return f"{measurement}{tag_part} {field_part} {ts}"
