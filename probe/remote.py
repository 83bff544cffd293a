"""What a shipping probe does besides measuring: heartbeats, and pulling its targets.

* Every ``heartbeat_s`` a ``probe`` record (uptime, spool depth, dropped and
  rejected counts) goes into the shipper like any measurement.
* Every ``config_s`` the probe asks ``GET /api/v1/config`` with ``If-None-Match``;
  a new list is applied without a restart, after the probe's own targets. A collector
  that serves no targets (404), or that cannot be reached, leaves the list in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from typing import Any, Final

import aiohttp
import msgspec

from probe import USER_AGENT, __version__
from probe.config import AnyTarget, TargetsFile, check_unique, default_kind
from probe.configfile import ConfigError, explain
from probe.runner import Prober
from probe.shipper import Shipper, TooLarge, collector_connector, read_bounded
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


#: the most of a config answer the probe reads: a list of 10,000 targets is about 3 MB
MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024
#: until the first target list arrives, pulls are retried this often at most (jittered)
FIRST_PULL_MAX_S: Final = 30.0


class _Unusable(Exception):
    """The collector's answer cannot be used; ``str()`` says why, in one line."""


async def pull_config(
    base_url: str,
    token: str,
    prober: Prober,
    seconds: float,
    stop: asyncio.Event,
    tls: ssl.SSLContext | None = None,
    insecure: bool = False,
) -> None:
    """Pull the served target list every ``seconds``, and apply it without a restart.

    The probe's own targets (config file, targets file) come first; served targets are
    added after them, and a served target whose name a local one already has is left out
    with a warning. Until the first answer arrives (a list, or 404: this collector serves
    none), pulls are retried with jittered backoff from 1 s up to 30 s, so a probe that
    starts before its collector measures as soon as the collector is up.
    """
    url = base_url.rstrip("/") + "/api/v1/config"
    local = list(prober.cfg.targets)
    etag: str | None = None
    answered = False
    backoff = 1.0
    headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}
    timeout = aiohttp.ClientTimeout(total=30)
    connector = collector_connector(url, tls, insecure)  # tls: the pinned CA
    async with aiohttp.ClientSession(
        timeout=timeout, headers=headers, connector=connector
    ) as session:
        while True:
            try:
                etag = await _pull_once(session, url, etag, prober, local)
                answered = True
            except (aiohttp.ClientError, TimeoutError, _Unusable) as exc:
                reason = str(exc) or type(exc).__name__
                if answered:
                    log.warning("config from %s: %s; keeping the current targets", url, reason)
                else:
                    log.warning(
                        "config from %s: %s; %d local targets meanwhile; next try in %.0f s",
                        url,
                        reason,
                        len(local),
                        backoff,
                    )
            if answered:
                wait = seconds
            else:
                wait = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not secrets
                backoff = min(backoff * 2, FIRST_PULL_MAX_S)
            if not await _every(wait, stop):
                return


def _reason(body: bytes) -> str:
    """The collector's own reason from an error answer (``{"error": "..."}``), if any."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    return f": {error}" if isinstance(error, str) else ""


async def _pull_once(
    session: aiohttp.ClientSession,
    url: str,
    etag: str | None,
    prober: Prober,
    local: list[AnyTarget],
) -> str | None:
    h = {"If-None-Match": etag} if etag else {}
    async with session.get(url, headers=h, allow_redirects=False) as resp:
        if resp.status == 304:
            return etag
        try:
            body = await read_bounded(resp, MAX_CONFIG_BYTES)
        except TooLarge as exc:
            raise _Unusable(str(exc)) from None
        if resp.status == 404:
            why = _reason(body)
            if "admin listener" in why:  # collector_url names the wrong port
                raise _Unusable(f"HTTP 404{why}")
            log.info("config from %s: this collector serves no targets%s", url, why)
            return etag  # the local list stays
        if resp.status != 200:
            raise _Unusable(f"HTTP {resp.status}{_reason(body)}")
        new_etag = resp.headers.get("ETag")
    try:
        data: Any = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _Unusable(f"answer is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Unusable(f"answer is a JSON {type(data).__name__}, not an object with 'targets'")
    default_kind(data)
    try:
        served = msgspec.convert(data, TargetsFile, strict=False).targets
    except msgspec.ValidationError as exc:
        fault = explain(TargetsFile, data, exc)
        raise _Unusable(f"target list is not valid: {fault.path}: {fault.text}") from None
    try:
        check_unique(url, served)
    except ConfigError as exc:
        raise _Unusable(f"target list is not valid: {exc}") from None
    names = {t.name for t in local}
    clash = [t.name for t in served if t.name in names]
    if clash:
        log.warning(
            "config from %s: served targets %s have the names of local targets; the local "
            "ones are kept",
            url,
            ", ".join(clash),
        )
    await prober.replace_targets([*local, *(t for t in served if t.name not in names)])
    return new_etag
