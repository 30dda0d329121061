"""Parameter and ops counts of the presets against Shazeer et al. 2017, Table 7.

Table 7 gives, per model, parameters excluding embedding and softmax and ops
per timestep, in millions. The counts below come from the configurations
alone (nothing of the 4-billion-parameter models is allocated); d = 512,
experts 512 -> 1024 -> 512 with 2 * 512 * 1024 = 1,048,576 weights, an LSTM
of 512 cells 4 * 512 * (512 + 512) = 2,097,152 weights + 2,048 biases.

Parameters (expert biases off, as in the paper's "1M per expert"):

- MoE-4: 2 LSTMs 4,198,400 + 4 experts 4,194,304 + gating 2*512*4 = 4,096
  = 8,396,800 -> 8.4.
- MoE-32: 4,198,400 + 33,554,432 + 32,768 = 37,785,600 -> 37.8.
- MoE-256: 4,198,400 + 268,435,456 + 262,144 = 272,896,000 -> 272.9.
- MoE-256-h (16 groups x 16): 4,198,400 + 268,435,456 + primary 2*512*16 =
  16,384 + secondary 2*16*512*16 = 262,144 -> 272,912,384 -> 272.9.
- MoE-1024-h (16 x 64): 4,198,400 + 1,073,741,824 + 16,384 + 1,048,576
  = 1,079,005,184 -> 1079.0.
- MoE-4096-h (16 x 256): 4,198,400 + 4,294,967,296 + 16,384 + 4,194,304
  = 4,303,376,384 -> 4303.4.
- 4xLSTM-512: 4 * 2,099,200 = 8,396,800 -> 8.4.
- MoE-1-Wide: 4,198,400 + 512*4096*2 = 4,194,304 -> 8,392,704 -> 8.4.
- MoE-1-Deep: 4,198,400 + 512*1024 + 3*1024^2 + 1024*512 -> 8,392,704 -> 8.4.
- LSTM-2048-512: 4*2048*(512 + 512) + 8,192 biases + projection 2048*512
  = 9,445,376 -> 9.4.
- MoE-34M (Appendix C.2: width 1024, LSTMs of 1024 cells, 1024 experts of
  1024 -> 2048 -> 1024 in 16 groups of 64): LSTMs 2 * (4*1024*2048 + 4,096)
  = 16,785,408; experts 1024 * 2*1024*2048 = 4,294,967,296; gating
  2*1024*16 + 2*16*1024*64 = 32,768 + 2,097,152 -> 4,313,882,624 -> 4313.9.
- MoE-143M (width 1024, LSTMs of 4096 cells projected to 1024, 256 experts
  of 1024 -> 8192 -> 1024 in 16 groups of 16): LSTMs 2 * (4*4096*(1024 +
  1024) + 16,384 + 4096*1024) = 75,530,240; experts 256 * 2*1024*8192 =
  4,294,967,296; gating 32,768 + 2*16*1024*16 = 524,288 -> 4,371,054,592
  -> 4371.1. (A flat gate over 256 experts would give 4,371,021,824 ->
  4371.0: the table's last digit confirms 16 groups here too.)

Every count rounds to the table's figure. The presets use no expert biases;
with them (`"use_bias": True`, the layer default) each expert has
1024 + 512 more parameters, +0.15% for the large models.

Ops per timestep (multiply-adds; gating counts W_g and W_noise, and a
hierarchical token evaluates the secondary gates of its 2 groups only):
LSTMs 2 * 2,097,152 + 4 experts * 1,048,576 = 8,388,608, plus gating: MoE-4
4,096 -> 8.39 (8.4); MoE-32 32,768 -> 8.42 (8.4); MoE-256 262,144 -> 8.65
(8.6); MoE-256-h 16,384 + 2*2*512*16 -> 8.44 (8.4); MoE-1024-h 16,384 +
2*2*512*64 -> 8.54 (8.5); MoE-4096-h 16,384 + 2*2*512*256 -> 8.93 (8.9);
LSTM-2048-512 8,388,608 + 1,048,576 -> 9.44 (9.4); MoE-34M 16,777,216 +
4 * 4,194,304 + 32,768 + 2*2*1024*64 -> 33.85 (33.8); MoE-143M 75,497,472 +
4 * 16,777,216 + 32,768 + 2*2*1024*16 -> 142.70 (142.7). Rounded to 0.1M,
every count gives the table's figure except MoE-256: 8,650,752 rounds to 8.7
where the table has 8.6, 752 ops (0.01%) past the rounding boundary, so the
paper must have rounded that one down or counted some detail slightly
differently. The gating ops matter: without them the hierarchical rows
(8.4, 8.5, 8.9) would all be 8.39.
"""

import contextlib

import keras
import numpy as np
import pytest

from sgmoe.models import MoELanguageModel
from sgmoe.models import count_parameters
from sgmoe.models import ops_per_timestep
from sgmoe.models.language_model_presets import PRESETS
from sgmoe.models.config_overrides import merge

# Table 7: (parameters excluding embedding and softmax, ops per timestep),
# millions.
TABLE_7 = {
    "4xlstm_512": (8.4, 8.4),
    "moe_1_wide": (8.4, 8.4),
    "moe_1_deep": (8.4, 8.4),
    "moe_4": (8.4, 8.4),
    "moe_32": (37.8, 8.4),
    "moe_256": (272.9, 8.6),
    "moe_256_h": (272.9, 8.4),
    "moe_1024_h": (1079.0, 8.5),
    "moe_4096_h": (4303.4, 8.9),
    "lstm_2048_512": (9.4, 9.4),
    "moe_34m": (4313.9, 33.8),
    "moe_143m": (4371.1, 142.7),
}


# One test per column rather than per preset: each test costs a Keras
# session reset.


def test_parameters_match_table_7():
    for preset, (paper_parameters, _) in TABLE_7.items():
        counted = count_parameters(preset) / 1e6
        assert abs(counted / paper_parameters - 1) < 0.02, preset
        # Stronger: the count rounds to the table's printed digit.
        assert round(counted, 1) == paper_parameters, (preset, counted)
        # Expert biases (the layer default) add h + d per expert: +0.15%
        # at most.
        with_biases = count_parameters(merge(
            PRESETS[preset], {"moe": {"use_bias": True},
                              "feed_forward": {"use_bias": True}})) / 1e6
        assert 0 <= with_biases / counted - 1 < 0.0016, preset


def test_ops_per_timestep_match_table_7():
    for preset, (_, paper_ops) in TABLE_7.items():
        counted = ops_per_timestep(preset) / 1e6
        assert abs(counted / paper_ops - 1) < 0.01, (preset, counted)
        # Within the table's rounding (0.05M), but for MoE-256's 752 extra
        # ops.
        assert abs(counted - paper_ops) < 0.05 + 0.001, (preset, counted)


def test_exact_arithmetic_of_the_docstring():
    assert count_parameters("moe_4096_h") == 4_303_376_384
    assert count_parameters("moe_34m") == 4_313_882_624
    assert count_parameters("moe_143m") == 4_371_054_592
    assert count_parameters("lstm_2048_512") == 9_445_376
    flat_143m = dict(PRESETS["moe_143m"], moe={
        "num_experts": 256, "k": 4, "expert_hidden_dim": 8192,
        "use_bias": False})
    assert count_parameters(flat_143m) == 4_371_021_824
    assert ops_per_timestep("moe_143m") == 142_704_640
    assert ops_per_timestep("moe_34m") == 33_849_344


@contextlib.contextmanager
def shapes_only():
    """Variables created inside get their shapes but no values.

    Keras defers the initialisation of variables created in a
    StatelessScope; with initialize_variables=False it keeps them in a
    global list for later, which this helper empties again on the way out,
    so a 5-billion-parameter model is built without allocating anything.
    """
    from keras.src.backend.common import global_state

    before = list(global_state.get_global_attribute(
        "uninitialized_variables", None) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute("uninitialized_variables", before)


def sizes(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_counter_equals_the_full_size_models():
    """The counter is trustworthy: it equals the weights of every preset's
    real model, built at full size (793,471-word vocabulary included)
    without values."""
    for preset in sorted(PRESETS):
        model = MoELanguageModel.from_preset(preset)
        with shapes_only():
            model.build((None, None))
        assert count_parameters(model, include_embedding_and_softmax=True) \
            == sizes(model.trainable_weights), preset
        inner = sum(sizes(layer.trainable_weights) for layer in model.layers
                    if layer.name not in ("embedding", "softmax"))
        assert count_parameters(preset) == inner, preset


@pytest.mark.parametrize("config", [
    dict(PRESETS["tiny_moe"]),
    dict(PRESETS["tiny_moe_h"], lstm_units=24,
         layer_types=("lstm", "moe", "feed_forward", "lstm"),
         feed_forward={"hidden_dim": 24, "num_hidden_layers": 3}),
], ids=["flat", "hierarchical_projected_deep"])
def test_counter_equals_count_params_of_an_allocated_model(config):
    model = MoELanguageModel(**config)
    model.build((None, None))
    trainable = sizes(model.trainable_weights)
    assert count_parameters(model, include_embedding_and_softmax=True) == (
        trainable)
    # count_params() also counts the MoE statistics (non-trainable): of
    # the last call importance, load, dispatched and dropped [E] each, the
    # dropped fraction and one value per loss; the same again as window
    # sums, and the window's step count.
    statistics = sum(
        2 * (4 * layer.num_experts + 1 + len(layer.auxiliary_losses)) + 1
        for layer in model.moe_layers())
    assert model.count_params() == trainable + statistics


def test_counter_rejects_unknown_preset():
    with pytest.raises(ValueError, match="moe_4096_h"):
        count_parameters("moe_9999")
