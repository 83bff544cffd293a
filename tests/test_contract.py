"""The contract between probe and collector holds in the code, not only in the docs.

The collector may import from ``probe`` only the contract modules: ``probe.wire`` (the
records and the batch), ``probe.targets`` (the targets schema it serves),
``probe.configfile`` (config files and their faults, in our words), ``probe.files``
(the durable write both spools use) and ``probe.dnswire`` (the DNS wire format, whose
name reader the targets schema uses). The other boundaries: the probe never imports the
collector or the dashboards; the collector's public API (``collector.ingest``) never
imports the alert engine; nothing outside ``tests/`` and ``bench/`` imports the test
support package (``tests/support``, imported as ``support``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import msgspec

from probe import wire

ROOT = Path(__file__).parent.parent
CONTRACT = frozenset(
    {"probe.wire", "probe.targets", "probe.configfile", "probe.files", "probe.dnswire"}
)
#: the installed packages: what may not import the test support
PACKAGES = ("probe", "collector", "dashboards", "popwatch_lab")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def is_module(name: str) -> bool:
    """Whether ``name`` is a module of this repository (not a name inside one)."""
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imported(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports: ``from a import b`` is ``a.b`` when
    ``b`` is a module of this repository, else ``a``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if is_module(full) else node.module)
    return names


def probe_imports(path: Path) -> set[str]:
    return {n for n in imported(path) if n.split(".")[0] == "probe"}


def test_collector_imports_only_the_contract_from_probe() -> None:
    """No module under collector/ imports a probe module outside the contract."""
    found = modules("collector")
    assert len(found) >= 10  # the walk found the package
    bad = {
        str(path.relative_to(ROOT)): sorted(probe_imports(path) - CONTRACT)
        for path in found
        if probe_imports(path) - CONTRACT
    }
    assert not bad, f"collector modules import probe modules outside {sorted(CONTRACT)}: {bad}"


def test_the_contract_modules_stand_alone() -> None:
    """The contract modules import no probe module outside the contract, so the
    collector gets nothing else through them."""
    for name in sorted(CONTRACT):
        path = ROOT / (name.replace(".", "/") + ".py")
        assert probe_imports(path) <= CONTRACT, (name, probe_imports(path))


def offenders(package: str, forbidden: set[str]) -> dict[str, list[str]]:
    """The modules under ``package`` that import a module under one of ``forbidden``
    (dotted prefixes), with what they import."""
    out = {}
    for path in modules(package):
        hits = sorted(
            n for n in imported(path) if any(n == f or n.startswith(f + ".") for f in forbidden)
        )
        if hits:
            out[str(path.relative_to(ROOT))] = hits
    return out


def test_probe_never_imports_the_collector_or_the_dashboards() -> None:
    """No module under probe/ imports collector or dashboards."""
    assert len(modules("probe")) >= 10
    assert offenders("probe", {"collector", "dashboards"}) == {}


def test_ingest_never_imports_the_alert_engine() -> None:
    """The public API works without the alert engine: collector/ingest/ imports nothing
    of collector.alerts (nor the status page)."""
    assert len(modules("collector/ingest")) >= 5
    assert offenders("collector/ingest", {"collector.alerts", "collector.web"}) == {}


def test_only_tests_and_benchmarks_import_the_test_support() -> None:
    """No installed package imports the test support package (``support``, the
    ``tests/support`` directory) or ``tests``; the benchmarks may."""
    for package in PACKAGES:
        assert offenders(package, {"support", "tests"}) == {}, package
    assert offenders("bench", {"support"}), "the benchmarks use tests/support"


def test_the_boundary_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The walk that the boundary tests rely on finds a forbidden import when there is
    one (so the tests above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from collector.alerts.engine import Engine\nimport support.servers\n")
    assert imported(bad) == {"collector.alerts.engine", "support.servers"}


def test_importing_the_whole_collector_loads_only_the_contract() -> None:
    """At run time too: importing every collector module (in a fresh interpreter) loads
    no probe module but the contract and the package itself."""
    code = (
        "import importlib, pkgutil, sys, collector\n"
        "for m in pkgutil.walk_packages(collector.__path__, 'collector.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] == 'probe')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert set(out.stdout.split()) <= CONTRACT | {"probe"}, out.stdout


def test_the_envelope_has_the_batch_constraints() -> None:
    """``BatchEnvelope`` (records undecoded) and ``Batch`` refuse the same envelopes:
    wrong schema, empty or long batch id, a sent_at of 0."""
    good = {"schema": 1, "batch": "b" * 64, "sent_at": 1, "measurements": []}
    bad = [
        {**good, "schema": 2},
        {**good, "batch": ""},
        {**good, "batch": "b" * 65},
        {**good, "sent_at": 0},
    ]
    for cls in (wire.Batch, wire.BatchEnvelope):
        assert msgspec.convert(good, cls).batch == "b" * 64
        for body in bad:
            try:
                msgspec.convert(body, cls)
            except msgspec.ValidationError:
                continue
            raise AssertionError(f"{cls.__name__} took {body}")
    assert wire.SCHEMA_VERSION == 1


def kind_branches(path: Path, names: set[str]) -> list[str]:
    """Where ``path`` branches on a record kind's name: a comparison with one
    (``kind == "dns"``, ``kind in ("dns", "http")``) or a mapping keyed by one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        consts: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                consts += side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
        elif isinstance(node, ast.Dict):
            consts += [k for k in node.keys if k is not None]
        for c in consts:
            if isinstance(c, ast.Constant) and c.value in names:
                found.append(f"{path}:{node.lineno}: {c.value!r}")
    return found


def test_only_a_kinds_own_module_branches_on_it() -> None:
    """The check seam holds on the collector's side: outside collector/kinds/, no module
    compares with a record kind's name or keys a table by one (they read the kinds
    table instead)."""
    from collector.kinds import KINDS

    # "probe" (the heartbeat's kind) is also every point's tag key: not a kind's name here
    names = ({k.name for k in KINDS} | {k.measurement for k in KINDS}) - {"probe"}
    outside = [p for p in modules("collector") if "kinds" not in p.parts]
    assert len(outside) > 20
    assert [hit for p in outside for hit in kind_branches(p, names)] == []


def test_the_branch_check_finds_a_branch(tmp_path: Path) -> None:
    """The walk behind the test above finds what it forbids."""
    bad = tmp_path / "bad.py"
    bad.write_text('if s.kind == "dns":\n    pass\nx = {"http": 1}\ny = k in ("ping",)\n')
    assert len(kind_branches(bad, {"dns", "http", "ping"})) == 3
