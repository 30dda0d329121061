"""bench/constant_compute.py: a quick run writes its table and plot."""

import re

import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


# The --quick sizes: d=16, h=32, experts 4 and 16.
MODEL_DIM, HIDDEN_DIM = 16, 32


def table_rows(markdown):
    """The main table's body rows as lists of cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("| experts | expert params |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_quick_run_writes_table_and_plot(tmp_path):
    load_bench("constant_compute").main(
        ["--quick", "--out_dir", str(tmp_path)])

    with open(tmp_path / "constant_compute.png", "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "constant_compute.md").read_text(encoding="utf-8")
    assert "python bench/constant_compute.py --quick --out_dir" in markdown
    assert re.search(r"Machine: .*\d+ cores .*keras", markdown)

    rows = table_rows(markdown)
    assert [row[0] for row in rows] == ["4", "16"]
    for row in rows:
        num_experts = int(row[0])
        # Each expert: W_in [d, h], b_in [h], W_out [h, d], b_out [d].
        per_expert = 2 * MODEL_DIM * HIDDEN_DIM + HIDDEN_DIM + MODEL_DIM
        assert int(row[1].replace(",", "")) == num_experts * per_expert
        # Four series, each µs/token then its ratio to E=4; all measured
        # at these sizes (far below --dense_limit_gb).
        times = [float(cell) for cell in row[2::2]]
        ratios = [float(cell.rstrip("x")) for cell in row[3::2]]
        assert len(times) == len(ratios) == 4
        assert all(value > 0 for value in times + ratios)
    first_times = [float(cell) for cell in rows[0][2::2]]
    assert rows[0][3::2] == ["1.00x"] * 4
    # The E=16 ratios are its times over E=4's (both printed to 3 digits).
    for value, ratio, first in zip(
            (float(cell) for cell in rows[1][2::2]),
            (float(cell.rstrip("x")) for cell in rows[1][3::2]), first_times):
        assert abs(ratio - value / first) <= 0.02 * ratio
