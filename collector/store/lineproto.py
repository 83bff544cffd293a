"""InfluxDB line protocol, written so that no value can break a line or inject a tag.

What InfluxDB 1.6.7 does (checked against the real server by tests/test_collector.py,
test_hostile_tag_values_stored_intact and test_unrepresentable_tag_rejects_the_record):
commas, equals signs and spaces in tag values are escaped with a backslash; a backslash
itself is stored as written and never unescaped. So a tag value with a newline, or with
a backslash at its end or before a comma, equals sign or space, cannot be carried: such a
value is refused (:class:`Unrepresentable`), and the record that holds it is rejected
with that reason. String fields escape backslashes and double quotes, and carry line
breaks as spaces.

Bounds, so that every line made here is one InfluxDB stores (tests/test_hostile.py sends
each to the real server): no NUL anywhere (InfluxDB echoes a refused line in a response
header, where a NUL makes the answer unreadable); integers within int64; a tag value of
at most ``MAX_TAG_BYTES`` and a string field of at most ``MAX_STRING_BYTES`` (UTF-8).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

_TAG_ESCAPE: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_BAD_TAG: Final = re.compile(r"[\n\r\x00]|\\(?=[ ,=]|$)")

#: the longest tag value carried, in UTF-8 bytes
MAX_TAG_BYTES: Final = 1024
#: the longest string field carried, in UTF-8 bytes (InfluxDB 1.x's own limit is 64 KiB)
MAX_STRING_BYTES: Final = 64 * 1024
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

FieldValue = float | int | bool | str


class Unrepresentable(ValueError):
    """A value line protocol cannot carry."""


# escaped tag values, by value (targets, servers, sites repeat). Bounded in characters
# held, not entries: values are up to MAX_TAG_BYTES each, so an entry count alone would
# let a stream of long distinct values hold hundreds of MB. Emptied when full.
_TAGS: dict[str, str] = {}
_TAGS_CHARS = 0
#: about 8 MB of strings, with the per-entry overhead counted as 100 characters
_TAGS_MAX_CHARS: Final = 8_000_000


def tag_value(name: str, value: str) -> str:
    """The escaped form of a tag value (cached), or ``Unrepresentable``."""
    global _TAGS_CHARS
    escaped = _TAGS.get(value)
    if escaped is None:
        escaped = _tag_value(name, value)  # raises: a refused value is never cached
        cost = len(value) + len(escaped) + 100
        if _TAGS_CHARS + cost > _TAGS_MAX_CHARS:
            _TAGS.clear()
            _TAGS_CHARS = 0
        _TAGS[value] = escaped
        _TAGS_CHARS += cost
    return escaped


def _tag_value(name: str, value: str) -> str:
    m = _BAD_TAG.search(value)
    if m:
        what = {"\n": "a line break", "\r": "a line break", "\x00": "a NUL character"}.get(
            m.group(), "a backslash before , = space or at the end"
        )
        raise Unrepresentable(f"tag {name} has {what}, which line protocol cannot carry")
    if len(value) * 4 > MAX_TAG_BYTES and len(value.encode()) > MAX_TAG_BYTES:
        raise Unrepresentable(f"tag {name} is over {MAX_TAG_BYTES} bytes")
    return value.translate(_TAG_ESCAPE)


def check_int(name: str, value: int) -> None:
    """``Unrepresentable`` unless ``value`` fits InfluxDB's int64."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise Unrepresentable(f"field {name} is {value}, outside the 64-bit integer range")


def check_str(name: str, value: str) -> None:
    """``Unrepresentable`` for a string field with a NUL or over ``MAX_STRING_BYTES``."""
    if "\x00" in value:
        raise Unrepresentable(f"field {name} has a NUL character")
    if len(value) * 4 > MAX_STRING_BYTES and len(value.encode()) > MAX_STRING_BYTES:
        raise Unrepresentable(f"field {name} is over {MAX_STRING_BYTES} bytes")


def string_field(name: str, value: str) -> str:
    """A string field's value, quoted and escaped (checked by ``check_str``)."""
    check_str(name, value)
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ")
    return f'"{text}"'


def field(name: str, value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        check_int(name, value)
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unrepresentable(f"field {name} is {value}")
        return repr(value)
    return string_field(name, value)


def line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts: int
) -> str:
    """One point. Empty tags are left out (line protocol has no empty tag value)."""
    tag_part = "".join(f",{k}={tag_value(k, v)}" for k, v in sorted(tags.items()) if v != "")
    field_part = ",".join(f"{k}={field(k, v)}" for k, v in fields.items() if v is not None)
    if not field_part:
        raise Unrepresentable("a point needs at least one field")
    check_int("ts", ts)
    return f"{measurement}{tag_part} {field_part} {ts}"
