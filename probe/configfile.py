"""Config files, and what is wrong with them in this project's words: every loader uses it.

The probe's config and targets files, the collector's config (its ``alerts:`` and
``limits:`` sections included), the targets the collector serves, ``once``'s flags and
the records the collector takes are all msgspec structs. When one does not validate,
:func:`explain` says what is wrong from the *type* at the fault's path and the *value*
found there, not from msgspec's message text, so the words are ours whatever msgspec's
release says (only the path, msgspec's ``- at `$.a[0].b``` suffix, is read from it). A
fault raised by a struct's own ``__post_init__`` is our own text already, and is kept.

:func:`one_line` makes the line a user sees: ``FILE: key.path: fault``, or
``POPWATCH_VAR: fault`` when the key came from an environment variable.

Stdlib, msgspec and PyYAML only: the collector imports this module (with ``probe.wire``,
``probe.targets``, ``probe.files`` and ``probe.dnswire``, all it may import from ``probe``).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import operator
import re
import ssl
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import msgspec.inspect as mi
import yaml

#: the largest config file read (a targets file of 40,000 targets is about 6 MB)
MAX_FILE_BYTES: Final = 32 * 1024 * 1024

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed


class ConfigError(Exception):
    """A configuration file is wrong. ``str()`` is the one-line message for the user."""


# --- reading ------------------------------------------------------------------------


_NOT_JSON: Final = object()


def _json(raw: bytes) -> Any:
    """A JSON document (JSON is YAML too) read by the JSON parser, whose memory stays
    near the file's size where YAML's node graph takes about 70 times it (12 MB for
    1,000 targets); anything that is not strict JSON is left to the YAML parser."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return _NOT_JSON


def read_yaml(path: Path, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """A YAML file's top-level mapping; ``ConfigError`` (one line) for a file that cannot
    be read, is over ``max_bytes``, is not UTF-8, is not YAML, or is not a mapping."""
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise ConfigError(f"{path}: over {max_bytes} bytes: not read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    data = _json(raw) if text.lstrip()[:1] == "{" else _NOT_JSON
    if data is _NOT_JSON:
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader (C or Python)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "(document)"
            problem = getattr(exc, "problem", None) or "cannot be parsed"
            raise ConfigError(f"{path}: {where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: (top level): expected a mapping of keys, got {kind}")
    return data


# --- hints --------------------------------------------------------------------------


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice nearest ``word`` (a misspelt key), or None when none is near."""
    near = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=cutoff)
    return near[0] if near else None


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean X?)`` for the choice nearest ``word``, or ``""`` when none is near."""
    near = closest(word, choices, cutoff)
    return f" (did you mean {near}?)" if near else ""


def keys_of(*types: type[msgspec.Struct]) -> frozenset[str]:
    """Every key the structs ``types`` accept: what an unknown key is compared with."""
    return frozenset(name for t in types for name in t.__struct_fields__)


# --- values every loader checks -----------------------------------------------------


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def url_fault(url: str) -> str | None:
    """Why ``url`` is not an http(s) URL with a host (with a corrected one as a hint), or
    None when it is one."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    why = f"{url!r} is not an http(s) URL with a host"
    if "://" not in url:
        fixed = f"http://{url}"
        if not url_fault(fixed):
            return f"{why}; did you mean {fixed}?"
    return why


def ca_fault(path: str) -> str | None:
    """Why the CA bundle at ``path`` cannot be used (it cannot be read, or holds no PEM
    certificate), or None when it can."""
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:  # an OSError too: first
        return f"cannot use {path}: not a PEM CA certificate ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``"IP"``, ``"IP:PORT"``, ``"[v6]:PORT"``, ``"v6"`` or ``"host:port"`` to (host, port).

    A bare IPv6 address whose last group could be a port (``::1:5300``) is refused as
    ambiguous: ``[::1]:5300`` means the port, ``[::1:5300]`` the address.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']'")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port_text = text, ""
        head, _, last = text.rpartition(":")
        if last.isdigit() and is_ip(head) and is_ip(text):
            raise ValueError(
                f"{text!r} is ambiguous: write [{head}]:{last} for port {last} of {head}, "
                f"or [{text}] for the address {text}"
            )
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"{text!r}: no host")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port must be 1-65535")
        port = int(port_text)
    return host, port


# --- explaining a fault -------------------------------------------------------------

_AT: Final = re.compile(r" - at `\$(?P<path>[^`]*)`$", re.S)
_STEP: Final = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Fault:
    """What is wrong, and where: ``path`` like ``targets[0].port`` ("" for the top
    level); ``unknown`` is the key when the fault is an unknown key."""

    path: str
    text: str
    unknown: str | None = None

    @property
    def top(self) -> str:
        """The path's first key (what an environment variable may have set)."""
        return re.split(r"[.\[]", self.path, maxsplit=1)[0]


def _steps(path: str) -> list[str | int]:
    return [m.group(1) if m.group(1) is not None else int(m.group(2)) for m in _STEP.finditer(path)]


def _render(steps: list[str | int]) -> str:
    out = ""
    for s in steps:
        out += f"[{s}]" if isinstance(s, int) else (f".{s}" if out else s)
    return out


def _a(value: Any) -> str:
    """A value's JSON type, in words: ``a string``, ``a mapping``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _shown(text: str, limit: int = 64) -> str:
    """A value as given, quoted, cut at ``limit`` characters (it goes back to a client)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _bounds(t: Any, what: str) -> str:
    """``an integer from 1 to 10``, ``a number > 0``, or just ``an integer``."""
    lo, hi = t.ge, t.le
    if lo is not None and hi is not None and t.gt is None and t.lt is None:
        return f"{what} from {_num(lo)} to {_num(hi)}"
    out = [
        f"{op} {_num(v)}"
        for v, op in ((t.ge, ">="), (t.gt, ">"), (t.le, "<="), (t.lt, "<"))
        if v is not None
    ]
    return f"{what} {' and '.join(out)}" if out else what


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


_CHECKS: Final = (
    ("ge", ">=", operator.ge),
    ("gt", ">", operator.gt),
    ("le", "<=", operator.le),
    ("lt", "<", operator.lt),
)
_LISTS: Final = (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)
_MAPS: Final = (mi.StructType, mi.DictType, mi.TypedDictType, mi.DataclassType)


def _expected(t: Any) -> str:
    """What a type accepts, in words."""
    if isinstance(t, mi.Metadata):
        return _expected(t.type)
    if isinstance(t, mi.IntType):
        return _bounds(t, "an integer")
    if isinstance(t, mi.FloatType):
        return _bounds(t, "a number")
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(str(v) for v in t.values)
    if isinstance(t, _LISTS):
        return "a list"
    if isinstance(t, _MAPS):
        return "a mapping of keys"
    if isinstance(t, mi.UnionType):
        return " or ".join(_expected(m) for m in t.types)
    return "another value"


def _coerce(t: Any, v: Any, strict: bool = False) -> Any:
    """``v`` as type ``t`` takes it (a string for a number or a boolean, as a file or a
    variable writes it: msgspec's ``strict=False``; ``strict``: only its own JSON type),
    or ``_MISSING`` when it does not."""
    if isinstance(t, mi.Metadata):
        return _coerce(t.type, v, strict)
    lax = not strict
    if isinstance(t, mi.IntType):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, float) and v.is_integer() and not strict:
            return int(v)
        if lax and isinstance(v, str) and re.fullmatch(r"\s*[-+]?\d+\s*", v):
            return int(v)
        return _MISSING
    if isinstance(t, mi.FloatType):
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if lax and isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return _MISSING
        return _MISSING
    if isinstance(t, mi.StrType):
        return v if isinstance(v, str) else _MISSING
    if isinstance(t, mi.BoolType):
        if isinstance(v, bool):
            return v
        if lax and isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
            return v.strip().lower() in ("true", "1")
        return _MISSING
    if isinstance(t, mi.NoneType):
        return None if v is None or (lax and v == "null") else _MISSING
    if isinstance(t, mi.LiteralType):
        return v if v in t.values else _MISSING
    if isinstance(t, _LISTS):
        return v if isinstance(v, list | tuple) else _MISSING
    if isinstance(t, _MAPS):
        return v if isinstance(v, dict) else _MISSING
    if isinstance(t, mi.UnionType):
        for m in t.types:
            if (c := _coerce(m, v, strict)) is not _MISSING:
                return c
        return _MISSING
    return v


def _member(t: mi.UnionType, v: Any, strict: bool = False) -> Any:
    """The member of a union a value is meant for: a tagged struct by its tag (None when
    the tag is wrong), else the first that takes the value, else the first not null."""
    structs = [m for m in t.types if isinstance(m, mi.StructType) and m.tag_field]
    if structs and isinstance(v, dict):
        field = structs[0].tag_field
        return next((m for m in structs if v.get(field) == m.tag), None)
    for m in t.types:
        if _coerce(m, v, strict) is not _MISSING:
            return m
    return next((m for m in t.types if not isinstance(m, mi.NoneType)), t.types[0])


def _value_fault(t: Any, v: Any, strict: bool = False) -> str | None:
    """What is wrong with value ``v`` for type ``t`` itself (not inside it), or None."""
    if isinstance(t, mi.Metadata):
        return _value_fault(t.type, v, strict)
    x = _coerce(t, v, strict)
    if x is _MISSING:
        if isinstance(t, mi.LiteralType):
            choices = ", ".join(str(c) for c in t.values)
            if not isinstance(v, str):
                return f"expected one of {choices}, got {_a(v)}"
            return f"{_shown(v)} is not one of {choices}"
        return f"expected {_expected(t)}, got {_a(v)}"
    if isinstance(t, mi.UnionType):
        m = _member(t, v, strict)
        return None if m is None else _value_fault(m, v, strict)
    if isinstance(t, mi.IntType | mi.FloatType):
        if isinstance(t, mi.FloatType) and not math.isfinite(x):
            return f"expected a finite number, got {v}"
        what = "an integer" if isinstance(t, mi.IntType) else "a number"
        for attr, op, holds in _CHECKS:
            b = getattr(t, attr, None)
            if b is not None and not holds(x, b):
                return f"expected {what} {op} {_num(b)}, got {_num(x)}"
    if isinstance(t, mi.StrType):
        if t.min_length is not None and len(x) < t.min_length:
            return f"expected a string of at least {_plural(t.min_length, 'character')}"
        if t.max_length is not None and len(x) > t.max_length:
            return f"expected a string of at most {_plural(t.max_length, 'character')}"
        if t.pattern is not None and not re.search(t.pattern, x):
            return f"expected a string matching {t.pattern}"
    if isinstance(t, _LISTS):
        if t.min_length is not None and len(x) < t.min_length:
            return f"expected a list of at least {_plural(t.min_length, 'item')}"
        if t.max_length is not None and len(x) > t.max_length:
            return f"expected a list of at most {_plural(t.max_length, 'item')}"
    return None


def _struct_fault(t: mi.StructType, v: dict[str, Any], here: list[str | int]) -> Fault | None:
    """A missing required key or an unknown key of a struct."""
    names = [f.encode_name for f in t.fields]
    if t.forbid_unknown_fields:  # first: a misspelt key is why a required one is missing
        for key in v:
            if key not in names and key != t.tag_field:
                return Fault(
                    _render([*here, str(key)]),
                    "unknown key" + did_you_mean(str(key), names),
                    unknown=str(key),
                )
    for f in t.fields:
        if f.required and f.encode_name not in v:
            return Fault(_render([*here, f.encode_name]), "required key is missing")
    return None


def _walk(t: Any, v: Any, steps: list[str | int], strict: bool = False) -> tuple[Fault | None, Any]:
    """Follow ``steps`` from type ``t`` and value ``v``: the fault at the end (a value of
    the wrong type or out of bounds on the way, a missing or unknown key at the end), or
    None when the types find nothing wrong; and the type reached."""
    here: list[str | int] = []
    for i in range(len(steps) + 1):
        while isinstance(t, mi.Metadata):
            t = t.type
        if isinstance(t, mi.UnionType):
            if _coerce(t, v, strict) is _MISSING:
                return Fault(_render(here), f"expected {_expected(t)}, got {_a(v)}"), t
            m = _member(t, v, strict)
            if m is None:  # a tagged union, and the tag is not one of its tags
                structs = [s for s in t.types if isinstance(s, mi.StructType)]
                field = structs[0].tag_field or "kind"
                tags = ", ".join(str(s.tag) for s in structs)
                if field not in v:
                    return Fault(_render([*here, field]), "required key is missing"), t
                given = v[field]
                if not isinstance(given, str):
                    return Fault(
                        _render([*here, field]), f"expected one of {tags}, got {_a(given)}"
                    ), t
                return Fault(_render([*here, field]), f"{_shown(given)} is not one of {tags}"), t
            t = m
            while isinstance(t, mi.Metadata):
                t = t.type
        wrong = _value_fault(t, v, strict)
        if wrong is not None:
            return Fault(_render(here), wrong), t
        if i == len(steps):
            if isinstance(t, mi.StructType) and isinstance(v, dict):
                return _struct_fault(t, v, here), t
            return None, t
        step = steps[i]
        if isinstance(t, mi.StructType) and isinstance(v, dict):
            match = [f for f in t.fields if f.encode_name == step]
            if not match or step not in v:
                return _struct_fault(t, v, here), t
            t, v = match[0].type, v[step]
        elif isinstance(t, _LISTS) and isinstance(v, list | tuple):
            if not isinstance(step, int) or step >= len(v):
                return None, t
            t, v = t.item_type, v[step]
        elif isinstance(t, mi.DictType) and isinstance(v, dict) and step in v:
            t, v = t.value_type, v[step]
        else:
            return None, t
        here.append(step)
    return None, t


def explain(root: Any, data: Any, exc: msgspec.ValidationError, strict: bool = False) -> Fault:
    """What is wrong with ``data`` as a ``root`` (a type msgspec converts to), from the
    path of msgspec's error: the type and the value there, in our words. A fault the
    types do not show is a struct's own ``__post_init__`` (our text), kept as it is; one
    that starts with a key of that struct (``"key: fault"``) is put at that key.
    ``strict``: ``data`` was converted strictly (JSON records), not as a file's text."""
    text = str(exc)
    m = _AT.search(text)
    steps = _steps(m.group("path")) if m else []
    found, at = _walk(mi.type_info(root), data, steps, strict)
    if found is not None:
        return found
    # what the types do not show is a struct's __post_init__ fault (a struct at the top
    # level has no path)
    ours = text[: m.start()] if m else text
    key, sep, rest = ours.partition(": ")
    if sep and isinstance(at, mi.StructType) and key in [f.encode_name for f in at.fields]:
        return Fault(_render([*steps, key]), rest)
    return Fault(_render(steps), ours)


def one_line(
    file: str,
    root: Any,
    data: Any,
    exc: msgspec.ValidationError,
    env: Mapping[str, str] | None = None,
) -> str:
    """``FILE: key.path: fault``; where the top-level key came from an environment
    variable (``env``: key -> variable), ``VARIABLE: fault``, showing the value given."""
    fault = explain(root, data, exc)
    text = fault.text
    if env and fault.top in env:
        given = data.get(fault.top) if isinstance(data, dict) else None
        if ", got " in text and given is not None:
            text = f"{text.partition(', got ')[0]}, got {given!r}"
        return f"{env[fault.top]}: {text}".replace("\n", " ")
    return f"{file}: {fault.path or '(top level)'}: {text}".replace("\n", " ")


def convert(data: Any, root: type[Any], file: str, env: Mapping[str, str] | None = None) -> Any:
    """``msgspec.convert(data, root)`` (strings taken for numbers and booleans, as a file
    or a variable writes them); ``ConfigError`` with :func:`one_line`'s line."""
    try:
        return msgspec.convert(data, root, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(one_line(file, root, data, exc, env)) from None


__all__ = [
    "MAX_FILE_BYTES",
    "ConfigError",
    "Fault",
    "ca_fault",
    "closest",
    "convert",
    "did_you_mean",
    "explain",
    "is_ip",
    "keys_of",
    "one_line",
    "parse_hostport",
    "read_yaml",
    "url_fault",
]
