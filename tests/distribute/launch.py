"""Starting and collecting the processes of a multi-process JAX test."""

import socket


def free_port():
    """A localhost port no one listens on now, for jax.distributed."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def communicate_all(processes, timeout):
    """[(returncode, stdout, stderr)] of `subprocess.Popen` processes.

    When one fails, the others are killed: they would wait for it in a
    collective until their timeout.
    """
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            for other in processes:
                if other.poll() is None and process.returncode != 0:
                    other.kill()
        results.append((process.returncode, stdout, stderr))
    return results
