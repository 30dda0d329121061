"""Independent NumPy transcriptions of expert-choice routing (Zhou et al.
2022) and strictly balanced gating (Shazeer et al. 2017, Appendix F).

Written from the equations with dense [N, E] masks and loops, sharing no code
with sgmoe. Every function works in float64.
"""

import math

import numpy as np


def softmax_rows(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def clamp(value, low, high):
    return max(low, min(high, value))


def top_tokens(column, count):
    """The `count` token indices with the highest values, highest first."""
    return sorted(range(len(column)), key=lambda n: (-column[n], n))[:count]


def z_loss(logits, weight):
    return weight * np.mean(np.log(np.exp(logits).sum(1)) ** 2)


def expert_choice(x, w_gate, capacity_factor, z_loss_weight=0.0):
    """Zhou et al. 2022: S = Softmax(X W_g); each expert's top-C tokens."""
    logits = x.astype(np.float64) @ w_gate.astype(np.float64)
    scores = softmax_rows(logits)  # [N, E]
    num_tokens, num_experts = scores.shape
    capacity = clamp(math.ceil(capacity_factor * num_tokens / num_experts),
                     1, num_tokens)
    slot_token = np.zeros((num_experts, capacity), np.int64)
    slot_weight = np.zeros((num_experts, capacity))
    gates = np.zeros((num_tokens, num_experts))  # the combine weights
    for e in range(num_experts):
        chosen = top_tokens(scores[:, e], capacity)
        slot_token[e] = chosen
        slot_weight[e] = scores[chosen, e]
        gates[chosen, e] = scores[chosen, e]
    return {
        "capacity": capacity,
        "slot_token": slot_token,
        "slot_weight": slot_weight,
        "gates": gates,
        "importance": slot_weight.sum(1),
        "load": np.full(num_experts, float(capacity)),
        "z_loss": z_loss(logits, z_loss_weight),
        "dropped_fraction": np.mean(~(gates > 0).any(1)),
    }


def strictly_balanced(x, w_gate, threshold, k, training,
                      eval_capacity_factor=2.0, threshold_loss_weight=1.0,
                      z_loss_weight=0.0):
    """Shazeer et al. 2017, Appendix F, with dense masks.

    G(x)_i = X_i M_i / sum_j X_j M_j with X = G_sigma(x) = Softmax(x W_g);
    M is the batchwise mask (top m = ceil(k N / E) tokens per expert) in
    training, and at inference the threshold mask X_i > T_i restricted to
    each expert's C_eval = ceil(eval_capacity_factor m) highest tokens.
    """
    logits = x.astype(np.float64) @ w_gate.astype(np.float64)
    scores = softmax_rows(logits)  # X [N, E]
    threshold = np.asarray(threshold, np.float64)
    num_tokens, num_experts = scores.shape
    m = clamp(math.ceil(k * num_tokens / num_experts), 1, num_tokens)
    eval_capacity = clamp(math.ceil(eval_capacity_factor * m), 1, num_tokens)
    batchwise = np.zeros((num_tokens, num_experts))
    bounded_threshold = np.zeros((num_tokens, num_experts))
    for i in range(num_experts):
        batchwise[top_tokens(scores[:, i], m), i] = 1.0
        for j in top_tokens(scores[:, i], eval_capacity):
            if scores[j, i] > threshold[i]:
                bounded_threshold[j, i] = 1.0
    threshold_mask = (scores > threshold).astype(np.float64)
    difference = threshold_mask - batchwise
    loss = threshold_loss_weight * np.sum(difference * (scores - threshold))
    mask = batchwise if training else bounded_threshold
    masked = scores * mask
    totals = masked.sum(1, keepdims=True)
    gates = np.where(totals > 0, masked / np.where(totals > 0, totals, 1.0),
                     0.0)
    return {
        "m": m,
        "eval_capacity": eval_capacity,
        "scores": scores,
        "batchwise_mask": batchwise,
        "threshold_mask": threshold_mask,
        "mask": mask,
        "gates": gates,
        "importance": gates.sum(0),
        "load": mask.sum(0),
        "batchwise_threshold_loss": loss,
        # d loss / d T_i = -weight * sum_j (M_threshold - M_batchwise)_{j,i}
        "threshold_gradient": -threshold_loss_weight * difference.sum(0),
        "z_loss": z_loss(logits, z_loss_weight),
        "dropped_fraction": np.mean(~(mask > 0).any(1)),
    }


def dense_from_slots(slot_token, slot_weight, num_tokens):
    """[E, C] slots -> the [N, E] gate matrix they stand for."""
    num_experts = slot_token.shape[0]
    gates = np.zeros((num_tokens, num_experts))
    for e in range(num_experts):
        for token, weight in zip(slot_token[e], slot_weight[e]):
            if weight > 0:
                gates[token, e] += weight
    return gates


def dense_moe(x, gates, expert_ffn, kernels_in, biases_in, kernels_out,
              biases_out):
    """y(x) = sum_e gates[x, e] E_e(x), every expert run on every token."""
    y = np.zeros((x.shape[0], kernels_out.shape[-1]))
    for e in range(gates.shape[1]):
        y += gates[:, e:e + 1] * expert_ffn(
            x, kernels_in[e], biases_in[e], kernels_out[e], biases_out[e])
    return y
