"""SavedModels for serving: int32 token ids in, logits or generated ids
out, and text in and out when the model carries its tokenizer."""

import keras
from keras import ops

from sgmoe import _validation
from sgmoe.models import samplers
from sgmoe.models.language_model_generation import LanguageModelGeneration


def export_for_serving(model, filepath, verbose=False,
                       max_translation_length=256):
    """Writes a TensorFlow SavedModel of `model` for serving.

    Endpoints, loadable with `tf.saved_model.load` in a process that does
    not import sgmoe (or Keras):

    * `serve(token_ids)`: the model's inference call on int32 ids
      ([batch, time] for a language model; `(source_ids, target_ids)`
      for a translation model), the logits [batch, time, V];
    * a language model also gets `generate(token_ids, max_length)`:
      greedy continuation of int32 prompts [batch, P], right-padded with
      the padding id (the model's `padding_id`, else 0), to int32
      [batch, max(max_length, P)] ids, stopping a row at the vocabulary's
      end id when the model carries a vocabulary (padding after it);
    * and, when the language model carries a `WordVocabulary`,
      `generate_text(prompts, max_length)`: strings in (each prompt after
      the start token `<S>`), generated strings out. Its tokenizer runs
      in the graph with tensorflow-text, so a serving process imports
      `tensorflow_text` before loading;
    * a translation model gets `translate(source_ids)`: greedy decoding
      of int32 sources [batch, S] (each ended with the end id, padding 0
      after it) to int32 [batch, max_translation_length] target ids, each
      row cut after twice its source's tokens, as
      `sgmoe.evaluation.translate_lines` cuts it (padding after the end);
    * and, when it carries a `SubwordVocabulary`, `translate_text(lines)`:
      strings in, translated strings out (sources cut to
      `max_translation_length // 2` pieces), with tensorflow-text's
      SentencePiece in the graph.

    Generation and translation run on the TensorFlow backend only (the
    export of a JAX model has `serve`).

    Args:
        model: a built `MoELanguageModel` or `MoETranslationModel`.
        filepath: the directory to write.
        verbose: print the endpoints.
        max_translation_length: the longest translation, in pieces (the
            end id included).
    """
    import tensorflow as tf

    if not model.built:
        raise ValueError("Build the model before exporting it.")
    max_translation_length = _validation.check_positive_int(
        "max_translation_length", max_translation_length)
    archive = keras.export.ExportArchive()
    archive.track(model)
    ids = tf.TensorSpec((None, None), tf.int32)
    if isinstance(model, LanguageModelGeneration):
        archive.add_endpoint(
            "serve", lambda token_ids: model(token_ids, training=False),
            input_signature=[ids])
    else:
        archive.add_endpoint(
            "serve", lambda source_ids, target_ids: model(
                (source_ids, target_ids), training=False),
            input_signature=[ids, ids])
    on_tensorflow = keras.backend.backend() == "tensorflow"
    if not isinstance(model, LanguageModelGeneration) and on_tensorflow:
        _add_translation_endpoints(archive, model, max_translation_length)
    if isinstance(model, LanguageModelGeneration) and on_tensorflow:
        length = tf.TensorSpec((), tf.int32)
        archive.add_endpoint(
            "generate", lambda token_ids, max_length: _greedy_ids(
                model, token_ids, max_length),
            input_signature=[ids, length])
        vocabulary = getattr(model, "vocabulary", None)
        if vocabulary is not None and hasattr(vocabulary, "encode"):
            # The word -> id table is a resource the archive must hold.
            archive.track(vocabulary.lookup_table)
            archive.add_endpoint(
                "generate_text", lambda prompts, max_length: _greedy_text(
                    model, vocabulary, prompts, max_length),
                input_signature=[tf.TensorSpec((None,), tf.string), length])
    archive.write_out(filepath, verbose=verbose)


def _padding_id(model):
    return 0 if model.padding_id is None else model.padding_id


def _greedy_ids(model, token_ids, max_length, eos_id=None):
    """Greedy generation in the graph: int32 [B, P] prompts -> [B, L]."""
    padding_id = _padding_id(model)
    vocabulary = getattr(model, "vocabulary", None)
    if eos_id is None:
        eos_id = -1 if vocabulary is None else vocabulary.eos_id
    token_ids = ops.cast(token_ids, "int32")
    batch_size, prompt_length = ops.shape(token_ids)[0], ops.shape(
        token_ids)[1]
    buffer_length = ops.maximum(max_length, prompt_length)
    buffer = ops.concatenate([token_ids, ops.full(
        (batch_size, buffer_length - prompt_length), padding_id, "int32")],
        axis=1)
    prompt_lengths = ops.sum(ops.cast(ops.not_equal(token_ids, padding_id),
                                      "int32"), axis=1)
    tokens, _, _ = model._generation_loop(
        buffer, prompt_lengths, ops.zeros(ops.shape(buffer), "float32"),
        buffer_length, ops.convert_to_tensor(eos_id, "int32"),
        samplers.GreedySampler(), padding_id)
    return tokens


def _greedy_text(model, vocabulary, prompts, max_length):
    """Greedy generation of text: each prompt after `<S>`."""
    import tensorflow as tf

    ids = vocabulary.encode(prompts)
    starts = tf.fill([tf.shape(prompts)[0], 1], vocabulary.bos_id)
    ids = tf.concat([tf.cast(starts, tf.int32), ids], axis=1)
    tokens = _greedy_ids(model, ids.to_tensor(_padding_id(model)),
                         max_length)
    return vocabulary.decode(tokens)


def _add_translation_endpoints(archive, model, max_length):
    import tensorflow as tf

    archive.add_endpoint(
        "translate", lambda source_ids: _greedy_translation(
            model, source_ids, max_length),
        input_signature=[tf.TensorSpec((None, None), tf.int32)])
    vocabulary = getattr(model, "vocabulary", None)
    if vocabulary is not None and hasattr(vocabulary, "tokenize"):
        archive.add_endpoint(
            "translate_text", lambda lines: _translated_text(
                model, vocabulary, lines, max_length),
            input_signature=[tf.TensorSpec((None,), tf.string)])


def _greedy_translation(model, source_ids, max_length):
    """int32 sources [B, S] -> target ids [B, max_length], each row
    padded after twice its source's length."""
    source_ids = ops.cast(source_ids, "int32")
    token_ids = model._search(source_ids, "greedy", max_length)["token_ids"]
    source_lengths = ops.sum(ops.cast(ops.not_equal(source_ids, 0),
                                      "int32"), axis=1)
    positions = ops.arange(max_length, dtype="int32")[None, :]
    return ops.where(positions < 2 * source_lengths[:, None], token_ids, 0)


def _translated_text(model, vocabulary, lines, max_length):
    import tensorflow as tf

    pieces = vocabulary.tokenize(lines)[:, :max(1, max_length // 2) - 1]
    ends = tf.fill([tf.shape(lines)[0], 1], vocabulary.eos_id)
    sources = tf.concat([tf.cast(pieces, tf.int32), ends], axis=1)
    return vocabulary.detokenize(_greedy_translation(
        model, sources.to_tensor(0), max_length))
