"""The paper's language-model experiments in miniature: the --quick runs."""

import json
import math
import os

import keras
import pytest

from tests.bench.bench_module import load_bench
from tests.helpers import bundled_head

pytestmark = pytest.mark.subprocess


def read_table(path):
    """The first table of the file, by model."""
    with open(path) as file:
        text = file.read()
    first = text[text.index("\n| "):].split("\n\n")[0]
    lines = [line for line in first.splitlines() if line.startswith("| ")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(columns, cells)) for cells in (
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in lines[1:])}


def number(text):
    return float(text.replace(",", ""))


def small_corpus(tmp_path):
    """The first sentences of Brown's splits: the quick runs' corpus."""
    return [f"--{flag}_files={bundled_head(tmp_path, split, sentences)}"
            for flag, split, sentences in (("train", "train", 400),
                                           ("eval", "valid", 40),
                                           ("test", "test", 60))]


@pytest.mark.parametrize("experiment", ["capacity", "balancing"])
def test_quick_runs_write_the_tables(tmp_path, experiment):
    seeds = "1,2" if experiment == "capacity" else "1"
    # The balancing run also records learning curves.
    curves = ([] if experiment == "capacity"
              else ["--eval_every=2", "--curve_batches=2"])
    argv = ["--quick", f"--experiment={experiment}", f"--seeds={seeds}",
            *curves,
            "--out_dir", str(tmp_path / "out"), "--work_dir",
            str(tmp_path / "work"), *small_corpus(tmp_path)]
    bench = load_bench("paper_lm")
    path = bench.main(argv)
    rows = read_table(path)
    rows_dir = tmp_path / "out" / f"lm_{experiment}_rows"
    d, h, lstm = 8, 16, 4 * (8 * 8 + 8 * 8 + 8)  # --quick: width 8
    if experiment == "capacity":
        assert os.path.getsize(tmp_path / "out" / "lm_capacity.png") > 1000
        assert list(rows) == ["4xLSTM", "MoE-256-h"]
        assert sorted(os.listdir(rows_dir)) == [
            "4xLSTM-seed1.json", "4xLSTM-seed2.json", "MoE-256-h-seed1.json",
            "MoE-256-h-seed2.json"]
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
        for label, row in rows.items():
            per_seed = [float(v) for v in row["per seed"].split()]
            assert len(per_seed) == 2
            for seed, value in zip((1, 2), per_seed):
                with open(rows_dir / f"{label}-seed{seed}.json") as file:
                    stored = json.load(file)
                assert stored["seed"] == seed
                assert abs(stored["test perplexity"] - value) < 0.006
            # Four steps barely move a 300-word model from the uniform guess.
            assert all(100 < value < 1.2 * 300 for value in per_seed)
            assert abs(number(row["test perplexity (mean)"])
                       - sum(per_seed) / 2) < 0.006
            assert abs(number(row["spread (max - min)"])
                       - (max(per_seed) - min(per_seed))) < 0.011
            assert number(row["words/s"]) > 0
        # Each run kept its model and vocabulary for inspect_experts.py.
        run_dir = tmp_path / "work" / "capacity" / "MoE-256-h-seed2"
        assert {"model", "vocabulary.txt", "checkpoints", "logs"} <= set(
            os.listdir(run_dir))
        # Run again without one row: that run resumes from its last
        # checkpoint (no step left) and gives the same row; the others
        # are read back.
        with open(rows_dir / "MoE-256-h-seed2.json") as file:
            before = json.load(file)
        os.remove(rows_dir / "MoE-256-h-seed2.json")
        again = read_table(load_bench("paper_lm").main(argv))
        with open(rows_dir / "MoE-256-h-seed2.json") as file:
            after = json.load(file)
        # Throughput is that of the steps trained, here none.
        assert math.isnan(after.pop("words/s"))
        before.pop("words/s")
        assert after == before
        assert again["4xLSTM"] == rows["4xLSTM"]
        for column in ("per seed", "test perplexity (mean)", "parameters"):
            assert again["MoE-256-h"][column] == rows["MoE-256-h"][column]
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
        # Learning curves: the validation perplexity at steps 2 and 4 of
        # each run, in its row, in a table (mean over the one seed) and a
        # plot.
        with open(rows_dir / "0.2_0-seed1.json") as file:
            curve = json.load(file)["validation curve"]
        assert [step for step, _ in curve] == [2, 4]
        assert all(100 < value < 1.2 * 300 for _, value in curve)
        with open(path) as file:
            text = file.read()
        assert "| model | step 2 | step 4 |" in text
        assert (f"| w_importance / w_load = 0.2 / 0 | {curve[0][1]:.2f} | "
                f"{curve[1][1]:.2f} |") in text
        assert os.path.getsize(tmp_path / "out"
                               / "lm_balancing_curves.png") > 1000


def test_summary_means_skip_rows_without_a_speed():
    report = load_bench("_report")
    rows = [{"model": "a", "seed": seed, "parameters": 3,
             "test perplexity": value, "words/s": speed}
            for seed, value, speed in ((1, 10.0, 100.0), (2, 12.0, math.nan),
                                       (3, 11.0, 300.0))]
    (entry,) = report.summarize(rows, ["model"], ["words/s"])
    assert entry["mean"] == pytest.approx(11.0)
    assert entry["spread"] == pytest.approx(2.0)
    assert entry["words/s"] == pytest.approx(200.0)
    (entry,) = report.summarize(rows[1:2], ["model"], ["words/s"])
    assert math.isnan(entry["words/s"])


def test_hparams_reach_every_model_and_bad_keys_end_the_run(tmp_path):
    bench = load_bench("paper_lm")
    corpus = small_corpus(tmp_path)

    def built(*flags):
        args = bench.parse_args(["--quick", *flags, *corpus])
        experiment = bench.Experiment(args)
        return {label: experiment.build(preset, overrides, seed=1)
                for label, preset, overrides in bench.models_to_train(args)}

    for flags, expected in (([], 0.1), (["--hparams=dropout=0.3"], 0.3),
                            (["--hparams=dropout=0"], 0.0)):
        for model in built(*flags).values():
            assert model.dropout == expected
            assert model.get_config()["dropout"] == expected
    for flags, expected in (([], keras.activations.sigmoid),
                            (["--hparams=moe.output_activation=linear"],
                             keras.activations.linear)):
        (model,) = built("--models=MoE-256-h", *flags).values()
        (layer,) = model.moe_layers()
        assert layer.output_activation is expected
        assert model.get_config()["moe"]["expert_hidden_dim"] == 16  # 2 d

    def refused(*flags):
        with pytest.raises(SystemExit) as error:
            bench.models_to_train(bench.parse_args([*flags, *corpus]))
        return str(error.value)

    # moe.* changes the models with a MoE layer (MoE-256-h), not 4xLSTM;
    # a run whose models have no such layer is refused.
    models = built("--hparams=moe.output_activation=linear,dropout=0.2")
    assert [layer.output_activation for layer in
            models["MoE-256-h"].moe_layers()] == [keras.activations.linear]
    assert models["4xLSTM"].get_config() == built(
        "--models=4xLSTM", "--hparams=dropout=0.2")["4xLSTM"].get_config()
    assert "moe" in refused("--models=4xLSTM",
                            "--hparams=moe.output_activation=linear")
    assert "feed_forward" in refused("--models=MoE-4,4xLSTM",
                                     "--hparams=feed_forward.hidden_dim=8")
    # The bench sets the width, the experiment the expert width and the
    # balancing weights.
    assert "model_dim" in refused("--hparams=model_dim=8")
    assert "expert_hidden_dim" in refused(
        "--models=MoE-4", "--hparams=moe.expert_hidden_dim=8")
    assert "load_weight" in refused(
        "--experiment=balancing", "--hparams=moe.router_args.load_weight=0")
    assert "dropout" in refused("--hparams=dropout=1")
    assert "bogus" in refused("--hparams=bogus=1")
    with pytest.raises(SystemExit):
        bench.parse_args(["--hparams=dropout"])


def test_warmup_steps_give_the_papers_schedule(tmp_path):
    bench = load_bench("paper_lm")
    corpus = small_corpus(tmp_path)
    for flags, rates in (([], [3e-3, 3e-3, 3e-3]),
                         # steps 1, 100 (the peak) and 400: 1/sqrt(4)
                         (["--warmup_steps=100"], [3e-5, 3e-3, 1.5e-3])):
        args = bench.parse_args(["--quick", "--models=4xLSTM", *flags,
                                 *corpus])
        experiment = bench.Experiment(args)
        [(_, preset, overrides)] = bench.models_to_train(args)
        optimizer = experiment.build(preset, overrides, seed=1).optimizer
        learning_rate = optimizer._learning_rate
        assert [float(learning_rate(step) if callable(learning_rate)
                      else learning_rate) for step in (0, 99, 399)] == \
            pytest.approx(rates)
    with pytest.raises(SystemExit):
        bench.parse_args(["--warmup_steps=-1"])
