"""Training: TensorBoard MoE statistics, progress lines, NaN stop,
checkpoints, the resumable training loop, its model directory (one writer,
a setup a resume cannot change) and what a multi-process run shares (its
vocabulary, its saved model)."""

from sgmoe.training.routing_statistics import moe_statistics
from sgmoe.training.moe_tensorboard import MoETensorBoard
from sgmoe.training.progress_logger import ProgressLogger
from sgmoe.training.stop_on_non_finite_loss import NonFiniteLossError
from sgmoe.training.stop_on_non_finite_loss import StopOnNonFiniteLoss
from sgmoe.training.checkpointer import CheckpointError
from sgmoe.training.checkpointer import CheckpointState
from sgmoe.training.checkpointer import Checkpointer
from sgmoe.training.model_dir_lock import ModelDirInUseError
from sgmoe.training.model_dir_lock import lock_model_dir
from sgmoe.training.model_dir_lock import unlock_model_dir
from sgmoe.training.run_manifest import RunMismatchError
from sgmoe.training.run_manifest import check_run_setup
from sgmoe.training.run_manifest import clear_run
from sgmoe.training.run_manifest import file_fingerprints
from sgmoe.training.run_manifest import record_run_setup
from sgmoe.training.periodic_evaluation import PeriodicEvaluation
from sgmoe.training.training_run import TrainingRun
from sgmoe.training.save_model_preset import save_model_preset
from sgmoe.training.shared_vocabulary import shared_vocabulary
