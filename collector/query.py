"""InfluxQL queries from the collector: a small client of InfluxDB's v1 ``/query``.

The one query API InfluxDB 1.x, 2.x (through a DBRP mapping from the database to the
bucket) and 3.x all serve. The collector's own settings say where: ``influxdb_url``, the
database is ``influxdb_bucket`` (its part before a ``/retention`` on 1.8), and a token
goes as ``Authorization: Token ...``, as the write sinks send it. Used by the status page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp

from collector.config import CollectorConfig


class QueryError(Exception):
    """InfluxDB did not answer the query, or refused it; ``str()`` says which and why."""


@dataclass(frozen=True)
class Series:
    """One series of a result: its tags, and its rows as column -> value."""

    name: str
    tags: dict[str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)


class InfluxQL:
    """``await query(q)``: the series InfluxDB returns for ``q`` (times in epoch ms)."""

    def __init__(
        self, url: str, database: str, token: str | None = None, timeout_s: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, cfg: CollectorConfig) -> InfluxQL:
        return cls(
            cfg.influxdb_url,
            cfg.influxdb_bucket.partition("/")[0],
            cfg.influxdb_token,
            cfg.influxdb_timeout_s,
        )

    async def query(self, q: str) -> list[Series]:
        if self._session is None:
            headers = {"Authorization": f"Token {self.token}"} if self.token else {}
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        params = {"db": self.database, "q": q, "epoch": "ms"}
        try:
            async with self._session.get(f"{self.url}/query", params=params) as r:
                text = await r.text()
                if r.status != 200:
                    raise QueryError(f"InfluxDB query: HTTP {r.status}: {text.strip()[:200]}")
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise QueryError(
                f"InfluxDB at {self.url} does not answer: {exc or 'timeout'}"
            ) from None
        except ValueError as exc:
            raise QueryError(f"InfluxDB query: not JSON: {exc}") from None
        out = []
        for result in body.get("results", []):
            if "error" in result:
                raise QueryError(f"InfluxDB query: {result['error']}")
            for s in result.get("series", []):
                cols = s.get("columns", [])
                rows = [dict(zip(cols, v, strict=True)) for v in s.get("values", [])]
                out.append(Series(s.get("name", ""), s.get("tags") or {}, rows))
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = ["InfluxQL", "QueryError", "Series"]
