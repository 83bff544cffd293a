"""Each probe's budget of new series (collector/ingest/series.py): records whose values a
record admitted before had cost a set lookup, with the verdicts and the budget's state of
charging each record on its own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from collector.ingest.series import SeriesBudget, values_of
from probe.wire import DnsRecord, PingRecord


def dns(target: str, site: str | None, qname: str = "a.") -> DnsRecord:
    return DnsRecord(
        ts=1,
        target=target,
        server="192.0.2.1",
        port=53,
        transport="udp",
        qname=qname,
        qtype="A",
        rcode="NOERROR",
        timestamping="kernel",
        rtt_ms=1.0,
        site=site,
    )


def ping(target: str) -> PingRecord:
    return PingRecord(ts=1, target=target, server="192.0.2.9", method="icmp", timestamping="kernel")


records = st.lists(
    st.one_of(
        st.builds(
            dns,
            st.sampled_from(["t1", "t2", "t3"]),
            st.sampled_from([None, "ams", "sin"]),
            st.sampled_from(["a.", "b."]),
        ),
        st.builds(ping, st.sampled_from(["t1", "p1"])),
    ),
    max_size=60,
)


@given(records, st.integers(0, 12))
def test_by_batch_the_verdicts_are_those_of_record_by_record(
    batch: list[DnsRecord | PingRecord], burst: int
) -> None:
    """With the clock still, the verdicts, the values remembered and the tokens left
    are those of admitting every record alone (a refused series stays refused: a value
    that others bring in costs the bucket as much as it saves the series)."""
    alone = SeriesBudget(per_hour=0, burst=burst, max_per_probe=1000, clock=lambda: 0.0)
    batched = SeriesBudget(per_hour=0, burst=burst, max_per_probe=1000, clock=lambda: 0.0)
    expected = [alone.admit("p", values_of(r)) for r in batch]
    first, second = batched.for_batch("p"), batched.for_batch("p")  # two batches
    half = len(batch) // 2
    assert [first(r) for r in batch[:half]] + [second(r) for r in batch[half:]] == expected
    assert batched.known("p") == alone.known("p")
    # the tokens left: one more new value is admitted by both, or refused by both
    one_more = [("target", "never-seen")]
    assert (batched.admit("p", one_more) is None) == (alone.admit("p", one_more) is None)


def test_a_thousand_records_of_two_series_cost_their_new_values_once() -> None:
    """1,000 records of two series (targets t1 and t2, the same site, qname and server)
    take the five tokens of their five values; every record of a third series, which
    needs three more, is refused with the budget's reason."""
    budget = SeriesBudget(per_hour=0, burst=5, max_per_probe=1000, clock=lambda: 0.0)
    admit = budget.for_batch("p")
    two = [dns("t1", "ams") if i % 2 else dns("t2", "ams") for i in range(1000)]
    assert all(admit(r) is None for r in two)
    assert budget.known("p") == 5  # t1, t2, ams, a., 192.0.2.1
    third = [admit(dns("t3", "sin", "c.")) for _ in range(10)]
    assert len(set(third)) == 1 and third[0] is not None
    assert third[0].startswith("over this probe's budget of new series")
    assert budget.known("p") == 5
