"""What one client may send and hold: the bounds of the public API, in one place.

:class:`Limits` is the collector config's ``limits:`` section: every bound is a key, with
its default and its range here and nowhere else (``collector/example.yaml`` lists them,
and a test holds it to this struct). What follows from a bound is derived from it, not
restated: batch ids are kept as long as a record may be old (``max_age_s``).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import msgspec

Bytes = Annotated[int, msgspec.Meta(ge=1024)]
Rate = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What one request may carry, and how fast one probe may send."""

    max_body_bytes: Bytes = 5_000_000  # as sent (compressed): 413 past it
    max_decoded_bytes: Bytes = 20_000_000  # after gzip: a bomb stops here (413)
    max_records: Count = 20_000  # records in one batch (413 past it)
    # records older than this are rejected; batch ids are kept this long, so a batch
    # retried within it is still known as a duplicate
    max_age_s: Annotated[float, msgspec.Meta(gt=0, le=366 * 86400)] = 7 * 86400.0
    max_future_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 300.0  # ahead of our clock
    # per probe: a token bucket of records. A probe at 1,000 targets every 10 s sends
    # 100 records/s; the default leaves ample room and stops a runaway or a replay storm.
    records_per_second: Rate = 2_000.0
    burst_records: Rate = 200_000.0  # a probe coming back with a full spool catches up
    # and a bucket of requests: a probe sends a batch every few seconds, and catches up
    # on a backlog one batch after the other; empty batches cost a request each
    requests_per_second: Rate = 20.0
    burst_requests: Rate = 2_000.0
    # per probe: new tag values (targets, sites, qnames, servers, addresses) it may add at
    # once, and an hour after that; and how many of its values are remembered
    # (collector.ingest.series: one probe cannot fill InfluxDB's index for everyone)
    new_series_burst: Rate = 10_000.0
    new_series_per_hour: Rate = 1_000.0
    max_series_per_probe: Count = 50_000
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0  # then 408
    max_inflating: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2  # gzip bodies at once
    # the public listener (collector.ingest.gate, and aiohttp's own per-request bounds)
    max_connections: Count = 4096
    max_connections_per_address: Count = 512  # an IPv6 /64 counts as one address
    # the admin listener (/metrics, /readyz, the status page): its own, smaller caps
    max_admin_connections: Count = 256
    max_admin_connections_per_address: Count = 64
    max_head_bytes: Bytes = 32_768  # request line and headers of one request (nginx's too)
    max_waiting_bytes: Bytes = 16_000_000  # heads not yet handled, over all connections
    max_line_size: Annotated[int, msgspec.Meta(ge=256)] = 4096  # the request line
    max_field_size: Annotated[int, msgspec.Meta(ge=256)] = 4096  # one header
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=1000)] = 32
    # asks (collector/asks): what any operator may make the fleet send. Probes in one ask;
    # queries per second one probe is asked for, over every ask it runs; queries per
    # second to one target (address or host name) over every ask of the fleet; how long
    # one ask may run (count x interval_s); the target networks asks may reach (empty:
    # any); how long an ask and its results are served; the longest command long-poll
    max_ask_probes: Count = 100
    max_ask_qps_per_probe: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 20.0
    max_ask_qps_per_target: Rate = 200.0
    max_ask_duration_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 600.0
    ask_target_networks: list[str] = msgspec.field(default_factory=list)
    ask_keep_s: Annotated[float, msgspec.Meta(ge=60, le=366 * 86400)] = 7 * 86400.0
    max_command_wait_s: Annotated[float, msgspec.Meta(ge=1, le=300)] = 60.0

    def __post_init__(self) -> None:
        for i, net in enumerate(self.ask_target_networks):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"ask_target_networks[{i}]: {net!r} is not a network (e.g. 192.0.2.0/24)"
                ) from None
        if self.max_decoded_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_decoded_bytes: {self.max_decoded_bytes} is less than max_body_bytes "
                f"({self.max_body_bytes}): a body is never smaller once inflated"
            )
        if self.max_connections_per_address > self.max_connections:
            raise ValueError(
                f"max_connections_per_address: more than max_connections ({self.max_connections})"
            )


__all__ = ["Limits"]
