"""The --quick modes of the kernel benchmarks: expert_matmul,
expert_remat_memory, optimizer_state and ragged_dot_cpu."""

import math
import re

import pytest

from sgmoe.layers import dispatch
from tests.bench.bench_module import markdown_rows
from tests.bench.bench_module import run_bench

pytestmark = pytest.mark.subprocess


def _number(cell):
    return float(cell.rstrip("x").replace(",", "").rstrip("%"))


def test_expert_matmul_times_every_product_at_the_layers_capacity():
    rows = markdown_rows(run_bench("expert_matmul", "--quick"), "E")
    # T = 256, k = 2, capacity factor 1 (moe_layer.py's quick sizes).
    assert [(int(row["E"]), int(row["C"])) for row in rows] == [
        (experts, dispatch.expert_capacity(256, experts, 2, 1.0))
        for experts in (4, 16)]
    for row in rows:
        times = [_number(cell) for name, cell in row.items()
                 if name not in ("E", "C")]
        assert len(times) == 4
        assert all(math.isfinite(value) and value > 0 for value in times)


def test_expert_remat_memory_never_costs_memory():
    text = run_bench("expert_remat_memory", "--quick", KERAS_BACKEND="jax")
    rows = markdown_rows(text, "MoE layers")
    assert [int(row["MoE layers"]) for row in rows] == [1, 2]
    stored = [_number(row["temp MiB, stored"]) for row in rows]
    remat = [_number(row["temp MiB, rematerialised"]) for row in rows]
    assert 0 < stored[0] < stored[1]  # activations grow with depth
    for row, kept, recomputed in zip(rows, stored, remat):
        assert 0 < recomputed <= kept
        assert _number(row["saved MiB"]) == pytest.approx(
            kept - recomputed, abs=0.011)


def test_optimizer_state_counts_the_papers_factored_moments():
    text = run_bench("optimizer_state", "--quick")
    assert "weight [4, 8, 16]: 512 values" in text
    values = {name.strip(): int(count.replace(",", "")) for name, count in
              re.findall(r"^(sgmoe FactoredAdam|keras \w+)\s+([\d,]+)\s",
                         text, re.M)}
    # Adam: two full-size moments. The paper's factored Adam (Appendix D):
    # no first moment, the second as row and column averages of each of
    # the 4 [8, 16] matrices.
    assert values["keras Adam"] == 2 * 512
    assert values["sgmoe FactoredAdam"] == 4 * (8 + 16)
    assert values["sgmoe FactoredAdam"] < values["keras Adafactor"]


def test_ragged_dot_cpu_reports_ratios_to_the_dense_floor():
    text = run_bench("ragged_dot_cpu", "--quick")
    floor = float(re.search(r"dense floor: ([\d.]+) ms", text).group(1))
    assert floor > 0
    rows = markdown_rows(text, "E")
    assert [int(row["E"]) for row in rows] == [4, 16]
    for row in rows:
        batched = _number(row["batched einsum ms"])
        assert batched > 0
        # Each ratio is its time over the floor (all printed rounded).
        assert _number(row["batched / floor"]) == pytest.approx(
            batched / floor, rel=0.01 / floor + 0.01 / batched + 0.01)
        if row["ragged_dot / floor"] != "-":  # it can run out of memory
            ragged = _number(row["ragged_dot ms"])
            assert _number(row["ragged_dot / floor"]) == pytest.approx(
                ragged / floor, rel=0.01 / floor + 0.01 / ragged + 0.01)
