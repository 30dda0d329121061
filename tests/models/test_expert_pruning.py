"""Expert pruning: the most used experts kept, routing over them only."""

import numpy as np
import pytest
from keras import ops

from sgmoe.models import MoELanguageModel
from sgmoe.models import MoETranslationModel
from sgmoe.models.expert_pruning import expert_usage
from sgmoe.models.expert_pruning import most_used_experts
from sgmoe.models.expert_pruning import prune_experts
from tests.layers import numpy_reference as ref

VOCABULARY, BATCH, LENGTH = 100, 4, 6


def batches(seed, count=3):
    rng = np.random.RandomState(seed)
    return [rng.randint(4, VOCABULARY, (BATCH, LENGTH)).astype("int32")
            for _ in range(count)]


def trained_like_model(preset, seed=0, **overrides):
    """A tiny LM with random (not zero) gates, so experts differ in use."""
    model = MoELanguageModel.from_preset(preset, seed=seed, **overrides)
    model.build((None, None))
    rng = np.random.RandomState(seed)
    for variable in model.trainable_variables:
        if "gate" in variable.path or "kernel" in variable.path:
            variable.assign(rng.normal(0, 0.5, variable.shape))
    return model


def moe_input(model, ids):
    """The MoE layer's input: embedding, then the residual first LSTM."""
    x = model.embedding(ids)
    return ops.convert_to_numpy(x + model.blocks[0](x))


def test_usage_counts_every_routed_assignment():
    model = trained_like_model("tiny_moe")
    usage = expert_usage(model, [(x, x) for x in batches(1)])
    assert list(usage) == ["moe_language_model/moe"]
    # k = 2 choices for each of the 3 * BATCH * LENGTH tokens.
    assert usage["moe_language_model/moe"].sum() == 3 * BATCH * LENGTH * 2


def test_pruned_layer_routes_over_the_kept_experts_only():
    model = trained_like_model("tiny_moe", moe={
        "num_experts": 8, "k": 2, "expert_hidden_dim": 8})
    usage = expert_usage(model, batches(1))
    counts = usage["moe_language_model/moe"]
    pruned = prune_experts(model, 4, usage)
    kept = np.argsort(-counts, kind="stable")[:4]
    np.testing.assert_array_equal(
        most_used_experts(counts, 4), np.sort(kept))

    # Reference: the original layer's gate with the pruned experts' logits
    # at -inf, top-2 and softmax, and the original experts by their
    # original indices.
    layer = model.get_layer("moe")
    ids = batches(2, count=1)[0]
    x = moe_input(model, ids).reshape(-1, model.model_dim)
    w_gate = ops.convert_to_numpy(layer.router.kernel).copy()
    logits = x.astype(np.float64) @ w_gate
    removed = np.setdiff1d(np.arange(8), kept)
    logits[:, removed] = -np.inf
    indices = np.stack([ref.top_k_indices(row, 2) for row in logits])
    gates = np.stack([ref.softmax(row[chosen])
                      for row, chosen in zip(logits, indices)])
    experts = [ops.convert_to_numpy(w) for w in (
        layer.experts.kernel_in, layer.experts.bias_in,
        layer.experts.kernel_out, layer.experts.bias_out)]
    expected = 1.0 / (1.0 + np.exp(-ref.dense_mixture(
        x, indices, gates, *experts)))  # the LM's sigmoid output
    pruned_layer = pruned.get_layer("moe")
    assert pruned_layer.num_experts == pruned_layer.router.num_experts == 4
    np.testing.assert_allclose(
        ops.convert_to_numpy(pruned_layer(x, training=False)), expected,
        rtol=1e-4, atol=1e-5)
    # Every other weight is the original's; the model still predicts.
    np.testing.assert_allclose(
        ops.convert_to_numpy(pruned.softmax.kernel),
        ops.convert_to_numpy(model.softmax.kernel))
    assert pruned.count_params() < model.count_params()
    assert np.isfinite(ops.convert_to_numpy(pruned(ids))).all()


def test_keeping_every_expert_changes_nothing():
    model = trained_like_model("tiny_moe")
    usage = expert_usage(model, batches(1))
    same = prune_experts(model, 4, usage)
    ids = batches(3, count=1)[0]
    np.testing.assert_allclose(ops.convert_to_numpy(same(ids)),
                               ops.convert_to_numpy(model(ids)),
                               rtol=1e-5, atol=1e-6)


def test_hierarchical_moe_keeps_the_most_used_of_each_group():
    model = trained_like_model("tiny_moe_h")
    layer = model.get_layer("moe")
    groups, per_group = layer.expert_groups, layer.experts_per_group
    usage = {"moe_language_model/moe": np.arange(groups * per_group)[::-1]
             .astype(float)}
    pruned = prune_experts(model, groups * (per_group // 2), usage)
    pruned_layer = pruned.get_layer("moe")
    assert pruned_layer.experts_per_group == per_group // 2
    kept = most_used_experts(usage["moe_language_model/moe"],
                             groups * (per_group // 2), groups)
    # Lower indices are more used: each group's first half.
    np.testing.assert_array_equal(kept, [
        g * per_group + j for g in range(groups)
        for j in range(per_group // 2)])
    np.testing.assert_array_equal(
        ops.convert_to_numpy(pruned_layer.experts.kernel_in),
        ops.convert_to_numpy(layer.experts.kernel_in)[kept])
    local = (kept % per_group).reshape(groups, -1)
    old_gate = ops.convert_to_numpy(layer.secondary_w_gate)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(pruned_layer.secondary_w_gate),
        np.stack([old_gate[g][:, local[g]] for g in range(groups)]))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(pruned_layer.primary_w_gate),
        ops.convert_to_numpy(layer.primary_w_gate))


def test_translation_model_prunes_both_moes():
    model = MoETranslationModel.from_preset("tiny", seed=1)
    model.build()
    source = np.random.RandomState(0).randint(4, 32, (2, 5)).astype("int32")
    target = np.random.RandomState(1).randint(4, 32, (2, 5)).astype("int32")
    usage = expert_usage(model, [{"source_ids": source,
                                  "target_ids": target}])
    pruned = prune_experts(model, 2, usage)
    for layer in pruned.moe_layers():
        assert layer.num_experts == 2
    assert np.isfinite(pruned.greedy_decode(source, max_length=4)[
        "log_probs"]).all()


@pytest.mark.parametrize("num_experts, usage, message", [
    (0, None, "num_experts"),
    (8, None, "num_experts"),
    (1, None, "k=2"),
    (2, {"other": np.ones(4)}, "usage"),
    (2, {"moe_language_model/moe": np.ones(3)}, "usage"),
])
def test_rejects_bad_arguments(num_experts, usage, message):
    model = trained_like_model("tiny_moe")
    if usage is None:
        usage = {"moe_language_model/moe": np.ones(4)}
    with pytest.raises(ValueError, match=message):
        prune_experts(model, num_experts, usage)
