"""Language models built from sgmoe layers, their presets and metrics."""

from sgmoe.models.config_overrides import apply_overrides
from sgmoe.models.config_overrides import parse_overrides
from sgmoe.models.deep_feed_forward import DeepFeedForward
from sgmoe.models.expert_pruning import expert_usage
from sgmoe.models.expert_pruning import prune_experts
from sgmoe.models.fine_tuning import set_moe_layers_trainable
from sgmoe.models.fine_tuning import set_non_moe_layers_trainable
from sgmoe.models.model_size import count_parameters
from sgmoe.models.model_size import ops_per_timestep
from sgmoe.models.moe_language_model import MoELanguageModel
from sgmoe.models.moe_translation_model import MoETranslationModel
from sgmoe.models.perplexity import Perplexity
from sgmoe.models.projected_lstm_cell import ProjectedLSTMCell
from sgmoe.models.sampled_softmax import SampledSoftmax
from sgmoe.models.serving_export import export_for_serving
from sgmoe.models.student_distillation import StudentDistillation
from sgmoe.models.tanh_product_attention import TanhProductAttention
from sgmoe.models.translation_model_size import count_translation_parameters
