"""A trace against the same probe's trace from before (collector/alerts/paths.py): where
the path changed, the hops added and gone, the hop the round trip grew from, the site
at the end, and the words an operator reads; the operator's prefix -> ASN file. The
traces over real routers, and the path events read back from a real InfluxDB, are in
tests/test_trace.py; the alerts that carry them, in the lab (tests/test_lab.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.alerts.asn import AsnFileError, AsnTable
from collector.alerts.paths import Hop, Trace, compare

KEY = ("p1", "ap-south", "anycast", "4", "udp", "198.19.53.53")


def trace(*hops: tuple[str | None, float | None], site: str = "", reached: bool = True) -> Trace:
    """A trace whose hop ``i`` (from 1) answered from ``hops[i-1]`` in that many ms."""
    made = tuple(Hop(i, a, ms) for i, (a, ms) in enumerate(hops, 1))
    path_id = "|".join(a or "*" for a, _ in hops)  # any text that tells paths apart
    return Trace(KEY, 1, path_id, reached, site, made)


SIN = trace(("198.18.12.1", 0.1), ("198.18.22.3", 39.0), ("198.19.53.53", 39.2), site="sin")


def test_a_failover_is_a_change_after_the_last_common_hop_to_another_site() -> None:
    ams = trace(("198.18.12.1", 0.1), ("198.18.20.3", 68.5), ("198.19.53.53", 68.7), site="ams")
    d = compare(SIN, ams)
    assert d.changed and d.after == 1
    assert (d.added, d.gone) == (("198.18.20.3",), ("198.18.22.3",))
    assert d.grew_ms is not None and round(d.grew_ms, 1) == 29.5 and d.grew_from == 2
    assert d.words("ap-south") == (
        "ap-south: path changed after hop 1 (198.18.12.1); now ends at ams (was sin); "
        "hops added 198.18.20.3, gone 198.18.22.3; +29.5 ms from hop 2"
    )


def test_the_same_path_slower_from_a_hop_names_that_hop() -> None:
    slow = trace(("198.18.12.1", 0.2), ("198.18.22.3", 189.0), ("198.19.53.53", 189.3), site="sin")
    d = compare(SIN, slow)
    assert not d.changed and d.after == 3 and (d.added, d.gone) == ((), ())
    assert d.words("ap-south") == (
        "ap-south: path unchanged (3 hops, ends at sin); +150.1 ms from hop 2"
    )


def test_a_hop_grown_alone_is_not_where_the_time_went() -> None:
    """A router slow to answer (its own control plane) at hop 2, the end as fast as
    before: no growth to report."""
    busy = trace(("198.18.12.1", 0.1), ("198.18.22.3", 80.0), ("198.19.53.53", 39.3), site="sin")
    d = compare(SIN, busy)
    assert d.grew_ms is not None and abs(d.grew_ms) < 1
    assert d.words("x") == "x: path unchanged (3 hops, ends at sin)"


def test_a_growth_from_the_first_hop_on_and_noise_below_the_line() -> None:
    far = trace(("198.18.12.1", 20.1), ("198.18.22.3", 59.0), ("198.19.53.53", 59.2), site="sin")
    assert compare(SIN, far).grew_from == 1
    near = trace(("198.18.12.1", 0.1), ("198.18.22.3", 44.0), ("198.19.53.53", 44.0), site="sin")
    d = compare(SIN, near)
    assert d.grew_from is None and d.words("x") == "x: path unchanged (3 hops, ends at sin)"


def test_a_hop_that_did_not_answer_is_not_a_new_path() -> None:
    lossy = trace(("198.18.12.1", 0.1), (None, None), ("198.19.53.53", 39.2), site="sin")
    d = compare(SIN, lossy)
    assert lossy.path_id != SIN.path_id  # the id changes ...
    assert not d.changed and (d.added, d.gone) == ((), ())  # ... the path does not
    assert compare(lossy, SIN).changed is False


def test_a_destination_no_longer_reached_says_where_the_answers_stop() -> None:
    dark = trace(("198.18.12.1", 0.1), (None, None), (None, None), (None, None), reached=False)
    d = compare(SIN, dark)
    assert d.changed and d.after == 1 and d.grew_ms is None
    assert d.words("ap-south") == (
        "ap-south: path changed after hop 1 (198.18.12.1); no longer reaches 198.19.53.53 "
        "(last answer: 198.18.12.1)"
    )


def test_a_longer_path_and_a_change_at_the_first_hop() -> None:
    longer = trace(
        ("198.18.12.1", 0.1), ("198.18.22.3", 39.0), ("10.0.0.1", 39.1), ("198.19.53.53", 39.3),
        site="sin",
    )  # fmt: skip
    d = compare(SIN, longer)
    assert d.changed and d.after == 2 and d.added == ("10.0.0.1",) and d.gone == ()
    assert d.words("x") == (
        "x: path changed after hop 2 (198.18.22.3); still ends at sin; hops added 10.0.0.1, "
        "gone none"
    )
    other = trace(("198.18.99.1", 0.1), ("198.18.22.3", 39.0), ("198.19.53.53", 39.2), site="sin")
    assert compare(SIN, other).words("x") == (
        "x: path changed at hop 1; still ends at sin; hops added 198.18.99.1, gone 198.18.12.1"
    )


def test_without_a_trace_from_before_it_says_so_and_where_the_path_ends() -> None:
    d = compare(None, SIN)
    assert not d.changed
    assert d.words("ap-south (p1, IPv4)") == (
        "ap-south (p1, IPv4): no trace from before the onset to compare with; now 3 hops, "
        "ends at sin"
    )
    no_site = trace(("198.18.12.1", 0.1), ("192.0.2.53", 3.0))
    assert compare(None, no_site).words("x").endswith("ends at 192.0.2.53")


def test_the_event_of_a_difference_carries_both_paths_and_the_hops() -> None:
    ams = trace(("198.18.12.1", 0.1), ("198.18.20.3", 68.5), ("198.19.53.53", 68.7), site="ams")
    e = compare(SIN, ams).event(2, "words")
    assert (e.added, e.gone) == ("198.18.20.3", "198.18.22.3")
    assert (e.kind, e.probe, e.region, e.target, e.family) == (
        "path", "p1", "ap-south", "anycast", "4",
    )  # fmt: skip
    assert (e.from_site, e.to_site, e.from_path, e.to_path) == (
        "sin", "ams", SIN.path_id, ams.path_id,
    )  # fmt: skip
    assert (e.after_hop, e.grew_from_hop, e.flaps_1h, e.message) == (1, 2, 2, "words")
    line = e.to_line()
    assert line.startswith("event,") and "kind=path" in line and 'message="words"' in line


ASN_FILE = """; IP-ASN32-DAT file
; Original source: an operator's own table
198.18.12.0/24\t64500
198.18.0.0/15\t64499
198.18.20.0/24\tAS64520
198.18.22.0/24\t64522
fd00:1:0:12::/64\t64500
198.19.53.0/24   64553
"""


def test_the_asn_file_is_read_as_pyasn_writes_it_longest_prefix_first(tmp_path: Path) -> None:
    path = tmp_path / "ipasn.dat"
    path.write_text(ASN_FILE)
    table = AsnTable.load(path)
    assert len(table) == 6
    assert table.lookup("198.18.12.1") == 64500  # the /24, not the /15
    assert table.lookup("198.18.99.1") == 64499
    assert table.lookup("fd00:1:0:12::1") == 64500
    assert table.lookup("192.0.2.1") is None and table.lookup("not an address") is None
    # the AS path: each AS once, unknown and silent hops left out
    assert table.path(["198.18.12.1", None, "192.0.2.1", "198.18.22.3", "198.19.53.53"]) == [
        64500, 64522, 64553,
    ]  # fmt: skip


def test_a_bad_asn_file_says_which_line_and_why(tmp_path: Path) -> None:
    path = tmp_path / "ipasn.dat"
    for text, why in (
        ("198.18.0.0/15\t64500\nnonsense\n", ":2: expected PREFIX and ASN, got 'nonsense'"),
        ("10.0.0.0/33 64500\n", ":1: '10.0.0.0/33' is no prefix"),
        ("10.0.0.0/8 AS-FOO\n", ":1: 'AS-FOO' is no AS number"),
        ("10.0.0.0/8 4294967296\n", ":1: '4294967296' is no AS number"),
    ):
        path.write_text(text)
        with pytest.raises(AsnFileError) as err:
            AsnTable.load(path)
        assert str(err.value) == f"{path}{why}", err.value
    with pytest.raises(AsnFileError, match="cannot read it"):
        AsnTable.load(tmp_path / "missing.dat")


def test_with_the_asn_table_the_words_name_the_networks(tmp_path: Path) -> None:
    """The last common hop's AS, and the AS path where it changed; an unchanged path
    says nothing more."""
    path = tmp_path / "ipasn.dat"
    path.write_text(ASN_FILE)
    table = AsnTable.load(path)
    ams = trace(("198.18.12.1", 0.1), ("198.18.20.3", 68.5), ("198.19.53.53", 68.7), site="ams")
    assert compare(SIN, ams).words("ap-south", table) == (
        "ap-south: path changed after hop 1 (198.18.12.1, AS64500); now ends at ams (was "
        "sin); hops added 198.18.20.3, gone 198.18.22.3; AS path now 64500 64520 64553 (was "
        "64500 64522 64553); +29.5 ms from hop 2"
    )
    assert compare(SIN, SIN).words("x", table) == "x: path unchanged (3 hops, ends at sin)"
