"""The XLA flags of every test process (no imports: read before JAX or
TensorFlow start XLA).

The tests compile many small XLA programs and run each a few times, so
LLVM's optimisation of the CPU code costs more compile time than it saves
in run time (the JAX layer contract: 92 s -> 70 s on two workers). XLA's
own graph optimisations, and so the numerics, are unchanged.
"""

import os

FAST_COMPILE = ("--xla_backend_optimization_level=0 "
                "--xla_llvm_disable_expensive_passes=true")


def with_devices(count):
    """XLA_FLAGS for a process with `count` virtual CPU devices."""
    return f"{FAST_COMPILE} --xla_force_host_platform_device_count={count}"


def use_fast_compile():
    """Adds FAST_COMPILE to this process's XLA_FLAGS (and so to the
    processes it starts)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FAST_COMPILE not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE}".strip()
