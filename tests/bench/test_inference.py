"""The inference benchmark's --quick run: two tiny presets measured."""

import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


def test_quick_run_measures_each_model(tmp_path):
    path = load_bench("inference").main(
        ["--quick", "--out_dir", str(tmp_path)])
    with open(path) as file:
        lines = [line for line in file.read().splitlines()
                 if line.startswith("| ")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert columns == [
        "model", "validation perplexity", "parameters", "ops/timestep",
        "µs/token, batch 1", "speed-up, batch 1", "tokens/s, batch 4",
        "speed-up, batch 4"]
    rows = {cells[0]: [float(cell.replace(",", "")) for cell in cells[1:]]
            for cells in ([cell.strip() for cell in line.strip("|").split("|")]
                          for line in lines[1:])}
    assert list(rows) == ["moe", "dense"]
    moe, dense = rows["moe"], rows["dense"]
    # Untrained models over a 200-word vocabulary (204 ids): near uniform.
    for perplexity, parameters, ops, latency, _, throughput, _ in (moe,
                                                                   dense):
        assert 100 < perplexity < 400
        assert latency > 0 and throughput > 0
    # By hand: the dense model is the MoE model without its MoE layer
    # (4 experts 16 -> 32 -> 16 with biases, W_g and W_noise 16 x 4).
    assert moe[1] - dense[1] == 4 * (16 * 32 + 32 + 32 * 16 + 16) + 2 * 64
    # The first model is the reference of the speed-ups.
    assert moe[4] == 1.0 and moe[6] == 1.0
    # A ratio printed to 0.01 (rounding: at most 0.005) of latencies
    # printed to 0.01 µs.
    assert dense[4] == pytest.approx(moe[3] / dense[3], rel=1e-3, abs=0.005)
