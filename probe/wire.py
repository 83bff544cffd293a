"""Measurement records and the batch envelope: the contract between probe and collector.

Stdlib and msgspec only. The collector imports this module; the probe never imports the
collector. Field names carry their units. A field that has no value is absent, never 0:
a failed query has ``rcode`` ``TIMEOUT``/``NETERR``, an ``error`` and no ``rtt_ms``.

Schema versions: every batch says ``schema``; samples of every version live in
``tests/data/wire/`` with a test that they still decode.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

SCHEMA_VERSION: Final = 1
#: nanoseconds in a second: every ``ts`` is epoch nanoseconds
NS: Final = 1_000_000_000

NonNegMs = Annotated[float, msgspec.Meta(ge=0, le=3_600_000)]
EpochNs = Annotated[int, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Transport = Literal["udp", "tcp", "tls", "https"]
#: ``site``: an anycast site queried at its own unicast address (a target's ``sites``)
Topology = Literal["unicast", "anycast", "resolver", "site"]
Timestamping = Literal["kernel", "user"]
#: an ask's id (an on-demand request, docs/design.md "Asks"): 16 hex digits, chosen by
#: the collector, so a probe cannot invent tag values with it
AskId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$")]


class DnsRecord(msgspec.Struct, tag="dns", tag_field="kind", omit_defaults=True, kw_only=True):
    """One DNS query, timed. ``kind`` is ``"dns"``."""

    ts: EpochNs  # epoch ns of the send (kernel TX stamp when timestamping is "kernel")
    target: Label  # the target's name in the targets file
    server: Label  # the IP address queried
    port: Port
    transport: Transport
    qname: Label
    qtype: Label
    rcode: Label  # DNS rcode name, or TIMEOUT / NETERR when no answer came
    timestamping: Timestamping
    rtt_ms: NonNegMs | None = None  # query sent -> answer received (see docs/design.md, Timing)
    connect_ms: NonNegMs | None = None  # TCP connect: connect() -> handshake complete
    tls_ms: NonNegMs | None = None  # TLS: ClientHello sent -> handshake complete
    http_version: str | None = None  # DoH only: "1.1" or "2"
    site: str | None = None  # PoP identity from NSID or CHAOS TXT, as text
    answers: Annotated[int, msgspec.Meta(ge=0)] | None = None  # RRs in the answer section
    size: Annotated[int, msgspec.Meta(ge=0)] | None = None  # answer size in bytes (DNS message)
    ttl: Annotated[int, msgspec.Meta(ge=0)] | None = None  # smallest TTL in the answer section
    serial: Annotated[int, msgspec.Meta(ge=0, le=4294967295)] | None = None  # SOA serial
    truncated: bool = False  # the answer had the TC bit (no TCP retry is made)
    error: str | None = None  # "<kind>: <detail>" when rcode is TIMEOUT / NETERR
    topology: Topology | None = None
    provider: str | None = None
    family: Literal[4, 6] | None = None  # address family of ``server``
    ask: AskId | None = None  # the ask this record answers; scheduled records: absent


class HttpRecord(msgspec.Struct, tag="http", tag_field="kind", omit_defaults=True, kw_only=True):
    """One HTTP fetch, timed by phase. ``kind`` is ``"http"``.

    Across redirects each phase is the sum over the hops (``redirects`` says how many).
    A phase that did not happen is absent, never 0.
    """

    ts: EpochNs  # epoch ns when the fetch started
    target: Label
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    ip: str | None = None  # address of the (last) server connected to
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    dns_ms: NonNegMs | None = None  # resolution start -> addresses returned
    # SYN sent -> SYN-ACK received, the kernel's own sample (TCP_INFO tcpi_rtt); where it
    # has none (a retransmitted SYN), connect() -> established timed in user space
    connect_ms: NonNegMs | None = None
    tls_ms: NonNegMs | None = None  # TCP established -> TLS handshake complete
    ttfb_ms: NonNegMs | None = None  # last request byte written -> first response byte read
    total_ms: NonNegMs | None = None  # fetch start -> last body byte read
    bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None  # body bytes (last hop)
    redirects: Annotated[int, msgspec.Meta(ge=0)] | None = None
    http_version: str | None = None  # e.g. "1.1"
    cert_days: float | None = None  # days until the server certificate expires
    error: str | None = None  # "<kind>: <detail>": dns, connect, tls, timeout, status, body
    topology: Topology | None = None
    provider: str | None = None
    family: Literal[4, 6] | None = None
    ask: AskId | None = None  # the ask this record answers; scheduled records: absent


class PingRecord(msgspec.Struct, tag="ping", tag_field="kind", omit_defaults=True, kw_only=True):
    """One echo (``method`` icmp) or one TCP handshake (``method`` tcp), timed.

    Network time without server time: a DNS ``rtt_ms`` minus the ``ping`` ``rtt_ms`` to
    the same address is what the server itself spent. ``kind`` is ``"ping"``.
    """

    # epoch ns of the send: icmp, the echo request's kernel TX stamp (timestamping
    # "kernel"); tcp, the clock just before connect()
    ts: EpochNs
    target: Label
    server: Label  # the IP address pinged
    method: Literal["icmp", "tcp"]
    timestamping: Timestamping
    port: Port | None = None  # tcp only
    # icmp: echo request sent -> reply received (kernel stamps at the device); tcp: SYN
    # sent -> SYN-ACK received as TCP saw them (TCP_INFO, whole µs), or connect() ->
    # established timed in user space (timestamping "user")
    rtt_ms: NonNegMs | None = None
    error: str | None = None  # "<kind>: <detail>" when no reply came; then no rtt_ms
    topology: Topology | None = None
    provider: str | None = None
    family: Literal[4, 6] | None = None
    ask: AskId | None = None  # the ask this record answers; scheduled records: absent


class TraceHop(msgspec.Struct, omit_defaults=True, kw_only=True, forbid_unknown_fields=True):
    """One TTL of a trace: who answered it (the router whose ICMP time-exceeded came
    back, or the destination), and the round trip of each query sent at it."""

    ttl: Annotated[int, msgspec.Meta(ge=1, le=255)]
    addr: Label | None = None  # the responding address; None: no answer at this TTL
    # one per query answered, in ms (kernel stamps: the send's TX, the ICMP error's RX)
    rtt_ms: Annotated[list[NonNegMs], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )
    sent: Annotated[int, msgspec.Meta(ge=1, le=16)]
    # other addresses that answered queries at this TTL (a load balancer that split the
    # flow: with one flow per trace, none)
    others: Annotated[list[Label], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )
    # "time-exceeded" (a router), "reply" (the destination answered the query),
    # "unreachable" (the destination, or a router, said it cannot be reached)
    kind: Literal["time-exceeded", "reply", "unreachable"] | None = None

    def __post_init__(self) -> None:
        if len(self.rtt_ms) > self.sent:
            raise ValueError(f"{len(self.rtt_ms)} round trips of {self.sent} queries sent")


class TraceRecord(msgspec.Struct, tag="trace", tag_field="kind", omit_defaults=True, kw_only=True):
    """One Paris-style trace to a server: the flow (addresses, ports, protocol) is the
    same for every query of it, so a per-flow load balancer keeps it on one path.
    ``kind`` is ``"trace"``."""

    ts: EpochNs  # epoch ns of the first query's send
    target: Label
    server: Label  # the IP address traced to
    method: Literal["udp", "icmp"]
    timestamping: Timestamping
    hops: Annotated[list[TraceHop], msgspec.Meta(max_length=64)]
    reached: bool  # the destination answered
    path_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    site: str | None = None  # udp: the NSID of the destination's answer
    port: Port | None = None  # udp
    error: str | None = None
    topology: Topology | None = None
    provider: str | None = None
    family: Literal[4, 6] | None = None
    ask: AskId | None = None


class ProbeRecord(msgspec.Struct, tag="probe", tag_field="kind", omit_defaults=True, kw_only=True):
    """A probe's heartbeat: how it is doing. ``kind`` is ``"probe"``.

    The collector adds the probe's identity (and lat/lon) from its registry.
    """

    ts: EpochNs
    version: Label
    uptime_s: Annotated[float, msgspec.Meta(ge=0)]
    spool_depth: Annotated[int, msgspec.Meta(ge=0)]  # batches waiting to be sent
    dropped: Annotated[int, msgspec.Meta(ge=0)]  # batches dropped from a full spool
    rejected: Annotated[int, msgspec.Meta(ge=0)]  # records the collector rejected


Measurement = DnsRecord | HttpRecord | PingRecord | TraceRecord | ProbeRecord


class BatchHeader(msgspec.Struct, kw_only=True):
    """The fields of a batch besides its records; :class:`Batch` and
    :class:`BatchEnvelope` both inherit them, so the two cannot drift apart."""

    schema: Literal[1]  # SCHEMA_VERSION
    batch: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # idempotency id
    sent_at: EpochNs  # epoch ns when the batch was cut


class Batch(BatchHeader, kw_only=True):
    """What the probe POSTs: a batch of measurements with an idempotency id."""

    measurements: list[Measurement]


class BatchEnvelope(BatchHeader, kw_only=True):
    """A batch whose records are left undecoded (``msgspec.Raw``), so a receiver can
    decode each one alone and give every bad record its own reason."""

    measurements: list[msgspec.Raw]


class Rejected(msgspec.Struct, forbid_unknown_fields=True):
    """One record the collector did not take: its index in the batch, and why."""

    index: Annotated[int, msgspec.Meta(ge=0)]
    error: str


class IngestAnswer(msgspec.Struct):
    """The collector's ``200`` answer to a batch: every record is accepted or rejected
    (``accepted + len(rejected)`` is the batch's size), or the batch is a duplicate."""

    accepted: Annotated[int, msgspec.Meta(ge=0)]
    rejected: list[Rejected]
    duplicate: bool


class Command(msgspec.Struct, kw_only=True):
    """An ask as the collector hands it to a probe (``GET /api/v1/commands``): measure
    ``target`` (a target of check kind ``kind``, in its target type's keys) ``count``
    times, ``interval_s`` apart, from when it arrives. ``allow``: the networks the probe
    may send to (empty: any); an address outside them is not measured."""

    id: AskId
    kind: Label  # a check kind the probe has (probe.checks.CHECKS)
    target: dict[str, Any]  # the target spec, e.g. {"server": ..., "queries": [...]}
    count: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    interval_s: Annotated[float, msgspec.Meta(ge=0.01, le=3600)] = 1.0
    allow: list[str] = msgspec.field(default_factory=list)
    created_at: EpochNs  # epoch ns, the collector's clock


class Commands(msgspec.Struct):
    """The answer to a command long-poll: the asks for this probe not yet in its hands
    (empty when ``wait_s`` passed without one)."""

    commands: list[Command]


class AskState(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a probe says of an ask (``POST /api/v1/asks/{id}/state``): it has made every
    measurement (``done``), or it will not (``refused``, with why)."""

    state: Literal["done", "refused"]
    measurements: Annotated[int, msgspec.Meta(ge=0)] = 0
    message: Annotated[str, msgspec.Meta(max_length=500)] | None = None


_encoder: Final = msgspec.json.Encoder()
_record_decoder: Final = msgspec.json.Decoder(Measurement)
_batch_decoder: Final = msgspec.json.Decoder(Batch)


def encode(obj: Measurement | Batch) -> bytes:
    """JSON bytes of a record or a batch."""
    return _encoder.encode(obj)


def decode_record(data: bytes | str) -> Measurement:
    """A record from JSON; raises ``msgspec.ValidationError`` with the field path."""
    record: Measurement = _record_decoder.decode(data)
    return record


def decode_batch(data: bytes | str) -> Batch:
    """A whole batch from JSON; raises ``msgspec.ValidationError`` with the field path."""
    return _batch_decoder.decode(data)
