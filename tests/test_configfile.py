"""probe.configfile: every fault of a config file or a record, in our words, at its path.

The words come from the type at the fault's path and the value found there, not from
msgspec's message, so a msgspec release that rewords its errors changes nothing a user
or a probe reads (the fuzz test below holds every explanation free of msgspec's
formatting: backticks, ``$.`` paths, ``Expected``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.configfile import ConfigError, convert, explain, one_line, read_yaml
from probe.targets import TargetsFile
from probe.wire import Measurement


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    mode: Literal["a", "b"] = "a"
    count: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    factor: Annotated[float, msgspec.Meta(gt=1)] = 2.0
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=3, pattern="^x+$")] = "x"
    items: Annotated[list[int], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [1]
    )
    maybe: int | None = None
    flag: bool = False

    def __post_init__(self) -> None:
        if self.count == 7:
            raise ValueError("count: seven is not allowed here")
        if self.count == 8:
            raise ValueError("eight and mode a do not go together")


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    inner: list[Inner]
    limit: int = 5


CASES = [
    ({"inner": [{"mode": "c"}]}, "inner[0].mode", "'c' is not one of a, b"),
    ({"inner": [{"count": 0}]}, "inner[0].count", "expected an integer >= 1, got 0"),
    ({"inner": [{"count": "11"}]}, "inner[0].count", "expected an integer <= 10, got 11"),
    (
        {"inner": [{"count": "many"}]},
        "inner[0].count",
        "expected an integer from 1 to 10, got a string",
    ),
    ({"inner": [{"factor": 1}]}, "inner[0].factor", "expected a number > 1, got 1"),
    ({"inner": [{"name": ""}]}, "inner[0].name", "expected a string of at least 1 character"),
    ({"inner": [{"name": "xxxx"}]}, "inner[0].name", "expected a string of at most 3 characters"),
    ({"inner": [{"name": "y"}]}, "inner[0].name", "expected a string matching ^x+$"),
    ({"inner": [{"items": []}]}, "inner[0].items", "expected a list of at least 1 item"),
    ({"inner": [{"maybe": "x"}]}, "inner[0].maybe", "expected an integer or null, got a string"),
    ({"inner": [{"flag": "maybe"}]}, "inner[0].flag", "expected true or false, got a string"),
    ({"inner": [{"mdoe": "a"}]}, "inner[0].mdoe", "unknown key (did you mean mode?)"),
    ({"inner": {}}, "inner", "expected a list, got a mapping"),
    ({}, "inner", "required key is missing"),
    ({"inner": [{"count": 7}]}, "inner[0].count", "seven is not allowed here"),
    ({"inner": [{"count": 8}]}, "inner[0]", "eight and mode a do not go together"),
]


@pytest.mark.parametrize(("data", "path", "text"), CASES)
def test_each_fault_is_explained_at_its_path(data: dict[str, Any], path: str, text: str) -> None:
    """Wrong types, bounds, lengths, patterns, choices, unknown and missing keys, and a
    struct's own __post_init__ fault (moved onto its key when it names one)."""
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.convert(data, Outer, strict=False)
    fault = explain(Outer, data, err.value)
    assert (fault.path, fault.text) == (path, text)


def test_one_line_names_the_file_or_the_variable() -> None:
    """``FILE: path: fault``; a key set by a variable is named as the variable, with the
    value as given."""
    data = {"inner": [], "limit": "lots"}
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.convert(data, Outer, strict=False)
    assert one_line("f.yaml", Outer, data, err.value) == (
        "f.yaml: limit: expected an integer, got a string"
    )
    assert one_line("f.yaml", Outer, data, err.value, env={"limit": "POPWATCH_LIMIT"}) == (
        "POPWATCH_LIMIT: expected an integer, got 'lots'"
    )
    with pytest.raises(ConfigError, match=r"^f\.yaml: limit: expected an integer"):
        convert(data, Outer, "f.yaml")


def test_a_tagged_union_names_its_kinds() -> None:
    """A target of an unknown kind, and a record of an unknown kind, name the kinds."""
    data = {"targets": [{"kind": "ftp", "name": "x"}]}
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.convert(data, TargetsFile, strict=False)
    fault = explain(TargetsFile, data, err.value)
    assert (fault.path, fault.text) == (
        "targets[0].kind",
        "'ftp' is not one of dns, http, ping, trace",
    )
    record = {"kind": "dns", "ts": 1, "port": "x"}
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.convert(record, Measurement)
    assert explain(Measurement, record, err.value, strict=True).text.startswith(
        ("expected", "required key is missing")
    )


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
KEYS = ["kind", "ts", "target", "server", "port", "transport", "rtt_ms", "qname", "x"]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(KEYS), values, max_size=8),
    st.sampled_from(["dns", "http", "ping", "probe", "nope", 3]),
)
def test_no_explanation_is_msgspecs_text(record: dict[str, Any], kind: object) -> None:
    """Whatever a record holds, the reason for refusing it has none of msgspec's
    formatting: it is our words."""
    record = {**record, "kind": kind}
    try:
        msgspec.convert(record, Measurement)
    except msgspec.ValidationError as exc:
        text = explain(Measurement, record, exc, strict=True).text
        assert "`" not in text and "$." not in text and not text.startswith("Expected"), text


def test_read_yaml_refuses_a_file_over_its_bound(tmp_path: Any) -> None:
    """A file over the size bound is refused before it is parsed (one line)."""
    big = tmp_path / "big.yaml"
    big.write_text("targets: []\n" + "#" * 2000 + "\n")
    with pytest.raises(ConfigError, match=r"big\.yaml: over 1000 bytes: not read$"):
        read_yaml(big, max_bytes=1000)
    assert read_yaml(big) == {"targets": []}


def test_a_json_file_reads_as_the_same_yaml(tmp_path: Any) -> None:
    """JSON is read by the JSON parser (far less memory than YAML's node graph) into
    what the YAML parser reads from it; a flow mapping that is not strict JSON, or broken
    JSON, still goes to the YAML parser and its line and column."""
    import json

    import yaml

    doc = {"targets": [{"name": "a", "port": 53, "timeout": 1.5, "tls_verify": False}]}
    f = tmp_path / "t.json"
    f.write_text(json.dumps(doc, indent=1))
    assert read_yaml(f) == doc == yaml.safe_load(f.read_text())
    # and it was the JSON parser: YAML 1.1 reads 1e3 (no dot) as a string, JSON a number
    f.write_text('{"x": 1e3}')
    assert read_yaml(f) == {"x": 1000.0} != yaml.safe_load(f.read_text())
    f.write_text("{targets: [], probe: {id: x}}")
    assert read_yaml(f) == {"targets": [], "probe": {"id": "x"}}
    f.write_text('{"targets": [\n  {"name": "a"\n]}')
    with pytest.raises(ConfigError, match=r"t\.json: line 3 column \d+: not valid YAML"):
        read_yaml(f)
