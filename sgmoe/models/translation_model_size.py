"""Parameters of a `MoETranslationModel` configuration, counted from the
configuration alone (nothing is built or allocated).

Per part, with d = model_dim, u = lstm_units, V = vocabulary, A =
attention_dim:

- LSTM with input i and output p: 4u(i + u) + 4u when u = p (plain), else
  4u(i + p) + 4u + u p (a projection to p, `ProjectedLSTMCell`). Encoder
  layers have i = d (the bidirectional bottom layer: two directions of u/2
  cells and d/2 outputs), decoder layers i = 2d (input and context).
- attention: U and W d A each, V A.
- embedding V d (shared by source and target), output projection d V + V.
- flat MoE with E experts of h hidden units: E (d h + h d) [+ E (h + d)
  biases] [+ the same for one residual expert]; gating 2 d E (noisy top-k),
  d E + E (strictly balanced: W_g and thresholds) or d E (switch, gshard,
  expert_choice).
- hierarchical MoE, G groups of E_g: experts as above with E = G E_g;
  gating 2 (d G + G d E_g) (noisy at both levels; half without noise).
"""

from sgmoe.models import moe_model
from sgmoe.models import translation_model_presets
from sgmoe.models.moe_translation_model import MOE_DEFAULTS
from sgmoe.models.moe_translation_model import MoETranslationModel

_SINGLE_MATRIX_ROUTERS = ("switch", "gshard", "expert_choice")


def _configuration(config):
    return moe_model.constructor_arguments(
        MoETranslationModel, config, translation_model_presets.PRESETS)


def _lstm(input_dim, units, output_dim):
    if units == output_dim:
        return 4 * units * (input_dim + units) + 4 * units
    return (4 * units * (input_dim + output_dim) + 4 * units
            + units * output_dim)


def _moe(config, d):
    c = dict(MOE_DEFAULTS, **config)
    h = c["expert_hidden_dim"]
    out = c.get("output_dim") or d
    hierarchical = "expert_groups" in c
    if hierarchical:
        groups, per_group = c["expert_groups"], c["experts_per_group"]
        experts = groups * per_group
    else:
        experts = c["num_experts"]
    networks = experts + (1 if c.get("residual_expert") else 0)
    expert_parameters = networks * (d * h + h * out)
    if c.get("use_bias", True):
        expert_parameters += networks * (h + out)
    noisy = (c if hierarchical else c.get("router_args") or {}).get("noisy",
                                                                   True)
    noise = 2 if noisy else 1
    if hierarchical:
        gating = noise * (d * groups + groups * d * per_group)
    else:
        router = c.get("router") or "noisy_top_k"
        if router == "noisy_top_k":
            gating = noise * d * experts
        elif router == "strictly_balanced":
            gating = d * experts + experts
        elif router in _SINGLE_MATRIX_ROUTERS:
            gating = d * experts
        else:
            raise ValueError(
                "Can only count routers given by name, received "
                f"router={router!r}.")
    return expert_parameters, gating


def count_translation_parameters(config):
    """Trainable parameters of a translation model configuration, by part.

    Args:
        config: constructor arguments of `MoETranslationModel` (a dict such
            as `model.get_config()`), a preset name, or a model.

    Returns:
        A dict of ints: "embedding" (shared), "encoder_lstm",
        "decoder_lstm", "attention", "output_projection", "experts" (all
        MoE expert networks), "gating" (all MoE routers) and "total", which
        equals the size of the built model's `trainable_weights`.
    """
    c = _configuration(config)
    d, v = c["model_dim"], c["vocabulary_size"]
    u = c["lstm_units"] or d
    a = c["attention_dim"] or d
    if c["bidirectional_encoder"]:
        encoder = 2 * _lstm(d, u // 2, d // 2)
    else:
        encoder = _lstm(d, u, d)
    encoder += (c["encoder_layers"] - 1) * _lstm(d, u, d)
    decoder = c["decoder_layers"] * _lstm(2 * d, u, d)
    counts = {
        "embedding": v * d,
        "encoder_lstm": encoder,
        "decoder_lstm": decoder,
        "attention": 2 * d * a + a,
        "output_projection": d * v + v,
        "experts": 0,
        "gating": 0,
    }
    for name in ("encoder_moe", "decoder_moe"):
        if c[name] is not None:
            experts, gating = _moe(c[name], d)
            counts["experts"] += experts
            counts["gating"] += gating
    counts["total"] = sum(counts.values())
    return counts
