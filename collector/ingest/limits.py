"""What one client may send and hold: the bounds of the public API, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    """What one request may carry, and how fast one probe may send."""

    max_body_bytes: int = 5_000_000  # as sent (compressed)
    max_decoded_bytes: int = 20_000_000  # after gzip: a bomb stops here
    max_records: int = 20_000
    max_age_s: float = 7 * 86400  # older records are rejected
    max_future_s: float = 300  # records further ahead of our clock are rejected
    # per probe: a token bucket of records. A probe at 1,000 targets every 10 s sends
    # 100 records/s; the default leaves ample room and stops a runaway or a replay storm.
    records_per_second: float = 2_000
    burst_records: float = 200_000  # a probe coming back with a full spool catches up
    # and a bucket of requests: a probe sends a batch every few seconds, and catches up
    # on a backlog one batch after the other; empty batches cost a request each
    requests_per_second: float = 20
    burst_requests: float = 2_000
    body_timeout_s: float = 60  # the whole body must have come by then (408)
    max_inflating: int = 2  # gzip bodies inflated at once, each in a thread
    # the public listener (collector.ingest.gate, and aiohttp's own per-request bounds)
    max_connections: int = 4096
    max_connections_per_address: int = 512  # an IPv6 /64 counts as one address
    max_head_bytes: int = 32_768  # request line and headers of one request (nginx's too)
    max_waiting_bytes: int = 16_000_000  # heads not yet handled, over all connections
    max_line_size: int = 4096  # the request line
    max_field_size: int = 4096  # one header
    max_headers: int = 32


__all__ = ["Limits"]
