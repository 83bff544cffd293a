"""Which write API an InfluxDB takes, from the version its ``/ping`` reports.

InfluxDB sends its version in the ``X-Influxdb-Version`` header (``1.6.7~rc0``,
``1.8.10``, ``v2.7.11``, ``3.0.1``). Before 1.8 there is only ``/write`` (the v1 API);
1.8 added ``/api/v2/write``; 2.x and 3.x take both, 2.x's ``/write`` only for a database
mapped to a bucket (a DBRP mapping). ``influxdb_api: auto`` takes v1 below 1.8 and v2
from 1.8 on; an explicit choice the server cannot take is a :class:`Mismatch`, which the
collector reports before it serves. While InfluxDB does not answer, :class:`Deferred`
stands in for the sink: writes fail over to the spool, and the API is chosen (and
checked) at InfluxDB's first answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp

from collector.store.sink import Sink, SinkUnavailable, redact

log = logging.getLogger("popwatch.collector")

Api = Literal["v1", "v2"]
Wanted = Literal["auto", "v1", "v2"]

_VERSION_RE: Final = re.compile(r"v?(\d+)\.(\d+)")


class Unreachable(Exception):
    """InfluxDB did not answer ``/ping`` (refused, timed out, unresolvable)."""


class Mismatch(Exception):
    """The server cannot take the chosen API, or is not InfluxDB. ``str()`` is one line."""


@dataclass(frozen=True)
class Target:
    """The InfluxDB to ask, and what the collector was told to use."""

    url: str
    wanted: Wanted
    bucket: str
    token: str | None = None
    timeout_s: float = 5.0


def parse_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of an ``X-Influxdb-Version`` value; None when it has none."""
    m = _VERSION_RE.match(text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


async def ping(session: aiohttp.ClientSession, url: str) -> str | None:
    """The version InfluxDB's ``/ping`` reports; None when it says none (a proxy may
    strip the header). Raises ``Unreachable``, or ``Mismatch`` when the answer is not
    InfluxDB's."""
    try:
        async with session.get(f"{url}/ping") as resp:
            version = resp.headers.get("X-Influxdb-Version")
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise Unreachable(f"{redact(url)}/ping: {exc or type(exc).__name__}") from None
    if version is None and status not in (200, 204):
        raise Mismatch(
            f"influxdb_url: {redact(url)} answers /ping with HTTP {status} and no "
            "X-Influxdb-Version: is it InfluxDB's base URL?"
        )
    return version


async def choose(session: aiohttp.ClientSession, target: Target) -> tuple[Api, str | None]:
    """The API to write with, and the version InfluxDB reported. Raises ``Unreachable``
    or ``Mismatch``."""
    version = await ping(session, target.url)
    parsed = parse_version(version) if version else None
    if parsed is None:
        if target.wanted == "auto":
            log.warning(
                "InfluxDB at %s does not say its version on /ping; writing with the v2 "
                "API (set POPWATCH_INFLUXDB_API=v1 for InfluxDB 1.7 or older)",
                redact(target.url),
            )
            return "v2", version
        return target.wanted, version
    major, minor = parsed
    if (major, minor) < (1, 8):
        if target.wanted == "v2":
            raise Mismatch(
                f"influxdb_api: v2 needs InfluxDB 1.8 or later, and {redact(target.url)} is "
                f"InfluxDB {version}: set influxdb_api (POPWATCH_INFLUXDB_API) to auto or v1"
            )
        return "v1", version
    if target.wanted == "v1" and major == 2:
        await _check_mapping(session, target, str(version))
    return ("v2" if target.wanted == "auto" else target.wanted), version


async def _check_mapping(session: aiohttp.ClientSession, target: Target, version: str) -> None:
    """InfluxDB 2.x takes ``/write`` only for a database mapped to a bucket: is
    ``target.bucket`` one (``SHOW DATABASES`` lists the mapped ones)?"""
    headers = {"Authorization": f"Token {target.token}"} if target.token else {}
    try:
        async with session.get(
            f"{target.url}/query", params={"q": "SHOW DATABASES"}, headers=headers
        ) as resp:
            status = resp.status
            body: Any = await resp.json(content_type=None) if status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        log.warning(
            "InfluxDB %s at %s: cannot list its v1 databases: %s", version, redact(target.url), exc
        )
        return
    if status in (401, 403):
        raise Mismatch(
            f"influxdb_token: InfluxDB {version} at {redact(target.url)} refuses it "
            f"(HTTP {status}) for the v1 API: set an API token that may write the bucket"
        )
    try:
        series = body["results"][0].get("series") or [{}]
        names = {row[0] for row in series[0].get("values") or []}
    except (TypeError, KeyError, IndexError, AttributeError):
        log.warning(
            "InfluxDB %s at %s: unexpected SHOW DATABASES answer", version, redact(target.url)
        )
        return
    if target.bucket not in names:
        raise Mismatch(
            f"influxdb_api: v1 on InfluxDB {version} at {redact(target.url)} needs the database "
            f"{target.bucket!r} mapped to a bucket (a DBRP mapping), and there is none: set "
            "influxdb_api (POPWATCH_INFLUXDB_API) to auto or v2, or create the mapping "
            "(influx v1 dbrp create)"
        )


class Deferred:
    """The InfluxDB sink, made at InfluxDB's first answer to ``/ping``.

    Until then every ``write`` raises ``SinkUnavailable``, so the spool takes the points
    (and ``ready`` is False); ``/ping`` is asked at most once per ``retry_s``. At the first
    answer the API is chosen as at start, ``make(api)`` builds the sink, and the spool's
    replay goes through it. A ``Mismatch`` found then is logged (once per distinct
    message) and the points stay in the spool until the setting is fixed.
    """

    def __init__(
        self,
        target: Target,
        make: Callable[[Api], Sink],
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self._make = make
        self._retry_s = retry_s
        self._clock = clock
        self._inner: Sink | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._asked = -float("inf")  # clock() of the last /ping
        self._why = "InfluxDB not asked yet"
        self._logged = ""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.target.timeout_s)
        )

    async def _sink(self) -> Sink:
        if self._inner is not None:
            return self._inner
        async with self._lock:
            if self._inner is not None:
                return self._inner
            if self._clock() - self._asked < self._retry_s:
                raise SinkUnavailable(self._why)
            self._asked = self._clock()
            assert self._session is not None
            try:
                api, version = await choose(self._session, self.target)
            except Unreachable as exc:
                self._why = f"InfluxDB does not answer yet ({exc}); no write API chosen"
                raise SinkUnavailable(self._why) from None
            except Mismatch as exc:
                self._why = str(exc)
                if self._logged != self._why:
                    log.error("%s; points wait in the spool until it is fixed", exc)
                    self._logged = self._why
                raise SinkUnavailable(self._why) from None
            inner = self._make(api)
            await inner.start()
            log.info(
                "InfluxDB at %s answers (version %s): writing with the %s API",
                redact(self.target.url),
                version or "not said",
                api,
            )
            self._inner = inner
            await self._session.close()
            return inner

    async def write(self, body: bytes) -> None:
        if body:
            await (await self._sink()).write(body)

    async def ready(self) -> bool:
        try:
            sink = await self._sink()
        except SinkUnavailable:
            return False
        return await sink.ready()

    def problems(self) -> list[str]:
        return [self._why] if self._inner is None else self._inner.problems()

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
        if self._session is not None:
            await self._session.close()


__all__ = ["Api", "Deferred", "Mismatch", "Target", "Unreachable", "choose", "parse_version"]
