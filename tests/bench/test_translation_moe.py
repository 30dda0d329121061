"""MoE against no-MoE translation in miniature: the --quick run."""

import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


def test_quick_run_writes_the_table(tmp_path):
    path = load_bench("translation_moe").main(
        ["--quick", "--out_dir", str(tmp_path)])
    with open(path) as file:
        text = file.read()
    assert "BLEU on 16 test pairs" in text and "tok:13a" in text
    rows = {}
    for line in text.splitlines()[4:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[1]] = [float(cell.replace(",", "")) for cell in cells[2:]]
    baseline, moe = rows["tiny_baseline"], rows["tiny_pyramid"]
    # By hand: encoder MoE 4 experts and decoder MoE 8 experts, each
    # 16 -> 32 -> 16 with biases; gates W_g and W_noise (16 x E each).
    experts = (4 + 8) * (16 * 32 + 32 + 32 * 16 + 16)
    assert (baseline[1], moe[1]) == (0, experts)
    assert moe[0] - baseline[0] == experts + 2 * 16 * (4 + 8)
    for parameters, _, minutes, loss, perplexity, bleu in (baseline, moe):
        # Four steps: still near the uniform guess over 400 pieces.
        assert 100 < perplexity < 1.5 * 400 and 0 <= bleu <= 100
        assert minutes > 0 and loss > 0
