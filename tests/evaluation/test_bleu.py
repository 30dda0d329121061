"""Corpus BLEU through sacrebleu."""

import pytest

from sgmoe.evaluation import corpus_bleu


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
