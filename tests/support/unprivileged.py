"""Running a command as an unprivileged user: uid 10001 (the image's), no capability, no
way to gain one; and the directories it must pass made passable for the while."""

from __future__ import annotations

import contextlib
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

UID = 10001


def as_user(argv: list[str], uid: int = UID) -> list[str]:
    """``argv`` under setpriv: ``uid`` and its own group, no supplementary groups, an
    empty bounding set and no inheritable capability, no new privileges."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop to an unprivileged user"
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        *argv,
    ]


@contextlib.contextmanager
def others_may_enter(*tops: Path) -> Iterator[None]:
    """Each directory from ``tops`` up to ``/`` that others may not enter (``mktemp -d``
    makes CI's clone's parent 0700) gets ``o+x`` for the block, and its mode back after:
    the user must reach the interpreter and the code."""
    changed: list[tuple[Path, int]] = []
    for top in tops:
        for d in [top, *top.parents]:
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH:
                changed.append((d, mode))
                d.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for d, mode in changed:
            d.chmod(stat.S_IMODE(mode))


__all__ = ["UID", "as_user", "others_may_enter"]
