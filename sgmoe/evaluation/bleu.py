"""Corpus BLEU of translations, computed with sacrebleu."""

import typing


class BleuResult(typing.NamedTuple):
    """BLEU of a corpus: `score` in percent, sacrebleu's `text` line
    ("BLEU = 27.31 58.1/33.4/...") and its `signature` of the settings."""

    score: float
    text: str
    signature: str


def corpus_bleu(hypotheses, references):
    """Corpus BLEU through sacrebleu (Post 2018), on detokenized text.

    Uses sacrebleu's defaults (13a tokenization, exponential smoothing,
    case-sensitive), so scores compare with published WMT figures computed
    the same way.

    Args:
        hypotheses: translations (str), one per reference.
        references: reference translations (str).

    Returns:
        A `BleuResult`.
    """
    import sacrebleu

    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(
            f"`hypotheses` ({len(hypotheses)}) and `references` "
            f"({len(references)}) must have the same length.")
    metric = sacrebleu.BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return BleuResult(float(score.score), str(score),
                      str(metric.get_signature()))
