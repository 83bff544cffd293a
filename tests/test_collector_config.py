"""The collector's config: collector/example.yaml is every key at its default, variables
are the keys in capitals, and a bad file is one line naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import CollectorConfig, ConfigError, load_config
from collector.ingest.limits import Limits

EXAMPLE = Path(__file__).parent.parent / "collector" / "example.yaml"
COLLECTOR = str(Path(sys.executable).parent / "popwatch-collector")


def test_example_lists_every_key_at_its_default() -> None:
    """collector/example.yaml loads; it sets every key of CollectorConfig, each to its
    default, and each key follows a comment that explains it."""
    assert load_config(EXAMPLE, env={}) == CollectorConfig()
    text = EXAMPLE.read_text()
    keys = re.findall(r"^(\w+):", text, re.MULTILINE)
    assert sorted(keys) == sorted(CollectorConfig.__struct_fields__)
    limits = text[text.index("\nlimits:\n") :].split("\n\n")[0]
    assert sorted(re.findall(r"^  (\w+):", limits, re.MULTILINE)) == sorted(
        Limits.__struct_fields__
    ), "collector/example.yaml's limits: lists every key of Limits"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\w+:", line):  # a key: a comment above it, or a sibling key above
            above = lines[i - 1]
            assert above.startswith("#") or re.match(r"^\w+:", above), line


def test_unit_keys_say_their_unit() -> None:
    """A key that holds a duration or a size ends in _s, _ms or _bytes."""
    for key in CollectorConfig.__struct_fields__:
        if any(word in key for word in ("timeout", "after", "interval", "max_bytes", "size")):
            assert key.endswith(("_s", "_ms", "_bytes")), key


def test_example_command_prints_the_example() -> None:
    """`popwatch-collector example` prints collector/example.yaml (from the installed
    package, so the file ships in the wheel)."""
    out = subprocess.run(
        [COLLECTOR, "example"], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout == EXAMPLE.read_text()


def test_variables_are_the_keys_in_capitals(tmp_path: Path) -> None:
    """POPWATCH_INFLUXDB_TIMEOUT_S sets influxdb_timeout_s and wins over the file."""
    conf = tmp_path / "collector.yaml"
    conf.write_text("influxdb_timeout_s: 3\nspool_after_ms: 40\n")
    cfg = load_config(conf, env={"POPWATCH_INFLUXDB_TIMEOUT_S": "2.5"})
    assert (cfg.influxdb_timeout_s, cfg.spool_after_ms) == (2.5, 40.0)


def test_the_old_timeout_key_is_named_in_the_error(tmp_path: Path) -> None:
    """A file still saying influxdb_timeout (no unit) gets one line naming the key, and
    the key it became."""
    conf = tmp_path / "collector.yaml"
    conf.write_text("influxdb_timeout: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    assert str(info.value) == (
        f"{conf}: influxdb_timeout: unknown key (did you mean influxdb_timeout_s?)"
    )


def test_an_unknown_key_far_from_any_says_only_unknown(tmp_path: Path) -> None:
    """No hint is made up for a key that resembles none."""
    conf = tmp_path / "collector.yaml"
    conf.write_text("colour: blue\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    assert str(info.value) == f"{conf}: colour: unknown key"


def test_a_misspelt_variable_gets_a_hint_and_the_probes_are_left_alone() -> None:
    """POPWATCH_INFLUXDB_ULR is refused with the variable it resembles; the probe's
    variables (POPWATCH_TOKEN, POPWATCH_PROBE_ID, ...) in the same environment are not
    the collector's business."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"POPWATCH_INFLUXDB_ULR": "http://influxdb:8086"})
    assert str(info.value) == (
        "POPWATCH_INFLUXDB_ULR: unknown variable (did you mean POPWATCH_INFLUXDB_URL?)"
    )
    probe_env = {
        "POPWATCH_TOKEN": "pw1_x",
        "POPWATCH_PROBE_ID": "p",
        "POPWATCH_COLLECTOR_URL": "http://c:8080",
        "POPWATCH_METRICS_LISTEN": "127.0.0.1:9553",
        "POPWATCH_BATCH_S": "2",
    }
    assert load_config(None, env=probe_env) == CollectorConfig()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"POPWATCH_LISTEN": "127.0.0.1:99999"},
            "POPWATCH_LISTEN: '127.0.0.1:99999': port must be 1-65535 "
            "(expected host:port, e.g. 0.0.0.0:8080)",
        ),
        (
            {"POPWATCH_SPOOL_MAX_BYTES": "1GB"},
            "POPWATCH_SPOOL_MAX_BYTES: expected an integer >= 1024, got '1GB'",
        ),
        ({"POPWATCH_INFLUXDB_API": "v3"}, "POPWATCH_INFLUXDB_API: 'v3' is not one of auto, v1, v2"),
        (
            {"POPWATCH_INFLUXDB_URL": "127.0.0.1:8086"},
            "POPWATCH_INFLUXDB_URL: '127.0.0.1:8086' is not an http(s) URL with a host; "
            "did you mean http://127.0.0.1:8086?",
        ),
        (
            {"POPWATCH_INFLUXDB_URL": "influxdb:8086"},
            "POPWATCH_INFLUXDB_URL: 'influxdb:8086' is not an http(s) URL with a host; "
            "did you mean http://influxdb:8086?",
        ),
        (
            {"POPWATCH_TLS_CERT": "/etc/popwatch/cert.pem"},
            "POPWATCH_TLS_KEY: required with tls_cert (the certificate's private key)",
        ),
    ],
)
def test_a_bad_variable_is_named_as_the_variable(env: dict[str, str], message: str) -> None:
    """A fault in a value from the environment names the variable, not the file key."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert str(info.value) == message


def test_a_bad_file_key_is_named_with_its_file(tmp_path: Path) -> None:
    """The same fault from the file names the file and the key."""
    conf = tmp_path / "collector.yaml"
    conf.write_text("influxdb_url: 127.0.0.1:8086\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    assert str(info.value) == (
        f"{conf}: influxdb_url: '127.0.0.1:8086' is not an http(s) URL with a host; "
        "did you mean http://127.0.0.1:8086?"
    )


def test_the_api_defaults_to_auto_and_values_ignore_case() -> None:
    """influxdb_api is auto unless set; V1 and INFO are taken as v1 and info; an empty
    variable leaves an unset key unset."""
    assert CollectorConfig().influxdb_api == "auto"
    cfg = load_config(
        None,
        env={"POPWATCH_INFLUXDB_API": "V1", "POPWATCH_LOG_LEVEL": "INFO", "POPWATCH_TARGETS": ""},
    )
    assert (cfg.influxdb_api, cfg.log_level, cfg.targets) == ("v1", "info", None)


def test_limits_are_a_section_with_variables_and_the_old_names(tmp_path: Path) -> None:
    """limits: keys come from the file, from POPWATCH_LIMITS_<KEY> (which wins), or by
    their old top-level names; a bad one is named where it came from, and bounds that
    contradict each other are refused."""
    conf = tmp_path / "c.yaml"
    conf.write_text("limits:\n  max_records: 500\nrecords_per_second: 30\n")
    cfg = load_config(conf, env={"POPWATCH_LIMITS_MAX_HEADERS": "40"})
    assert (cfg.limits.max_records, cfg.limits.records_per_second) == (500, 30.0)
    assert cfg.limits.max_headers == 40
    old = load_config(None, env={"POPWATCH_BURST_RECORDS": "7"})
    assert old.limits.burst_records == 7.0
    with pytest.raises(ConfigError) as err:
        load_config(conf, env={"POPWATCH_LIMITS_MAX_RECORDS": "lots"})
    assert str(err.value) == "POPWATCH_LIMITS_MAX_RECORDS: expected an integer >= 1, got 'lots'"
    conf.write_text("limits:\n  max_body_bytes: 9000000\n  max_decoded_bytes: 8000000\n")
    with pytest.raises(ConfigError) as err:
        load_config(conf, env={})
    assert str(err.value).startswith(
        f"{conf}: limits.max_decoded_bytes: 8000000 is less than max_body_bytes"
    )
    with pytest.raises(ConfigError, match=r"did you mean POPWATCH_LIMITS_MAX_RECORDS\?"):
        load_config(None, env={"POPWATCH_LIMITS_MAX_RECORD": "5"})


async def test_batch_ids_are_kept_as_long_as_records_are_taken(tmp_path: Path) -> None:
    """The batch-id table prunes what is older than limits.max_age_s, not a constant of
    its own: a batch retried within the age a record may have is still a duplicate."""
    from collector.ingest.batches import SeenBatches

    cfg = load_config(None, env={"POPWATCH_LIMITS_MAX_AGE_S": "1000"})
    seen = SeenBatches(tmp_path / "b.sqlite", keep_s=cfg.limits.max_age_s)
    t0 = 1_000_000.0
    seen.add("p", "old", t0)
    seen.add("p", "kept", t0 + 500)
    seen.flush()
    seen.add("p", "new", t0 + 1200)  # 1,200 s on: "old" is past max_age_s, "kept" is not
    seen.flush()
    assert (seen.seen("p", "old"), seen.seen("p", "kept"), seen.seen("p", "new")) == (
        False,
        True,
        True,
    )
    seen.close()


def test_every_rule_is_in_the_example_and_the_readme() -> None:
    """The rules table (collector/alerts/rules) is what the docs list: example.yaml's
    alerts.rules has one block per rule, each with every key of its settings (at their
    defaults: the example loads as the defaults), and the README's Alerts section names
    each rule, and says which ones a group may set."""
    import yaml

    from collector.alerts.config import TARGET_RULES
    from collector.alerts.rules import RULES

    example = yaml.safe_load(EXAMPLE.read_text())["alerts"]["rules"]
    assert list(example) == [r.name for r in RULES]
    for rule in RULES:
        assert set(example[rule.name]) == set(rule.settings.__struct_fields__), rule.name
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    alerts = readme[readme.index("\n## Alerts\n") :]
    alerts = alerts[: alerts.index("\n## ", 1)]
    for rule in RULES:
        assert f"**`{rule.name}`**" in alerts, rule.name
    assert ", ".join(f"`{name}`" for name in TARGET_RULES) in alerts
