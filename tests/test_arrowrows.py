"""``arrowrows.pylist`` gives exactly ``Table.to_pylist()``'s values (and types), faster."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.ui.arrowrows import pylist, row_lists

MAX_US = 4_102_444_800_000_000  # 2100-01-01


def same(a: list, b: list) -> bool:
    """Equal values, equal types, the same zone objects, the same JSON."""
    if a != b or msgspec.json.encode(a, enc_hook=str) != msgspec.json.encode(b, enc_hook=str):
        return False
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            va, vb = ra[k], rb[k]
            if type(va) is not type(vb):
                return False
            if isinstance(va, dt.datetime) and va.tzinfo is not vb.tzinfo:
                return False
    return True


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-MAX_US, MAX_US)), max_size=50),
    unit=st.sampled_from(["s", "ms", "us", "ns"]),
    tz=st.sampled_from([None, "UTC", "+00:00", "Europe/Paris", "Asia/Kolkata"]),
)
def test_timestamps_equal_pyarrows_own(values, unit, tz):
    scale = {"s": 1_000_000, "ms": 1000, "us": 1, "ns": 1}[unit]
    ints = [None if v is None else v // scale for v in values]
    col = pa.array(ints, pa.timestamp(unit, tz=tz))
    table = pa.table({"t": pa.chunked_array([col[: len(col) // 2], col[len(col) // 2 :]])})
    assert same(pylist(table), table.to_pylist())
    assert row_lists(table) == [list(r.values()) for r in table.to_pylist()]


def test_every_other_type_is_pyarrows_too():
    table = pa.table(
        {
            "bucket": pa.array([0, 3600, None], pa.timestamp("s", tz="UTC")),
            "agent": ["a", None, "c"],
            "n": pa.array([1, 2, None], pa.uint64()),
            "cost": [0.1, None, 2.5],
            "tags": [["x"], [], None],
            "m": pa.array([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64())),
            "d": pa.array([dt.date(2025, 1, 1), None, dt.date(2025, 3, 1)]),
            "id": pa.array([uuid.uuid4().bytes, None, uuid.uuid4().bytes], pa.uuid()),
        }
    )
    assert same(pylist(table), table.to_pylist())
    assert pylist(table.slice(0, 0)) == [] == table.slice(0, 0).to_pylist()
    empty = pa.table({"x": [1, 2]}).drop_columns(["x"])  # no columns, two rows
    assert pylist(empty) == empty.to_pylist()
