"""MoE against dense translation models in miniature: the --quick run."""

import json
import math
import os

import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


def tables(text):
    """{metric: {model: cells}} of the markdown tables."""
    found, metric = {}, None
    for line in text.splitlines():
        if line.startswith("| model |"):
            metric = line.split("|")[3].strip().replace(" (mean)", "")
            found[metric] = {}
        elif line.startswith("| ") and metric and not line.startswith("|-"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            found[metric][cells[0]] = cells[1:]
        elif not line.startswith("|"):
            metric = None
    return found


def test_quick_run_writes_the_tables_and_resumes(tmp_path):
    bench = load_bench("translation_moe")
    argv = ["--quick", "--out_dir", str(tmp_path), "--seeds", "1,2",
            "--models", "MoE-16,MoE-1-Wide"]
    with open(bench.main(argv)) as file:
        text = file.read()
    assert "16 pairs" in text and "tok:13a" in text and "seeds 1,2" in text
    found = tables(text)
    assert set(found) == {"test BLEU", "test perplexity"}
    for metric, rows in found.items():
        assert list(rows) == ["MoE-16", "MoE-1-Wide"]
        for cells in rows.values():
            mean, spread = float(cells[1]), float(cells[2])
            per_seed = [float(value) for value in cells[3].split()]
            assert len(per_seed) == 2 and math.isclose(
                mean, sum(per_seed) / 2, abs_tol=0.006)
            assert math.isclose(spread, max(per_seed) - min(per_seed),
                                abs_tol=0.011)
            if metric == "test BLEU":
                assert all(0 <= value <= 100 for value in per_seed)
            else:  # four steps: near the uniform guess over 400 pieces
                assert all(100 < value < 600 for value in per_seed)
    # By hand: the pyramid's 4 + 8 experts of 16 -> 32 -> 16 with biases;
    # MoE-1-Wide one expert 16 -> 64 -> 16 in each of the two positions.
    experts = {"MoE-16": (4 + 8) * (16 * 32 + 32 + 32 * 16 + 16),
               "MoE-1-Wide": 2 * (16 * 64 + 64 + 64 * 16 + 16)}
    for model, count in experts.items():
        assert found["test BLEU"][model][4] == f"{count:,}"
    assert text.count("MoE-16 minus MoE-1-Wide, per seed: ") == 2
    rows_dir = tmp_path / "translation_rows"
    rows = sorted(os.listdir(rows_dir))
    assert rows == [f"{model}-seed{seed}.json" for model in (
        "MoE-1-Wide", "MoE-16") for seed in (1, 2)]
    row = json.loads((rows_dir / "MoE-16-seed2.json").read_text())
    assert row["seed"] == 2 and isinstance(row["example"], str)

    # A rerun reads the rows instead of training again: a changed row
    # shows up in the table.
    row["test BLEU"] = 99.0
    (rows_dir / "MoE-16-seed2.json").write_text(json.dumps(row))
    with open(bench.main(argv)) as file:
        assert "99.00" in tables(file.read())["test BLEU"]["MoE-16"][3]
