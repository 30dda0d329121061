"""An independent NumPy transcription of Shazeer et al. 2017, §2.1 and §4.

Written from the equations, loop by loop, with no code shared with sgmoe.
"""

import math

import numpy as np


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def phi(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def kth_excluding(v, k, i):
    """The k-th highest component of v, leaving out component i."""
    rest = np.delete(v, i)
    return np.sort(rest)[::-1][k - 1]


def top_k_indices(v, k):
    """Indices of the k largest values, highest first, lower index on ties."""
    return sorted(range(len(v)), key=lambda i: (-v[i], i))[:k]


def cv_squared(v):
    v = np.asarray(v, dtype=np.float64)
    return v.var() / (v.mean() ** 2 + 1e-10)


def noisy_top_k_gating(x, w_gate, w_noise, k, noise=None, noise_epsilon=1e-2,
                       importance_weight=0.1, load_weight=0.1):
    """Returns dict(indices, gates, importance, load, losses) for tokens x [N, d].

    `noise` [N, E] is the StandardNormal() draw; None means no noise
    (inference), when load is the count of tokens per expert.
    """
    num_tokens = x.shape[0]
    num_experts = w_gate.shape[1]
    clean = x.astype(np.float64) @ w_gate.astype(np.float64)
    if noise is None:
        h = clean
    else:
        stddev = softplus(x.astype(np.float64) @ w_noise) + noise_epsilon
        h = clean + noise * stddev
    indices = np.zeros((num_tokens, k), dtype=np.int64)
    gates = np.zeros((num_tokens, k))
    importance = np.zeros(num_experts)
    load = np.zeros(num_experts)
    for n in range(num_tokens):
        chosen = top_k_indices(h[n], k)
        indices[n] = chosen
        if k == 1:
            gates[n] = softmax(h[n])[chosen]
        else:
            gates[n] = softmax(h[n][chosen])
        for j, e in enumerate(chosen):
            importance[e] += gates[n, j]
        for e in range(num_experts):
            if noise is None or k == num_experts:
                load[e] += float(e in chosen)
            else:
                load[e] += phi(
                    (clean[n, e] - kth_excluding(h[n], k, e)) / stddev[n, e])
    return {
        "indices": indices,
        "gates": gates,
        "importance": importance,
        "load": load,
        "importance_loss": importance_weight * cv_squared(importance),
        "load_loss": load_weight * cv_squared(load),
    }


def expert_ffn(x, kernel_in, bias_in, kernel_out, bias_out):
    return np.maximum(x @ kernel_in + bias_in, 0.0) @ kernel_out + bias_out


def dense_mixture(x, indices, gates, kernels_in, biases_in, kernels_out,
                  biases_out, kept=None):
    """y(x) = sum_j gate_j * E_{index_j}(x), every expert run on every token.

    `kept` [N, k] (default all true) zeroes dropped assignments.
    """
    num_experts = kernels_in.shape[0]
    all_outputs = np.stack([
        expert_ffn(x, kernels_in[e], biases_in[e], kernels_out[e],
                   biases_out[e]) for e in range(num_experts)])  # [E, N, d]
    y = np.zeros((x.shape[0], kernels_out.shape[-1]))
    for n in range(x.shape[0]):
        for j in range(indices.shape[1]):
            if kept is None or kept[n, j]:
                y[n] += gates[n, j] * all_outputs[indices[n, j], n]
    return y


def capacity_kept(indices, num_experts, capacity, num_groups=1):
    """Which assignments fit: first choices of all tokens first, then seconds.

    Capacity is per expert and per group of N / G consecutive tokens; an
    index outside [0, E) is no assignment (never kept).
    """
    num_tokens, k = indices.shape
    group_size = num_tokens // num_groups
    used = np.zeros((num_groups, num_experts), dtype=np.int64)
    kept = np.zeros((num_tokens, k), dtype=bool)
    for j in range(k):
        for n in range(num_tokens):
            e, g = indices[n, j], n // group_size
            if 0 <= e < num_experts and used[g, e] < capacity:
                kept[n, j] = True
                used[g, e] += 1
    return kept


def hierarchical_mixture(x, primary_gate, primary_noise_weights,
                         secondary_gate, secondary_noise_weights, k_primary,
                         k_secondary, expert_weights, primary_noise=None,
                         secondary_noise=None, primary_capacity=None,
                         secondary_capacity=None, importance_weight=0.1,
                         load_weight=0.1):
    """The hierarchical MoE of Appendix B, token by token.

    `secondary_gate` is [G, d, E_g]; `expert_weights` are the stacked expert
    arrays (kernel_in, bias_in, kernel_out, bias_out) over G * E_g experts,
    group-major. Group g's secondary gate sees its tokens in arrival order
    (all first choices in token order, then second choices), which is the
    order of `secondary_noise[g]` rows. Capacities of None are unlimited;
    otherwise assignments over them are dropped, first choices first.

    Returns dict(y, importance, load, importance_loss, load_loss,
    dropped_fraction), importance and load flattened group-major.
    """
    num_tokens = x.shape[0]
    num_groups, _, per_group = secondary_gate.shape
    primary = noisy_top_k_gating(x, primary_gate, primary_noise_weights,
                                 k_primary, noise=primary_noise)
    primary_kept = (np.ones_like(primary["indices"], dtype=bool)
                    if primary_capacity is None else
                    capacity_kept(primary["indices"], num_groups,
                                  primary_capacity))
    y = np.zeros((num_tokens, expert_weights[2].shape[-1]))
    importance = np.zeros((num_groups, per_group))
    load = np.zeros((num_groups, per_group))
    kept_assignments = 0
    for g in range(num_groups):
        members = [(n, j) for j in range(k_primary) for n in range(num_tokens)
                   if primary["indices"][n, j] == g and primary_kept[n, j]]
        if not members:
            continue
        group_x = x[[n for n, _ in members]]
        noise = (None if secondary_noise is None else
                 secondary_noise[g, :len(members)])
        secondary = noisy_top_k_gating(
            group_x, secondary_gate[g],
            None if secondary_noise_weights is None else
            secondary_noise_weights[g], k_secondary, noise=noise)
        load[g] = primary["load"][g] * secondary["load"] / len(members)
        kept = (np.ones_like(secondary["indices"], dtype=bool)
                if secondary_capacity is None else
                capacity_kept(secondary["indices"], per_group,
                              secondary_capacity))
        kept_assignments += kept.sum()
        for slot, (n, j) in enumerate(members):
            for jj in range(k_secondary):
                e = secondary["indices"][slot, jj]
                gate = primary["gates"][n, j] * secondary["gates"][slot, jj]
                importance[g, e] += gate
                if kept[slot, jj]:
                    expert = g * per_group + e
                    y[n] += gate * expert_ffn(
                        x[n], *(w[expert] for w in expert_weights))
    return {
        "y": y,
        "importance": importance.ravel(),
        "load": load.ravel(),
        "importance_loss": importance_weight * cv_squared(importance),
        "load_loss": load_weight * cv_squared(load),
        "dropped_fraction": 1.0 - kept_assignments / (
            num_tokens * k_primary * k_secondary),
    }
