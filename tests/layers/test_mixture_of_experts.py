"""MixtureOfExperts end to end: dense reference, drops, training, saving."""

import keras
import numpy as np
import pytest
from keras import ops

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
    moe.router.kernel.assign(rng.randn(DIM, NUM_EXPERTS).astype("float32"))
    moe.experts.bias_in.assign(
        0.1 * rng.randn(NUM_EXPERTS, HIDDEN).astype("float32"))
    moe.experts.bias_out.assign(
        0.1 * rng.randn(NUM_EXPERTS, DIM).astype("float32"))
    return moe


def reference_output(moe, x, capacity=None, num_groups=1):
    """NumPy MoE in inference mode: every expert on every token."""
    tokens = x.reshape(-1, DIM)
    routing = ref.noisy_top_k_gating(
        tokens, ops.convert_to_numpy(moe.router.kernel), None, moe.k)
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
        x.reshape(-1, DIM), ops.convert_to_numpy(moe.router.kernel), None, 2)
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
    for name in ("router/kernel", "router/noise_kernel", "kernel_in",
                 "kernel_out", "bias_in",
                 "bias_out"):
        grad = [g for path, g in grads.items() if path.endswith(name)][0]
        assert np.abs(grad).max() > 1e-6, name


def test_training_adds_balancing_losses_only_in_training():
    moe = build_moe()
    moe(inputs(), training=False)
    assert moe.losses == []
    moe(inputs(), training=True)
    assert len(moe.losses) == 1 and float(moe.losses[0]) > 0.0


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
