"""Evaluation: corpus perplexity, translation of text, corpus BLEU, and
what the experts of a trained model serve."""

from sgmoe.evaluation.bleu import BleuResult
from sgmoe.evaluation.bleu import corpus_bleu
from sgmoe.evaluation.evaluate_perplexity import evaluate_perplexity
from sgmoe.evaluation.expert_inspection import ExpertProfile
from sgmoe.evaluation.expert_inspection import LayerRouting
from sgmoe.evaluation.expert_inspection import RoutedText
from sgmoe.evaluation.expert_inspection import context_of
from sgmoe.evaluation.expert_inspection import expert_load_history
from sgmoe.evaluation.expert_inspection import expert_profiles
from sgmoe.evaluation.expert_inspection import route_sentences
from sgmoe.evaluation.logged_history import logged_history
from sgmoe.evaluation.saved_model_class import saved_model_class
from sgmoe.evaluation.translate_lines import translate_lines
