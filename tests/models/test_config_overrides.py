"""Dotted overrides of a model configuration: parsed, applied, checked."""

import pytest

from sgmoe import models
from sgmoe.models import language_model_presets
from sgmoe.models import translation_model_presets

LM = language_model_presets.PRESETS["small_moe"]
TRANSLATION = translation_model_presets.PRESETS["small_moe"]


def test_parse_reads_literals_words_and_nested_keys():
    assert models.parse_overrides(
        " moe.router=switch, moe.capacity_factor=2.0,dropout=0,"
        "moe.router_args.z_loss_weight=1e-3,moe.noisy=False,lstm_units=none,"
        "layer_types=[lstm,moe, lstm],moe.output_activation='sigmoid'") == {
        "moe": {"router": "switch", "capacity_factor": 2.0,
                "router_args": {"z_loss_weight": 0.001}, "noisy": False,
                "output_activation": "sigmoid"},
        "dropout": 0, "lstm_units": None,
        "layer_types": ["lstm", "moe", "lstm"]}
    assert models.parse_overrides("") == {}


@pytest.mark.parametrize("text, message", [
    ("moe.router", "comma-separated key=value"),
    ("moe..k=2", "comma-separated key=value"),
    ("k=2,k=3", "'k' is given twice"),
    ("moe=4,moe.k=2", "conflicts with a value set for 'moe'"),
])
def test_parse_refuses_malformed_items(text, message):
    with pytest.raises(ValueError, match=message):
        models.parse_overrides(text)


def apply(model_class, config, text):
    return models.apply_overrides(model_class, config,
                                  models.parse_overrides(text))


def test_overrides_update_the_moe_key_by_key_and_leave_the_preset():
    config = apply(models.MoELanguageModel, LM,
                   "moe.capacity_factor=2.0,moe.router_args.load_weight=0,"
                   "dropout=0.3")
    assert config["moe"] == dict(LM["moe"], capacity_factor=2.0,
                                 router_args={"load_weight": 0})
    assert config["dropout"] == 0.3
    assert LM["moe"] == {"num_experts": 16, "k": 4, "expert_hidden_dim": 256}
    # The configuration builds the model it describes.
    model = models.MoELanguageModel.from_config(config)
    [layer] = model.moe_layers()
    assert layer.capacity_factor == 2.0 and layer.router.load_weight == 0


def test_a_new_router_drops_the_arguments_of_the_old_one():
    config = apply(models.MoELanguageModel,
                   dict(LM, moe=dict(LM["moe"],
                                     router_args={"importance_weight": 1})),
                   "moe.router=switch,moe.eval_capacity_factor=4")
    assert config["moe"] == {"num_experts": 16, "expert_hidden_dim": 256,
                             "router": "switch", "eval_capacity_factor": 4}
    [layer] = models.MoELanguageModel.from_config(config).moe_layers()
    assert type(layer.router).__name__ == "SwitchRouter" and layer.k == 1
    # A router that takes k keeps the preset's.
    config = apply(models.MoELanguageModel, LM, "moe.router=strictly_balanced")
    assert config["moe"]["k"] == 4


def test_moe_means_every_moe_layer_of_the_translation_model():
    config = apply(models.MoETranslationModel, TRANSLATION,
                   "moe.capacity_factor=3,decoder_moe.num_experts=8")
    assert config["encoder_moe"] == dict(TRANSLATION["encoder_moe"],
                                         capacity_factor=3)
    assert config["decoder_moe"] == dict(TRANSLATION["decoder_moe"],
                                         capacity_factor=3, num_experts=8)


@pytest.mark.parametrize("model_class, config, text, message", [
    (models.MoELanguageModel, LM, "dropuot=0.1",
     "Unknown override 'dropuot': not an argument of MoELanguageModel; "
     "valid keys: candidate_sampler, dropout, feed_forward"),
    (models.MoELanguageModel, LM, "moe.capacity=2",
     "Unknown override 'moe.capacity': not an argument of MixtureOfExperts;"
     " valid keys: block_size, capacity_factor"),
    (models.MoELanguageModel, LM, "moe.router_args.load=0",
     "Unknown override 'moe.router_args.load': not an argument of "
     "NoisyTopKRouter \\(router='noisy_top_k'\\); valid keys: "
     "importance_weight, k"),
    (models.MoELanguageModel,
     language_model_presets.PRESETS["moe_256_h"], "moe.router=switch",
     "Unknown override 'moe.router': not an argument of "
     "HierarchicalMixtureOfExperts"),
    (models.MoELanguageModel, language_model_presets.PRESETS["4xlstm_512"],
     "moe.k=2", "Override 'moe': the model's moe is None"),
    (models.MoETranslationModel,
     translation_model_presets.PRESETS["small_baseline"], "moe.k=2",
     "Override 'moe': the model has no MoE layer"),
])
def test_unknown_keys_are_named_with_the_valid_ones(model_class, config,
                                                    text, message):
    with pytest.raises(ValueError, match=message):
        apply(model_class, config, text)


def test_values_and_conflicts_are_refused_by_the_layer_naming_the_argument():
    # The training scripts merge their model flags (here --k=2) with
    # --hparams before applying them, so the conflict reaches the layer.
    overrides = models.config_overrides.merge(
        {"moe": {"k": 2}}, models.parse_overrides("moe.router=switch"))
    config = models.apply_overrides(models.MoELanguageModel, LM, overrides)
    assert config["moe"]["k"] == 2
    with pytest.raises(ValueError, match="`k`=2 conflicts with "
                       "router=SwitchRouter"):
        models.MoELanguageModel.from_config(config)
    config = apply(models.MoELanguageModel, LM, "moe.capacity_factor=-1")
    with pytest.raises(ValueError, match="`capacity_factor` must be a "
                       "positive number"):
        models.MoELanguageModel.from_config(config)
