"""Batch ids already written, per probe: how a repeated batch is written once.

A probe retries a batch whose answer it never got, under the same id; the collector
answers such a repeat ``duplicate: true`` and writes nothing. The ids live in SQLite,
next to the registry.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("popwatch.collector")


class SeenBatches:
    """The batch ids already written, per probe (SQLite).

    New ids are kept in memory and committed together every ``flush_s`` (one
    transaction, not one per request: an autocommit costs 25-35 µs here, a row in a
    transaction 3-6 µs). WAL with ``synchronous=NORMAL``: a crash may forget the last
    ids, and then a retried batch is written again; InfluxDB stores identical points
    (same series and timestamp) once, so nothing is counted twice. Ids older than a week
    are pruned once a minute, not on every request.
    """

    def __init__(self, path: Path, keep_s: float, flush_s: float = 0.2) -> None:
        #: ids older than this are pruned: the oldest record the collector still takes
        #: (``limits.max_age_s``), so a batch it takes is never written twice
        self.keep_s = keep_s
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (probe TEXT, batch TEXT, at REAL, "
            "PRIMARY KEY (probe, batch))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS batches_at ON batches (at)")
        self._pruned = 0.0
        self._pending: dict[tuple[str, str], float] = {}
        self._flush_s = flush_s
        self._timer: asyncio.TimerHandle | None = None

    def seen(self, probe: str, batch: str) -> bool:
        """Whether ``probe`` sent ``batch`` before (and it was written)."""
        if (probe, batch) in self._pending:
            return True
        q = "SELECT 1 FROM batches WHERE probe = ? AND batch = ?"
        return self._db.execute(q, (probe, batch)).fetchone() is not None

    def add(self, probe: str, batch: str, now: float) -> None:
        """Remember a written batch; committed within ``flush_s``. Call from the event loop."""
        self._pending[(probe, batch)] = now
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self.flush)

    def flush(self) -> None:
        """Commit the pending ids in one transaction, and prune old ones once a minute."""
        self._timer = None
        rows = [(p, b, at) for (p, b), at in self._pending.items()]
        self._pending.clear()
        if not rows:
            return
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO batches VALUES (?, ?, ?)", rows)
            now = rows[-1][2]
            if now - self._pruned > 60:
                self._db.execute("DELETE FROM batches WHERE at < ?", (now - self.keep_s,))
                self._pruned = now
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            # only duplicate detection suffers: a repeat of these batches is written
            # again, and InfluxDB keeps one point per series and timestamp
            log.warning("could not record %d batch ids: %s", len(rows), exc)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        """Commit what is pending and close the database."""
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._db.close()


__all__ = ["SeenBatches"]
