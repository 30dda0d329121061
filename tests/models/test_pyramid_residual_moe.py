"""DeepSpeed-MoE's PR-MoE in the language model (Rajbhandari et al. 2022):
per-layer MoE arguments (`moe_per_layer`: a pyramid of expert counts) over
the shared `moe` (here with a residual expert), in counts, overrides,
pruning, saving and training."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import find_moe_layers
from sgmoe.models import MoELanguageModel
from sgmoe.models import Perplexity
from sgmoe.models import apply_overrides
from sgmoe.models import count_parameters
from sgmoe.models import expert_usage
from sgmoe.models import ops_per_timestep
from sgmoe.models import prune_experts
from sgmoe.models.language_model_presets import PRESETS


def batch(seed, size=4, length=6):
    return np.random.default_rng(seed).integers(1, 100, (size, length))


def experts_of(model):
    return {name.split("/")[-1]: (layer.num_experts, layer.k,
                                  layer.residual_expert)
            for name, layer in find_moe_layers(model).items()}


def test_each_moe_layer_takes_its_arguments_over_the_shared_ones():
    model = MoELanguageModel.from_preset("tiny_pr_moe")
    model.build((None, None))
    assert experts_of(model) == {"moe_1": (4, 1, True),
                                 "moe_2": (8, 1, True)}
    # By hand (d = 16, experts 16 -> 32 -> 16 with biases, 1,072 weights
    # each): LSTMs 2 * (4 * 16 * 32 + 64) = 4,224; MoE 1: 4 experts and
    # the residual one, 5 * 1,072 + W_g and W_noise 2 * 16 * 4 = 5,488;
    # MoE 2: 9 * 1,072 + 2 * 16 * 8 = 9,904.
    assert count_parameters("tiny_pr_moe") == 4224 + 5488 + 9904
    # Ops: LSTMs 2 * 2,048; each MoE one routed expert and the residual
    # one (2 * 1,024) and its gate matrices.
    assert ops_per_timestep("tiny_pr_moe") == (2 * 2048 + 2048 + 128
                                               + 2048 + 256)
    inner = sum(int(np.prod(weight.shape)) for layer in model.layers
                if layer.name not in ("embedding", "softmax")
                for weight in layer.trainable_weights)
    assert inner == count_parameters(model)


def test_overrides_of_every_moe_layer_reach_the_per_layer_keys():
    config = apply_overrides(MoELanguageModel, PRESETS["tiny_pr_moe"],
                             {"moe": {"num_experts": 6, "k": 2}})
    model = MoELanguageModel(**config)
    model.build((None, None))
    assert experts_of(model) == {"moe_1": (6, 2, True),
                                 "moe_2": (6, 2, True)}
    # A layer's own override.
    config = apply_overrides(MoELanguageModel, PRESETS["tiny_pr_moe"], {
        "moe_per_layer": [{"num_experts": 2}, {"num_experts": 16}]})
    model = MoELanguageModel(**config)
    model.build((None, None))
    assert experts_of(model) == {"moe_1": (2, 1, True),
                                 "moe_2": (16, 1, True)}


@pytest.mark.parametrize("moe_per_layer", [
    [{"num_experts": 4}],
    {"num_experts": 4},
    [{"num_experts": 4}, "switch"],
])
def test_rejects_moe_per_layer_that_do_not_match_the_layers(moe_per_layer):
    with pytest.raises(ValueError, match="moe_per_layer"):
        MoELanguageModel(**dict(PRESETS["tiny_pr_moe"],
                                moe_per_layer=moe_per_layer))


def test_prunes_each_layer_and_reloads(tmp_path):
    model = MoELanguageModel.from_preset("tiny_pr_moe", seed=3)
    model.build((None, None))
    usage = expert_usage(model, [batch(seed) for seed in range(3)])
    pruned = prune_experts(model, 3, usage)
    assert experts_of(pruned) == {"moe_1": (3, 1, True),
                                  "moe_2": (3, 1, True)}
    # Keeping every expert of the smaller layer keeps its output.
    same = prune_experts(model, 4, usage)
    x = ops.convert_to_numpy(model.blocks[0](model.embedding(batch(5))))
    np.testing.assert_allclose(
        ops.convert_to_numpy(same.get_layer("moe_1")(x)),
        ops.convert_to_numpy(model.get_layer("moe_1")(x)),
        rtol=1e-5, atol=1e-6)

    path = str(tmp_path / "pr_moe.keras")
    pruned.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert reloaded.get_config()["moe_per_layer"] == pruned.get_config()[
        "moe_per_layer"]
    np.testing.assert_allclose(ops.convert_to_numpy(reloaded(batch(6))),
                               ops.convert_to_numpy(pruned(batch(6))),
                               rtol=1e-5, atol=1e-6)


def test_trains_under_jit():
    model = MoELanguageModel.from_preset("tiny_pr_moe", seed=1,
                                         padding_id=0)
    model.compile(optimizer=keras.optimizers.Adam(0.02),
                  metrics=[Perplexity(padding_id=0)], jit_compile=True)
    # A learnable sequence: each token is the previous one plus 1.
    start = np.random.default_rng(0).integers(1, 90, (32, 1))
    ids = start + np.arange(9)
    history = model.fit(ids[:, :-1], ids[:, 1:], epochs=8, batch_size=8,
                        verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
