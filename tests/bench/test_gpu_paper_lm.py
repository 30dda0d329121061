"""bench/gpu_paper_lm.py on the CPU at a tiny size: prepare, the
time-boxed run of concurrent workers (common step count, timed turns),
and the report."""

import json

import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


def test_prepare_run_report(tmp_path):
    bench = load_bench("gpu_paper_lm")
    data = tmp_path / "data"
    bench.main(["prepare", "--out", str(data), "--vocabulary_size", "200",
                "--batch_size", "8", "--max_train_batches", "20",
                "--max_test_batches", "30"])
    summary = json.loads((data / "summary.json").read_text())
    assert summary["train"]["batches"] == 20
    assert summary["vocabulary_size"] == 200  # special ids included

    out = tmp_path / "out"
    bench.main(["run", "--data", str(data), "--out_dir", str(out),
                "--models", "4xLSTM,MoE-4", "--seeds", "1,2",
                "--model_dim", "8", "--budget_seconds", "150",
                "--calibration_steps", "3", "--max_train_steps", "25",
                "--repeats", "1", "--inference_batch", "2",
                "--prompt_length", "3", "--new_tokens", "4"])
    result = json.loads((out / "rows.json").read_text())
    rows = {(row["model"], row["seed"]): row for row in result["rows"]}
    assert sorted(rows) == [("4xLSTM", 1), ("4xLSTM", 2), ("MoE-4", 1),
                            ("MoE-4", 2)]
    for row in rows.values():  # the same steps for everyone: 25, past
        assert row["train steps"] == 25 and row["complete"]  # one epoch
        assert 1 < row["test perplexity"] < 1000
    # Matched ops/timestep at width 8 but for the MoE's W_g and W_noise
    # (8 x 4 each), as in the paper's table at 512.
    assert rows["MoE-4", 1]["ops/timestep"] - rows["4xLSTM", 1][
        "ops/timestep"] == 2 * 8 * 4
    # Only the first seed is timed, in turn.
    for model in ("4xLSTM", "MoE-4"):
        assert rows[model, 1]["µs/token, batch 1"] > 0
        assert rows[model, 1]["tokens/s, batch 2"] > 0
        assert "µs/token, batch 1" not in rows[model, 2]

    table = tmp_path / "table.md"
    bench.main(["report", "--rows", str(out / "rows.json"), "--out",
                str(table)])
    lines = [line for line in table.read_text().splitlines()
             if line.startswith("| ")]
    assert lines[0].startswith("| model | run | steps |")
    quality = [line for line in lines if line.startswith("| 4xLSTM | 1 |")]
    assert len(quality) == 2  # a quality row and a speed row
