"""The GNMT-style MoE translation model of Shazeer et al. 2017 (Appendix E)."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe._constructor_config import constructor_config
from sgmoe._renamed_arguments import renamed_arguments
from sgmoe.models import moe_config
from sgmoe.models import moe_model
from sgmoe.models import translation_model_presets
from sgmoe.models.attention_decoder_cell import AttentionDecoderCell
from sgmoe.models.attention_decoder_cell import state_sizes
from sgmoe.models.projected_lstm_cell import ProjectedLSTMCell
from sgmoe.models.tanh_product_attention import TanhProductAttention
from sgmoe.models.translation_decoding import PADDING_ID
from sgmoe.models.translation_decoding import TranslationDecoding

# Filled in under every MoE configuration: the paper's experts (Appendix
# E) are 512 -> 2048 ReLU -> 512 with a sigmoid on the MoE output.
MOE_DEFAULTS = {"expert_hidden_dim": 2048, "output_activation": "sigmoid"}


@keras.saving.register_keras_serializable(package="sgmoe")
class MoETranslationModel(TranslationDecoding, moe_model.MoEModel):
    """GNMT-style encoder-decoder with MoE layers (Shazeer et al. 2017).

    "Outrageously Large Neural Networks" (arXiv:1701.06538), §5.3 and
    Appendix E: GNMT (Wu et al. 2016) cut to `encoder_layers` = 3 encoder and
    `decoder_layers` = 2 decoder LSTM layers, all `model_dim` = 512 wide
    (LSTMs of `lstm_units` = 2048 cells with a projection to 512), a MoE
    between encoder layers 2 and 3 and one between decoder layers 1 and 2,
    residual connections around every LSTM and MoE layer, the attention of
    Appendix G, and one wordpiece vocabulary shared by source and target
    (one embedding table for both).

    Encoder (source ids [batch, S], padding id 0 masked throughout):

        x = dropout(embed(source))
        x = x + dropout(bottom(x))          # bidirectional (GNMT): each
                                            # direction model_dim / 2 wide
        x = x + dropout(lstm_l(x))          # layers 2 .. encoder_layers - 1
        x = x + dropout(moe(x))             # before the top layer
        memory = x + dropout(lstm_top(x))

    Decoder (target input ids [batch, T], start id first), with the
    attention context c_t of `TanhProductAttention` (A(x_i, y) = sum_d V_d
    tanh((x_i U)_d) tanh((y W)_d), softmax over the unmasked source
    positions):

        e_t = dropout(embed(target_t))
        h_t = lstm_1([e_t; c_{t-1}])        # input feeding
        c_t = attention(query=h_t, memory)
        x_t = e_t + dropout(h_t)
        x_t = x_t + dropout(moe(x_t))
        x_t = x_t + dropout(lstm_l([x_t; c_t]))   # layers 2 .. decoder_layers
        logits_t = x_t W_out + b_out

    The bottom decoder LSTM both feeds the attention and receives its
    previous output (the paper: "the first decoder LSTM receiving output
    from and providing input for the attention"), and, as in GNMT, the
    context of the current step is sent to every upper decoder layer by
    concatenation with its input. Decoder states and the first context
    start at zero. In training the bottom decoder layer and its attention
    run as one recurrent layer over the target (a Keras RNN, so it compiles
    with XLA on both backends); the MoE and upper layers then run over the
    whole sequence.

    MoE layers (`encoder_moe`, `decoder_moe`): a dict of keyword arguments
    of `sgmoe.layers.MixtureOfExperts` (flat: "num_experts", "k",
    "router", ...) or, with "expert_groups" and "experts_per_group", of
    `sgmoe.layers.HierarchicalMixtureOfExperts` ("k_primary",
    "k_secondary", ...), over `MOE_DEFAULTS` (expert_hidden_dim 2048, a
    sigmoid output); None leaves the MoE out. The two may differ, e.g. in
    their number of experts (DeepSpeed-MoE's pyramid MoE, Rajbhandari et al.
    2022: more experts in the later layer). The paper uses strictly balanced
    gating (Appendix F; `router="strictly_balanced"`) for its flat MoEs; the
    hierarchical MoE layer uses noisy top-k gating at both levels. Each MoE
    sees all batch * length positions as one macro-batch, padding included:
    routers that look across the batch (strictly balanced in training,
    expert choice) therefore let a decoder position's routing depend on
    other positions, later ones included; the paper used strictly balanced
    gating anyway. Token-choice MoEs drop nothing at inference by default,
    so their outputs are independent of the padding and decoding scores
    equal teacher-forced ones; an `eval_capacity_factor` (or a strictly
    balanced router's inference cap, unless it reaches the whole batch as
    in the tiny presets) would let padding positions take expert capacity.

    Loss: compiled with `loss=None`, the model computes the mean token
    cross-entropy over non-padding targets plus the MoE balancing losses.

    Decoding: `greedy_decode` and `beam_search` (GNMT length penalty) run an
    incremental decoder (LSTM states, context and tokens carried from step
    to step) in one `keras.ops.while_loop` with static shapes, compiled with
    XLA by default (`tf.function(jit_compile=True)` on TensorFlow,
    `jax.jit` on JAX), once per output length and input bucket.
    `translate` goes from text to text with the model's shared
    `SubwordVocabulary` (the `vocabulary` argument, or the `vocabulary`
    attribute of the model).

    `MoETranslationModel.from_preset(name, **overrides)` builds the paper's
    configurations ("moe_32", "moe_512_h", "moe_2048_h", "gnmt_baseline")
    and tiny ones for tests ("tiny", "tiny_h", "tiny_pyramid",
    "tiny_baseline"); `sgmoe.models.count_translation_parameters` counts a
    configuration without building it.

    Args:
        vocabulary_size: V, the shared source/target wordpiece vocabulary
            (id 0 is padding).
        model_dim: width of the embedding, every LSTM output, the attention
            context and the MoE input and output (512 in the paper).
        lstm_units: memory cells of each LSTM (2048 in the paper); None
            means `model_dim`. Other values add a projection to `model_dim`
            (`ProjectedLSTMCell`). The bidirectional bottom encoder layer
            has lstm_units / 2 cells and model_dim / 2 outputs per
            direction.
        encoder_layers: encoder LSTM layers (>= 2; the MoE sits before the
            top one).
        decoder_layers: decoder LSTM layers (>= 2; the MoE sits after the
            bottom one).
        attention_dim: d of the attention function; None means
            `model_dim`.
        encoder_moe: the encoder MoE's configuration (see above) or None.
        decoder_moe: the decoder MoE's configuration or None.
        bidirectional_encoder: whether the bottom encoder layer is
            bidirectional, as in GNMT.
        dropout: rate of the dropout on the embeddings and on every layer's
            output before its residual sum.
        bos_id: the token the decoder starts from.
        eos_id: the token that ends a sentence.
        seed: seed of dropout and gating noise.
        **kwargs: base `keras.Model` arguments (name, dtype, ...).

    Call arguments:
        inputs: a pair (source_ids [batch, S], target_input_ids [batch, T]),
            int, padded with 0.
        training: whether to apply dropout, gating noise and the MoE losses.

    Returns:
        logits [batch, T, V] (float32).

    Example:

    >>> model = MoETranslationModel.from_preset("tiny")
    >>> source = ops.convert_to_tensor([[5, 6, 7, 2, 0]])
    >>> target = ops.convert_to_tensor([[1, 7, 6]])
    >>> tuple(model((source, target)).shape)
    (1, 3, 32)
    >>> decoded = model.beam_search(source, beam_width=4, max_length=6)
    >>> decoded["token_ids"].shape
    (1, 6)
    """

    MOE_ARGUMENTS = ("encoder_moe", "decoder_moe")
    BUILTIN_PRESETS = translation_model_presets.PRESETS

    def __init__(
        self,
        vocabulary_size,
        model_dim=512,
        lstm_units=2048,
        encoder_layers=3,
        decoder_layers=2,
        attention_dim=None,
        encoder_moe=None,
        decoder_moe=None,
        bidirectional_encoder=True,
        dropout=0.0,
        bos_id=1,
        eos_id=2,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "moe_translation_model")
        super().__init__(**kwargs)
        self.vocabulary_size = _validation.check_positive_int(
            "vocabulary_size", vocabulary_size)
        self.model_dim = _validation.check_positive_int("model_dim",
                                                        model_dim)
        self.lstm_units = _validation.check_optional_positive_int(
            "lstm_units", lstm_units)
        self.encoder_layers = _validation.check_positive_int(
            "encoder_layers", encoder_layers)
        self.decoder_layers = _validation.check_positive_int(
            "decoder_layers", decoder_layers)
        for name, value in (("encoder_layers", encoder_layers),
                            ("decoder_layers", decoder_layers)):
            if value < 2:
                raise ValueError(
                    f"`{name}` must be at least 2 (the MoE sits between two "
                    f"LSTM layers), received {name}={value!r}.")
        self.attention_dim = _validation.check_optional_positive_int(
            "attention_dim", attention_dim)
        self.encoder_moe = moe_config.check_moe_config("encoder_moe",
                                                       encoder_moe)
        self.decoder_moe = moe_config.check_moe_config("decoder_moe",
                                                       decoder_moe)
        self.bidirectional_encoder = bool(bidirectional_encoder)
        if self.bidirectional_encoder and (
                self.model_dim % 2 or self._units % 2):
            raise ValueError(
                "A bidirectional bottom encoder layer splits `model_dim` and "
                "`lstm_units` between its directions, so both must be even; "
                f"received model_dim={model_dim}, lstm_units={lstm_units}.")
        self.dropout = _validation.check_unit_interval("dropout", dropout)
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
            if (isinstance(value, bool) or not isinstance(value, int)
                    or not 0 < value < self.vocabulary_size):
                raise ValueError(
                    f"`{name}` must be a token id in [1, vocabulary_size), "
                    f"received {name}={value!r}.")
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.seed = seed

        dim, policy = self.model_dim, self.dtype_policy
        self.embedding = keras.layers.Embedding(
            self.vocabulary_size, dim, dtype=policy, name="embedding")
        if self.bidirectional_encoder:
            bottom = keras.layers.Bidirectional(
                self._lstm_layer(self._units // 2, dim // 2, "bottom"),
                dtype=policy, name="encoder_lstm_1")
        else:
            bottom = self._lstm_layer(self._units, dim, "encoder_lstm_1")
        self.encoder_lstms = [bottom] + [
            self._lstm_layer(self._units, dim, f"encoder_lstm_{i}")
            for i in range(2, self.encoder_layers + 1)]
        self.encoder_moe_layer = self._moe_layer(self.encoder_moe,
                                                 "encoder_moe", 1)
        self.decoder_bottom = keras.layers.RNN(
            AttentionDecoderCell(
                self._lstm_cell(self._units, dim, "lstm"),
                TanhProductAttention(self.attention_dim or dim, dtype=policy,
                                     name="attention"),
                memory_dim=dim, dtype=policy, name="attention_lstm_cell"),
            return_sequences=True, dtype=policy, name="decoder_lstm_1")
        self.decoder_moe_layer = self._moe_layer(self.decoder_moe,
                                                 "decoder_moe", 2)
        self.decoder_lstms = [
            self._lstm_layer(self._units, dim, f"decoder_lstm_{i}")
            for i in range(2, self.decoder_layers + 1)]
        self.output_projection = keras.layers.Dense(
            self.vocabulary_size, dtype=policy, name="output_projection")
        # One seeded dropout per residual branch, in call order.
        names = (["source_embedding", "encoder_moe"]
                 + [f"encoder_lstm_{i}"
                    for i in range(1, self.encoder_layers + 1)]
                 + ["target_embedding", "decoder_lstm_1", "decoder_moe"]
                 + [f"decoder_lstm_{i}"
                    for i in range(2, self.decoder_layers + 1)])
        self.dropouts = [
            keras.layers.Dropout(self.dropout, seed=self._seed(10 + i),
                                 dtype=policy, name=f"{name}_dropout")
            for i, name in enumerate(names)]
        self._decoders = {}
        # The tokenizer `translate` uses when given none.
        self.vocabulary = None

    # Construction.

    @property
    def attention(self):
        """The decoder's `TanhProductAttention`."""
        return self.decoder_bottom.cell.attention

    @property
    def _units(self):
        return self.lstm_units or self.model_dim

    def _seed(self, offset):
        return None if self.seed is None else self.seed + 1000 * offset

    def _lstm_cell(self, units, output_dim, name):
        if units == output_dim:
            return keras.layers.LSTMCell(units, dtype=self.dtype_policy,
                                         name=name)
        return ProjectedLSTMCell(units, output_dim, dtype=self.dtype_policy,
                                 name=name)

    def _lstm_layer(self, units, output_dim, name):
        if units == output_dim:
            return keras.layers.LSTM(units, return_sequences=True,
                                     dtype=self.dtype_policy, name=name)
        return keras.layers.RNN(
            ProjectedLSTMCell(units, output_dim, dtype=self.dtype_policy),
            return_sequences=True, dtype=self.dtype_policy, name=name)

    def _moe_layer(self, config, name, index):
        if config is None:
            return None
        return moe_config.make_moe_layer(
            config, MOE_DEFAULTS, name=name, dtype=self.dtype_policy,
            seed=self._seed(100 + index))

    def build(self, input_shape=None):
        dim = self.model_dim
        sequence = (None, None, dim)
        self.embedding.build((None, None))
        for layer in self.encoder_lstms:
            layer.build(sequence)
        for moe in (self.encoder_moe_layer, self.decoder_moe_layer):
            if moe is not None:
                moe.build(sequence)
        self.decoder_bottom.build(sequence)
        for layer in self.decoder_lstms:
            layer.build((None, None, 2 * dim))
        self.output_projection.build(sequence)
        self.built = True

    # Forward pass.

    def _drop(self, index, x, training):
        return self.dropouts[index](x, training=training)

    def encode(self, source_ids, training=None):
        """Encoder outputs [batch, S, model_dim] and the source mask."""
        source_ids = ops.convert_to_tensor(source_ids, "int32")
        mask = ops.not_equal(source_ids, PADDING_ID)
        x = self._drop(0, self.embedding(source_ids), training)
        for i, layer in enumerate(self.encoder_lstms):
            if i == len(self.encoder_lstms) - 1 and (
                    self.encoder_moe_layer is not None):
                x = x + self._drop(
                    1, self.encoder_moe_layer(x, training=training), training)
            x = x + self._drop(2 + i, layer(x, mask=mask, training=training),
                               training)
        return x, mask

    def _zero_decoder_state(self, batch_size):
        """[bottom LSTM states..., context, upper LSTM states...]."""
        def zeros(size):
            return ops.zeros((batch_size, size), self.compute_dtype)

        state = [zeros(size) for size in self.decoder_bottom.cell.state_size]
        for layer in self.decoder_lstms:
            state.extend(zeros(size) for size in state_sizes(layer.cell))
        return state

    def decode_step(self, token_ids, state, memory, memory_mask,
                    memory_keys=None):
        """One incremental decoder step (inference: no dropout or noise).

        Args:
            token_ids: [N] int, the previous target tokens.
            state: the list from the previous step (zeros at the first, see
                `initial_decoder_state`).
            memory: encoder outputs [N, S, model_dim].
            memory_mask: bool [N, S].
            memory_keys: `self.attention.memory_keys(memory)`, computed once
                per sentence; None computes it here.

        Returns:
            (logits [N, V] float32, the new state).
        """
        if memory_keys is None:
            memory_keys = self.attention.memory_keys(memory)
        x = self.embedding(ops.convert_to_tensor(token_ids, "int32"))
        bottom_size = len(self.decoder_bottom.cell.state_size)
        output, new_state = self.decoder_bottom.cell.step(
            x, list(state[:bottom_size]), memory_keys, memory, memory_mask)
        output, context = ops.split(output, 2, axis=-1)
        new_state = list(new_state)
        x = x + output
        if self.decoder_moe_layer is not None:
            x = x + self.decoder_moe_layer(x, training=False)
        position = len(new_state)
        for layer in self.decoder_lstms:
            size = len(state_sizes(layer.cell))
            output, layer_state = layer.cell(
                ops.concatenate([x, context], axis=-1),
                list(state[position:position + size]))
            new_state.extend(layer_state)
            position += size
            x = x + output
        logits = ops.cast(self.output_projection(x), "float32")
        return logits, new_state

    def initial_decoder_state(self, batch_size):
        """The zero decoder state `decode_step` starts from."""
        return self._zero_decoder_state(batch_size)

    def call(self, inputs, training=None):
        source_ids, target_ids = _split_inputs(inputs)
        memory, mask = self.encode(source_ids, training=training)
        keys = self.attention.memory_keys(memory)
        target_ids = ops.convert_to_tensor(target_ids, "int32")
        offset = 2 + len(self.encoder_lstms)
        x = self._drop(offset, self.embedding(target_ids), training)
        with self.decoder_bottom.cell.attending(keys, memory, mask):
            sequence = self.decoder_bottom(x, training=training)
        outputs, context = ops.split(sequence, 2, axis=-1)
        x = x + self._drop(offset + 1, outputs, training)
        if self.decoder_moe_layer is not None:
            x = x + self._drop(
                offset + 2, self.decoder_moe_layer(x, training=training),
                training)
        for i, layer in enumerate(self.decoder_lstms):
            x = x + self._drop(
                offset + 3 + i,
                layer(ops.concatenate([x, context], axis=-1),
                      training=training), training)
        return ops.cast(self.output_projection(x), "float32")

    def compute_output_shape(self, input_shape):
        target_shape = tuple(input_shape[1])
        return target_shape + (self.vocabulary_size,)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        """Mean token cross-entropy over non-padding targets + MoE losses,
        unless a loss was given to `compile`."""
        if getattr(self, "_compile_loss", None) is not None:
            return super().compute_loss(x, y, y_pred, sample_weight,
                                        training=training)
        token_losses = keras.losses.sparse_categorical_crossentropy(
            y, y_pred, from_logits=True)
        weights = ops.cast(ops.not_equal(y, PADDING_ID), "float32")
        if sample_weight is not None:
            weights = weights * ops.cast(sample_weight, "float32")
        loss = ops.divide_no_nan(ops.sum(token_losses * weights),
                                 ops.sum(weights))
        return moe_model.plus_auxiliary_losses(loss, self.losses)

    def get_config(self):
        return {**super().get_config(),
                **constructor_config(self, MoETranslationModel)}

    @classmethod
    def from_config(cls, config):
        return cls(**renamed_arguments(
            config, {"start_id": "bos_id", "end_id": "eos_id"}))


def _split_inputs(inputs):
    if isinstance(inputs, dict):
        return inputs["source_ids"], inputs["target_ids"]
    if isinstance(inputs, (list, tuple)) and len(inputs) == 2:
        return inputs
    raise ValueError(
        "MoETranslationModel takes (source_ids, target_input_ids), or a dict "
        "with 'source_ids' and 'target_ids'; received "
        f"{type(inputs).__name__}.")
