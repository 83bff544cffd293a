"""A request body, read within bounds: as sent, once inflated, and in time.

The bytes as sent are counted while they stream in, whatever the framing (a chunked body
has no ``Content-Length`` to check first). A gzip or deflate body is inflated here, not
by aiohttp (the app turns aiohttp's ``auto_decompress`` off): in steps of at most
``STEP`` bytes of output, so a bomb stops at the bound without ever being held whole; the
first step on the event loop (an honest batch is done by then), the rest on one of
``Inflater.concurrency`` threads, so bombs queue behind each other instead of starving
everyone else.
"""

from __future__ import annotations

import asyncio
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from aiohttp import web

#: the most one inflate step produces; the first runs on the event loop (~0.5 ms)
STEP: Final = 256 * 1024


class BodyError(Exception):
    """The body cannot be taken: ``status`` (400, 408, 413) and a reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ClientGone(Exception):
    """The client closed the connection before its body was in."""


_WBITS: Final = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,  # zlib-wrapped, as RFC 9110 says
}


async def read_raw(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body as sent: ``BodyError`` 413 past ``max_bytes`` (counted as it streams in),
    408 when it has not all come within ``timeout_s``; ``ClientGone`` when the client
    hangs up first."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.readany():
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise BodyError(413, f"body over {max_bytes} bytes")
    except TimeoutError:
        raise BodyError(408, f"body not received within {timeout_s:g} s") from None
    except (ConnectionError, web.HTTPException) as exc:
        raise ClientGone(str(exc) or type(exc).__name__) from None
    except Exception as exc:  # aiohttp's payload errors: a bad chunked framing, say
        if type(exc).__module__.startswith("aiohttp"):
            raise BodyError(400, f"body not readable: {exc}") from None
        raise
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Inflater:
    """Inflates gzip and deflate bodies up to ``max_bytes``, ``concurrency`` at a time,
    on threads of its own (so that the memory they use stays with so many threads)."""

    def __init__(self, max_bytes: int, concurrency: int = 2) -> None:
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self._threads: ThreadPoolExecutor | None = None

    async def inflate(self, raw: bytes, encoding: str) -> bytes:
        """``raw`` decoded per ``Content-Encoding`` (empty or ``identity``: as is), or
        ``BodyError`` (400 not that encoding, 413 over the bound)."""
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return raw
        wbits = _WBITS.get(encoding)
        if wbits is None:
            raise BodyError(
                400, f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)"
            )
        d = zlib.decompressobj(wbits)
        try:
            first = d.decompress(raw, STEP)
        except zlib.error as exc:
            raise BodyError(400, f"body is not valid {encoding}: {exc}") from None
        if d.eof and not d.unused_data:
            return first  # the common case: an honest batch, inflated on the loop
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="inflate")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._rest, d, first, wbits, encoding)

    def _rest(self, d: zlib._Decompress, first: bytes, wbits: int, encoding: str) -> bytes:
        """Inflate the rest (blocking: in a thread). A gzip body may hold several members.
        The steps are kept apart and joined once at the end, so a body that grows past
        the bound never held more than the bound, and one that does not is copied once."""
        steps = [first]
        size = len(first)
        try:
            while True:
                if size > self.max_bytes:
                    raise BodyError(413, f"body over {self.max_bytes} bytes once decoded")
                if d.eof:
                    rest = d.unused_data
                    if not rest:
                        return b"".join(steps)
                    if wbits != _WBITS["gzip"]:
                        raise BodyError(400, f"data after the end of the {encoding} stream")
                    d = zlib.decompressobj(wbits)  # the next gzip member
                    step = d.decompress(rest, STEP)
                else:
                    tail = d.unconsumed_tail
                    step = d.decompress(tail, STEP)
                    if not step and not tail:
                        raise BodyError(400, f"{encoding} body ends before its stream does")
                steps.append(step)
                size += len(step)
        except zlib.error as exc:
            raise BodyError(400, f"body is not valid {encoding}: {exc}") from None

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)


__all__ = ["BodyError", "ClientGone", "Inflater", "read_raw"]
