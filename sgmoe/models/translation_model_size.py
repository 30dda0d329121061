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
- MoE layers: `moe_config.moe_cost`.
"""

from sgmoe.models import moe_config
from sgmoe.models import moe_model
from sgmoe.models import translation_model_presets
from sgmoe.models.moe_translation_model import MOE_DEFAULTS
from sgmoe.models.moe_translation_model import MoETranslationModel


def _configuration(config):
    return moe_model.constructor_arguments(
        MoETranslationModel, config, translation_model_presets.PRESETS)


def _lstm(input_dim, units, output_dim):
    if units == output_dim:
        return 4 * units * (input_dim + units) + 4 * units
    return (4 * units * (input_dim + output_dim) + 4 * units
            + units * output_dim)


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
            experts, gating, _ = moe_config.moe_cost(c[name], MOE_DEFAULTS,
                                                     d)
            counts["experts"] += experts
            counts["gating"] += gating
    counts["total"] = sum(counts.values())
    return counts
