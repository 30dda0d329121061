"""Training: TensorBoard MoE statistics, progress lines, NaN stop,
checkpoints, the scripts' training loop, translation and BLEU."""

from sgmoe.training.routing_statistics import find_moe_layers
from sgmoe.training.routing_statistics import is_moe_layer
from sgmoe.training.routing_statistics import moe_statistics
from sgmoe.training.moe_tensorboard import MoETensorBoard
from sgmoe.training.progress_logger import ProgressLogger
from sgmoe.training.stop_on_non_finite_loss import NonFiniteLossError
from sgmoe.training.stop_on_non_finite_loss import StopOnNonFiniteLoss
from sgmoe.training.checkpointer import CheckpointError
from sgmoe.training.checkpointer import CheckpointState
from sgmoe.training.checkpointer import Checkpointer
from sgmoe.training.training_run import TrainingRun
from sgmoe.training.translation_evaluation import BleuResult
from sgmoe.training.translation_evaluation import corpus_bleu
from sgmoe.training.translation_evaluation import translate_lines
