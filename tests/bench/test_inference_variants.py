"""bench/inference_variants.py --quick: a pruned and a distilled preset of a
tiny teacher."""

import json
import os

import keras
import numpy as np
import pytest

from tests.bench.bench_module import load_bench

pytestmark = pytest.mark.subprocess


def test_quick_run_writes_a_pruned_and_a_distilled_preset(tmp_path):
    from sgmoe import data
    from sgmoe import models
    from sgmoe.layers import find_moe_layers

    module = load_bench("inference_variants")
    pruned_dir, student_dir = module.main(["--quick", "--out_dir",
                                           str(tmp_path)])
    teacher = models.MoELanguageModel.from_preset(tmp_path / "teacher")
    pruned = models.MoELanguageModel.from_preset(pruned_dir)
    student = models.MoELanguageModel.from_preset(student_dir)
    assert pruned.vocabulary is not None and student.vocabulary is not None

    # Pruned: the two experts the teacher used most on the first two
    # training batches, with their weights.
    usage = models.expert_usage(teacher, data.language_model_dataset(
        module.parse_args(["--quick"]).train_files, teacher.vocabulary, 4,
        48).take(2))
    (name, layer), = find_moe_layers(teacher).items()
    kept = np.sort(np.argsort(-usage[name], kind="stable")[:2])
    small = find_moe_layers(pruned)[name]
    assert small.num_experts == 2
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small.experts.weights[0]),
        keras.ops.convert_to_numpy(layer.experts.weights[0])[kept])

    # Student: one LSTM layer fewer, trained: it fits the training text
    # better than the same architecture untrained.
    assert student.get_config()["layer_types"] == ["lstm", "moe"]
    initial = models.MoELanguageModel.from_config(
        module.student_config(teacher) | {"seed": 1})
    initial.build((None, None))
    batches = data.language_model_dataset(
        module.parse_args(["--quick"]).train_files, teacher.vocabulary, 4,
        48, shuffle=True, seed=1, repeat=True).take(4)
    perplexity = {}
    for name, model in (("student", student), ("initial", initial)):
        model.compile(metrics=[models.Perplexity(padding_id=0)])
        perplexity[name] = model.evaluate(batches, verbose=0,
                                          return_dict=True)["perplexity"]
    assert perplexity["student"] < 0.95 * perplexity["initial"]
    with open(os.path.join(student_dir, "metadata.json")) as file:
        made_by = json.load(file)["made_by"]
    assert made_by["distilled_steps"] == 8 and made_by["alpha"] == 0.5

    # A second run keeps what is there.
    stamp = os.path.getmtime(os.path.join(student_dir, "metadata.json"))
    module.main(["--quick", "--out_dir", str(tmp_path)])
    assert os.path.getmtime(os.path.join(student_dir,
                                         "metadata.json")) == stamp
