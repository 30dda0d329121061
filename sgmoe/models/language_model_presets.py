"""Configurations of `MoELanguageModel`: the paper's Table 7 and tiny ones.

Shazeer et al. 2017, Appendix C.1 (1 Billion Word Benchmark): embedding,
LSTM and MoE widths 512, experts 512 -> 1024 ReLU -> 512 without biases
(the paper counts 512 * 1024 + 1024 * 512 = 1M parameters per expert), k = 4
for flat MoEs, k = 2 at each level of hierarchical MoEs with 16 groups, a
793,471-word vocabulary and an importance-sampled softmax in training
(8192 candidates per batch, as in Jozefowicz et al. 2016, whose training
regimen the paper follows). Appendix C.2 ("More expensive models"): width
1024; MoE-34M has 1024-unit LSTMs and 1024 experts with 2048 hidden units,
MoE-143M has 4096-unit LSTMs projected to 1024 and 256 experts with 8192
hidden units. The paper searched DropProb per model in steps of 0.1 and
does not list the values chosen; the presets use 0.1.

The baselines of Table 7: MoE-1-Wide and MoE-1-Deep replace the MoE with a
single expert (one hidden layer of 4096 units; four of 1024), 4xLSTM-512
with two more LSTM layers, and LSTM-2048-512 is one LSTM of 2048 cells with
a projection to 512 and no MoE.

`tiny_*` presets (vocabulary 100, width 16) are for tests (`tiny_pr_moe`
is DeepSpeed-MoE's pyramid-residual MoE, Rajbhandari et al. 2022); `small_moe` is
the Brown-corpus demo of scripts/train_lm.py (CPU, minutes).
"""

PAPER_VOCABULARY_SIZE = 793471

_PAPER = {
    "vocabulary_size": PAPER_VOCABULARY_SIZE,
    "model_dim": 512,
    "dropout": 0.1,
    "num_sampled": 8192,
}
# The paper's experts: 1024 hidden units, no biases.
_PAPER_EXPERTS = {"expert_hidden_dim": 1024, "use_bias": False}


def _flat(num_experts, k=4, **extra):
    return {"moe": dict(_PAPER_EXPERTS, num_experts=num_experts, k=k,
                        **extra)}


def _hierarchical(experts_per_group, expert_groups=16, **extra):
    """k = 2 at each level of 16 groups, as in the paper."""
    return {"moe": dict(_PAPER_EXPERTS, expert_groups=expert_groups,
                        experts_per_group=experts_per_group, k_primary=2,
                        k_secondary=2, **extra)}


def _feed_forward(hidden_dim, num_hidden_layers):
    return {"layer_types": ("lstm", "feed_forward", "lstm"),
            "feed_forward": {"hidden_dim": hidden_dim,
                             "num_hidden_layers": num_hidden_layers,
                             "use_bias": False}}


_WIDE = {"model_dim": 1024}
_TINY = {"vocabulary_size": 100, "model_dim": 16, "dropout": 0.0}

PRESETS = {
    # Table 7, flat MoE layers (k = 4).
    "moe_4": dict(_PAPER, **_flat(4)),
    "moe_32": dict(_PAPER, **_flat(32)),
    "moe_256": dict(_PAPER, **_flat(256)),
    # Hierarchical: 16 groups, k = 2 at each level.
    "moe_256_h": dict(_PAPER, **_hierarchical(16)),
    "moe_1024_h": dict(_PAPER, **_hierarchical(64)),
    "moe_4096_h": dict(_PAPER, **_hierarchical(256)),
    # Appendix C.2: more computation per timestep.
    "moe_34m": dict(_PAPER, **_WIDE,
                    **_hierarchical(64, expert_hidden_dim=2048)),
    "moe_143m": dict(_PAPER, **_WIDE, lstm_units=4096,
                     **_hierarchical(16, expert_hidden_dim=8192)),
    # Computationally matched baselines.
    "moe_1_wide": dict(_PAPER, **_feed_forward(4096, 1)),
    "moe_1_deep": dict(_PAPER, **_feed_forward(1024, 4)),
    "4xlstm_512": dict(_PAPER, layer_types=("lstm",) * 4),
    "lstm_2048_512": dict(_PAPER, layer_types=("lstm",), lstm_units=2048),
    # Tests and CPU runs.
    "tiny_moe": dict(_TINY, moe={"num_experts": 4, "k": 2,
                                 "expert_hidden_dim": 32}),
    "tiny_moe_h": dict(_TINY, moe={"expert_groups": 2,
                                   "experts_per_group": 4, "k_primary": 2,
                                   "k_secondary": 2,
                                   "expert_hidden_dim": 32}),
    # DeepSpeed-MoE's PR-MoE (Rajbhandari et al. 2022): two MoE layers,
    # the later with more experts (pyramid), the routed expert's output
    # to a dense residual expert's, k = 1.
    "tiny_pr_moe": dict(
        _TINY, layer_types=("lstm", "moe", "lstm", "moe"),
        moe={"k": 1, "expert_hidden_dim": 32, "residual_expert": True},
        moe_per_layer=[{"num_experts": 4}, {"num_experts": 8}]),
    "small_moe": {
        "vocabulary_size": 8000,
        "model_dim": 128,
        "moe": {"num_experts": 16, "k": 4, "expert_hidden_dim": 256},
        "dropout": 0.1,
    },
}
