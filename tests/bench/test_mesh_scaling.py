"""bench/mesh_scaling.py --quick: weak scaling over 1-8 virtual devices."""

import math

import pytest

from tests.bench.bench_module import markdown_rows
from tests.bench.bench_module import run_bench

pytestmark = pytest.mark.subprocess


def number(cell):
    return float(cell.replace(",", ""))


def test_quick_run_keeps_the_work_per_device_constant():
    rows = markdown_rows(run_bench("mesh_scaling", "--quick"), "devices")
    assert [int(row["devices"]) for row in rows] == [1, 2, 4, 8]
    per_device = {number(row["per device"]) for row in rows}
    held = {number(row["expert w+slots MiB, device 0"]) for row in rows}
    # Experts and tokens grow with the devices; each device holds the same
    # experts' weights and slots (--quick: 4 experts, 4x5 tokens each).
    assert len(per_device) == 1 and len(held) == 1
    params_per_device = per_device.pop()
    for row in rows:
        devices = int(row["devices"])
        assert row["mesh"] == f"batch:1,model:{devices}"
        assert int(row["experts"]) == 4 * devices
        assert int(row["tokens"]) == 20 * devices
        assert number(row["expert params"]) == devices * params_per_device
        assert number(row["step ms"]) > 0
        assert math.isfinite(number(row["collectives MiB"]))
