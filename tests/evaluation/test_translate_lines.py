"""Translating sentence lists with a translation model."""

import numpy as np
import pytest

from sgmoe.data import SubwordVocabulary
from sgmoe.evaluation import translate_lines
from sgmoe.models import MoETranslationModel

LINES = ["Das ist gut.", "Wie geht es dir heute?", "Ja.",
         "Ich habe es nicht so gemeint, entschuldige bitte.",
         "Das Haus ist sehr alt und steht am Fluss.", "Nein, danke."]


@pytest.fixture(scope="module")
def vocabulary():
    return SubwordVocabulary.train(
        ["data/ding.de-en.valid.de.gz", "data/ding.de-en.valid.en.gz"],
        vocabulary_size=400, seed=0, num_threads=1)


def test_batches_keep_the_order_and_do_not_change_translations(vocabulary):
    wrong_ids = MoETranslationModel.from_preset(
        "tiny", vocabulary_size=len(vocabulary))
    with pytest.raises(ValueError, match="bos_id / eos_id"):
        translate_lines(wrong_ids, vocabulary, LINES)
    model = MoETranslationModel.from_preset(
        "tiny", vocabulary_size=len(vocabulary), bos_id=vocabulary.bos_id,
        eos_id=vocabulary.eos_id, seed=3)
    model.build()
    # Without XLA: compiling each decoder would take longer than decoding.
    batched = translate_lines(model, vocabulary, LINES, batch_size=4,
                              beam_width=1, length_step=8, jit_compile=False)
    other = translate_lines(model, vocabulary, LINES, batch_size=3,
                            beam_width=1, length_step=16, jit_compile=False)
    assert batched == other
    assert len(set(batched)) > 1  # the untrained model still tells inputs apart
    # The first sentence on its own, decoded by hand, gives the same text.
    ids = vocabulary.tokenize(LINES[:1]).to_list()[0] + [vocabulary.eos_id]
    decoded = model.greedy_decode(np.array([ids], "int32"),
                                  max_length=2 * len(ids),
                                  jit_compile=False)["token_ids"]
    assert vocabulary.detokenize(decoded).numpy()[0].decode() == batched[0]
    beams = translate_lines(model, vocabulary, LINES[:2], batch_size=2,
                            beam_width=3, length_step=16, jit_compile=False)
    assert len(beams) == 2 and all(isinstance(text, str) for text in beams)
    assert translate_lines(model, vocabulary, []) == []
    with pytest.raises(ValueError, match="beam_width"):
        translate_lines(model, vocabulary, LINES, beam_width=0)
