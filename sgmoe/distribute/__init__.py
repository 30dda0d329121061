"""Meshes and layout maps: data-parallel gates, model-parallel experts."""

from sgmoe.distribute.device_mesh import device_mesh
from sgmoe.distribute.distribution_for_mesh import distribution_for_mesh
from sgmoe.distribute.expert_layout_map import expert_layout_map
from sgmoe.distribute.mesh_spec import parse_mesh_spec
from sgmoe.distribute.model_parallel import model_parallel
from sgmoe.distribute.processes import is_primary_process
from sgmoe.distribute.processes import process_index
from sgmoe.distribute.processes import wait_for_all_processes
from sgmoe.distribute.synchronous_batches import SynchronousBatches
