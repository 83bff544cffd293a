"""The Docker deployment: the compose file, its targets, and its one-shot registration.

No Docker engine runs here, so the containers themselves are not started. What can be
checked is checked: ``docker-compose config`` accepts the file, every ``POPWATCH_*``
variable it sets is a setting of the part it is given to, the served targets load, and
the ``register`` command yields a token the registry accepts, once, however often it
runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.cli import CollectorConfig
from collector.registry import Registry
from probe.config import load_config, load_targets

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent

# what load_config reads from the environment (probe/config.py)
PROBE_VARS = {
    "POPWATCH_PROBE_ID",
    "POPWATCH_TARGETS",
    "POPWATCH_LOG_LEVEL",
    "POPWATCH_COLLECTOR_URL",
    "POPWATCH_TOKEN",
    "POPWATCH_TOKEN_FILE",
    "POPWATCH_DATA_DIR",
}


def services() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc["services"]  # type: ignore[no-any-return]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    out = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_every_variable_is_a_real_setting() -> None:
    """A typo in a variable name would be silently ignored by the container: not here."""
    collector_vars = {f"POPWATCH_{k.upper()}" for k in CollectorConfig.__struct_fields__}
    svc = services()
    for name, known in (("collector", collector_vars), ("probe", PROBE_VARS)):
        env = svc[name]["environment"]
        unknown = {k for k in env if k.startswith("POPWATCH_")} - known
        assert not unknown, f"{name}: {unknown}"
    cfg = load_config(None, env={**svc["probe"]["environment"], "POPWATCH_TOKEN": "x"})
    assert cfg.collector_url == "http://collector:8080"
    collector_env = {k: str(v) for k, v in svc["collector"]["environment"].items()}
    from collector.cli import load_config as load_collector

    ccfg = load_collector(None, env=collector_env)
    assert ccfg.influxdb_api == "v2" and ccfg.influxdb_url == "http://influxdb:8086"


def test_served_targets_load() -> None:
    svc = services()
    mount = next(v for v in svc["collector"]["volumes"] if v.endswith("targets.yaml:ro"))
    targets = load_targets(ROOT / mount.split(":")[0].removeprefix("./"))
    assert {t.name for t in targets} >= {"k-root", "quad9", "example-web"}


def test_register_command_gives_a_working_token_once(tmp_path: Path) -> None:
    """The ``register`` service's shell command, run twice with the real CLI: one probe,
    one token, and the token authenticates."""
    command = services()["register"]["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2].replace("$$", "$").replace("/run/popwatch/tokens", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "POPWATCH_DATA_DIR": str(tmp_path)}
    for _ in range(2):
        out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    token = (tmp_path / "t" / "demo-probe").read_text().strip()
    registry = Registry(tmp_path / "registry.sqlite")
    try:
        who = registry.authenticate(token)
        assert who is not None and (who.probe, who.region) == ("demo-probe", "local")
        assert len(registry.list()) == 1
    finally:
        registry.close()
