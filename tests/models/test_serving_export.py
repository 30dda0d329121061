"""SavedModels for serving, reloaded in a process that imports TensorFlow
(and tensorflow-text) but not sgmoe."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from sgmoe.data import SubwordVocabulary
from sgmoe.data import WordVocabulary
from sgmoe.evaluation import translate_lines
from sgmoe.models import MoELanguageModel
from sgmoe.models import MoETranslationModel
from sgmoe.models import export_for_serving

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                       reason="generation exports on the TensorFlow "
                       "backend; tested in the TensorFlow pass"),
]

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                    "data")

SERVE = """
import sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # the tokenizer's ops
inputs = np.load(sys.argv[2])
model = tf.saved_model.load(sys.argv[1])
outputs = {}
if "source_ids" in inputs:
    outputs["logits"] = model.serve(inputs["source_ids"],
                                    inputs["target_ids"]).numpy()
    outputs["translated"] = model.translate(inputs["source_ids"]).numpy()
    outputs["text"] = np.array([text.decode() for text in model.translate_text(
        tf.constant(inputs["lines"])).numpy()])
else:
    outputs["logits"] = model.serve(inputs["token_ids"]).numpy()
    outputs["generated"] = model.generate(inputs["prompts"], 9).numpy()
    outputs["text"] = np.array([text.decode() for text in model.generate_text(
        tf.constant(["w1 w2", "w3 w77 w4"]), 9).numpy()])
assert not any(name.startswith("sgmoe") for name in sys.modules)
np.savez(sys.argv[3], **outputs)
"""


def serve(tmp_path, export_dir, **inputs):
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", SERVE, str(export_dir),
         str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
        capture_output=True, text=True, timeout=300, env=env,
        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(tmp_path / "outputs.npz"))


def test_language_model_serves_ids_and_text(tmp_path):
    model = MoELanguageModel.from_preset("tiny_moe", seed=3, padding_id=0)
    model.build((None, None))
    model.vocabulary = WordVocabulary([f"w{i}" for i in range(96)])
    export_for_serving(model, tmp_path / "export")
    token_ids = np.array([[1, 5, 6, 7], [1, 8, 9, 10]], "int32")
    prompts = np.array([[1, 5, 6], [1, 7, 0]], "int32")  # right-padded
    served = serve(tmp_path, tmp_path / "export", token_ids=token_ids,
                   prompts=prompts)
    np.testing.assert_allclose(served["logits"],
                               ops.convert_to_numpy(model(token_ids)),
                               rtol=1e-5, atol=1e-5)
    expected = model.generate([[1, 5, 6], [1, 7]], max_length=9)
    np.testing.assert_array_equal(served["generated"], expected)
    texts = model.generate(["w1 w2", "w3 w77 w4"], max_length=9)
    assert served["text"].tolist() == texts


def test_translation_model_serves_logits_ids_and_text(tmp_path):
    vocabulary = SubwordVocabulary.train(
        [os.path.join(DATA, "ding.de-en.valid.de.gz"),
         os.path.join(DATA, "ding.de-en.valid.en.gz")],
        vocabulary_size=400, seed=0, num_threads=1)
    model = MoETranslationModel.from_preset(
        "tiny", vocabulary_size=len(vocabulary), bos_id=vocabulary.bos_id,
        eos_id=vocabulary.eos_id, seed=4)
    model.build()
    model.vocabulary = vocabulary
    export_for_serving(model, tmp_path / "export", max_translation_length=64)
    eos = vocabulary.eos_id
    source = np.array([[5, 6, 7, eos], [8, eos, 0, 0]], "int32")
    target = np.array([[1, 9, 10], [1, 11, 0]], "int32")
    lines = ["Das ist gut.", "Das Haus ist sehr alt und steht am Fluss."]
    served = serve(tmp_path, tmp_path / "export", source_ids=source,
                   target_ids=target, lines=np.array(lines))
    np.testing.assert_allclose(
        served["logits"], ops.convert_to_numpy(model((source, target))),
        rtol=1e-5, atol=1e-5)
    # Greedy decoding of each source on its own, cut after twice its
    # length: the rows of the served ids.
    for row, length in zip(range(2), (4, 2)):
        decoded = model.greedy_decode(source[row:row + 1, :length],
                                      max_length=2 * length,
                                      jit_compile=False)["token_ids"][0]
        expected = np.zeros(64, "int32")
        expected[:2 * length] = decoded
        np.testing.assert_array_equal(served["translated"][row], expected)
    # The longer line's source has under 32 pieces: both as long as
    # translate_lines lets them be.
    assert len(vocabulary.tokenize(lines[1:]).to_list()[0]) < 31
    assert served["text"].tolist() == translate_lines(
        model, vocabulary, lines, beam_width=1, jit_compile=False)


def test_unbuilt_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Build"):
        export_for_serving(MoELanguageModel.from_preset("tiny_moe"),
                           tmp_path / "export")
