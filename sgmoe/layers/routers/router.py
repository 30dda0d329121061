"""The base class of every router: the contract of routing with dispatch."""

import keras

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import balancing
from sgmoe.layers._renaming_layer import RenamingLayer
from sgmoe.layers.routers.routing_result import routing_result_spec


@keras.saving.register_keras_serializable(package="sgmoe")
class Router(RenamingLayer):
    """Base class of routers: tokens [N, d] in, routing decisions out.

    A router owns the gate kernel W_g [d, E] (the weight `kernel`, float32
    and never autocast: routers compute in float32 under mixed precision,
    since top-k and softmax are sensitive to rounding), the router z-loss
    of ST-MoE (Zoph et al. 2022, arXiv:2202.08906, eq. 5),

        L_z = z_loss_weight * mean_x (logsumexp_i (x W_g)_i)^2,

    and the bookkeeping of its auxiliary losses: they are returned on
    every call (for monitoring) and added with `add_loss` only in training.

    A subclass returns one of two result types from `call`:
    - tokens choose experts: a `RoutingResult` (each token's k experts and
      gate values); `k` is then the number of experts per token, and a
      `token_groups` attribute above 1 asks the MoE layer for capacity per
      group of consecutive tokens (GShard);
    - experts choose tokens: an `ExpertSlots` (each expert's slots filled
      with tokens); `fills_expert_slots` is then true, and `k` is None, or
      the average number of experts per token the router aims at.

    `MixtureOfExperts` accepts any subclass and needs nothing else from it.

    Subclasses set `loss_names` (the names of their losses, without
    "z_loss"), and `default_kernel_initializer`; they call `add_losses` at
    the end of `call`, and extend `build` and `get_config` with their own
    weights and arguments.

    Args:
        num_experts: E; None leaves it to the MoE layer the router is given
            to (`MixtureOfExperts(router=...)` sets it).
        z_loss_weight: weight of L_z (>= 0; 0, the default, leaves it out).
        kernel_initializer: initializer of W_g [d, E]; None means the
            router's default (`default_kernel_initializer`).
        seed: seed of the router's randomness (noise, jitter, random
            routing) and of its default kernel initializer.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor [N, d], the tokens of the macro-batch.
        training: whether the router is training (noise, losses).
    """

    # Experts per token of a token-choice router; None where the router
    # fills expert slots itself (subclasses override it).
    k = None
    # Whether `call` returns `ExpertSlots` rather than a `RoutingResult`.
    fills_expert_slots = False
    # Names of the auxiliary losses the router computes, besides "z_loss".
    loss_names = ()
    # W_g's initializer when `kernel_initializer` is None: the truncated
    # normal of standard deviation sqrt(0.1 / d) of Switch Transformer
    # (Fedus et al. 2021, §2.4), seeded with the router's seed.
    default_kernel_initializer = "switch_truncated_normal"

    def __init__(self, num_experts=None, z_loss_weight=0.0,
                 kernel_initializer=None, seed=None, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_experts = _validation.check_optional_positive_int(
            "num_experts", num_experts)
        self.z_loss_weight = _validation.check_non_negative_float(
            "z_loss_weight", z_loss_weight)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        if self.num_experts is not None:
            self.check_num_experts(self.num_experts)

    def check_num_experts(self, num_experts):
        """Checks what the router needs of E (e.g. k <= E); ValueError."""

    def set_num_experts(self, num_experts):
        """Gives the router E, if it was built without; checks a conflict.

        Called by the MoE layer the router is given to, before it is built.
        """
        if self.num_experts is None:
            self.check_num_experts(num_experts)
            self.num_experts = num_experts
        elif self.num_experts != num_experts:
            raise ValueError(
                f"`num_experts`={num_experts} of the MoE layer differs from "
                f"`router`'s num_experts={self.num_experts} "
                f"({type(self).__name__}); give the same value, or build "
                "the router without num_experts.")

    @property
    def all_loss_names(self):
        """`loss_names`, plus "z_loss" when `z_loss_weight` > 0."""
        return list(self.loss_names) + (
            ["z_loss"] if self.z_loss_weight > 0 else [])

    def build(self, input_shape):
        if self.num_experts is None:
            raise ValueError(
                f"{type(self).__name__} needs `num_experts` before it is "
                "built: pass num_experts, or give the router to a MoE layer.")
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"`inputs` of {type(self).__name__} must have shape "
                f"[tokens, d] with a known d, received shape "
                f"{tuple(input_shape)}.")
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            name="kernel", shape=(input_dim, self.num_experts),
            initializer=self._kernel_initializer(input_dim),
            dtype="float32", autocast=False)
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: input_dim})

    def _kernel_initializer(self, input_dim):
        if self.kernel_initializer is not None:
            return self.kernel_initializer
        if self.default_kernel_initializer == "switch_truncated_normal":
            return keras.initializers.TruncatedNormal(
                stddev=(0.1 / input_dim) ** 0.5, seed=self.seed)
        return self.default_kernel_initializer

    def add_losses(self, auxiliary_losses, logits, training):
        """Adds "z_loss" of `logits` [N, E] when weighted; in training, adds
        the sum of `auxiliary_losses` with `add_loss`. Returns the dict."""
        if self.z_loss_weight > 0:
            auxiliary_losses["z_loss"] = balancing.z_loss(
                logits, self.z_loss_weight)
        if training and auxiliary_losses:
            self.add_loss(sum(auxiliary_losses.values()))
        return auxiliary_losses

    def compute_output_spec(self, inputs, training=None):
        return routing_result_spec(inputs.shape[0], self.k, self.num_experts,
                                   self.all_loss_names)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, Router)}
