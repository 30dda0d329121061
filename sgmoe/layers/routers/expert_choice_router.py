"""Expert-choice routing (Zhou et al. 2022): each expert picks its tokens."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import dispatch
from sgmoe.layers.routers.router import Router
from sgmoe.layers.routers.routing_result import ExpertSlots
from sgmoe.layers.routers.routing_result import expert_slots_spec


@keras.saving.register_keras_serializable(package="sgmoe")
class ExpertChoiceRouter(Router):
    """Expert-choice routing: every expert takes its top-C tokens.

    Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing",
    arXiv:2202.09368, §3.1. For the N tokens X [N, d] of a macro-batch:

        S = Softmax(X W_g)              [N, E], softmax over experts
        G, I = TopK(S^T, C)             [E, C]
        C = ceil(capacity_factor * N / E), clamped to [1, N]

    Expert e's C slots hold tokens I[e] with gate values G[e]; a token's
    output is sum over the slots holding it of G[e, c] E_e(x). A token may be
    taken by several experts or by none (its output is then zero and a
    residual connection around the MoE carries it). `capacity_factor` is the
    paper's c, the average number of experts per token. Every expert takes
    exactly C tokens, so no balancing loss is needed; with `z_loss_weight`
    > 0 the router z-loss of ST-MoE (Zoph et al. 2022, arXiv:2202.08906,
    eq. 5) is added:

        L_z = z_loss_weight * mean_x (logsumexp_i (x W_g)_i)^2

    An expert chooses among all the tokens of the macro-batch, so a token's
    routing depends on the other tokens, including later positions of the
    same sequence: in a causal language model this leaks information across
    positions in training, the caveat of the paper's Limitations section.

    Inference keeps these semantics: each expert still takes its top C
    tokens of the call's macro-batch. Nothing a token chose can be dropped,
    because tokens choose nothing; a token no expert took gets zero output,
    and the MoE layer's `dropped_fraction` reports the fraction of such
    tokens. A token's output therefore depends on the rest of its batch (and
    on padding) at inference too: for decoding, or wherever per-example
    results must not depend on batching, use a token-choice router, which
    drops nothing at inference.

    The layer always computes in float32. C is a Python int when the token
    count is static, and a scalar tensor otherwise (TensorFlow with an
    unknown batch size), which XLA folds into a constant when it compiles.

    Args:
        num_experts: E (None: set by the MoE layer).
        capacity_factor: c, slots per expert relative to N / E (> 0; paper:
            2.0).
        z_loss_weight: weight of L_z (>= 0; 0 leaves it out).
        kernel_initializer: initializer of W_g [d, E]; None means a truncated
            normal of standard deviation sqrt(0.1 / d), seeded with `seed`
            (the reduced scale of Switch Transformer). A non-zero start
            matters: with W_g = 0 every score ties and all experts would pick
            the same first C tokens.
        seed: seed of the default kernel initializer.
        **kwargs: the other `Router` arguments (`z_loss_weight`,
            `kernel_initializer`, `seed`) and base layer arguments.

    Call arguments:
        inputs: float tensor [N, d].
        training: the z-loss is added with `add_loss` only when true.

    Returns:
        An `ExpertSlots` with `slot_token` I [E, C], `slot_weight` G [E, C],
        `importance` (sum of G per expert) [E], `load` (tokens each expert
        took, C unless a gate underflows to 0) [E] and `auxiliary_losses`
        ({"z_loss"} when `z_loss_weight` > 0, else empty).

    Example:

    >>> router = ExpertChoiceRouter(num_experts=4, capacity_factor=2.0)
    >>> tuple(router(keras.random.normal((10, 16))).slot_token.shape)
    (4, 5)
    """

    # Experts fill their own slots: tokens do not pick k experts.
    k = None
    fills_expert_slots = True

    def __init__(
        self,
        num_experts=None,
        capacity_factor=2.0,
        **kwargs,
    ):
        super().__init__(num_experts, **kwargs)
        self.capacity_factor = _validation.check_positive_float(
            "capacity_factor", capacity_factor)

    def capacity(self, num_tokens):
        """C, the slots of each expert for `num_tokens` tokens."""
        return dispatch.expert_capacity(num_tokens, self.num_experts, 1,
                                        self.capacity_factor)

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        logits = ops.matmul(x, self.kernel)  # [N, E]
        scores = ops.softmax(logits, axis=-1)
        capacity = self.capacity(ops.shape(x)[0])
        slot_weight, slot_token = ops.top_k(ops.transpose(scores),
                                            capacity)  # [E, C]
        slot_token = ops.cast(slot_token, "int32")
        importance = ops.sum(slot_weight, axis=1)
        # A gate that underflowed to 0 marks an empty slot for the dispatcher.
        load = ops.sum(ops.cast(ops.greater(slot_weight, 0.0), "float32"),
                       axis=1)
        auxiliary_losses = self.add_losses({}, logits, training)
        return ExpertSlots(slot_token, slot_weight, importance, load,
                           auxiliary_losses)

    def compute_output_spec(self, inputs, training=None):
        num_tokens = inputs.shape[0]
        capacity = None if num_tokens is None else self.capacity(num_tokens)
        return expert_slots_spec(self.num_experts, capacity,
                                 self.all_loss_names)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, ExpertChoiceRouter)}
