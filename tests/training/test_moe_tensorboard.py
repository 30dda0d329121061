"""MoETensorBoard: event files read back with TensorBoard's own reader."""

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from sgmoe.evaluation import expert_load_history
from sgmoe.layers import MixtureOfExperts, SwitchRouter
from sgmoe.layers import find_moe_layers
from sgmoe.training import MoETensorBoard
from sgmoe.training import _logs
from tests.training.recording import STEP_SECONDS, FakeClock, Recorder

BATCH, LENGTH, DIM, NUM_EXPERTS = 2, 5, 16, 4
TOKENS_PER_STEP = BATCH * LENGTH


class LinearRate(keras.optimizers.schedules.LearningRateSchedule):
    """lr = 0.01 * s at step s (Keras passes s - 1 completed iterations)."""

    def __call__(self, step):
        return 0.01 * (keras.ops.cast(step, "float32") + 1.0)


def build_model():
    """Input -> MoE (noisy top-k) -> sub-model [MoE (switch)] -> Dense."""
    block_inputs = keras.Input((LENGTH, DIM))
    switch = SwitchRouter(NUM_EXPERTS, z_loss_weight=1e-3, seed=2,
                          name="router")
    block = keras.Model(block_inputs, MixtureOfExperts(
        NUM_EXPERTS, 8, router=switch, capacity_factor=1.0,
        name="moe_b")(block_inputs), name="block")
    inputs = keras.Input((LENGTH, DIM))
    hidden = MixtureOfExperts(NUM_EXPERTS, 8, k=2, capacity_factor=1.0,
                              seed=1, name="moe_a")(inputs)
    outputs = keras.layers.Dense(DIM)(block(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(LinearRate()), loss="mse")
    return model, [model.get_layer("moe_a"), block.get_layer("moe_b")]


def data(num_samples, seed):
    rng = np.random.RandomState(seed)
    return (rng.randn(num_samples, LENGTH, DIM).astype("float32"),
            rng.randn(num_samples, LENGTH, DIM).astype("float32"))


def read_events(log_dir):
    """{tag: (plugin name, {step: numpy value})} from the event files."""
    accumulator = plugin_event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={plugin_event_accumulator.TENSORS: 0})
    accumulator.Reload()
    events = {}
    for tag in accumulator.Tags()[plugin_event_accumulator.TENSORS]:
        plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
        events[tag] = (plugin, {
            event.step: tensor_util.make_ndarray(event.tensor_proto)
            for event in accumulator.Tensors(tag)})
    return events


def cv(values):
    return np.std(values) / np.mean(values)


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(_logs, "monotonic_clock", clock)
    return clock


def test_writes_moe_statistics_and_training_curves(tmp_path, fake_clock):
    model, moe_layers = build_model()
    recorder = Recorder(moe_layers)
    x, y = data(5 * BATCH, seed=0)
    history = model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
        validation_data=data(2 * BATCH, seed=1),
        callbacks=[fake_clock, recorder, MoETensorBoard(
            tmp_path, update_freq=3, tokens_per_step=TOKENS_PER_STEP)])
    events = read_events(tmp_path)

    # Every 3 steps, and at the end of each 5-step epoch; each value is
    # the mean over the steps since the previous write (its window).
    windows = {3: [1, 2, 3], 5: [4, 5], 6: [6], 9: [7, 8, 9], 10: [10]}
    logged_steps = sorted(windows)
    aux_names = {"moe_a": ["importance_loss", "load_loss"],
                 "moe_b": ["load_balancing_loss", "z_loss"]}
    # Tokens x choices of each layer's call: every assignment is either
    # computed or dropped.
    assignments = {"moe_a": TOKENS_PER_STEP * 2, "moe_b": TOKENS_PER_STEP}
    for layer_name, names in aux_names.items():
        assert sorted(moe_layers[["moe_a", "moe_b"].index(layer_name)]
                      .auxiliary_losses) == names
        for statistic in ["cv_importance", "cv_load", "max_over_mean_load",
                          "cv_dispatched", "max_over_mean_dispatched",
                          "dropped_fraction"] + names:
            plugin, values = events[f"moe/{layer_name}/{statistic}"]
            assert plugin == "scalars"
            assert sorted(values) == logged_steps
        for stats in (recorder.steps[s]["layers"][layer_name]
                      for s in range(1, 11)):
            assert (stats["dispatched"].sum() + stats["expert_dropped"].sum()
                    == assignments[layer_name])
            np.testing.assert_allclose(
                stats["expert_dropped"].sum() / assignments[layer_name],
                stats["dropped"], rtol=1e-6)

    for step in logged_steps:
        recorded = recorder.steps[step]
        for layer_name in recorded["layers"]:
            prefix = f"moe/{layer_name}/"
            window = [recorder.steps[s]["layers"][layer_name]
                      for s in windows[step]]

            def mean(name, window=window):
                return np.mean([stats[name] for stats in window], axis=0)

            def logged(name, prefix=prefix, step=step):
                return float(events[prefix + name][1][step])

            np.testing.assert_allclose(
                logged("cv_importance"), cv(mean("importance")), rtol=1e-5)
            np.testing.assert_allclose(
                logged("cv_load"), cv(mean("load")), rtol=1e-5)
            np.testing.assert_allclose(
                logged("max_over_mean_load"),
                np.max(mean("load")) / np.mean(mean("load")), rtol=1e-5)
            np.testing.assert_allclose(
                logged("cv_dispatched"), cv(mean("dispatched")), rtol=1e-5)
            np.testing.assert_allclose(logged("dropped_fraction"),
                                       mean("dropped"), rtol=1e-5)
            for name in recorded["layers"][layer_name]["aux"]:
                np.testing.assert_allclose(
                    logged(name),
                    np.mean([stats["aux"][name] for stats in window]),
                    rtol=1e-5)
            for histogram, name in [("expert_load", "load"),
                                    ("expert_dispatched", "dispatched"),
                                    ("expert_dropped", "expert_dropped")]:
                plugin, histograms = events[prefix + histogram]
                assert plugin == "histograms"
                buckets = histograms[step]
                assert buckets.shape == (NUM_EXPERTS, 3)
                np.testing.assert_array_equal(buckets[:, 0], np.arange(4))
                np.testing.assert_array_equal(buckets[:, 1], np.arange(1, 5))
                np.testing.assert_allclose(buckets[:, 2], mean(name),
                                           rtol=1e-5, atol=1e-6)

        loss = recorded["logs"]["loss"]
        np.testing.assert_allclose(events["train/loss"][1][step], loss,
                                   rtol=1e-6)
        np.testing.assert_allclose(events["train/perplexity"][1][step],
                                   np.exp(loss), rtol=1e-5)
        np.testing.assert_allclose(events["train/learning_rate"][1][step],
                                   0.01 * step, rtol=1e-6)
        np.testing.assert_allclose(events["train/words_per_second"][1][step],
                                   TOKENS_PER_STEP / STEP_SECONDS, rtol=1e-6)

    # What `sgmoe.evaluation.expert_load_history` reads back for the load
    # heatmap of scripts/inspect_experts.py: each window's shares.
    for layer_name in ("moe_a", "moe_b"):
        steps, shares = expert_load_history(str(tmp_path), layer_name)
        np.testing.assert_array_equal(steps, logged_steps)
        expected = np.array([np.mean(
            [recorder.steps[s]["layers"][layer_name]["dispatched"]
             for s in windows[step]], axis=0) for step in logged_steps])
        np.testing.assert_allclose(
            shares, expected / expected.sum(axis=1, keepdims=True),
            rtol=1e-5)
    assert expert_load_history(str(tmp_path), "no_such_layer") is None

    # Validation ran after step 10 (it changed the last-call statistics)
    # but left the window alone: the window logged at 10 is step 10's.
    assert not np.allclose(
        recorder.steps[10]["layers"]["moe_a"]["load"],
        keras.ops.convert_to_numpy(moe_layers[0].expert_load))

    assert sorted(events["val/loss"][1]) == [5, 10]
    for epoch, step in enumerate([5, 10]):
        val_loss = history.history["val_loss"][epoch]
        np.testing.assert_allclose(events["val/loss"][1][step], val_loss,
                                   rtol=1e-6)
        np.testing.assert_allclose(events["val/perplexity"][1][step],
                                   np.exp(val_loss), rtol=1e-5)
    assert not any(tag.startswith("train/val_") for tag in events)


def test_epoch_updates_constant_rate_and_no_token_count(tmp_path):
    model, _ = build_model()
    model.compile(optimizer=keras.optimizers.SGD(0.003), loss="mse")
    x, y = data(3 * BATCH, seed=0)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
              callbacks=[MoETensorBoard(tmp_path, update_freq="epoch",
                                        histograms=False)])
    events = read_events(tmp_path)
    assert sorted(events["train/learning_rate"][1]) == [3, 6]
    np.testing.assert_allclose(events["train/learning_rate"][1][6], 0.003,
                               rtol=1e-6)
    assert sorted(events["moe/moe_a/cv_load"][1]) == [3, 6]
    assert "train/words_per_second" not in events
    assert not any(tag.endswith("expert_load") for tag in events)


def test_a_loss_beyond_float32_perplexity_is_logged_not_fatal(tmp_path):
    # exp(381) overflows float32 (a loss spike, or the first steps of the
    # bundled tiny translation preset); it is written as +inf.
    model, _ = build_model()
    callback = MoETensorBoard(tmp_path, update_freq=1, histograms=False)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_train_batch_begin(0)
    callback.on_train_batch_end(0, {"loss": 381.0, "huge": 1e300})
    callback.on_train_end()
    events = read_events(tmp_path)
    assert events["train/perplexity"][1][1] == np.inf
    assert events["train/huge"][1][1] == np.inf
    np.testing.assert_allclose(events["train/loss"][1][1], 381.0)


def test_layers_with_the_same_path_get_distinct_names():
    def block(name):
        inputs = keras.Input((LENGTH, DIM))
        return keras.Model(
            inputs, MixtureOfExperts(NUM_EXPERTS, 8, k=2, name="moe")(inputs),
            name=name)

    inputs = keras.Input((LENGTH, DIM))
    first, second = block("first"), block("second")
    model = keras.Model(inputs, second(first(inputs)))
    found = find_moe_layers(model)
    assert list(found) == ["first/moe", "second/moe"]
    assert found["first/moe"] is first.get_layer("moe")
    assert found["second/moe"] is second.get_layer("moe")


@pytest.mark.parametrize("kwargs, message", [
    ({"update_freq": 0}, "update_freq"),
    ({"update_freq": "batch"}, "update_freq"),
    ({"tokens_per_step": -1}, "tokens_per_step"),
])
def test_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoETensorBoard(tmp_path, **kwargs)


def test_a_process_that_does_not_write_restarts_the_windows(tmp_path):
    # In a multi-process run only one process writes; the others must
    # restart the statistics windows at the same steps (assignments are
    # collective), and write no file.
    model, moe_layers = build_model()
    x, y = data(4 * BATCH, seed=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[
        MoETensorBoard(tmp_path / "logs", update_freq=3, write=False)])
    assert not (tmp_path / "logs").exists()
    # Reset after step 3 and at the end (step 4): the window is empty.
    for layer in moe_layers:
        assert float(keras.ops.convert_to_numpy(layer.window_steps)) == 0.0
