"""One writer per model directory."""

import fcntl
import os
import socket

LOCK_FILE = ".lock"

# realpath -> the open lock file this process holds.
_HELD = {}


class ModelDirInUseError(RuntimeError):
    """Another live process holds the model directory's lock."""


def lock_model_dir(model_dir):
    """Makes this process the only writer of `model_dir` until it exits.

    Creates `model_dir` if needed and takes an exclusive `fcntl.flock` on
    `model_dir/.lock`, writing this process's pid and host into it. The
    operating system releases the lock when the process ends, however it
    ends (SIGKILL included), so a lock file left behind by a dead run is
    simply taken over: stale locks need no cleanup. Calling it again in the
    same process is a no-op, so a script and the `TrainingRun` it creates
    can both call it. On a shared file system (NFS) `flock` locks across
    hosts; the owner's host in the message says where the other run is.

    Args:
        model_dir: the directory to lock.

    Raises:
        ModelDirInUseError: another process holds the lock; the message
            names its pid and host.
        OSError: `model_dir` cannot be created or written (e.g. it is a
            file, or read-only).

    Example:

    lock_model_dir("/tmp/lm")  # a second process now gets ModelDirInUseError
    """
    path = os.path.realpath(os.fspath(model_dir))
    if path in _HELD:
        return
    os.makedirs(path, exist_ok=True)
    file = open(os.path.join(path, LOCK_FILE), "a+", encoding="utf-8")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        owner = file.read().strip() or "an unknown process"
        file.close()
        raise ModelDirInUseError(
            f"{path} is in use by another run ({owner}); wait for it to end "
            "or use another model directory") from None
    except BaseException:
        file.close()
        raise
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    file.flush()
    _HELD[path] = file


def unlock_model_dir(model_dir):
    """Releases this process's lock on `model_dir`, if it holds one."""
    file = _HELD.pop(os.path.realpath(os.fspath(model_dir)), None)
    if file is not None:
        file.close()  # closing the file releases the flock
