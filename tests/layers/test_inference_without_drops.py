"""No assignment is dropped outside training, whatever the routing skew.

One expert takes 90% of the tokens' first choices, far past the training
capacity (capacity factor 1.25); evaluation must still equal the
every-expert reference sum_i G(x)_i E_i(x), jitted, on both backends; and
dropless training must have the reference's gradients.
"""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import GShardRouter
from sgmoe.layers import HierarchicalMixtureOfExperts
from sgmoe.layers import MixtureOfExperts
from sgmoe.layers import SwitchRouter
from tests import helpers
from tests.layers import numpy_reference as ref
from tests.layers.test_hierarchical_mixture_of_experts import reference

NUM_TOKENS, DIM, HIDDEN, NUM_EXPERTS = 40, 16, 24, 4
HOT_TOKENS = 36  # 90%


def skewed_tokens(seed=1, num_tokens=NUM_TOKENS):
    """Tokens whose feature 0 is +3 for the first 90%, -3 for the rest."""
    x = np.random.RandomState(seed).randn(num_tokens, DIM).astype("float32")
    x[:, 0] = np.where(np.arange(num_tokens) < num_tokens * 9 // 10, 3.0,
                       -3.0)
    return x


def router_of(name, seed=0):
    if name == "switch":
        return SwitchRouter(NUM_EXPERTS, seed=seed)
    if name == "gshard":
        return GShardRouter(NUM_EXPERTS, seed=seed)
    return "noisy_top_k"


def build_moe(router="noisy_top_k", k=2, seed=0, **kwargs):
    """A built MoE whose gate sends the hot tokens first to expert 0."""
    moe = MixtureOfExperts(NUM_EXPERTS, HIDDEN, seed=seed,
                           k=k if router == "noisy_top_k" else None,
                           router=router_of(router, seed), **kwargs)
    moe.build((None, DIM))
    rng = np.random.RandomState(seed)
    gate = next(w for w in moe.router.trainable_weights
                if tuple(w.shape) == (DIM, NUM_EXPERTS))
    kernel = 0.3 * rng.randn(DIM, NUM_EXPERTS).astype("float32")
    kernel[0] = [3.0, -1.0, -1.0, -1.0]
    gate.assign(kernel)
    moe.experts.bias_in.assign(
        0.1 * rng.randn(NUM_EXPERTS, HIDDEN).astype("float32"))
    moe.experts.bias_out.assign(
        0.1 * rng.randn(NUM_EXPERTS, DIM).astype("float32"))
    return moe


def expert_weights(moe):
    return [ops.convert_to_numpy(w) for w in (
        moe.experts.kernel_in, moe.experts.bias_in, moe.experts.kernel_out,
        moe.experts.bias_out)]


def jitted_inference(layer, x):
    """layer(x, training=False), XLA-compiled; the statistics are kept."""
    if keras.backend.backend() == "jax":
        import jax

        @jax.jit
        def run(trainable, non_trainable, x):
            return layer.stateless_call(trainable, non_trainable, x,
                                        training=False)

        outputs, non_trainable = run(
            [v.value for v in layer.trainable_variables],
            [v.value for v in layer.non_trainable_variables], x)
        for variable, value in zip(layer.non_trainable_variables,
                                   non_trainable):
            variable.assign(value)
        return ops.convert_to_numpy(outputs)
    import tensorflow as tf

    run = tf.function(lambda x: layer(x, training=False), jit_compile=True)
    return ops.convert_to_numpy(run(tf.constant(x)))


@pytest.mark.parametrize("router, k", [
    ("noisy_top_k", 1), ("noisy_top_k", 2), ("switch", 1), ("gshard", 2)])
def test_inference_keeps_every_assignment_under_skew(router, k):
    moe = build_moe(router, k)
    x = skewed_tokens()
    routing = moe.router(x, training=False)
    indices = ops.convert_to_numpy(routing.expert_indices)
    gates = ops.convert_to_numpy(routing.expert_weights)
    assert (indices[:, 0] == 0).mean() == 0.9
    # The training capacity would drop most of expert 0's assignments.
    capacity = int(np.ceil(1.25 * NUM_TOKENS * indices.shape[1]
                           / NUM_EXPERTS))
    valid = indices < NUM_EXPERTS
    kept = ref.capacity_kept(indices, NUM_EXPERTS, capacity)
    assert not kept[valid].all()

    y = jitted_inference(moe, x)
    expected = ref.dense_mixture(x, np.minimum(indices, NUM_EXPERTS - 1),
                                 np.where(valid, gates, 0.0),
                                 *expert_weights(moe))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    assert float(moe.dropped_fraction) == 0.0

    # Capacity at inference stays available when asked for.
    moe.eval_capacity_factor = 1.25
    y_capped = jitted_inference(moe, x)
    np.testing.assert_allclose(
        y_capped, ref.dense_mixture(
            x, np.minimum(indices, NUM_EXPERTS - 1),
            np.where(valid, gates, 0.0), *expert_weights(moe),
            kept=kept), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(moe.dropped_fraction),
                               1.0 - kept[valid].mean(), rtol=1e-6)


@keras.saving.register_keras_serializable(package="sgmoe_tests")
class EveryExpertReference(keras.layers.Layer):
    """sum_j G(x)_j E_j(x) with the MoE's own router and weights, every
    expert run on every token (differentiable with keras.ops)."""

    def __init__(self, moe, **kwargs):
        super().__init__(**kwargs)
        self.moe = moe

    def build(self, input_shape):
        self.built = True

    def call(self, x, training=None):
        moe = self.moe
        routing = moe.router(x, training=training)
        experts = moe.experts
        hidden = ops.relu(ops.einsum("nd,edh->enh", x, experts.kernel_in)
                          + ops.expand_dims(experts.bias_in, 1))
        outputs = (ops.einsum("enh,ehd->end", hidden, experts.kernel_out)
                   + ops.expand_dims(experts.bias_out, 1))  # [E, N, d]
        chosen = ops.take_along_axis(
            ops.transpose(outputs, (1, 0, 2)),
            ops.expand_dims(ops.minimum(routing.expert_indices,
                                        NUM_EXPERTS - 1), -1),
            axis=1)  # [N, k, d]
        valid = ops.less(routing.expert_indices, NUM_EXPERTS)
        gates = ops.where(valid, routing.expert_weights, 0.0)
        return ops.einsum("nk,nkd->nd", gates, chosen)


@pytest.mark.parametrize("router, k, block_size", [
    ("noisy_top_k", 2, None), ("noisy_top_k", 2, 3), ("noisy_top_k", 1, 2),
    ("switch", 1, None)])
def test_dropless_training_gradients_match_the_reference(router, k,
                                                         block_size):
    kwargs = ({"router_args": {"noisy": False}} if router == "noisy_top_k"
              else {})
    moe = build_moe(router, k, dropless=True, block_size=block_size,
                    **kwargs)
    x = skewed_tokens()
    upstream = np.random.RandomState(5).randn(NUM_TOKENS, DIM).astype(
        "float32")

    def loss_fn(outputs, losses):
        del losses  # the router's own losses are the same in both
        return ops.sum(outputs * upstream)

    loss, grads = helpers.value_and_gradients(moe, loss_fn, x, training=True)
    assert float(moe.dropped_fraction) == 0.0
    reference = EveryExpertReference(moe)
    reference.build(x.shape)
    reference_loss, reference_grads = helpers.value_and_gradients(
        reference, loss_fn, x, training=True)
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-4)
    assert grads.keys() == reference_grads.keys()
    for path, grad in grads.items():
        np.testing.assert_allclose(grad, reference_grads[path], rtol=1e-4,
                                   atol=1e-4, err_msg=path)


def test_dropless_training_step_compiles_and_learns():
    moe = build_moe(dropless=True, block_size=4)
    inputs = keras.Input((DIM,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs + moe(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                  jit_compile=True)
    x = skewed_tokens(num_tokens=400)
    y = np.tanh(x[:, 1:2])
    history = model.fit(x, y, batch_size=NUM_TOKENS, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert float(moe.dropped_fraction) == 0.0


def build_hierarchical(**kwargs):
    """4 groups x 4 experts; the hot tokens go to group 0, then expert 0."""
    layer = HierarchicalMixtureOfExperts(4, 4, expert_hidden_dim=HIDDEN,
                                         seed=3, **kwargs)
    layer.build((None, DIM))
    rng = np.random.RandomState(3)
    for weight in (layer.primary_w_gate, layer.primary_w_noise,
                   layer.secondary_w_gate, layer.secondary_w_noise):
        weight.assign(0.3 * rng.randn(*weight.shape).astype("float32"))
    primary = ops.convert_to_numpy(layer.primary_w_gate)
    primary[0] = [3.0, -1.0, -1.0, -1.0]
    layer.primary_w_gate.assign(primary)
    secondary = ops.convert_to_numpy(layer.secondary_w_gate)
    secondary[:, 0] = [3.0, -1.0, -1.0, -1.0]
    layer.secondary_w_gate.assign(secondary)
    experts = layer.experts
    experts.bias_in.assign(0.1 * rng.randn(*experts.bias_in.shape))
    experts.bias_out.assign(0.1 * rng.randn(*experts.bias_out.shape))
    return layer


def test_hierarchical_inference_keeps_every_assignment_at_both_levels():
    layer = build_hierarchical()  # capacity factor 1.25 in training
    x = skewed_tokens()
    y = jitted_inference(layer, x)
    capped = reference(layer, x, training=False,
                       primary_capacity=int(np.ceil(1.25 * NUM_TOKENS * 2
                                                    / 4)))
    assert capped["dropped_fraction"] > 0.1  # what capacity would drop
    expected = reference(layer, x, training=False)
    np.testing.assert_allclose(y, expected["y"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.expert_importance),
                               expected["importance"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.expert_load),
                               expected["load"], rtol=1e-4, atol=1e-5)
    assert float(layer.dropped_fraction) == 0.0


def test_hierarchical_dropless_training_matches_the_reference():
    layer = build_hierarchical(dropless=True)
    x = skewed_tokens()
    y = ops.convert_to_numpy(layer(x, training=True))
    # The noise draws of a dropless call: [N, G], then one [slots, E_g]
    # for the group buffer and the overflow rows together.
    assert float(layer.dropped_fraction) == 0.0
    layer.noisy = False
    y = ops.convert_to_numpy(layer(x, training=True))
    expected = reference(layer, x, training=False)
    np.testing.assert_allclose(y, expected["y"], rtol=1e-4, atol=1e-5)
    restored = HierarchicalMixtureOfExperts.from_config(layer.get_config())
    assert restored.dropless


def test_decoding_few_tokens_through_many_experts():
    """N k < E, as when decoding a few sequences: no buffer (no expert's
    weights read unless used), the reference output in inference, and in
    dropless training the gradients of a buffer large enough for all."""
    num_tokens, num_experts, k = 3, 32, 2
    x = np.random.RandomState(4).randn(num_tokens, DIM).astype("float32")

    def build(**kwargs):
        moe = MixtureOfExperts(num_experts, HIDDEN, k=k, seed=2,
                               router_args={"noisy": False}, name="moe",
                               **kwargs)
        moe.build((None, DIM))
        rng = np.random.RandomState(2)
        for weight in moe.weights:  # every expert different, gate random
            if weight.trainable:
                weight.assign(0.3 * rng.randn(*weight.shape))
        return moe

    moe = build()
    routing = moe.router(x, training=False)
    indices = ops.convert_to_numpy(routing.expert_indices)
    assert len(np.unique(indices)) > 1
    y = jitted_inference(moe, x)
    np.testing.assert_allclose(
        y, ref.dense_mixture(x, indices,
                             ops.convert_to_numpy(routing.expert_weights),
                             *expert_weights(moe)), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ops.convert_to_numpy(moe.expert_load),
                                  np.bincount(indices.ravel(),
                                              minlength=num_experts))

    upstream = np.random.RandomState(5).randn(num_tokens, DIM)

    def loss_fn(outputs, losses):
        del losses
        return ops.sum(outputs * upstream)

    dropless = build(dropless=True)
    # capacity = ceil(factor * N * k / E) = N: room for every assignment.
    roomy = build(capacity_factor=num_experts / k)
    _, grads = helpers.value_and_gradients(dropless, loss_fn, x,
                                           training=True)
    _, expected = helpers.value_and_gradients(roomy, loss_fn, x,
                                              training=True)
    assert float(roomy.dropped_fraction) == 0.0
    assert grads.keys() == expected.keys()
    for path, grad in grads.items():
        np.testing.assert_allclose(grad, expected[path], rtol=1e-4,
                                   atol=1e-5, err_msg=path)


@pytest.mark.parametrize("num_tokens", [1, 3])
def test_hierarchical_decoding_few_tokens_through_many_experts(num_tokens):
    """8 groups x 8 experts, k = 2 at each level: N k < E at both levels,
    so neither keeps a buffer; the output is still the reference's."""
    layer = HierarchicalMixtureOfExperts(8, 8, expert_hidden_dim=12, seed=3)
    layer.build((None, DIM))
    rng = np.random.RandomState(3)
    for weight in layer.trainable_weights:
        weight.assign(0.3 * rng.randn(*weight.shape))
    x = rng.randn(num_tokens, DIM).astype("float32")
    y = jitted_inference(layer, x)
    np.testing.assert_allclose(y, reference(layer, x, training=False)["y"],
                               rtol=1e-4, atol=1e-5)
