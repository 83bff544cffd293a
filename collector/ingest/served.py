"""The targets file the collector serves on ``GET /api/v1/config``, kept current.

The file is read again when it changes (its size, times or inode), so an edit reaches
the probes without a restart. A change that does not load is logged once and the last
good list is served on: a typo while editing must not take the probes' targets away.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from probe.configfile import ConfigError
from probe.targets import DnsTarget, Site, TraceTarget, load_targets, trace_of

log = logging.getLogger("popwatch.collector")

#: a file changed less than this long ago is read again on each request: a second change
#: within the file system's timestamp granularity would leave its stat unchanged
RACY_S = 2.0


class ServedTargets:
    """The body and ETag of the targets at ``path``: the last list that loaded."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock  # wall clock: compared with the file's mtime
        self._stamp: tuple[int, ...] | None = None
        self._racy = True
        self._body: bytes | None = None
        self._etag = ""
        self._count = 0
        self._logged: tuple[tuple[int, ...] | None, str] | None = None
        self._fault: str | None = None
        self._names: frozenset[str] = frozenset()
        self._sites: dict[str, tuple[tuple[Site, ...], float]] = {}
        self._traces: dict[str, dict[str, object]] = {}
        self._lock = asyncio.Lock()
        self._refresh()  # at once: a list that loads now is served even if an edit breaks it

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)

    async def current(self) -> tuple[bytes, str]:
        """The JSON body ``{"targets": [...]}`` and its ETag. Raises ``ConfigError`` only
        when the file has never loaded. A changed file is read again in a thread (a
        large one takes seconds to parse, and ingest must not wait), one read at a time:
        requests meanwhile get the list that loaded last."""
        stamp = self._stat()
        if (stamp != self._stamp or self._racy) and not self._lock.locked():
            async with self._lock:
                self._stamp = stamp
                self._racy = stamp is not None and self._clock() - stamp[0] / 1e9 < RACY_S
                await asyncio.to_thread(self._load, stamp)
        if self._body is None:
            raise ConfigError(self._fault or f"{self.path}: not loaded")
        return self._body, self._etag

    def names(self) -> set[str]:
        """The names of the targets served now (the last list that loaded)."""
        return set(self._names)

    def sites(self) -> dict[str, tuple[tuple[Site, ...], float]]:
        """The anycast targets served now that list their sites: name -> (the sites,
        how often each is measured, in seconds: interval x site_every)."""
        return dict(self._sites)

    def traces(self) -> dict[str, dict[str, object]]:
        """Each target served now as the spec of a trace of its path (a ``kind: trace``
        target's own, a DNS target's by its ``trace`` method, udp when it has none):
        what the alert engine asks for when an alert on it fires."""
        return dict(self._traces)

    def _refresh(self) -> None:
        """Load the file again if it changed since the last look (at start)."""
        stamp = self._stat()
        if stamp != self._stamp or self._racy:
            self._stamp = stamp
            self._racy = stamp is not None and self._clock() - stamp[0] / 1e9 < RACY_S
            self._load(stamp)

    def _load(self, stamp: tuple[int, ...] | None) -> None:
        try:
            targets = load_targets(self.path)
        except ConfigError as exc:
            self._fault = str(exc)
            if self._logged != (stamp, self._fault):  # once per change of the file
                self._logged = (stamp, self._fault)
                if self._body is None:
                    log.error("targets file: %s", exc)
                else:
                    log.warning(
                        "targets file: %s; serving the last good list (%d targets) until "
                        "it is fixed",
                        exc,
                        self._count,
                    )
            return
        if self._fault is not None and self._body is not None:
            log.info("targets file %s loads again: %d targets", self.path, len(targets))
        self._fault = None
        self._logged = None
        body = msgspec.json.encode({"targets": targets})
        if body != self._body:
            self._body = body
            self._etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._count = len(targets)
            self._names = frozenset(t.name for t in targets)
            self._sites = {
                t.name: (tuple(t.sites), t.interval * t.site_every)
                for t in targets
                if isinstance(t, DnsTarget) and t.sites
            }
            dns = {t.name: trace_of(t) for t in targets if isinstance(t, DnsTarget)}
            traced = {t.name: t for t in targets if isinstance(t, TraceTarget)}
            self._traces = {n: msgspec.to_builtins(t) for n, t in {**dns, **traced}.items()}


__all__ = ["ServedTargets"]
