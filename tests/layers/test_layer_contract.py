"""The contract every router and MoE layer keeps, run over all of them.

For each MoE layer (every router, the hierarchical MoE, a dropless
Residual-MoE): it trains under `jit_compile=True` on a non-linear task,
reloads from `.keras` with `safe_mode=True` to the same predictions and
config, round-trips its config, computes its gates in float32 under
mixed_bfloat16; for every router and MoE class: bad arguments raise a
ValueError naming the argument. Per-file tests check what is specific.
"""

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.layers import ExpertChoiceRouter
from sgmoe.layers import FeedForwardExperts
from sgmoe.layers import GShardRouter
from sgmoe.layers import HierarchicalMixtureOfExperts
from sgmoe.layers import MixtureOfExperts
from sgmoe.layers import NoisyTopKRouter
from sgmoe.layers import StrictlyBalancedRouter
from sgmoe.layers import SwitchRouter

NUM_EXPERTS, DIM, HIDDEN, LENGTH = 4, 8, 16, 5

# Each case builds a MoE layer with non-default settings: routers given by
# name and as objects, every loss weighted.
MOE_CASES = {
    "noisy_top_k": lambda **kw: MixtureOfExperts(
        NUM_EXPERTS, HIDDEN, k=2, seed=1,
        router_args={"z_loss_weight": 1e-3, "load_weight": 0.2}, **kw),
    "switch": lambda **kw: MixtureOfExperts(
        NUM_EXPERTS, HIDDEN, router=SwitchRouter(
            z_loss_weight=1e-3, jitter=0.01, seed=1), **kw),
    "gshard": lambda **kw: MixtureOfExperts(
        NUM_EXPERTS, HIDDEN, router=GShardRouter(
            token_groups=2, z_loss_weight=1e-3, seed=1), **kw),
    "expert_choice": lambda **kw: MixtureOfExperts(
        NUM_EXPERTS, HIDDEN, router="expert_choice", seed=1,
        router_args={"capacity_factor": 2.0, "z_loss_weight": 1e-3}, **kw),
    "strictly_balanced": lambda **kw: MixtureOfExperts(
        NUM_EXPERTS, HIDDEN, k=2, router="strictly_balanced", seed=1,
        router_args={"threshold_loss_weight": 0.1, "z_loss_weight": 1e-3},
        **kw),
    "dropless_residual": lambda **kw: MixtureOfExperts(
        NUM_EXPERTS, HIDDEN, k=2, dropless=True, residual_expert=True,
        expert_dropout=0.1, seed=1, **kw),
    "hierarchical": lambda **kw: HierarchicalMixtureOfExperts(
        2, 2, k_primary=1, k_secondary=1, expert_hidden_dim=HIDDEN,
        capacity_factor=2.0, seed=1, **kw),
}


def train_data():
    rng = np.random.RandomState(0)
    # 42 samples in batches of 8: the last batch has 2 (10 tokens), so the
    # step compiles for two shapes.
    x = rng.randn(42, LENGTH, DIM).astype("float32")
    y = np.tanh(x[..., :2]).sum(-1, keepdims=True) * np.sign(x[..., 2:3])
    return x, y


@pytest.mark.parametrize("case", sorted(MOE_CASES))
def test_trains_with_jit_and_reloads_from_keras_file(case, tmp_path):
    inputs = keras.Input((LENGTH, DIM))
    moe = MOE_CASES[case](name="moe")
    hidden = inputs + moe(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                  jit_compile=True)
    x, y = train_data()
    # Evaluation and prediction in one batch: one more compilation each.
    initial = model.evaluate(x, y, batch_size=len(x), verbose=0)
    model.fit(x, y, batch_size=8, epochs=10, verbose=0)
    assert model.evaluate(x, y, batch_size=len(x), verbose=0) < 0.7 * initial

    # Statistics of the last call; every weighted loss is there.
    assert float(ops.sum(moe.expert_load)) > 0
    router = getattr(moe, "router", None)
    if router is not None:
        assert sorted(moe.auxiliary_losses) == sorted(router.all_loss_names)
    assert all(float(value) != 0 for value in moe.auxiliary_losses.values())

    path = str(tmp_path / f"{case}.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    restored_moe = restored.get_layer("moe")
    assert type(restored_moe) is type(moe)
    assert restored_moe.get_config() == moe.get_config()
    for before, after in zip(moe.weights, restored_moe.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(before),
                                      ops.convert_to_numpy(after))
    # Called directly (not `predict`): no more compilations.
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(x, training=False)),
        ops.convert_to_numpy(restored(x, training=False)),
        rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", sorted(MOE_CASES))
def test_config_round_trip(case):
    moe = MOE_CASES[case]()
    config = moe.get_config()
    clone = type(moe).from_config(config)
    assert clone.get_config() == config
    x = np.random.RandomState(1).randn(2, LENGTH, DIM).astype("float32")
    clone.build(x.shape)
    moe.build(x.shape)
    clone.set_weights(moe.get_weights())
    np.testing.assert_allclose(
        ops.convert_to_numpy(clone(x, training=False)),
        ops.convert_to_numpy(moe(x, training=False)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", sorted(MOE_CASES))
def test_gates_stay_float32_under_mixed_precision(case):
    moe = MOE_CASES[case](dtype="mixed_bfloat16")
    x = ops.cast(np.random.RandomState(2).randn(2, LENGTH, DIM), "bfloat16")
    y = moe(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    experts = {id(w) for w in moe.experts.weights}
    gates = [w for w in moe.trainable_weights if id(w) not in experts
             and not w.path.split("/")[-2].startswith("dense_expert")]
    assert gates and all(w.dtype == "float32" for w in gates)
    router = getattr(moe, "router", None)
    if router is not None:
        routing = router(ops.reshape(x, (-1, DIM)), training=True)
        weights = (routing.slot_weight if router.fills_expert_slots
                   else routing.expert_weights)
        assert keras.backend.standardize_dtype(weights.dtype) == "float32"


def _moe(**kwargs):
    return MixtureOfExperts(**dict(dict(num_experts=4, expert_hidden_dim=8),
                                   **kwargs))


def _hierarchical(**kwargs):
    return HierarchicalMixtureOfExperts(
        **dict(dict(expert_groups=2, experts_per_group=2,
                    expert_hidden_dim=8), **kwargs))


BAD_ARGUMENTS = [
    # Every router: the base class's arguments.
    *[(router, dict(num_experts=bad), "num_experts")
      for router in (NoisyTopKRouter, SwitchRouter, GShardRouter,
                     ExpertChoiceRouter, StrictlyBalancedRouter)
      for bad in (0, 2.5)],
    *[(router, dict(num_experts=4, z_loss_weight=-1e-3), "z_loss_weight")
      for router in (NoisyTopKRouter, SwitchRouter, GShardRouter,
                     ExpertChoiceRouter, StrictlyBalancedRouter)],
    (NoisyTopKRouter, dict(num_experts=4, k=0), "k"),
    (NoisyTopKRouter, dict(num_experts=4, k=5), "k"),
    (NoisyTopKRouter, dict(num_experts=4, importance_weight=-1.0),
     "importance_weight"),
    (NoisyTopKRouter, dict(num_experts=4, load_weight=-0.1), "load_weight"),
    (NoisyTopKRouter, dict(num_experts=4, k=2, noise_epsilon=-1e-3),
     "noise_epsilon"),
    (SwitchRouter, dict(num_experts=4, load_balancing_weight=-1.0),
     "load_balancing_weight"),
    (SwitchRouter, dict(num_experts=4, jitter=1.0), "jitter"),
    (GShardRouter, dict(num_experts=1), "num_experts"),
    (GShardRouter, dict(num_experts=4, token_groups=0), "token_groups"),
    (GShardRouter, dict(num_experts=4, token_groups=1.5), "token_groups"),
    (GShardRouter, dict(num_experts=4, load_balancing_weight=-1.0),
     "load_balancing_weight"),
    (GShardRouter, dict(num_experts=4, second_expert_policy="sampled"),
     "second_expert_policy"),
    (GShardRouter, dict(num_experts=4, eval_second_expert_policy=None),
     "eval_second_expert_policy"),
    (GShardRouter, dict(num_experts=4, second_expert_threshold=0.0),
     "second_expert_threshold"),
    (ExpertChoiceRouter, dict(num_experts=4, capacity_factor=0.0),
     "capacity_factor"),
    (ExpertChoiceRouter, dict(num_experts=4, capacity_factor=-1.0),
     "capacity_factor"),
    (StrictlyBalancedRouter, dict(num_experts=4, k=0), "k"),
    (StrictlyBalancedRouter, dict(num_experts=4, k=5), "k"),
    (StrictlyBalancedRouter, dict(num_experts=4, eval_capacity_factor=0.0),
     "eval_capacity_factor"),
    (StrictlyBalancedRouter, dict(num_experts=4, threshold_loss_weight=-1.0),
     "threshold_loss_weight"),
    (FeedForwardExperts, dict(num_experts=0, hidden_dim=8), "num_experts"),
    (FeedForwardExperts, dict(num_experts=4, hidden_dim=0), "hidden_dim"),
    # Every MoE layer: the base class's arguments.
    *[(layer, dict(expert_hidden_dim=bad), "expert_hidden_dim")
      for layer in (_moe, _hierarchical) for bad in (0, 1.5)],
    *[(layer, {name: value}, name)
      for layer in (_moe, _hierarchical)
      for name, value in (("capacity_factor", 0.0), ("capacity_factor", -1),
                          ("eval_capacity_factor", 0.0),
                          ("min_capacity", 0), ("output_dim", -3),
                          ("expert_dropout", 1.0))],
    (_moe, dict(num_experts=0), "num_experts"),
    (_moe, dict(k=0), "k"),
    (_moe, dict(k=5), "k"),
    (_moe, dict(block_size=0), "block_size"),
    (_moe, dict(token_groups=0), "token_groups"),
    (_moe, dict(token_groups=2, router=GShardRouter(4, token_groups=4)),
     "token_groups"),
    (_moe, dict(router="top_2"), "router"),
    (_moe, dict(router_args={"load_weight": -1.0}), "load_weight"),
    (_moe, dict(k=4, router="switch"), "k"),
    (_moe, dict(router="expert_choice", dropless=True), "dropless"),
    (_hierarchical, dict(expert_groups=0), "expert_groups"),
    (_hierarchical, dict(experts_per_group=0), "experts_per_group"),
    (_hierarchical, dict(k_primary=4), "k_primary"),
    (_hierarchical, dict(k_secondary=5), "k_secondary"),
    (_hierarchical, dict(importance_weight=-0.1), "importance_weight"),
]


@pytest.mark.parametrize(
    "layer, arguments, argument", BAD_ARGUMENTS,
    ids=[f"{getattr(layer, '__name__', layer)}-{argument}-{i}"
         for i, (layer, _, argument) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_raise_a_value_error_naming_them(layer, arguments,
                                                       argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layer(**arguments)


@pytest.mark.parametrize("router", [NoisyTopKRouter(4, k=2), SwitchRouter(4),
                                    GShardRouter(4), ExpertChoiceRouter(4),
                                    StrictlyBalancedRouter(4)],
                         ids=lambda router: type(router).__name__)
def test_routers_take_token_matrices_only(router):
    with pytest.raises(ValueError, match="`inputs`"):
        router.build((2, LENGTH, DIM))
