"""What a shipping probe does besides measuring: heartbeats, and pulling its targets.

* Every ``heartbeat_seconds`` a ``probe`` record (uptime, spool depth, dropped and
  rejected counts) goes into the shipper like any measurement.
* Every ``config_seconds`` the probe asks ``GET /api/v1/config`` with ``If-None-Match``;
  a new list is applied without a restart. A collector that serves no targets (404),
  or that cannot be reached, leaves the local list in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import msgspec

from probe import __version__
from probe.config import TargetsFile, check_unique, default_kind
from probe.runner import Prober
from probe.shipper import Shipper
from probe.wire import ProbeRecord

log = logging.getLogger("popwatch.probe.remote")


async def _every(seconds: float, stop: asyncio.Event) -> bool:
    """Wait ``seconds`` or until stop; True if it is time to act."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return not stop.is_set()


async def heartbeats(shipper: Shipper, seconds: float, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while True:
        shipper.write(
            ProbeRecord(
                ts=time.time_ns(),
                version=__version__,
                uptime_s=round(time.monotonic() - started, 3),
                spool_depth=shipper.depth,
                dropped=shipper.dropped,
                rejected=shipper.rejected,
            )
        )
        if not await _every(seconds, stop):
            return


async def pull_config(
    base_url: str, token: str, prober: Prober, seconds: float, stop: asyncio.Event
) -> None:
    url = base_url.rstrip("/") + "/api/v1/config"
    etag: str | None = None
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while True:
            try:
                etag = await _pull_once(session, url, headers, etag, prober)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info(
                    "config from %s not fetched (%s); keeping the current targets",
                    url,
                    exc or type(exc).__name__,
                )
            if not await _every(seconds, stop):
                return


async def _pull_once(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    etag: str | None,
    prober: Prober,
) -> str | None:
    h = dict(headers)
    if etag:
        h["If-None-Match"] = etag
    async with session.get(url, headers=h) as resp:
        if resp.status == 304:
            return etag
        if resp.status == 404:
            return etag  # this collector serves no targets: the local list stays
        if resp.status != 200:
            log.warning("config from %s: HTTP %d", url, resp.status)
            return etag
        data: Any = await resp.json()
        new_etag = resp.headers.get("ETag")
    default_kind(data)
    try:
        targets = msgspec.convert(data, TargetsFile, strict=False).targets
        check_unique(url, targets)
    except (msgspec.ValidationError, ValueError) as exc:
        log.error("config from %s is not valid, keeping the current targets: %s", url, exc)
        return etag
    await prober.replace_targets(targets)
    return new_etag
