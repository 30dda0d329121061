"""bench/students_and_pruning.py: quick runs write their tables, and a
second run resumes from the finished rows instead of training again."""

import json
import math

import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


def table(path):
    lines = open(path).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in lines[start + 2:] if line.startswith("|")]


# The pruning experiment's --quick runs the same code paths (training,
# evaluation, resume) with prune_experts, which tests/models tests; one
# experiment keeps the suite's time down.
@pytest.mark.parametrize("experiment, labels", [
    ("students", [["teacher"], ["student, labels only"], ["student, KD"]]),
])
def test_quick_run_writes_table_and_resumes(tmp_path, experiment, labels):
    script = load_bench("students_and_pruning")
    argv = ["--quick", f"--experiment={experiment}",
            f"--out_dir={tmp_path}"]
    path = script.main(argv)
    rows = table(path)
    assert [row[:len(labels[0])] for row in rows] == labels
    for row in rows:
        assert math.isfinite(float(row[len(labels[0]) + 1]))  # mean
    rows_dir = tmp_path / f"{experiment}_rows"
    saved = [json.loads(p.read_text()) for p in sorted(rows_dir.iterdir())]
    assert len(saved) == 3 and {row["seed"] for row in saved} == {1}
    # Smaller models have fewer parameters.
    parameters = [int(row[len(labels[0])].replace(",", "")) for row in rows]
    assert parameters[0] > max(parameters[1:])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    script.Run.train = no_training
    assert table(script.main(argv)) == rows
