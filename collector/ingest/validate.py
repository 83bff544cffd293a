"""A batch's body, decoded: the envelope, and each record or the reason it is refused.

One typed decode of the whole ``wire.Batch`` first (the common case); only when that
fails is the envelope decoded and each record alone, so every bad record gets its own
reason. ``NotABatch`` (a ``400``) is for a body that is not a batch at all.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from probe.configfile import explain
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
    Raises ``NotABatch`` when the envelope itself is wrong. Every reason is in our words
    (``probe.configfile.explain``), never the decoder's.
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
        raise NotABatch(_undecodable(body, exc)) from None
    records: list[str | Measurement] = []
    for item in envelope.measurements:
        try:
            records.append(decode_record(item))
        except msgspec.ValidationError as exc:
            records.append(_invalid(Measurement, bytes(item), exc, "record"))
        except (ValueError, RecursionError) as exc:
            records.append(_undecodable(bytes(item), exc, "record"))
    return envelope, records


def _undecodable(raw: bytes, exc: ValueError | RecursionError, what: str = "batch") -> str:
    """The reason for bytes that do not even decode as JSON (a batch's, or a record's)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not a {what}: not UTF-8 ({bad.reason} at byte {bad.start})"
    if isinstance(exc, RecursionError):
        return f"not a {what}: JSON nested too deeply"
    try:
        json.loads(text)
    except json.JSONDecodeError as bad:
        how = "cut short" if bad.pos >= len(text.rstrip()) else "malformed"
        return f"not a {what}: not JSON, {how} at character {bad.pos}"
    except RecursionError:
        return f"not a {what}: JSON nested too deeply"
    return f"not a {what}: JSON this collector cannot read"


def _invalid(root: Any, raw: bytes, exc: msgspec.ValidationError, noun: str) -> str:
    """``key.path: fault`` for JSON that decodes but is not a ``root`` (a batch's reason
    says ``not a batch:`` first)."""
    try:  # the stdlib's reader: it takes 1e999 (infinity) for the value it is
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as bad:  # bad UTF-8 inside a string, say
        return _undecodable(raw, bad, noun)
    fault = explain(root, data, exc, strict=True)
    why = f"{fault.path}: {fault.text}" if fault.path else fault.text
    return why if noun == "record" else f"not a {noun}: {why}"


def _why_not(body: bytes, exc: msgspec.ValidationError) -> str:
    """The 400's reason for an envelope that does not validate."""
    where = str(exc).rpartition(" - at ")[2]
    if where == "`$.schema`":
        try:  # the rest of the body may not even be JSON: the envelope stopped here
            schema = msgspec.json.encode(msgspec.json.decode(body, type=_SchemaOf).schema)
        except (ValueError, RecursionError) as dexc:
            return _undecodable(body, dexc)
        return f"schema {schema.decode()} is not supported (this collector knows {SCHEMA_VERSION})"
    if where == "`$.batch`":
        return "batch id must be a string of 1-64 characters"
    return _invalid(BatchEnvelope, body, exc, "batch")


__all__ = ["NotABatch", "decode"]
