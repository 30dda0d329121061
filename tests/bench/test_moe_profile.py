"""bench/moe_profile.py --quick: every part of a dropless step timed."""

import math

import pytest

from tests.bench.bench_module import markdown_rows
from tests.bench.bench_module import run_bench

pytestmark = pytest.mark.subprocess


def test_quick_run_times_every_part_against_the_floors():
    rows = markdown_rows(run_bench("moe_profile", "--quick"), "experts")
    assert [int(row["experts"]) for row in rows] == [4, 16]
    for row in rows:
        times = {name: float(cell) for name, cell in row.items()
                 if name.endswith(" ms")}
        # Two columns are differences of timings and may be 0 or negative.
        differences = ("plan ms (rest)", "dispatch + combine ms")
        assert all(math.isfinite(value) for value in times.values())
        assert all(value > 0 for name, value in times.items()
                   if name not in differences), times
        for name in ("step / floor", "experts / floor",
                     "experts / batched floor"):
            ratio = float(row[name].rstrip("x"))
            assert math.isfinite(ratio) and ratio > 0, name
        # The floor is the larger of the compute and memory floors; the
        # ratios are of the printed times (each rounded to 0.1 ms).
        step = times["step ms"]
        floor = max(times["T*k floor ms"], times["memory floor ms"])
        assert float(row["step / floor"].rstrip("x")) == pytest.approx(
            step / floor, rel=0.05 / floor + 0.05 / step + 0.01)
