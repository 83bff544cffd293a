"""Build the dashboards: their JSON models, the files in ``dashboards/json``, and the
registry of every panel's queries (what the tests run against InfluxDB)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards.board import FOLDER, Board, PanelQuery
from dashboards.boards import DASHBOARDS
from dashboards.influxql import ALERTMANAGER_UID, INFLUX_UID


def boards() -> dict[str, Board]:
    """Every dashboard being built, by file name."""
    return {name: make() for name, make in DASHBOARDS.items()}


def to_json(board: Board) -> dict[str, Any]:
    """The dashboard's JSON model, as Grafana imports it."""
    out: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return out


def render(board: Board) -> str:
    """The file's text: stable key order, so a change shows as a readable diff."""
    return json.dumps(to_json(board), indent=2, sort_keys=True) + "\n"


def build_all() -> dict[str, dict[str, Any]]:
    """file name -> dashboard JSON model."""
    return {name: to_json(board) for name, board in boards().items()}


def write(directory: Path) -> list[Path]:
    """Write every dashboard to ``directory/NAME.json``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, board in boards().items():
        path = directory / f"{name}.json"
        path.write_text(render(board))
        paths.append(path)
    return paths


def stale(directory: Path) -> list[str]:
    """The files in ``directory`` that differ from what the code generates (or are
    missing, or are left over)."""
    want = {f"{name}.json": render(board) for name, board in boards().items()}
    have = {p.name: p.read_text() for p in directory.glob("*.json")} if directory.is_dir() else {}
    return sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))


def queries() -> list[PanelQuery]:
    """Every query of every panel of every dashboard."""
    return [q for board in boards().values() for q in board.queries]


__all__ = [
    "ALERTMANAGER_UID",
    "FOLDER",
    "INFLUX_UID",
    "Board",
    "PanelQuery",
    "build_all",
    "queries",
    "render",
    "stale",
    "write",
]
