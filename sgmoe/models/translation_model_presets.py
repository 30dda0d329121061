"""Configurations of `MoETranslationModel`: the paper's and tiny ones.

Shazeer et al. 2017, §5.3 and Appendix E: GNMT cut to 3 encoder and 2
decoder LSTM layers of 2048 cells with a projection to 512, a bidirectional
bottom encoder layer (GNMT's), a MoE between encoder layers 2 and 3 and
between decoder layers 1 and 2, experts 512 -> 2048 ReLU -> 512 without
biases (the paper counts [512 * 2048] + [2048 * 512] = 2M parameters per
expert) and a sigmoid on the MoE output, a shared vocabulary of 32K
wordpieces. Flat MoEs have 32 experts and k = 4 with strictly balanced
gating (Appendix F); hierarchical MoEs have 512 or 2048 experts and k = 2 at
each level (4 experts per token). The hierarchical MoE layer gates both
levels with noisy top-k; strictly balanced gating is for flat MoEs only.

Not stated in the paper, chosen here: 16 groups for both hierarchical
models (the paper's language-model hierarchical MoEs, Appendix C, use 16
groups: 16 x 32 and 16 x 128 experts), attention width 512 (the model
width), and dropout 0.1.

"small_moe" and "small_baseline" (vocabulary 2000, width 128; with and
without the two MoE layers) are the bundled-data demo of
scripts/train_translation.py, a few minutes on 2 CPU cores. The tiny
presets (vocabulary 32, width 16) are for tests. No MoE of theirs drops an
assignment at inference (token-choice MoEs drop nothing there by default;
the strictly balanced router's inference cap reaches the whole batch), so
padding never changes a sentence's outputs and decoding scores equal
teacher-forced ones. "tiny_pyramid" has 4 experts in the encoder MoE and 8
in the decoder MoE (DeepSpeed-MoE's pyramid: more experts later).
"""

PAPER_VOCABULARY_SIZE = 32000

_PAPER = {
    "vocabulary_size": PAPER_VOCABULARY_SIZE,
    "model_dim": 512,
    "lstm_units": 2048,
    "encoder_layers": 3,
    "decoder_layers": 2,
    "attention_dim": 512,
    "bidirectional_encoder": True,
    "dropout": 0.1,
}
_PAPER_EXPERTS = {"expert_hidden_dim": 2048, "use_bias": False,
                  "output_activation": "sigmoid"}


def _flat(num_experts, k, **extra):
    return dict(_PAPER_EXPERTS, num_experts=num_experts, k=k, **extra)


def _hierarchical(expert_groups, experts_per_group, **extra):
    return dict(_PAPER_EXPERTS, expert_groups=expert_groups,
                experts_per_group=experts_per_group, k_primary=2,
                k_secondary=2, **extra)


def _both(moe):
    return {"encoder_moe": moe, "decoder_moe": dict(moe)}


_TINY = {
    "vocabulary_size": 32,
    "model_dim": 16,
    "lstm_units": 16,
    "encoder_layers": 3,
    "decoder_layers": 2,
    "attention_dim": 16,
    "dropout": 0.0,
}
_TINY_EXPERTS = {"expert_hidden_dim": 32, "output_activation": "sigmoid"}

_SMALL = {
    "vocabulary_size": 2000,
    "model_dim": 128,
    "lstm_units": 128,
    "encoder_layers": 3,
    "decoder_layers": 2,
    "attention_dim": 128,
    "dropout": 0.1,
}
_SMALL_EXPERTS = {"expert_hidden_dim": 256, "output_activation": "sigmoid"}

PRESETS = {
    "gnmt_baseline": dict(_PAPER),
    "moe_32": dict(_PAPER, **_both(_flat(32, 4, router="strictly_balanced"))),
    "moe_512_h": dict(_PAPER, **_both(_hierarchical(16, 32))),
    "moe_2048_h": dict(_PAPER, **_both(_hierarchical(16, 128))),
    "tiny_baseline": dict(_TINY),
    # Strictly balanced, 4 experts, k = 2: the eval capacity
    # (2 * ceil(k N / E)) covers the whole batch.
    "tiny": dict(_TINY, **_both(dict(_TINY_EXPERTS, num_experts=4, k=2,
                                     router="strictly_balanced"))),
    "tiny_h": dict(_TINY, **_both(dict(
        _TINY_EXPERTS, expert_groups=4, experts_per_group=4, k_primary=2,
        k_secondary=2, expert_hidden_dim=16))),
    # The bundled-data demo of scripts/train_translation.py (CPU, minutes):
    # 16 experts, k = 4, as flat as the paper's MoE-32 but with noisy top-k
    # gating.
    "small_moe": dict(_SMALL, **_both(dict(
        _SMALL_EXPERTS, num_experts=16, k=4))),
    "small_baseline": dict(_SMALL),
    "tiny_pyramid": dict(
        _TINY,
        encoder_moe=dict(_TINY_EXPERTS, num_experts=4, k=2),
        decoder_moe=dict(_TINY_EXPERTS, num_experts=8, k=2)),
}
