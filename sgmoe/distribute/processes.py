"""Which process this is in a multi-process (multi-host) JAX run."""

import keras


def process_index():
    """This process's index in a JAX multi-process run (0 to count - 1);
    0 on one process and on other backends."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index()
    return 0


def is_primary_process():
    """Whether this process writes shared files: process 0."""
    return process_index() == 0


def wait_for_all_processes(name):
    """Returns once every process of a JAX multi-process run got here.

    Every process must call it with the same `name`, in the same order; on
    one process it returns at once.
    """
    if keras.backend.backend() == "jax":
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)
