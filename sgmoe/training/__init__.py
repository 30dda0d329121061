"""Training: TensorBoard MoE statistics, progress lines, NaN stop,
checkpoints, the resumable training loop and what a multi-process run
shares (its vocabulary, its saved model)."""

from sgmoe.training.routing_statistics import moe_statistics
from sgmoe.training.moe_tensorboard import MoETensorBoard
from sgmoe.training.progress_logger import ProgressLogger
from sgmoe.training.stop_on_non_finite_loss import NonFiniteLossError
from sgmoe.training.stop_on_non_finite_loss import StopOnNonFiniteLoss
from sgmoe.training.checkpointer import CheckpointError
from sgmoe.training.checkpointer import CheckpointState
from sgmoe.training.checkpointer import Checkpointer
from sgmoe.training.training_run import TrainingRun
from sgmoe.training.save_model_preset import save_model_preset
from sgmoe.training.shared_vocabulary import shared_vocabulary
