"""What an ask is: the request an operator posts, and the ask as the collectors keep it.

:class:`AskRequest` is the body of ``POST /api/v1/asks``, shaped like Globalping's
measurement request: ``type`` (a check kind) and ``target``, the kind's ``options``,
``locations`` (matchers, each with its own ``limit``), a global ``limit``,
``healthy_only``, and ``count`` and ``interval_s`` for a burst (``drill``: a failover
drill, whose site changes are written as events). :class:`Ask` is what the ``ask``
measurement holds as the request's JSON: enough for any collector to hand it out, to
account for its rate, and to answer for it.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Final

import msgspec

from probe.wire import NS, AskId, Command

#: a command is handed to a probe for this long after its ask is made: a probe that comes
#: later (it restarted, its collector did) does not start it late
START_WITHIN_S: Final = 10.0
#: after the last round and its timeout, how long an ask waits for the last results
GRACE_S: Final = 5.0

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class Location(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One matcher: every key given must match a probe (``topology``: it measured a
    target of that topology in the last 15 minutes); ``limit`` probes at most from it."""

    region: Text | None = None
    country: Text | None = None
    city: Text | None = None
    asn: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] | None = None
    probe: Text | None = None
    topology: Text | None = None
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None


class AskRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of ``POST /api/v1/asks``."""

    type: Text  # a check kind: dns, http, ping (any kind whose collector side has ``ask``)
    target: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    locations: Annotated[list[Location], msgspec.Meta(max_length=100)] = msgspec.field(
        default_factory=list
    )
    limit: Annotated[int, msgspec.Meta(ge=1)] = 1
    healthy_only: bool = True
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    interval_s: Annotated[float, msgspec.Meta(ge=0.01, le=3600)] = 1.0
    drill: bool = False


class Skipped(msgspec.Struct, frozen=True):
    """A probe that matched but was not asked, and why."""

    probe: str
    reason: str


class Ask(msgspec.Struct, kw_only=True):
    """An ask as the ``ask`` measurement keeps it (its ``request`` field, JSON)."""

    id: AskId
    operator: str
    kind: str
    target: str  # as asked
    spec: dict[str, Any]  # the target spec every chosen probe gets
    host: str  # where it sends: an address, or a host name the probes resolve
    count: int
    interval_s: float
    timeout_s: float  # the target's own timeout
    series: int  # measurements one round makes at most
    probes: list[str]
    skipped: list[Skipped] = msgspec.field(default_factory=list)
    allow: list[str] = msgspec.field(default_factory=list)
    drill: bool = False
    created_at: int  # epoch ns

    @property
    def qps(self) -> float:
        """Queries per second one probe sends for it (a single round counts as a second)."""
        return self.series / (self.interval_s if self.count > 1 else 1.0)

    @property
    def sends_until(self) -> int:
        """Epoch ns by which its probes are done sending, when they start it as it comes
        (the rate bounds count it until then)."""
        return self.created_at + int(((self.count - 1) * self.interval_s + self.timeout_s) * NS)

    @property
    def runs_until(self) -> int:
        """Epoch ns by which its last round has been sent, at the latest."""
        return self.created_at + int((START_WITHIN_S + (self.count - 1) * self.interval_s) * NS)

    @property
    def deadline(self) -> int:
        """Epoch ns after which no more results are waited for: it is finished."""
        return self.runs_until + int((self.timeout_s + GRACE_S) * NS)

    def command(self) -> Command:
        return Command(
            id=self.id,
            kind=self.kind,
            target=self.spec,
            count=self.count,
            interval_s=self.interval_s,
            allow=self.allow,
            created_at=self.created_at,
        )


def in_networks(host: str, networks: list[str]) -> bool | None:
    """Whether ``host`` (an address) is inside one of ``networks``; None for a host name
    (its addresses are the probes' to check)."""
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return any(addr in ipaddress.ip_network(n, strict=False) for n in networks)


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Ask)


def encode(ask: Ask) -> str:
    return _encoder.encode(ask).decode()


def decode(text: str) -> Ask:
    return _decoder.decode(text)


__all__ = [
    "GRACE_S",
    "START_WITHIN_S",
    "Ask",
    "AskRequest",
    "Location",
    "Skipped",
    "decode",
    "encode",
    "in_networks",
]
