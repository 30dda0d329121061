"""NumPy transcriptions of the language model's parts (Shazeer et al. 2017,
Appendix C.1; Sak et al. 2014 for the projected LSTM), loop by loop, with no
code shared with sgmoe."""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def lstm(x, kernel, recurrent_kernel, bias, projection=None):
    """[B, T, d] -> [B, T, u or p]; gates (input, forget, cell, output)."""
    batch, length, _ = x.shape
    units = bias.shape[0] // 4
    output_units = units if projection is None else projection.shape[1]
    h = np.zeros((batch, output_units))
    c = np.zeros((batch, units))
    outputs = []
    for t in range(length):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        i, f, g, o = (z[:, j * units:(j + 1) * units] for j in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        if projection is not None:
            h = h @ projection
        outputs.append(h)
    return np.stack(outputs, axis=1)


def top_k_mixture(x, w_gate, k, kernel_in, bias_in, kernel_out, bias_out):
    """Noise-free top-k MoE of tokens [N, d], no capacity limit:
    y = sum over the k highest x W_g of softmax(those) * E_i(x)."""
    outputs = np.zeros((x.shape[0], kernel_out.shape[-1]))
    for n, token in enumerate(x):
        logits = token @ w_gate
        chosen = sorted(range(len(logits)), key=lambda e: (-logits[e], e))[:k]
        gates = softmax(logits[chosen])
        for gate, e in zip(gates, chosen):
            hidden = np.maximum(token @ kernel_in[e] + bias_in[e], 0.0)
            outputs[n] += gate * (hidden @ kernel_out[e] + bias_out[e])
    return outputs


def feed_forward(x, kernels, biases):
    """ReLU hidden layers, linear last layer."""
    for i, (kernel, bias) in enumerate(zip(kernels, biases)):
        x = x @ kernel + bias
        if i < len(kernels) - 1:
            x = np.maximum(x, 0.0)
    return x


def masked_cross_entropy(logits, targets, padding_id):
    """Mean over non-padding targets of -log softmax(logits)[target]."""
    log_probs = log_softmax(logits.astype(np.float64))
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    mask = targets != padding_id
    return -(picked * mask).sum() / mask.sum()
