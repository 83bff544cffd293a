"""Where ``run`` writes records: JSON lines to a file or standard output."""

from __future__ import annotations

import sys
from typing import IO

from probe.resources import AsyncClosing
from probe.wire import Measurement, encode


class JsonLinesOutput(AsyncClosing):
    """One wire record per line. ``"-"`` is standard output; a path is appended to."""

    def __init__(self, target: str) -> None:
        self.name = target
        self._own = target != "-"
        self._fh: IO[bytes] = open(target, "ab") if self._own else sys.stdout.buffer  # noqa: SIM115
        self.written = 0

    def write(self, record: Measurement) -> None:
        self._fh.write(encode(record) + b"\n")
        self.written += 1

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self.flush()
        if self._own:
            self._fh.close()


class MemorySink:
    """Keeps records in a list (for embedding the probe, tests and benchmarks)."""

    def __init__(self) -> None:
        self.records: list[Measurement] = []

    def write(self, record: Measurement) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass
