"""``python -m dashboards [--check] [DIR]``: write the dashboards' JSON to DIR
(default ``dashboards/json``), or with ``--check`` exit 1 naming the files that differ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards.build import stale, write


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    ap.add_argument("dir", nargs="?", default="dashboards/json", type=Path)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale(args.dir)
        for name in bad:
            print(f"{args.dir / name}: differs from what the code generates", file=sys.stderr)
        return 1 if bad else 0
    for path in write(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
