"""Parameters and ops per timestep of a `MoELanguageModel` configuration,
counted from the configuration alone (nothing is built or allocated).

The counts follow Shazeer et al. 2017, Table 7: parameters "excluding
embedding and softmax", and ops per timestep as multiply-adds of the weight
matrices a token goes through in training, excluding the softmax. Per layer,
with d = model_dim, u = LSTM cells, h = expert_hidden_dim:

- LSTM (u = d): 4u(d + u) weights + 4u biases; 4u(d + u) ops.
- LSTM with projection (u != d, LSTMP): 4u(d + d) + 4u + u d; 4u(2d) + u d.
- MoE layers: `moe_config.moe_cost` (flat: experts E (2 d h) [+ E (h + d)
  biases], gating W_g and W_noise 2 d E; ops k (2 d h) + 2 d E;
  hierarchical, G groups of E_g: gating 2 d G + 2 G d E_g, ops
  k_primary k_secondary (2 d h) + 2 d G + k_primary (2 d E_g)).
- "feed_forward" (n hidden layers of h): d h + (n - 1) h^2 + h d
  [+ n h + d biases], the same in ops.

Gating ops count both W_g and W_noise (the noisy gate of training); biases
and elementwise work are not ops.
"""

from sgmoe.models import language_model_presets
from sgmoe.models import moe_config
from sgmoe.models import moe_model
from sgmoe.models.moe_language_model import FEED_FORWARD_DEFAULTS
from sgmoe.models.moe_language_model import MOE_DEFAULTS
from sgmoe.models.moe_language_model import MoELanguageModel
from sgmoe.models.moe_language_model import _nested_layer_arguments


def _architecture(config):
    """The constructor arguments of a config (dict, model or preset name),
    defaults filled in."""
    return _nested_layer_arguments(moe_model.constructor_arguments(
        MoELanguageModel, config, language_model_presets.PRESETS))


def _lstm(c):
    d = c["model_dim"]
    u = c["lstm_units"] or d
    if u == d:
        return 4 * u * (d + u) + 4 * u, 4 * u * (d + u)
    return 4 * u * (2 * d) + 4 * u + u * d, 4 * u * (2 * d) + u * d


def _moe(c, ordinal):
    config = moe_config.layer_config(c["moe"], c.get("moe_per_layer"), ordinal)
    experts, gating, ops = moe_config.moe_cost(config, MOE_DEFAULTS,
                                               c["model_dim"])
    return experts + gating, ops


def _feed_forward(c):
    f = dict(FEED_FORWARD_DEFAULTS, **(c["feed_forward"] or {}))
    d, h = c["model_dim"], f["hidden_dim"]
    n = f.get("num_hidden_layers", 1)
    weights = d * h + (n - 1) * h * h + h * d
    biases = n * h + d if f.get("use_bias", True) else 0
    return weights + biases, weights


_COUNTERS = {"lstm": _lstm, "feed_forward": _feed_forward}


def _totals(config):
    c = _architecture(config)
    parameters = ops = 0
    for index, layer_type in enumerate(c["layer_types"]):
        if layer_type == "moe":  # the how-manieth MoE layer it is
            layer_parameters, layer_ops = _moe(
                c, c["layer_types"][:index].count("moe"))
        else:
            layer_parameters, layer_ops = _COUNTERS[layer_type](c)
        parameters += layer_parameters
        ops += layer_ops
    return c, parameters, ops


def count_parameters(config, include_embedding_and_softmax=False):
    """Trainable parameters of a configuration, without building it.

    Args:
        config: constructor arguments of `MoELanguageModel` (a dict such as
            `model.get_config()`), a preset name, or a model.
        include_embedding_and_softmax: also count the embedding (V d) and
            the softmax (V d + V); the paper's Table 7 leaves them out.

    Returns:
        int. Equals the size of the model's `trainable_weights` once built
        (the MoE statistics are non-trainable weights and are not counted).
    """
    c, parameters, _ = _totals(config)
    if include_embedding_and_softmax:
        v, d = c["vocabulary_size"], c["model_dim"]
        parameters += v * d + v * d + v
    return parameters


def ops_per_timestep(config):
    """Multiply-adds per token of everything but embedding and softmax.

    Args:
        config: as for `count_parameters`.

    Returns:
        int: the paper's "ops/timestep" (Table 7).
    """
    return _totals(config)[2]
