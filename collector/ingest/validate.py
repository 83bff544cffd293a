"""A batch's body, decoded: the envelope, and each record or the reason it is refused.

One typed decode of the whole ``wire.Batch`` first (the common case); only when that
fails is the envelope decoded and each record alone, so every bad record gets its own
reason. ``NotABatch`` (a ``400``) is for a body that is not a batch at all.
"""

from __future__ import annotations

from typing import Any

import msgspec

from probe.wire import SCHEMA_VERSION, Batch, BatchEnvelope, Measurement, decode_record

_typed_decoder = msgspec.json.Decoder(Batch)  # the common case: one call for a batch
_envelope_decoder = msgspec.json.Decoder(BatchEnvelope)  # the rest: each record alone


class _SchemaOf(msgspec.Struct):
    """Only to name an unsupported schema in the 400's reason."""

    schema: Any = None


class NotABatch(ValueError):
    """The body is not a batch this collector takes (400, with this reason)."""


def decode(body: bytes) -> tuple[Batch | BatchEnvelope, list[str | Measurement]]:
    """The batch, and each record or the reason it does not decode.

    One typed decode of the whole ``wire.Batch`` first; only when that fails is the
    envelope decoded and each record alone, so every bad record gets its own reason.
    Raises ``NotABatch`` when the envelope itself is wrong.
    """
    try:
        typed = _typed_decoder.decode(body)
    except (ValueError, RecursionError):  # msgspec's errors, and bad UTF-8 or nesting
        pass
    else:
        return typed, list(typed.measurements)
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise NotABatch(_why_not(body, exc)) from None
    except (ValueError, RecursionError) as exc:
        raise NotABatch(_undecodable(exc)) from None
    records: list[str | Measurement] = []
    for item in envelope.measurements:
        try:
            records.append(decode_record(item))
        except msgspec.ValidationError as exc:
            records.append(str(exc))
        except (ValueError, RecursionError) as exc:
            records.append(_undecodable(exc, "record"))
    return envelope, records


def _undecodable(exc: ValueError | RecursionError, what: str = "batch") -> str:
    """The reason for JSON that does not even decode (a batch's, or a record's)."""
    if isinstance(exc, RecursionError):
        why = "JSON nested too deeply"
    elif isinstance(exc, UnicodeDecodeError):
        why = f"not UTF-8 ({exc.reason} at byte {exc.start})"
    else:
        why = str(exc)
    return f"not a {what}: {why}"


def _why_not(body: bytes, exc: msgspec.ValidationError) -> str:
    """The 400's reason for an envelope that does not validate, from msgspec's error."""
    where = str(exc).rpartition(" - at ")[2]
    if where == "`$.schema`":
        try:  # the rest of the body may not even be JSON: the envelope stopped here
            schema = msgspec.json.encode(msgspec.json.decode(body, type=_SchemaOf).schema)
        except (ValueError, RecursionError) as dexc:
            return _undecodable(dexc)
        return f"schema {schema.decode()} is not supported (this collector knows {SCHEMA_VERSION})"
    if where == "`$.batch`":
        return "batch id must be a string of 1-64 characters"
    return f"not a batch: {exc}"


__all__ = ["NotABatch", "decode"]
