"""MoELanguageModel: architecture against NumPy, training, saving, presets."""

import gzip
import json
import os
import pathlib
import subprocess
import sys
from collections import Counter

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import HierarchicalMixtureOfExperts
from sgmoe.layers import MixtureOfExperts
from sgmoe.models import DeepFeedForward
from sgmoe.models import MoELanguageModel
from sgmoe.models import Perplexity
from sgmoe.models import ProjectedLSTMCell
from sgmoe.models.language_model_presets import PRESETS
from sgmoe.models.config_overrides import merge
from tests.models import numpy_reference as ref

ROOT = pathlib.Path(__file__).resolve().parents[2]
BATCH, LENGTH = 2, 5


def infer(model, ids):
    """Inference logits; compiled on JAX, whose op-by-op calls are slow."""
    if keras.backend.backend() == "jax":
        return ops.convert_to_numpy(model.predict(ids, verbose=0))
    return ops.convert_to_numpy(model(ids, training=False))


def randomize(model, seed=0, scale=0.3):
    """Random weights everywhere, gates included (they start at zero)."""
    rng = np.random.RandomState(seed)
    for weight in model.trainable_weights:
        weight.assign(scale * rng.randn(*weight.shape).astype("float32"))


def numpy_weights(layer):
    return [ops.convert_to_numpy(w) for w in layer.weights]


def lstm_weights(layer):
    cell = layer.cell
    weights = [ops.convert_to_numpy(w) for w in (
        cell.kernel, cell.recurrent_kernel, cell.bias)]
    if isinstance(cell, ProjectedLSTMCell):
        weights.append(ops.convert_to_numpy(cell.projection_kernel))
    return weights


def softmax_logits(model, x):
    kernel, bias = numpy_weights(model.get_layer("softmax"))
    return x @ kernel.T + bias


def test_architecture_matches_numpy():
    """embedding -> LSTM -> sigmoid(MoE) -> LSTM -> softmax, each residual."""
    model = MoELanguageModel(**merge(
        PRESETS["tiny_moe"], {"moe": {"capacity_factor": 8.0}}))
    ids = np.random.RandomState(1).randint(0, 100, (BATCH, LENGTH))
    model.build(ids.shape)
    randomize(model)
    logits = infer(model, ids)

    embedding = numpy_weights(model.get_layer("embedding"))[0]
    moe = model.get_layer("moe")
    assert isinstance(moe, MixtureOfExperts) and moe.k == 2
    x0 = embedding[ids]
    x1 = x0 + ref.lstm(x0, *lstm_weights(model.get_layer("lstm_1")))
    experts = moe.experts
    mixture = ref.top_k_mixture(
        x1.reshape(-1, 16), ops.convert_to_numpy(moe.router.kernel), 2,
        *(ops.convert_to_numpy(w) for w in (
            experts.kernel_in, experts.bias_in, experts.kernel_out,
            experts.bias_out))).reshape(x1.shape)
    # The MoE residual step: its output goes through a sigmoid, then is
    # added to its input.
    x2 = x1 + ref.sigmoid(mixture)
    x3 = x2 + ref.lstm(x2, *lstm_weights(model.get_layer("lstm_2")))
    np.testing.assert_allclose(logits, softmax_logits(model, x3), rtol=1e-4,
                               atol=1e-4)
    # Without the sigmoid the result would be different.
    x2_raw = x1 + mixture
    x3_raw = x2_raw + ref.lstm(x2_raw, *lstm_weights(model.get_layer("lstm_2")))
    assert np.abs(logits - softmax_logits(model, x3_raw)).max() > 1e-2


def test_projected_lstm_and_deep_feed_forward_match_numpy():
    """The baselines' parts: LSTMP (LSTM-2048-512) and a deep single expert
    (MoE-1-Deep), at width 16, with dropout that is off in inference."""
    model = MoELanguageModel(
        vocabulary_size=30, model_dim=16, lstm_units=24,
        layer_types=("lstm", "feed_forward"),
        feed_forward={"hidden_dim": 20, "num_hidden_layers": 3}, dropout=0.4,
        seed=3)
    ids = np.random.RandomState(2).randint(0, 30, (BATCH, LENGTH))
    model.build(ids.shape)
    randomize(model, scale=0.2)
    lstm_layer = model.get_layer("lstm")
    assert isinstance(lstm_layer.cell, ProjectedLSTMCell)
    assert lstm_layer.cell.units == 24
    assert isinstance(model.get_layer("feed_forward"), DeepFeedForward)

    x0 = numpy_weights(model.get_layer("embedding"))[0][ids]
    x1 = x0 + ref.lstm(x0, *lstm_weights(lstm_layer))
    network = model.get_layer("feed_forward")
    x2 = x1 + ref.sigmoid(ref.feed_forward(
        x1, numpy_weights(network)[0::2], numpy_weights(network)[1::2]))
    logits = infer(model, ids)
    np.testing.assert_allclose(logits, softmax_logits(model, x2), rtol=1e-4,
                               atol=1e-4)
    # Dropout acts in training only.
    training_logits = ops.convert_to_numpy(model(ids, training=True))
    assert np.abs(training_logits - logits).max() > 1e-3


def test_layers_follow_the_preset():
    model = MoELanguageModel.from_preset("tiny_moe_h")
    assert [layer.name for layer in model.layers] == [
        "embedding", "embedding_dropout", "lstm_1", "lstm_1_dropout", "moe",
        "moe_dropout", "lstm_2", "lstm_2_dropout", "softmax"]
    moe = model.get_layer("moe")
    assert isinstance(moe, HierarchicalMixtureOfExperts)
    assert (moe.expert_groups, moe.experts_per_group, moe.k_primary,
            moe.k_secondary) == (2, 4, 2, 2)
    assert keras.activations.serialize(moe.output_activation) == "sigmoid"
    four = MoELanguageModel.from_preset("4xlstm_512", vocabulary_size=10)
    assert [layer.name for layer in four.layers if "dropout" not in
            layer.name] == ["embedding", "lstm_1", "lstm_2", "lstm_3",
                            "lstm_4", "softmax"]


def test_loss_and_perplexity_leave_out_padding():
    model = MoELanguageModel.from_preset("tiny_moe", padding_id=0)
    rng = np.random.RandomState(3)
    ids = rng.randint(1, 100, (4, 6))
    targets = rng.randint(1, 100, (4, 6))
    targets[:, 4:] = 0
    targets[2, 1:] = 0
    model.build(ids.shape)
    randomize(model)
    model.compile(metrics=[Perplexity(padding_id=0)])
    results = model.evaluate(ids, targets, batch_size=4, verbose=0,
                             return_dict=True)
    logits = infer(model, ids)
    expected = ref.masked_cross_entropy(logits, targets, 0)
    # No balancing losses outside training.
    np.testing.assert_allclose(results["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(results["perplexity"], np.exp(expected),
                               rtol=1e-5)


def test_training_loss_adds_the_balancing_losses():
    # Just the MoE, as op-by-op JAX runs LSTMs slowly.
    model = MoELanguageModel.from_preset("tiny_moe", layer_types=("moe",),
                                         padding_id=0)
    rng = np.random.RandomState(4)
    ids = rng.randint(1, 100, (4, 6))
    targets = rng.randint(0, 100, (4, 6))
    model.build(ids.shape)
    randomize(model)
    y_pred = model(ids, training=True)
    assert len(model.losses) == 1
    balancing = float(ops.convert_to_numpy(model.losses[0]))
    assert balancing > 0
    np.testing.assert_allclose(
        float(model.compute_loss(ids, targets, y_pred, training=True)),
        ref.masked_cross_entropy(ops.convert_to_numpy(y_pred), targets, 0)
        + balancing, rtol=1e-5)


def brown_sentences(vocabulary_size=100, num_lines=300, length=12):
    """(inputs, targets) [num_lines, length] from the bundled Brown corpus:
    <pad>=0, <unk>, <s>, </s>, then words by decreasing count; each line
    is one row, padded with 0."""
    with gzip.open(ROOT / "data" / "brown.train.txt.gz", "rt",
                   encoding="utf-8") as text:
        lines = [next(text).split() for _ in range(num_lines)]
    counts = Counter(word for line in lines for word in line)
    words = ["<pad>", "<unk>", "<s>", "</s>"] + [
        w for w, _ in counts.most_common(vocabulary_size - 4)]
    index = {w: i for i, w in enumerate(words)}
    rows = np.zeros((num_lines, length + 1), dtype="int32")
    for r, line in enumerate(lines):
        ids = [2] + [index.get(w, 1) for w in line] + [3]
        ids = ids[:length + 1]
        rows[r, :len(ids)] = ids
    return rows[:, :-1], rows[:, 1:]


@pytest.mark.parametrize("sampled", [None, 24])
def test_fit_with_jit_compile_lowers_the_loss(sampled):
    """jit-compiled training on 300 Brown sentences; the sampled softmax
    trains the exact softmax's loss down too."""
    inputs, targets = brown_sentences()
    model = MoELanguageModel.from_preset(
        "tiny_moe", padding_id=0, num_sampled=sampled, dropout=0.1, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.02),
                  metrics=[Perplexity(padding_id=0)], jit_compile=True)
    # One batch: the loss is then the corpus mean, as the perplexity is.
    before = model.evaluate(inputs, targets, batch_size=300, verbose=0,
                            return_dict=True)
    history = model.fit(inputs, targets, batch_size=25, epochs=3, verbose=0)
    after = model.evaluate(inputs, targets, batch_size=300, verbose=0,
                           return_dict=True)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert after["loss"] < before["loss"] - 0.5
    np.testing.assert_allclose(after["perplexity"], np.exp(after["loss"]),
                               rtol=1e-4)
    # The MoE layer saw every timestep of the batch as one macro-batch.
    moe = model.get_layer("moe")
    assert float(ops.sum(moe.expert_importance)) == pytest.approx(
        300 * 12, rel=1e-3)
    if sampled:
        assert "perplexity" not in history.history  # no logits in training
        hidden = model(inputs[:2], training=True)
        assert tuple(hidden["hidden_states"].shape) == (2, 12, 16)


LOAD_SCRIPT = """
import sys
import keras
import numpy as np
import sgmoe  # registers the sgmoe classes

data = np.load(sys.argv[1])
model = keras.models.load_model(sys.argv[2], safe_mode=True)
assert type(model).__name__ == "MoELanguageModel", type(model)
np.savez(sys.argv[3], logits=model.predict(data["ids"], verbose=0),
         config=repr(sorted(model.get_config().items())),
         metric=type(model.metrics[-1]).__name__)
"""


@pytest.mark.subprocess
def test_keras_file_reloads_in_a_fresh_process(tmp_path):
    """A .keras file reloads with safe_mode=True in a new Python process and
    predicts the same. The model holds every sgmoe model part: projected
    LSTMs, a hierarchical MoE, a deep feed-forward layer and a sampled
    softmax (flat MoEs reload in test_save_to_preset_and_from_directory)."""
    ids = np.random.RandomState(4).randint(0, 100, (BATCH, LENGTH))
    model = MoELanguageModel.from_preset(
        "tiny_moe_h", layer_types=("lstm", "moe", "feed_forward", "lstm"),
        lstm_units=20, feed_forward={"hidden_dim": 32, "num_hidden_layers": 2},
        candidate_sampler="uniform", num_sampled=8, padding_id=0)
    model.build(ids.shape)
    randomize(model)
    model.compile(optimizer="adam", metrics=[Perplexity(padding_id=0)])
    expected = infer(model, ids)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "inputs.npz", ids=ids)
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "inputs.npz"),
         str(tmp_path / "model.keras"), str(tmp_path / "outputs.npz")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-5,
                               atol=1e-6)
    assert str(outputs["config"]) == repr(sorted(model.get_config().items()))
    assert str(outputs["metric"]) == "CompileMetrics"


def test_save_to_preset_and_from_directory(tmp_path):
    model = MoELanguageModel.from_preset("tiny_moe", padding_id=0)
    ids = np.random.RandomState(5).randint(0, 100, (BATCH, LENGTH))
    model.build(ids.shape)
    randomize(model)
    expected = infer(model, ids)
    directory = tmp_path / "my_preset"
    model.save_to_preset(str(directory))
    stored = json.loads((directory / "config.json").read_text())
    assert stored["class_name"] == "sgmoe>MoELanguageModel"

    restored = MoELanguageModel.from_preset(str(directory))
    assert restored.get_config() == model.get_config()
    np.testing.assert_allclose(
        infer(restored, ids), expected,
        rtol=1e-6, atol=1e-6)
    # Overrides that keep the weight shapes apply; a pathlib.Path works.
    moe = dict(model.moe, eval_capacity_factor=2.0)
    assert MoELanguageModel.from_preset(directory, moe=moe).get_layer(
        "moe").eval_capacity_factor == 2.0
    tuned = MoELanguageModel.from_preset(directory, dropout=0.3)
    assert tuned.get_layer("moe_dropout").rate == 0.3
    np.testing.assert_allclose(
        infer(tuned, ids), expected,
        rtol=1e-6, atol=1e-6)


def test_summary_shows_experts_and_their_parameters():
    model = MoELanguageModel.from_preset("tiny_moe_h")
    model.build((None, None))
    printed = []
    model.summary(print_fn=lambda text, **kwargs: printed.append(text))
    text = "\n".join(printed)
    assert "moe (HierarchicalMixtureOfExperts)" in text.replace("\n", " ") \
        or "HierarchicalMixtureOfExperts" in text
    experts = model.get_layer("moe").experts
    expert_parameters = sum(int(np.prod(w.shape))
                            for w in experts.trainable_weights)
    # 8 experts of 16 -> 32 -> 16 with biases: 8 * (2*16*32 + 32 + 16).
    assert expert_parameters == 8 * (2 * 16 * 32 + 48)
    assert "2 groups x 4 experts, k=2x2" in text
    assert f"expert parameters {expert_parameters:,}" in text
    assert f"({expert_parameters // 8:,} per expert)" in text
    # Gating: primary 2 * 16 * 2, secondary 2 * 2 * 16 * 4.
    assert f"gating {2 * 16 * 2 + 2 * 2 * 16 * 4:,}" in text


def test_config_round_trip_and_argument_errors():
    model = MoELanguageModel.from_preset("moe_4096_h", vocabulary_size=10)
    config = model.get_config()
    assert (config["moe"]["expert_groups"],
            config["moe"]["experts_per_group"]) == (16, 256)
    clone = MoELanguageModel.from_config(config)
    assert clone.get_config() == config
    flat = {"num_experts": 4, "k": 2}
    with pytest.raises(ValueError, match="Unknown preset 'moe_5'"):
        MoELanguageModel.from_preset("moe_5")
    with pytest.raises(ValueError, match="layer_types"):
        MoELanguageModel(10, layer_types=("lstm", "gru"))
    with pytest.raises(ValueError, match="`moe`"):
        MoELanguageModel(10)
    with pytest.raises(ValueError, match="`moe`"):
        MoELanguageModel(10, moe=[4, 2])
    with pytest.raises(ValueError, match="`moe`.*HierarchicalMixtureOfExperts"):
        MoELanguageModel(10, moe={"expert_groups": 2, "experts_per_group": 2,
                                  "k": 2})
    with pytest.raises(ValueError, match="`k`"):
        MoELanguageModel(10, moe={"num_experts": 4, "k": 4,
                                  "router": "switch"})
    with pytest.raises(ValueError, match="`feed_forward`"):
        MoELanguageModel(10, layer_types=("feed_forward",),
                         feed_forward={"units": 8})
    with pytest.raises(ValueError, match="dropout"):
        MoELanguageModel(10, moe=flat, dropout=1.0)
    with pytest.raises(ValueError, match="padding_id"):
        MoELanguageModel(10, moe=flat, padding_id="0")


def test_config_saved_with_flat_layer_arguments_loads():
    """Configs saved before `moe` and `feed_forward` took the layers'
    arguments flat; they build the same layers."""
    old = {"vocabulary_size": 10, "model_dim": 16,
           "layer_types": ["lstm", "moe", "feed_forward"],
           "num_experts": 64, "num_groups": 16, "k_primary": 2,
           "k_secondary": 1, "expert_hidden_dim": 8,
           "expert_use_bias": False, "feed_forward_hidden_layers": 2,
           "capacity_factor": 2.0, "importance_weight": 0.3}
    model = MoELanguageModel.from_config(old)
    moe = model.get_layer("moe")
    assert isinstance(moe, HierarchicalMixtureOfExperts)
    assert (moe.expert_groups, moe.experts_per_group, moe.k_secondary,
            moe.expert_hidden_dim, moe.use_bias, moe.capacity_factor,
            moe.importance_weight) == (16, 4, 1, 8, False, 2.0, 0.3)
    network = model.get_layer("feed_forward")
    assert (network.hidden_dim, network.num_hidden_layers,
            network.use_bias) == (8, 2, False)
    flat = MoELanguageModel.from_config(
        {"vocabulary_size": 10, "num_experts": 8, "k": 2,
         "load_weight": 0.5}).get_layer("moe")
    assert (flat.num_experts, flat.k, flat.router.load_weight,
            flat.router.importance_weight) == (8, 2, 0.5, 0.1)


@pytest.mark.parametrize("preset", ["tiny_moe", "tiny_moe_h"])
def test_evaluation_drops_nothing_by_default(preset):
    """A capacity factor of 0.5 drops in training; evaluation keeps every
    assignment and equals an evaluation capacity that holds every token."""
    model = MoELanguageModel(**merge(
        PRESETS[preset], {"vocabulary_size": 40, "seed": 2,
                          "moe": {"capacity_factor": 0.5}}))
    model.build((None, LENGTH))
    randomize(model, seed=2, scale=0.5)
    ids = np.random.RandomState(2).randint(1, 40, (8, LENGTH))
    moe = next(layer for layer in model._flatten_layers()
               if isinstance(layer, (MixtureOfExperts,
                                     HierarchicalMixtureOfExperts)))
    model(ids, training=True)
    assert float(moe.dropped_fraction) > 0.0
    logits = infer(model, ids)
    model(ids, training=False)
    assert float(moe.dropped_fraction) == 0.0
    experts = getattr(moe, "num_experts")
    moe.eval_capacity_factor = float(experts)  # C = N: nothing can drop
    model.make_predict_function(force=True)
    np.testing.assert_allclose(infer(model, ids), logits, rtol=1e-5,
                               atol=1e-6)
