"""Validation during training: at the right steps, without disturbing the
training logs, with the best model kept across resumed runs."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from sgmoe import models
from sgmoe.training import PeriodicEvaluation
from sgmoe.training import TrainingRun
from tests.training.test_moe_tensorboard import read_events


def language_model():
    model = models.MoELanguageModel.from_preset(
        "tiny_moe", vocabulary_size=20, padding_id=0, seed=3)
    # Compiled on JAX, where an uncompiled LSTM runs op by op; traced on
    # TensorFlow, where XLA would compile each batch shape.
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  metrics=[models.Perplexity(padding_id=0)],
                  jit_compile=keras.backend.backend() == "jax")
    model(keras.ops.zeros((1, 6), "int32"))
    return model


def stream(skip):
    """Batch i of a fixed, endless stream: the same in every run."""
    ids = np.random.default_rng(0).integers(1, 20, size=(64, 4, 7))
    batches = tf.data.Dataset.from_tensor_slices(ids).repeat()
    return batches.skip(skip).map(lambda b: (b[:, :-1], b[:, 1:]))


VALIDATION = tf.data.Dataset.from_tensor_slices(
    np.random.default_rng(1).integers(1, 20, size=(2, 4, 7))).map(
        lambda b: (b[:, :-1], b[:, 1:]))


def train(tmp_path, name, capsys, train_steps=7, eval_every=None):
    keras.utils.set_random_seed(5)
    model = language_model()
    run = TrainingRun(model, train_steps=train_steps, log_every=2,
                      model_dir=str(tmp_path / name), checkpoint_every=4,
                      validation_data=VALIDATION, eval_every=eval_every)
    run.fit(stream)
    return model, run, capsys.readouterr().out.splitlines()


def test_evaluates_at_multiples_and_at_the_end_keeping_the_best(
        tmp_path, capsys):
    plain, _, plain_lines = train(tmp_path, "plain", capsys)
    model, run, lines = train(tmp_path, "evaluated", capsys, eval_every=3)
    # The training lines are those of the run without validation: the
    # window means survive the evaluations between them.
    def untimed(lines):
        return [re.sub(r" elapsed=\S+| eta=\S+", "", line) for line in lines
                if "val_loss" not in line]

    assert untimed(lines) == untimed(plain_lines)
    assert len(untimed(lines)) == 4  # steps 2, 4, 6, 7
    # The same training (the MoE statistics variables aside, which hold
    # the last evaluation batch's).
    for got, expected in zip(model.trainable_weights,
                             plain.trainable_weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    validation = [line for line in lines if "val_loss" in line]
    assert [line.split()[0] for line in validation] == [
        "step=3/7", "step=6/7", "step=7/7"]
    # Each validation line follows the training line of its step, if any.
    assert lines.index(validation[-1]) == len(lines) - 1

    [evaluation] = [c for c in run.callbacks
                    if isinstance(c, PeriodicEvaluation)]
    steps = [step for step, _ in evaluation.history]
    losses = [logs["loss"] for _, logs in evaluation.history]
    assert steps == [3, 6, 7]
    assert run.final_validation() == evaluation.history[-1][1]
    # The last evaluation is of the final weights.
    final = model.evaluate(VALIDATION, verbose=0, return_dict=True)
    np.testing.assert_allclose(losses[-1], final["loss"], rtol=1e-6)
    np.testing.assert_allclose(evaluation.history[-1][1]["perplexity"],
                               final["perplexity"], rtol=1e-5)

    best_dir = tmp_path / "evaluated" / "best"
    with open(best_dir / "validation.json") as file:
        saved = json.load(file)
    assert saved["step"] == steps[int(np.argmin(losses))]
    assert saved["logs"]["loss"] == min(losses)
    best = models.MoELanguageModel.from_preset(str(best_dir))
    best.compile(loss=None, jit_compile=keras.backend.backend() == "jax")
    np.testing.assert_allclose(
        best.evaluate(VALIDATION, verbose=0), min(losses), rtol=1e-5)

    events = read_events(tmp_path / "evaluated" / "logs" / "validation")
    assert sorted(events["val/loss"][1]) == [3, 6, 7]
    np.testing.assert_allclose(float(events["val/loss"][1][7]), losses[-1],
                               rtol=1e-6)

    # A resumed run reads the best loss so far: a best model that no later
    # evaluation beats stays.
    saved["logs"]["loss"] = min(losses) / 1000
    (best_dir / "validation.json").write_text(json.dumps(saved))
    _, resumed, lines = train(tmp_path, "evaluated", capsys, train_steps=9,
                              eval_every=3)
    assert resumed.first_step == 7
    assert [line.split()[0] for line in lines if "val_loss" in line] == [
        "step=9/9"]
    assert not any(line.endswith(" best") for line in lines)
    with open(best_dir / "validation.json") as file:
        assert json.load(file)["step"] == saved["step"]


def test_a_run_resumed_at_a_due_step_validates_it_first(tmp_path, capsys):
    _, unbroken, _ = train(tmp_path, "unbroken", capsys, train_steps=8,
                           eval_every=4)
    # Stopped after the step-4 checkpoint, before the validation there.
    train(tmp_path, "stopped", capsys, train_steps=4)
    model, resumed, lines = train(tmp_path, "stopped", capsys, train_steps=8,
                                  eval_every=4)
    assert resumed.first_step == 4
    validation = [line.split()[0] for line in lines if "val_loss" in line]
    assert validation == ["step=4/8", "step=8/8"]
    # The catch-up comes before any training, and validates the step-4
    # weights: the unbroken run's values.
    assert lines[0].startswith("step=4/8 val_loss=")
    [(_, expected), _] = unbroken.periodic_evaluation.history
    [(step, got), _] = resumed.periodic_evaluation.history
    assert step == 4
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-6)
    events = read_events(tmp_path / "stopped" / "logs" / "validation")
    assert sorted(events["val/loss"][1]) == [4, 8]
    # A step its logs hold is not validated again: the unbroken run
    # continued from its step-8 checkpoint validates step 12 alone.
    _, _, lines = train(tmp_path, "unbroken", capsys, train_steps=12,
                        eval_every=4)
    assert [line.split()[0] for line in lines if "val_loss" in line] == [
        "step=12/12"]


def test_eval_every_needs_validation_data():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="`eval_every` needs "
                       "`validation_data`"):
        TrainingRun(model, train_steps=2, log_every=1, eval_every=1)
