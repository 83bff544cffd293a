"""Every resource is an async context manager with ``close()``."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncClosing:
    """``async with`` support for a class whose ``close()`` releases everything."""

    def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
