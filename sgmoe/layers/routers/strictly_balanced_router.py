"""Strictly balanced gating of Shazeer et al. 2017 (Appendix F)."""

import math

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe.layers import dispatch
from sgmoe.layers.routers.router import Router
from sgmoe.layers.routers.routing_result import ExpertSlots
from sgmoe.layers.routers.routing_result import expert_slots_spec


@keras.saving.register_keras_serializable(package="sgmoe")
class StrictlyBalancedRouter(Router):
    """Strictly balanced gating: batchwise masks, then learned thresholds.

    Shazeer et al. 2017, "Outrageously Large Neural Networks: The
    Sparsely-Gated Mixture-of-Experts Layer", arXiv:1701.06538, Appendix F.
    For the N tokens X of a macro-batch and E experts:

        G_sigma(x) = Softmax(x W_g)
        G(x)_i = G_sigma(x)_i M(G_sigma(x))_i
                 / sum_j G_sigma(x)_j M(G_sigma(x))_j

    In training M is the batchwise mask: each expert keeps its top
    m = ceil(k N / E) tokens (clamped to [1, N]) by G_sigma over the batch,
    so every expert gets exactly m tokens. At inference, when there is no
    batch to balance over, M is a threshold mask,
    M_threshold(x, T)_i = 1[G_sigma(x)_i > T_i], with a learned per-expert
    threshold T [E]. T is trained to mimic the batchwise mask by

        L_batchwise = threshold_loss_weight * sum_j sum_i
            (M_threshold - M_batchwise)_{j, i} (G_sigma(x_j)_i - T_i)

    (j over tokens, i over experts; the masks carry no gradient, the
    gradient flows to G_sigma, and so to W_g, and to T). Each term is >= 0:
    a token the threshold keeps but the batch does not pushes T_i up, one
    the batch keeps but the threshold does not pushes T_i down. The loss is
    a sum over tokens, so it grows with the macro-batch; scale it with
    `threshold_loss_weight`. It is computed on every call (for monitoring)
    and added with `add_loss` only in training, as "batchwise_threshold_loss".

    Deviation from the paper: to keep shapes static, at inference each
    expert has C_eval = ceil(eval_capacity_factor * m) slots (clamped to
    N), filled with its highest-G_sigma tokens among those above its
    threshold. An expert with more than C_eval tokens above threshold keeps
    the C_eval highest; the paper's threshold mask is unbounded. This cap
    stays at inference, unlike the token-choice routers' capacity, because
    the threshold mask bounds nothing per token: a token may pass the
    thresholds of all E experts (every token passes every threshold of an
    untrained T = 0), so a static no-drop bound would be N * E slots, the
    dense cost sparse dispatch exists to avoid. The default C_eval = 2 m
    leaves twice the training load per expert; raise
    `eval_capacity_factor` (up to E / k, where C_eval reaches N) to drop
    less.

    A token's gate values are normalised over the experts that hold it; a
    token no expert holds gets zero output (a residual connection around
    the MoE carries it). With `z_loss_weight` > 0 the router z-loss of
    ST-MoE (Zoph et al. 2022, eq. 5) is added as "z_loss".

    W_g does not start at zero as the paper's Appendix A gate does: that
    gate has noise to break ties, this one has none, so with W_g = 0 every
    G_sigma is 1/E, every expert's batchwise top-m would be the same first m
    tokens (ties go by index) and the other tokens would start unrouted.
    The default is a small truncated normal instead.

    The layer always computes in float32. m and C_eval are Python ints when
    the token count is static and scalar tensors otherwise (TensorFlow with
    an unknown batch size), which XLA folds into constants when it compiles.

    Args:
        num_experts: E (None: set by the MoE layer).
        k: the average number of experts per token, 1 <= k <= num_experts;
            it sets m = ceil(k N / E).
        eval_capacity_factor: C_eval / m at inference (> 0).
        threshold_loss_weight: weight of L_batchwise (>= 0).
        z_loss_weight: weight of the router z-loss (>= 0; 0 leaves it out).
        threshold_initializer: initializer of T [E] (default zeros: every
            token passes every threshold until T is trained).
        kernel_initializer: initializer of W_g [d, E]; None means a truncated
            normal of standard deviation sqrt(0.1 / d), seeded with `seed`.
        seed: seed of the default kernel initializer.
        **kwargs: the other `Router` arguments (`z_loss_weight`,
            `kernel_initializer`, `seed`) and base layer arguments.

    Call arguments:
        inputs: float tensor [N, d].
        training: batchwise mask and losses when true, threshold mask
            otherwise.

    Returns:
        An `ExpertSlots` with `slot_token` [E, m] in training and
        [E, C_eval] at inference, `slot_weight` (the normalised G(x), 0 for
        empty slots) of the same shape, `importance` (sum of G per expert)
        [E], `load` (filled slots per expert) [E] and `auxiliary_losses`
        {"batchwise_threshold_loss"} plus "z_loss" when `z_loss_weight` > 0.

    Example:

    >>> router = StrictlyBalancedRouter(num_experts=4, k=2)
    >>> routing = router(keras.random.normal((10, 16)), training=True)
    >>> tuple(routing.slot_token.shape)  # m = ceil(2 * 10 / 4) = 5
    (4, 5)
    """

    fills_expert_slots = True
    loss_names = ("batchwise_threshold_loss",)

    def __init__(
        self,
        num_experts=None,
        k=2,
        eval_capacity_factor=2.0,
        threshold_loss_weight=1.0,
        threshold_initializer="zeros",
        **kwargs,
    ):
        self.k = _validation.check_positive_int("k", k)
        super().__init__(num_experts, **kwargs)
        self.eval_capacity_factor = _validation.check_positive_float(
            "eval_capacity_factor", eval_capacity_factor)
        self.threshold_loss_weight = _validation.check_non_negative_float(
            "threshold_loss_weight", threshold_loss_weight)
        self.threshold_initializer = keras.initializers.get(
            threshold_initializer)

    def check_num_experts(self, num_experts):
        _validation.check_top_k(self.k, num_experts)

    def tokens_per_expert(self, num_tokens):
        """m = ceil(k N / E) clamped to [1, N], the batchwise slots."""
        return dispatch.expert_capacity(num_tokens, self.num_experts,
                                        self.k, 1.0)

    def capacity(self, num_tokens, training=None):
        """Slots per expert: m in training, C_eval at inference."""
        m = self.tokens_per_expert(num_tokens)
        if training:
            return m
        if isinstance(num_tokens, int):
            return max(1, min(num_tokens,
                              math.ceil(self.eval_capacity_factor * m)))
        capacity = ops.cast(
            ops.ceil(self.eval_capacity_factor * ops.cast(m, "float32")),
            "int32")
        return ops.maximum(ops.minimum(capacity, num_tokens), 1)

    def build(self, input_shape):
        super().build(input_shape)
        self.threshold = self.add_weight(
            name="threshold", shape=(self.num_experts,),
            initializer=self.threshold_initializer, dtype="float32",
            autocast=False)

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        logits = ops.matmul(x, self.kernel)  # [N, E]
        gates = ops.softmax(logits, axis=-1)  # G_sigma [N, E]
        scores = ops.transpose(gates)  # [E, N]
        num_tokens = ops.shape(x)[0]
        threshold = ops.expand_dims(self.threshold, 1)  # [E, 1]

        batch_gate, batch_token = ops.top_k(
            scores, self.tokens_per_expert(num_tokens))  # [E, m]
        # sum (M_threshold - M_batchwise) (X - T) without building the
        # masks: M_threshold (X - T) is X - T where X > T, and M_batchwise
        # picks each expert's top-m values.
        above_threshold = gates - self.threshold  # [N, E]
        threshold_loss = self.threshold_loss_weight * (
            ops.sum(ops.where(ops.greater(above_threshold, 0.0),
                              above_threshold, 0.0))
            - ops.sum(batch_gate - threshold))

        if training:
            slot_gate, slot_token = batch_gate, batch_token
            filled = ops.greater(slot_gate, 0.0)
        else:
            slot_gate, slot_token = ops.top_k(
                scores, self.capacity(num_tokens))  # [E, C_eval]
            filled = ops.greater(slot_gate, threshold)
            slot_gate = ops.where(filled, slot_gate, 0.0)
        slot_token = ops.cast(slot_token, "int32")
        # Each token's gates over the experts holding it, [N].
        gate_sum = ops.segment_sum(ops.reshape(slot_gate, (-1,)),
                                   ops.reshape(slot_token, (-1,)),
                                   num_segments=num_tokens)
        slot_gate_sum = ops.take(gate_sum, slot_token)
        slot_weight = ops.where(
            filled, slot_gate / ops.where(filled, slot_gate_sum, 1.0), 0.0)

        importance = ops.sum(slot_weight, axis=1)
        load = ops.sum(ops.cast(filled, "float32"), axis=1)
        auxiliary_losses = self.add_losses(
            {"batchwise_threshold_loss": threshold_loss}, logits, training)
        return ExpertSlots(slot_token, slot_weight, importance, load,
                           auxiliary_losses)

    def compute_output_spec(self, inputs, training=None):
        num_tokens = inputs.shape[0]
        capacity = (None if num_tokens is None else
                    self.capacity(num_tokens, training))
        return expert_slots_spec(self.num_experts, capacity,
                                 self.all_loss_names)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, StrictlyBalancedRouter)}
