"""bench/gpu_paper_lm.py on the CPU at a tiny size: prepare, the
time-boxed run of concurrent workers (common step count, timed turns),
and the report."""

import json

import numpy as np
import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


def _prepare(bench, tmp_path, train_batches, test_batches):
    """Batches of 8 sentences of the bundled manuals, 200 words, one
    padded length (16): one compilation of each step per worker."""
    data = tmp_path / "data"
    bench.main(["prepare", "--out", str(data), "--vocabulary_size", "200",
                "--batch_size", "8", "--max_length", "16",
                "--bucket_boundaries", "",
                "--max_train_batches", str(train_batches),
                "--max_test_batches", str(test_batches)])
    return data


def test_prepare_run_report(tmp_path):
    bench = load_bench("gpu_paper_lm")
    data = _prepare(bench, tmp_path, train_batches=20, test_batches=30)
    summary = json.loads((data / "summary.json").read_text())
    assert summary["train"]["batches"] == 20
    assert summary["vocabulary_size"] == 200  # special ids included
    _check_batches_are_the_datasets(bench, data)

    out = tmp_path / "out"
    bench.main(["run", "--data", str(data), "--out_dir", str(out),
                "--models", "MoE-4", "--seeds", "1,2",
                "--model_dim", "8", "--budget_seconds", "150",
                "--calibration_steps", "3", "--max_train_steps", "25",
                "--repeats", "1", "--inference_batch", "2",
                "--prompt_length", "3", "--new_tokens", "4"])
    result = json.loads((out / "rows.json").read_text())
    rows = {(row["model"], row["seed"]): row for row in result["rows"]}
    assert sorted(rows) == [("MoE-4", 1), ("MoE-4", 2)]
    assert summary["train"]["batches"] < 25
    for row in rows.values():  # the same steps for both: 25, past one
        assert row["train steps"] == 25 and row["complete"]  # epoch
        assert 1 < row["test perplexity"] < 1000
        assert row["warm-up steps"] == 1  # one padded length
    # Only the first seed is timed.
    assert rows["MoE-4", 1]["µs/token, batch 1"] > 0
    assert rows["MoE-4", 1]["tokens/s, batch 2"] > 0
    assert "µs/token, batch 1" not in rows["MoE-4", 2]

    table = tmp_path / "table.md"
    bench.main(["report", "--rows", str(out / "rows.json"), "--out",
                str(table)])
    lines = [line for line in table.read_text().splitlines()
             if line.startswith("| ")]
    assert lines[0].startswith("| model | run | steps |")
    quality = [line for line in lines if line.startswith("| MoE-4 | 1 |")]
    assert len(quality) == 2  # a quality row and a speed row


class _FailedOnDevice:
    """What Keras's logs hold after a device failure: an array whose
    conversion to a float raises."""

    def __float__(self):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")


class _Model:
    def __init__(self, loss):
        self.loss = loss

    def train_on_batch(self, inputs, targets, return_dict=False):
        assert return_dict
        return {"loss": self.loss, "perplexity": 3.0}


def test_train_step_raises_what_keras_swallowed():
    bench = load_bench("gpu_paper_lm")
    assert bench._train_step(_Model(1.5), None, None) == {
        "loss": 1.5, "perplexity": 3.0}
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        bench._train_step(_Model(_FailedOnDevice()), None, None)


def test_test_perplexity_is_the_same_in_pieces(tmp_path):
    """Cutting test batches into pieces of --eval_batch rows leaves the
    token-weighted perplexity unchanged, padded rows included."""
    bench = load_bench("gpu_paper_lm")
    data = _prepare(bench, tmp_path, train_batches=2, test_batches=5)
    model = bench.build_model(dict(model="MoE-4", model_dim=8, seed=1,
                                   learning_rate=1e-3), 200)
    arrays = np.load(data / "batches.npz")
    test = bench.Batches(arrays, "test")
    whole = bench._test_perplexity(model, test, 8)
    assert 1 < whole < 1000
    for rows in (3, 5):
        assert bench._test_perplexity(model, test, rows) == pytest.approx(
            whole, rel=1e-5)


def _check_batches_are_the_datasets(bench, prepared):
    """The stored test batches give back the dataset's (inputs, targets)
    exactly, every </S> target included (a first version stored the
    inputs plus one column and lost them)."""
    from sgmoe import data

    arrays = np.load(prepared / "batches.npz")
    test = bench.Batches(arrays, "test")
    vocabulary = data.WordVocabulary.build(
        bench.os.path.join(bench.DATA_DIR, "manuals.train.txt.gz"),
        vocabulary_size=200)
    expected = data.language_model_dataset(
        bench.os.path.join(bench.DATA_DIR, "manuals.test.txt.gz"),
        vocabulary, 8, 16, bucket_boundaries=[]).take(30).as_numpy_iterator()
    ends = sentences = 0
    for position, (inputs, targets) in enumerate(expected):
        got_inputs, got_targets = test.batch(position)
        rows = len(inputs)  # the last batch is padded with empty rows
        np.testing.assert_array_equal(got_inputs[:rows], inputs)
        np.testing.assert_array_equal(got_targets[:rows], targets)
        assert not got_targets[rows:].any()
        ends += int(np.sum(got_targets == vocabulary.eos_id))
        sentences += rows
    assert ends == sentences > 0  # one </S> target per sentence
