"""The LSTM-MoE language model of Shazeer et al. 2017 (Appendix C.1)."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe._renamed_arguments import renamed_arguments
from sgmoe.models import language_model_presets
from sgmoe.models import moe_config
from sgmoe.models import moe_model
from sgmoe.models.deep_feed_forward import DeepFeedForward
from sgmoe.models.language_model_generation import LanguageModelGeneration
from sgmoe.models.perplexity import token_weights
from sgmoe.models.projected_lstm_cell import ProjectedLSTMCell
from sgmoe.models.sampled_softmax import SampledSoftmax

LAYER_TYPES = ("lstm", "moe", "feed_forward")


# Filled in under the MoE and feed-forward configurations: the paper's
# experts (Appendix C.1) are d -> 1024 ReLU -> d, with a sigmoid on the
# layer's output.
MOE_DEFAULTS = {"expert_hidden_dim": 1024, "output_activation": "sigmoid"}
FEED_FORWARD_DEFAULTS = {"hidden_dim": 1024, "output_activation": "sigmoid"}

def resolve_experts(num_experts, expert_groups, experts_per_group):
    """(num_experts, experts_per_group) of a flat or hierarchical MoE.

    Flat (expert_groups None): experts_per_group must be None. Hierarchical:
    experts_per_group defaults to num_experts / expert_groups, num_experts to
    expert_groups * experts_per_group, and given values must agree.
    """
    if num_experts is not None:
        num_experts = _validation.check_positive_int("num_experts",
                                                     num_experts)
    if expert_groups is None:
        if experts_per_group is not None:
            raise ValueError(
                "`experts_per_group` is only used with `expert_groups` (a "
                "hierarchical MoE), received expert_groups=None, "
                f"experts_per_group={experts_per_group!r}.")
        return num_experts, None
    expert_groups = _validation.check_positive_int("expert_groups",
                                                   expert_groups)
    if experts_per_group is None:
        if num_experts is None or num_experts % expert_groups:
            raise ValueError(
                "A hierarchical MoE needs `experts_per_group`, or "
                "`num_experts` divisible by `expert_groups`; received "
                f"num_experts={num_experts!r}, expert_groups={expert_groups}.")
        return num_experts, num_experts // expert_groups
    experts_per_group = _validation.check_positive_int("experts_per_group",
                                                       experts_per_group)
    if num_experts not in (None, expert_groups * experts_per_group):
        raise ValueError(
            f"`num_experts` must be expert_groups * experts_per_group = "
            f"{expert_groups * experts_per_group}, received "
            f"num_experts={num_experts}.")
    return expert_groups * experts_per_group, experts_per_group


@keras.saving.register_keras_serializable(package="sgmoe")
class MoELanguageModel(LanguageModelGeneration, moe_model.MoEModel):
    """Embedding -> LSTM -> MoE -> LSTM -> softmax (Shazeer et al. 2017).

    The 1 Billion Word model of "Outrageously Large Neural Networks"
    (arXiv:1701.06538, Appendix C.1): a word embedding, then the layers of
    `layer_types` (by default an LSTM, a sparsely-gated MoE and an LSTM), all
    `model_dim` wide, then a softmax over the vocabulary. Every layer's
    output but the softmax's goes through dropout, and every layer after the
    embedding is residual:

        x_0 = dropout(embed(ids))
        x_l = x_{l-1} + dropout(layer_l(x_{l-1}))
        logits = x_L W_softmax^T + b

    The MoE layer is configured by `moe`, a dict of its arguments (see
    `sgmoe.models.moe_config`, the same keys as `MoETranslationModel`'s):
    `sgmoe.layers.MixtureOfExperts` arguments ({"num_experts": 256, "k":
    4, "router_args": {"importance_weight": 0.1}}), or, with
    "expert_groups", `sgmoe.layers.HierarchicalMixtureOfExperts` ones
    ({"expert_groups": 16, "experts_per_group": 16, "k_primary": 2,
    "k_secondary": 2}), over `MOE_DEFAULTS`: experts d -> 1024 ReLU -> d
    and a sigmoid on the layer's output, before dropout. The MoE sees every
    timestep of the batch at once (its input [batch, time, d] is one
    macro-batch of batch * time tokens); its balancing losses join the
    training loss.

    Layer types: "lstm" is `keras.layers.LSTM(lstm_units)`, or, when
    `lstm_units` differs from `model_dim`, an LSTM with a projection back to
    `model_dim` (`ProjectedLSTMCell`, as the paper's LSTM-2048-512 and
    MoE-143M); "moe" is the MoE layer; "feed_forward" is a `DeepFeedForward`
    configured by `feed_forward` over `FEED_FORWARD_DEFAULTS` (ReLU layers
    of 1024 units and a sigmoid output), the single-expert "MoE" of the
    paper's MoE-1-Wide and MoE-1-Deep baselines.

    Loss: the model computes its own loss, the mean token cross-entropy over
    the non-padding targets, plus the MoE balancing losses; compile it with
    `loss=None` (a compiled loss replaces the cross-entropy of the exact
    softmax). With `num_sampled`, training uses the importance-sampled
    softmax of `SampledSoftmax` (the paper's large-vocabulary training) and
    never computes the full [batch, time, V] logits: in training the model's
    output is then {"hidden_states": [batch, time, d]} and compiled metrics
    are updated only in evaluation. Evaluation and prediction always use the
    exact softmax. Use `Perplexity` as a metric.

    Generation: `generate(prompts, max_length, sampler=...)` continues
    prompts (token ids, or text with a `vocabulary`) with greedy, top-k,
    top-p or temperature sampling (`sgmoe.models.samplers`), stepping the
    LSTM cells one token at a time with their states carried, in one
    XLA-compiled loop per length and batch bucket.

    `MoELanguageModel.from_preset(name)` builds the paper's configurations
    (Table 7) and `save_to_preset` / `from_preset(directory)` store and load
    a trained model. `count_parameters` and `ops_per_timestep` count a
    configuration without building it.

    Args:
        vocabulary_size: V, words of the embedding and the softmax.
        model_dim: width of the embedding, the LSTM outputs and the MoE
            input and output (512 in the paper).
        layer_types: the layers between embedding and softmax, each "lstm",
            "moe" or "feed_forward".
        lstm_units: memory cells of each LSTM; None means `model_dim`. Other
            values add a projection to `model_dim` (LSTMP).
        moe: the MoE layer's arguments (see above); needed with a "moe"
            layer type (unless `moe_per_layer` gives them).
        moe_per_layer: None, or one dict per "moe" of `layer_types`, in
            order: that layer's arguments over `moe` (key by key, deeply),
            e.g. [{"num_experts": 16}, {"num_experts": 32}] for
            DeepSpeed-MoE's pyramid (more experts in later layers);
            with {"residual_expert": True} in `moe`, its PR-MoE
            (Rajbhandari et al. 2022).
        feed_forward: `DeepFeedForward` arguments of the "feed_forward"
            layers ("hidden_dim", "num_hidden_layers", "use_bias").
        dropout: DropProb, dropout rate after every layer but the softmax.
        num_sampled: candidates of the sampled softmax in training; None
            trains with the exact softmax.
        candidate_sampler: proposal of the sampled softmax, "log_uniform"
            (ids sorted by decreasing frequency) or "uniform".
        padding_id: target id left out of the loss; None counts every token.
        seed: seed of dropout, gating noise and candidate sampling.
        **kwargs: base `keras.Model` arguments (name, dtype, ...).

    Call arguments:
        inputs: int word ids [batch, time].
        training: whether to apply dropout, gating noise and (with
            `num_sampled`) return hidden states for the sampled loss.

    Returns:
        logits [batch, time, V] (float32), or {"hidden_states": [batch,
        time, d]} in training with `num_sampled`.

    Example:

    >>> model = MoELanguageModel.from_preset("tiny_moe")
    >>> model.compile(optimizer="adam", metrics=[Perplexity()])
    >>> tuple(model(ops.ones((2, 5), "int32")).shape)
    (2, 5, 100)
    """

    preset_input_shape = (None, None)
    MOE_ARGUMENTS = ("moe",)
    BUILTIN_PRESETS = language_model_presets.PRESETS

    def __init__(
        self,
        vocabulary_size,
        model_dim=512,
        layer_types=("lstm", "moe", "lstm"),
        lstm_units=None,
        moe=None,
        moe_per_layer=None,
        feed_forward=None,
        dropout=0.0,
        num_sampled=None,
        candidate_sampler="log_uniform",
        padding_id=None,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "moe_language_model")
        super().__init__(**kwargs)
        self.vocabulary_size = _validation.check_positive_int(
            "vocabulary_size", vocabulary_size)
        self.model_dim = _validation.check_positive_int("model_dim",
                                                        model_dim)
        if isinstance(layer_types, str) or not all(
                t in LAYER_TYPES for t in layer_types):
            raise ValueError(
                f"`layer_types` must be a sequence of {list(LAYER_TYPES)}, "
                f"received layer_types={layer_types!r}.")
        self.layer_types = tuple(layer_types)
        self.lstm_units = _validation.check_optional_positive_int(
            "lstm_units", lstm_units)
        self.moe = moe_config.check_moe_config("moe", moe)
        self.moe_per_layer = moe_config.check_moe_per_layer(
            "moe_per_layer", moe_per_layer, self.layer_types.count("moe"))
        if ("moe" in self.layer_types and self.moe is None
                and self.moe_per_layer is None):
            raise ValueError(
                "A 'moe' layer needs `moe`, a dict of MoE layer arguments, "
                "received moe=None.")
        if feed_forward is not None and not isinstance(feed_forward, dict):
            raise ValueError(
                "`feed_forward` must be None or a dict of DeepFeedForward "
                f"arguments, received feed_forward={feed_forward!r}.")
        self.feed_forward = None if feed_forward is None else dict(
            feed_forward)
        self.dropout = _validation.check_non_negative_float("dropout",
                                                            dropout)
        if self.dropout >= 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1), received dropout={dropout!r}.")
        self.num_sampled = num_sampled
        self.candidate_sampler = candidate_sampler
        self.padding_id = _validation.check_optional_id("padding_id",
                                                        padding_id)
        self.seed = seed

        self.embedding = keras.layers.Embedding(
            self.vocabulary_size, self.model_dim, dtype=self.dtype_policy,
            name="embedding")
        self.embedding_dropout = keras.layers.Dropout(
            self.dropout, seed=self._seed(0), dtype=self.dtype_policy,
            name="embedding_dropout")
        names = self._layer_names()
        # Appended in pairs so that summaries list them in order.
        self.blocks, self.block_dropouts = [], []
        for i, (layer_type, name) in enumerate(zip(self.layer_types, names)):
            self.blocks.append(self._make_layer(layer_type, name, i + 1))
            self.block_dropouts.append(keras.layers.Dropout(
                self.dropout, seed=self._seed(i + 1), dtype=self.dtype_policy,
                name=f"{name}_dropout"))
        self.softmax = SampledSoftmax(
            self.vocabulary_size, num_sampled=num_sampled,
            candidate_sampler=candidate_sampler,
            seed=self._seed(len(names) + 1), dtype=self.dtype_policy,
            name="softmax")
        self._generators = {}
        # The tokenizer `generate` uses for text prompts when given none.
        self.vocabulary = None

    def _seed(self, offset):
        return None if self.seed is None else self.seed + 1000 * offset

    def _layer_names(self):
        """"lstm_1", "moe", "lstm_2": a type's index only if it repeats."""
        names, seen = [], {}
        for layer_type in self.layer_types:
            seen[layer_type] = seen.get(layer_type, 0) + 1
            repeated = self.layer_types.count(layer_type) > 1
            names.append(f"{layer_type}_{seen[layer_type]}" if repeated
                         else layer_type)
        return names

    def _make_layer(self, layer_type, name, index):
        dim, policy = self.model_dim, self.dtype_policy
        if layer_type == "lstm":
            units = self.lstm_units or dim
            if units == dim:
                return keras.layers.LSTM(units, return_sequences=True,
                                         dtype=policy, name=name)
            return keras.layers.RNN(
                ProjectedLSTMCell(units, dim, dtype=policy),
                return_sequences=True, dtype=policy, name=name)
        if layer_type == "feed_forward":
            arguments = dict(FEED_FORWARD_DEFAULTS, **(self.feed_forward or {}))
            _validation.check_arguments("feed_forward", DeepFeedForward,
                                        arguments)
            return DeepFeedForward(dtype=policy, name=name, **arguments)
        ordinal = self.layer_types[:index - 1].count("moe")
        return moe_config.make_moe_layer(
            moe_config.layer_config(self.moe, self.moe_per_layer, ordinal),
            MOE_DEFAULTS, name=name, dtype=policy,
            seed=self._seed(100 + index))

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.embedding.build(input_shape)
        hidden_shape = input_shape + (self.model_dim,)
        for layer in self.blocks:
            layer.build(hidden_shape)
        self.softmax.build(hidden_shape)

    def call(self, inputs, training=None):
        x = self.embedding_dropout(self.embedding(inputs), training=training)
        for layer, dropout in zip(self.blocks, self.block_dropouts):
            x = x + dropout(layer(x, training=training), training=training)
        if training and self.num_sampled is not None:
            return {"hidden_states": x}
        return self.softmax(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.vocabulary_size,)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        """Mean token cross-entropy over non-padding targets + MoE losses.

        Sampled in training with `num_sampled` (y_pred is then the hidden
        states); exact otherwise, unless a loss was given to `compile`.
        """
        if isinstance(y_pred, dict):
            token_losses = self.softmax.sampled_loss(
                y_pred["hidden_states"], y)
        elif getattr(self, "_compile_loss", None) is not None:
            return super().compute_loss(x, y, y_pred, sample_weight,
                                        training=training)
        else:
            token_losses = keras.losses.sparse_categorical_crossentropy(
                y, y_pred, from_logits=True)
        weights = token_weights(y, self.padding_id, sample_weight)
        loss = ops.divide_no_nan(ops.sum(token_losses * weights),
                                 ops.sum(weights))
        return moe_model.plus_auxiliary_losses(loss, self.losses)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if not isinstance(y_pred, dict):
            return super().compute_metrics(x, y, y_pred, sample_weight)
        # Sampled-softmax training: no logits for the compiled metrics, so
        # they are left out of the logs rather than shown stale.
        return self._metric_results(include_compiled=False)

    def get_metrics_result(self):
        compiled = getattr(self, "_compile_metrics", None)
        # Compiled metrics are built by their first update, which
        # sampled-softmax training never makes.
        return self._metric_results(
            include_compiled=compiled is None or compiled.built)

    def _metric_results(self, include_compiled):
        compiled = getattr(self, "_compile_metrics", None)
        logs = {}
        for metric in self.metrics:
            if metric is compiled and not include_compiled:
                continue
            result = metric.result()
            logs.update(result if isinstance(result, dict)
                        else {metric.name: result})
        return logs

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, MoELanguageModel)}

    @classmethod
    def from_config(cls, config):
        # Saved before the renames of `num_groups` and `sampler`.
        return cls(**_nested_layer_arguments(renamed_arguments(
            config, {"num_groups": "expert_groups",
                     "sampler": "candidate_sampler"})))


# The layer arguments the model took flat before `moe` and `feed_forward`.
_FLAT_ARGUMENTS = ("num_experts", "k", "expert_groups", "experts_per_group",
                   "k_primary", "k_secondary", "expert_hidden_dim",
                   "expert_use_bias", "feed_forward_hidden_layers",
                   "capacity_factor", "eval_capacity_factor",
                   "importance_weight", "load_weight")


def _nested_layer_arguments(config):
    """A config saved with the layers' arguments flat, as `moe` and
    `feed_forward` dicts (the former defaults fill what it leaves out)."""
    if not any(name in config for name in _FLAT_ARGUMENTS):
        return config
    config = dict(config)
    flat = {"num_experts": None, "k": 4, "expert_groups": None,
            "experts_per_group": None, "k_primary": 2, "k_secondary": 2,
            "expert_hidden_dim": 1024, "expert_use_bias": True,
            "feed_forward_hidden_layers": 1, "capacity_factor": 1.25,
            "eval_capacity_factor": None, "importance_weight": 0.1,
            "load_weight": 0.1}
    flat.update({name: config.pop(name) for name in _FLAT_ARGUMENTS
                 if name in config})
    layer_types = config.get("layer_types", ("lstm", "moe", "lstm"))
    if "feed_forward" in layer_types:
        config["feed_forward"] = {
            "hidden_dim": flat["expert_hidden_dim"],
            "num_hidden_layers": flat["feed_forward_hidden_layers"],
            "use_bias": flat["expert_use_bias"]}
    num_experts, per_group = resolve_experts(
        flat["num_experts"], flat["expert_groups"], flat["experts_per_group"])
    if num_experts is not None:
        moe = {"expert_hidden_dim": flat["expert_hidden_dim"],
               "use_bias": flat["expert_use_bias"],
               "capacity_factor": flat["capacity_factor"],
               "eval_capacity_factor": flat["eval_capacity_factor"]}
        balancing = {"importance_weight": flat["importance_weight"],
                     "load_weight": flat["load_weight"]}
        if flat["expert_groups"] is None:
            moe.update(num_experts=num_experts, k=flat["k"],
                       router_args=balancing)
        else:
            moe.update(expert_groups=flat["expert_groups"],
                       experts_per_group=per_group,
                       k_primary=flat["k_primary"],
                       k_secondary=flat["k_secondary"], **balancing)
        config["moe"] = moe
    return config
