"""Where ``run`` writes records: JSON lines to a file or standard output."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Self

from probe.wire import Measurement, encode


class JsonLinesOutput:
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
