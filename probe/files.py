"""Durable file writes, shared by the probe's spool and the collector's.

Stdlib only: the collector may import this module (with :mod:`probe.wire` and
:mod:`probe.targets`), so it stays free of the probe's other modules.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that, once this returns, a crash keeps all of it.

    The bytes go to ``<path>.tmp`` beside it, which is fsync'd, renamed over ``path``,
    and then the directory is fsync'd so the rename itself is on disk. A reader never
    sees a partial ``path``: after a crash there is either the whole file or a stray
    ``*.tmp``, which the owner of the directory deletes on start (it was never
    acknowledged). On an error the ``.tmp`` is removed and the error raised. Blocking:
    run it in a thread where the event loop must not wait.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["TMP_SUFFIX", "write_durably"]
