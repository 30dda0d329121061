"""The paper's language-model experiments in miniature: the --quick runs."""

import importlib.util
import math
import os

import pytest

pytestmark = pytest.mark.subprocess

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "paper_lm", os.path.join(ROOT, "bench", "paper_lm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_table(path):
    with open(path) as file:
        lines = [line for line in file.read().splitlines()
                 if line.startswith("| ")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(columns, cells)) for cells in (
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in lines[1:])}


def number(text):
    return float(text.replace(",", ""))


@pytest.mark.parametrize("experiment", ["capacity", "balancing"])
def test_quick_runs_write_the_tables(tmp_path, experiment):
    path = load_bench().main(["--quick", f"--experiment={experiment}",
                              "--out_dir", str(tmp_path)])
    rows = read_table(path)
    d, h, lstm = 8, 16, 4 * (8 * 8 + 8 * 8 + 8)  # --quick: width 8
    if experiment == "capacity":
        assert os.path.getsize(tmp_path / "lm_capacity.png") > 1000
        assert list(rows) == ["4xLSTM", "MoE-256-h"]
        # By hand: four LSTMs; or two LSTMs, 16 x 16 experts d -> 2d -> d
        # without biases, a primary and 16 secondary noisy gates (W_g and
        # W_noise, d x 16 each).
        assert number(rows["4xLSTM"]["parameters"]) == 4 * lstm
        assert number(rows["MoE-256-h"]["parameters"]) == (
            2 * lstm + 256 * 2 * d * h + 17 * 2 * d * 16)
        # ops: 4 x 4 d x 2d multiply-adds; MoE: 4 experts per token and the
        # primary gate plus the 2 chosen groups' gates.
        assert number(rows["4xLSTM"]["ops/timestep"]) == 4 * 4 * d * 2 * d
        assert number(rows["MoE-256-h"]["ops/timestep"]) == (
            2 * 4 * d * 2 * d + 4 * 2 * d * h + 3 * 2 * d * 16)
        for row in rows.values():
            # Four steps barely move a 300-word model from the uniform guess.
            assert 100 < number(row["test perplexity"]) < 1.2 * 300
            assert number(row["words/s"]) > 0
    else:
        assert list(rows) == ["w_importance / w_load = 0 / 0",
                              "w_importance / w_load = 0.2 / 0"]
        for row in rows.values():
            cv_importance = number(row["CV(Importance)"])
            cv_load = number(row["CV(Load)"])
            max_over_mean = number(row["max/mean Load"])
            # 256 experts: CV at most sqrt(255), max/mean at most 256.
            assert 0 <= cv_importance <= math.sqrt(255) + 1e-6
            assert 0 <= cv_load <= math.sqrt(255) + 1e-6
            assert 1 <= max_over_mean <= 256
            assert 1 < number(row["eval max/mean tokens"]) <= 256
            # Evaluation drops nothing by default.
            assert number(row["eval dropped"]) == 0
