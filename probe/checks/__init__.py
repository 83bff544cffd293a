"""The check seam: what one check kind provides, and the one table that maps kinds to it.

A check kind is one module here that exports ``CHECK``, a :class:`Check`. The runner,
the scheduler, the shipper and the CLI know a kind only through that object, found with
:func:`check`. Adding a kind is its module, one entry in :data:`CHECKS`, its wire record,
its target type and its point mapping; nothing else branches on the kind.

A module is imported the first time its kind is needed: a probe without http targets
never loads aiohttp (about 10 MB of memory).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from probe.configfile import ca_fault, explain
from probe.targets import AnyTarget
from probe.wire import Measurement

#: check kind -> the module that exports its ``CHECK``. The order is the order in which
#: ``once`` asks each kind whether its flags were given.
CHECKS: dict[str, str] = {
    "trace": "probe.checks.trace",  # first: its --trace takes dns's --qname and --nsid too
    "dns": "probe.checks.dns",
    "http": "probe.checks.http",
    "ping": "probe.checks.ping",
}


class Job(Protocol):
    """One series of measurements: what the runner and the scheduler need of it."""

    @property
    def kind(self) -> str: ...  # the check kind, a key of CHECKS

    @property
    def key(self) -> str: ...  # stable identity of the series (seeds its start offset)

    @property
    def interval(self) -> float: ...  # seconds between runs

    @property
    def transport(self) -> str: ...  # metrics label: udp, tcp, https, icmp...

    @property
    def deadline(self) -> float | None: ...  # outer bound in seconds; None: bounds itself


T = TypeVar("T")  # the target type
J = TypeVar("J", bound=Job)  # the job type
R = TypeVar("R", bound=Measurement)  # the wire record type

#: resolved addresses of a target's host: (family 4|6, address)
Addresses = Sequence[tuple[int, str]]


@dataclass(frozen=True)
class Once(Generic[T]):
    """How ``popwatch-probe once`` builds one target of this kind from its flags."""

    #: add this kind's flags to the ``once`` parser (common flags are already there:
    #: --server, --count, --interval, --timeout, --json, -4/-6, --tls-ca, --insecure)
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: do the parsed flags ask for this kind?
    wanted: Callable[[argparse.Namespace], bool]
    #: the target those flags describe; raises ValueError with a one-line reason
    target: Callable[[argparse.Namespace], T]
    #: the flags that select this kind, for the "nothing to do" hint
    hint: str


@dataclass(frozen=True)  # no slots: Check[...](...) sets __orig_class__
class Check(Generic[T, J, R]):
    """Everything the rest of the probe knows about one check kind."""

    kind: str
    target_type: type[T]
    record_type: type[R]
    #: the host name or address to resolve for a target, with the families wanted; None
    #: when the check resolves as part of its own measurement (http's DNS phase)
    host: Callable[[T], tuple[str, Sequence[int]] | None]
    #: every series of a target, given its resolved addresses
    jobs: Callable[[T, Addresses], list[J]]
    #: one measurement; failures come back as records, not exceptions
    measure: Callable[[J], Awaitable[R]]
    #: the record of a measurement that raised (or ran out of ``deadline``) at ``ts``
    failure: Callable[[J, BaseException, int], R]
    #: the outcome label of a record for ``popwatch_probe_measurements_total``
    outcome: Callable[[R], str]
    #: did the measurement get an answer (``once`` exits 1 when none did)
    answered: Callable[[R], bool]
    #: the ``once`` table: column titles with widths, a row per record, a summary line
    columns: Sequence[tuple[str, int]]
    row: Callable[[R], list[str]]
    summary: Callable[[Sequence[R]], str]
    once: Once[T] | None = None
    #: the failure records of one run of a target whose host has no address (it did not
    #: resolve): what the series would have written had the server been unreachable.
    #: ``(target, error, ts)``; kinds that resolve nothing themselves have none.
    unresolved: Callable[[T, str, int], list[R]] = lambda target, error, ts: []


AnyCheck = Check[Any, Any, Any]


@functools.cache
def check(kind: str) -> AnyCheck:
    """The check of ``kind``, importing its module on first use."""
    module = importlib.import_module(CHECKS[kind])
    found: AnyCheck = module.CHECK
    if found.kind != kind:
        raise RuntimeError(f"{CHECKS[kind]}.CHECK is of kind {found.kind!r}, not {kind!r}")
    return found


def check_for(target: AnyTarget) -> AnyCheck:
    """The check that measures ``target`` (its ``kind``, the targets schema's tag)."""
    kind: str = type(target).__struct_config__.tag  # type: ignore[assignment]
    return check(kind)


def target_from_flags(spec: dict[str, Any], kind: type[T]) -> T:
    """The target a ``once`` command line describes (``spec``: its keys), or ValueError
    naming the key and the fault (``probe.configfile.explain``)."""
    try:
        target = msgspec.convert(spec, kind)
    except msgspec.ValidationError as exc:
        fault = explain(kind, spec, exc, strict=True)
        raise ValueError(f"{fault.path}: {fault.text}" if fault.path else fault.text) from None
    ca = spec.get("tls_ca")
    if ca and (why := ca_fault(ca)):  # at start, in one line: not a traceback per fetch
        raise ValueError(f"--tls-ca: {why}")
    return target


def ms(ns: int | None) -> float | None:
    """Nanoseconds to milliseconds as records carry them (absent stays absent)."""
    return None if ns is None else round(ns / 1_000_000, 6)


def fmt_ms(v: float | None) -> str:
    """A millisecond figure for the ``once`` table."""
    return "-" if v is None else f"{v:.3f}"


def rtt_summary(noun: str, rtts_or_none: list[float | None]) -> str:
    """``N queries, A answered, L without answer; rtt_ms min .. median .. p95 .. max ..``."""
    rtts = sorted(v for v in rtts_or_none if v is not None)
    lost = len(rtts_or_none) - len(rtts)
    line = f"{len(rtts_or_none)} {noun}, {len(rtts)} answered, {lost} without answer"
    if rtts:
        p95 = rtts[min(len(rtts) - 1, math.ceil(0.95 * len(rtts)) - 1)]
        line += (
            f"; rtt_ms min {rtts[0]:.3f} median {statistics.median(rtts):.3f} "
            f"p95 {p95:.3f} max {rtts[-1]:.3f}"
        )
    return line


__all__ = [
    "CHECKS",
    "Addresses",
    "AnyCheck",
    "Check",
    "Job",
    "Once",
    "check",
    "check_for",
    "fmt_ms",
    "ms",
    "rtt_summary",
    "target_from_flags",
]
