"""Translating sentence lists and scoring them with sacrebleu."""

import numpy as np
import pytest

from sgmoe.data import SubwordVocabulary
from sgmoe.models import MoETranslationModel
from sgmoe.training import corpus_bleu
from sgmoe.training import translate_lines

LINES = ["Das ist gut.", "Wie geht es dir heute?", "Ja.",
         "Ich habe es nicht so gemeint, entschuldige bitte.",
         "Das Haus ist sehr alt und steht am Fluss.", "Nein, danke."]


@pytest.fixture(scope="module")
def vocabulary():
    return SubwordVocabulary.train(
        ["data/ding.de-en.valid.de.gz", "data/ding.de-en.valid.en.gz"],
        vocab_size=400, seed=0, num_threads=1)


def test_batches_keep_the_order_and_do_not_change_translations(vocabulary):
    wrong_ids = MoETranslationModel.from_preset(
        "tiny", vocabulary_size=len(vocabulary))
    with pytest.raises(ValueError, match="start_id / end_id"):
        translate_lines(wrong_ids, vocabulary, LINES)
    model = MoETranslationModel.from_preset(
        "tiny", vocabulary_size=len(vocabulary), start_id=vocabulary.bos_id,
        end_id=vocabulary.eos_id, seed=3)
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


def test_corpus_bleu_is_sacrebleu_with_its_defaults():
    references = ["The cat sat on the mat.", "It is raining today."]
    assert corpus_bleu(references, references).score == pytest.approx(100.0)
    # By hand (13a tokens): hypothesis "The cat sat on the mat ." against
    # "The cat is on the mat ." has 1-4-gram precisions 6/7, 4/6, 2/5, 1/4 and
    # no brevity penalty: BLEU = (6/7 * 4/6 * 2/5 * 1/4) ** (1/4).
    result = corpus_bleu(["The cat sat on the mat."],
                         ["The cat is on the mat."])
    expected = 100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert result.score == pytest.approx(expected, abs=1e-6)
    assert "tok:13a" in result.signature and result.text.startswith("BLEU")
    with pytest.raises(ValueError, match="same length"):
        corpus_bleu(["a"], ["a", "b"])
