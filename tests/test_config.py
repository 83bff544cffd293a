"""Config and targets files: validated at load, one-line errors naming file, key and fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.config import Target, load_config, load_targets
from probe.configfile import ConfigError, parse_hostport

DATA = Path(__file__).parent / "data" / "config"
EXAMPLE = Path(__file__).parent.parent / "probe" / "example.yaml"
INVALID = sorted(DATA.glob("invalid-*.yaml"))


def test_example_config_loads_with_every_key() -> None:
    """probe/example.yaml loads, and it sets every key of the config and of each target kind."""
    from probe.config import HttpTarget, ProbeConfig, Target
    from probe.targets import PingTarget

    cfg = load_config(EXAMPLE, env={})
    assert cfg.id == "probe-fra-1"
    assert [t.name for t in cfg.targets] == [
        "anycast-ns",
        "unicast-ns",
        "resolver-dot",
        "www",
        "anycast-ping",
    ]
    assert isinstance(cfg.targets[3], HttpTarget)
    text = EXAMPLE.read_text()
    fields = (
        *ProbeConfig.__struct_fields__,
        *Target.__struct_fields__,
        *HttpTarget.__struct_fields__,
        *PingTarget.__struct_fields__,
    )
    for field in fields:
        assert f"\n{field}:" in text or f" {field}:" in text, f"example.yaml lacks {field}"


def test_example_targets_defaults() -> None:
    """Defaults: RD off for authoritative targets, on for resolvers; IP servers pin the family."""
    cfg = load_config(EXAMPLE, env={})
    anycast, unicast, resolver, *_ = cfg.targets
    assert anycast.recursion is False and resolver.recursion is True
    assert anycast.families == [4]  # an IPv4 literal
    assert unicast.families == [4, 6]  # a host name: both families, separate series
    assert unicast.identify == "chaos" and unicast.transports == ["udp", "tcp"]
    assert isinstance(anycast, Target) and isinstance(unicast, Target)
    assert isinstance(resolver, Target)


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_targets_file_gives_its_exact_error(path: Path) -> None:
    """Each invalid file gives exactly the one-line error written on its first line."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    expected = first.removeprefix("# expect: ").replace("{file}", str(path))
    with pytest.raises(ConfigError) as info:
        load_targets(path)
    assert str(info.value) == expected
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    """A file that is not there is named with the reason."""
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        load_targets(tmp_path / "nope.yaml")


def test_empty_file(tmp_path: Path) -> None:
    """An empty file says so."""
    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.yaml: \(top level\): expected a mapping"):
        load_targets(p)


def test_env_overrides_file(tmp_path: Path) -> None:
    """A POPWATCH_* variable wins over the same key in the file."""
    targets = tmp_path / "t.yaml"
    targets.write_text(
        "targets:\n  - {name: x, topology: unicast, server: 127.0.0.1, queries: [{qname: a}]}\n"
    )
    conf = tmp_path / "probe.yaml"
    conf.write_text("id: from-file\nlog_level: info\n")
    cfg = load_config(
        conf,
        env={
            "POPWATCH_PROBE_ID": "from-env",
            "POPWATCH_LOG_LEVEL": "DEBUG",
            "POPWATCH_TARGETS": str(targets),
        },
    )
    assert cfg.id == "from-env" and cfg.log_level == "debug"
    assert [t.name for t in cfg.targets] == ["x"]


def test_token_file(tmp_path: Path) -> None:
    """POPWATCH_TOKEN_FILE: the token is read from the file; a missing or empty file is one
    line naming the key."""
    token = tmp_path / "token"
    secret = "pw1_0123456789abcdef_" + "s" * 43
    token.write_text(secret + "\n")
    env = {"POPWATCH_COLLECTOR_URL": "http://127.0.0.1:1", "POPWATCH_TOKEN_FILE": str(token)}
    assert load_config(None, env=env).token == secret
    token.write_text("\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert str(info.value) == f"POPWATCH_TOKEN_FILE: {token} is empty"
    token.unlink()
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert str(info.value) == f"POPWATCH_TOKEN_FILE: No such file or directory: {token}"


def test_bad_probe_config_key(tmp_path: Path) -> None:
    """The probe config is checked the same way as targets files."""
    conf = tmp_path / "probe.yaml"
    conf.write_text("concurrency: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    assert str(info.value) == f"{conf}: concurrency: expected an integer >= 1, got 0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("192.0.2.1:5353", ("192.0.2.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("ns1.example.net:54", ("ns1.example.net", 54)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    """HOST[:PORT] with IPv6 in brackets."""
    assert parse_hostport(text, 53) == expected


@pytest.mark.parametrize("text", ["[::1", "127.0.0.1:0", "127.0.0.1:x", ":53", "[::1]x"])
def test_parse_hostport_rejects(text: str) -> None:
    """Malformed HOST[:PORT] is a ValueError that names the input."""
    with pytest.raises(ValueError, match="'"):
        parse_hostport(text, 53)


def test_a_bad_variable_is_named_not_its_key() -> None:
    """A setting from the environment that does not validate is reported by its variable,
    the name the user wrote (was: the key, which appears nowhere in their setup)."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"POPWATCH_CONCURRENCY": "lots"})
    assert (
        str(info.value) == "POPWATCH_CONCURRENCY: expected an integer from 1 to 100000, got 'lots'"
    )


def test_every_key_has_its_variable(tmp_path: Path) -> None:
    """Every key of the probe config is also POPWATCH_<KEY> (POPWATCH_PROBE_ID for id,
    POPWATCH_TARGETS for targets_file), and the variable wins over the file."""
    conf = tmp_path / "probe.yaml"
    conf.write_text("concurrency: 5\nbatch_s: 2\n")
    cfg = load_config(
        conf,
        env={"POPWATCH_CONCURRENCY": "7", "POPWATCH_BATCH_S": "0.5", "POPWATCH_PROBE_ID": "p1"},
    )
    assert (cfg.concurrency, cfg.batch_s, cfg.id) == (7, 0.5, "p1")


def test_an_unknown_key_gets_a_suggestion(tmp_path: Path) -> None:
    """A misspelt config key is named with the nearest real one."""
    conf = tmp_path / "probe.yaml"
    conf.write_text("concurency: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    assert str(info.value) == f"{conf}: concurency: unknown key (did you mean concurrency?)"


def test_qtype_in_any_case(tmp_path: Path) -> None:
    """`qtype: soa` in a file is SOA, as `--qtype soa` is on the command line (was: refused
    in files only)."""
    f = tmp_path / "t.yaml"
    f.write_text(
        "targets:\n  - {name: a, topology: unicast, server: 127.0.0.1, "
        "queries: [{qname: example.com, qtype: soa}, {qname: example.com, qtype: Aaaa}]}\n"
    )
    (t,) = load_targets(f)
    assert isinstance(t, Target)
    assert [q.qtype for q in t.queries] == ["SOA", "AAAA"]


def test_an_ambiguous_ipv6_port_is_refused() -> None:
    """`::1:5300` could be port 5300 of ::1 or the address ::1:5300: refused with both
    spellings (was: quietly [::1:5300]:53)."""
    with pytest.raises(ValueError, match=r"ambiguous: write \[::1\]:5300 .* or \[::1:5300\]"):
        parse_hostport("::1:5300", 53)
    assert parse_hostport("[::1]:5300", 53) == ("::1", 5300)
    assert parse_hostport("[::1:5300]", 53) == ("::1:5300", 53)
    assert parse_hostport("2001:db8::53", 53) == ("2001:db8::53", 53)  # not an address + port
