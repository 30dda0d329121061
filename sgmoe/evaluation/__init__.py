"""Evaluation: corpus perplexity, translation of text, corpus BLEU."""

from sgmoe.evaluation.bleu import BleuResult
from sgmoe.evaluation.bleu import corpus_bleu
from sgmoe.evaluation.evaluate_perplexity import evaluate_perplexity
from sgmoe.evaluation.saved_model_class import saved_model_class
from sgmoe.evaluation.translate_lines import translate_lines
