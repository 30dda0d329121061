"""MixtureOfExperts end to end: dense reference, drops, training, saving."""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import GShardRouter
from sgmoe.layers import MixtureOfExperts
from tests import helpers
from tests.layers import numpy_reference as ref

BATCH, LENGTH, DIM, HIDDEN, NUM_EXPERTS = 2, 5, 16, 24, 4


def build_moe(k=2, capacity_factor=4.0, seed=0, **kwargs):
    """A built layer with random non-zero gating weights."""
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=k,
                           capacity_factor=capacity_factor, seed=seed,
                           **kwargs)
    moe.build((None, LENGTH, DIM))
    rng = np.random.RandomState(seed)
    moe.router.w_gate.assign(rng.randn(DIM, NUM_EXPERTS).astype("float32"))
    moe.experts.bias_in.assign(
        0.1 * rng.randn(NUM_EXPERTS, HIDDEN).astype("float32"))
    moe.experts.bias_out.assign(
        0.1 * rng.randn(NUM_EXPERTS, DIM).astype("float32"))
    return moe


def reference_output(moe, x, capacity=None, num_groups=1):
    """NumPy MoE in inference mode: every expert on every token."""
    tokens = x.reshape(-1, DIM)
    routing = ref.noisy_top_k_gating(
        tokens, ops.convert_to_numpy(moe.router.w_gate), None, moe.k)
    kept = (None if capacity is None else
            ref.capacity_kept(routing["indices"], NUM_EXPERTS, capacity,
                              num_groups))
    experts = moe.experts
    y = ref.dense_mixture(
        tokens, routing["indices"], routing["gates"],
        *(ops.convert_to_numpy(w) for w in (
            experts.kernel_in, experts.bias_in, experts.kernel_out,
            experts.bias_out)), kept=kept)
    return y, kept


def inputs(seed=1, shape=(BATCH, LENGTH, DIM)):
    return np.random.RandomState(seed).randn(*shape).astype("float32")


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sparse_dispatch_equals_dense_reference(k):
    moe = build_moe(k=k)
    x = inputs()
    y = ops.convert_to_numpy(moe(x, training=False))
    expected, _ = reference_output(moe, x)
    assert y.shape == (BATCH, LENGTH, DIM)
    np.testing.assert_allclose(y.reshape(-1, DIM), expected, rtol=1e-4,
                               atol=1e-5)
    assert float(moe.dropped_fraction) == 0.0


def test_dropped_tokens_are_accounted_exactly():
    # Capacity at inference only when asked for.
    moe = build_moe(k=2, capacity_factor=0.5, eval_capacity_factor=0.5)
    x = inputs()
    y = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    capacity = int(np.ceil(0.5 * BATCH * LENGTH * 2 / NUM_EXPERTS))
    expected, kept = reference_output(moe, x, capacity=capacity)
    assert not kept.all()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(moe.dropped_fraction), 1.0 - kept.mean(),
                               rtol=1e-6)
    # A token with every assignment dropped gets exactly zero.
    fully_dropped = ~kept.any(axis=1)
    np.testing.assert_array_equal(y[fully_dropped], 0.0)


def test_token_groups_give_each_group_its_own_capacity():
    moe = build_moe(k=2, capacity_factor=0.75, eval_capacity_factor=0.75,
                    token_groups=2)
    x = inputs()  # 10 tokens: groups of 5, 2 slots per expert and group
    y = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    capacity = int(np.ceil(0.75 * BATCH * LENGTH / 2 * 2 / NUM_EXPERTS))
    expected, kept = reference_output(moe, x, capacity=capacity,
                                      num_groups=2)
    _, kept_as_one_group = reference_output(moe, x, capacity=2 * capacity)
    assert not kept.all() and (kept != kept_as_one_group).any()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(moe.dropped_fraction), 1.0 - kept.mean(),
                               rtol=1e-6)
    restored = MixtureOfExperts.from_config(moe.get_config())
    assert restored.token_groups == 2


def test_token_groups_must_divide_the_tokens():
    moe = build_moe(token_groups=3, eval_capacity_factor=4.0)
    with pytest.raises(ValueError, match="`token_groups`"):
        moe(inputs(), training=False)  # 10 tokens


def test_any_rank_is_one_macro_batch():
    moe = build_moe()
    x = inputs(shape=(2, 3, 4, DIM))
    y4 = ops.convert_to_numpy(moe(x, training=False))
    y2 = ops.convert_to_numpy(moe(x.reshape(-1, DIM), training=False))
    assert y4.shape == (2, 3, 4, DIM)
    np.testing.assert_allclose(y4.reshape(-1, DIM), y2, rtol=1e-6)


def test_sigmoid_output_and_output_dim():
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=2, output_dim=7,
                           output_activation="sigmoid")
    y = ops.convert_to_numpy(moe(inputs(), training=False))
    assert y.shape == (BATCH, LENGTH, 7)
    assert (y > 0).all() and (y < 1).all()


def test_statistics_track_the_last_call():
    moe = build_moe(k=2)
    x = inputs()
    moe(x, training=False)
    routing = ref.noisy_top_k_gating(
        x.reshape(-1, DIM), ops.convert_to_numpy(moe.router.w_gate), None, 2)
    np.testing.assert_allclose(ops.convert_to_numpy(moe.expert_load),
                               routing["load"])
    np.testing.assert_allclose(ops.convert_to_numpy(moe.expert_importance),
                               routing["importance"], rtol=1e-5)
    assert sorted(moe.auxiliary_losses) == ["importance_loss", "load_loss"]
    for name in ("importance_loss", "load_loss"):
        np.testing.assert_allclose(
            float(moe.auxiliary_losses[name]), routing[name], rtol=1e-4,
            err_msg=name)


def test_gradients_reach_router_and_experts():
    moe = build_moe(k=2)
    target = inputs(seed=5)

    def loss_fn(outputs, losses):
        return ops.mean(ops.square(outputs - target)) + ops.sum(
            ops.stack(losses))

    _, grads = helpers.value_and_gradients(moe, loss_fn, inputs(),
                                           training=True)
    for name in ("w_gate", "w_noise", "kernel_in", "kernel_out", "bias_in",
                 "bias_out"):
        grad = [g for path, g in grads.items() if path.endswith(name)][0]
        assert np.abs(grad).max() > 1e-6, name


def test_training_adds_balancing_losses_only_in_training():
    moe = build_moe()
    moe(inputs(), training=False)
    assert moe.losses == []
    moe(inputs(), training=True)
    assert len(moe.losses) == 1 and float(moe.losses[0]) > 0.0


def test_mixed_bfloat16():
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=2, dtype="mixed_bfloat16")
    y = moe(ops.cast(inputs(), "bfloat16"), training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert moe.router.w_gate.dtype == "float32"
    assert moe.experts.kernel_in.dtype == "float32"


def functional_model(seed=0):
    token_inputs = keras.Input((LENGTH, DIM))
    hidden = keras.layers.Dense(DIM)(token_inputs)
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=2, seed=seed, name="moe")
    hidden = hidden + moe(hidden)
    outputs = keras.layers.Dense(1)(hidden)
    return keras.Model(token_inputs, outputs)


def test_functional_model_trains_with_jit_compile_and_round_trips(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randn(67, LENGTH, DIM).astype("float32")
    # A target only a token-dependent non-linearity can fit.
    y = np.tanh(x[..., :3]).sum(-1, keepdims=True) * np.sign(x[..., 3:4])
    model = functional_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                  jit_compile=True)
    initial = model.evaluate(x, y, verbose=0)
    # 67 is not a multiple of 16: the last batch has another shape.
    history = model.fit(x, y, batch_size=16, epochs=15, verbose=0)
    assert history.history["loss"][-1] < 0.6 * initial

    stats = model.get_layer("moe")
    assert float(ops.sum(stats.expert_load)) > 0

    path = str(tmp_path / "moe.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               restored.predict(x, verbose=0), rtol=1e-6,
                               atol=1e-6)
    original = model.get_layer("moe").get_config()
    assert restored.get_layer("moe").get_config() == original


@pytest.mark.parametrize("kwargs, argument", [
    (dict(num_experts=0, expert_hidden_dim=8), "num_experts"),
    (dict(num_experts=4, expert_hidden_dim=0), "expert_hidden_dim"),
    (dict(num_experts=4, expert_hidden_dim=8, k=0), "k"),
    (dict(num_experts=4, expert_hidden_dim=8, k=5), "k"),
    (dict(num_experts=4, expert_hidden_dim=8, capacity_factor=0.0),
     "capacity_factor"),
    (dict(num_experts=4, expert_hidden_dim=8, capacity_factor=-1),
     "capacity_factor"),
    (dict(num_experts=4, expert_hidden_dim=8, output_dim=-3), "output_dim"),
    (dict(num_experts=4, expert_hidden_dim=8, eval_capacity_factor=0.0),
     "eval_capacity_factor"),
    (dict(num_experts=4, expert_hidden_dim=8, load_weight=-1.0),
     "load_weight"),
    (dict(num_experts=4, expert_hidden_dim=8, min_capacity=0),
     "min_capacity"),
    (dict(num_experts=4, expert_hidden_dim=8, block_size=0), "block_size"),
    (dict(num_experts=4, expert_hidden_dim=8, token_groups=0),
     "token_groups"),
    (dict(num_experts=4, expert_hidden_dim=8, token_groups=2,
          router=GShardRouter(4, num_groups=4)), "token_groups"),
    (dict(num_experts=4, expert_hidden_dim=8, router="top_2"), "router"),
])
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        MixtureOfExperts(**kwargs)


def test_input_dimension_mismatch_names_inputs():
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=2)
    moe(inputs())
    with pytest.raises(ValueError, match="`inputs`"):
        moe(inputs(shape=(BATCH, LENGTH, DIM + 1)))


def test_eval_capacity_factor_applies_outside_training_and_can_change():
    moe = build_moe(k=2, capacity_factor=0.5, eval_capacity_factor=4.0)
    x = inputs()
    moe(x, training=True)
    assert float(moe.dropped_fraction) > 0.0
    y = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    assert float(moe.dropped_fraction) == 0.0
    np.testing.assert_allclose(y, reference_output(moe, x)[0], rtol=1e-4,
                               atol=1e-5)
    # Changed on the built layer, no rebuild: inference now drops as in
    # training with the same capacity.
    moe.eval_capacity_factor = 0.5
    y = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    capacity = int(np.ceil(0.5 * BATCH * LENGTH * 2 / NUM_EXPERTS))
    expected, kept = reference_output(moe, x, capacity=capacity)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(moe.dropped_fraction), 1 - kept.mean(),
                               rtol=1e-6)
    assert MixtureOfExperts.from_config(
        moe.get_config()).eval_capacity_factor == 0.5


def test_residual_expert_adds_a_dense_ffn_for_every_token(tmp_path):
    moe = build_moe(k=2, capacity_factor=0.5, eval_capacity_factor=0.5,
                    residual_expert=True)
    x = inputs()
    y = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    capacity = int(np.ceil(0.5 * BATCH * LENGTH * 2 / NUM_EXPERTS))
    routed, kept = reference_output(moe, x, capacity=capacity)
    dense = moe.dense_expert
    assert tuple(dense.kernel_in.shape) == (1, DIM, HIDDEN)
    dense_out = ref.expert_ffn(
        x.reshape(-1, DIM), *(ops.convert_to_numpy(w)[0] for w in (
            dense.kernel_in, dense.bias_in, dense.kernel_out,
            dense.bias_out)))
    np.testing.assert_allclose(y, routed + dense_out, rtol=1e-4, atol=1e-5)
    # Fully dropped tokens still get the dense expert's output.
    fully_dropped = ~kept.any(axis=1)
    assert fully_dropped.any()
    np.testing.assert_allclose(y[fully_dropped], dense_out[fully_dropped],
                               rtol=1e-4, atol=1e-5)
    restored = MixtureOfExperts.from_config(moe.get_config())
    assert restored.residual_expert


def test_dropless_matches_dense_reference_where_capacity_would_drop():
    moe = build_moe(k=2, dropless=True, block_size=3)
    x = inputs()
    y = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    np.testing.assert_allclose(y, reference_output(moe, x)[0], rtol=1e-4,
                               atol=1e-5)
    assert float(moe.dropped_fraction) == 0.0
    # The same routing with capacity 0.5 drops assignments.
    moe.dropless = False
    moe.capacity_factor = 0.5
    moe(x, training=True)
    assert float(moe.dropped_fraction) > 0.0
    restored = MixtureOfExperts.from_config(build_moe(
        dropless=True, block_size=3).get_config())
    assert restored.dropless and restored.block_size == 3


def test_dropless_trains_under_jit_compile():
    x = inputs(shape=(32, LENGTH, DIM))
    y = np.tanh(x[..., :1])
    token_inputs = keras.Input((LENGTH, DIM))
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=2, dropless=True,
                           block_size=8, seed=0)
    model = keras.Model(token_inputs,
                        keras.layers.Dense(1)(token_inputs + moe(token_inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                  jit_compile=True)
    initial = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=8, epochs=5, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.7 * initial
    assert float(moe.dropped_fraction) == 0.0


def test_min_capacity_raises_the_slots_per_expert():
    # capacity_factor 0.5 gives 3 slots; min_capacity=20 keeps every token.
    moe = build_moe(k=2, capacity_factor=0.5, min_capacity=20)
    x = inputs()
    y = ops.convert_to_numpy(moe(x, training=True)).reshape(-1, DIM)
    assert float(moe.dropped_fraction) == 0.0
    y_eval = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    np.testing.assert_allclose(y_eval, reference_output(moe, x)[0],
                               rtol=1e-4, atol=1e-5)
    assert y.shape == y_eval.shape


@pytest.mark.parametrize("name, router_class, k", [
    ("switch", "SwitchRouter", 1),
    ("gshard", "GShardRouter", 2),
    ("expert_choice", "ExpertChoiceRouter", None),
    ("strictly_balanced", "StrictlyBalancedGating", 3),
])
def test_every_named_router_builds_trains_and_serialises(name, router_class,
                                                         k):
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, k=3, router=name, seed=5)
    assert type(moe.router).__name__ == router_class
    assert moe.k == k and moe.router.seed == 5
    x = inputs()
    y = moe(x, training=True)
    assert tuple(y.shape) == x.shape
    assert set(moe.auxiliary_losses) == set(
        moe.router.compute_output_spec(
            keras.KerasTensor((None, DIM))).auxiliary_losses)
    config = moe.get_config()
    assert config["router"] == name
    clone = MixtureOfExperts.from_config(config)
    assert type(clone.router).__name__ == router_class
    clone.build(x.shape)
    clone.set_weights(moe.get_weights())
    np.testing.assert_allclose(
        ops.convert_to_numpy(clone(x, training=False)),
        ops.convert_to_numpy(moe(x, training=False)), rtol=1e-6, atol=1e-6)


def test_dropless_with_a_slot_filling_router_is_an_error():
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, router="expert_choice",
                           dropless=True)
    with pytest.raises(ValueError, match="`dropless`"):
        moe(inputs())


def test_expert_dropout_reaches_the_experts_in_training_only():
    moe = build_moe(k=2, expert_dropout=0.5)
    assert moe.experts.dropout == 0.5
    x = inputs()
    y_eval = ops.convert_to_numpy(moe(x, training=False)).reshape(-1, DIM)
    np.testing.assert_allclose(y_eval, reference_output(moe, x)[0],
                               rtol=1e-4, atol=1e-5)
    moe.router.noisy = False  # only the dropout differs in training
    y_train = ops.convert_to_numpy(moe(x, training=True)).reshape(-1, DIM)
    assert not np.allclose(y_train, y_eval, atol=1e-4)
    assert MixtureOfExperts.from_config(
        moe.get_config()).expert_dropout == 0.5
