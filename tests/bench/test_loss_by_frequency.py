"""Test loss by the target word's rank: the --quick run, against an
independent cross-entropy, and its refusals."""

import gzip
import os

import keras
import numpy as np
import pytest

from sgmoe import data
from sgmoe import models
from tests.bench.bench_module import load_bench
from tests.bench.test_paper_lm import read_table

pytestmark = pytest.mark.subprocess


def cross_entropy(run_dir, sentences):
    """Mean exact-softmax cross-entropy of the targets, computed here, in
    one padded batch through Keras's loss."""
    vocabulary = data.WordVocabulary.load(run_dir)
    model = models.MoELanguageModel.from_preset(
        os.path.join(run_dir, "model"))
    length = max(len(words) for words in sentences) + 1
    inputs = np.zeros((len(sentences), length), np.int32)
    targets = np.zeros_like(inputs)
    for row, words in enumerate(sentences):
        ids = [vocabulary.token_to_id(word) for word in words]
        inputs[row, :len(ids) + 1] = [vocabulary.bos_id] + ids
        targets[row, :len(ids) + 1] = ids + [vocabulary.eos_id]
    losses = keras.ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(
            targets, model(inputs, training=False), from_logits=True))
    return float(losses[targets > 0].mean())


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("quick")
    load_bench("loss_by_frequency").main(["--quick", "--out_dir",
                                          str(out_dir)])
    return out_dir


def test_quick_run_splits_the_cross_entropy_by_target(quick):
    rows = read_table(quick / "loss_by_frequency.md")
    assert list(rows) == ["</S>", "<UNK>", "words ranked 1-100",
                          "words ranked 101-296", "all targets"]
    shares = [float(row["share"].rstrip("%")) for name, row in rows.items()
              if name != "all targets"]
    assert abs(sum(shares) - 100) < 0.3
    # One </S> per sentence.
    with gzip.open("data/brown.test.txt.gz", "rt") as file:
        sentences = [line.split() for line in file if line.split()][:40]
    targets = sum(len(words) + 1 for words in sentences)
    assert float(rows["</S>"]["share"].rstrip("%")) == pytest.approx(
        100 * 40 / targets, abs=0.06)
    for label in ("dense", "moe"):
        expected = cross_entropy(str(quick / label), sentences)
        assert float(rows["all targets"][label]) == pytest.approx(
            expected, abs=6e-4)
    # The groups' parts of the difference add up to the whole.
    column = "moe minus dense, share of all"
    parts = [float(row[column]) for name, row in rows.items()
             if name != "all targets"]
    assert sum(parts) == pytest.approx(float(rows["all targets"][column]),
                                       abs=3e-4)
    assert float(rows["all targets"][column]) == pytest.approx(
        float(rows["all targets"]["moe"])
        - float(rows["all targets"]["dense"]), abs=1.2e-3)


def test_models_of_other_vocabularies_and_one_run_are_refused(
        quick, tmp_path):
    bench = load_bench("loss_by_frequency")
    other = tmp_path / "other"
    data.WordVocabulary(["a", "b"]).save(str(other))
    with pytest.raises(SystemExit, match="has another vocabulary than"):
        bench.main([f"--run=a:{quick / 'dense'}", f"--run=b:{other}"])
    with pytest.raises(SystemExit, match="give --run at least twice"):
        bench.main([f"--run=a:{quick / 'dense'}"])
    with pytest.raises(SystemExit,
                       match="loss_by_frequency: .*missing.txt: no such"):
        bench.main([f"--run=a:{quick / 'dense'}", f"--run=b:{quick / 'moe'}",
                    f"--text_files={tmp_path / 'missing.txt'}"])
    with pytest.raises(SystemExit, match="--rank_bounds must increase"):
        bench.main([f"--run=a:{quick / 'dense'}",
                    f"--run=b:{quick / 'moe'}", "--rank_bounds=10,5"])


def test_runs_are_paired_in_order(quick, tmp_path):
    """moe's runs (moe, dense) against dense's (dense, dense): the pairs
    differ by d and 0, so the mean difference is d / 2, its spread |d|."""
    bench = load_bench("loss_by_frequency")
    single = read_table(quick / "loss_by_frequency.md")
    column = "moe minus dense, share of all"
    dense, moe = quick / "dense", quick / "moe"
    bench.main([f"--run=dense:{dense},{dense}", f"--run=moe:{moe},{dense}",
                "--max_sentences=40", f"--out={tmp_path / 'paired.md'}"])
    rows = read_table(tmp_path / "paired.md")
    for name, row in rows.items():
        difference = float(single[name][column])
        mean, spread = row[column].rstrip(")").split(" (")
        assert float(mean) == pytest.approx(difference / 2, abs=1e-4)
        assert float(spread) == pytest.approx(abs(difference), abs=1e-4)
