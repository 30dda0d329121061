"""bench/inference_dispatch.py --quick: both plans timed, same outputs."""

import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


def test_quick_run_times_both_plans(tmp_path):
    # main asserts that the two plans give the same outputs.
    path = load_bench("inference_dispatch").main(
        ["--quick", "--out", str(tmp_path / "table.md")])
    with open(path) as file:
        lines = [line for line in file.read().splitlines()
                 if line.startswith("| ")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert columns[:3] == ["experts", "tokens", "experts in use"]
    rows = [dict(zip(columns, (float(cell.replace(",", "")) for cell in
                               line.strip("|").split("|"))))
            for line in lines[1:]]
    assert [(row["experts"], row["tokens"]) for row in rows] == [(16, 1),
                                                                 (16, 5)]
    for row in rows:
        # k = 4: one token uses 4 experts at most, five tokens 16 at most.
        assert 1 <= row["experts in use"] <= min(16, 4 * row["tokens"])
        assert all(row[name] > 0 for name in columns if name.endswith("ms"))
        # The ratio of the two times, up to the rounding to 0.01 of the
        # times and of the ratio itself.
        before, now = row["buffer (before) ms"], row["blocks (now) ms"]
        ratio = before / now
        assert row["before / now"] == pytest.approx(
            ratio, abs=ratio * (0.005 / before + 0.005 / now) + 0.005)
