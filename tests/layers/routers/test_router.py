"""The router contract: one base class, the registry, no ignored argument."""

import os
import warnings

import keras
import numpy as np
import pytest

from sgmoe.layers import HierarchicalMixtureOfExperts
from sgmoe.layers import MixtureOfExperts
from sgmoe.layers import routers

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")


@pytest.mark.parametrize("name", sorted(routers.ROUTERS))
def test_every_router_subclasses_router_with_one_gate_kernel(name):
    router = routers.get(name, num_experts=4)
    assert isinstance(router, routers.Router)
    router.build((None, 16))
    kernels = [w for w in router.trainable_weights
               if tuple(w.shape) == (16, 4)]
    assert kernels[0] is router.kernel and router.kernel.path.endswith(
        "/kernel")
    assert router.kernel.dtype == "float32"
    routing = router(np.ones((8, 16), "float32"), training=True)
    assert isinstance(routing, routers.ExpertSlots if router.fills_expert_slots
                      else routers.RoutingResult)
    assert sorted(routing.auxiliary_losses) == sorted(router.all_loss_names)


def test_get_takes_a_name_a_config_or_a_router():
    router = routers.get("gshard", num_experts=4, token_groups=2)
    assert routers.get(router) is router
    clone = routers.get(keras.saving.serialize_keras_object(router))
    assert isinstance(clone, routers.GShardRouter)
    assert clone.get_config() == router.get_config()


@pytest.mark.parametrize("identifier, arguments, message", [
    ("top_3", {}, "`router`"),
    (3, {}, "`router`"),
    (routers.SwitchRouter(4), {"jitter": 0.1}, "`router_args`"),
])
def test_get_rejects_what_is_not_a_router(identifier, arguments, message):
    with pytest.raises(ValueError, match=message):
        routers.get(identifier, **arguments)


@pytest.mark.parametrize("router", ["switch", "gshard", "expert_choice"])
def test_k_with_a_router_that_fixes_k_names_both(router):
    with pytest.raises(ValueError, match=r"`k`=4 conflicts with router="):
        MixtureOfExperts(num_experts=8, expert_hidden_dim=16, k=4,
                         router=router)


def test_k_equal_to_the_routers_k_is_accepted():
    moe = MixtureOfExperts(8, 16, k=1, router="switch")
    assert moe.k == 1


def test_k_goes_to_routers_that_take_it():
    assert MixtureOfExperts(8, 16, k=3).router.k == 3
    assert MixtureOfExperts(8, 16, k=3,
                            router="strictly_balanced").router.k == 3
    with pytest.raises(ValueError, match=r"router_args\['k'\]"):
        MixtureOfExperts(8, 16, k=3, router_args={"k": 2})


def test_router_arguments_reach_the_router():
    moe = MixtureOfExperts(8, 16, router="switch", seed=3,
                           router_args={"load_balancing_weight": 0.5,
                                        "jitter": 0.1})
    assert moe.router.load_balancing_weight == 0.5
    assert moe.router.jitter == 0.1 and moe.router.seed == 3
    with pytest.raises(ValueError, match="importance_weight"):
        MixtureOfExperts(8, 16, router="switch",
                         router_args={"importance_weight": 0.1})


def test_router_object_gets_num_experts_or_must_agree():
    moe = MixtureOfExperts(8, 16, router=routers.NoisyTopKRouter(k=3))
    assert moe.router.num_experts == 8 and moe.k == 3
    with pytest.raises(ValueError, match="`num_experts`=8"):
        MixtureOfExperts(8, 16, router=routers.SwitchRouter(num_experts=4))
    with pytest.raises(ValueError, match="`k`"):
        MixtureOfExperts(2, 16, router=routers.NoisyTopKRouter(k=3))
    with pytest.raises(ValueError, match="`router_args`"):
        MixtureOfExperts(8, 16, router=routers.SwitchRouter(),
                         router_args={"jitter": 0.1})


def test_a_router_without_num_experts_cannot_be_built_alone():
    with pytest.raises(ValueError, match="`num_experts`"):
        routers.SwitchRouter()(np.ones((4, 16), "float32"))


def test_model_saved_before_the_router_base_class_loads_identically():
    """The fixture was written at commit 2972140, before routers had a base
    class (`tests/fixtures/make_moe_before_router_base.py`): MoE layers with
    the noisy gate's arguments on the layer, named routers, GShard's
    `num_groups`, the hierarchical MoE's `num_groups`, and router objects
    saved as "NoisyTopKGating" and "StrictlyBalancedGating"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = keras.saving.load_model(
            os.path.join(FIXTURES, "moe_before_router_base.keras"))
    saved = np.load(os.path.join(FIXTURES, "moe_before_router_base.npz"))
    np.testing.assert_allclose(model.predict(saved["inputs"], verbose=0),
                               saved["outputs"], rtol=1e-5, atol=1e-6)
    noisy = model.get_layer("noisy").router
    assert (noisy.k, noisy.importance_weight, noisy.load_weight,
            noisy.noise_epsilon) == (2, 0.3, 0.2, 0.05)
    assert model.get_layer("gshard").router.token_groups == 2
    hierarchical = model.get_layer("hierarchical")
    assert isinstance(hierarchical, HierarchicalMixtureOfExperts)
    assert hierarchical.expert_groups == 2
    assert isinstance(model.get_layer("balanced_object").router,
                      routers.StrictlyBalancedRouter)
